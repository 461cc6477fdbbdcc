"""Gaussian oracle: Tweedie's identity, optimality, exact densities, whitened moments, errors."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import multivariate_normal

from gudlang import oracle as oracle_module
from gudlang.diagnostics import GudError
from gudlang.oracle import GaussianOracle, whitened_moments
from schedule_fixtures import LinearSchedule, gaussian_data, schedules, one_thread  # noqa: F401 (autouse fixture)

D = 16


@pytest.fixture(scope="module")
def oracle():
    return GaussianOracle(*gaussian_data(D))


def per_row_gamma(n: int, seed: int = 0) -> torch.Tensor:
    """A different time for every row, through the component-wise soft schedule."""
    t = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return schedules(D)["soft"](t)[0]


def test_eps_is_minus_sigma_times_the_autograd_score_of_the_exact_density(oracle):
    gamma = per_row_gamma(12)
    x = torch.randn(12, D, dtype=torch.float64, requires_grad=True)
    score = torch.autograd.grad(oracle.log_prob(x, gamma).sum(), x)[0]
    eps = oracle(x.detach(), torch.zeros(12, dtype=torch.float64), gamma)
    assert torch.allclose(eps, -torch.sigmoid(gamma).sqrt() * score, atol=1e-12)
    assert torch.allclose(oracle.score(x.detach(), gamma), score, atol=1e-12)


def test_eps_matches_a_finite_difference_score(oracle):
    gamma = per_row_gamma(1, seed=3)
    x = torch.randn(1, D, dtype=torch.float64)
    step = 1e-5
    bumps = step * torch.eye(D, dtype=torch.float64)
    fd = (oracle.log_prob(x + bumps, gamma) - oracle.log_prob(x - bumps, gamma)) / (2 * step)
    eps = oracle(x, torch.zeros(1, dtype=torch.float64), gamma)[0]
    assert torch.allclose(eps, -torch.sigmoid(gamma[0]).sqrt() * fd, atol=1e-7)


def test_log_prob_is_the_gaussian_density_of_the_noised_data(oracle):
    gamma = per_row_gamma(5, seed=1)
    x = torch.randn(5, D, dtype=torch.float64)
    alpha, sigma2 = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma)
    for k in range(5):
        cov = alpha[k][:, None] * oracle.cov * alpha[k][None] + torch.diag(sigma2[k])
        expected = multivariate_normal(alpha[k] * oracle.mean, cov).logpdf(x[k])
        assert float(oracle.log_prob(x[k:k + 1], gamma[k])) == pytest.approx(expected, abs=1e-10)


def test_eps_is_the_minimum_mean_square_predictor(oracle):
    # Optimality: the residual eps - eps_hat is uncorrelated with chi_t (normal equations),
    # and its mean square equals D - tr(Sig Cov_t^-1 Sig).
    n = 40_000
    g = torch.Generator().manual_seed(5)
    gamma = schedules(D)["linear"](torch.full((1,), 0.55, dtype=torch.float64))[0]
    chol = torch.linalg.cholesky(oracle.cov)
    x0 = oracle.mean + torch.randn(n, D, generator=g, dtype=torch.float64) @ chol.T
    eps = torch.randn(n, D, generator=g, dtype=torch.float64)
    xt = torch.sigmoid(-gamma).sqrt() * x0 + torch.sigmoid(gamma).sqrt() * eps
    resid = eps - oracle(xt, torch.zeros(n, dtype=torch.float64), gamma)
    centred = xt - xt.mean(0)
    corr = resid.T @ centred / n
    noise = (resid.std(0)[:, None] * centred.std(0)[None]) / math.sqrt(n)
    assert (corr.abs() / noise).max() < 5
    sigma = torch.sigmoid(gamma[0]).sqrt()
    _, cov_t = oracle.marginal(gamma)
    mmse = D - float((sigma[:, None] * torch.linalg.inv(cov_t[0]) * sigma[None]).trace())
    assert float(resid.pow(2).sum(1).mean()) == pytest.approx(mmse, rel=0.02)


def test_batched_chunked_solves_agree_with_one_row_at_a_time(oracle, monkeypatch):
    gamma = per_row_gamma(7, seed=2)
    x = torch.randn(7, D, dtype=torch.float64)
    t = torch.zeros(7, dtype=torch.float64)
    monkeypatch.setattr(oracle_module, "_CHUNK_ENTRIES", 3 * D * D)  # chunks of 3 rows
    batched = oracle(x, t, gamma), oracle.log_prob(x, gamma)
    rows = [(oracle(x[k:k + 1], t[:1], gamma[k]), oracle.log_prob(x[k:k + 1], gamma[k])) for k in range(7)]
    assert torch.allclose(batched[0], torch.cat([r[0] for r in rows]), atol=1e-12)
    assert torch.allclose(batched[1], torch.cat([r[1] for r in rows]), atol=1e-12)


def test_results_follow_the_input_dtype(oracle):
    x = torch.randn(3, D)
    gamma = per_row_gamma(3).float()
    assert oracle(x, torch.zeros(3), gamma).dtype == torch.float32
    assert oracle.log_prob(x, gamma).dtype == torch.float32


def test_log_prob_data_is_the_t0_marginal_with_its_noise_level(oracle):
    # gamma(0) = -30 leaves 1e-13 of noise: p_0 is the data distribution itself.
    x = torch.randn(4, D, dtype=torch.float64)
    clean = LinearSchedule(D, g_min=-30.0, g_max=8.0)
    expected = multivariate_normal(oracle.mean.numpy(), oracle.cov.numpy()).logpdf(x.numpy())
    assert torch.allclose(oracle.log_prob_data(x, clean), torch.as_tensor(expected), atol=1e-6)
    noisy = LinearSchedule(D, g_min=-2.0, g_max=8.0)
    gamma0 = torch.full((D,), -2.0, dtype=torch.float64)
    assert torch.allclose(oracle.log_prob_data(x, noisy), oracle.log_prob(x, gamma0))
    assert not torch.allclose(oracle.log_prob_data(x, noisy), oracle.log_prob_data(x, clean))


def test_whitened_moments_carry_the_density_with_the_jacobian_of_the_map():
    # log N(phi; m, C) = log N(M phi; m_hat, C_hat) + log|det M|, M = S^-1 U.
    mean, cov = gaussian_data(6, seed=4)
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    scales = torch.rand(6, dtype=torch.float64) + 0.2
    m_hat, c_hat = whitened_moments(mean, cov, u, scales)
    phi = torch.randn(3, 6, dtype=torch.float64)
    chi_hat = (phi @ u.T) / scales
    lhs = multivariate_normal(mean.numpy(), cov.numpy()).logpdf(phi.numpy())
    rhs = multivariate_normal(m_hat.numpy(), c_hat.numpy()).logpdf(chi_hat.numpy())
    assert torch.allclose(torch.as_tensor(lhs), torch.as_tensor(rhs) - scales.log().sum(), atol=1e-10)


@pytest.mark.parametrize("mean,cov", [
    (torch.zeros(3), torch.eye(4)),
    (torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]])),
    (torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]])),
    (torch.tensor([0.0, float("nan")]), torch.eye(2)),
])
def test_invalid_moments_are_E670(mean, cov):
    with pytest.raises(GudError) as err:
        GaussianOracle(mean, cov)
    assert err.value.diagnostics[0].code == "E670"


def test_a_singular_covariance_is_allowed_because_noise_regularises_it():
    oracle = GaussianOracle(torch.zeros(2), torch.ones(2, 2))
    eps = oracle(torch.randn(3, 2), torch.zeros(3), torch.zeros(3, 2))
    assert torch.isfinite(eps).all()


def test_whitened_moments_reject_bad_shapes_and_scales():
    for scales in (torch.ones(3), torch.tensor([1.0, 0.0])):
        with pytest.raises(GudError) as err:
            whitened_moments(torch.zeros(2), torch.eye(2), torch.eye(2), scales)
        assert err.value.diagnostics[0].code == "E670"


def test_wrong_input_shapes_are_E671(oracle):
    for x, gamma in ((torch.randn(2, D + 1), torch.zeros(2, D)), (torch.randn(2, D), torch.zeros(3, D))):
        with pytest.raises(GudError) as err:
            oracle(x, torch.zeros(2), gamma)
        assert err.value.diagnostics[0].code == "E671"


def test_gaussian_kl_matches_the_closed_form():
    from gudlang.oracle import gaussian_kl
    import numpy as np
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 5, 5))
    c1, c2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    m1, m2 = rng.normal(size=(2, 5))
    inv = np.linalg.inv(c2)
    ref = 0.5 * (np.trace(inv @ c1) - 5 + (m2 - m1) @ inv @ (m2 - m1)
                 + np.linalg.slogdet(c2)[1] - np.linalg.slogdet(c1)[1])
    assert abs(gaussian_kl(m1, c1, m2, c2) - ref) < 1e-10
    assert abs(gaussian_kl(m1, c1, m1, c1)) < 1e-12
