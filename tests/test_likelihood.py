"""Likelihood by the PF-ODE against closed forms; bits/dim and dequantisation conventions.

For Gaussian data the PF-ODE is affine: chi_1 - mu_1 = Phi (chi_0 - mu_0) with
dPhi/dt = J(t) Phi, J = -1/2 diag(beta) (I - Cov_t^-1), and log p_0(chi_0) = log p_1(chi_1)
+ log det Phi. `flow_matrix` integrates Phi independently with scipy. The divergence is checked
against the brute-force Jacobian (torch.autograd.functional.jacobian) of an MLP and a U-Net,
dataset bits/dim against scipy's Gaussian density, conditional densities against the exact
Gaussian conditional.
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
from gudlang.likelihood import (bits_per_dim, dataset_bits_per_dim, dequantise, dequantise_images, log_likelihood, schedule_kinks,
                                mean_and_stderr, standard_normal_logp, weighted_jacobian_trace)
from gudlang.networks import make_network
from gudlang.oracle import GaussianOracle, whitened_moments
from schedule_fixtures import LinearSchedule, SequentialSchedule, gaussian_data, schedules, one_thread  # noqa: F401 (autouse fixture)

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
    hutch = log_likelihood(model, schedule, x0.repeat(copies, 1), divergence="hutchinson", rtol=1e-6,
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
    spreads = [log_likelihood(model, schedule, x0, divergence="hutchinson", hutchinson_samples=k,
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
    lambda o, s: log_likelihood(o, s, torch.zeros(2, D, dtype=torch.float64), divergence="trace"),
    lambda o, s: log_likelihood(o, s, torch.zeros(2, D, dtype=torch.float64), probe_rows=0),
    lambda o, s: log_likelihood(o, s, torch.zeros(2, D, dtype=torch.float64), given=torch.ones(D, dtype=torch.bool)),
    lambda o, s: log_likelihood(o, s, torch.zeros(2, D, dtype=torch.float64), given=torch.zeros(D)),
    lambda o, s: dataset_bits_per_dim(o, s, lambda x: x, torch.zeros(2, D, dtype=torch.float64), levels=None,
                                      data_scale=2.0, logabsdet=0.0, batch_size=0),
    lambda o, s: dataset_bits_per_dim(o, s, lambda x: x, torch.full((2, D), math.nan), levels=None,
                                      data_scale=2.0, logabsdet=0.0),
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


def test_a_divergence_the_quadrature_cannot_resolve_is_E661():
    # eps = 1e-9 sin(1e9 chi) hardly moves the flow, but d eps / d chi = cos(1e9 chi) changes sign
    # whenever chi drifts by 3e-9: along the path the divergence is noise.
    with pytest.raises(GudError) as err:
        log_likelihood(lambda x, t, gamma: 1e-9 * torch.sin(1e9 * x), LinearSchedule(2),
                       torch.ones(1, 2, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    assert err.value.diagnostics[0].code == "E661"
    assert "did not reach its tolerance" in err.value.diagnostics[0].message


class EdgeSchedule:
    """gamma(t) = -10 + 14 t + 4 (1 - t)^(3/2), smooth on [0, 1] (gamma from -6 to 4) and NaN past
    t = 1, like a schedule built from log(1 - t) or a cosine that reaches pi / 2 just after 1.
    Records every t it is called with."""

    def __init__(self, dim: int):
        self.dim, self.times = dim, []

    def __call__(self, t: torch.Tensor):
        self.times.append(t.detach().clone())
        t = t[:, None].expand(len(t), self.dim)
        gamma = -10.0 + 14.0 * t + 4.0 * (1.0 - t) ** 1.5
        return gamma, torch.sigmoid(gamma) * (14.0 - 6.0 * (1.0 - t).sqrt())


def test_a_schedule_undefined_past_t_1_is_only_evaluated_inside_the_unit_interval(oracle):
    schedule = EdgeSchedule(D)
    assert torch.isnan(at(schedule, 1.001)).all()
    x0 = data(oracle, schedule, 6)
    gamma1 = at(schedule, 1.0)
    schedule.times.clear()
    result = log_likelihood(oracle, schedule, x0, prior_logp=lambda x: oracle.log_prob(x, gamma1),
                            rtol=1e-6, atol=1e-6)
    times = torch.cat(schedule.times)
    assert float(times.min()) >= 0.0 and float(times.max()) <= 1.0
    assert torch.allclose(result.logp, oracle.log_prob_data(x0, schedule), atol=1e-4, rtol=0)


class UNetEps(nn.Module):
    """A small U-Net on 4 x 4 images as an eps model, its zero-initialised output layer drawn at
    random so that the Jacobian is dense and far from zero."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self.net = make_network("unet", (1, 4, 4), channels=8, channel_mult=(1, 2), groups=4).double()
            nn.init.normal_(self.net.out.weight, std=0.3)

    def forward(self, x, t, gamma):
        return self.net(x.view(-1, 1, 4, 4), gamma).flatten(1)


@pytest.mark.parametrize("make", [lambda: Mlp(D), UNetEps], ids=["mlp", "unet"])
@pytest.mark.parametrize("probe_rows", [1, 7, 15, 256])  # chunks of 1, 2, 5 and all probes
def test_the_divergence_is_the_trace_of_the_brute_force_jacobian(make, probe_rows):
    model, gen = make(), torch.Generator().manual_seed(5)
    chi, gamma = (torch.randn(3, D, generator=gen, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    weight = torch.rand(3, D, generator=gen, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda c: model(c[None], t[b:b + 1], gamma[b:b + 1])[0],
                                                          chi[b]) for b in range(3)])  # (B, D out, D in)
    diagonal = weight * jac.diagonal(dim1=1, dim2=2)
    _, pullback = torch.func.vjp(lambda c: model(c, t, gamma), chi)
    assert torch.allclose(weighted_jacobian_trace(pullback, weight, None, probe_rows), diagonal.sum(-1),
                          rtol=1e-10, atol=1e-12)
    picked = torch.tensor([1, 4, 5, 11])
    assert torch.allclose(weighted_jacobian_trace(pullback, weight, None, probe_rows, picked),
                          diagonal[:, picked].sum(-1), rtol=1e-10, atol=1e-12)
    v = (2 * torch.randint(0, 2, (5, 3, D), generator=gen) - 1).double()
    hutchinson = torch.einsum("sbi,bij,sbj->b", v * weight, jac, v) / 5
    assert torch.allclose(weighted_jacobian_trace(pullback, weight, v, probe_rows), hutchinson,
                          rtol=1e-10, atol=1e-12)


def test_dataset_bits_per_dim_of_gaussian_data_equal_the_analytic_nll():
    # x ~ N(m, C) on 1 x 2 x 2 images, whitened by an orthonormal U and scales s; the oracle is
    # exact, and gamma from -20 to 20 leaves 2e-9 of noise at t = 0 and p_1 = N(0, I) to 1e-5 nats.
    dim, n = 4, 12
    mean, cov = gaussian_data(dim, seed=5)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    oracle = GaussianOracle(*whitened_moments(mean, cov, u, scales))
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = (mean + z @ torch.linalg.cholesky(cov).T).reshape(n, 1, 2, 2)
    calls = []
    result = dataset_bits_per_dim(oracle, LinearSchedule(dim, g_min=-20.0, g_max=20.0),
                                  lambda chunk: (chunk.flatten(1) @ u.T) / scales, x, levels=None,
                                  data_scale=2.0, logabsdet=float(-scales.log().sum()), batch_size=5,
                                  rtol=1e-6, atol=1e-6, progress=lambda done, total: calls.append((done, total)))
    logp = multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.reshape(n, dim).numpy())
    expected = -(torch.as_tensor(logp) + dim * math.log(2.0)) / (dim * math.log(2.0))
    assert torch.allclose(result.bits, expected, atol=1e-4, rtol=0)
    assert (result.mean, result.stderr) == pytest.approx(mean_and_stderr(result.bits))
    assert calls == [(5, n), (10, n), (12, n)]
    assert result.method == "exact" and result.dims == dim and result.divergence_points.shape == (n,)


def test_dataset_bits_per_dim_dequantises_then_encodes_and_solves_each_batch():
    n, levels = 6, 17
    model, schedule = Mlp(D), LinearSchedule(D)
    k = torch.randint(0, levels, (n, 1, 4, 4), generator=torch.Generator().manual_seed(8))
    x = 2 * k.double() / (levels - 1) - 1

    def encode(chunk):
        return 1.5 * chunk.flatten(1)

    result = dataset_bits_per_dim(model, schedule, encode, x, levels=levels, data_scale=2.0,
                                  logabsdet=D * math.log(1.5), batch_size=4, rtol=1e-6, atol=1e-6,
                                  generator=torch.Generator().manual_seed(3))
    xq = dequantise_images(x, levels, 2.0, seed=3)  # each image with its own noise
    parts = [bits_per_dim(log_likelihood(model, schedule, encode(c), rtol=1e-6, atol=1e-6).logp,
                          D * math.log(1.5), D, 2.0, levels) for c in torch.split(xq, 4)]
    assert torch.allclose(result.bits, torch.cat(parts), rtol=0, atol=1e-12)


def test_hutchinson_bits_per_dim_agree_with_the_exact_ones_within_the_reported_stderr():
    dim, n = 8, 64
    model, schedule = Mlp(dim), LinearSchedule(dim)
    x = torch.randn(n, 1, 2, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    common = dict(levels=None, data_scale=2.0, logabsdet=0.0, rtol=1e-5, atol=1e-5)
    exact = dataset_bits_per_dim(model, schedule, lambda c: c.flatten(1), x, divergence="exact", **common)
    hutch = dataset_bits_per_dim(model, schedule, lambda c: c.flatten(1), x, divergence="hutchinson",
                                 generator=torch.Generator().manual_seed(10), **common)
    assert hutch.method == "hutchinson(1)"
    # The reported standard error (over images, each with its own probe) covers the difference ...
    assert abs(hutch.mean - exact.mean) < 2 * hutch.stderr
    # ... and on the same images the probe noise alone averages out: the estimate is unbiased.
    gap, gap_stderr = mean_and_stderr(hutch.bits - exact.bits)
    assert gap_stderr > 1e-3 and abs(gap) < 3 * gap_stderr


def test_hutchinson_probes_are_those_of_each_image_however_the_set_is_split():
    # gud nll under torchrun measures shard [first, first + count) on each rank: image k must
    # get the probes it gets in the whole set (they were drawn per chunk from one generator)
    dim = 8
    model, schedule = Mlp(dim), LinearSchedule(dim)
    x = torch.randn(6, 1, 2, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    common = dict(levels=None, data_scale=2.0, logabsdet=0.0, rtol=1e-5, atol=1e-5, divergence="hutchinson",
                  batch_size=2, hutchinson_samples=3)

    def bits(images, first=0):
        return dataset_bits_per_dim(model, schedule, lambda c: c.flatten(1), images, first=first,
                                    generator=torch.Generator().manual_seed(10), **common).bits

    whole = bits(x)
    assert torch.equal(torch.cat([bits(x[:2]), bits(x[2:], first=2)]), whole)
    assert not torch.equal(bits(x[2:4]), whole[2:4])  # another image index: other probes


def test_with_given_components_the_result_is_the_exact_conditional_density():
    # chi ~ N(m, C); the last 4 components are given the values c. The others are N(m_c, C_c)
    # given c; an oracle of that acts on them while the schedule holds the given ones clean.
    mean, cov = gaussian_data(D, seed=11)
    given = torch.zeros(D, dtype=torch.bool)
    given[-4:] = True
    gen_idx, giv_idx = (~given).nonzero().flatten(), given.nonzero().flatten()
    c = mean[giv_idx] + torch.tensor([0.5, -0.3, 0.2, 0.1], dtype=torch.float64)
    gain = cov[gen_idx][:, giv_idx] @ torch.linalg.inv(cov[giv_idx][:, giv_idx])
    conditional = GaussianOracle(mean[gen_idx] + gain @ (c - mean[giv_idx]),
                                 cov[gen_idx][:, gen_idx] - gain @ cov[giv_idx][:, gen_idx])
    base = LinearSchedule(D, g_min=-20.0, g_max=20.0)  # p_1 = N(0, I) to 1e-5 nats

    def schedule(t):
        gamma, beta = base(t)
        return gamma.masked_fill(given, -30.0), beta.masked_fill(given, 0.0)

    def eps_model(x, t, gamma):
        return torch.zeros_like(x).index_copy(1, gen_idx, conditional(x[:, gen_idx], t, gamma[:, gen_idx]))

    gamma0 = at(base, 0.0)[:, gen_idx]
    m0, c0 = conditional.marginal(gamma0)
    z = torch.randn(5, len(gen_idx), generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    x0 = torch.empty(5, D, dtype=torch.float64)
    x0[:, gen_idx], x0[:, giv_idx] = m0[0] + z @ torch.linalg.cholesky(c0[0]).T, c
    result = log_likelihood(eps_model, schedule, x0, given=given, rtol=1e-7, atol=1e-7)
    assert torch.allclose(result.logp, conditional.log_prob(x0[:, gen_idx], gamma0), atol=1e-4, rtol=0)
    assert torch.equal(result.x1[:, giv_idx], x0[:, giv_idx])


# --------------------------------------------------------------------------- kinks
def test_kinks_are_the_corners_of_a_clipped_schedule():
    schedule = schedules(D)["sequential"]  # group c moves over [tau_c, tau_c + w], w = 1 - tau_max
    corners = sorted({round(float(t), 12) for tau in schedule.tau.tolist() for t in (tau, tau + 0.5)} - {0.0, 1.0})
    np.testing.assert_allclose(schedule_kinks(schedule), corners, rtol=0, atol=1e-12)


def test_kinks_of_a_compiled_autoregressive_schedule_match_its_closed_form():
    from gudlang.check import check_text
    from gudlang.pipeline import build_model
    model = build_model(check_text("gud 1\ndata = digits()\nbasis = pca()\n"
                                   "gamma_i(t) = soft(t, rank(i), a = 50, clipped = true)\n"))
    # soft clips g_den + a (l - 1) + t (g_noise - g_den + a) to [g_den, g_noise] = [-7, 3], l = rank
    rank = np.unique(model.features["rank"])
    corners = np.concatenate([50 * (1 - rank) / 60, (10 + 50 * (1 - rank)) / 60])
    corners = np.sort(corners[(corners > 1e-9) & (corners < 1 - 1e-9)])
    np.testing.assert_allclose(schedule_kinks(model.schedule), corners, rtol=0, atol=1e-11)


@pytest.mark.parametrize("schedule", [schedules(D)["linear"], schedules(D)["soft"], EdgeSchedule(D)],
                         ids=["linear", "soft", "edge"])
def test_smooth_schedules_have_no_kinks(schedule):
    assert schedule_kinks(schedule) == []


@pytest.mark.parametrize("formula", ["cosine(t, hi = 15)", "vp(t)", "shifted_cosine(t, d = 128)",
                                     "log(wvar(i)) + linear(t, -8, 8)"])
def test_steep_but_smooth_compiled_schedules_have_no_kinks(formula):
    from gudlang.check import check_text
    from gudlang.pipeline import build_model
    model = build_model(check_text(f"gud 1\ndata = digits()\nbasis = dct()\ngamma_i(t) = {formula}\n"))
    assert schedule_kinks(model.schedule) == []


def test_components_that_move_in_narrow_windows_get_the_exact_density(oracle):
    # Four groups, each moving from gamma = -12 to 12 within a window of width 0.01, between
    # the quadrature's first points (1 / 32 apart): split at the kinks, every window is seen;
    # without the split (kinks = []) the integral misses three of them by nats and converges.
    schedule = SequentialSchedule(torch.arange(D) % 4, tau_max=0.99, g_min=-12.0, g_max=12.0)
    x0 = data(oracle, schedule, 4)
    gamma1 = at(schedule, 1.0)
    exact = oracle.log_prob_data(x0, schedule)
    split = log_likelihood(oracle, schedule, x0, prior_logp=lambda x: oracle.log_prob(x, gamma1), rtol=1e-5, atol=1e-5)
    assert (split.logp - exact).abs().max() < 1e-2
    blind = log_likelihood(oracle, schedule, x0, prior_logp=lambda x: oracle.log_prob(x, gamma1), rtol=1e-5, atol=1e-5,
                           kinks=[])
    assert (blind.logp - exact).abs().max() > 1.0


def test_splitting_at_kinks_takes_fewer_points_for_the_same_accuracy(oracle):
    schedule = schedules(D)["sequential"]
    x0 = data(oracle, schedule, 4)
    gamma1 = at(schedule, 1.0)
    exact = oracle.log_prob_data(x0, schedule)
    runs = {name: log_likelihood(oracle, schedule, x0, prior_logp=lambda x: oracle.log_prob(x, gamma1), rtol=1e-6,
                                 atol=1e-6, kinks=kinks) for name, kinks in (("split", None), ("whole", []))}
    errors = {name: float((r.logp - exact).abs().max()) for name, r in runs.items()}
    assert errors["split"] <= errors["whole"] and errors["split"] < 1e-3
    assert runs["split"].divergence_points.sum() < runs["whole"].divergence_points.sum()
    assert runs["split"].nfe < runs["whole"].nfe


class WindowSchedule:
    """Component i moves linearly from gamma = lo to hi over its own window [start_i, start_i +
    width_i] inside [0, 1] and stands still outside it (clean before, noised after)."""

    def __init__(self, start, width, lo: float = -12.0, hi: float = 12.0):
        self.start, self.width = torch.as_tensor(start), torch.as_tensor(width)
        self.lo, self.hi = lo, hi

    def __call__(self, t: torch.Tensor):
        u = (t[:, None] - self.start.to(t)[None]) / self.width.to(t)[None]
        gamma = self.lo + (self.hi - self.lo) * u.clamp(0.0, 1.0)
        moving = (u > 0) & (u < 1)
        return gamma, torch.sigmoid(gamma) * (self.hi - self.lo) / self.width.to(t)[None] * moving


@pytest.mark.parametrize("seed", range(6))
def test_random_narrow_windows_get_the_exact_density(oracle, seed):
    # Windows 0.002 - 0.3 wide at random places, each component its own: 2 D kinks.
    g = np.random.default_rng(seed)
    width = 10 ** g.uniform(np.log10(0.002), np.log10(0.3), D)
    start = g.uniform(0, 1 - width)
    schedule = WindowSchedule(start, width)
    kinks = schedule_kinks(schedule)
    corners = np.sort(np.concatenate([start, start + width]))
    np.testing.assert_allclose(kinks, corners[(corners > 1e-9) & (corners < 1 - 1e-9)], rtol=0, atol=1e-11)
    x0 = data(oracle, schedule, 3, seed)
    gamma1 = at(schedule, 1.0)
    result = log_likelihood(oracle, schedule, x0, prior_logp=lambda x: oracle.log_prob(x, gamma1), rtol=1e-5, atol=1e-5)
    assert (result.logp - oracle.log_prob_data(x0, schedule)).abs().max() < 1e-2


def test_the_exact_divergence_differentiates_only_the_components_in_motion(monkeypatch):
    # At t = 0.5 half the windows are open: the trace over the others is zero (beta = 0) and is
    # not computed, and div f equals the brute-force Jacobian's weighted trace minus sum beta / 2.
    import gudlang.likelihood as likelihood
    model, gen = Mlp(D), torch.Generator().manual_seed(3)
    start = torch.where(torch.arange(D) % 2 == 0, 0.3, 0.6).double()
    schedule = WindowSchedule(start, torch.full((D,), 0.35, dtype=torch.float64))
    chi = torch.randn(3, D, generator=gen, dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    gamma, beta = schedule(t)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda c: model(c[None], t[b:b + 1], gamma[b:b + 1])[0],
                                                          chi[b]) for b in range(3)])
    weight = 0.5 * beta * torch.sigmoid(gamma).rsqrt()
    expected = (weight * jac.diagonal(dim1=1, dim2=2)).sum(-1) - 0.5 * beta.sum(-1)
    seen = []

    def counting(pullback, weight, probes, probe_rows=likelihood.PROBE_ROWS, components=None):
        seen.append(components.tolist())
        return weighted_jacobian_trace(pullback, weight, probes, probe_rows, components)

    monkeypatch.setattr(likelihood, "weighted_jacobian_trace", counting)
    div = likelihood._divergence_at(model, schedule, chi, t, None, torch.arange(D), 256)
    assert torch.allclose(div, expected, rtol=1e-10, atol=1e-12)
    assert seen == [list(range(0, D, 2))] and bool((beta[:, 1::2] == 0).all())
