"""Space: the maps between data and whitened components, checked against matrices built by hand."""

import numpy as np
import pytest
import torch

from gudlang.bases import make_basis
from gudlang.oracle import whitened_moments
from gudlang.priors import Prior
from gudlang.space import Space, noise_levels

SHAPE = (2, 4, 4)
D = 32


def _space(kind: str) -> Space:
    rng = np.random.default_rng(0)
    basis = make_basis(kind, SHAPE)
    if basis.needs_fit:
        basis.fit([torch.as_tensor(rng.normal(size=(200,) + SHAPE))])
    mean = rng.normal(size=SHAPE)
    return Space(mean, basis, Prior(rng.uniform(0.2, 3.0, size=D)))


def _matrix(space: Space) -> np.ndarray:
    """U (D, D) with chi = U phi, from the basis applied to unit images."""
    eye = torch.eye(D, dtype=torch.float64).reshape((D,) + SHAPE)
    return space.basis(eye).T.numpy()


@pytest.mark.parametrize("kind", ["pixel", "pca", "dct", "fourier", "wavelet"])
def test_encode_is_s_inverse_u_of_the_centred_data_and_decode_inverts_it(kind):
    space = _space(kind)
    x = torch.randn((5,) + SHAPE, dtype=torch.float64)
    u, s = _matrix(space), space.prior.scales.numpy()
    expected = ((x.numpy() - space.mean.numpy()).reshape(5, D) @ u.T) / s
    np.testing.assert_allclose(space.encode(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(space.decode(space.encode(x)).numpy(), x.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["pca", "wavelet"])
def test_network_maps_are_u_transpose_and_u_without_mean_or_scales(kind):
    space = _space(kind)
    chi = torch.randn(3, D, dtype=torch.float64)
    u = _matrix(space)
    np.testing.assert_allclose(space.to_network(chi).reshape(3, D).numpy(), chi.numpy() @ u, atol=1e-12)
    np.testing.assert_allclose(space.from_network(space.to_network(chi)).numpy(), chi.numpy(), atol=1e-12)


@pytest.mark.parametrize("kind", ["pixel", "dct", "wavelet"])
def test_logabsdet_is_the_log_determinant_of_the_encoding_jacobian(kind):
    space = _space(kind)
    x = torch.randn((1,) + SHAPE, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: space.encode(v.reshape((1,) + SHAPE))[0], x.reshape(-1))
    assert space.logabsdet() == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-9)


def test_moments_agree_with_the_explicit_whitening_matrix():
    space = _space("pca")
    rng = np.random.default_rng(1)
    a = rng.normal(size=(D, D))
    cov, mean = a @ a.T / D, rng.normal(size=SHAPE)
    m_hat, c_hat = space.moments(mean, cov)
    m_ref, c_ref = whitened_moments((mean - space.mean.numpy()[0]).reshape(-1), cov, _matrix(space),
                                    space.prior.scales)
    np.testing.assert_allclose(m_hat.numpy(), m_ref.numpy(), atol=1e-12)
    np.testing.assert_allclose(c_hat.numpy(), c_ref.numpy(), atol=1e-12)


def test_a_float32_move_keeps_the_mean_and_scales_in_float64():
    space = _space("pixel").to(torch.float32)
    assert space.mean.dtype == torch.float64 and space.prior.scales.dtype == torch.float64
    x = torch.randn((2,) + SHAPE)
    assert space.encode(x).dtype == torch.float32 and space.decode(space.encode(x)).dtype == torch.float32


def test_noise_levels_are_variance_preserving_and_match_the_log_snr():
    gamma = torch.linspace(-30, 30, 61, dtype=torch.float64)
    alpha, sigma = noise_levels(gamma)
    np.testing.assert_allclose((alpha ** 2 + sigma ** 2).numpy(), 1.0, atol=1e-15)
    np.testing.assert_allclose(torch.log(sigma ** 2 / alpha ** 2).numpy(), gamma.numpy(), atol=1e-9)
