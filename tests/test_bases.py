"""Bases: orthonormality, agreement with independent references (scipy, PyWavelets, numpy
eigendecomposition, a stationary Gaussian field), features, orders, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import scipy.fft
import torch

from gudlang.bases import PCA_MAX_DIM, load_basis, make_basis
from gudlang.diagnostics import GudError
from gudlang.stats import compute_stats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (name, shape, options): every basis on (1, 8, 8), (1, 28, 28), (3, 32, 32) and a
# non-square shape.
CASES = [
    *[(name, shape, {}) for name in ("pixel", "dct", "fourier")
      for shape in ((1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 8, 12), (2, 9, 7))],
    ("pca", (1, 8, 8), {}), ("pca", (3, 8, 12), {}), ("pca", (3, 8, 12), {"channels": "separate"}),
    # Dense eigendecompositions of 784, 3 x 1024 and 3072 components: seconds to a minute.
    pytest.param("pca", (1, 28, 28), {}, marks=pytest.mark.slow),
    pytest.param("pca", (3, 32, 32), {"channels": "separate"}, marks=pytest.mark.slow),
    pytest.param("pca", (3, 32, 32), {}, marks=pytest.mark.slow),
    ("wavelet", (1, 8, 8), {"levels": 3}), ("wavelet", (1, 28, 28), {"levels": 2}),
    ("wavelet", (3, 32, 32), {"levels": 3}),
    ("wavelet", (3, 32, 32), {"family": "db2", "levels": 2}),
    ("wavelet", (1, 16, 8), {"levels": 2}), ("wavelet", (1, 16, 8), {"family": "db2", "levels": 2}),
    ("wavelet", (1, 8, 8), {"family": "db4", "levels": 3}),
    ("wavelet", (2, 12, 20), {"family": "coif2", "levels": 2}),
]

FEATURE_KEYS = {
    "pixel": {"rank", "index", "row", "col", "chan"},
    "pca": {"rank", "index"},
    "dct": {"rank", "index", "freq", "kx", "ky", "chan"},
    "fourier": {"rank", "index", "freq", "kx", "ky", "chan"},
    "wavelet": {"rank", "index", "level", "orient", "row", "col", "chan"},
}
INTEGER_FEATURES = ("index", "level", "orient", "kx", "ky")  # not scaled to [0, 1]


def correlated(n: int, shape, seed: int = 0) -> torch.Tensor:
    """Float64 images with a random non-trivial covariance and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / np.sqrt(d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    x = x * torch.linspace(0.2, 3.0, d, dtype=torch.float64) + 0.5
    return x.reshape(n, *shape)


_FITTED: dict = {}


def basis_for(name, shape, options):
    """A basis, fitted on `correlated` data when it needs data (cached across tests)."""
    key = (name, shape, tuple(sorted(options.items())))
    if key not in _FITTED:
        basis = make_basis(name, shape, **options)
        if basis.needs_fit:
            data = correlated(max(64, 2 * basis.dim) if basis.dim <= 1024 else 400, shape)
            basis.fit([data[: len(data) // 2], data[len(data) // 2:]])
        _FITTED[key] = basis
    return _FITTED[key]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,shape,options", CASES)
def test_forward_preserves_norm_and_inverse_undoes_it(name, shape, options, device):
    basis = basis_for(name, shape, options).to(device)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = torch.randn(5, *shape, dtype=torch.float64, device=device).to(dtype)
        chi = basis(x)
        assert chi.shape == (5, basis.dim) and chi.dtype == dtype and chi.device == x.device
        norm_x, norm_chi = x.flatten(1).norm(dim=1), chi.norm(dim=1)
        assert torch.allclose(norm_chi, norm_x, rtol=tol, atol=0)
        back = basis.inverse(chi)
        assert back.shape == x.shape and back.dtype == dtype
        assert (back - x).abs().max() <= tol * x.abs().max()
        # U U^T = I: components survive a round trip through image space.
        c = torch.randn(3, basis.dim, dtype=torch.float64, device=device).to(dtype)
        assert (basis(basis.inverse(c)) - c).abs().max() <= tol * c.abs().max()
    basis.to("cpu")


@pytest.mark.parametrize("name,shape,options", [
    ("pixel", (3, 8, 12), {}), ("dct", (3, 8, 12), {}), ("fourier", (3, 8, 12), {}),
    ("fourier", (2, 9, 7), {}), ("fourier", (1, 1, 1), {}), ("fourier", (1, 2, 3), {}),
    ("pca", (3, 8, 12), {}), ("pca", (3, 8, 12), {"channels": "separate"}),
    ("wavelet", (1, 16, 8), {"family": "db2", "levels": 2}),
    ("wavelet", (1, 8, 8), {"family": "db4", "levels": 3}),
])
def test_dense_matrix_is_orthogonal_and_inverse_is_its_transpose(name, shape, options):
    basis = make_basis(name, shape, **options) if name != "pca" else basis_for(name, shape, options)
    d = basis.dim
    eye = torch.eye(d, dtype=torch.float64)
    u = basis(eye.reshape(d, *shape)).T          # column j = U e_j
    assert torch.allclose(u @ u.T, eye, atol=1e-12, rtol=0)
    u_t = basis.inverse(eye).reshape(d, d).T      # column j = U^T e_j
    assert torch.allclose(u_t, u.T, atol=1e-13, rtol=0)
    assert basis.logabsdet() == 0.0


@pytest.mark.parametrize("name,shape,options", [
    ("dct", (2, 6, 10), {}), ("fourier", (2, 9, 7), {}),
    ("wavelet", (1, 16, 8), {"family": "db2", "levels": 2}),
])
def test_autograd_through_forward_gives_the_transpose(name, shape, options):
    basis = make_basis(name, shape, **options)
    x = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, basis.dim, dtype=torch.float64)
    (basis(x) * v).sum().backward()
    assert torch.allclose(x.grad, basis.inverse(v), atol=1e-13)


# ----------------------------------------------------------------------------- references

@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 8, 12), (2, 9, 7)])
def test_dct_equals_scipy_dctn_ortho_per_channel(shape):
    x = np.random.default_rng(1).standard_normal((4, *shape))
    ref = scipy.fft.dctn(x, axes=(2, 3), norm="ortho").reshape(4, -1)
    got = make_basis("dct", shape)(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)


def pywt_coefficients(x: np.ndarray, family: str, levels: int) -> np.ndarray:
    """pywt.wavedec2(periodization) laid out as the wavelet basis promises: approximation,
    then levels coarsest to finest, bands (H, V, D), each (C, h, w)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns when a level exceeds its "useful" depth
        coeffs = pywt.wavedec2(x, family, mode="periodization", level=levels)
    n = len(x)
    details = [np.stack(bands, axis=1).reshape(n, -1) for bands in coeffs[1:]]
    return np.concatenate([coeffs[0].reshape(n, -1)] + details, axis=1)


@pytest.mark.parametrize("shape,family,levels", [
    ((3, 32, 32), "haar", 3), ((3, 32, 32), "db2", 2), ((1, 16, 8), "haar", 2),
    ((1, 16, 8), "db2", 2), ((1, 28, 28), "db3", 2), ((1, 8, 8), "db4", 3),
    ((2, 12, 20), "coif2", 2), ((1, 8, 8), "coif1", 1), ((1, 64, 64), "db10", 2),
])
def test_wavelet_equals_pywavelets_periodization(shape, family, levels):
    x = np.random.default_rng(2).standard_normal((3, *shape))
    got = make_basis("wavelet", shape, family=family, levels=levels)(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, pywt_coefficients(x, family, levels), atol=1e-12)


def test_wavelet_features_label_pywavelets_bands():
    shape, levels = (2, 16, 8), 3
    feats = make_basis("wavelet", shape, levels=levels).features()
    x = np.zeros((1, *shape))
    coeffs = pywt.wavedec2(x, "haar", mode="periodization", level=levels)
    sizes = [coeffs[0].size] + [b.size for bands in coeffs[1:] for b in bands]
    expected_level = np.repeat([0] + [lv for lv in range(1, levels + 1) for _ in range(3)], sizes)
    expected_orient = np.repeat([0] + [1, 2, 3] * levels, sizes)
    np.testing.assert_array_equal(feats["level"].numpy(), expected_level)
    np.testing.assert_array_equal(feats["orient"].numpy(), expected_orient)
    # The approximation coefficient (0, 0) of channel 1 covers pixel rows and columns 0..7.
    first_c1 = coeffs[0].size // 2
    assert feats["chan"][first_c1] == 1.0
    assert feats["row"][first_c1] == pytest.approx(3.5 / 15)
    assert feats["col"][first_c1] == pytest.approx(3.5 / 7)
    # The last finest diagonal coefficient covers the bottom-right 2 x 2 block.
    assert feats["row"][-1] == pytest.approx(14.5 / 15)
    assert feats["col"][-1] == pytest.approx(6.5 / 7)


def test_pca_diagonalises_the_sample_covariance():
    shape = (2, 6, 5)
    data = correlated(500, shape, seed=3)
    basis = make_basis("pca", shape).fit([data[:123], data[123:]])
    chi = basis(data)
    cov = torch.cov(chi.T, correction=0)
    scale = cov.diag().max()
    assert (cov - torch.diag(cov.diag())).abs().max() < 1e-12 * scale
    var = cov.diag()
    assert torch.all(var[1:] <= var[:-1] + 1e-12 * scale)
    ref = np.linalg.eigvalsh(np.cov(data.reshape(500, -1).numpy().T, ddof=0))[::-1]
    np.testing.assert_allclose(var.numpy(), ref, atol=1e-10 * float(scale))
    np.testing.assert_allclose(basis.variances.numpy(), ref, atol=1e-10 * float(scale))
    # Sign convention: each eigenvector's largest-magnitude entry is positive.
    u = basis.components[0]
    assert torch.all(u.gather(1, u.abs().argmax(1, keepdim=True)) > 0)
    assert torch.equal(basis.order(), torch.arange(basis.dim))


def test_pca_is_unaffected_by_the_data_mean():
    shape = (1, 5, 5)
    data = correlated(300, shape, seed=4)
    a = make_basis("pca", shape).fit([data])
    b = make_basis("pca", shape).fit([data + 100.0])
    np.testing.assert_allclose(a.variances.numpy(), b.variances.numpy(), rtol=1e-8)
    np.testing.assert_allclose(a.components.numpy(), b.components.numpy(), atol=1e-6)


def test_pca_separate_diagonalises_each_channel_and_orders_globally():
    shape = (3, 4, 5)
    data = correlated(400, shape, seed=5)
    basis = make_basis("pca", shape, channels="separate").fit([data])
    chi = basis(data)
    cov = torch.cov(chi.T, correction=0)
    for c in range(3):
        block = cov[20 * c: 20 * (c + 1), 20 * c: 20 * (c + 1)]
        assert (block - torch.diag(block.diag())).abs().max() < 1e-10 * block.diag().max()
        assert torch.all(block.diag()[1:] <= block.diag()[:-1] + 1e-10)
    order = basis.order()
    assert torch.all(cov.diag()[order][1:] <= cov.diag()[order][:-1] + 1e-10)
    feats = basis.features()
    assert set(feats) == {"rank", "index", "chan"}
    np.testing.assert_array_equal(feats["chan"].numpy(), np.repeat([0.0, 0.5, 1.0], 20))


def stationary_field(n: int, shape, seed: int) -> tuple[np.ndarray, callable]:
    """Periodic stationary Gaussian images: white noise filtered by sqrt(P) in Fourier space,
    P(f) = (1 + (6 |f|)^2)^-1.5 with f in cycles per pixel. Returns images and P."""
    _, h, w = shape

    def power(f):
        return (1.0 + (6.0 * f) ** 2) ** -1.5

    f = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    white = np.random.default_rng(seed).standard_normal((n, *shape))
    return np.fft.ifft2(np.fft.fft2(white) * np.sqrt(power(f))).real, power


@pytest.mark.parametrize("shape", [(1, 12, 12), (1, 9, 10), (2, 7, 8)])
def test_fourier_variances_match_a_known_stationary_spectrum_and_pca(shape):
    n = 6000
    data, power = stationary_field(n, shape, seed=6)
    basis = make_basis("fourier", shape)
    stats = compute_stats([data[:3000], data[3000:]], basis)
    _, h, w = shape
    top = np.hypot((h // 2) / h, (w // 2) / w)  # the largest |f| of any mode
    expected = power(basis.features()["freq"].numpy() * top)
    ratio = stats.var / expected
    assert np.all(np.abs(ratio - 1) < 6 * np.sqrt(2 / n))  # ~6 standard deviations
    assert abs(ratio.mean() - 1) < 4 * np.sqrt(2 / n / basis.dim)
    # Fourier modes are PCA's eigenvectors for stationary data: the same variances.
    pca = make_basis("pca", shape).fit([data])
    np.testing.assert_allclose(pca.variances.sum(), stats.var.sum(), rtol=1e-10)
    np.testing.assert_allclose(pca.variances.numpy(), np.sort(stats.var)[::-1], rtol=0.2)
    # ...and the Fourier components are uncorrelated.
    chi = basis(torch.as_tensor(data)).numpy()
    corr = np.corrcoef(chi.T)
    assert np.abs(corr - np.eye(basis.dim)).max() < 6 / np.sqrt(n)


# ----------------------------------------------------------------------------- features, orders

@pytest.mark.parametrize("name,shape,options", CASES)
def test_features_have_the_documented_keys_and_rank_follows_order(name, shape, options):
    basis = basis_for(name, shape, options)
    feats = basis.features()
    keys = FEATURE_KEYS[name] | ({"chan"} if options.get("channels") == "separate" else set())
    assert set(feats) == keys
    for key, v in feats.items():
        assert v.dtype == torch.float64 and v.shape == (basis.dim,), key
        if key in INTEGER_FEATURES:
            assert torch.equal(v, torch.round(v)), key
        else:
            assert v.min() >= 0 and v.max() <= 1, key
    order = basis.order()
    assert order.dtype == torch.int64
    assert torch.equal(torch.sort(order).values, torch.arange(basis.dim))
    expected_rank = torch.linspace(0, 1, basis.dim, dtype=torch.float64) if basis.dim > 1 \
        else torch.zeros(1, dtype=torch.float64)
    assert torch.allclose(feats["rank"][order], expected_rank, atol=1e-15)
    assert torch.equal(feats["index"][order], torch.arange(basis.dim, dtype=torch.float64))


def test_pixel_features_are_raster_positions():
    feats = make_basis("pixel", (3, 4, 5)).features()
    i = 2 * 20 + 3 * 5 + 1  # channel 2, row 3, column 1
    assert (feats["chan"][i], feats["row"][i], feats["col"][i]) == (1.0, 1.0, 0.25)
    assert feats["rank"][i] == i / 59 and feats["index"][i] == i
    assert set(make_basis("pixel", (1, 4, 5)).features()["chan"].tolist()) == {0.0}


@pytest.mark.parametrize("name", ["dct", "fourier"])
def test_frequency_bases_order_by_increasing_frequency_then_channel(name):
    basis = make_basis(name, (3, 8, 12))
    feats, order = basis.features(), basis.order()
    freq = feats["freq"][order]
    assert torch.all(freq[1:] >= freq[:-1])
    assert freq[0] == 0 and feats["freq"].max() == 1
    # The three constant (DC) components come first, channel by channel.
    assert feats["chan"][order[:3]].tolist() == [0.0, 0.5, 1.0]
    assert torch.equal(order[:3], torch.tensor([0, 96, 192]))


def test_dct_frequency_of_a_known_mode():
    basis = make_basis("dct", (1, 8, 12))
    freq = basis.features()["freq"]
    # Mode (ky, kx) has (ky / 16, kx / 24) cycles per pixel; the largest is (7, 11).
    top = np.hypot(7 / 16, 11 / 24)
    assert freq[3 * 12 + 5] == pytest.approx(np.hypot(3 / 16, 5 / 24) / top)


def test_fourier_component_is_a_known_cosine():
    h, w = 6, 8
    basis = make_basis("fourier", (1, h, w))
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    wave = np.cos(2 * np.pi * (y / h + 2 * x / w))  # mode (1, 2), norm^2 = H W / 2
    chi = basis(torch.as_tensor(wave)[None, None]).numpy()[0]
    hit = np.flatnonzero(np.abs(chi) > 1e-9)
    assert len(hit) == 1 and chi[hit[0]] == pytest.approx(np.sqrt(h * w / 2))
    top = np.hypot(3 / 6, 4 / 8)
    assert basis.features()["freq"][hit[0]] == pytest.approx(np.hypot(1 / 6, 2 / 8) / top)


def test_wavelet_orient_on_an_image_with_only_horizontal_edges():
    """Rows of constant value (edges between rows, none between columns): only the
    approximation (orient 0) and the horizontal details (orient 1) see it."""
    shape = (1, 16, 16)
    rows = np.random.default_rng(3).standard_normal(16)
    image = np.repeat(rows[:, None], 16, axis=1)[None, None]
    for family, levels in (("haar", 3), ("db2", 2)):
        basis = make_basis("wavelet", shape, family=family, levels=levels)
        chi = basis(torch.as_tensor(image)).numpy()[0]
        orient = basis.features()["orient"].numpy()
        assert np.abs(chi[orient == 1]).max() > 0.1
        assert np.abs(chi[(orient == 2) | (orient == 3)]).max() < 1e-12
        # and the transposed image has vertical edges only
        chi_t = basis(torch.as_tensor(image.transpose(0, 1, 3, 2).copy())).numpy()[0]
        assert np.abs(chi_t[orient == 2]).max() > 0.1
        assert np.abs(chi_t[(orient == 1) | (orient == 3)]).max() < 1e-12


def _unit_images(basis) -> np.ndarray:
    """The image of every component: U^T e_i, (D, C, H, W)."""
    return basis.inverse(torch.eye(basis.dim, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 6, 10), (1, 9, 7)])
def test_dct_kx_ky_are_the_mode_of_scipy_dctn(shape):
    """scipy's DCT-II of each component's image is one mode, at (ky, kx) of its channel."""
    basis = make_basis("dct", shape)
    feats = basis.features()
    spectra = scipy.fft.dctn(_unit_images(basis), axes=(2, 3), norm="ortho")
    for i, spectrum in enumerate(spectra):
        c, ky, kx = np.unravel_index(np.argmax(np.abs(spectrum)), spectrum.shape)
        assert abs(spectrum[c, ky, kx]) == pytest.approx(1.0)
        assert (feats["kx"][i], feats["ky"][i]) == (kx, ky)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 6, 10), (1, 9, 7), (1, 5, 4)])
def test_fourier_kx_ky_are_the_modes_of_numpy_fft(shape):
    """numpy's FFT of each component's image is the mode (ky, kx) and its mirror (-ky, -kx)
    only; kx is in the rfft half-plane and ky signed, -H / 2 < ky <= H / 2."""
    _, h, w = shape
    basis = make_basis("fourier", shape)
    feats = basis.features()
    ky_of, kx_of = np.fft.fftfreq(h, 1.0 / h), np.fft.fftfreq(w, 1.0 / w)  # index -> signed frequency
    for i, image in enumerate(_unit_images(basis)):
        spectrum = np.fft.fft2(image)
        c, rows, cols = np.nonzero(np.abs(spectrum) > 1e-9)
        modes = {(ky_of[r], kx_of[k]) for r, k in zip(rows, cols)}
        kx, ky = feats["kx"][i].item(), feats["ky"][i].item()
        folded = {((a + h / 2) % h - h / 2, (b + w / 2) % w - w / 2) for a, b in ((ky, kx), (-ky, -kx))}
        assert {((a + h / 2) % h - h / 2, (b + w / 2) % w - w / 2) for a, b in modes} == folded
        assert 0 <= kx <= w // 2 and -h / 2 < ky <= h / 2


def test_dct_kx_ky_give_the_heat_equation_eigenvalues():
    """pi^2 (kx^2 / W^2 + ky^2 / H^2) is the eigenvalue of minus the Neumann Laplacian
    (unit pixel spacing, small-frequency limit of the discrete one: 4 sin^2(pi k / 2n))."""
    h, w = 6, 10
    basis = make_basis("dct", (1, h, w))
    feats = basis.features()
    lap_h = 2 * np.eye(h) - np.eye(h, k=1) - np.eye(h, k=-1)
    lap_h[0, 0] = lap_h[-1, -1] = 1  # reflecting ends
    lap_w = 2 * np.eye(w) - np.eye(w, k=1) - np.eye(w, k=-1)
    lap_w[0, 0] = lap_w[-1, -1] = 1
    images = _unit_images(basis)[:, 0]
    discrete = np.array([np.sum(im * (lap_h @ im + im @ lap_w)) for im in images])
    ky, kx = feats["ky"].numpy(), feats["kx"].numpy()
    np.testing.assert_allclose(discrete, 4 * np.sin(np.pi * ky / (2 * h)) ** 2 + 4 * np.sin(np.pi * kx / (2 * w)) ** 2,
                               atol=1e-12)
    continuum = np.pi ** 2 * (kx ** 2 / w ** 2 + ky ** 2 / h ** 2)
    low = (kx <= 1) & (ky <= 1)
    np.testing.assert_allclose(discrete[low], continuum[low], rtol=0.1)


def test_wavelet_order_is_coarse_level_first():
    basis = make_basis("wavelet", (3, 32, 32), levels=3)
    feats = basis.features()
    level = feats["level"][basis.order()]
    assert torch.all(level[1:] >= level[:-1])
    assert int((feats["level"] == 0).sum()) == 3 * 4 * 4
    assert set(feats["level"].tolist()) == {0.0, 1.0, 2.0, 3.0}


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("options", [{}, {"channels": "separate"}])
def test_pca_state_tensors_rebuild_the_same_basis(options):
    basis = basis_for("pca", (3, 8, 12), options)
    state = basis.state_tensors()
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    rebuilt = load_basis(basis.config(), state)
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    assert torch.equal(rebuilt(x), basis(x))
    assert torch.equal(rebuilt.order(), basis.order())


@pytest.mark.parametrize("name,options", [("dct", {}), ("wavelet", {"family": "db2", "levels": 2})])
def test_bases_without_data_have_no_state(name, options):
    basis = make_basis(name, (1, 8, 8), **options)
    assert basis.state_tensors() == {}
    assert load_basis(basis.config(), {}).config() == basis.config()


# ----------------------------------------------------------------------------- errors

def code_of(excinfo) -> str:
    return excinfo.value.diagnostics[0].code


@pytest.mark.parametrize("name,shape,options,code", [
    ("spline", (1, 8, 8), {}, "E500"),
    ("dct", (1, 8, 8), {"levels": 2}, "E500"),
    ("wavelet", (1, 8, 8), {"name": "haar"}, "E500"),
    ("wavelet", (1, 8, 8), {"family": "dbx"}, "E500"),
    ("wavelet", (1, 8, 8), {"family": "bior2.2"}, "E500"),
    ("wavelet", (1, 8, 8), {"family": "sym3"}, "E500"),
    ("wavelet", (1, 8, 8), {"levels": 0}, "E500"),
    ("pca", (1, 8, 8), {"channels": "both"}, "E500"),
    ("pixel", (8, 8), {}, "E501"),
    ("dct", (0, 8, 8), {}, "E501"),
    ("fourier", (1, 8.5, 8), {}, "E501"),
    ("wavelet", (1, 28, 28), {"levels": 3}, "E501"),
    ("wavelet", (1, 16, 12), {"levels": 3}, "E501"),
    ("wavelet", (1, 7, 8), {}, "E501"),
    ("pca", (4, 64, 64), {}, "E502"),
    ("pca", (1, 20, 20), {"max_dim": 100}, "E502"),
])
def test_bad_basis_declarations_raise_their_code(name, shape, options, code):
    with pytest.raises(GudError) as excinfo:
        make_basis(name, shape, **options)
    assert code_of(excinfo) == code


def test_error_messages_point_to_the_fix():
    with pytest.raises(GudError) as e:
        make_basis("pca", (3, 64, 64))
    d = e.value.diagnostics[0]
    assert str(3 * 64 * 64) in d.message and "dct" in d.help and "wavelet" in d.help
    with pytest.raises(GudError) as e:
        make_basis("fourir", (1, 8, 8))
    assert "fourier" in e.value.diagnostics[0].help
    with pytest.raises(GudError) as e:
        make_basis("wavelet", (1, 28, 28), levels=3)
    assert "8" in e.value.diagnostics[0].message


def test_pca_limit_leaves_separate_channels_available():
    assert make_basis("pca", (4, 32, 32), channels="separate").dim == 4096
    assert 3 * 32 * 32 <= PCA_MAX_DIM


def test_unfitted_pca_and_wrong_inputs_raise():
    basis = make_basis("pca", (1, 4, 4))
    for call in (lambda: basis(torch.zeros(1, 1, 4, 4)), basis.order, basis.state_tensors):
        with pytest.raises(GudError) as e:
            call()
        assert code_of(e) == "E503"
    with pytest.raises(GudError) as e:
        basis.fit([torch.zeros(1, 1, 4, 4)])
    assert code_of(e) == "E503"
    with pytest.raises(GudError) as e:
        basis.fit([torch.zeros(3, 1, 4, 5)])
    assert code_of(e) == "E503"
    with pytest.raises(GudError) as e:
        basis.load_state_tensors({"components": torch.zeros(3, 3)})
    assert code_of(e) == "E504"
    dct = make_basis("dct", (1, 4, 4))
    for call in (lambda: dct(torch.zeros(2, 1, 4, 5)), lambda: dct.inverse(torch.zeros(2, 15))):
        with pytest.raises(GudError) as e:
            call()
        assert code_of(e) == "E501"
