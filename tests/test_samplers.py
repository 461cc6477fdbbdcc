"""Samplers: convergence orders against closed forms, standing-still components, the front.

With the Gaussian oracle the eps model is affine in chi, so every deterministic sampler is an
affine map chi(1) -> chi(t_end). Applying it to mu_1 and mu_1 + L_1 e_j (Cov_1 = L_1 L_1^T)
gives its exact output mean and covariance when chi(1) ~ p_1, the exact t = 1 marginal, without
sampling noise. The exact PF-ODE maps p_1 to p_0, so the Gaussian KL(output || p_0) measures the
discretisation error alone; sqrt(KL) falls like steps^-order. Euler-Maruyama is an affine map
plus Gaussian noise: its output moments follow a matrix recursion (`em_moments`), which the
sampler itself is checked against by Monte Carlo. The multistep methods are also checked on a
nonlinear denoiser against dopri5 at 1e-12, for exactness where x0 is linear in each component's
lambda, and unipc's move of x0 to the corrected state against UniPC written out with a second
model call there; the time grids, the clamp of t into [0, 1] and the defaults shared with the
spec close the file.
"""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from gudlang.diagnostics import GudError
from gudlang.oracle import GaussianOracle
from gudlang.oracle import gaussian_kl as kl
from gudlang.samplers import GRIDS, OPTIONS, SAMPLERS, phi_weights, sample, schedule_kinks, time_grid
from gudlang.spec import SamplerName
from schedule_fixtures import LinearSchedule, gaussian_data, schedules, one_thread  # noqa: F401 (autouse fixture)

D = 16
ORDERS = {"ddim": 1.0, "heun": 2.0, "midpoint": 2.0, "dpm2": 2.0}
MULTISTEP_ORDERS = {"dpmpp2m": 2, "dpmpp3m": 3, "unipc": 4}
EXPONENTIAL = ("ddim", "dpm2", *MULTISTEP_ORDERS)


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle(*gaussian_data(D))


def marginal(oracle, schedule, t: float):
    gamma, _ = schedule(torch.full((1,), t, dtype=torch.float64))
    mean, cov = oracle.marginal(gamma)
    return mean[0], cov[0]


def exact_output(method, oracle, schedule, steps, **options):
    """Output mean and covariance of a deterministic sampler started from p_1."""
    mu1, cov1 = marginal(oracle, schedule, 1.0)
    start = torch.cat([mu1[None], mu1 + torch.linalg.cholesky(cov1).T])
    out = SAMPLERS[method](oracle, schedule, start, steps, denoise=False, **options).x0
    lin = (out[1:] - out[0]).T
    return out[0], lin @ lin.T


def em_moments(oracle, schedule, steps):
    """Exact output moments of Euler-Maruyama started from p_1: chi <- M chi + c + sqrt(beta dt) z
    with M = I + dt beta (I / 2 - Cov_t^-1), c = dt beta Cov_t^-1 A m."""
    mean, cov = marginal(oracle, schedule, 1.0)
    eye = torch.eye(D, dtype=torch.float64)
    dt = 1.0 / steps
    for k in range(steps):
        gamma, beta = schedule(torch.full((1,), 1.0 - k * dt, dtype=torch.float64))
        mean_t, cov_t = oracle.marginal(gamma)
        prec = torch.linalg.inv(cov_t[0])
        m = eye + dt * beta[0][:, None] * (0.5 * eye - prec)
        mean = m @ mean + dt * beta[0] * (prec @ mean_t[0])
        cov = m @ cov @ m.T + torch.diag(beta[0] * dt)
    return mean, cov


def fitted_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("schedule_name", ["linear", "soft", "sequential"])
@pytest.mark.parametrize("method", list(ORDERS))
def test_deterministic_samplers_converge_at_their_order(oracle, method, schedule_name):
    schedule = schedules(D)[schedule_name]
    target = marginal(oracle, schedule, 0.0)
    steps = [32, 64, 128]
    errors = [math.sqrt(kl(*exact_output(method, oracle, schedule, n), *target)) for n in steps]
    assert errors[0] > errors[1] > errors[2]
    assert fitted_order(steps, errors) == pytest.approx(ORDERS[method], abs=0.2)


def pf_velocity(oracle, schedule, x, t):
    """d chi / dt = 1/2 beta (eps / sigma - chi), written out independently of the samplers."""
    gamma, beta = schedule(torch.full((len(x),), t, dtype=x.dtype))
    return 0.5 * beta * (oracle(x, None, gamma) / torch.sigmoid(gamma).sqrt() - x)


def heun_in_t(oracle, schedule, x, steps):
    """Textbook Heun on the PF-ODE in t, last step Euler."""
    def velocity(x, t):
        return pf_velocity(oracle, schedule, x, t)
    dt = 1.0 / steps
    for k in range(steps):
        t = 1.0 - k * dt
        d = velocity(x, t)
        x_euler = x - dt * d
        x = x_euler if k == steps - 1 else x - dt * 0.5 * (d + velocity(x_euler, t - dt))
    return x


@pytest.mark.parametrize("schedule_name", ["linear", "soft"])
def test_heun_is_textbook_heun_in_t_when_gamma_is_linear(oracle, schedule_name):
    schedule = schedules(D)[schedule_name]
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = SAMPLERS["heun"](oracle, schedule, x1, 12, denoise=False).x0
    assert torch.allclose(got, heun_in_t(oracle, schedule, x1, 12), atol=1e-12)


def midpoint_in_t(oracle, schedule, x, steps):
    """Textbook explicit midpoint rule on the PF-ODE in t."""
    def velocity(x, t):
        return pf_velocity(oracle, schedule, x, t)
    dt = 1.0 / steps
    for k in range(steps):
        t = 1.0 - k * dt
        x = x - dt * velocity(x - 0.5 * dt * velocity(x, t), t - 0.5 * dt)
    return x


@pytest.mark.parametrize("schedule_name", ["linear", "soft"])
def test_midpoint_is_the_textbook_midpoint_rule_in_t_when_gamma_is_linear(oracle, schedule_name):
    schedule = schedules(D)[schedule_name]
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = SAMPLERS["midpoint"](oracle, schedule, x1, 12, denoise=False).x0
    assert torch.allclose(got, midpoint_in_t(oracle, schedule, x1, 12), atol=1e-12)


def test_runge_kutta_samplers_are_exact_for_white_data_and_exponential_integrators_are_not():
    # Unit-variance white data: eps = sigma chi, so the PF-ODE velocity in whitened components
    # is zero and chi(1) is already a sample of p_0. heun and midpoint integrate the whole
    # velocity and keep chi; ddim and dpm2 split it into two cancelling parts and move chi.
    white = GaussianOracle(torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64))
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, schedule in schedules(D).items():
        for method in ("heun", "midpoint"):
            out = SAMPLERS[method](white, schedule, x1, 10, denoise=False).x0
            assert torch.allclose(out, x1, rtol=0, atol=1e-12), (method, name)
        for method in EXPONENTIAL:
            out = SAMPLERS[method](white, schedule, x1, 10, denoise=False).x0
            assert (out - x1).abs().max() > 1e-4, (method, name)


def test_heun_in_t_drops_to_first_order_where_beta_jumps(oracle):
    # Why heun steps in gamma: the clipped schedule's beta jumps, and the trapezoid in t
    # samples it at points and loses an order there (heun keeps 2, tested above).
    schedule = schedules(D)["sequential"]
    mean, cov = marginal(oracle, schedule, 0.0)
    mu1, cov1 = marginal(oracle, schedule, 1.0)
    start = torch.cat([mu1[None], mu1 + torch.linalg.cholesky(cov1).T])
    steps, errors = [128, 256, 512], []
    for n in steps:
        out = heun_in_t(oracle, schedule, start, n)
        lin = (out[1:] - out[0]).T
        errors.append(math.sqrt(kl(out[0], lin @ lin.T, mean, cov)))
    assert 0.8 < fitted_order(steps, errors) < 1.5


@pytest.mark.parametrize("schedule_name", ["linear", "soft", "sequential"])
def test_euler_maruyama_moments_converge_at_first_order(oracle, schedule_name):
    schedule = schedules(D)[schedule_name]
    target = marginal(oracle, schedule, 0.0)
    steps = [32, 64, 128]
    errors = [math.sqrt(kl(*em_moments(oracle, schedule, n), *target)) for n in steps]
    assert fitted_order(steps, errors) == pytest.approx(1.0, abs=0.15)


def sample_moments(method, oracle, schedule, steps, n, seed, start=None):
    g = torch.Generator().manual_seed(seed)
    if start is None:
        mu1, cov1 = marginal(oracle, schedule, 1.0)
        z = torch.randn(n, D, generator=g, dtype=torch.float64)
        start = mu1 + z @ torch.linalg.cholesky(cov1).T
    x = sample(method, oracle, schedule, start, steps, g, denoise=False, dtype=torch.float64).x0
    return x.mean(0), torch.cov(x.T)


# Expected KL(N(sample moments) || N(true moments)) from sampling alone: parameters / (2 n).
def sampling_kl(n: int) -> float:
    return (D + D * (D + 1) / 2) / (2 * n)


def test_euler_maruyama_samples_follow_the_exact_em_recursion(oracle):
    schedule = schedules(D)["soft"]
    n = 20_000
    got = sample_moments("em", oracle, schedule, 16, n, seed=1)
    assert kl(*got, *em_moments(oracle, schedule, 16)) < 1.5 * sampling_kl(n)
    # ... and that recursion is measurably away from p_0 at 16 steps, so the check has teeth.
    assert kl(*em_moments(oracle, schedule, 16), *marginal(oracle, schedule, 0.0)) > 10 * sampling_kl(n)


@pytest.mark.slow
@pytest.mark.parametrize("schedule_name", ["linear", "soft", "sequential"])
def test_euler_maruyama_sample_kl_falls_at_first_order(oracle, schedule_name):
    schedule = schedules(D)[schedule_name]
    target = marginal(oracle, schedule, 0.0)
    n, steps = 20_000, [32, 128]
    errors = [math.sqrt(max(kl(*sample_moments("em", oracle, schedule, k, n, seed=k), *target)
                            - sampling_kl(n), 1e-12)) for k in steps]
    assert fitted_order(steps, errors) == pytest.approx(1.0, abs=0.3)


@pytest.mark.parametrize("method", ["heun", "midpoint", "dpm2", "adaptive"])
def test_samples_from_standard_normal_noise_match_the_data_marginal(oracle, method):
    # gamma(1) = 8 makes p_1 = N(0, I) up to 3e-4 in variance, far below the sampling noise.
    schedule = schedules(D)["soft"]
    n = 10_000
    g = torch.Generator().manual_seed(3)
    x = sample(method, oracle, schedule, (n, D), 32, g, dtype=torch.float64, denoise=False).x0
    assert kl(x.mean(0), torch.cov(x.T), *marginal(oracle, schedule, 0.0)) < 1.5 * sampling_kl(n)


def test_adaptive_solves_the_flow_to_its_tolerance_and_counts_calls(oracle):
    schedule = schedules(D)["soft"]
    target = marginal(oracle, schedule, 0.0)
    loose = kl(*exact_output("adaptive", oracle, schedule, 10, rtol=1e-3, atol=1e-3), *target)
    tight = kl(*exact_output("adaptive", oracle, schedule, 10, rtol=1e-8, atol=1e-8), *target)
    assert tight < 1e-10 and tight < loose


def test_adaptive_restarts_at_the_kinks_it_is_given(oracle):
    # The sequential schedule's corners (schedule_kinks) are the default restart times: passing
    # them gives the same solve bit for bit; without restarts (kinks = []) dopri5 has to find
    # each corner by rejected steps (1357 calls against 864 at 1e-8).
    schedule = schedules(D)["sequential"]
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = {name: SAMPLERS["adaptive"](oracle, schedule, x1, 10, rtol=1e-8, atol=1e-8, denoise=False, kinks=kinks)
            for name, kinks in (("default", None), ("given", schedule_kinks(schedule)), ("unsplit", []))}
    assert torch.equal(runs["default"].x0, runs["given"].x0) and runs["default"].nfe == runs["given"].nfe
    assert runs["default"].nfe < runs["unsplit"].nfe


@pytest.mark.parametrize("kinks", [[0.5, 1.0], [-0.1], "soon", [float("nan")]])
def test_adaptive_kinks_outside_0_1_are_E651(oracle, kinks):
    with pytest.raises(GudError) as err:
        sample("adaptive", oracle, schedules(D)["linear"], (2, D), 5, kinks=kinks)
    assert err.value.diagnostics[0].code == "E651"


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_standing_still_components_stay_unchanged(oracle, method):
    # Group 0 of the sequential schedule is pure noise (gamma clipped at g_max) for t >= 0.5.
    # Bit for bit, except adaptive: dopri5's dense-output interpolation rounds.
    schedule = schedules(D)["sequential"]
    still = torch.arange(D) // (D // 4) == 0
    x1 = torch.randn(64, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = SAMPLERS[method](oracle, schedule, x1, 7, torch.Generator().manual_seed(1), t_end=0.55,
                         denoise=False).x0
    if method == "adaptive":
        assert torch.allclose(x[:, still], x1[:, still], rtol=0, atol=1e-14)
    else:
        assert torch.equal(x[:, still], x1[:, still])
    assert not torch.isclose(x[:, ~still], x1[:, ~still]).any()


class Counting:
    """An eps model that counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t, gamma):
        self.calls += 1
        return self.model(x, t, gamma)


@pytest.mark.parametrize("method,expected", [("em", 11), ("heun", 20), ("midpoint", 21), ("ddim", 11),
                                             ("dpm2", 21), ("dpmpp2m", 11), ("dpmpp3m", 11), ("unipc", 11),
                                             ("adaptive", None)])
def test_nfe_counts_every_model_call_including_the_final_denoise(oracle, method, expected):
    model = Counting(oracle)
    result = sample(method, model, schedules(D)["linear"], (8, D), 10, torch.Generator().manual_seed(0))
    assert result.nfe == model.calls
    if expected is not None:
        assert result.nfe == expected


def test_denoise_returns_the_posterior_mean_of_the_data(oracle):
    schedule = schedules(D)["soft"]
    x1 = torch.randn(32, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state = sample("ddim", oracle, schedule, x1, 20, t_end=0.3, denoise=False).x0
    denoised = sample("ddim", oracle, schedule, x1, 20, t_end=0.3, denoise=True).x0
    gamma, _ = schedule(torch.full((1,), 0.3, dtype=torch.float64))
    alpha = torch.sigmoid(-gamma[0]).sqrt()
    mean_t, cov_t = oracle.marginal(gamma)
    # E[chi_0 | chi_t] = m + C A Cov_t^-1 (chi_t - A m) by Gaussian conditioning.
    gain = (oracle.cov * alpha) @ torch.linalg.inv(cov_t[0])
    expected = oracle.mean + (state - mean_t[0]) @ gain.T
    assert torch.allclose(denoised, expected, atol=1e-9)


def test_samplers_follow_the_dtype_of_the_start(oracle):
    x1 = torch.randn(4, D)
    for method in SAMPLERS:
        assert sample(method, oracle, schedules(D)["linear"], x1, 4).x0.dtype == torch.float32


def test_sample_draws_the_start_from_the_generator(oracle):
    schedule = schedules(D)["linear"]
    a = sample("em", oracle, schedule, (5, D), 3, torch.Generator().manual_seed(7)).x0
    b = sample("em", oracle, schedule, (5, D), 3, torch.Generator().manual_seed(7)).x0
    c = sample("em", oracle, schedule, (5, D), 3, torch.Generator().manual_seed(8)).x0
    assert a.shape == (5, D) and torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_sampler_is_E650_with_a_suggestion(oracle):
    with pytest.raises(GudError) as err:
        sample("dpm", oracle, schedules(D)["linear"], (2, D), 4)
    assert err.value.diagnostics[0].code == "E650" and "dpm2" in err.value.diagnostics[0].help


@pytest.mark.parametrize("args,options", [
    ((0,), {}), ((2.5,), {}), ((4,), {"t_end": 1.0}), ((4,), {"t_end": -0.1}),
    ((4,), {"rtol": 1e-3}), ((4,), {"eta": 1.0}),
])
def test_invalid_sampler_arguments_are_E651(oracle, args, options):
    with pytest.raises(GudError) as err:
        sample("heun", oracle, schedules(D)["linear"], (2, D), *args, **options)
    assert err.value.diagnostics[0].code == "E651"


def test_adaptive_rejects_a_non_positive_tolerance_and_bad_starts_are_E651(oracle):
    schedule = schedules(D)["linear"]
    for call in (lambda: sample("adaptive", oracle, schedule, (2, D), 4, rtol=0.0),
                 lambda: sample("ddim", oracle, schedule, (2, 3, D), 4),
                 lambda: sample("ddim", oracle, schedule, torch.full((2, D), float("nan")), 4)):
        with pytest.raises(GudError) as err:
            call()
        assert err.value.diagnostics[0].code == "E651"


def test_non_finite_samples_are_E652(oracle):
    def broken(x, t, gamma):
        return torch.full_like(x, float("inf"))
    with pytest.raises(GudError) as err:
        sample("ddim", broken, schedules(D)["linear"], (2, D), 4)
    assert err.value.diagnostics[0].code == "E652"


def test_every_method_lists_its_options_and_the_spec_and_cli_know_it():
    assert set(OPTIONS) == set(SAMPLERS) == set(typing.get_args(SamplerName))
    assert all({"t_end", "denoise"} <= set(v) for v in OPTIONS.values())
    assert all(("grid" in v) == (name != "adaptive") for name, v in OPTIONS.items())


def test_the_spec_has_the_samplers_defaults_and_grids_and_runs_pass_the_grid_on():
    import gudlang.samplers as samplers
    from gudlang.api import sampler_options as _sampler_options
    from gudlang.spec import SampleSettings
    settings = SampleSettings()
    assert (settings.sampler, settings.steps, settings.grid) == \
        (samplers.DEFAULT_SAMPLER, samplers.DEFAULT_STEPS, samplers.DEFAULT_GRID)
    assert typing.get_args(SampleSettings.model_fields["grid"].annotation) == GRIDS
    assert _sampler_options("unipc", settings.model_copy(update={"grid": "logsnr"})) == \
        {"denoise": True, "grid": "logsnr"}
    assert "grid" not in _sampler_options("adaptive", settings)


def test_adaptive_tolerances_below_float64_reach_are_refused_and_runaway_solves_stop(oracle, monkeypatch):
    import gudlang.samplers as samplers
    from gudlang.spec import SampleSettings
    schedule = schedules(D)["soft"]
    with pytest.raises(GudError) as err:
        sample("adaptive", oracle, schedule, (2, D), 4, rtol=1e-300, atol=1e-300)
    assert err.value.diagnostics[0].code == "E651"
    # The spec's bound is the sampler's (SampleSettings refuses what sample() would).
    assert SampleSettings.model_fields["rtol"].metadata[0].ge == samplers.MIN_TOLERANCE
    monkeypatch.setattr(samplers, "MAX_ADAPTIVE_NFE", 20)
    with pytest.raises(GudError) as err:
        sample("adaptive", oracle, schedule, (2, D), 4, rtol=1e-10, atol=1e-10)
    assert err.value.diagnostics[0].code == "E652" and "20 model calls" in err.value.diagnostics[0].message


# --------------------------------------------------------------------------- multistep methods
@pytest.mark.parametrize("schedule_name", ["linear", "soft", "sequential"])
@pytest.mark.parametrize("method", list(MULTISTEP_ORDERS))
def test_multistep_samplers_reach_their_order_on_the_exact_gaussian(oracle, method, schedule_name):
    # On Gaussian data dpmpp3m even falls like steps^-4 (an error term vanishes for linear
    # eps); clipped schedules with coupled components cap every method at 2: the kinks of the
    # other components bend each component's x0 inside a step.
    schedule = schedules(D)[schedule_name]
    target = marginal(oracle, schedule, 0.0)
    steps = [64, 128, 256]
    errors = [math.sqrt(kl(*exact_output(method, oracle, schedule, n), *target)) for n in steps]
    assert errors[0] > errors[1] > errors[2]
    expected = MULTISTEP_ORDERS[method] if schedule_name != "sequential" else 2
    assert fitted_order(steps, errors) >= expected - 0.3


class Tanh:
    """A nonlinear denoiser, x0 = tanh(W chi + 0.3) (1 + sin(3 t) / 2), as an eps model: nothing
    Gaussian that could cancel an error term."""

    def __init__(self):
        self.w = torch.randn(D, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64) / 4

    def __call__(self, x, t, gamma):
        x0 = torch.tanh(x @ self.w.T + 0.3) * (1 + 0.5 * torch.sin(3 * t[:, None]))
        return (x - torch.sigmoid(-gamma).sqrt() * x0) / torch.sigmoid(gamma).sqrt()


@pytest.mark.slow
@pytest.mark.parametrize("schedule_name", ["linear", "soft"])
@pytest.mark.parametrize("method", list(MULTISTEP_ORDERS))
def test_multistep_samplers_converge_at_their_exact_order_on_a_nonlinear_denoiser(method, schedule_name):
    model, schedule = Tanh(), schedules(D)[schedule_name]
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = SAMPLERS["adaptive"](model, schedule, x1, 10, denoise=False, rtol=1e-12, atol=1e-12).x0
    steps = [128, 256, 512]
    errors = [float((SAMPLERS[method](model, schedule, x1, n, denoise=False).x0 - reference).abs().max())
              for n in steps]
    assert fitted_order(steps, errors) == pytest.approx(MULTISTEP_ORDERS[method], abs=0.2)


class LinearInLambda:
    """An eps model whose x0 is a_i + b_i lambda_i(t) whatever chi. The PF-ODE in the data
    prediction, d chi / d lambda = -alpha^2 chi + alpha x0, then has the solution
    chi = sigma (C + int e^lambda x0 dlambda), int e^lambda (a + b lambda) = e^lambda (a + b lambda - b)."""

    def __init__(self):
        g = torch.Generator().manual_seed(2)
        self.a = torch.randn(D, generator=g, dtype=torch.float64)
        self.b = 0.3 * torch.randn(D, generator=g, dtype=torch.float64)

    def __call__(self, x, t, gamma):
        x0 = self.a + self.b * (-0.5 * gamma)
        return (x - torch.sigmoid(-gamma).sqrt() * x0) / torch.sigmoid(gamma).sqrt()

    def exact(self, schedule, x1):
        (g1, _), (g0, _) = (schedule(torch.full((1,), t, dtype=torch.float64)) for t in (1.0, 0.0))
        def primitive(gamma):
            lam = -0.5 * gamma
            return torch.exp(lam) * (self.a + self.b * lam - self.b)
        s1, s0 = torch.sigmoid(g1).sqrt(), torch.sigmoid(g0).sqrt()
        return s0 / s1 * x1 + s0 * (primitive(g0) - primitive(g1))


@pytest.mark.parametrize("method,schedule_name", [
    ("dpmpp2m", "linear"), ("dpmpp2m", "soft"), ("dpmpp3m", "linear"), ("dpmpp3m", "soft")])
def test_multistep_samplers_are_exact_when_x0_is_linear_in_each_components_lambda(method, schedule_name):
    # Per-component lambda nodes, exactly integrated (dpmpp2m / dpmpp3m fall to first order in the
    # step after a component stood still, so the clipped schedule is not exact for them). unipc is
    # not exact here by design: it moves the stored x0 with the prior's gain d x0 / d chi = alpha,
    # which this model, whose x0 ignores chi, does not have (see the test below).
    model, schedule = LinearInLambda(), schedules(D)[schedule_name]
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = SAMPLERS[method](model, schedule, x1, 7, denoise=False).x0
    assert torch.allclose(out, model.exact(schedule, x1), rtol=0, atol=1e-10)


def unipc_reference(model, schedule, x, steps, recall: bool):
    """UniPC written out for schedules where every component moves in every step (uniform grid):
    x0 a polynomial in each component's lambda through the last 3 values (predictor) and through
    those and the new one (corrector), integrated by 40-point Gauss-Legendre quadrature; the new
    value is the model's x0 at the predictor's state, or (recall) a second call at the corrected one."""
    nodes, weights = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(40))
    v = 0.5 * (nodes + 1)  # quadrature in v = u / h on [0, 1]

    def gamma(t):
        return schedule(torch.full((1,), t, dtype=torch.float64))[0]

    def x0(x, t):
        g = gamma(t)
        return (x - torch.sigmoid(g).sqrt() * model(x, None, g.expand(len(x), -1))) / torch.sigmoid(-g).sqrt()

    def step(x, t, s, history):
        lt, ls = -0.5 * gamma(t), -0.5 * gamma(s)
        h = ls - lt
        zs = [(-0.5 * gamma(tj) - lt) / h for tj, _ in history]
        out = torch.sigmoid(-2 * ls).sqrt() / torch.sigmoid(-2 * lt).sqrt() * x
        for j, (_, value) in enumerate(history):
            basis = torch.ones(len(v), zs[j].shape[-1], dtype=torch.float64)
            for m, zm in enumerate(zs):
                if m != j:
                    basis = basis * (v[:, None] - zm) / (zs[j] - zm)
            w = 0.5 * (weights[:, None] * h * torch.exp(h * (v[:, None] - 1)) * basis).sum(0)
            out = out + torch.sigmoid(2 * ls).sqrt() * w * value
        return out

    ts = [1.0 - k / steps for k in range(steps + 1)]
    history = [(ts[0], x0(x, ts[0]))]  # newest first
    for k in range(steps):
        t, s = ts[k], ts[k + 1]
        predicted = step(x, t, s, history[:3])
        if k == steps - 1:
            return predicted
        new = x0(predicted, s)
        x = step(x, t, s, [(s, new)] + history[:3])
        history = [(s, x0(x, s) if recall else new)] + history


@pytest.mark.parametrize("schedule_name", ["linear", "soft"])
@pytest.mark.parametrize("spread", [0.0, 3.0])
def test_unipc_moves_x0_to_the_corrected_state_with_the_datas_gain(schedule_name, spread):
    # Independent components of variance v (1 when spread = 0: the whitened prior, the default):
    # x0 = alpha v / (alpha^2 v + sigma^2) chi (Tweedie), so moving the x0 called at the predictor's
    # state by that gain times (corrected - predicted) is exactly the x0 a second call at the
    # corrected state returns.
    v = torch.logspace(-spread, spread, D, dtype=torch.float64)
    data = GaussianOracle(torch.zeros(D, dtype=torch.float64), torch.diag(v))
    schedule = schedules(D)[schedule_name]
    x1 = torch.randn(8, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"variance": v.numpy()} if spread else {}
    out = SAMPLERS["unipc"](data, schedule, x1, 9, denoise=False, grid="uniform", **options)
    assert out.nfe == 9
    assert torch.allclose(out.x0, unipc_reference(data, schedule, x1, 9, recall=True), rtol=0, atol=1e-10)
    stale = unipc_reference(data, schedule, x1, 9, recall=False)
    assert (out.x0 - stale).abs().max() > 1e-4
    if spread:  # the prior's gain is not the data's
        prior_gain = SAMPLERS["unipc"](data, schedule, x1, 9, denoise=False, grid="uniform")
        assert (prior_gain.x0 - out.x0).abs().max() > 1e-4


@pytest.mark.parametrize("variance", [np.ones(D - 1), np.full(D, np.nan), -np.ones(D)])
def test_a_variance_that_is_not_one_per_component_is_E651(oracle, variance):
    with pytest.raises(GudError) as err:
        sample("unipc", oracle, schedules(D)["linear"], (2, D), 3, variance=variance)
    assert err.value.diagnostics[0].code == "E651" and "variance" in err.value.diagnostics[0].message


def test_models_give_unipc_the_whitened_variance_of_their_data(tmp_path, monkeypatch):
    import gudlang
    import gudlang.samplers as samplers
    spec = tmp_path / "oracle.gud"
    spec.write_text("gud 1\ndata = grf(size = 4, slope = 3, n = 400)\nbasis = dct()\nprior = white\n"
                    "network = oracle()\ngamma(t) = linear(t, lo = -8, hi = 8)\n")
    seen = {}

    def spy(name):
        def run(*args, **options):
            seen[name] = options
            return SAMPLERS[name](*args, **options)
        return run
    monkeypatch.setattr(samplers, "SAMPLERS", {name: spy(name) for name in SAMPLERS})
    model = gudlang.load(spec)
    for name in ("unipc", "dpmpp3m"):
        model.sample(2, sampler=name, steps=3)
    np.testing.assert_array_equal(seen["unipc"]["variance"], model.model.features["wvar"])
    assert np.ptp(model.model.features["wvar"]) > 1  # white prior, steep field: not the prior's 1
    assert "variance" not in seen["dpmpp3m"]


@pytest.mark.parametrize("h", [0.0, 1e-9, -1e-9, 1e-4, -0.3, 0.999, 1.0, -1.0, 1.001, 2.5, -7.0, 20.0])
def test_phi_weights_are_the_integrals_they_name(h):
    from scipy.integrate import quad
    got = phi_weights(torch.tensor([h], dtype=torch.float64), 4)
    for n, w in enumerate(got):
        expected = quad(lambda u: math.exp(h - u) * (u / h) ** n, 0.0, h, epsabs=0, epsrel=1e-13)[0] if h else 0.0
        assert float(w) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    if h == 0.0:
        assert all(float(w) == 0.0 for w in got)


# --------------------------------------------------------------------------- time grids
def library_schedule(line: str):
    """A schedule of the language's library compiled for D components (4x4 pixels, unit variances)."""
    from gudlang.check import check_text
    from gudlang.schedules import compile_schedule
    checked = check_text(f"gud 1\ndata = grf(size = 4)\nbasis = pixel()\nprior = white\n{line}\n", "<test>")
    rows, cols = np.divmod(np.arange(D), 4)
    feats = {"var": np.ones(D), "wvar": np.ones(D), "rank": np.arange(D) / (D - 1), "row": rows / 3,
             "col": cols / 3, "chan": np.zeros(D)}
    return compile_schedule(checked.gamma, feats, checked.fixed_params, {}, D)


GRID_SCHEDULES = {**schedules(D), "vp": library_schedule("gamma(t) = vp(t)"),
                  "clipped": library_schedule("gamma_i(t) = soft(t, rank(i), a = 50, clipped = true)")}


@pytest.mark.parametrize("t_end", [0.0, 0.3])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("schedule_name", list(GRID_SCHEDULES))
@pytest.mark.parametrize("kind", GRIDS)
def test_time_grids_run_strictly_down_from_1_to_t_end_in_steps(kind, schedule_name, steps, t_end):
    ts = time_grid(kind, GRID_SCHEDULES[schedule_name], steps, t_end)
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == 1.0 and float(ts[-1]) == t_end
    assert bool((ts[1:] < ts[:-1]).all())


def mean_gamma(schedule, ts):
    return schedule(ts)[0].mean(dim=1)


@pytest.mark.parametrize("schedule_name", ["vp", "sequential", "clipped"])
def test_logsnr_grid_steps_evenly_in_mean_gamma(schedule_name):
    # Even up to the 2% of uniform time mixed in (and the fit on 4097 points).
    schedule = GRID_SCHEDULES[schedule_name]
    levels = mean_gamma(schedule, time_grid("logsnr", schedule, 20))
    gaps = levels[:-1] - levels[1:]
    assert float(gaps.max() / gaps.mean()) < 1.1 and float(gaps.min() / gaps.mean()) > 0.9


def test_fitted_grid_is_uniform_in_log_snr_for_a_scalar_schedule_and_in_t_for_parallel_and_clipped_lines():
    vp = GRID_SCHEDULES["vp"]
    assert torch.allclose(time_grid("fitted", vp, 20), time_grid("logsnr", vp, 20), atol=1e-9)
    assert not torch.allclose(time_grid("fitted", vp, 20), time_grid("uniform", vp, 20), atol=1e-2)
    for name in ("linear", "soft", "clipped"):
        schedule = GRID_SCHEDULES[name]
        assert torch.allclose(time_grid("fitted", schedule, 20), time_grid("uniform", schedule, 20), atol=1e-3), name
    # logsnr would give the clipped schedule's first and last components fewer steps
    clipped = GRID_SCHEDULES["clipped"]
    assert float(time_grid("logsnr", clipped, 20)[-2]) > 1.5 * float(time_grid("fitted", clipped, 20)[-2])


@pytest.mark.parametrize("kind", ["logsnr", "fitted"])
def test_grids_fitted_in_bounded_chunks_equal_the_grid_fitted_at_once(kind, monkeypatch):
    # a 3x256x256 schedule's (4097, D) table is 2 GB: chunks of at most BATCH_VALUES values
    import gudlang.samplers as samplers

    clipped = GRID_SCHEDULES["clipped"]
    whole = time_grid(kind, clipped, 20)
    calls = []
    monkeypatch.setattr(samplers, "BATCH_VALUES", 7 * D)
    monkeypatch.setattr(clipped, "forward", lambda t, f=clipped.forward: calls.append(len(t)) or f(t))
    assert torch.equal(time_grid(kind, clipped, 20), whole)
    assert max(calls) == 7 and sum(calls[1:]) == 4097


def test_fixed_step_samplers_take_the_grid_by_name_or_as_times(oracle):
    schedule = GRID_SCHEDULES["vp"]
    x1 = torch.randn(4, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method in ("em", "heun", "midpoint", "ddim", "dpm2", "dpmpp2m", "dpmpp3m", "unipc"):
        by_name = SAMPLERS[method](oracle, schedule, x1, 6, torch.Generator().manual_seed(1), grid="logsnr").x0
        by_times = SAMPLERS[method](oracle, schedule, x1, 6, torch.Generator().manual_seed(1),
                                    grid=time_grid("logsnr", schedule, 6)).x0
        uniform = SAMPLERS[method](oracle, schedule, x1, 6, torch.Generator().manual_seed(1), grid="uniform").x0
        assert torch.equal(by_name, by_times) and not torch.allclose(by_name, uniform), method


@pytest.mark.parametrize("grid", ["logsnr ", "fited", torch.linspace(1, 0, 5), torch.tensor([1.0, 0.5, 0.6, 0.0]),
                                  torch.tensor([0.9, 0.5, 0.2, 0.0]), torch.tensor([1.0, 0.5, 0.2, 0.1])])
def test_an_unknown_or_invalid_grid_is_E651(oracle, grid):
    with pytest.raises(GudError) as err:
        sample("unipc", oracle, schedules(D)["linear"], (2, D), 3, grid=grid)
    assert err.value.diagnostics[0].code == "E651"
    if grid == "fited":
        assert "fitted" in err.value.diagnostics[0].help


# --------------------------------------------------------------------------- numerics
class Recorded:
    """A schedule or eps model that records the times it is evaluated at."""

    def __init__(self, fn, times):
        self.fn, self.times = fn, times

    def __call__(self, *args):
        self.times.append(args[1] if len(args) == 3 else args[0])
        return self.fn(*args)


def test_the_vp_schedule_is_nan_before_0_and_adaptive_clamps_its_times_into_0_1(oracle):
    # dopri5 steps past t_end = 0; vp's gamma = log(expm1(...)) is NaN there.
    vp = GRID_SCHEDULES["vp"]
    assert bool(vp(torch.tensor([-0.005], dtype=torch.float64))[0].isnan().any())
    mu1, cov1 = marginal(oracle, vp, 1.0)
    start = torch.cat([mu1[None], mu1 + torch.linalg.cholesky(cov1).T])
    times = []
    out = SAMPLERS["adaptive"](Recorded(oracle, times), Recorded(vp, times), start, 10, rtol=1e-8, atol=1e-8,
                               denoise=False).x0
    lin = (out[1:] - out[0]).T
    assert kl(out[0], lin @ lin.T, *marginal(oracle, vp, 0.0)) < 1e-8
    t = torch.cat([v.reshape(-1) for v in times])
    assert float(t.min()) == 0.0 and float(t.max()) == 1.0


@pytest.mark.parametrize("method", ["em", "adaptive"])
def test_a_sigma_that_underflows_in_float32_cannot_make_samples_infinite(oracle, method):
    # sigmoid(gamma) is 0 in float32 below gamma = -104: beta / sigma computed as such is 0 * inf.
    schedule = LinearSchedule(D, g_min=-200.0, g_max=8.0)
    assert float(torch.sigmoid(torch.tensor(-150.0))) == 0.0
    x1 = torch.randn(4, D, generator=torch.Generator().manual_seed(0))
    out = sample(method, oracle, schedule, x1, 8, torch.Generator().manual_seed(1), denoise=False).x0
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
