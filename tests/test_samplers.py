"""Samplers: convergence orders against closed forms, standing-still components, the front.

With the Gaussian oracle the eps model is affine in chi, so every deterministic sampler is an
affine map chi(1) -> chi(t_end). Applying it to mu_1 and mu_1 + L_1 e_j (Cov_1 = L_1 L_1^T)
gives its exact output mean and covariance when chi(1) ~ p_1, the exact t = 1 marginal, without
sampling noise. The exact PF-ODE maps p_1 to p_0, so the Gaussian KL(output || p_0) measures the
discretisation error alone; sqrt(KL) falls like steps^-order. Euler-Maruyama is an affine map
plus Gaussian noise: its output moments follow a matrix recursion (`em_moments`), which the
sampler itself is checked against by Monte Carlo.
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
from gudlang.samplers import OPTIONS, SAMPLERS, sample
from gudlang.spec import SamplerName
from schedule_fixtures import gaussian_data, schedules, one_thread  # noqa: F401 (autouse fixture)

D = 16
ORDERS = {"ddim": 1.0, "heun": 2.0, "midpoint": 2.0, "dpm2": 2.0}


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
        for method in ("ddim", "dpm2"):
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
                                             ("dpm2", 21),
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
