"""The published schedules of the library (`gudlang.builtins.PRELUDE`, docs/presets.md): each
compiled through a spec and compared with an independent NumPy / SciPy implementation of its
paper's formula (written from the paper, not from the gud text), each accepted by the checker
(finite and non-decreasing on its dense grid, t = 0 and 1 included) and compiled to what the
reference interpreter computes (slope and beta included), and each shipped spec in
specs/peers/ checked without a warning."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import fft, special, stats

from gudlang.builtins import LIBRARY
from gudlang.check import check_text
from gudlang.cli import main as gud
from gudlang.pipeline import build_model
from test_reference import assert_matches_reference

ROOT = Path(__file__).resolve().parent.parent
PEERS = sorted((ROOT / "specs" / "peers").glob("*.gud"))
PRESETS = ("ddpm_linear", "iddpm_cosine", "vdm", "shifted_cosine", "edm_sigma", "edm_path", "blurring",
           "equal_snr", "rolling", "ar_diffusion", "pyramid")
# presets shipped in a spec named after the method rather than the function
SPEC_OF = {"edm_sigma": "edm", "edm_path": "edm", "pyramid": "diffusion_forcing"}
GRID = np.linspace(0.0, 1.0, 257)


def model(gamma: str, basis: str = "dct()", data: str = "digits()"):
    """A white-prior model of `data` in `basis` with the schedule line `gamma` (the checker runs)."""
    return build_model(check_text(f"gud 1\ndata = {data}\nbasis = {basis}\nprior = white\n{gamma}\n", "preset.gud"))


def gamma_of(m, t) -> np.ndarray:
    """gamma (T, D) in float64."""
    with torch.no_grad():
        gamma, _ = m.schedule(torch.as_tensor(np.asarray(t, dtype=np.float64)))
    return gamma.numpy()


def column(m) -> np.ndarray:
    """The column of each pixel component, from the raster layout (C, H, W) alone."""
    return np.arange(m.dim) % m.data.shape[2]


def cosine_log_snr(t, logsnr_min=-15.0, logsnr_max=15.0):
    """log SNR of the truncated cosine schedule, as listed in simple diffusion and blurring
    diffusion: -2 log tan(t_min + t (t_max - t_min)), t_min / t_max the angles of the bounds."""
    t_min, t_max = np.arctan(np.exp(-0.5 * logsnr_max)), np.arctan(np.exp(-0.5 * logsnr_min))
    return -2.0 * np.log(np.tan(t_min + np.asarray(t) * (t_max - t_min)))


def ddpm_log_alpha_bar(beta_1, beta_T, steps):
    """log alpha_bar_k = sum_{j <= k} log(1 - beta_j), k = 1 .. T, betas linear (Ho et al. 2020)."""
    return np.cumsum(np.log1p(-np.linspace(beta_1, beta_T, steps)))


def gamma_from_log_alpha_bar(log_ab):
    """gamma = log((1 - alpha_bar) / alpha_bar)."""
    return np.log(-np.expm1(log_ab)) - log_ab


# --------------------------------------------------------------------------- scalar schedules
@pytest.mark.parametrize("beta_1, beta_T, steps", [(1e-4, 0.02, 1000), (2e-4, 0.03, 200)])
def test_ddpm_linear_is_the_discrete_product_of_linear_betas(beta_1, beta_T, steps):
    """Ho et al. 2020, Sec. 4 and Eq. 4: alpha_bar_k = prod_{j <= k} (1 - beta_j) at t = k / T.
    The preset is exact (an Euler-Maclaurin sum with a remainder below 1e-17), so the
    tolerance is float64 rounding, 1e-9; the VP SDE limit would be off by 0.1 at small k."""
    m = model(f"gamma(t) = ddpm_linear(t, beta_1 = {beta_1}, beta_T = {beta_T}, steps = {steps})")
    k = np.arange(1, steps + 1)
    want = gamma_from_log_alpha_bar(ddpm_log_alpha_bar(beta_1, beta_T, steps))
    got = gamma_of(m, k / steps)[:, 0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # before step 1 the schedule holds x_1, the least noisy latent of DDPM
    np.testing.assert_allclose(gamma_of(m, np.linspace(0, 1 / steps, 5))[:, 0], want[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("steps", [1000, 100])
def test_iddpm_cosine_matches_the_clipped_discrete_betas(steps):
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s)
    pi / 2), realised as betas 1 - alpha_bar(k / T) / alpha_bar((k - 1) / T) clipped at 0.999
    and multiplied up; only the last beta reaches the clip."""
    s = 0.008
    m = model(f"gamma(t) = iddpm_cosine(t, s = {s}, steps = {steps}, max_beta = 0.999)")
    def alpha_bar(u):  # their f(u), not divided by f(0): the ratios below cancel it
        return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2

    k = np.arange(1, steps + 1)
    raw = 1 - alpha_bar(k / steps) / alpha_bar((k - 1) / steps)
    betas = np.minimum(raw, 0.999)
    assert raw[-1] > 0.999 and raw[:-1].max() < 0.999
    want = gamma_from_log_alpha_bar(np.cumsum(np.log1p(-betas)))
    np.testing.assert_allclose(gamma_of(m, k / steps)[:, 0], want, rtol=0, atol=1e-9)
    if steps == 1000:
        assert abs(want[-1] - 19.84) < 0.01  # log SNR -19.8 at t = 1


def test_vdm_is_linear_in_gamma_with_sigma_squared_its_sigmoid():
    """Kingma et al. 2021, Sec. 3.2, Eqs. 3-5: sigma_t^2 = sigmoid(gamma(t)), SNR = exp(-gamma),
    gamma linear from gamma_0 = -13.3 to gamma_1 = 5 in the fixed schedule."""
    m = model("gamma(t) = vdm(t)")
    gamma = gamma_of(m, GRID)[:, 0]
    np.testing.assert_allclose(gamma, -13.3 + 18.3 * GRID, rtol=0, atol=1e-12)
    sigma2 = special.expit(-13.3 + 18.3 * GRID)
    np.testing.assert_allclose(-np.log(1 / sigma2 - 1), gamma, rtol=0, atol=1e-9)  # log SNR = -gamma


@pytest.mark.parametrize("d", [8, 64])
def test_shifted_cosine_adds_two_log_of_the_resolution_ratio_to_log_snr(d):
    """Hoogeboom et al. 2023, Sec. 3.1, Eq. 5: SNR_shift(t) = SNR(t) (64 / d)^2, on the cosine
    log SNR truncated to [-15, 15] of their listing; the spec's d = H is the image size 8."""
    m = model(f"gamma(t) = shifted_cosine(t, d = {'H' if d == 8 else d})", "pixel()")
    want_log_snr = cosine_log_snr(GRID) + 2 * np.log(64 / d)
    np.testing.assert_allclose(-gamma_of(m, GRID)[:, 0], want_log_snr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(-gamma_of(m, [0.0, 1.0])[:, 0], [15 + 2 * np.log(64 / d), -15 + 2 * np.log(64 / d)],
                               rtol=0, atol=1e-9)


def test_edm_sigma_is_the_lognormal_quantile_with_a_negligible_clipped_tail():
    """Karras et al. 2022, Table 1 / Sec. 5: ln sigma ~ N(P_mean = -1.2, P_std = 1.2); uniform t
    through the quantile gives that law, gamma = 2 ln sigma; t is clipped to 1e-6 from each
    end, which moves 2e-6 of the mass onto the end points."""
    m = model("gamma(t) = edm_sigma(t)")
    sigma = np.exp(stats.norm(loc=-1.2, scale=1.2).ppf(np.clip(GRID, 1e-6, 1 - 1e-6)))
    np.testing.assert_allclose(gamma_of(m, GRID)[:, 0], 2 * np.log(sigma), rtol=0, atol=1e-9)
    ends = gamma_of(m, [0.0, 1.0])[:, 0] / 2
    lost = stats.norm.cdf(ends[0], -1.2, 1.2) + stats.norm.sf(ends[1], -1.2, 1.2)
    assert abs(lost - 2e-6) < 1e-12
    assert np.exp(ends[0]) < 0.002 and np.exp(ends[1]) > 80  # wider than EDM's sampling range


@pytest.mark.parametrize("n", [18, 40])
def test_edm_path_hits_the_eq5_noise_levels(n):
    """Karras et al. 2022, Eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho, i = 0 .. N - 1, at t = 1 - i / (N - 1); gamma = 2 ln sigma."""
    m = model("gamma(t) = edm_path(t)")
    i = np.arange(n)
    sigma = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(gamma_of(m, 1 - i / (n - 1))[:, 0], 2 * np.log(sigma), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- per-component schedules
def test_blurring_is_the_heat_equation_on_dct_modes_over_a_cosine(tmp_path):
    """Hoogeboom & Salimans 2023, their pseudo-code: DCT mode (ky, kx) is scaled by
    alpha_t d_t, d_t = (1 - 0.001) exp(-lambda tau_t) + 0.001 with lambda = (pi ky / H)^2 +
    (pi kx / W)^2, tau_t = sigma_B^2 / 2, sigma_B = 20 sin^2(pi t / 2), noise sigma_t, alpha_t^2 =
    sigmoid(log SNR) of the cosine in [-10, 10]. Non-square images, so kx pairs with W; each
    component's mode is found by transforming SciPy's inverse DCT of a unit impulse."""
    h, w = 6, 10
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.uniform(-1, 1, (64, h, w)).astype(np.float32))
    m = model("gamma_i(t) = blurring(t)", "dct()", f'npz("{tmp_path / "x.npz"}")')
    modes = [(ky, kx) for ky in range(h) for kx in range(w)]
    images = np.stack([fft.idctn(np.eye(h * w)[k].reshape(h, w), norm="ortho") for k in range(h * w)])
    with torch.no_grad():
        chi = m.basis.forward(torch.as_tensor(images[:, None])).numpy()
    component = np.argmax(np.abs(chi), axis=1)
    np.testing.assert_allclose(np.abs(chi).max(axis=1), 1.0, atol=1e-12)  # each impulse is one component
    lam = np.empty(h * w)
    for (ky, kx), j in zip(modes, component):
        lam[j] = (np.pi * ky / h) ** 2 + (np.pi * kx / w) ** 2
    t = GRID[:, None]
    log_snr = cosine_log_snr(t, -10.0, 10.0)
    alpha2, sigma2 = special.expit(log_snr), special.expit(-log_snr)
    tau = (20 * np.sin(t * np.pi / 2) ** 2) ** 2 / 2
    d = np.exp(-lam[None] * tau) * (1 - 0.001) + 0.001
    want = -np.log(alpha2 * d ** 2 / sigma2)
    np.testing.assert_allclose(gamma_of(m, GRID), want, rtol=1e-10, atol=1e-9)
    # coarse modes keep more signal: at t = 1/2 gamma grows with lambda
    mid = gamma_of(m, [0.5])[0]
    assert np.all(np.diff(mid[np.argsort(lam, kind="stable")]) >= -1e-12)


def test_equal_snr_gives_every_fourier_component_ddpm_s_true_snr():
    """Falck et al. 2025, EqualSNR: the noise covariance follows the data's, so every frequency's
    true SNR (component variance over noise variance) is the same, here DDPM's alpha_bar /
    (1 - alpha_bar) at t = k / T. The variances are computed here from the training data."""
    m = model("gamma_i(t) = equal_snr(t)", "fourier()")
    x = m.data.train.astype(np.float64)
    with torch.no_grad():
        chi = m.basis.forward(torch.as_tensor(x - x.mean(axis=0))).numpy()
    var = chi.var(axis=0)
    k = np.arange(1, 1001)
    log_ab = ddpm_log_alpha_bar(1e-4, 0.02, 1000)
    true_log_snr = np.log(var)[None] - gamma_of(m, k / 1000)
    np.testing.assert_allclose(true_log_snr, np.repeat((log_ab - np.log(-np.expm1(log_ab)))[:, None], m.dim, 1),
                               rtol=0, atol=1e-8)


def rolling_reference(frames: int, window: int, roll: int, t_window: float):
    """Rolling diffusion, Sec. 3.2: with the window starting at frame `roll`, frame n sits at
    window position k = n - roll with local time (k + t) / W; frames behind the window are
    clean (0), those ahead pure noise (1)."""
    k = np.arange(frames) - roll
    return np.clip((k + t_window) / window, 0.0, 1.0)


@pytest.mark.parametrize("window", [4, 2])
def test_rolling_gives_each_window_frame_local_time_k_plus_t_over_w(window):
    """Ruhe et al. 2024, Sec. 3.2: local time (k + t) / W for window position k. The 8 columns
    are the frames; global time runs down linearly through the N + W - 1 window positions
    (the window slides in from the left at the start), each roll taking t from 1 to 0."""
    frames = 8
    m = model(f"gamma_i(t) = rolling(t, col(i), w = {window}/7)", "pixel()")
    col = column(m)
    for roll in range(1 - window, frames):
        for t_window in np.linspace(0.0, 1.0, 9):
            global_t = (frames - (roll + 1 - t_window)) / (frames + window - 1)
            local = rolling_reference(frames, window, roll, t_window)
            want = -cosine_log_snr(local[col])
            np.testing.assert_allclose(gamma_of(m, [global_t])[0], want, rtol=0, atol=1e-8,
                                       err_msg=f"roll {roll}, t {t_window}")


def ar_diffusion_reference(tokens: int, steps: int, s: float, anchor: float = 2.0):
    """AR-Diffusion, Sec. 3: token n's timestep on the line through the start point
    (n_s, t_s) = (clip(N - s, 0, N), clip(s - N, 0, T)) and the anchor point (anchor N, T),
    clipped to [0, T]; returned as the fraction f / T."""
    n = np.arange(tokens)
    n_s, t_s = np.clip(tokens - s, 0, tokens), np.clip(s - tokens, 0, steps)
    f = t_s + (steps - t_s) * (n - n_s) / (anchor * tokens - n_s)
    return np.clip(f, 0, steps) / steps


@pytest.mark.parametrize("steps", [2000, 12])
def test_ar_diffusion_timesteps_lie_on_the_line_to_the_anchor_point(steps):
    """Wu et al. 2023, Sec. 3: f(n, s) on the line through the moving start point and the anchor
    (2 N, T), the global step s = t (N + T) running over [0, N + T]; the 8 columns are the
    tokens. Both phases: the start point on the token axis (s < N), then on the time axis."""
    tokens = 8
    m = model(f"gamma_i(t) = ar_diffusion(t, col(i), tokens = W, steps = {steps})", "pixel()")
    col = column(m)
    s = np.concatenate([np.linspace(0, tokens, 17), np.linspace(tokens, tokens + steps, 33)])
    want = -cosine_log_snr(np.stack([ar_diffusion_reference(tokens, steps, x) for x in s])[:, col])
    np.testing.assert_allclose(gamma_of(m, s / (tokens + steps)), want, rtol=0, atol=1e-8)


def pyramid_reference(tokens: int, steps: int, scale: int):
    """Diffusion Forcing's pyramid scheduling matrix: K[m, n] = clip(S + floor(n u) - m, 0, S),
    rows m = 0 .. S + floor((N - 1) u) from the start of sampling (all noise) to the end."""
    height = steps + int((tokens - 1) * scale) + 1
    m, n = np.arange(height)[:, None], np.arange(tokens)[None, :]
    return np.clip(steps + np.floor(n * scale) - m, 0, steps), height


@pytest.mark.parametrize("steps, scale", [(50, 1), (5, 2)])
def test_pyramid_follows_diffusion_forcing_s_scheduling_matrix(steps, scale):
    """Chen et al. 2024 (Diffusion Forcing), the pyramid scheduling matrix as a sampling path:
    row m at t = 1 - m / (height - 1), noise level K / S, the 8 columns as tokens; later tokens
    are noisier at every t."""
    m = model(f"gamma_i(t) = pyramid(t, col(i), tokens = W, steps = {steps}, scale = {scale})", "pixel()")
    col = column(m)
    levels, height = pyramid_reference(8, steps, scale)
    t = 1 - np.arange(height) / (height - 1)
    gamma = gamma_of(m, t)
    np.testing.assert_allclose(gamma, -cosine_log_snr(levels[:, col] / steps), rtol=0, atol=1e-8)
    by_column = gamma_of(m, GRID)[:, np.argsort(col, kind="stable")]
    assert np.all(np.diff(by_column, axis=1) >= -1e-12)


# --------------------------------------------------------------------------- every preset
CALLS = {
    "ddpm_linear": ("gamma(t) = ddpm_linear(t)", "dct()"),
    "iddpm_cosine": ("gamma(t) = iddpm_cosine(t)", "dct()"),
    "vdm": ("gamma(t) = vdm(t)", "dct()"),
    "shifted_cosine": ("gamma(t) = shifted_cosine(t, d = H)", "pixel()"),
    "edm_sigma": ("gamma(t) = edm_sigma(t)", "dct()"),
    "edm_path": ("gamma(t) = edm_path(t)", "dct()"),
    "blurring": ("gamma_i(t) = blurring(t)", "dct()"),
    "equal_snr": ("gamma_i(t) = equal_snr(t)", "fourier()"),
    "rolling": ("gamma_i(t) = rolling(t, col(i))", "pixel()"),
    "ar_diffusion": ("gamma_i(t) = ar_diffusion(t, col(i))", "pixel()"),
    "pyramid": ("gamma_i(t) = pyramid(t, col(i))", "pixel()"),
}


def test_every_preset_is_in_the_library_and_covered_here():
    assert set(CALLS) == set(PRESETS) and set(PRESETS) <= set(LIBRARY)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_passes_the_checker_finite_and_non_decreasing(name):
    """build_model runs the checker (E302 on non-finite values at its grid, t = 0 and 1 included,
    E301 where gamma decreases); checked again here on a grid of its own, beta included."""
    line, basis = CALLS[name]
    m = model(line, basis)
    assert not m.warnings, [w.message for w in m.warnings]
    t = np.unique(np.concatenate([GRID, np.random.default_rng(1).uniform(0, 1, 300)]))
    with torch.no_grad():
        gamma, beta = m.schedule(torch.as_tensor(t))
    gamma, beta = gamma.numpy(), beta.numpy()
    assert np.isfinite(gamma).all() and np.isfinite(beta).all() and (beta >= 0).all()
    assert np.all(np.diff(gamma, axis=0) >= -1e-12 * (1 + np.abs(gamma[1:])))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_compiles_to_what_the_reference_interpreter_computes(name):
    """gamma, dgamma/dt and beta (which the papers' formulas above do not pin) equal those of
    tests/reference.py, the interpreter that shares no code with the compiler."""
    line, basis = CALLS[name]
    m = model(line, basis)
    text = f"gud 1\ndata = digits()\nbasis = {basis}\nprior = white\n{line}\n"
    t = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), np.random.default_rng(0).uniform(0, 1, 37)]))
    assert_matches_reference(m.schedule, text, m.features, t)


@pytest.mark.parametrize("lines, basis", [
    ("gamma(t) = edm_sigma(t)\npath(t) = edm_path(t)\nweight(t) = 1 + exp(gamma(t))", "dct()"),
    ("param u_i ~ uniform(0, 1, group = col(i))\ngamma_i(t) = shifted_cosine(u_i)\npath_i(t) = pyramid(t, col(i))",
     "pixel()"),
], ids=["edm", "diffusion_forcing"])
def test_sampling_path_presets_stay_inside_their_papers_training_support(lines, basis):
    """EDM samples along Eq. 5 a model trained on log-normal sigma: edm_sigma's clipped range,
    sigma in [0.0010, 90], holds edm_path's [0.002, 80]. Diffusion Forcing trains each token
    (column) at its own noise level and samples along the pyramid. build_model refuses a path
    outside the training support (E303)."""
    m = model(lines, basis)
    assert not m.warnings, [w.message for w in m.warnings]


# --------------------------------------------------------------------------- shipped specs
def test_each_training_preset_has_a_shipped_spec():
    assert {p.stem for p in PEERS} == {SPEC_OF.get(name, name) for name in PRESETS}


@pytest.mark.parametrize("path", PEERS, ids=[p.stem for p in PEERS])
def test_shipped_peer_spec_checks_clean(path, capsys):
    """`gud check` accepts it with no error and no warning (W301 / W302: the noise covers every
    component at both ends), and it calls its own preset under a header that cites the paper."""
    code = gud(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and out.count(": ok") == 1, err
    assert "warning" not in out + err
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 30
    own = [name for name in PRESETS if SPEC_OF.get(name, name) == path.stem]
    assert own and all(re.search(rf"\b{name}\(t\b", text) for name in own)
    header = text.split("\ndata =")[0]
    assert re.search(r"\b(19|20)\d\d\b", header), "the header cites the paper"


def test_presets_doc_lists_every_preset_and_spec():
    doc = (ROOT / "docs" / "presets.md").read_text(encoding="utf-8")
    for name in PRESETS:
        assert f"`{name}(" in doc, name
    for path in PEERS:
        assert f"specs/peers/{path.name}" in doc, path.name


def test_every_argument_rule_names_a_library_argument_whose_default_passes_it():
    # LIBRARY_ARGUMENTS is a table beside the library's text: a typo in it would check nothing.
    from gudlang.builtins import LIBRARY_ARGUMENTS
    from gudlang.check import _library
    from gudlang.spec import constant
    library = _library()
    for (function, name), (_, test) in LIBRARY_ARGUMENTS.items():
        formals = {fm.name: fm.default for fm in library[function].node.formals}
        assert name in formals, (function, name)
        default = formals[name]
        value = constant(default, (), {}) if default is not None else None
        if isinstance(value, (bool, int, float)):
            assert test(float(value)), (function, name, value)


def test_every_library_basis_rule_names_a_library_function_and_a_basis():
    from gudlang.builtins import BASIS_FEATURES, LIBRARY, LIBRARY_BASES
    assert all(f in LIBRARY and basis in BASIS_FEATURES for f, basis in LIBRARY_BASES.items())
