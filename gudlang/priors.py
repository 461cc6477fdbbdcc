"""Priors: the diagonal whitening S = diag(s_i) > 0 between components and whitened components.

Input: per-component scales s (D,) (`scaled`), the fitted variances (`matched`, s_i^2 =
var_i), or just D (`white`, s_i = 1).
Output: a `Prior` (an `nn.Module` with the float64 buffer `scales`) that maps components to
whitened components, chi_hat = S^-1 chi, and back. The diffusion ends at N(0, I) in chi_hat,
which is N(0, U^T S^2 U) in data space.

Vectors (data, epsilon, velocity) transform like chi: `whiten` / `unwhiten`. Scores are
covectors and transform with the inverse transpose: d log p / d chi_hat = S d log p / d chi
(`whiten_score`), and back with S^-1 (`unwhiten_score`). Densities: log p(chi) =
log p(chi_hat) + `logabsdet()`, with logabsdet = log |det S^-1| = -sum log s_i.
Results follow the dtype and device of the input.

Errors (GudError):
    E510 invalid scales: not a non-empty 1-D vector, or not all positive and finite
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .diagnostics import GudError

CODES: dict[str, str] = {
    "E510": "invalid prior scales (not a non-empty vector of positive, finite numbers)",
}


def _vector(values, what: str) -> torch.Tensor:
    """A float64 CPU copy of a 1-D non-empty vector of finite positive numbers (E510)."""
    try:
        v = torch.as_tensor(np.asarray(values.detach().cpu() if torch.is_tensor(values) else values,
                                       dtype=np.float64))
    except (TypeError, ValueError):
        raise GudError.one("E510", f"prior {what} must be numbers, got "
                           f"{type(values).__name__}") from None
    if v.dim() != 1 or len(v) == 0:
        raise GudError.one("E510", f"prior {what} must be a non-empty vector (D,), got shape "
                           f"{tuple(v.shape)}")
    bad = ~torch.isfinite(v) | (v <= 0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise GudError.one("E510", f"prior {what} must be positive and finite: {int(bad.sum())} "
                           f"of {len(v)} are not (component {i} is {float(v[i])})",
                           help="floor small variances, e.g. at 1e-5 times the largest"
                           if what == "variances" else None)
    return v.clone()


class Prior(nn.Module):
    """Diagonal whitening S = diag(scales); see the module docstring."""

    def __init__(self, scales):
        super().__init__()
        self.register_buffer("scales", _vector(scales, "scales"))

    @property
    def dim(self) -> int:
        return len(self.scales)

    def _s(self, like: torch.Tensor) -> torch.Tensor:
        return self.scales.to(dtype=like.dtype, device=like.device)

    def whiten(self, chi: torch.Tensor) -> torch.Tensor:
        """(B, D) components -> whitened components chi / s."""
        return chi / self._s(chi)

    def unwhiten(self, chi_hat: torch.Tensor) -> torch.Tensor:
        """(B, D) whitened components -> components chi_hat * s."""
        return chi_hat * self._s(chi_hat)

    def whiten_score(self, score: torch.Tensor) -> torch.Tensor:
        """Score w.r.t. components -> score w.r.t. whitened components: s * score."""
        return score * self._s(score)

    def unwhiten_score(self, score_white: torch.Tensor) -> torch.Tensor:
        """Score w.r.t. whitened components -> score w.r.t. components: score / s."""
        return score_white / self._s(score_white)

    def logabsdet(self) -> float:
        """log |det S^-1| = -sum log s_i (float64)."""
        return -float(torch.log(self.scales).sum())


def white(dim: int) -> Prior:
    """s_i = 1: the diffusion ends at N(0, I) in the basis."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise GudError.one("E510", f"white prior needs a positive dimension, got {dim!r}")
    return Prior(torch.ones(int(dim), dtype=torch.float64))


def matched(var) -> Prior:
    """s_i^2 = var_i: the diffusion ends at the Gaussian with the data's variances."""
    return Prior(torch.sqrt(_vector(var, "variances")))


def scaled(scales) -> Prior:
    """Given per-component scales s_i."""
    return Prior(scales)


__all__ = ["Prior", "CODES", "white", "matched", "scaled"]
