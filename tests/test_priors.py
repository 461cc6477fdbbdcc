"""Priors: whitening, its determinant, the covector rule for scores, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from gudlang.bases import make_basis
from gudlang.diagnostics import GudError
from gudlang.priors import Prior, matched, scaled, white


def test_white_prior_is_the_identity():
    prior = white(5)
    chi = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(prior.whiten(chi), chi) and torch.equal(prior.unwhiten(chi), chi)
    assert prior.logabsdet() == 0.0 and prior.dim == 5


def test_matched_prior_scales_are_standard_deviations():
    var = np.array([4.0, 0.25, 9.0])
    prior = matched(var)
    np.testing.assert_allclose(prior.scales.numpy(), [2.0, 0.5, 3.0], rtol=1e-15)
    chi = torch.tensor([[2.0, 0.5, -3.0]], dtype=torch.float64)
    assert torch.allclose(prior.whiten(chi), torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64))


def test_whiten_and_unwhiten_are_inverse_and_follow_the_input_dtype():
    prior = scaled(torch.rand(7, dtype=torch.float64) + 0.1)
    for dtype, tol in ((torch.float64, 1e-15), (torch.float32, 1e-6)):
        chi = torch.randn(4, 7, dtype=dtype)
        hat = prior.whiten(chi)
        assert hat.dtype == dtype
        assert torch.allclose(prior.unwhiten(hat), chi, rtol=tol, atol=tol)
        score = prior.unwhiten_score(prior.whiten_score(chi))
        assert torch.allclose(score, chi, rtol=tol, atol=tol)


def test_logabsdet_is_minus_sum_log_scales_and_matches_a_density():
    s = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    prior = scaled(s)
    assert prior.logabsdet() == pytest.approx(-float(torch.log(s).sum()), abs=1e-15)
    # chi ~ N(0, S^2) <=> chi_hat ~ N(0, I): log p(chi) = log p(chi_hat) + log|det S^-1|.
    chi = torch.randn(6, 3, dtype=torch.float64)
    p_chi = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.diag(s ** 2))
    p_hat = MultivariateNormal(torch.zeros(3, dtype=torch.float64),
                               torch.eye(3, dtype=torch.float64))
    assert torch.allclose(p_chi.log_prob(chi),
                          p_hat.log_prob(prior.whiten(chi)) + prior.logabsdet())


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("name,options", [
    ("pixel", {}), ("dct", {}), ("fourier", {}), ("wavelet", {"family": "db2", "levels": 1}),
    ("pca", {}),
])
def test_score_transforms_as_a_covector(name, options):
    """For phi ~ N(0, Sigma): S U grad_phi log p = grad_chi_hat log p, with both sides
    computed independently (the right side from the Gaussian of chi_hat itself)."""
    shape = (2, 4, 6)
    d = 48
    sigma = spd(d, seed=1)
    basis = make_basis(name, shape, **options)
    if basis.needs_fit:
        basis.fit([MultivariateNormal(torch.zeros(d, dtype=torch.float64), sigma)
                   .sample((500,)).reshape(500, *shape)])
    prior = scaled(torch.linspace(0.3, 2.0, d, dtype=torch.float64))
    phi = torch.randn(5, d, dtype=torch.float64)

    score_data = -torch.linalg.solve(sigma, phi.T).T
    transformed = prior.whiten_score(basis(score_data.reshape(5, *shape)))

    u = basis(torch.eye(d, dtype=torch.float64).reshape(d, *shape)).T  # dense U, for reference
    m = torch.diag(1 / prior.scales) @ u                                 # chi_hat = M phi
    chi_hat = prior.whiten(basis(phi.reshape(5, *shape)))
    sigma_hat = m @ sigma @ m.T
    direct = -torch.linalg.solve(sigma_hat, chi_hat.T).T
    assert torch.allclose(transformed, direct, atol=1e-10)
    # ...and back: U^T S^-1 score_white = score in data space.
    back = basis.inverse(prior.unwhiten_score(direct)).reshape(5, d)
    assert torch.allclose(back, score_data, atol=1e-10)
    # Densities agree with the change of variables, log p(phi) = log p(chi_hat) - sum log s.
    p_phi = MultivariateNormal(torch.zeros(d, dtype=torch.float64), sigma)
    p_hat = MultivariateNormal(torch.zeros(d, dtype=torch.float64), sigma_hat)
    log_p_hat = p_hat.log_prob(chi_hat) + prior.logabsdet() + basis.logabsdet()
    assert torch.allclose(p_phi.log_prob(phi), log_p_hat, atol=1e-9)


def test_prior_moves_with_the_module():
    prior = matched(torch.tensor([1.0, 4.0])).to(torch.float32)
    assert prior.scales.dtype == torch.float32
    assert "scales" in prior.state_dict()


@pytest.mark.parametrize("bad", [
    [1.0, 0.0, 2.0], [1.0, -1.0], [1.0, float("nan")], [float("inf")], [], [[1.0, 2.0]], "abc",
])
def test_invalid_scales_raise_e510(bad):
    with pytest.raises(GudError) as e:
        scaled(bad)
    assert e.value.diagnostics[0].code == "E510"


def test_zero_variance_in_a_matched_prior_says_how_to_fix_it():
    with pytest.raises(GudError) as e:
        matched(np.array([1.0, 0.0, 2.0]))
    d = e.value.diagnostics[0]
    assert d.code == "E510" and "component 1" in d.message and "floor" in d.help


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_white_prior_needs_a_positive_dimension(bad):
    with pytest.raises(GudError) as e:
        white(bad)
    assert e.value.diagnostics[0].code == "E510"


def test_prior_keeps_its_own_copy_of_the_scales():
    s = torch.ones(3, dtype=torch.float64)
    prior = Prior(s)
    s[0] = 5.0
    assert prior.scales[0] == 1.0
