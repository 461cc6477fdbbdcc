"""From a checked spec to the model: the language's feature registry agrees with the bases,
priors are built as declared, and data / basis errors point at their spec line."""

import numpy as np
import pytest
import torch

from gudlang.bases import make_basis
from gudlang.builtins import BASIS_FEATURES
from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.pipeline import VAR_FLOOR, build_model

BASES = {"pixel": "pixel()", "pca": "pca()", "dct": "dct()", "fourier": "fourier()",
         "wavelet": 'wavelet("haar", levels = 2)'}


def model_for(basis: str, prior: str = "white", gamma: str = "linear(t)"):
    text = f"gud 1\ndata = digits()\nbasis = {basis}\nprior = {prior}\ngamma_i(t) = {gamma}\n"
    return build_model(check_text(text, "p.gud"))


@pytest.mark.parametrize("kind", sorted(BASES))
def test_every_feature_the_checker_allows_is_provided_by_the_basis(kind):
    model = model_for(BASES[kind])
    offered = set(BASIS_FEATURES[kind]) - ({"chan"} if kind == "pca" else set())
    assert offered <= set(model.features)
    for name in offered:
        values = model.features[name]
        assert values.shape == (64,) and np.isfinite(values).all()
        if name in ("rank", "freq", "row", "col", "chan"):
            assert values.min() >= 0 and values.max() <= 1


def test_pca_separate_channels_offers_chan():
    basis = make_basis("pca", (2, 4, 4), channels="separate")
    basis.fit([torch.randn(64, 2, 4, 4, dtype=torch.float64)])
    assert "chan" in basis.features()


def test_scale_prior_is_the_declared_expression():
    model = model_for("pca()", "scale(sqrt(var(i)) + 0.1)")
    var = np.maximum(model.stats.var, VAR_FLOOR * model.stats.var.max())
    np.testing.assert_allclose(model.prior.scales.numpy(), np.sqrt(var) + 0.1, rtol=1e-12)
    np.testing.assert_allclose(model.features["wvar"], var / (np.sqrt(var) + 0.1) ** 2, rtol=1e-12)


def test_matched_prior_whitens_to_unit_variance():
    model = model_for("dct()", "matched")
    np.testing.assert_allclose(model.features["wvar"], 1.0, rtol=1e-12)
    x = torch.as_tensor(model.data.train, dtype=torch.float64) - torch.as_tensor(model.stats.mean)[None]
    chi = model.prior.to(torch.float64).whiten(model.basis.to(torch.float64)(x))
    varying = model.stats.var > VAR_FLOOR * model.stats.var.max()
    np.testing.assert_allclose(chi.var(0, unbiased=False).numpy()[varying], 1.0, rtol=1e-8)


def test_prior_scale_must_be_positive():
    with pytest.raises(GudError) as info:
        model_for("pixel()", "scale(var(i) - 1)")
    d = info.value.diagnostics[0]
    assert d.code == "E510" and d.span is not None and d.span.line == 4


def test_basis_errors_point_at_the_basis_line():
    with pytest.raises(GudError) as info:
        model_for('wavelet("haar", levels = 4)')
    d = info.value.diagnostics[0]
    assert d.code.startswith("E5") and d.span.line == 3


def test_fourier_variances_on_grf_data_match_the_spectrum_and_pca():
    from gudlang.data import grf, grf_spectrum
    from gudlang.stats import fit_stats
    data = grf(size=8, slope=2.0, n=6000, seed=1)
    fourier = fit_stats(data, make_basis("fourier", data.shape), use_cache=False)
    pca = fit_stats(data, make_basis("pca", data.shape), use_cache=False)
    # a stationary field: each real Fourier mode's variance is the power of its wave vector
    expected = np.sort(grf_spectrum(8, 2.0).ravel())
    np.testing.assert_allclose(np.sort(fourier.var), expected, rtol=0.1)
    np.testing.assert_allclose(np.sort(pca.var), np.sort(fourier.var), rtol=0.15)


def test_formatting_never_changes_a_hash():
    from pathlib import Path
    from gudlang.fmt import format_text
    from gudlang.hashing import full_hash
    specs = sorted((Path(__file__).parent.parent / "specs").glob("*.gud"))
    messy = [p.read_text().replace(" = ", "=").replace("\n\n", "\n  # note\n") for p in specs]
    for text in messy:
        assert full_hash(check_text(format_text(text)), "0" * 64) == full_hash(check_text(text), "0" * 64)


@pytest.mark.parametrize("prior", ["white", "matched"])
def test_data_that_do_not_vary_are_E522_at_the_data_line(tmp_path, prior):
    np.savez(tmp_path / "const.npz", x=np.full((20, 1, 4, 4), 0.5, dtype=np.float32))
    text = (f'gud 1\ndata = npz("{tmp_path / "const.npz"}", range = none)\nbasis = pca()\n'
            f"prior = {prior}\ngamma_i(t) = linear(t)\n")
    with pytest.raises(GudError) as err:
        build_model(check_text(text, "const.gud"), use_cache=False)
    d = err.value.diagnostics[0]
    assert d.code == "E522" and "zero variance" in d.message and d.span.line == 2


def test_a_sample_grid_of_a_constant_range_is_written(tmp_path):
    from gudlang.images import save_grid
    x = np.full((4, 1, 4, 4), 0.5, dtype=np.float32)
    with np.errstate(all="raise"):
        save_grid(x, tmp_path / "g.png", (0.5, 0.5))
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("network,phrase", [
    ("unet(channels = 12)", "divisible by 8"),
    ("unet(channel_mult = [1, 2, 2, 2, 2])", "too small"),
    ("unet(attention_resolutions = [0])", "positive integer"),
])
def test_network_options_that_cannot_work_are_errors_at_check_time(network, phrase):
    text = f"gud 1\ndata = digits()\nbasis = pca()\nprior = white\nnetwork = {network}\ngamma(t) = linear(t)\n"
    with pytest.raises(GudError) as err:
        build_model(check_text(text, "net.gud"))
    d = err.value.diagnostics[0]
    assert d.code == "E612" and phrase in d.message and d.span.line == 5


@pytest.mark.parametrize("scale,shown", [("1e-200", "inf"), ("1e200", "= 0")])
def test_prior_scales_whose_square_leaves_float64_are_E510(scale, shown):
    text = f"gud 1\ndata = digits()\nbasis = pca()\nprior = scale({scale})\ngamma(t) = linear(t)\n"
    with pytest.raises(GudError) as err:
        build_model(check_text(text, "scale.gud"))
    d = err.value.diagnostics[0]
    assert d.code == "E510" and shown in d.message and d.span.line == 4


def test_shape_constants_are_the_data_shape_in_every_formula():
    """H, W, C, D take the data's values in the schedule, the prior scale and the given mask."""
    text = ("gud 1\ndata = grf(size = 8, channels = 2, n = 64)\nbasis = fourier()\n"
            "prior = scale(sqrt(var(i)) * D / (C * H * W))\ngiven_i = kx(i) >= W / 2\n"
            "gamma_i(t) = linear(t) + 2 * log(H / 64)\n")
    model = build_model(check_text(text, "shape.gud"), use_cache=False)
    assert {k: float(model.features[k]) for k in ("H", "W", "C", "D")} == {"H": 8, "W": 8, "C": 2, "D": 128}
    var = np.maximum(model.stats.var, VAR_FLOOR * model.stats.var.max())
    np.testing.assert_allclose(model.prior.scales.numpy(), np.sqrt(var), rtol=1e-12)
    np.testing.assert_array_equal(model.given, model.features["kx"] >= 4)
    gamma, _ = model.schedule(torch.tensor([0.0, 1.0], dtype=torch.float64))
    np.testing.assert_allclose(gamma[:, 0].numpy(), [-13.3 + 2 * np.log(8 / 64), 5 + 2 * np.log(8 / 64)])


def test_specs_differing_only_in_data_size_hash_apart(tmp_path):
    """The same text on data of another image size: the shape constants differ, and the data
    fingerprint (which hashes the shape) makes the hashes differ too."""
    from gudlang.pipeline import load_spec_data
    path = tmp_path / "x.npz"
    text = f'gud 1\ndata = npz("{path}", range = none)\nbasis = dct()\ngamma_i(t) = linear(t) + 2 * log(H / 64)\n'
    hashes, gammas = [], []
    for size in (4, 8):
        np.savez(path, x=np.random.default_rng(size).standard_normal((32, 1, size, size)).astype(np.float32))
        checked = check_text(text, "x.gud")
        model = build_model(checked, load_spec_data(checked), use_cache=False)
        hashes.append(model.model_hash)
        gammas.append(model.schedule(torch.zeros(1, dtype=torch.float64))[0][0, 0].item())
    assert hashes[0] != hashes[1]
    assert gammas == pytest.approx([-13.3 + 2 * np.log(4 / 64), -13.3 + 2 * np.log(8 / 64)])


def test_index_counts_components_in_the_natural_order():
    """`index(i) < 10` in PCA gives the ten components of largest variance (NumPy's eigh of the
    training covariance orders them independently of the basis code)."""
    model = build_model(check_text("gud 1\ndata = digits()\nbasis = pca()\ngamma(t) = linear(t)\n"
                                   "given_i = index(i) < 10\n"))
    assert model.given.sum() == 10
    x = model.data.train.reshape(len(model.data.train), -1).astype(np.float64)
    variances = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]
    np.testing.assert_allclose(np.sort(np.asarray(model.stats.var)[model.given])[::-1], variances[:10], rtol=1e-6)
    assert np.array_equal(model.features["index"], np.round(model.features["rank"] * (model.dim - 1)))
