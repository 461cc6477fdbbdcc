"""Log-likelihood by the probability-flow ODE, and its conversion to bits per dimension.

Maths, in whitened components chi (B, D), t = 0 data, t = 1 noise:

    PF-ODE     d chi / dt = f(chi, t) = 1/2 beta (eps / sigma - chi),  sigma^2 = sigmoid(gamma)
    density    d log p_t(chi(t)) / dt = -div f
    so         log p_0(chi_0) = log p_1(chi_1) + int_0^1 div f dt,
               div f = -1/2 sum_i beta_i + sum_i (beta_i / (2 sigma_i)) d eps_i / d chi_i.

The integral does not feed back into chi, so it is computed in two parts, each split at the
schedule's kinks (`schedule_kinks`: the times where some component's dgamma/dt jumps, the
corners of clipped, sequential and rolling schedules, where beta and so div f jump):
    trajectory  chi(t) by torchdiffeq's dopri5 on the PF-ODE alone, at tolerances
                TRAJECTORY_TOLERANCE times rtol and atol (one model call per step: cheap;
                its error enters the integral amplified, so it is solved tighter), with steps
                that end at t = 1 and restart at each kink; the schedule and the model only
                see t in [0, 1]
    integral    int_0^1 div f dt by adaptive composite Boole quadrature along chi(t) on each
                piece between kinks, div f taken one-sidedly (_KINK_SIDE inside) at a piece's
                kink ends. Without the split a jump costs a bisection down to MIN_PANEL_WIDTH
                (or E661), and a component that moves only between the first points (1 / 32
                apart) is not seen at all: four groups moving within windows 0.01 wide gave a
                density wrong by nats (tests/test_likelihood.py). [0, 1] starts as
                INITIAL_PANELS panels of 5 equally spaced points (each piece its share, a
                power of two, at least one); a panel's error is
                estimated as |S2 - S1| / 15 (S1, S2 Simpson's rule with 3 and 5 points; Boole =
                S2 + (S2 - S1) / 15), and while an example's summed estimate exceeds
                atol + rtol int |div f| dt, its panels with more than their share (the
                tolerance times their width) are halved, which reuses every point (2 new ones
                per half), down to width MIN_PANEL_WIDTH (1 / 256 of a narrower piece) or
                MAX_DIVERGENCE_POINTS points (then E661). A solve keeps chi at the
                points two halvings ahead, so the trajectory is re-solved (identically: the
                same steps) at most every second round.
The exact divergence costs a vector-Jacobian product per component in motion (beta_i != 0;
all D for a soft schedule, one at a time for specs/autoregressive.gud: 4 times less time for
its `gud nll`) per point, the trajectory one model call per step, so the point count is the
measure of work: on the default digits model 33-49 points
per image, where dopri5 on the augmented state [chi, int div f] made about 74 calls with the
divergence, and 5-10 times closer to a tight reference (benchmarks/likelihood.py). On a
briefly trained rolling-diffusion model (16 kinks) the split at the kinks takes 480 points per
image instead of 700 and 1.7 times less time at tolerance 1e-4, lands 1.25 - 3 times closer to
the converged value, and converges at 1e-6, where the unsplit quadrature stopped with E661.

The divergence is exact (D vector-Jacobian products from torch.func.vjp, vmapped over chunks
of one-hot cotangents of about `probe_rows` rows) when D <= 256 or divergence = "exact", and
otherwise Hutchinson's estimate v^T J v with Rademacher v (drawn once per example and held
fixed along the path, which keeps the integrand smooth for the quadrature;
`hutchinson_samples` vectors are averaged). The estimate is unbiased for log p_0: the
trajectory does not depend on v.

Conditional densities (`given`, a mask (D,)): a schedule that holds the given components clean
(beta = 0, `conditioning.GivenSchedule`) leaves them at their data values and out of div f, so
the same ODE gives log p_0(generated | given); the prior N(0, I), the exact divergence and the
Hutchinson probes cover the generated components only, and bits are per generated component.

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
Output: `LogLikResult(logp (B,) nats, method, nfe (model calls of the trajectory solves),
divergence_points (B,) (points at which each example's divergence was evaluated), x1 (B, D)
the trajectory at t = 1)`. `dataset_bits_per_dim` does the whole of `gud nll`: dequantise,
encode to whitened components, solve in batches, convert to bits per dimension.

Errors (GudError):
    E660 invalid likelihood argument (shape, non-finite data, sample count, tolerance,
         levels, scale, divergence method, batch size, given mask)
    E661 the log-likelihood came out non-finite (the model's eps, the trajectory), or the
         divergence integral did not reach its tolerance
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .diagnostics import GudError
from .samplers import MIN_TOLERANCE, schedule_kinks, solve_dopri5

CODES: dict[str, str] = {
    "E660": "invalid likelihood argument",
    "E661": "non-finite log-likelihood, or a divergence integral that does not converge",
}

# Largest D for which the exact divergence (D vector-Jacobian products per call) is the default.
EXACT_TRACE_MAX_DIM = 256
DIVERGENCES = ("exact", "hutchinson")
# Rows (examples x probe directions) per batched vector-Jacobian product. On one CPU core the
# default digits U-Net took 14.4, 13.0 and 17.1 ms per point (64 probes) at 64, 256 and 1024
# rows: small calls pay overhead, large ones fall out of cache. A GPU wants more.
PROBE_ROWS = 256
# Points (example, time) per batched model call when evaluating the divergence.
POINT_ROWS = 64
# The quadrature of the divergence: panels of [0, 1] to start with (a piece between kinks
# gets its share, at least one), the narrowest panel, and the dyadic grid of each piece every
# point lies on (exact integer arithmetic for the panel bookkeeping).
INITIAL_PANELS = 8
MIN_PANEL_WIDTH = 2.0 ** -16
# An example whose integral needs more points than this, plus KINK_POINTS per kink, is E661
# (a noisy or discontinuous divergence would otherwise be refined down to MIN_PANEL_WIDTH
# everywhere).
MAX_DIVERGENCE_POINTS = 4097
KINK_POINTS = 16
_GRID = 2 ** 18
# The divergence is taken _KINK_SIDE after (before) a kink (samplers.schedule_kinks) for the
# piece that starts (ends) there; kinks lie more than samplers.KINK_MERGE apart.
_KINK_SIDE = 1e-12
# The trajectory's tolerance relative to rtol and atol: on the default digits model its error
# moves the integral by about 0.1 nats at 1e-4 and 0.01 nats at 1e-5.
TRAJECTORY_TOLERANCE = 0.1


@dataclass
class LogLikResult:
    """log p_0(x0) in nats (B,), how the divergence was computed, model calls of the trajectory
    solves, divergence points per example (B,), and chi(1)."""

    logp: torch.Tensor
    method: str
    nfe: int
    divergence_points: torch.Tensor
    x1: torch.Tensor


def standard_normal_logp(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per row, (B,)."""
    return -0.5 * (x.pow(2).sum(-1) + x.shape[-1] * math.log(2 * math.pi))


def log_likelihood(eps_model, schedule, x0: torch.Tensor, divergence: str | None = None,
                   hutchinson_samples: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, prior_logp=None,
                   probe_rows: int = PROBE_ROWS, given: torch.Tensor | None = None,
                   kinks: list[float] | None = None, signs: torch.Tensor | None = None) -> LogLikResult:
    """log p_0(x0) by the PF-ODE from t = 0 to 1 (see the module docstring). With a mask `given`
    (D,) of components the schedule holds clean (beta = 0, as conditioning.GivenSchedule does),
    the result is the conditional density of the other components: the standard normal prior
    and the divergence cover only those. `kinks`: the schedule's (default `schedule_kinks`).
    `signs` (hutchinson_samples, B, D) of 0 / 1: the Hutchinson probes' signs (default: drawn
    from `generator`)."""
    if x0.dim() != 2 or not bool(torch.isfinite(x0).all()):
        raise GudError.one("E660", f"x0 must be a finite (B, D) tensor, got shape {tuple(x0.shape)}")
    if not (isinstance(hutchinson_samples, int) and hutchinson_samples >= 1):
        raise GudError.one("E660", f"hutchinson_samples must be a positive integer, got "
                           f"{hutchinson_samples!r}")
    if not (rtol >= MIN_TOLERANCE and atol >= MIN_TOLERANCE):
        raise GudError.one("E660", f"rtol and atol must be >= {MIN_TOLERANCE:g}, got {rtol!r} and {atol!r}")
    if not (isinstance(probe_rows, int) and probe_rows >= 1):
        raise GudError.one("E660", f"probe_rows must be a positive integer, got {probe_rows!r}")
    batch, dim = x0.shape
    generated = _generated_components(given, dim, x0.device)
    divergence = divergence_method(divergence, len(generated))
    if divergence == "exact":
        probes, method = None, "exact"
    else:
        if signs is None:
            signs = torch.randint(0, 2, (hutchinson_samples, batch, dim), generator=generator,
                                  device=generator.device if generator is not None else x0.device)
        elif signs.shape != (hutchinson_samples, batch, dim):
            raise GudError.one("E660", f"signs must have shape {(hutchinson_samples, batch, dim)}, got "
                                       f"{tuple(signs.shape)}")
        probes = (2 * signs - 1).to(device=x0.device, dtype=x0.dtype)
        if len(generated) < dim:  # given components add variance, not signal
            probes = torch.zeros_like(probes).index_copy_(2, generated, probes.index_select(2, generated))
        method = f"hutchinson({hutchinson_samples})"
    x0 = x0.detach()
    kinks = schedule_kinks(schedule) if kinks is None else sorted(kinks)
    trajectory = _Trajectory(eps_model, schedule, x0, TRAJECTORY_TOLERANCE * rtol, TRAJECTORY_TOLERANCE * atol,
                             kinks)

    def divergence_at(rows: torch.Tensor, chi: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _divergence_at(eps_model, schedule, chi, t, None if probes is None else probes[:, rows],
                              generated, probe_rows)

    integrals, points = _integrate_divergence(trajectory, divergence_at, batch, rtol, atol, _Pieces(kinks))
    x1 = trajectory.end
    prior = prior_logp(x1) if prior_logp else standard_normal_logp(x1.index_select(1, generated))
    logp = prior + integrals.to(device=x1.device, dtype=x1.dtype)
    if not bool(torch.isfinite(logp).all()):
        raise GudError.one("E661", "the log-likelihood is not finite",
                           help="check the model's eps for NaN / inf, or tighten rtol and atol")
    return LogLikResult(logp, method, trajectory.nfe, points, x1)


class _Pieces:
    """[0, 1] cut at the kinks; point (j, k) of piece j = [a_j, b_j] lies at
    a_j + (b_j - a_j) k / _GRID. Its time on the trajectory is that; the divergence is taken
    _KINK_SIDE inside the piece at an end that is a kink (one-sided: the integrand jumps there)."""

    def __init__(self, kinks: list[float]):
        self.bounds = [0.0, *kinks, 1.0]
        self.count = len(self.bounds) - 1

    def width(self, j: int) -> float:
        return self.bounds[j + 1] - self.bounds[j]

    def time(self, j: int, k: int) -> float:
        if k == _GRID:
            return self.bounds[j + 1]
        return self.bounds[j] + self.width(j) * (k / _GRID)

    def eval_time(self, j: int, k: int) -> float:
        if k == 0 and j > 0:
            return self.bounds[j] + _KINK_SIDE
        if k == _GRID and j < self.count - 1:
            return self.bounds[j + 1] - _KINK_SIDE
        return self.time(j, k)

    def initial_panels(self) -> list[tuple[int, int, int]]:
        """(piece, lo, hi): INITIAL_PANELS over [0, 1], each piece its share (a power of two, >= 1)."""
        panels = []
        for j in range(self.count):
            count = 2 ** max(0, math.floor(math.log2(max(1.0, INITIAL_PANELS * self.width(j)))))
            step = _GRID // count
            panels += [(j, k * step, (k + 1) * step) for k in range(count)]
        return panels


def _integrate_divergence(trajectory, divergence_at, batch: int, rtol: float, atol: float,
                          pieces: _Pieces):
    """int_0^1 div f dt (B,) along the trajectory by adaptive composite Boole quadrature on each
    piece between kinks (see the module docstring), and the number of points per example (B,).
    Points of all open examples are evaluated together, sorted by time."""
    values: list[dict[tuple[int, int], float]] = [{} for _ in range(batch)]  # div f at (piece, k)
    panels = [pieces.initial_panels() for _ in range(batch)]
    integrals = [0.0] * batch
    open_rows = list(range(batch))
    device = trajectory.x0.device
    while open_rows:
        wanted = sorted({(b, (j, k)) for b in open_rows for j, lo, hi in panels[b] for k in _boole_points(lo, hi)
                         if (j, k) not in values[b]}, key=lambda bp: pieces.eval_time(*bp[1]))
        # Each solve also keeps the points two halvings further down in every open panel.
        ahead = {pieces.time(j, k) for b in open_rows for j, lo, hi in panels[b]
                 for k in range(lo, hi + 1, max(1, (hi - lo) // 16))}
        chi = trajectory.at({pieces.time(*p) for _, p in wanted}, ahead)
        div = divergence_at(torch.tensor([b for b, _ in wanted], device=device),
                            torch.stack([chi[pieces.time(*p)][b] for b, p in wanted]),
                            torch.tensor([pieces.eval_time(*p) for _, p in wanted], dtype=torch.float64,
                                         device=device))
        for (b, p), v in zip(wanted, div.tolist()):
            values[b][p] = v
        still_open = []
        for b in open_rows:
            integral, panels[b] = _refine(panels[b], values[b], rtol, atol, pieces)
            if integral is None:
                still_open.append(b)
            else:
                integrals[b] = integral
        open_rows = still_open
    return torch.tensor(integrals, dtype=torch.float64), torch.tensor([len(v) for v in values])


def _refine(panels: list[tuple[int, int, int]], values: dict[tuple[int, int], float], rtol: float,
            atol: float, pieces: _Pieces):
    """(the integral, panels) when the summed error estimate is within atol + rtol int |f|,
    else (None, panels with those over their share halved); E661 when that is impossible. A
    panel can be halved down to MIN_PANEL_WIDTH, or 1/256 of a narrower piece."""
    widths = [pieces.width(j) * (hi - lo) / _GRID for j, lo, hi in panels]
    estimates = [_boole(values, j, lo, hi, w) for (j, lo, hi), w in zip(panels, widths)]
    error = sum(e for _, e, _ in estimates)
    budget = atol + rtol * sum(a for _, _, a in estimates)
    over = [e > budget * w for w, (_, e, _) in zip(widths, estimates)]
    if error <= budget or not any(over):  # (the second only by rounding: the shares sum to budget)
        return sum(i for i, _, _ in estimates), panels
    floor = [min(MIN_PANEL_WIDTH, pieces.width(j) / 256) for j, _, _ in panels]
    stuck = any(o and w < 2 * f for o, w, f in zip(over, widths, floor))
    if stuck or len(values) + 4 * sum(over) > MAX_DIVERGENCE_POINTS + KINK_POINTS * (pieces.count - 1):
        j, lo, _ = max(zip(estimates, panels), key=lambda ep: ep[0][1])[1]
        raise GudError.one("E661", f"the divergence integral did not reach its tolerance: estimated error "
                           f"{error:.3g} nats > {budget:.3g} after {len(values)} points (worst near "
                           f"t = {pieces.time(j, lo):.6g})", help="loosen rtol and atol, or compute in float64")
    halved = []
    for (j, lo, hi), o in zip(panels, over):
        halved += [(j, lo, (lo + hi) // 2), (j, (lo + hi) // 2, hi)] if o else [(j, lo, hi)]
    return None, halved


def _boole_points(lo: int, hi: int) -> range:
    """The 5 equally spaced grid points of a panel."""
    return range(lo, hi + 1, (hi - lo) // 4)


def _boole(values: dict[tuple[int, int], float], j: int, lo: int, hi: int, width: float):
    """(Boole's rule, its error estimate |S2 - S1| / 15, Boole's rule of |f|) on one panel of
    piece j, `width` long in t."""
    f = [values[j, k] for k in _boole_points(lo, hi)]
    s1 = width / 6 * (f[0] + 4 * f[2] + f[4])
    s2 = width / 12 * (f[0] + 4 * f[1] + 2 * f[2] + 4 * f[3] + f[4])
    weights = (7, 32, 12, 32, 7)
    return s2 + (s2 - s1) / 15, abs(s2 - s1) / 15, width / 90 * sum(w * abs(v) for w, v in zip(weights, f))


class _Trajectory:
    """chi(t) of the PF-ODE from x0 at given times, by dopri5 (restarted at the kinks). Every
    solve takes the same steps, so points from different solves lie on one trajectory; the
    points of the last solve are kept for later rounds."""

    def __init__(self, eps_model, schedule, x0: torch.Tensor, rtol: float, atol: float,
                 kinks: list[float] = ()):
        self.eps_model, self.schedule, self.x0 = eps_model, schedule, x0
        self.rtol, self.atol = max(rtol, MIN_TOLERANCE), max(atol, MIN_TOLERANCE)
        self.kinks = list(kinks)
        self.nfe = 0
        self.end: torch.Tensor | None = None  # chi(1), from the first solve that reaches t = 1
        self.kept: dict[float, torch.Tensor] = {}

    def velocity(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = torch.full((len(x),), _clamp01(float(t)), dtype=x.dtype, device=x.device)
        gamma, beta = self.schedule(tt)
        gamma, beta = gamma.to(x.dtype), beta.to(x.dtype)
        eps = self.eps_model(x, tt, gamma)
        if not bool(torch.isfinite(eps).all()):
            # dopri5 would otherwise shrink its step until it underflows.
            raise GudError.one("E661", f"the model's eps is not finite at t = {float(tt[0]):.4g}")
        return 0.5 * beta * (eps * torch.sigmoid(gamma).rsqrt() - x)

    def at(self, times: set[float], ahead: set[float]) -> dict[float, torch.Tensor]:
        """chi (B, D) at `times`; a new solve also keeps the times `ahead`."""
        if times <= self.kept.keys():
            return self.kept
        grid = sorted(times | ahead)
        # Times that one float in the state's dtype (dopri5's) holds share its point.
        rounded = torch.tensor(grid, dtype=torch.float64).to(self.x0.dtype)
        distinct, index = torch.unique_consecutive(rounded, return_inverse=True)
        span = (torch.cat([distinct.new_zeros(1), distinct]) if float(distinct[0]) > 0 else distinct).to(self.x0.device)
        # Steps end exactly at t = 1 instead of stepping past it and interpolating back, and
        # restart at the kinks, where the velocity jumps.
        options = {"step_t": torch.ones(1, dtype=span.dtype)}
        if self.kinks:
            options["jump_t"] = torch.tensor(self.kinks, dtype=span.dtype)
        with torch.no_grad():
            xs, nfe = solve_dopri5(self.velocity, self.x0, span, self.rtol, self.atol, "E661",
                                   "the likelihood's trajectory", help="loosen rtol and atol", options=options)
        self.nfe += nfe
        xs = xs[len(span) - len(distinct):]
        self.kept = {t: xs[i] for t, i in zip(grid, index.tolist())}
        if self.end is None and grid[-1] == 1.0:
            self.end = xs[-1]
        return self.kept


def _clamp01(t: float) -> float:
    # dopri5's trial steps may reach past t = 1, where a schedule need not be defined.
    return min(max(t, 0.0), 1.0)


def _divergence_at(eps_model, schedule, chi: torch.Tensor, t: torch.Tensor, probes: torch.Tensor | None,
                   generated: torch.Tensor, probe_rows: int) -> torch.Tensor:
    """div f (R,) at points chi (R, D) and float64 times t (R,), sorted by time; probes (S, R, D) for
    Hutchinson's estimate or None for the exact divergence over the `generated` components.
    Each model call takes points of one time (at most POINT_ROWS), so that the schedule and an
    oracle see one noise level."""
    out, lo = [], 0
    for count in torch.unique_consecutive(t, return_counts=True)[1].tolist():
        for start in range(lo, lo + count, POINT_ROWS):
            end = min(start + POINT_ROWS, lo + count)
            x, t64 = chi[start:end], t[start:end]
            tt = t64.to(x.dtype)
            # torch.func.vjp differentiates with respect to x inside no_grad; without it,
            # autograd would also record every call for the model's weights and keep it alive.
            with torch.no_grad():
                gamma, beta = schedule(t64)  # float64 times: the side of a kink survives
                gamma, beta = gamma.to(x.dtype), beta.to(x.dtype)
                eps, pullback = torch.func.vjp(lambda c: eps_model(c, tt, gamma), x)
                if not bool(torch.isfinite(eps).all()):
                    raise GudError.one("E661", f"the model's eps is not finite at t = {float(tt[0]):.4g}")
                weight = 0.5 * beta * torch.sigmoid(gamma).rsqrt()
                v = None if probes is None else probes[:, start:end]
                # The exact trace skips the components at rest (beta = 0 at this time: those a clipped
                # or sequential schedule holds), whose terms are zero.
                components = generated if v is not None else generated[(weight[:, generated] != 0).any(0)]
                out.append(weighted_jacobian_trace(pullback, weight, v, probe_rows, components)
                           - 0.5 * beta.sum(-1))
        lo += count
    return torch.cat(out)


def _generated_components(given: torch.Tensor | None, dim: int, device) -> torch.Tensor:
    """Indices of the components that are not given (all D without a mask); E660 for a bad mask."""
    if given is None:
        return torch.arange(dim, device=device)
    given = torch.as_tensor(given, device=device)
    if given.dtype != torch.bool or given.shape != (dim,) or bool(given.all()):
        raise GudError.one("E660", f"given must be a boolean mask of shape ({dim},) that leaves some "
                           f"components to generate, got {given.dtype} of shape {tuple(given.shape)}")
    return (~given).nonzero().flatten()


def divergence_method(divergence: str | None, dim: int) -> str:
    """The divergence a likelihood over `dim` components uses: `divergence`, or by default
    exact up to EXACT_TRACE_MAX_DIM and Hutchinson's estimate above. E660 for unknown names."""
    if divergence is None:
        return "exact" if dim <= EXACT_TRACE_MAX_DIM else "hutchinson"
    if divergence not in DIVERGENCES:
        raise GudError.one("E660", f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    return divergence


def weighted_jacobian_trace(pullback, weight: torch.Tensor, probes: torch.Tensor | None,
                            probe_rows: int = PROBE_ROWS, components: torch.Tensor | None = None) -> torch.Tensor:
    """tr(diag(weight) J) per row (B,), J = d eps / d chi, from eps's vector-Jacobian product
    `pullback` (torch.func.vjp): exactly (probes None: one-hot cotangents weight_k e_k pick
    weight_k J_kk out of row k of J, for k in `components`, default all), or as the mean over
    probes (S, B, D) of (weight v)^T J v. The cotangents go through vmap in chunks of about
    `probe_rows` rows (chunk * B), which keeps the network's batched backward pass efficient and
    the memory bounded for large D."""
    batch, dim = weight.shape
    chunk = max(1, probe_rows // batch)
    trace = weight.new_zeros(batch)
    if probes is None:
        components = torch.arange(dim, device=weight.device) if components is None else components
        for lo in range(0, len(components), chunk):
            picked = components[lo:lo + chunk]
            onehot = torch.zeros(len(picked), 1, dim, dtype=weight.dtype, device=weight.device)
            onehot[torch.arange(len(picked), device=weight.device), 0, picked] = 1.0
            (rows,) = torch.func.vmap(pullback)(onehot * weight)
            trace += rows.gather(2, picked.view(-1, 1, 1).expand(-1, batch, 1)).sum((0, 2))
        return trace
    for lo in range(0, len(probes), chunk):
        v = probes[lo:lo + chunk]
        (rows,) = torch.func.vmap(pullback)(v * weight)
        trace += (rows * v).sum((0, 2))
    return trace / len(probes)


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


def image_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """A CPU generator of image `index` of a data set, seeded from `seed`, the index and a stream
    number (0: dequantisation, 1: Hutchinson probes): the same numbers for that image however the
    set is split into shards or batches."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index + stream * 0x9E3779B97F4A7C15) % (2 ** 63 - 1))


def dequantise_images(x: torch.Tensor, levels: int, data_scale: float, seed: int, first: int = 0) -> torch.Tensor:
    """`dequantise` of each image x[j] with its own generator (`image_generator` of first + j)."""
    return torch.cat([dequantise(image[None], levels, data_scale, generator=image_generator(seed, first + j))
                      for j, image in enumerate(x)])


def probe_signs(count: int, samples: int, dim: int, seed: int, first: int = 0) -> torch.Tensor:
    """Hutchinson probe signs (samples, count, dim) of 0 / 1, those of image first + j drawn from
    its own generator (`image_generator`, stream 1)."""
    return torch.stack([torch.randint(0, 2, (samples, dim), generator=image_generator(seed, first + j, 1))
                        for j in range(count)], dim=1)


def mean_and_stderr(values) -> tuple[float, float]:
    """Mean and its standard error std / sqrt(n) (sample std, n - 1); stderr is 0 for n = 1."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(v) == 0:
        raise GudError.one("E660", "mean_and_stderr needs at least one value")
    stderr = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), stderr


@dataclass
class DatasetNLL:
    """Bits per dimension of every example (N,), their mean and its standard error, model
    calls of the trajectory solves (summed), divergence points per example (N,), how the
    divergence was computed, and the number of components the bits are per."""

    bits: torch.Tensor
    mean: float
    stderr: float
    nfe: int
    divergence_points: torch.Tensor
    method: str
    dims: int


def dataset_bits_per_dim(eps_model, schedule, encode, x, *, levels: int | None, data_scale: float,
                         logabsdet: float, divergence: str | None = None, hutchinson_samples: int = 1,
                         batch_size: int = 64, rtol: float = 1e-5, atol: float = 1e-5,
                         generator: torch.Generator | None = None, probe_rows: int = PROBE_ROWS,
                         progress=None, given: torch.Tensor | None = None, first: int = 0) -> DatasetNLL:
    """Bits per dimension of data x (N, C, H, W) in model space (see the module docstring).

    Discrete data (levels given) are dequantised first, in float64, and image k of the data set
    (x[k - first]: `first` is x's offset in it, as a rank's shard) draws its noise and its
    Hutchinson probes from generators seeded from `generator`'s seed and k (`image_generator`),
    so they are the same however the images are split over ranks or batches. `encode` maps a
    float64 chunk (B, C, H, W) to whitened
    components (B, D) in the dtype and on the device of the model (today:
    prior.whiten(basis(x - mean))); `logabsdet` is log|det| of that map. The ODE is solved for
    `batch_size` examples at a time; `progress(done, total)` is called after each solve. With a
    mask `given` (see `log_likelihood`) the bits are per generated component, and `logabsdet`
    must be that of the map to the generated components."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() < 2 or len(x) == 0 or not bool(torch.isfinite(x).all()):
        raise GudError.one("E660", f"x must be a finite, non-empty (N, ...) batch of data, got shape "
                           f"{tuple(x.shape)}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise GudError.one("E660", f"batch_size must be a positive integer, got {batch_size!r}")
    _level_width(data_scale, levels)  # E660 before any work
    seed = generator.initial_seed() if generator is not None else torch.initial_seed()
    if levels is not None:
        x = dequantise_images(x, levels, data_scale, seed, first)
    bits, points, nfe, method, dims = [], [], 0, "", 0
    kinks = schedule_kinks(schedule)
    for done, chunk in zip(range(0, len(x), batch_size), torch.split(x, batch_size)):
        chi = encode(chunk)
        dims = chi.shape[1] - (0 if given is None else int(torch.as_tensor(given).sum()))
        signs = None
        if divergence_method(divergence, dims) != "exact":
            signs = probe_signs(len(chi), hutchinson_samples, chi.shape[1], seed, first + done)
        result = log_likelihood(eps_model, schedule, chi, divergence, hutchinson_samples, rtol, atol,
                                generator, probe_rows=probe_rows, given=given, kinks=kinks, signs=signs)
        bits.append(bits_per_dim(result.logp.double().cpu(), logabsdet, dims, data_scale, levels))
        points.append(result.divergence_points)
        nfe += result.nfe
        method = result.method
        if progress is not None:
            progress(sum(len(b) for b in bits), len(x))
    values = torch.cat(bits)
    mean, stderr = mean_and_stderr(values)
    return DatasetNLL(values, mean, stderr, nfe, torch.cat(points), method, dims)
