"""Log-likelihood by the probability-flow ODE, and its conversion to bits per dimension.

Maths, in whitened components chi (B, D), t = 0 data, t = 1 noise:

    PF-ODE     d chi / dt = f(chi, t) = 1/2 beta (eps / sigma - chi),  sigma^2 = sigmoid(gamma)
    density    d log p_t(chi(t)) / dt = -div f
    so         log p_0(chi_0) = log p_1(chi_1) + int_0^1 div f dt,
               div f = -1/2 sum_i beta_i + sum_i (beta_i / (2 sigma_i)) d eps_i / d chi_i.

The augmented state [chi, int div f] is integrated from t = 0 to 1 with torchdiffeq's dopri5.
The divergence is exact (autograd, D vector-Jacobian products batched with vmap) when D <= 256
or `exact_trace=True`, and otherwise Hutchinson's estimate v^T J v with Rademacher v (drawn
once per call and held fixed along the path, which keeps the integrand smooth for the adaptive
solver; `hutchinson_samples` vectors are averaged). The estimate is unbiased for log p_0.

What is measured: p_0 is the model's t = 0 marginal, data at noise level gamma(0) (not the
noise-free data). The prior at t = 1 is N(0, I) by default, the sampler's prior in whitened
components; the forward marginal p_1 is only approximately N(0, I) when gamma(1) is finite,
and the difference enters log p_0 through log p_1(chi_1). `prior_logp` replaces it (e.g. the
exact p_1 of a Gaussian oracle, which makes the result exact up to the ODE tolerance).

Bits per dimension (`bits_per_dim`), the convention used throughout gudlang:
    model space   x = mean + phi, phi = U^T S chi (data space, per-pixel mean removed)
    densities     log p(x) = log p(phi) = log p(chi) + log|det M|, M = S^-1 U,
                  log|det M| = -sum_i log s_i for an orthonormal U (`logabsdet_map`)
    levels        discrete data k in {0 .. L-1} sit at x = lo + k Delta with
                  Delta = data_scale / (L - 1) (gudlang.data: lo = -1, data_scale = 2, so
                  x = 2 k / (L - 1) - 1); uniform dequantisation `dequantise` adds
                  Delta (u - 1/2), u ~ U[0, 1)^D, so every level owns the cell
                  [x - Delta / 2, x + Delta / 2); in level units y = (x - lo) / Delta the cell is
                  [k - 1/2, k + 1/2) and log P(k) >= E_u log p_y(y) = E_u log p(x) + D log Delta
    bits / dim    -(log p(x) + D log Delta) / (D ln 2), an upper bound on the discrete NLL
    continuous    (levels None) the unit is the whole range: Delta = data_scale.
The common "[0, 256) mapped to [-1, 1)" convention uses Delta = 2 / 256 instead of 2 / 255 and
reports log2(256 / 255) = 0.0056 bits/dim less for the same density.

Input: `eps_model(chi (B, D), t (B,), gamma (B, D)) -> eps (B, D)`, `schedule(t (B,)) ->
(gamma, beta)` and whitened data x0 (B, D); computations follow x0's dtype (float64 for tests).
Output: `LogLikResult(logp (B,) nats, method, nfe, x1 (B, D) the ODE's state at t = 1)`.

Errors (GudError):
    E660 invalid likelihood argument (shape, non-finite data, sample count, tolerance,
         levels, scale)
    E661 the log-likelihood came out non-finite
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .diagnostics import GudError
from .samplers import MIN_TOLERANCE, solve_dopri5

CODES: dict[str, str] = {
    "E660": "invalid likelihood argument",
    "E661": "non-finite log-likelihood",
}

# Largest D for which the exact divergence (D vector-Jacobian products per call) is the default.
EXACT_TRACE_MAX_DIM = 256


@dataclass
class LogLikResult:
    """log p_0(x0) in nats (B,), how the divergence was computed, model calls, and chi(1)."""

    logp: torch.Tensor
    method: str
    nfe: int
    x1: torch.Tensor


def standard_normal_logp(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per row, (B,)."""
    return -0.5 * (x.pow(2).sum(-1) + x.shape[-1] * math.log(2 * math.pi))


def log_likelihood(eps_model, schedule, x0: torch.Tensor, exact_trace: bool | None = None,
                   hutchinson_samples: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, prior_logp=None) -> LogLikResult:
    """log p_0(x0) by the PF-ODE from t = 0 to 1 (see the module docstring)."""
    if x0.dim() != 2 or not bool(torch.isfinite(x0).all()):
        raise GudError.one("E660", f"x0 must be a finite (B, D) tensor, got shape {tuple(x0.shape)}")
    if not (isinstance(hutchinson_samples, int) and hutchinson_samples >= 1):
        raise GudError.one("E660", f"hutchinson_samples must be a positive integer, got "
                           f"{hutchinson_samples!r}")
    if not (rtol >= MIN_TOLERANCE and atol >= MIN_TOLERANCE):
        raise GudError.one("E660", f"rtol and atol must be >= {MIN_TOLERANCE:g}, got {rtol!r} and {atol!r}")
    batch, dim = x0.shape
    if exact_trace is None:
        exact_trace = dim <= EXACT_TRACE_MAX_DIM
    if exact_trace:
        # One-hot cotangents pick d eps_i / d chi_i out of D batched vector-Jacobian products.
        probes = torch.eye(dim, dtype=x0.dtype, device=x0.device)[:, None, :].expand(dim, batch, dim)
        method = "exact"
    else:
        signs = torch.randint(0, 2, (hutchinson_samples, batch, dim), generator=generator,
                              device=x0.device)
        probes = (2 * signs - 1).to(x0.dtype)
        method = f"hutchinson({hutchinson_samples})"

    def dynamics(t, state):
        x = state[0]
        tt = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)
        gamma, beta = schedule(tt)
        weight = 0.5 * beta * torch.sigmoid(gamma).rsqrt()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            eps = eps_model(xg, tt, gamma)
            if not bool(torch.isfinite(eps).all()):
                # dopri5 would otherwise shrink its step until it underflows.
                raise GudError.one("E661", f"the model's eps is not finite at t = {float(t):.4g}")
            vjp = torch.autograd.grad(weight * eps, xg, probes, is_grads_batched=True)[0]
        if exact_trace:
            trace = vjp.diagonal(dim1=0, dim2=2).sum(-1)
        else:
            trace = (vjp * probes).sum(-1).mean(0)
        velocity = weight * eps.detach() - 0.5 * beta * x
        return velocity, trace - 0.5 * beta.sum(-1)

    span = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    start = (x0.detach(), torch.zeros(batch, dtype=x0.dtype, device=x0.device))
    with torch.no_grad():
        (xs, integrals), nfe = solve_dopri5(dynamics, start, span, rtol, atol, "E661", "the likelihood ODE",
                                            help="loosen rtol and atol")
    x1 = xs[-1]
    logp = (prior_logp or standard_normal_logp)(x1) + integrals[-1]
    if not bool(torch.isfinite(logp).all()):
        raise GudError.one("E661", "the log-likelihood is not finite",
                           help="check the model's eps for NaN / inf, or tighten rtol and atol")
    return LogLikResult(logp, method, nfe, x1)


def _level_width(data_scale: float, levels: int | None) -> float:
    if not (isinstance(data_scale, (int, float)) and math.isfinite(data_scale) and data_scale > 0):
        raise GudError.one("E660", f"data_scale must be a positive number, got {data_scale!r}")
    if levels is None:
        return float(data_scale)
    if not (isinstance(levels, int) and levels >= 2):
        raise GudError.one("E660", f"levels must be an integer >= 2 or None, got {levels!r}")
    return data_scale / (levels - 1)


def bits_per_dim(logp_white: torch.Tensor, logabsdet_map: float, dim: int, data_scale: float = 2.0,
                 levels: int | None = None) -> torch.Tensor:
    """Bits per dimension (B,) of log p(chi_hat) (B,): -(logp + log|det M| + D log Delta) / (D ln 2),
    Delta = data_scale / (levels - 1), or data_scale for continuous data (levels None)."""
    width = _level_width(data_scale, levels)
    log_py = logp_white + logabsdet_map + dim * math.log(width)
    return -log_py / (dim * math.log(2.0))


def dequantise(x: torch.Tensor, levels: int, data_scale: float = 2.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation in model space: x + Delta (u - 1/2), u ~ U[0, 1), Delta =
    data_scale / (levels - 1)."""
    if levels is None:
        raise GudError.one("E660", "dequantise needs the number of levels of discrete data")
    width = _level_width(data_scale, levels)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + width * (u - 0.5)


def mean_and_stderr(values) -> tuple[float, float]:
    """Mean and its standard error std / sqrt(n) (sample std, n - 1); stderr is 0 for n = 1."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(v) == 0:
        raise GudError.one("E660", "mean_and_stderr needs at least one value")
    stderr = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), stderr
