"""The exact epsilon predictor for Gaussian data under any component-wise schedule.

Maths, in whitened components (shape (D,) per example): data chi_0 ~ N(m, C), and at noise
level gamma (one value per component)

    chi_t = A chi_0 + Sig eps,   A = diag(alpha), Sig = diag(sigma),
    alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma), eps ~ N(0, I)
    p_t = N(A m, Cov_t),   Cov_t = A C A + Sig^2
    score       grad log p_t(chi) = -Cov_t^-1 (chi - A m)
    epsilon     E[eps | chi_t] = Sig Cov_t^-1 (chi_t - A m) = -sigma * score   (Tweedie)

The model's own data distribution is the t = 0 marginal p_0 = N(A0 m, A0 C A0 + Sig0^2),
gamma(0) included: a finite gamma(0) leaves a little noise on the data (`log_prob_data`).
Everything is computed in float64 with one Cholesky factorisation per distinct gamma row
(one for the whole batch when all rows share a time, as in the samplers), batched otherwise.
Results come back in the dtype of the input. The moments are float64 buffers: move the module
with `.to(device)` only, since `.to(float32)` would round them.

`whitened_moments` maps data-space moments to whitened components: with chi_hat = M phi,
M = S^-1 U (U (D, D) with the basis vectors as rows, S = diag(scales)),
m_hat = M m and C_hat = M C M^T.

Errors (GudError):
    E670 invalid mean or covariance (shapes, non-finite, not symmetric positive semi-definite)
    E671 input of the wrong shape at call time
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .diagnostics import GudError

CODES: dict[str, str] = {
    "E670": "invalid Gaussian oracle moments (shape, non-finite, not symmetric PSD)",
    "E671": "oracle input of the wrong shape",
}

# Batched factorisations are split into chunks of at most this many matrix entries
# (128 MiB in float64), so that per-example times never need B * D^2 memory at once.
_CHUNK_ENTRIES = 2 ** 24
# Relative tolerances (of the largest entry) for asymmetry, which rounding in a user's
# covariance estimate can leave, and for negative eigenvalues.
_SYMMETRY_TOL = 1e-7
_PSD_TOL = 1e-10


def _as64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


class GaussianOracle(nn.Module):
    """Exact eps predictor for chi_0 ~ N(mean, cov) in whitened components:
    `oracle(chi (B, D), t (B,), gamma (B, D)) -> eps (B, D)`, the samplers' eps_model."""

    def __init__(self, mean, cov):
        super().__init__()
        mean, cov = _as64(mean), _as64(cov)
        if mean.dim() != 1 or cov.shape != (len(mean), len(mean)) or len(mean) == 0:
            raise GudError.one("E670", f"oracle needs mean (D,) and cov (D, D), got shapes "
                               f"{tuple(mean.shape)} and {tuple(cov.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
            raise GudError.one("E670", "oracle mean and covariance must be finite")
        scale = float(cov.abs().max()) or 1.0
        if float((cov - cov.T).abs().max()) > _SYMMETRY_TOL * scale:
            raise GudError.one("E670", "oracle covariance is not symmetric")
        cov = 0.5 * (cov + cov.T)
        low = float(torch.linalg.eigvalsh(cov)[0])
        if low < -_PSD_TOL * scale:
            raise GudError.one("E670", f"oracle covariance is not positive semi-definite "
                               f"(smallest eigenvalue {low:.3g})")
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def marginal(self, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, D) and covariance (B, D, D) of chi_t at noise levels gamma (B, D), float64."""
        gamma = self._gamma(gamma)
        alpha = torch.sigmoid(-gamma).sqrt()
        cov = alpha[:, :, None] * self.cov * alpha[:, None, :]
        return alpha * self.mean, cov + torch.diag_embed(torch.sigmoid(gamma))

    def forward(self, x: torch.Tensor, t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """E[eps | chi_t = x] = Sig Cov_t^-1 (x - A m); t is unused (gamma is the whole state)."""
        gamma64 = self._gamma(gamma, x)
        return (torch.sigmoid(gamma64).sqrt() * self._solve(x, gamma64)[0]).to(x.dtype)

    def score(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x) = -Cov_t^-1 (x - A m), shape (B, D)."""
        return -self._solve(x, self._gamma(gamma, x))[0].to(x.dtype)

    def log_prob(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """log N(x; A m, Cov_t), shape (B,), in nats."""
        gamma64 = self._gamma(gamma, x)
        z, r, logdet = self._solve(x, gamma64)
        quad = (z * r).sum(-1)
        return (-0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))).to(x.dtype)

    def log_prob_data(self, x: torch.Tensor, schedule) -> torch.Tensor:
        """log p_0(x): the exact density of the model's t = 0 marginal, gamma(0) noise included."""
        gamma0, _ = schedule(torch.zeros(len(x), dtype=x.dtype, device=x.device))
        return self.log_prob(x, gamma0)

    def _gamma(self, gamma: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        gamma = torch.as_tensor(gamma)
        if gamma.dim() == 1:
            gamma = gamma[None]
        if x is not None and (x.dim() != 2 or x.shape[1] != self.dim):
            raise GudError.one("E671", f"oracle input x must be (B, {self.dim}), got {tuple(x.shape)}")
        rows = len(x) if x is not None else len(gamma)
        if gamma.dim() != 2 or gamma.shape[1] != self.dim or len(gamma) not in (1, rows):
            raise GudError.one("E671", f"oracle gamma must be (B, {self.dim}) or ({self.dim},), "
                               f"got {tuple(gamma.shape)}")
        return gamma.to(device=self.mean.device, dtype=torch.float64)

    def _solve(self, x: torch.Tensor, gamma: torch.Tensor):
        """Return z = Cov_t^-1 r, r = x - A m and log det Cov_t, all float64.

        Differentiable in x (the likelihood takes the divergence of eps by autograd)."""
        x64 = x.to(device=self.mean.device, dtype=torch.float64)
        if (gamma == gamma[:1]).all():
            gamma = gamma[:1]  # one factorisation serves every row
        mean, cov = self.marginal(gamma)
        r = x64 - mean
        if len(gamma) == 1:
            chol = torch.linalg.cholesky(cov[0])
            z = torch.cholesky_solve(r.T, chol).T
            logdet = 2 * chol.diagonal().log().sum().expand(len(x64))
            return z, r, logdet
        chunk = max(1, _CHUNK_ENTRIES // self.dim ** 2)
        zs, logdets = [], []
        for lo in range(0, len(r), chunk):
            chol = torch.linalg.cholesky(cov[lo:lo + chunk])
            zs.append(torch.cholesky_solve(r[lo:lo + chunk, :, None], chol)[..., 0])
            logdets.append(2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1))
        return torch.cat(zs), r, torch.cat(logdets)


def whitened_moments(mean, cov, basis, scales) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitened-component moments of data-space N(mean, cov): chi_hat = S^-1 U phi.

    basis: U (D, D), rows the basis vectors (chi = U phi); scales: s (D,) > 0.
    Returns m_hat = S^-1 U m (D,) and C_hat = S^-1 U C U^T S^-1 (D, D), float64."""
    mean, cov, basis, scales = _as64(mean), _as64(cov), _as64(basis), _as64(scales)
    d = len(mean)
    if cov.shape != (d, d) or basis.shape != (d, d) or scales.shape != (d,):
        raise GudError.one("E670", f"whitened_moments needs mean (D,), cov, basis (D, D) and scales "
                           f"(D,), got {tuple(mean.shape)}, {tuple(cov.shape)}, "
                           f"{tuple(basis.shape)}, {tuple(scales.shape)}")
    if not bool((scales > 0).all()):
        raise GudError.one("E670", "whitening scales must be positive")
    m = basis / scales[:, None]
    c_hat = m @ cov @ m.T
    return m @ mean, 0.5 * (c_hat + c_hat.T)


def gaussian_kl(mean1, cov1, mean2, cov2) -> float:
    """KL(N(mean1, cov1) || N(mean2, cov2)) in nats, float64 (the samplers' accuracy measure)."""
    m1, c1, m2, c2 = _as64(mean1), _as64(cov1), _as64(mean2), _as64(cov2)
    chol = torch.linalg.cholesky(c2)
    dm = (m2 - m1)[:, None]
    quad = (dm * torch.cholesky_solve(dm, chol)).sum()
    logdet = 2 * chol.diagonal().log().sum() - torch.linalg.slogdet(c1)[1]
    return float(0.5 * (torch.cholesky_solve(c1, chol).trace() - len(m1) + quad + logdet))

