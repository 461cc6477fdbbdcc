"""Data sources: every source loads exactly what its files hold, and bad data fails early.

All files are written into tmp_path by the tests: npz arrays, PNG / JPEG images (Pillow),
fake MNIST IDX files (plain and gzip) and fake CIFAR-10 binary batches; the decoded-image
cache lives in a temporary folder too ($GUDLANG_CACHE). CIFAR-10's python version is tested
in test_data_cifar_python.py, the image cache in test_data_image_cache.py.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from gudlang.data import (DataSet, dataset, digits, grf, grf_covariance, grf_spectrum, images,
                          iterate_batches, load_data, npz, split)
from gudlang.datasets import readers

from expect_util import fails

pytestmark = pytest.mark.usefixtures("fresh_image_cache")






def _levels(x: np.ndarray, top: int) -> np.ndarray:
    """The documented scaling x / top * 2 - 1, in float32 like the sources."""
    return np.asarray(x).astype(np.float32) / np.float32(top) * np.float32(2) - np.float32(1)


# ----------------------------------------------------------------------------- digits

def test_digits_are_the_bundled_images_scaled_to_minus_one_one():
    raw_path = importlib.resources.files("gudlang.datasets") / "digits.npz"
    with raw_path.open("rb") as f:
        raw = np.load(f, allow_pickle=False)["x"]
    d = digits(test_fraction=0.0)
    assert raw.shape == (1797, 8, 8) and raw.dtype == np.uint8 and raw.max() == 16
    assert d.train.dtype == np.float32 and d.train.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(d.train[:, 0], raw / 16 * 2 - 1)
    assert (d.shape, d.levels, d.value_range, d.name) == ((1, 8, 8), 17, (-1.0, 1.0), "digits")
    assert d.test.shape == (0, 1, 8, 8)


def test_digits_default_split_holds_out_a_tenth():
    d = digits()
    assert (len(d.train), len(d.test)) == (1617, 180)
    assert d.params == {"test_fraction": 0.1, "seed": 0}
    values = np.unique(np.concatenate([d.train, d.test]))
    np.testing.assert_array_equal(values, np.arange(17) / 16 * 2 - 1)


def test_digits_fingerprint_is_pinned():
    # The fingerprint enters spec hashes: it must not change between runs, machines or versions.
    assert digits().fingerprint == \
        "8e19c0d5165308c8c77d2537ff3213ce4822003e6024dedf0d90054fc3c0a0c6"


def test_split_is_seeded_and_deterministic():
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    np.testing.assert_array_equal(a.test, b.test)
    assert a.fingerprint == b.fingerprint
    assert not np.array_equal(a.test, c.test)
    assert a.fingerprint != c.fingerprint != digits(test_fraction=0.2, seed=3).fingerprint


def test_split_partitions_the_samples_in_source_order():
    x = np.arange(50).reshape(50, 1, 1, 1)
    train, test = split(x, 0.3, seed=7)
    assert (len(train), len(test)) == (35, 15)
    ids = np.concatenate([train, test]).ravel()
    np.testing.assert_array_equal(np.sort(ids), np.arange(50))
    assert np.all(np.diff(train.ravel()) > 0) and np.all(np.diff(test.ravel()) > 0)


def test_split_that_leaves_no_training_data_fails():
    with fails("E407", "no training data"):
        split(np.zeros((2, 1, 1, 1)), 0.9, seed=0)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"test_fraction": 1.0}, "test_fraction"), ({"test_fraction": -0.1}, "test_fraction"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"test_fraction": "0.1"}, "test_fraction"),
])
def test_bad_split_arguments_fail(kwargs, fragment):
    with fails("E400", fragment):
        digits(**kwargs)


def test_describe_is_one_line_with_counts_shape_and_levels():
    text = digits().describe()
    assert "\n" not in text
    for part in ("digits", "1617 train", "180 test", "(1, 8, 8)", "17 levels"):
        assert part in text


# ----------------------------------------------------------------------------- grf

def test_grf_shapes_mean_and_params():
    g = grf(size=6, slope=1.5, n=100, channels=2, seed=1)
    assert g.train.shape == (90, 2, 6, 6) and g.test.shape == (10, 2, 6, 6)
    assert g.train.dtype == np.float32 and g.levels is None
    np.testing.assert_array_equal(g.mean, np.zeros((2, 6, 6)))
    assert g.params == {"size": 6, "slope": 1.5, "n": 100, "channels": 2, "seed": 1,
                        "test_fraction": 0.1}
    np.testing.assert_array_equal(g.cov, grf_covariance(6, 1.5, channels=2))


def test_grf_is_deterministic_in_its_seed():
    a, b, c = grf(n=50, seed=5), grf(n=50, seed=5), grf(n=50, seed=6)
    np.testing.assert_array_equal(a.train, b.train)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert grf(n=50, slope=1.0, seed=5).fingerprint != a.fingerprint


def test_grf_samples_do_not_depend_on_chunking(monkeypatch):
    import gudlang.data
    whole = grf(size=4, n=300, seed=2)
    monkeypatch.setattr(gudlang.data, "_GRF_CHUNK", 7)
    np.testing.assert_array_equal(grf(size=4, n=300, seed=2).train, whole.train)


def test_grf_spectrum_is_finite_and_normalised_to_unit_variance():
    p = grf_spectrum(8, 2.0)
    assert np.all(np.isfinite(p)) and np.all(p > 0)
    assert p.mean() == pytest.approx(1.0, abs=1e-14)
    assert p[0, 0] == p.max()  # the constant mode carries the most power for slope > 0
    np.testing.assert_allclose(np.diag(grf_covariance(8, 2.0)), 1.0, atol=1e-14)


def test_grf_covariance_matches_the_wiener_khinchin_sum():
    # Independent of any FFT: c(r) = mean_k P(k) cos(2 pi k.r / n).
    n, slope = 5, 3.0
    p = grf_spectrum(n, slope)
    k = np.fft.fftfreq(n, d=1.0 / n)
    cov = grf_covariance(n, slope)
    for i in range(n * n):
        for j in range(n * n):
            dy, dx = i // n - j // n, i % n - j % n
            phase = 2 * np.pi * (k[:, None] * dy + k[None, :] * dx) / n
            assert cov[i, j] == pytest.approx(np.mean(p * np.cos(phase)), abs=1e-13)


def test_grf_covariance_is_symmetric_positive_definite_with_the_spectrum_as_eigenvalues():
    cov = grf_covariance(6, 2.0)
    np.testing.assert_array_equal(cov, cov.T)
    eig = np.linalg.eigvalsh(cov)
    assert eig.min() > 0
    np.testing.assert_allclose(np.sort(eig), np.sort(grf_spectrum(6, 2.0).ravel()), atol=1e-12)


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (2, 3)])
def test_grf_covariance_is_stationary_on_the_torus(shift):
    n = 6
    cov = grf_covariance(n, 2.0)
    moved = np.roll(np.arange(n * n).reshape(n, n), shift, axis=(0, 1)).ravel()
    np.testing.assert_allclose(cov[np.ix_(moved, moved)], cov, atol=1e-15)
    assert not np.allclose(cov[:, moved], cov)  # and it is not trivially constant


def test_grf_channels_are_independent_and_identical():
    cov = grf_covariance(4, 2.0, channels=3)
    block = grf_covariance(4, 2.0)
    np.testing.assert_array_equal(cov, np.kron(np.eye(3), block))


def test_grf_with_slope_zero_is_white_noise():
    np.testing.assert_allclose(grf_covariance(4, 0.0), np.eye(16), atol=1e-15)


def _relative_cov_error(g: DataSet) -> float:
    x = np.concatenate([g.train, g.test]).reshape(-1, g.dim).astype(np.float64)
    empirical = x.T @ x / len(x)  # the mean is known to be zero
    return np.linalg.norm(empirical - g.cov) / np.linalg.norm(g.cov)


def test_grf_empirical_covariance_converges_to_the_exact_one():
    small = _relative_cov_error(grf(size=8, slope=2.0, n=1000, seed=0))
    large = _relative_cov_error(grf(size=8, slope=2.0, n=16000, seed=1))
    # Sampling error falls like 1 / sqrt(n): 16x the samples should give ~4x less error.
    assert large < 0.08
    assert large < 0.5 * small


def test_grf_channels_are_uncorrelated_in_samples():
    g = grf(size=4, slope=2.0, n=8000, channels=2, seed=2)
    x = g.train.reshape(len(g.train), 2, 16).astype(np.float64)
    cross = x[:, 0].T @ x[:, 1] / len(x)
    assert np.abs(cross).max() < 0.1
    assert _relative_cov_error(g) < 0.1


@pytest.mark.parametrize("kwargs, fragment", [
    ({"size": 0}, "size"), ({"n": 2.5}, "`n`"), ({"channels": True}, "channels"),
    ({"slope": -1.0}, "slope"), ({"slope": float("nan")}, "slope"),
])
def test_bad_grf_arguments_fail(kwargs, fragment):
    with fails("E400", fragment):
        grf(**kwargs)
    if "slope" in kwargs:
        with fails("E400", "slope"):
            grf_covariance(4, kwargs["slope"])


# ----------------------------------------------------------------------------- npz

def test_npz_uint8_three_d_gets_one_channel_and_256_levels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 7), dtype=np.uint8)
    x[0, 0, :3] = [0, 128, 255]
    np.savez(tmp_path / "a.npz", x=x)
    d = npz(tmp_path / "a.npz", test_fraction=0.0)
    assert d.train.shape == (20, 1, 5, 7) and d.shape == (1, 5, 7)
    assert (d.levels, d.value_range, d.name) == (256, (-1.0, 1.0), "a")
    np.testing.assert_array_equal(d.train[:, 0], _levels(x, 255))
    assert d.train[0, 0, 0, :3].tolist() == [-1.0, pytest.approx(128 / 255 * 2 - 1, abs=1e-6), 1.0]


def test_npz_channels_last_is_detected_and_transposed(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (10, 6, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", images=x)
    d = npz(tmp_path / "a.npz", test_fraction=0.0)
    assert d.shape == (3, 6, 5) and d.levels is None and d.value_range == (-1.0, 1.0)
    np.testing.assert_array_equal(d.train, x.transpose(0, 3, 1, 2))


def test_npz_channels_first_is_kept(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (10, 3, 6, 5))
    np.savez(tmp_path / "a.npz", x=x)
    d = npz(tmp_path / "a.npz", test_fraction=0.0)
    np.testing.assert_array_equal(d.train, x.astype(np.float32))


@pytest.mark.parametrize("stored, expected", [
    ((2, 4, 4, 1), (1, 4, 4)), ((2, 4, 4, 3), (3, 4, 4)), ((2, 8, 8, 4), (4, 8, 8)),
    ((2, 1, 4, 4), (1, 4, 4)), ((2, 3, 4, 4), (3, 4, 4)), ((2, 2, 6, 6), (2, 6, 6)),
    # two channels, either way round (they were read as 16 channels of 16 x 2, and as 4 of 2 x 16)
    ((2, 16, 16, 2), (2, 16, 16)), ((2, 8, 8, 2), (2, 8, 8)), ((2, 2, 16, 4), (2, 16, 4)),
    ((2, 2, 64, 1), (2, 64, 1)), ((2, 1, 64, 1), (1, 64, 1)), ((2, 1, 1, 64), (1, 1, 64)),
])
def test_npz_auto_layout_reads_a_channel_sized_last_axis_as_channels(tmp_path, stored, expected):
    np.save(tmp_path / "a.npy", np.zeros(stored))
    assert npz(tmp_path / "a.npy").shape == expected


def test_npz_layout_can_be_forced_or_decided_by_the_declared_shape(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 4, 4))  # auto reads (1, 4, 4)
    np.save(tmp_path / "a.npy", x)
    assert npz(tmp_path / "a.npy").shape == (1, 4, 4)
    assert npz(tmp_path / "a.npy", layout="channels_last").shape == (4, 1, 4)
    assert npz(tmp_path / "a.npy", shape=(4, 1, 4)).shape == (4, 1, 4)


def test_npz_picks_the_key_and_records_params(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2, 2)), y=np.ones((3, 2, 2)))
    d = npz(tmp_path / "a.npz", key="y", test_fraction=0.0, range=None)
    assert np.all(d.train == 1.0)
    assert d.value_range == (1.0, 1.0)
    assert d.params["key"] == "y" and d.params["range"] is None
    assert d.params["path"] == str(tmp_path / "a.npz")


def test_npz_fingerprint_follows_content_not_location(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (8, 2, 2))
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "a.npz", x=x)
    np.savez(tmp_path / "sub" / "a.npz", x=x)
    x[0, 0, 0] += 0.5
    np.savez(tmp_path / "b.npz", x=x)
    a, moved, changed = (npz(p) for p in (tmp_path / "a.npz", tmp_path / "sub" / "a.npz",
                                          tmp_path / "b.npz"))
    assert a.fingerprint == moved.fingerprint == npz(tmp_path / "a.npz").fingerprint
    assert a.fingerprint != changed.fingerprint
    assert a.fingerprint != npz(tmp_path / "a.npz", range=(-2, 2)).fingerprint


def test_npz_missing_file_fails(tmp_path):
    with fails("E401", "nope.npz", "not found"):
        npz(tmp_path / "nope.npz")


def test_npz_not_an_array_file_fails(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not numpy data at all")
    with fails("E402", "junk.npz", "not a readable .npz"):
        npz(tmp_path / "junk.npz")


def test_npz_truncated_file_fails(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 4, 4)))
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    with fails("E402", "a.npz"):
        npz(tmp_path / "a.npz")


def _npy_with_header(shape, data: bytes, descr: str = "<f4") -> bytes:
    """A .npy file (format 1.0) whose header declares `shape`, followed by `data`."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npz_header_declaring_a_huge_shape_fails_before_allocating(tmp_path, suffix):
    # 1e11 x 4 x 4 float32 is 5.82 TiB; the file holds 64 bytes. Loading it must not try.
    member = _npy_with_header((100_000_000_000, 4, 4), bytes(64))
    path = tmp_path / f"huge{suffix}"
    if suffix == ".npy":
        path.write_bytes(member)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", member)
    with fails("E402", f"huge{suffix}", "truncated", "100000000000x4x4 float32",
               "5.82 TiB", "only 64 bytes"):
        npz(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npz_header_whose_size_overflows_int64_is_truncated_not_empty(tmp_path, suffix):
    # 2^32 * 2^32 * 4 wraps to 0 in int64: numpy alone would read "0 values" and fail to reshape.
    member = _npy_with_header((2 ** 32, 2 ** 32, 4), b"")
    path = tmp_path / f"wrap{suffix}"
    if suffix == ".npy":
        path.write_bytes(member)
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("x.npy", member)
    with fails("E402", "truncated", "4294967296x4294967296x4", "only 0 bytes"):
        npz(path)


def test_npy_file_cut_inside_its_data_fails(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 4, 4), dtype=np.float32))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-100])
    with fails("E402", "a.npy", "truncated", "10x4x4 float32", "only 540 bytes"):
        npz(tmp_path / "a.npy")


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npz_array_larger_than_memory_fails(tmp_path, monkeypatch, suffix):
    x = np.zeros((10, 8, 8), dtype=np.float32)  # 2,560 bytes of data
    path = tmp_path / f"a{suffix}"
    np.save(path, x) if suffix == ".npy" else np.savez(path, x=x)
    assert npz(path).train.shape == (9, 1, 8, 8)
    monkeypatch.setattr(readers, "memory_limit", lambda: 2000)
    with fails("E402", f"a{suffix}", "2.5 KiB", "more than this machine's memory (1.95 KiB)"):
        npz(path)


def test_npz_member_that_is_not_an_npy_array_fails(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as z:
        z.writestr("notes.txt", "not an array")
    with fails("E402", "'notes.txt'", "not a numpy array"):
        npz(tmp_path / "a.npz")


class _Payload:
    def __reduce__(self):
        return (open, ("PWNED", "w"))


def test_npz_never_unpickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.npz").write_bytes(pickle.dumps(_Payload()))
    with fails("E402", "evil.npz"):
        npz(tmp_path / "evil.npz")
    assert not (tmp_path / "PWNED").exists()


def test_npz_missing_key_lists_the_keys(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 2, 2)), labels=np.zeros(3))
    with fails("E403", "'x'", "images, labels"):
        npz(tmp_path / "a.npz", key="x")
    with fails("E403", "several arrays", "images, labels"):
        npz(tmp_path / "a.npz")


@pytest.mark.parametrize("shape", [(10, 4), (2, 3, 4, 4, 4), (7,)])
def test_npz_wrong_ndim_fails(tmp_path, shape):
    np.savez(tmp_path / "a.npz", x=np.zeros(shape))
    with fails("E404", f"{shape}", "(N, H, W)"):
        npz(tmp_path / "a.npz")


def test_npz_declared_shape_mismatch_fails(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((5, 3, 8, 8)))
    with fails("E404", "(5, 3, 8, 8)", "shape=(1, 8, 8)"):
        npz(tmp_path / "a.npz", shape=(1, 8, 8))
    with fails("E404", "(8, 3, 8)", "shape=(3, 8, 8)"):
        npz(tmp_path / "a.npz", shape=(3, 8, 8), layout="channels_last")


def test_npz_ragged_object_array_fails(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((4, 4)), np.zeros((5, 5))
    np.savez(tmp_path / "a.npz", x=ragged)
    with fails("E404", "Python objects", "ragged"):
        npz(tmp_path / "a.npz")


def test_npz_non_numeric_dtype_fails(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.full((2, 2, 2), "a"))
    with fails("E404", "dtype <U1"):
        npz(tmp_path / "a.npz")


def test_npz_nan_and_inf_are_counted_with_the_first_index(tmp_path):
    x = np.zeros((6, 3, 3), dtype=np.float32)
    x[2, 1, 0], x[4, 0, 2], x[5, 2, 2] = np.nan, np.inf, -np.inf
    np.savez(tmp_path / "a.npz", x=x)
    with fails("E405", "3 NaN or infinite", "(2, 1, 0)"):
        npz(tmp_path / "a.npz")


@pytest.mark.parametrize("dtype", [np.float64, np.longdouble])
def test_npz_values_beyond_float32_are_caught_before_the_cast(tmp_path, dtype):
    # 1e300 is finite in float64 but inf in float32, the type the data are used as.
    x = np.zeros((6, 3, 3), dtype=dtype)
    x[1, 0, 2], x[3, 1, 1] = 1e300, -1e300
    x[0, 0, 0] = 3e38  # below float32's max: kept
    np.savez(tmp_path / "a.npz", x=x)
    with fails("E405", "2 value(s) beyond the float32 range", "(1, 0, 2)", "1e+300"):
        npz(tmp_path / "a.npz", range=None)
    x[1, 0, 2] = x[3, 1, 1] = 0
    np.savez(tmp_path / "a.npz", x=x)
    assert npz(tmp_path / "a.npz", range=None, test_fraction=0).train.max() == np.float32(3e38)


def test_npz_values_outside_the_range_report_min_and_max(tmp_path):
    x = np.linspace(0, 255, 48).reshape(3, 4, 4)  # floats, though they look like pixels
    np.savez(tmp_path / "a.npz", x=x)
    # The help uses the spec's spelling: a list and `none` (a spec has no tuples or None).
    with fails("E406", "[0, 255]", "[-1, 1]", "range = [0, 255]", "range = none"):
        npz(tmp_path / "a.npz")
    assert npz(tmp_path / "a.npz", range=(0, 255)).value_range == (0.0, 255.0)


def test_npz_rounding_slack_is_accepted(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.full((3, 2, 2), 1.0 + 1e-6))
    assert npz(tmp_path / "a.npz").train.max() > 1.0


def test_npz_empty_array_fails(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((0, 4, 4)))
    with fails("E407", "empty"):
        npz(tmp_path / "a.npz")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"layout": "nhwc"}, "layout"), ({"range": (1, 0)}, "lo < hi"), ({"range": 1}, "range"),
    ({"levels": 1}, "levels"), ({"shape": (8, 8)}, "(C, H, W)"), ({"key": 3}, "key"),
])
def test_bad_npz_arguments_fail(tmp_path, kwargs, fragment):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 8, 8)))
    with fails("E400", fragment):
        npz(tmp_path / "a.npz", **kwargs)


# ----------------------------------------------------------------------------- images

def _png(path, array, mode=None):
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def test_images_load_in_sorted_order_with_exact_values(tmp_path):
    _png(tmp_path / "b.png", np.full((8, 8, 3), (255, 0, 128)))
    _png(tmp_path / "a.png", np.zeros((8, 8, 3)))
    (tmp_path / "notes.txt").write_text("not an image")
    d = images(tmp_path, size=8, test_fraction=0.0)
    assert d.train.shape == (2, 3, 8, 8) and d.shape == (3, 8, 8)
    assert (d.levels, d.value_range) == (256, (-1.0, 1.0))
    assert np.all(d.train[0] == -1.0)
    assert d.train[1, :, 3, 3].tolist() == [1.0, -1.0, pytest.approx(128 / 255 * 2 - 1, abs=1e-6)]


def test_tiff_images_are_read_beside_png_ones(tmp_path):
    # .tif / .tiff were skipped: a folder of them was E407, a mixed one silently lost half its images
    _png(tmp_path / "a.png", np.full((4, 4, 3), 10))
    _png(tmp_path / "b.tif", np.full((4, 4, 3), 200))
    Image.fromarray(np.full((4, 4), 255, dtype=np.uint16) * 257).save(tmp_path / "c.TIFF")  # 16-bit grey
    d = images(tmp_path, size=4, test_fraction=0.0)
    assert d.train.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(d.train[:, 0, 0, 0], _levels([10, 200, 255], 255))


def test_images_center_crop_keeps_the_middle(tmp_path):
    stripes = np.zeros((4, 12), dtype=np.uint8)
    stripes[:, 4:8] = 255  # black | white | black
    _png(tmp_path / "wide.png", stripes)
    d = images(tmp_path, size=4, channels=1, test_fraction=0.0)
    assert d.train.shape == (1, 1, 4, 4)
    assert np.all(d.train == 1.0)


def test_images_resize_the_shorter_side_then_crop(tmp_path):
    _png(tmp_path / "tall.png", np.full((40, 20, 3), 200))
    _png(tmp_path / "small.png", np.full((3, 5, 3), 10))
    d = images(tmp_path, size=(10, 6), test_fraction=0.0)
    assert d.train.shape == (2, 3, 10, 6)
    # Resampling a constant image gives the same constant.
    np.testing.assert_array_equal(d.train[0], _levels(10, 255))
    np.testing.assert_array_equal(d.train[1], _levels(200, 255))
    assert d.params["size"] == [10, 6]


def test_images_of_different_modes_are_converted(tmp_path):
    _png(tmp_path / "1_rgba.png", np.full((6, 6, 4), (10, 20, 30, 255)))
    _png(tmp_path / "2_grey.png", np.full((6, 6), 77))
    Image.fromarray(np.full((6, 6, 3), 90, dtype=np.uint8)) \
        .convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "3_p.png")
    Image.fromarray(np.full((6, 6, 3), 150, dtype=np.uint8)).save(tmp_path / "4.jpg", quality=95)
    rgb = images(tmp_path, size=6, test_fraction=0.0).train
    assert rgb.shape == (4, 3, 6, 6)
    np.testing.assert_array_equal(rgb[0, :, 0, 0], _levels([10, 20, 30], 255))
    assert np.all(rgb[1] == _levels(77, 255))
    assert np.all(rgb[2] == _levels(90, 255))
    np.testing.assert_allclose(rgb[3], 150 / 255 * 2 - 1, atol=4 / 255)  # JPEG is lossy
    grey = images(tmp_path, size=6, channels=1, test_fraction=0.0).train
    assert grey.shape == (4, 1, 6, 6)
    expected = round((10 * 299 + 20 * 587 + 30 * 114) / 1000)  # ITU-R 601 luma
    assert grey[0, 0, 0, 0] == pytest.approx(expected / 255 * 2 - 1, abs=1 / 255)


def test_images_split_and_fingerprint_are_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        _png(tmp_path / f"{i}.png", rng.integers(0, 256, (4, 4, 3)))
    a, b = images(tmp_path, size=4, seed=1), images(tmp_path, size=4, seed=1)
    assert (len(a.train), len(a.test)) == (9, 1)
    assert a.fingerprint == b.fingerprint
    _png(tmp_path / "3.png", rng.integers(0, 256, (4, 4, 3)))
    assert images(tmp_path, size=4, seed=1).fingerprint != a.fingerprint


def test_images_recursive_search_is_opt_in(tmp_path):
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "a.png", np.zeros((4, 4)))
    with fails("E407", "no PNG, JPEG or TIFF", "recursive = true"):
        images(tmp_path, size=4)
    assert len(images(tmp_path, size=4, recursive=True, test_fraction=0.0).train) == 1


def test_images_recursive_search_follows_symlinked_folders_once(tmp_path):
    # a data set assembled from links (sub -> /data/cats) lost the linked images silently
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "root"
    elsewhere.mkdir()
    (root / "own").mkdir(parents=True)
    for i, folder in enumerate((elsewhere, root / "own")):
        _png(folder / f"{i}.png", np.full((4, 4), 60 * (i + 1)))
    try:
        (root / "linked").symlink_to(elsewhere, target_is_directory=True)
        (elsewhere / "back").symlink_to(root, target_is_directory=True)  # a loop
    except OSError:
        pytest.skip("symlinks not available")
    d = images(root, size=4, channels=1, recursive=True, test_fraction=0.0, use_cache=False)
    assert sorted(d.train[:, 0, 0, 0].tolist()) == pytest.approx([60 / 127.5 - 1, 120 / 127.5 - 1])


def test_images_missing_folder_fails(tmp_path):
    with fails("E401", "missing", "not found"):
        images(tmp_path / "missing")


def test_images_unreadable_file_is_named(tmp_path):
    _png(tmp_path / "good.png", np.zeros((4, 4)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with fails("E402", "broken.png"):
        images(tmp_path, size=4)


def test_images_truncated_file_is_named(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)) \
        .save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with fails("E402", "cut.jpg"):
        images(tmp_path, size=8)


def test_images_resize_beyond_the_pixel_limit_fails(tmp_path, monkeypatch):
    # A 1x2000 strip fitted to 8x8 would first be resized to 8x16000 pixels; a 1x65000 strip
    # fitted to 256x256 would need 12.8 GB. Pillow's pixel limit bounds that intermediate.
    _png(tmp_path / "strip.png", np.zeros((2000, 1)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with fails("E402", "strip.png", "(1x2000)", "8x16000", "10000 pixels"):
        images(tmp_path, size=8, channels=1)
    assert images(tmp_path, size=(2000, 1), channels=1, test_fraction=0).shape == (1, 2000, 1)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"size": 0}, "size"), ({"size": (4, 4, 4)}, "size"), ({"channels": 2}, "channels"),
    ({"recursive": "yes"}, "recursive"),
])
def test_bad_images_arguments_fail(tmp_path, kwargs, fragment):
    with fails("E400", fragment):
        images(tmp_path, **kwargs)


# ----------------------------------------------------------------------------- dataset

def _idx(images_: np.ndarray, magic: int = 0x0803) -> bytes:
    return struct.pack(">I", magic) + struct.pack(">3I", *images_.shape) + images_.tobytes()


def _write_mnist(folder, train, test, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test)):
        data = _idx(x)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def _fake_images(n, shape=(28, 28), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("layout, gz", [("torchvision", True), ("flat", False),
                                        ("torchvision", False), ("flat", True)])
def test_mnist_is_read_from_idx_files(tmp_path, layout, gz):
    train, test = _fake_images(6), _fake_images(3, seed=1)
    _write_mnist(tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path,
                 train, test, gz)
    d = dataset("mnist", tmp_path)
    assert d.train.shape == (6, 1, 28, 28) and d.test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(d.train[:, 0], _levels(train, 255))
    np.testing.assert_array_equal(d.test[:, 0], _levels(test, 255))
    assert (d.name, d.levels, d.value_range) == ("mnist", 256, (-1.0, 1.0))
    assert d.params == {"name": "mnist", "root": str(tmp_path), "split": "official"}


def test_fashion_mnist_uses_its_own_folder_and_name_aliases(tmp_path):
    _write_mnist(tmp_path / "FashionMNIST" / "raw", _fake_images(2), _fake_images(2, seed=1),
                 gz=True)
    d = dataset("Fashion-MNIST", tmp_path)
    assert d.name == "fashion_mnist" and len(d.train) == 2
    with fails("E401", "MNIST", "train-images-idx3-ubyte"):
        dataset("mnist", tmp_path)
    assert d.fingerprint == dataset("fashion_mnist", tmp_path).fingerprint


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1)


def _write_cifar(folder, sizes=(2, 2, 2, 2, 2, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    batches = [_cifar_batch(n, seed) for seed, n in enumerate(sizes)]
    for name, b in zip(names, batches):
        (folder / name).write_bytes(b.tobytes())
    return batches


@pytest.mark.parametrize("subdir", ["cifar-10-batches-bin", ""])
def test_cifar10_binary_batches_are_read_as_rgb_planes(tmp_path, subdir):
    batches = _write_cifar(tmp_path / subdir if subdir else tmp_path)
    d = dataset("cifar10", tmp_path)
    assert d.train.shape == (10, 3, 32, 32) and d.test.shape == (3, 3, 32, 32)
    record = batches[1][0]  # the third training image: 1 label byte, then R, G, B planes
    for c in range(3):
        for y, x in ((0, 0), (5, 17), (31, 31)):
            value = record[1 + c * 1024 + y * 32 + x]
            assert d.train[2, c, y, x] == _levels(value, 255)
    assert d.levels == 256 and d.name == "cifar10"


def test_dataset_missing_files_say_what_to_put_where(tmp_path):
    with fails("E401", "train-images-idx3-ubyte[.gz]", "t10k-images-idx3-ubyte[.gz]",
               str(tmp_path / "MNIST" / "raw"), "https://"):
        dataset("mnist", tmp_path)
    batches = [f"data_batch_{i}.bin" for i in range(1, 6)]
    _write_cifar(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    python_files = ", ".join([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
    both = ("the binary version", "the python version", "cifar-10-binary.tar.gz",
            "cifar-10-python.tar.gz", str(tmp_path / "cifar-10-batches-bin"),
            str(tmp_path / "cifar-10-batches-py"))
    with fails("E401", "binary version lacks test_batch.bin;",
               f"python version lacks {python_files}", *both):
        dataset("cifar10", tmp_path)
    for b in batches:
        (tmp_path / "cifar-10-batches-bin" / b).unlink()
    with fails("E401", ", ".join(batches + ["test_batch.bin"]), *both):
        dataset("cifar10", tmp_path)


def test_dataset_missing_root_fails(tmp_path):
    with fails("E401", "nowhere"):
        dataset("mnist", tmp_path / "nowhere")


def test_truncated_idx_file_fails(tmp_path):
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with fails("E402", "train-images-idx3-ubyte", "truncated", "4 images of 28x28"):
        dataset("mnist", tmp_path)


def test_idx_label_file_in_place_of_images_fails(tmp_path):
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">II", 0x0801, 2) + b"\x01\x02")
    with fails("E402", "t10k-images-idx3-ubyte", "0x00000803", "0x00000801"):
        dataset("mnist", tmp_path)


def test_corrupt_gzip_idx_file_fails(tmp_path):
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with fails("E402", "train-images-idx3-ubyte.gz"):
        dataset("mnist", tmp_path)


def test_truncated_cifar_batch_fails(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with fails("E402", "data_batch_3.bin", "truncated", "3073"):
        dataset("cifar10", tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_whose_size_overflows_fails_with_the_true_byte_count(tmp_path, gz):
    # 4 * 2^31 * 2^31 wraps to 0 in 64-bit numpy arithmetic; the expected size is 2^64 + 16.
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    header = struct.pack(">4I", 0x0803, 4, 2 ** 31, 2 ** 31)
    (tmp_path / name).write_bytes(gzip.compress(header) if gz else header)
    with fails("E402", name, "truncated", "4 images of 2147483648x2147483648",
               "(18446744073709551632 bytes)", "the file has 16 bytes"):
        dataset("mnist", tmp_path)


def test_idx_gzip_file_longer_than_its_header_fails(tmp_path):
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(_fake_images(2)) + b"extra"))
    with fails("E402", "t10k-images-idx3-ubyte.gz", "longer than its header says",
               "more than 1584 bytes uncompressed"):
        dataset("mnist", tmp_path)


def test_idx_file_larger_than_memory_fails(tmp_path, monkeypatch):
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=True)
    monkeypatch.setattr(readers, "memory_limit", lambda: 2000)  # train: 3,152 bytes
    with fails("E402", "train-images-idx3-ubyte.gz", "3.08 KiB", "more than this machine's memory"):
        dataset("mnist", tmp_path)


@pytest.mark.parametrize("dims", [(0, 28, 28), (4, 0, 0), (4, 28, 0)])
def test_idx_file_without_image_data_fails(tmp_path, dims):
    _write_mnist(tmp_path, _fake_images(4), _fake_images(2), gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x0803, *dims))
    with fails("E407", "t10k-images-idx3-ubyte", "no image data",
               f"{dims[0]} images of {dims[1]}x{dims[2]}"):
        dataset("mnist", tmp_path)


def test_cifar_batch_larger_than_memory_fails(tmp_path, monkeypatch):
    _write_cifar(tmp_path, sizes=(1, 1, 1, 1, 1, 2))
    monkeypatch.setattr(readers, "memory_limit", lambda: 5000)  # test_batch: 6,146 bytes
    with fails("E402", "test_batch.bin", "6 KiB", "more than this machine's memory"):
        dataset("cifar10", tmp_path)


def test_cifar_file_with_bad_labels_fails(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(np.full(3073, 200, dtype=np.uint8).tobytes())
    with fails("E402", "test_batch.bin", "labels"):
        dataset("cifar10", tmp_path)


def test_unknown_dataset_name_fails(tmp_path):
    with fails("E400", "'svhn'", "mnist, fashion_mnist, cifar10"):
        dataset("svhn", tmp_path)


# ----------------------------------------------------------------------------- dispatch

def test_load_data_dispatches_to_each_source(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2, 2)))
    _png(tmp_path / "a.png", np.zeros((4, 4)))
    _write_mnist(tmp_path, _fake_images(2), _fake_images(1), gz=False)
    pairs = [(load_data("digits", seed=2), digits(seed=2)),
             (load_data("grf", size=4, n=20), grf(size=4, n=20)),
             (load_data("npz", path=tmp_path / "a.npz"), npz(tmp_path / "a.npz")),
             (load_data("images", folder=tmp_path, size=4), images(tmp_path, size=4)),
             (load_data("dataset", name="mnist", root=tmp_path), dataset("mnist", tmp_path))]
    for via_dispatch, direct in pairs:
        assert via_dispatch.fingerprint == direct.fingerprint


def test_load_data_unknown_kind_suggests_a_source():
    with fails("E400", "'digit'", "did you mean 'digits'", "grf"):
        load_data("digit")


def test_load_data_unknown_or_missing_argument_fails():
    with fails("E400", "'sizes'", "size, slope"):
        load_data("grf", sizes=4)
    with fails("E400", "needs the argument 'path'"):
        load_data("npz")


# ----------------------------------------------------------------------------- batches

def test_iterate_batches_covers_every_sample_once():
    x = np.arange(10)
    batches = list(iterate_batches(x, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), x)
    shuffled = np.concatenate(list(iterate_batches(x, 3, seed=1)))
    assert not np.array_equal(shuffled, x)
    np.testing.assert_array_equal(np.sort(shuffled), x)
    np.testing.assert_array_equal(shuffled, np.concatenate(list(iterate_batches(x, 3, seed=1))))
    with fails("E400", "batch_size"):
        list(iterate_batches(x, 0))
