"""FID and KID (`gudlang.fid`, `gud fid`): the distances against closed forms and independent
NumPy / SciPy estimators, KID's unbiasedness, statistics files, and the command end to end on a
Gaussian-field oracle with a stand-in feature network (a fixed random convolution and pooling:
the Inception weights are not available offline)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from gudlang import fid
from gudlang.cli import main
from gudlang.data import grf
from gudlang.images import save_npz, to_uint8

ORACLE = """gud 1
data = grf(size = 8, slope = 2, n = 1200)
basis = fourier()
prior = white
network = oracle()
gamma(t) = linear(t, lo = -10, hi = 8)
sample { sampler = dpm2; steps = 20 }
"""
VALUE_RANGE = (-4.0, 4.0)  # grf's value range
STAND_IN = f"{__name__}:RandomConvFeatures"


class RandomConvFeatures(torch.nn.Module):
    """A fixed random 3x3 convolution (4 channels), ReLU and 2x2 average pooling: 16 features
    of uint8 (N, 3, H, W) images, the same for every instance."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(4, 3, 3, 3, generator=gen) / 3)

    def forward(self, x):
        y = torch.nn.functional.conv2d(x.float() / 127.5 - 1, self.weight, padding=1).relu()
        return torch.nn.functional.adaptive_avg_pool2d(y, 2).flatten(1)


def stand_in() -> fid.FeatureNetwork:
    return fid.FeatureNetwork(RandomConvFeatures(), STAND_IN)


def numpy_frechet(x, y):
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2)) of sample moments, via SciPy."""
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return gaussian_frechet(mx, sx, my, sy)


def gaussian_frechet(m1, s1, m2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * root))


def numpy_mmd(x, y, unbiased=True):
    """MMD^2 with k(a, b) = (a.b / F + 1)^3: U-statistic (diagonals of k_xx, k_yy left out) or
    the biased V-statistic."""
    f = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / f + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = len(x)
    if unbiased:
        return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def gaussian_pair(n, seed):
    """Features of two Gaussians in F = 6 with different means and covariances, and their moments."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = a @ a.T / 6 + 0.1 * np.eye(6), b @ b.T / 6 + 0.1 * np.eye(6)
    x = rng.multivariate_normal(m1, s1, size=n)
    y = rng.multivariate_normal(m2, s2, size=n)
    return x, y, (m1, s1, m2, s2)


# --------------------------------------------------------------------------- the distances
def test_fid_of_a_feature_set_against_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(400, 16))
    assert abs(fid.frechet_distance(x, x)) < 1e-9


def test_fid_of_an_image_set_against_itself_is_zero():
    pixels = to_uint8(grf(size=8, n=300).train, VALUE_RANGE)
    images = fid.ImageSet("same", len(pixels), pixels.shape[1:], lambda size: iter([pixels]))
    scores = fid.score(images, images, stand_in(), kid_subsets=5)
    assert abs(scores.fid) < 1e-9
    assert scores.n == scores.n_reference == len(pixels) and scores.feature_dim == 16


def test_fid_equals_the_frechet_distance_of_the_sample_moments_by_scipy():
    x, y, _ = gaussian_pair(3000, seed=1)
    expected = numpy_frechet(x, y)
    assert expected > 1
    assert fid.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(y, x) == pytest.approx(expected, rel=1e-9)


def test_fid_of_large_gaussian_samples_approaches_the_closed_form_of_their_laws():
    x, y, moments = gaussian_pair(20000, seed=2)
    exact = gaussian_frechet(*moments)
    # The sample FID is biased upwards by about tr(S1 + S2) / n plus sampling noise of the means.
    assert fid.frechet_distance(x, y) == pytest.approx(exact, rel=0.03)


def test_kid_is_the_unbiased_polynomial_mmd_computed_independently():
    x, y, _ = gaussian_pair(300, seed=3)
    mean, spread, size = fid.kernel_distance(x, y, subsets=3, subset_size=300)
    assert size == 300 and spread == pytest.approx(0, abs=1e-12)  # every subset is the whole set
    assert mean == pytest.approx(numpy_mmd(x, y), rel=1e-9)


def test_kid_is_unbiased_for_equal_distributions_and_positive_for_different_ones():
    rng = np.random.default_rng(4)
    same, shifted, biased = [], [], []
    for _ in range(150):
        x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
        same.append(fid.kernel_distance(x, y, subsets=1, subset_size=30)[0])
        shifted.append(fid.kernel_distance(x, y + 1.0, subsets=1, subset_size=30)[0])
        biased.append(numpy_mmd(x, y, unbiased=False))
    same, shifted, biased = np.array(same), np.array(shifted), np.array(biased)

    def stderr(values):
        return values.std(ddof=1) / np.sqrt(len(values))

    assert abs(same.mean()) < 3.5 * stderr(same)
    assert (same < 0).any()  # single unbiased estimates straddle 0
    assert biased.mean() > 10 * stderr(biased)  # the V-statistic's bias is visible at this size
    assert shifted.mean() > 10 * stderr(shifted)


def test_kid_subsets_are_drawn_from_its_seed_without_touching_torchs_generator():
    x, y, _ = gaussian_pair(400, seed=5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = fid.kernel_distance(x, y, subsets=10, subset_size=50, seed=7)
    assert torch.rand(1) == before
    assert fid.kernel_distance(x, y, subsets=10, subset_size=50, seed=7) == first
    assert fid.kernel_distance(x, y, subsets=10, subset_size=50, seed=8) != first


# --------------------------------------------------------------------------- statistics files
def test_statistics_round_trip_through_a_file_and_give_the_same_fid(tmp_path):
    x, y, _ = gaussian_pair(500, seed=6)
    stats = fid.Statistics.of(y, "stand-in")
    fid.save_statistics(tmp_path / "ref.npz", stats)
    back = fid.load_statistics(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.n, back.features) == (500, "stand-in")
    assert fid.frechet_distance(x, back) == pytest.approx(fid.frechet_distance(x, y), rel=1e-10)


def test_statistics_in_pytorch_fids_layout_are_read_without_n(tmp_path):
    x, y, _ = gaussian_pair(500, seed=7)
    np.savez(tmp_path / "pytorch_fid.npz", mu=y.mean(0), sigma=np.cov(y, rowvar=False))
    stats = fid.read_reference(tmp_path / "pytorch_fid.npz", (1, 8, 8), VALUE_RANGE)
    assert isinstance(stats, fid.Statistics) and stats.n is None and stats.features is None
    assert fid.frechet_distance(x, stats) == pytest.approx(numpy_frechet(x, y), rel=1e-9)


@pytest.mark.parametrize("arrays,message", [
    ({"mu": np.zeros(3), "sigma": np.eye(4)}, "not (F,) and (F, F)"),
    ({"mu": np.zeros(2), "sigma": np.array([[1.0, 0.5], [0.0, 1.0]])}, "not symmetric"),
    ({"mu": np.array([0.0, np.nan]), "sigma": np.eye(2)}, "NaN"),
    ({"mean": np.zeros(2)}, "holds no statistics"),
])
def test_unusable_statistics_are_e690(tmp_path, arrays, message):
    np.savez(tmp_path / "s.npz", **arrays)
    with pytest.raises(fid.GudError) as info:
        fid.load_statistics(tmp_path / "s.npz")
    assert info.value.diagnostics[0].code == "E690" and message in str(info.value)


# --------------------------------------------------------------------------- reading images
def test_a_png_folder_and_an_npz_of_the_same_pixels_are_the_same_images(tmp_path):
    pixels = np.random.default_rng(8).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "dir").mkdir()
    for k, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "dir" / f"{k:03d}.png")
    np.savez(tmp_path / "a.npz", pixels)
    folder = fid.read_images(tmp_path / "dir", (3, 8, 8), VALUE_RANGE)
    archive = fid.read_images(tmp_path / "a.npz", (3, 8, 8), VALUE_RANGE)
    for images in (folder, archive):
        np.testing.assert_array_equal(np.concatenate(list(images.batches(2))), pixels)


def test_a_folder_is_read_as_images_reads_the_training_data(tmp_path):
    # gud fid read RGBA on black (the data: on white), clipped 16-bit PNGs at 255 and ignored
    # EXIF turns: a folder scored against its own training pixels gave FID 1.9, not 0
    from gudlang.data import images
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    rgba[:2, :, 3] = 0  # fully transparent rows: white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "b.png")  # mid grey
    turned = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    turned.save(tmp_path / "c.png", exif=exif)
    data = images(tmp_path, size=8, test_fraction=0.0, use_cache=False)
    by_name = dict(zip(("a", "b", "c"), to_uint8(data.train, data.value_range)))  # sorted by path
    read = np.concatenate(list(fid.read_images(tmp_path, (3, 8, 8), VALUE_RANGE).batches(8)))
    for k, name in enumerate("abc"):
        np.testing.assert_array_equal(read[k], by_name[name])
    assert (read[0, :2] == 255).all() and (read[1] == 128).all()


def test_a_damaged_image_in_a_folder_names_the_file(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    for k in range(3):
        Image.fromarray(pixels).save(tmp_path / f"{k}.png")
    whole = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(whole[:-30])  # the header reads; the pixels do not
    images = fid.read_images(tmp_path, (3, 8, 8), VALUE_RANGE)
    with pytest.raises(fid.GudError) as info:
        list(images.batches(8))
    d = info.value.diagnostics[0]
    assert d.code == "E690" and "1.png" in d.message


def test_a_folder_with_images_fid_cannot_read_is_refused_not_scored_without_them(tmp_path):
    # BMP / WebP files were left out silently (FID of 4 images said to be of 5)
    pixels = np.random.default_rng(5).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    for k in range(4):
        Image.fromarray(pixels).save(tmp_path / f"{k}.png")
    Image.fromarray(pixels).save(tmp_path / "4.bmp")
    with pytest.raises(fid.GudError) as info:
        fid.read_images(tmp_path, (3, 8, 8), VALUE_RANGE)
    d = info.value.diagnostics[0]
    assert d.code == "E690" and "4.bmp" in d.message and "convert" in d.help


def test_float_samples_in_data_space_are_quantised_like_gud_sample_npz(tmp_path):
    x = np.random.default_rng(9).uniform(-4, 4, size=(6, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "grid.npz", x=x, seed=np.asarray("3"))
    save_npz(x, tmp_path / "pixels.npz", VALUE_RANGE, seed=3)
    floats = fid.read_images(tmp_path / "grid.npz", (1, 8, 8), VALUE_RANGE)
    pixels = fid.read_images(tmp_path / "pixels.npz", (1, 8, 8), VALUE_RANGE)
    np.testing.assert_array_equal(next(floats.batches(6)), next(pixels.batches(6)))
    assert floats.record == pixels.record == {"seed": "3"}


# --------------------------------------------------------------------------- the command
@pytest.fixture
def oracle(tmp_path, monkeypatch):
    """An oracle spec, a reference of its own data (uint8 npz) and one of a narrower law."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.gud").write_text(ORACLE)
    data = grf(size=8, slope=2, n=1200).train
    save_npz(data, tmp_path / "ref.npz", VALUE_RANGE)
    save_npz(0.6 * data, tmp_path / "narrow.npz", VALUE_RANGE)
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def records(folder):
    return sorted(folder.rglob("fid-*.json"))


def test_gud_fid_on_an_oracle_scores_its_own_data_far_better_than_another_law(capsys, oracle):
    code, out, err = run(capsys, "fid", "spec.gud", "--ref", "ref.npz", "-n", 400, "--features", STAND_IN,
                         "--batch-size", 150)
    assert code == 0, err
    record = json.loads((oracle / "samples" / "spec" / "fid-ref.json").read_text())
    assert f"FID {record['fid']:.4f}" in out and "wrote samples/spec/fid-ref.json" in out
    assert (record["n"], record["n_reference"], record["feature_dim"]) == (400, 1080, 16)
    assert (record["sampler"], record["steps"], record["seed"], record["batch_size"]) == ("dpm2", 20, 0, 150)
    assert record["features"] == STAND_IN and record["reference_kind"] == "images"
    assert record["kid_subset_size"] == 400 and record["model_hash"]
    code, _, err = run(capsys, "fid", "spec.gud", "--ref", "narrow.npz", "-n", 400, "--features", STAND_IN,
                       "--batch-size", 150)
    assert code == 0, err
    narrow = json.loads((oracle / "samples" / "spec" / "fid-narrow.json").read_text())
    assert narrow["fid"] > 10 * record["fid"]
    assert narrow["kid_mean"] > 10 * abs(record["kid_mean"])


def test_scoring_gud_sample_output_equals_sampling_and_statistics_equal_images(capsys, oracle):
    common = ("-n", 300, "--features", STAND_IN, "--seed", 5)
    code, out, err = run(capsys, "fid", "spec.gud", "--ref", "ref.npz", "--save-stats", "stats.npz", *common)
    assert code == 0 and "and the reference statistics to stats.npz" in out, err
    sampled = json.loads((oracle / "samples" / "spec" / "fid-ref.json").read_text())
    code, _, err = run(capsys, "sample", "spec.gud", "-n", 300, "--seed", 5, "--format", "npz", "-o", "s")
    assert code == 0, err
    code, out, err = run(capsys, "fid", "spec.gud", "--ref", "stats.npz", "--samples", "s.npz",
                         "--features", STAND_IN)
    assert code == 0, err
    scored = json.loads((oracle / "samples" / "spec" / "fid-stats.json").read_text())
    assert scored["fid"] == pytest.approx(sampled["fid"], rel=1e-9)
    assert scored["kid_mean"] is None and "no KID" in out
    assert scored["reference_kind"] == "statistics" and scored["n_reference"] == sampled["n_reference"]
    assert scored["samples"] == "s.npz" and scored["samples_record"]["seed"] == "5"
    code, _, err = run(capsys, "fid", "spec.gud", "--ref", "ref.npz", "--samples", "s.npz", "--save-stats", "stats.npz",
                       "--features", STAND_IN)
    assert code == 0, err  # a file of statistics is replaced


@pytest.mark.parametrize("case", ["missing reference", "wrong size", "wrong channels", "no weights",
                                  "bad weights file", "unimportable features", "statistics of another network",
                                  "too many samples asked", "sampler options beside samples", "one sample",
                                  "statistics into a non-npz file", "statistics over the reference",
                                  "statistics over the samples", "statistics over other images"])
def test_bad_input_is_a_clear_error_with_exit_2_and_no_record(capsys, oracle, monkeypatch, case):
    monkeypatch.setenv("TORCH_HOME", str(oracle / "torch-home"))
    save_npz(np.zeros((4, 1, 16, 16)), oracle / "big.npz", VALUE_RANGE)
    save_npz(np.zeros((4, 3, 8, 8)), oracle / "rgb.npz", VALUE_RANGE)
    (oracle / "junk.pth").write_bytes(b"not a weights file")
    fid.save_statistics(oracle / "other.npz", fid.Statistics(np.zeros(16), np.eye(16), 10, "another network"))
    save_npz(np.zeros((3, 1, 8, 8)), oracle / "three.npz", VALUE_RANGE)
    argv, code_, words = {
        "missing reference": (["--ref", "nowhere/", "--features", STAND_IN], "E001", "nowhere"),
        "wrong size": (["--ref", "big.npz", "--features", STAND_IN], "E690", "16x16, the model's images 8x8"),
        "wrong channels": (["--ref", "rgb.npz", "--features", STAND_IN], "E690", "3 channel(s), the model's images 1"),
        "no weights": (["--ref", "ref.npz"], "E691", fid.INCEPTION_URL),
        "bad weights file": (["--ref", "ref.npz", "--inception", "junk.pth"], "E691", "not a PyTorch weights file"),
        "unimportable features": (["--ref", "ref.npz", "--features", "no_such_module:Net"], "E691", "cannot import"),
        "statistics of another network": (["--ref", "other.npz", "--features", STAND_IN], "E690", "another network"),
        "too many samples asked": (["--ref", "ref.npz", "--samples", "three.npz", "-n", 5, "--features", STAND_IN],
                                   "E690", "more samples than the 3"),
        "sampler options beside samples": (["--ref", "ref.npz", "--samples", "three.npz", "--seed", 3,
                                            "--features", STAND_IN], "E690", "--seed only apply when"),
        "one sample": (["--ref", "ref.npz", "-n", 1, "--features", STAND_IN], "E690", "need at least two"),
        "statistics into a non-npz file": (["--ref", "ref.npz", "--features", STAND_IN, "--save-stats", "notes.txt"],
                                           "E003", "as an .npz file"),
        # --save-stats replaced the images it was computed from
        "statistics over the reference": (["--ref", "ref.npz", "--features", STAND_IN, "--save-stats", "ref.npz"],
                                          "E003", "is the --ref file"),
        "statistics over the samples": (["--ref", "ref.npz", "--samples", "three.npz", "-n", 3, "--features",
                                         STAND_IN, "--save-stats", "three.npz"], "E003", "is the --samples file"),
        "statistics over other images": (["--ref", "ref.npz", "--features", STAND_IN, "--save-stats", "big.npz"],
                                         "E003", "holds no statistics"),
    }[case]
    (oracle / "notes.txt").write_text("a user's notes")
    code, out, err = run(capsys, "fid", "spec.gud", "-n", 10, *argv)
    assert code == 2, err
    assert f"error[{code_}]" in err and words in err
    assert "Traceback" not in err and out == ""
    assert records(oracle) == [] and (oracle / "notes.txt").read_text() == "a user's notes"
    for images in ("ref.npz", "three.npz", "big.npz"):
        assert "arr_0" in np.load(oracle / images).files


def test_a_corrupt_npz_is_e690(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(fid.GudError) as info:
        fid.load_statistics(tmp_path / "garbage.npz")
    assert info.value.diagnostics[0].code == "E690" and "cannot read" in str(info.value)


def test_a_record_of_another_measurement_never_replaces_one(capsys, oracle):
    # -n 10 after -n 20 overwrote fid-ref.json: each measurement keeps its own record
    common = ("--ref", "ref.npz", "--features", STAND_IN)
    assert run(capsys, "fid", "spec.gud", "-n", 300, *common)[0] == 0
    first = json.loads((oracle / "samples" / "spec" / "fid-ref.json").read_text())
    code, out, _ = run(capsys, "fid", "spec.gud", "-n", 200, *common)
    assert code == 0 and "wrote samples/spec/fid-ref-" in out
    assert json.loads((oracle / "samples" / "spec" / "fid-ref.json").read_text()) == first
    code, out, _ = run(capsys, "fid", "spec.gud", "-n", 300, *common)  # the same measurement again
    assert code == 0 and "wrote samples/spec/fid-ref.json" in out
    assert len(records(oracle / "samples")) == 2
