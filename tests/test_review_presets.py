"""An independent review of the published schedules (docs/presets.md) and of the numbers the
shipped specs' comments and the docs state: each paper's formula written here in NumPy / SciPy
from the paper (not from the gud text), compared with the compiled schedule. Complements
tests/test_presets.py (which pins each preset's gamma on its own grid) with what it leaves out:
the claims made *about* the presets (the DDPM / VP-SDE gap, iDDPM's beta bound, the starting
log SNRs, how far the library's `cosine` is from iDDPM's, EDM's loss weight and sampling
levels, blurring's end state, the autoregressive and rolling specs' motion, the W301 numbers
quoted for the pixel basis)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import special

from gudlang.check import check_file, check_text
from gudlang.pipeline import build_model
from gudlang.samplers import sample_heun, time_grid

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "specs" / "peers"


def model(gamma: str, basis: str = "dct()", prior: str = "white"):
    return build_model(check_text(f"gud 1\ndata = digits()\nbasis = {basis}\nprior = {prior}\n{gamma}\n", "r.gud"))


def spec(path: Path):
    return build_model(check_file(str(path)))


def gamma_beta(schedule, t):
    with torch.no_grad():
        gamma, beta = schedule.to(torch.float64)(torch.as_tensor(np.asarray(t, dtype=np.float64)))
    return gamma.numpy(), beta.numpy()


def ddpm_gamma(beta_1=1e-4, beta_T=0.02, steps=1000):
    """Ho et al. 2020: gamma_k = log((1 - alpha_bar_k) / alpha_bar_k), alpha_bar_k = prod (1 - beta_j)."""
    log_ab = np.cumsum(np.log1p(-np.linspace(beta_1, beta_T, steps)))
    return np.log(-np.expm1(log_ab)) - log_ab


def iddpm_f(u, s=0.008):
    """Nichol & Dhariwal 2021, Eq. 17: f(t) = cos^2((t + s) / (1 + s) pi / 2)."""
    return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2


def vp_sde_gamma(tp, b_min=0.1, b_max=20.0):
    """Song et al. 2021, VP SDE: alpha^2(t) = exp(-int_0^t beta), beta linear from b_min to b_max."""
    return np.log(np.expm1(b_min * tp + (b_max - b_min) * tp ** 2 / 2))


# --------------------------------------------------------------------------- DDPM and the VP SDE
def test_ddpm_is_within_0_095_of_the_vp_sde_and_vp_is_that_sde_started_at_0_001():
    """docs/presets.md: the exact DDPM schedule and the VP SDE limit (beta from 0.1 to 20) differ by
    up to 0.095 in gamma, at k = 1. The library's `vp` is that SDE on t' = 0.001 + 0.999 t (Song et
    al.'s eps = 1e-3): at its own t' it is the SDE, but compared at the same t it is one DDPM step
    ahead at t = 0 (0.87 from DDPM's gamma at t = 1 / T)."""
    k = np.arange(1, 1001)
    ddpm = ddpm_gamma()
    sde = vp_sde_gamma(k / 1000)
    gap = np.abs(ddpm - sde)
    assert np.argmax(gap) == 0 and 0.0945 < gap.max() < 0.0950
    vp = model("gamma(t) = vp(t)", "pixel()").schedule
    t_own = (k / 1000 - 0.001) / 0.999
    np.testing.assert_allclose(gamma_beta(vp, t_own)[0][:, 0], sde, rtol=0, atol=1e-9)
    same_t = np.abs(gamma_beta(vp, k / 1000)[0][:, 0] - ddpm)
    assert 0.87 < same_t.max() < 0.88 and np.argmax(same_t) == 0


def test_iddpm_betas_below_the_last_are_at_most_three_quarters():
    """docs/presets.md: with f(1) = 0 the last raw beta is 1 and every other is at most 3/4 (the
    two last ratios of cos^2 near pi / 2 tend to (1 / 2)^2), so only the last one is clipped."""
    k = np.arange(1, 1001)
    raw = 1 - iddpm_f(k / 1000) / iddpm_f((k - 1) / 1000)
    assert raw[-1] == pytest.approx(1.0, abs=1e-12)
    assert raw[:-1].max() <= 0.75 and raw[:-1].max() > 0.7499


@pytest.mark.parametrize("line, want, quoted", [
    # DDPM at step 1: alpha_bar_1 = 1 - 1e-4
    ("gamma(t) = ddpm_linear(t)", np.log(1e-4 / (1 - 1e-4)), -9.2),
    # iDDPM at step 1: alpha_bar = f(1 / T) / f(0)
    ("gamma(t) = iddpm_cosine(t)", np.log(1 - iddpm_f(1e-3) / iddpm_f(0)) - np.log(iddpm_f(1e-3) / iddpm_f(0)),
     -10.1),
    ("gamma(t) = vdm(t)", -13.3, -13.3),
    # EDM: ln sigma = P_mean + P_std Phi^-1(1e-6), sigma = 0.0010; Eq. 5's sigma_min = 0.002
    ("gamma(t) = edm_sigma(t)", 2 * (-1.2 + 1.2 * special.ndtri(1e-6)), 2 * np.log(0.0010)),
    ("gamma(t) = edm_path(t)", 2 * np.log(0.002), 2 * np.log(0.002)),
])
def test_start_values_quoted_in_the_docs(line, want, quoted):
    """docs/presets.md, "The shipped specs": log SNR at t = 0 of 9.2 (ddpm_linear), 10.1
    (iddpm_cosine), 13.3 (vdm); edm_sigma's 1e-6 clip puts sigma at 0.0010, edm_path at 0.002."""
    got = gamma_beta(model(line).schedule, [0.0])[0][0, 0]
    assert got == pytest.approx(want, abs=1e-9)
    assert got == pytest.approx(quoted, abs=0.05 if "edm" not in line else 0.01)


# --------------------------------------------------------------------------- cosine vs improved DDPM
def test_library_cosine_is_iddpm_s_angle_unnormalised_and_stretched_to_gamma_10():
    """`cosine(t)` (the reference code's) is alpha^2 = cos^2(theta), theta from s / (1 + s) pi / 2:
    not Nichol & Dhariwal's alpha_bar = f(t) / f(0) (that is `iddpm_cosine`). It starts at gamma
    = 2 log tan(s / (1 + s) pi / 2) = -8.77 (theirs: -inf), ends at 10 (theirs: +inf), and is
    within 0.39 of their continuous gamma for t in [0.02, 0.98]."""
    t = np.linspace(0, 1, 1001)
    got = gamma_beta(model("gamma(t) = cosine(t)").schedule, t)[0][:, 0]
    assert got[0] == pytest.approx(2 * np.log(np.tan(0.008 / 1.008 * np.pi / 2)), abs=1e-12)
    assert got[0] == pytest.approx(-8.769, abs=1e-3) and got[-1] == pytest.approx(10.0, abs=1e-9)
    inner = (t >= 0.02) & (t <= 0.98)
    theirs = np.log(iddpm_f(0) - iddpm_f(t[inner])) - np.log(iddpm_f(t[inner]))
    gap = np.abs(got[inner] - theirs)
    assert 0.38 < gap.max() < 0.39


# --------------------------------------------------------------------------- EDM
def test_edm_spec_weight_is_lambda_sigma_squared_with_sigma_data_one_half():
    """Karras et al. 2022, Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    on ||D - y||^2; with D = x - sigma eps_hat that is lambda sigma^2 on the eps-MSE. The spec's
    sigma_data = 0.5 and its training sigma the log-normal quantile at t."""
    m = spec(PEERS / "edm.gud")
    t = np.linspace(0, 1, 101)
    sigma = np.exp(-1.2 + 1.2 * special.ndtri(np.clip(t, 1e-6, 1 - 1e-6)))
    with torch.no_grad():
        weight = m.weight.to(torch.float64).value(torch.as_tensor(t)).numpy()
    lam = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(np.broadcast_to(weight, (len(t), weight.shape[-1]))[:, 0], lam * sigma ** 2,
                               rtol=1e-9)


def edm_levels(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """Eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    i = np.arange(n)
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_edm_spec_samples_at_the_levels_of_n_19_with_36_network_calls():
    """specs/peers/edm.gud samples with `sampler = heun; steps = 18; grid = uniform`: the times
    1 - k / 18, k = 0 .. 18, are Eq. 5's levels for N = 19 (ending at sigma_min, then the
    denoise step to sigma = 0): 2 * 18 - 1 + 1 = 36 calls, where EDM's Algorithm 1 at N = 18
    visits 18 levels and 0 with 35. `steps = 17` would visit exactly EDM's 18 levels."""
    m = spec(PEERS / "edm.gud")
    path = m.sampling_path
    assert m.spec.sample.steps == 18 and m.spec.sample.grid == "uniform" and m.spec.sample.sampler == "heun"
    for steps, n in ((18, 19), (17, 18)):
        ts = time_grid("uniform", path, steps)
        sigma = np.exp(gamma_beta(path, ts.numpy())[0][:, 0] / 2)
        np.testing.assert_allclose(sigma, edm_levels(n), rtol=1e-9)
    x1 = torch.zeros(2, 64, dtype=torch.float64)
    result = sample_heun(lambda x, t, g: torch.zeros_like(x), path.to(torch.float64), x1, 18)
    assert result.nfe == 36


# --------------------------------------------------------------------------- blurring diffusion
def test_blurring_spec_damps_every_mode_but_the_mean_to_min_scale_and_orders_coarse_first():
    """specs/peers/blurring.gud: on 8x8 images with sigma_blur_max = 20, tau(1) = 200 and the
    smallest non-zero lambda is (pi / 8)^2, exp(-30.8) = 4e-14: d(1) = min_scale for every mode
    but the mean, so gamma(1) = 10 - 2 log(0.001) = 23.82 there and 10 for the mean. Coarse
    modes keep more signal at every t: gamma grows with lambda = pi^2 (kx^2 + ky^2) / 64."""
    m = spec(PEERS / "blurring.gud")
    kx, ky = (np.asarray(m.features[f], dtype=float) for f in ("kx", "ky"))
    lam = np.pi ** 2 * (kx ** 2 + ky ** 2) / 64
    gamma = gamma_beta(m.schedule, np.linspace(0, 1, 65))[0]
    end = gamma[-1]
    mean = lam == 0
    assert mean.sum() == 1
    np.testing.assert_allclose(end[mean], 10.0, atol=1e-9)
    np.testing.assert_allclose(end[~mean], 10.0 - 2 * np.log(0.001), atol=1e-9)
    order = np.argsort(lam, kind="stable")
    assert np.all(np.diff(gamma[:, order], axis=1) >= -1e-9)


# --------------------------------------------------------------------------- sequence specs
def moving(beta, tol=1e-9):
    return beta > tol


def test_autoregressive_spec_moves_one_component_at_a_time_for_one_65th_of_the_time():
    """specs/autoregressive.gud: a = 640 on labels 1/63 apart shifts neighbours by 10.16 in gamma,
    more than one component's path of 10: one component in motion at a time, each for
    10 / (10 + 640) = 1/65 of the time (not 1/64), and clean for about half of it."""
    m = spec(ROOT / "specs" / "autoregressive.gud")
    t = np.linspace(0, 1, 65 * 400 + 1)
    _, beta = gamma_beta(m.schedule, t)
    active = moving(beta)
    assert active.sum(axis=1).max() == 1
    share = active.mean(axis=0)
    np.testing.assert_allclose(share, 1 / 65, atol=2 / len(t))
    gamma, _ = gamma_beta(m.schedule, t)
    clean = (gamma <= gamma[0][None] + 1e-12).mean()
    assert 0.45 < clean < 0.52


def test_rolling_spec_has_a_window_of_four_columns_clean_behind_and_noise_ahead():
    """specs/peers/rolling.gud: w = 4 / 7, a window of 4 of the 8 columns rolling left to right:
    at most 4 columns move at once (4 while the window is inside the image), the columns left of
    the window are clean (gamma = -15) and those right of it pure noise (gamma = 15)."""
    m = spec(PEERS / "rolling.gud")
    col = np.rint(np.asarray(m.features["col"], dtype=float) * 7).astype(int)
    t = np.linspace(0, 1, 2201)
    gamma, beta = gamma_beta(m.schedule, t)
    per_col = np.stack([gamma[:, col == c][:, 0] for c in range(8)], axis=1)
    assert np.all((gamma[:, col == 0] == gamma[:, col == 0][:, :1]))  # a column moves as one
    inside = (per_col > -15 + 1e-9) & (per_col < 15 - 1e-9)
    assert inside.sum(axis=1).max() == 4
    for row in range(len(t)):
        cols = np.flatnonzero(inside[row])
        if len(cols):
            assert np.all(per_col[row, :cols[0]] == pytest.approx(-15.0, abs=1e-9))
            assert np.all(per_col[row, cols[-1] + 1:] == pytest.approx(15.0, abs=1e-9))
            assert np.all(np.diff(cols) == 1)  # a contiguous window
    # the window has all four columns inside while it rolls through the middle
    assert inside[np.abs(t - 0.5) < 0.01].sum(axis=1).min() >= 3


# --------------------------------------------------------------------------- W301 numbers of the comments
@pytest.mark.parametrize("line, quoted", [
    ("gamma(t) = vdm(t, g0 = -13.3, g1 = 5)", 5.8),
    ("gamma(t) = ddpm_linear(t, beta_1 = 1e-4, beta_T = 0.02, steps = 1000)", 0.1),
    ("gamma(t) = iddpm_cosine(t, s = 0.008, steps = 1000, max_beta = 0.999)", 0.23),
])
def test_pixel_basis_w301_numbers_quoted_in_the_peer_specs(line, quoted):
    """The comments of vdm.gud, ddpm_linear.gud and iddpm_cosine.gud say why they use the DCT: in
    the pixel basis the near-constant corner pixels start at a true SNR of 5.8, 0.1, 0.23 (W301)."""
    m = model(line, "pixel()")
    messages = [w.message for w in m.warnings if w.code == "W301"]
    assert len(messages) == 1, messages
    value = float(re.findall(r"with ([0-9.e+-]+)", messages[0])[-1])
    assert round(value, 2 if quoted < 1 else 1) == pytest.approx(quoted, rel=0.05)
