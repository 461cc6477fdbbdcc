"""Statistics: streaming moments equal numpy's, the cache, checkpoint tensors, features."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.fft
import torch

from gudlang import stats as S
from gudlang.bases import make_basis
from gudlang.data import load_data
from gudlang.diagnostics import GudError
from gudlang.stats import ComponentStats, component_features, compute_stats, fit_stats


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache directory."""
    monkeypatch.setenv("GUDLANG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "stats"


def images(n=301, shape=(2, 5, 6), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)) * rng.uniform(0.1, 3.0, shape) + rng.uniform(-2, 5, shape)
    return x.astype(np.float32)


def uneven_batches(x: np.ndarray) -> list[np.ndarray]:
    return [x[:1], x[1:100], x[100:101], x[101:]]


def test_streaming_pixel_stats_equal_numpy_on_the_whole_array():
    x = images()
    stats = compute_stats(uneven_batches(x), make_basis("pixel", x.shape[1:]))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.mean, x64.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.var, x64.var(axis=0).reshape(-1), rtol=1e-12)
    assert stats.n == len(x) and stats.mean.dtype == np.float64 and stats.var.dtype == np.float64


def test_stats_in_a_basis_are_the_variances_of_its_coefficients():
    x = images()
    stats = compute_stats(uneven_batches(x), make_basis("dct", x.shape[1:]))
    coeffs = scipy.fft.dctn(x.astype(np.float64), axes=(2, 3), norm="ortho").reshape(len(x), -1)
    np.testing.assert_allclose(stats.var, coeffs.var(axis=0), rtol=1e-12)


def test_a_large_mean_does_not_cost_precision():
    x = images().astype(np.float64) * 1e-3 + 1e4
    stats = compute_stats(np.array_split(x, 7), make_basis("pixel", x.shape[1:]))
    np.testing.assert_allclose(stats.var, x.var(axis=0).reshape(-1), rtol=1e-6)


def test_batch_size_does_not_change_the_result():
    x = images()
    basis = make_basis("fourier", x.shape[1:])
    a = fit_stats(x, basis, batch_size=7, use_cache=False)
    b = fit_stats(x, basis, batch_size=1000, use_cache=False)
    np.testing.assert_allclose(a.var, b.var, rtol=1e-12)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12, atol=1e-14)


def test_fit_stats_fits_pca_on_mean_removed_data():
    x = images(n=400, shape=(1, 4, 5)) + 50.0
    basis = make_basis("pca", x.shape[1:])
    stats = fit_stats(x, basis, batch_size=64, use_cache=False)
    assert basis.fitted
    ref = np.linalg.eigvalsh(np.cov(x.reshape(400, -1).astype(np.float64).T, ddof=0))[::-1]
    np.testing.assert_allclose(stats.var, ref, rtol=1e-9)
    np.testing.assert_allclose(stats.var, basis.variances.numpy(), rtol=1e-9)


def test_cache_hit_returns_identical_tensors(cache, monkeypatch):
    x = images()
    first = fit_stats(x, make_basis("dct", x.shape[1:]))
    assert len(list(cache.glob("*.safetensors"))) == 1
    monkeypatch.setattr(S, "compute_stats", lambda *a, **k: pytest.fail("recomputed"))
    second = fit_stats(x, make_basis("dct", x.shape[1:]))
    for k, v in first.to_tensors().items():
        assert torch.equal(second.to_tensors()[k], v)


def test_cache_hit_restores_a_fitted_pca_basis(cache):
    x = images(n=200, shape=(1, 4, 4))
    fitted = make_basis("pca", (1, 4, 4))
    fit_stats(x, fitted)
    fresh = make_basis("pca", (1, 4, 4))
    fit_stats(x, fresh)
    assert fresh.fitted and torch.equal(fresh.components, fitted.components)


def test_cache_key_depends_on_data_basis_options_and_shape():
    keys = {
        S.cache_key("data-a", make_basis("wavelet", (1, 8, 8), levels=1)),
        S.cache_key("data-a", make_basis("wavelet", (1, 8, 8), levels=2)),
        S.cache_key("data-a", make_basis("wavelet", (1, 8, 8), family="db2")),
        S.cache_key("data-b", make_basis("wavelet", (1, 8, 8), levels=1)),
        S.cache_key("data-a", make_basis("wavelet", (2, 8, 8), levels=1)),
        S.cache_key("data-a", make_basis("dct", (1, 8, 8))),
    }
    assert len(keys) == 6
    assert S.cache_key("data-a", make_basis("dct", (1, 8, 8))) in keys


def test_corrupt_cache_file_is_recomputed_not_a_crash(cache):
    x = images()
    basis = make_basis("pixel", x.shape[1:])
    good = fit_stats(x, basis)
    (path,) = cache.glob("*.safetensors")
    for garbage in (b"", b"not a safetensors file", path.read_bytes()[:40]):
        path.write_bytes(garbage)
        again = fit_stats(x, basis)
        np.testing.assert_array_equal(again.var, good.var)
    # The entry is rewritten whole, and no temporary files are left behind.
    assert S._read_cache(path, S.cache_key(S.array_fingerprint(x), basis), basis) is not None
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_cache_entry_for_another_key_is_ignored(cache):
    x, y = images(seed=1), images(seed=2)
    basis = make_basis("pixel", x.shape[1:])
    fit_stats(x, basis)
    (path,) = cache.glob("*.safetensors")
    # Pretend y's entry is x's file: the key inside does not match, so y is computed.
    os.replace(path, cache / f"{S.cache_key(S.array_fingerprint(y), basis)}.safetensors")
    stats = fit_stats(y, basis)
    expected = y.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(stats.mean, expected, rtol=1e-12, atol=1e-12)


def test_unwritable_cache_only_costs_recomputation(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GUDLANG_CACHE", str(blocker))  # a file, so no directory below it
    x = images()
    stats = fit_stats(x, make_basis("pixel", x.shape[1:]))
    assert stats.n == len(x)


def test_dataset_uses_its_train_split_and_fingerprint(cache):
    data = load_data("digits")
    stats = fit_stats(data, make_basis("dct", data.shape))
    assert stats.n == len(data.train)
    key = S.cache_key(data.fingerprint, make_basis("dct", data.shape))
    assert (cache / f"{key}.safetensors").exists()


def test_iterables_are_not_cached_without_a_fingerprint(cache):
    x = images()
    fit_stats(uneven_batches(x), make_basis("pixel", x.shape[1:]))
    assert not cache.exists() or not list(cache.iterdir())
    fit_stats(uneven_batches(x), make_basis("pixel", x.shape[1:]), fingerprint="mine")
    assert len(list(cache.iterdir())) == 1


def test_to_tensors_round_trip_and_validation():
    x = images()
    stats = compute_stats([x], make_basis("pixel", x.shape[1:]))
    again = ComponentStats.from_tensors(stats.to_tensors())
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.var, stats.var)
    assert again.n == stats.n
    tensors = stats.to_tensors()
    for broken in ({k: v for k, v in tensors.items() if k != "var"},
                   {**tensors, "var": tensors["var"][:-1]},
                   {**tensors, "mean": tensors["mean"].reshape(-1)}):
        with pytest.raises(GudError) as e:
            ComponentStats.from_tensors(broken)
        assert e.value.diagnostics[0].code == "E521"


def test_no_data_and_one_shot_iterators_for_pca_raise_e520():
    with pytest.raises(GudError) as e:
        compute_stats([], make_basis("pixel", (1, 2, 2)))
    assert e.value.diagnostics[0].code == "E520"
    x = images(shape=(1, 3, 3))
    with pytest.raises(GudError) as e:
        fit_stats(iter([x]), make_basis("pca", (1, 3, 3)))
    assert e.value.diagnostics[0].code == "E520"
    assert fit_stats(iter([x]), make_basis("dct", (1, 3, 3))).n == len(x)


def test_wrongly_shaped_batches_raise_the_basis_error():
    with pytest.raises(GudError) as e:
        compute_stats([np.zeros((4, 1, 3, 3))], make_basis("pixel", (1, 3, 4)))
    assert e.value.diagnostics[0].code == "E501"


def test_component_features_add_var_to_the_basis_features():
    x = images()
    basis = make_basis("dct", x.shape[1:])
    stats = compute_stats([x], basis)
    feats = component_features(basis, stats)
    shape = {"H", "W", "C", "D"}
    assert set(feats) == {"rank", "index", "freq", "kx", "ky", "chan", "var"} | shape
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 and v.shape == (basis.dim,)
               for k, v in feats.items() if k not in shape)
    assert [feats[k] for k in ("C", "H", "W", "D")] == [*x.shape[1:], basis.dim]
    np.testing.assert_array_equal(feats["var"], stats.var)
