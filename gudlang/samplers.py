"""Samplers: from whitened noise chi(1) to a sample chi(t_end), for component-wise schedules.

Everything runs in whitened components chi (shape (B, D)), independent of basis and network.
Per component i, with gamma_i(t) the negative log-SNR (t = 1 noise, t = 0 data):

    alpha_i^2 = sigmoid(-gamma_i), sigma_i^2 = sigmoid(gamma_i), lambda_i = -gamma_i / 2,
    beta_i = sigma_i^2 dgamma_i/dt,  score s = -eps / sigma
    reverse SDE  d chi = [-1/2 beta chi - beta s] dt + sqrt(beta) dW      (t: 1 -> t_end)
    PF-ODE       d chi / dt = -1/2 beta (chi + s) = 1/2 beta (eps / sigma - chi)
    exact solution of the PF-ODE per component from t to s (variation of constants):
        chi_i(s) = alpha_i(s) / alpha_i(t) chi_i(t)
                   - sigma_i(s) int_{lambda_i(t)}^{lambda_i(s)} e^{lambda_i(s) - lambda} eps_i dlambda

Methods (one function each, same signature; `SAMPLERS` maps names to them):
    em        Euler-Maruyama on the reverse SDE (the reference code's sampler); noise is added in
              every step, the last included (denoise removes what is left). 1 NFE / step.
    heun      Heun's method (Euler predictor, trapezoid corrector) on the PF-ODE written with
              each component's own clock gamma_i, since beta_i dt = sigma_i^2 dgamma_i:
                  d chi_i = 1/2 (sigma_i eps_i - sigma_i^2 chi_i) dgamma_i.
              The increments gamma_i(s) - gamma_i(t) are exact, so a jump of beta (the corner of
              a clipped schedule) costs O(dt^2) in the one step that holds it, where the
              trapezoid in t, sampling beta at points, loses O(dt); the method stays second
              order. For linear gamma it is exactly Heun in t. The last step is plain Euler.
              2 NFE / step (one less in total).
    midpoint  the explicit midpoint rule on the same gamma-clock PF-ODE: an Euler half step to
              t_m = (t + s) / 2 (u = chi_t + (gamma_m - gamma_t) d chi / d gamma at t), then the
              full step with the slope at (u, t_m). Second order, with exact gamma increments as
              in heun; no model call at s, so no step is cut to Euler. 2 NFE / step.
    ddim      exponential integrator with eps constant over a step (DPM-Solver-1), per component:
              chi_s = alpha_s / alpha_t chi_t - sigma_s expm1(h) eps_t, h_i = lambda_i(s) - lambda_i(t).
              Deterministic, first order. 1 NFE / step.
    dpm2      second-order exponential integrator (DPM-Solver-2 generalised). Per-component
              lambda means a lambda-midpoint would be a different time for every component, and
              the network sees one time per example; so the intermediate evaluation is at the
              midpoint in t, t_m = (t + s) / 2. The state there is a ddim step per component
              (u = alpha_m / alpha_t chi_t - sigma_m expm1(h_m) eps_t). eps is then interpolated
              linearly in time through eps_t and eps_m = eps(u, t_m), and each lambda_i is taken as
              linear in t within the step, which integrates exactly to
                  chi_s = alpha_s / alpha_t chi_t - sigma_s [expm1(h) eps_t + 2 phi(h) (eps_m - eps_t)],
                  phi(h) = (expm1(h) - h) / h.
              No ratio r_i = (lambda_i(t_m) - lambda_i(t)) / h_i appears, so nothing divides by
              h_i; the local error is O(dt^3) where lambda_i is smooth (exactly the r = 1/2 solver
              for linear gamma) and O(dt^2) only in the steps holding a kink of a clipped schedule,
              so the global order stays 2 (checked in tests/test_samplers.py). 2 NFE / step.
    adaptive  dopri5 on the PF-ODE (torchdiffeq), options rtol and atol; `steps` only sets the
              first trial step (1 - t_end) / steps. NFE as counted.

Which second-order method: in whitened components the data have (about) unit variance, and
for unit-variance Gaussian data eps = sigma chi, so the PF-ODE velocity 1/2 (sigma eps - sigma^2
chi) vanishes: the flow stands nearly still, and heun and midpoint, which integrate the whole
velocity, are exact there. ddim and dpm2 integrate the linear part -1/2 sigma^2 chi exactly and
approximate sigma eps by a polynomial in lambda, splitting a near-zero velocity into two large
terms whose cancellation they then miss. On the Gaussian-field benchmark (benchmarks/samplers.py)
midpoint reaches a given KL in the fewest calls, heun next, dpm2 far behind. On a trained digits
network (`--run` in that benchmark) the three second-order methods land within 30% of each other,
so the split matters most where the model is close to Gaussian.

Components that stand still (gamma flat, beta = 0 over a step) come out bit-for-bit unchanged:
em adds beta-weighted terms, heun and midpoint gamma-increment-weighted ones, ddim and dpm2 have
alpha_s / alpha_t = 1 and weights expm1(0) = phi(0) = 0; nothing divides by h. adaptive keeps
them to rounding only (dopri5's dense-output interpolation at t_end).

Time grid: uniform in t, t_k = 1 - k (1 - t_end) / steps, k = 0 .. steps.
Final denoising (`denoise=True`, the default): one more model call at t_end returns the
Tweedie estimate chi_0 = (chi - sigma eps) / alpha; with `denoise=False` the output is the state
at t_end itself (a sample of the t_end marginal, noise level gamma(t_end) included).

Input: `eps_model(chi (B, D), t (B,), gamma (B, D)) -> eps (B, D)`, `schedule(t (B,)) ->
(gamma, beta)` (both (B, D)), the start chi(1) (B, D) and a step count. `sample()` draws chi(1)
~ N(0, I), the prior in whitened components, when given a shape. Computations follow the dtype
and device of chi(1). Samplers run without autograd.
Output: `SampleResult(x0 (B, D), nfe)`.

Errors (GudError):
    E650 unknown sampler method
    E651 invalid sampler argument (steps, t_end, an option, the shape of the start)
    E652 the sampler produced non-finite values
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .diagnostics import GudError

CODES: dict[str, str] = {
    "E650": "unknown sampler method",
    "E651": "invalid sampler argument",
    "E652": "sampler produced non-finite values",
}

# dopri5 tolerances below MIN_TOLERANCE ask for more than float64 holds (it stalls or its step
# underflows); MAX_ADAPTIVE_NFE model calls end a solve that makes no progress.
MIN_TOLERANCE = 1e-12
MAX_ADAPTIVE_NFE = 100_000

# Below this |h| phi(h) = (expm1(h) - h) / h is summed as a series: the direct formula
# cancels catastrophically in float32 for small steps.
_PHI_SERIES = 1e-2


@dataclass
class SampleResult:
    """Final samples x0 (B, D) in whitened components and the number of model calls."""

    x0: torch.Tensor
    nfe: int


def _grid(steps: int, t_end: float) -> list[float]:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise GudError.one("E651", f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t_end < 1.0:
        raise GudError.one("E651", f"t_end must lie in [0, 1), got {t_end!r}")
    return [1.0 - k * (1.0 - t_end) / steps for k in range(steps + 1)]


def _times(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((len(x),), t, dtype=x.dtype, device=x.device)


def _call(eps_model, schedule, x: torch.Tensor, t: float):
    """eps, gamma, beta at (x, t)."""
    tt = _times(x, t)
    gamma, beta = schedule(tt)
    return eps_model(x, tt, gamma), gamma, beta


def _drift(x, eps, gamma, beta):
    """PF-ODE velocity d chi / dt = 1/2 beta (eps / sigma - chi)."""
    return 0.5 * beta * (eps * torch.sigmoid(gamma).rsqrt() - x)


def _ratio(gamma_s, gamma_t):
    """alpha_s / alpha_t, exactly 1 where gamma_s == gamma_t (log alpha = -softplus(gamma) / 2)."""
    return torch.exp(0.5 * (F.softplus(gamma_t) - F.softplus(gamma_s)))


def _phi(h):
    """(expm1(h) - h) / h, with phi(0) = 0 exactly."""
    small = h.abs() < _PHI_SERIES
    safe = torch.where(small, torch.ones_like(h), h)
    series = h * (0.5 + h * (1.0 / 6.0 + h / 24.0))
    return torch.where(small, series, (torch.expm1(safe) - safe) / safe)


def _finish(eps_model, schedule, x, t_end, denoise, nfe) -> SampleResult:
    if not denoise:
        return SampleResult(x, nfe)
    eps, gamma, _ = _call(eps_model, schedule, x, t_end)
    x0 = (x - torch.sigmoid(gamma).sqrt() * eps) * torch.sigmoid(-gamma).rsqrt()
    return SampleResult(x0, nfe + 1)


@torch.no_grad()
def sample_em(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True) -> SampleResult:
    """Euler-Maruyama on the reverse SDE: chi <- chi + dt beta (chi / 2 - eps / sigma)
    + sqrt(beta dt) z, dt = t - s > 0."""
    ts = _grid(steps, t_end)
    x = x1
    for t, s in zip(ts[:-1], ts[1:]):
        eps, gamma, beta = _call(eps_model, schedule, x, t)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        dt = t - s
        x = x + dt * beta * (0.5 * x - eps * torch.sigmoid(gamma).rsqrt()) + (beta * dt).sqrt() * noise
    return _finish(eps_model, schedule, x, t_end, denoise, steps)


def _slope_in_gamma(x, eps, gamma):
    """d chi / d gamma = 1/2 (sigma eps - sigma^2 chi), per component."""
    var = torch.sigmoid(gamma)
    return 0.5 * (var.sqrt() * eps - var * x)


@torch.no_grad()
def sample_heun(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True) -> SampleResult:
    """Heun on the PF-ODE with exact per-component gamma increments; the last step is Euler.
    `generator` is unused."""
    ts = _grid(steps, t_end)
    x = x1
    for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        eps, gamma_t, _ = _call(eps_model, schedule, x, t)
        gamma_s, _ = schedule(_times(x, s))
        dgamma = gamma_s - gamma_t
        d = _slope_in_gamma(x, eps, gamma_t)
        if k == steps - 1:
            x = x + dgamma * d
            break
        x_euler = x + dgamma * d
        eps = eps_model(x_euler, _times(x, s), gamma_s)
        x = x + dgamma * 0.5 * (d + _slope_in_gamma(x_euler, eps, gamma_s))
    return _finish(eps_model, schedule, x, t_end, denoise, 2 * steps - 1)


@torch.no_grad()
def sample_midpoint(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True) -> SampleResult:
    """Explicit midpoint rule on the PF-ODE with exact per-component gamma increments.
    `generator` is unused."""
    ts = _grid(steps, t_end)
    x = x1
    for t, s in zip(ts[:-1], ts[1:]):
        t_mid = 0.5 * (t + s)
        eps, gamma_t, _ = _call(eps_model, schedule, x, t)
        gamma_m, _ = schedule(_times(x, t_mid))
        u = x + (gamma_m - gamma_t) * _slope_in_gamma(x, eps, gamma_t)
        eps = eps_model(u, _times(x, t_mid), gamma_m)
        gamma_s, _ = schedule(_times(x, s))
        x = x + (gamma_s - gamma_t) * _slope_in_gamma(u, eps, gamma_m)
    return _finish(eps_model, schedule, x, t_end, denoise, 2 * steps)


@torch.no_grad()
def sample_ddim(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True) -> SampleResult:
    """Deterministic DDIM per component: chi_s = alpha_s / alpha_t chi_t - sigma_s expm1(h) eps_t.
    `generator` is unused."""
    ts = _grid(steps, t_end)
    x = x1
    for t, s in zip(ts[:-1], ts[1:]):
        eps, gamma_t, _ = _call(eps_model, schedule, x, t)
        gamma_s, _ = schedule(_times(x, s))
        h = 0.5 * (gamma_t - gamma_s)
        x = _ratio(gamma_s, gamma_t) * x - torch.sigmoid(gamma_s).sqrt() * torch.expm1(h) * eps
    return _finish(eps_model, schedule, x, t_end, denoise, steps)


@torch.no_grad()
def sample_dpm2(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True) -> SampleResult:
    """Second-order exponential integrator with the model called at the t-midpoint (see the
    module docstring). `generator` is unused."""
    ts = _grid(steps, t_end)
    x = x1
    for t, s in zip(ts[:-1], ts[1:]):
        t_mid = 0.5 * (t + s)
        eps_t, gamma_t, _ = _call(eps_model, schedule, x, t)
        gamma_m, _ = schedule(_times(x, t_mid))
        h_m = 0.5 * (gamma_t - gamma_m)
        u = _ratio(gamma_m, gamma_t) * x - torch.sigmoid(gamma_m).sqrt() * torch.expm1(h_m) * eps_t
        eps_m = eps_model(u, _times(x, t_mid), gamma_m)
        gamma_s, _ = schedule(_times(x, s))
        h = 0.5 * (gamma_t - gamma_s)
        weighted = torch.expm1(h) * eps_t + 2.0 * _phi(h) * (eps_m - eps_t)
        x = _ratio(gamma_s, gamma_t) * x - torch.sigmoid(gamma_s).sqrt() * weighted
    return _finish(eps_model, schedule, x, t_end, denoise, 2 * steps)


@torch.no_grad()
def sample_adaptive(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                    rtol=1e-5, atol=1e-5) -> SampleResult:
    """dopri5 on the PF-ODE from t = 1 to t_end with torchdiffeq. `generator` is unused."""
    _grid(steps, t_end)

    def velocity(t, x):
        eps, gamma, beta = _call(eps_model, schedule, x, float(t))
        if not bool(torch.isfinite(eps).all()):
            # dopri5 would otherwise shrink its step until it underflows.
            raise GudError.one("E652", f"the model's eps is not finite at t = {float(t):.4g}")
        return _drift(x, eps, gamma, beta)

    span = torch.tensor([1.0, t_end], dtype=x1.dtype, device=x1.device)
    xs, nfe = solve_dopri5(velocity, x1, span, rtol, atol, "E652", "the adaptive sampler",
                           help="loosen rtol and atol, or use a fixed-step sampler",
                           options={"first_step": (1.0 - t_end) / steps})
    return _finish(eps_model, schedule, xs[-1], t_end, denoise, nfe)


def solve_dopri5(func, y0, span, rtol: float, atol: float, code: str, what: str, help: str,
                 options: dict | None = None):
    """torchdiffeq's dopri5 of func(t, y) over `span` -> (solution at span, calls of func).
    A solve that passes MAX_ADAPTIVE_NFE calls, or whose step underflows, is GudError `code`."""
    from torchdiffeq import odeint

    calls = 0

    def counted(t, y):
        nonlocal calls
        calls += 1
        if calls > MAX_ADAPTIVE_NFE:
            raise GudError.one(code, f"{what} made {MAX_ADAPTIVE_NFE} model calls and is at t = {float(t):.4g}",
                               help=help)
        return func(t, y)

    try:
        solution = odeint(counted, y0, span, method="dopri5", rtol=rtol, atol=atol, options=options)
    except AssertionError as e:  # torchdiffeq's "underflow in dt"
        raise GudError.one(code, f"{what}'s step underflowed ({e})", help=help) from None
    return solution, calls


SAMPLERS = {"em": sample_em, "heun": sample_heun, "midpoint": sample_midpoint, "ddim": sample_ddim,
            "dpm2": sample_dpm2, "adaptive": sample_adaptive}
# Options each method accepts besides the common positional arguments.
OPTIONS = {name: ("t_end", "denoise") for name in SAMPLERS}
OPTIONS["adaptive"] = ("t_end", "denoise", "rtol", "atol")


def sample(method: str, eps_model, schedule, start, steps: int, generator=None, *,
           dtype: torch.dtype | None = None, device=None, **options) -> SampleResult:
    """Run sampler `method` from `start`: a tensor chi(1) (B, D), or a shape (B, D) to draw
    chi(1) ~ N(0, I) with `generator` (dtype default torch's default, device default the
    generator's). Options per method are listed in OPTIONS."""
    if method not in SAMPLERS:
        close = difflib.get_close_matches(str(method), SAMPLERS, n=1)
        raise GudError.one("E650", f"unknown sampler {method!r}",
                           help=f"did you mean {close[0]!r}?" if close else
                           f"choose one of {', '.join(SAMPLERS)}")
    unknown = [k for k in options if k not in OPTIONS[method]]
    if unknown:
        raise GudError.one("E651", f"sampler {method!r} has no option {unknown[0]!r}",
                           help=f"its options are {', '.join(OPTIONS[method])}")
    for key in ("rtol", "atol"):
        if key in options and not (isinstance(options[key], (int, float)) and options[key] >= MIN_TOLERANCE):
            raise GudError.one("E651", f"{key} must be a number >= {MIN_TOLERANCE:g}, got {options[key]!r}")
    if torch.is_tensor(start):
        x1 = start
    else:
        shape = tuple(start)
        if len(shape) != 2 or min(shape) < 1:
            raise GudError.one("E651", f"the sample shape must be (B, D) with B, D >= 1, got {shape}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        x1 = torch.randn(shape, generator=generator, dtype=dtype or torch.get_default_dtype(),
                         device=device)
    if x1.dim() != 2 or not bool(torch.isfinite(x1).all()):
        raise GudError.one("E651", f"the start chi(1) must be a finite (B, D) tensor, got shape "
                           f"{tuple(x1.shape)}")
    result = SAMPLERS[method](eps_model, schedule, x1, steps, generator, **options)
    if not bool(torch.isfinite(result.x0).all()):
        raise GudError.one("E652", f"sampler {method!r} produced non-finite values with {steps} steps",
                           help="use more steps, or the adaptive sampler")
    return result
