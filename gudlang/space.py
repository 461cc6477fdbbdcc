"""The space a model diffuses in: the maps between data and whitened components.

Input: the per-pixel training mean (C, H, W), a fitted orthonormal `Basis` U and a `Prior`
S = diag(s). Output: `Space`, an `nn.Module` that owns every change of representation
(`../shared/notes/gud-method.md`, section 1):

    data          x (B, C, H, W)                       what users give and get
    comp_white    chi_hat = S^-1 U (x - mean)  (B, D)  where all diffusion maths runs
    data_white    U^T chi_hat      (B, C, H, W)        what the network sees and predicts

    encode        data -> comp_white                   decode        comp_white -> data
    to_network    comp_white -> data_white             from_network  data_white -> comp_white
    logabsdet     log |det d chi_hat / d x| = -sum_i log s_i + log |det U|  (float64)

Epsilon and velocities transform like chi_hat (from_network / to_network); the mean enters
only encode and decode. Results follow the dtype and device of the input; the mean and the
prior scales are float64 buffers that stay float64 under `.to(dtype)` (a float64 run is
decoded in float64, a float32 run subtracts a mean rounded once).

`noise_levels(gamma) -> (alpha, sigma)`: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma),
the one place the forward process's coefficients are derived from gamma.

Errors: GudError E501 for data or components of the wrong shape (arrays and integers are
converted to torch's default float).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gudlang.bases import Basis
from gudlang.diagnostics import GudError
from gudlang.priors import Prior


def noise_levels(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of the variance-preserving process at negative log-SNR gamma."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


class Space(nn.Module):
    """data <-> whitened components for one fitted basis and prior; see the module docstring."""

    def __init__(self, mean, basis: Basis, prior: Prior):
        super().__init__()
        self.basis, self.prior = basis, prior
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        if tuple(mean.shape) != basis.shape:
            raise ValueError(f"mean of shape {tuple(mean.shape)} for a basis of shape {basis.shape}")
        self.register_buffer("mean", mean[None])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.basis.shape

    @property
    def dim(self) -> int:
        return self.basis.dim

    def _apply(self, fn, recurse=True):
        # .to(float32) moves the module but keeps the mean and the scales exact
        super()._apply(fn, recurse)
        self.mean = self.mean.double()
        self.prior.scales = self.prior.scales.double()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data (B, C, H, W) -> whitened components (B, D)."""
        x = self._checked(x, (-1,) + self.shape, "data (B, C, H, W)")
        return self.prior.whiten(self.basis(x - self.mean.to(x.dtype)))

    def decode(self, chi_hat: torch.Tensor) -> torch.Tensor:
        """Whitened components (B, D) -> data (B, C, H, W)."""
        chi_hat = self._checked(chi_hat, (-1, self.dim), "whitened components (B, D)")
        return self.basis.inverse(self.prior.unwhiten(chi_hat)) + self.mean.to(chi_hat.dtype)

    def _checked(self, x, shape: tuple, what: str) -> torch.Tensor:
        """x as a floating tensor (arrays and integers converted to torch's default float), E501
        unless its shape is `shape` (-1: any batch size)."""
        if not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x))
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if x.dim() != len(shape) or tuple(x.shape[1:]) != shape[1:]:
            raise GudError.one("E501", f"the space takes {what} with {', '.join(map(str, shape[1:]))} after the batch "
                                       f"axis, got a tensor of shape {tuple(x.shape)}")
        return x

    def to_network(self, chi_hat: torch.Tensor) -> torch.Tensor:
        """Whitened components (B, D) -> the network's image-shaped data_white U^T chi_hat."""
        return self.basis.inverse(chi_hat)

    def from_network(self, y: torch.Tensor) -> torch.Tensor:
        """The network's image-shaped output (B, C, H, W) -> whitened components U y (B, D)."""
        return self.basis(y)

    def logabsdet(self, mask=None) -> float:
        """log |det d chi_hat / d x| (float64): -sum_i log s_i for an orthonormal basis; with a
        bool mask (D,), the sum over the masked components only (the change of variables of a
        conditional density of those components given the others)."""
        if mask is None:
            return float(self.prior.logabsdet() + self.basis.logabsdet())
        keep = torch.as_tensor(mask, dtype=torch.bool, device=self.prior.scales.device)
        return -float(torch.log(self.prior.scales[keep]).sum())

    def moments(self, mean, cov) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened-component moments (D,), (D, D) of data-space N(mean, cov) (float64;
        mean (C, H, W) or (D,), cov (D, D) over flattened pixels): encode is affine,
        chi_hat = J x + c, so m_hat = encode(mean) and C_hat = J cov J^T."""
        d = self.dim
        device = self.mean.device
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64), device=device).reshape((1,) + self.shape)
        cov = torch.as_tensor(np.asarray(cov, dtype=np.float64), device=device)
        if cov.shape != (d, d):
            raise ValueError(f"covariance of shape {tuple(cov.shape)} for D = {d}")
        with torch.no_grad():
            m_hat = self.encode(mean)[0]
            eye = torch.eye(d, dtype=torch.float64, device=device).reshape((d,) + self.shape)
            jac = (self.encode(mean + eye) - m_hat).T  # column j: the image of pixel j
        c_hat = jac @ cov @ jac.T
        return m_hat, 0.5 * (c_hat + c_hat.T)


__all__ = ["Space", "noise_levels"]
