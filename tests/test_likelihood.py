"""Likelihood by the PF-ODE against closed forms; bits/dim and dequantisation conventions.

For Gaussian data the PF-ODE is affine: chi_1 - mu_1 = Phi (chi_0 - mu_0) with
dPhi/dt = J(t) Phi, J = -1/2 diag(beta) (I - Cov_t^-1), and log p_0(chi_0) = log p_1(chi_1)
+ log det Phi. `flow_matrix` integrates Phi independently with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.stats import multivariate_normal
from torch import nn

from gudlang.diagnostics import GudError
from gudlang.likelihood import (bits_per_dim, dequantise, log_likelihood, mean_and_stderr,
                                standard_normal_logp)
from gudlang.oracle import GaussianOracle, whitened_moments
from schedule_fixtures import LinearSchedule, gaussian_data, schedules, one_thread  # noqa: F401 (autouse fixture)

D = 16
TOL = dict(rtol=1e-8, atol=1e-8)


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle(*gaussian_data(D))


def at(schedule, t: float, n: int = 1):
    return schedule(torch.full((n,), t, dtype=torch.float64))[0]


def data(oracle, schedule, n: int, seed: int = 0):
    """n draws of the t = 0 marginal p_0."""
    mean, cov = oracle.marginal(at(schedule, 0.0))
    z = torch.randn(n, oracle.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean[0] + z @ torch.linalg.cholesky(cov[0]).T


def flow_matrix(oracle, schedule) -> np.ndarray:
    eye = np.eye(oracle.dim)

    def rhs(t, phi):
        gamma, beta = schedule(torch.full((1,), t, dtype=torch.float64))
        prec = np.linalg.inv(oracle.marginal(gamma)[1][0].numpy())
        jac = -0.5 * beta[0].numpy()[:, None] * (eye - prec)
        return (jac @ phi.reshape(eye.shape)).ravel()

    sol = solve_ivp(rhs, (0.0, 1.0), eye.ravel(), rtol=1e-11, atol=1e-12, method="DOP853")
    return sol.y[:, -1].reshape(eye.shape)


@pytest.mark.parametrize("schedule_name", ["linear", "soft", "sequential"])
def test_with_the_exact_prior_the_ode_recovers_the_exact_data_density(oracle, schedule_name):
    schedule = schedules(D)[schedule_name]
    x0 = data(oracle, schedule, 6)
    gamma1 = at(schedule, 1.0)
    result = log_likelihood(oracle, schedule, x0, prior_logp=lambda x: oracle.log_prob(x, gamma1), **TOL)
    assert result.method == "exact" and result.nfe > 0
    assert torch.allclose(result.logp, oracle.log_prob_data(x0, schedule), atol=1e-5)


def test_with_the_standard_normal_prior_the_result_is_off_by_exactly_the_prior_mismatch(oracle):
    # gamma(1) = 0 leaves half the signal at t = 1: p_1 is far from N(0, I).
    schedule = LinearSchedule(D, g_min=-10.0, g_max=0.0)
    x0 = data(oracle, schedule, 6, seed=1)
    phi = torch.as_tensor(flow_matrix(oracle, schedule))
    mean0, mean1 = oracle.marginal(at(schedule, 0.0))[0][0], oracle.marginal(at(schedule, 1.0))[0][0]
    x1 = mean1 + (x0 - mean0) @ phi.T
    result = log_likelihood(oracle, schedule, x0, **TOL)
    assert torch.allclose(result.x1, x1, atol=1e-6)
    expected = standard_normal_logp(x1) + torch.linalg.slogdet(phi)[1]
    assert torch.allclose(result.logp, expected, atol=1e-5)
    # ... which differs from the exact log p_0 by log N(x1; 0, I) - log p_1(x1), here by a lot.
    exact = oracle.log_prob_data(x0, schedule)
    mismatch = standard_normal_logp(x1) - oracle.log_prob(x1, at(schedule, 1.0))
    assert torch.allclose(result.logp - exact, mismatch, atol=1e-5)
    assert mismatch.abs().min() > 0.1


class Mlp(nn.Module):
    """A small nonlinear eps model, to check the traces beyond linear models."""

    def __init__(self, dim: int):
        super().__init__()
        with torch.random.fork_rng():  # a fixed network without touching the global stream
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(2 * dim, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, x, t, gamma):
        return self.net(torch.cat([x, torch.sigmoid(gamma)], -1))


def test_hutchinson_agrees_with_the_exact_trace_in_expectation():
    dim, copies = 8, 48
    model, schedule = Mlp(dim), LinearSchedule(dim)
    x0 = torch.randn(3, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = log_likelihood(model, schedule, x0, rtol=1e-6, atol=1e-6)
    hutch = log_likelihood(model, schedule, x0.repeat(copies, 1), exact_trace=False, rtol=1e-6,
                           atol=1e-6, generator=torch.Generator().manual_seed(3))
    assert exact.method == "exact" and hutch.method == "hutchinson(1)"
    draws = hutch.logp.view(copies, 3)
    stderr = draws.std(0) / math.sqrt(copies)
    assert (stderr > 1e-3).all()  # the estimate really is random
    assert ((draws.mean(0) - exact.logp).abs() < 4 * stderr + 1e-4).all()


def test_more_hutchinson_samples_reduce_the_spread():
    dim = 8
    model, schedule = Mlp(dim), LinearSchedule(dim)
    x0 = torch.randn(1, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64).repeat(32, 1)
    spreads = [log_likelihood(model, schedule, x0, exact_trace=False, hutchinson_samples=k,
                              generator=torch.Generator().manual_seed(4)).logp.std() for k in (1, 16)]
    assert spreads[1] < spreads[0] / 2


def test_large_dimensions_default_to_hutchinson_and_a_linear_drift_is_exact():
    # eps = 0: chi_1 = chi_0 alpha_1 / alpha_0 and div f = -1/2 sum beta, whatever the probe.
    dim = 300
    schedule = LinearSchedule(dim)
    x0 = torch.randn(2, dim, dtype=torch.float64)
    result = log_likelihood(lambda x, t, gamma: 0.0 * x, schedule, x0, **TOL)
    softplus = torch.nn.functional.softplus
    g0, g1 = at(schedule, 0.0)[0, 0], at(schedule, 1.0)[0, 0]
    log_ratio = -0.5 * (softplus(g1) - softplus(g0))
    expected = standard_normal_logp(x0 * log_ratio.exp()) + dim * log_ratio
    assert result.method == "hutchinson(1)"
    assert torch.allclose(result.logp, expected, rtol=1e-9)


def test_bits_per_dim_by_hand():
    # -(logp + log|det M| + D log(2 / 255)) / (D ln 2) with logp = -1, log|det M| = 0.5, D = 2:
    # log(2 / 255) = -4.848116, so -(-0.5 - 9.696233) / 1.386294 = 7.355027.
    bpd = bits_per_dim(torch.tensor([-1.0], dtype=torch.float64), 0.5, 2, data_scale=2.0, levels=256)
    assert float(bpd) == pytest.approx(7.355027, abs=1e-6)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_a_uniform_model_over_the_level_cells_has_log2_levels_bits(levels):
    # Density 1 / (levels Delta) on the cells [-1 - Delta/2, 1 + Delta/2) of model space.
    width = 2.0 / (levels - 1)
    logp = torch.tensor([-math.log(levels * width)] * 3, dtype=torch.float64)
    assert torch.allclose(bits_per_dim(logp, 0.0, 1, 2.0, levels),
                          torch.full((3,), math.log2(levels), dtype=torch.float64))


def test_continuous_data_are_measured_per_unit_of_the_whole_range():
    # Uniform on [-1, 1] (density 1/2 per model unit) is 0 bits per dim on the unit range.
    logp = torch.tensor([4 * math.log(0.5)], dtype=torch.float64)
    assert float(bits_per_dim(logp, 0.0, 4, data_scale=2.0, levels=None)) == pytest.approx(0.0, abs=1e-12)


def test_bits_per_dim_of_a_gaussian_in_data_space_matches_the_whitened_pipeline():
    # log p(phi) = log p(chi_hat) + log|det M| with log|det M| = -sum log s for orthonormal U.
    dim = 4
    mean, cov = gaussian_data(dim, seed=5)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(6),
                                       dtype=torch.float64))
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    m_hat, c_hat = whitened_moments(mean, cov, u, scales)
    phi = mean + 0.3 * torch.randn(5, dim, dtype=torch.float64)
    logp_white = torch.as_tensor(multivariate_normal(m_hat.numpy(), c_hat.numpy())
                                 .logpdf(((phi @ u.T) / scales).numpy()))
    logp_data = multivariate_normal(mean.numpy(), cov.numpy()).logpdf(phi.numpy())
    expected = -(torch.as_tensor(logp_data) + dim * math.log(2 / 255)) / (dim * math.log(2))
    got = bits_per_dim(logp_white, float(-scales.log().sum()), dim, 2.0, 256)
    assert torch.allclose(got, expected, atol=1e-10)


def test_dequantise_fills_each_level_cell_and_rounds_back():
    levels = 17
    k = torch.randint(0, levels, (20_000,), generator=torch.Generator().manual_seed(0))
    x = 2 * k.double() / (levels - 1) - 1
    y = dequantise(x, levels, 2.0, torch.Generator().manual_seed(1))
    offset = (y - x) * (levels - 1) / 2  # in level units
    assert torch.equal(torch.round((y + 1) * (levels - 1) / 2).long(), k)
    assert offset.min() >= -0.5 and offset.max() < 0.5
    assert offset.min() < -0.49 and offset.max() > 0.49


def test_mean_and_stderr_by_hand():
    assert mean_and_stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 0.6454972))
    assert mean_and_stderr([3.0]) == (3.0, 0.0)


@pytest.mark.parametrize("call", [
    lambda o, s: log_likelihood(o, s, torch.zeros(D, dtype=torch.float64)),
    lambda o, s: log_likelihood(o, s, torch.zeros(2, D, dtype=torch.float64), hutchinson_samples=0),
    lambda o, s: log_likelihood(o, s, torch.zeros(2, D, dtype=torch.float64), rtol=0.0),
    lambda o, s: bits_per_dim(torch.zeros(1), 0.0, 1, 2.0, levels=1),
    lambda o, s: bits_per_dim(torch.zeros(1), 0.0, 1, data_scale=-1.0),
    lambda o, s: mean_and_stderr([]),
])
def test_invalid_likelihood_arguments_are_E660(oracle, call):
    with pytest.raises(GudError) as err:
        call(oracle, schedules(D)["linear"])
    assert err.value.diagnostics[0].code == "E660"


def test_a_model_that_returns_nan_is_E661():
    with pytest.raises(GudError) as err:
        log_likelihood(lambda x, t, gamma: x * float("nan"), LinearSchedule(4),
                       torch.zeros(2, 4, dtype=torch.float64))
    assert err.value.diagnostics[0].code == "E661"
