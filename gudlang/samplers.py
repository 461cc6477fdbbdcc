"""Samplers: from whitened noise chi(1) to a sample chi(t_end), for component-wise schedules.

Everything runs in whitened components chi (shape (B, D)), independent of basis and network.
Per component i, with gamma_i(t) the negative log-SNR (t = 1 noise, t = 0 data):

    alpha_i^2 = sigmoid(-gamma_i), sigma_i^2 = sigmoid(gamma_i), lambda_i = -gamma_i / 2,
    beta_i = sigma_i^2 dgamma_i/dt,  score s = -eps / sigma,  x0 = (chi - sigma eps) / alpha
    reverse SDE  d chi = [-1/2 beta chi - beta s] dt + sqrt(beta) dW      (t: 1 -> t_end)
    PF-ODE       d chi / dt = -1/2 beta (chi + s) = 1/2 beta (eps / sigma - chi)
    exact solution of the PF-ODE per component from t to s, h_i = lambda_i(s) - lambda_i(t) >= 0
    (variation of constants, in the noise and in the data prediction):
        chi_i(s) = alpha_i(s) / alpha_i(t) chi_i(t) - sigma_i(s) int_0^h_i e^(h_i - u) eps_i du
                 = sigma_i(s) / sigma_i(t) chi_i(t) + alpha_i(s) int_0^h_i e^(u - h_i) x0_i du,
    u = lambda_i - lambda_i(t). Exponential integrators replace eps_i or x0_i by a polynomial
    P(u / h_i) and integrate exactly with the weights
        w_n(h) = int_0^h e^(h - u) (u / h)^n du:  w_0 = expm1(h), w_n = n w_(n-1) / h - 1,
    (noise form) and v_n(h) = int_0^h e^(u - h) (u / h)^n du = -w_n(-h) (data form); near h = 0
    they are summed as the series w_n = n! sum_m h^(m+1) / (m + n + 1)! (`phi_weights`), and
    w_n(0) = 0. A polynomial through values P_j at nodes z_j integrates to sum_j W_j P_j, with
    W_j the weights applied to the coefficients of the j-th Lagrange polynomial.

Methods (one function each, same signature; `SAMPLERS` maps names to them). NFE = model calls
without the final denoise:
    em        Euler-Maruyama on the reverse SDE (the reference code's sampler); noise is added in
              every step, the last included (denoise removes what is left). NFE = steps.
    heun      Heun's method (Euler predictor, trapezoid corrector) on the PF-ODE written with
              each component's own clock gamma_i, since beta_i dt = sigma_i^2 dgamma_i:
                  d chi_i = 1/2 (sigma_i eps_i - sigma_i^2 chi_i) dgamma_i.
              The increments gamma_i(s) - gamma_i(t) are exact, so a jump of beta (the corner of
              a clipped schedule) costs O(dt^2) in the one step that holds it, where the
              trapezoid in t, sampling beta at points, loses O(dt); the method stays second
              order. For linear gamma it is exactly Heun in t. The last step is plain Euler.
              NFE = 2 steps - 1.
    midpoint  the explicit midpoint rule on the same gamma-clock PF-ODE: an Euler half step to
              t_m = (t + s) / 2, then the full step with the slope at (u, t_m). Second order,
              exact gamma increments as in heun. NFE = 2 steps.
    ddim      eps constant over a step (DPM-Solver-1), per component:
              chi_s = alpha_s / alpha_t chi_t - sigma_s expm1(h) eps_t. First order. NFE = steps.
    dpm2      DPM-Solver-2 generalised: the network sees one time per example, so the second
              evaluation is at the t-midpoint t_m, from a ddim step u; eps is linear in time
              through eps_t and eps_m = eps(u, t_m), lambda_i linear in t within the step:
                  chi_s = alpha_s / alpha_t chi_t - sigma_s [w_0(h) eps_t + 2 w_1(h) (eps_m - eps_t)].
              Global order 2 (O(dt^2) only in the one step holding a kink). NFE = 2 steps.
    dpmpp2m, dpmpp3m
              DPM-Solver++(2M) / (3M) generalised: multistep, data prediction. x0_i is the
              polynomial in lambda_i through the last 2 / 3 evaluations (fewer in the first
              steps), at nodes z_j = (lambda_i(t_j) - lambda_i(t)) / h_i of each component's
              own lambda; weights -v_n(h_i) as above, so the polynomial is integrated exactly
              (not approximated as in the original papers). The first order - 1 steps, with
              fewer earlier evaluations, get unipc's corrector (no extra call; x0_s is kept as
              called), so that they do not cap the order. Orders 2 and 3. NFE = steps.
    unipc     UniPC-3 generalised: the dpmpp3m step (predictor) to chi_p, then the model at
              chi_p (the call the next step needs anyway) gives x0_s, and the step is redone
              with the polynomial through x0_s and the predictor's nodes (corrector, UniC) to
              chi_c. Later steps integrate x0_s as the value at chi_c, so it is moved there to
              first order with the gain of independent Gaussian components of the data's
              whitened variances v_i (option `variance`; runs pass their data's, the feature
              wvar; default 1, the whitened prior N(0, I)):
                  x0_s <- x0_s + k_s (chi_c - chi_p),  k = alpha v / (alpha^2 v + sigma^2).
              By Tweedie d x0 / d chi = alpha Cov[x0 | chi] / sigma^2, which is k for N(0, v):
              alpha for unit variance, and for any data 1 / alpha (-> 1) where the SNR is high
              and -> 0 where it is low. UniPC keeps x0_s as called; against that, the prior's
              gain lowered the benchmark's KL on 49 of 56 rows at 50 calls (up to 19 times; it
              rose on 7, at most 3.6 times, all still below em's) and on 39 at 25 calls. The
              data's gain lowers it further on 27 rows at 50 calls (up to 11 times, none rises;
              the other 29 have v = 1: matched priors) and on 24 at 25 calls (up to 39 times;
              it rises on 3, at most 2.1 times). On trained digits networks (`--run`) both gains
              are alike: with the data's the distance to dopri5 is 3 - 11% smaller at 10 - 50
              calls for the default spec, 5 - 13% smaller at 10 - 15 and 5 - 22% larger at
              25 - 50 for a clipped autoregressive one in the DCT basis. Order 4, NFE = steps
              (the last step has no corrector: it would cost a call at t_end).
    adaptive  dopri5 on the PF-ODE (torchdiffeq), options rtol and atol; `steps` only sets the
              first trial step (1 - t_end) / steps. It restarts at the schedule's kinks
              (option `kinks`, default `schedule_kinks`: where some component's dgamma/dt
              jumps; `GudModel.sample` finds them once for all its batches), where stepping over
              the corner left errors far above the tolerance: on the six shipped specs with
              kinks (the digits' Gaussian stand-in, tolerance 1e-4, largest error against
              dopri5 at 1e-8) 0.01 - 2 before, 3e-5 - 0.05 now (the most on rolling
              diffusion, steep near every corner), for 0.7 - 2.8 times the calls. Its last
              step ends at t_end (no interpolation back from past it). NFE as counted.

Per-component nodes in the multistep methods: a component that stood still between two
evaluations has both at one lambda (0/0), and one that barely moved would turn what the other
components changed into a huge slope. So each component uses its nodes only while consecutive
ones are at least MIN_GAP of their spacing in time apart (relative to the step), and falls back
to lower order (down to ddim) per component; nothing divides by h_i. Where a clipped schedule
couples components that start and stop at different times, the kinks of the others bend each
component's x0 inside a step, and every method converges at order 2 at most
(tests/test_samplers.py measures the orders).

Which method (benchmarks/samplers.py, exact Gaussian KL against em at 1000 steps on 56 rows:
the covariances of the digits and of a steep Gaussian field, PCA / DCT / wavelet / pixel bases,
white and matched priors, scalar, soft, clipped and sequential schedules): under the white prior
the whitened variances of real data span orders of magnitude, each component's flow bends where
its true SNR passes 1, and the exponential integrators, exact in the linear part, win by orders
of magnitude. unipc beats em at 1000 steps within 25 calls on 42 rows and within 50 on all 56;
heun and midpoint miss it by factors of 10^2 - 10^7 at 25 calls on every digits row. They stay
competitive only where the whitened data are nearly white (grf, matched prior): at unit
variance the PF-ODE velocity vanishes, Runge-Kutta methods are exact, and exponential
integrators split it into two cancelling terms. Clipped (autoregressive) schedules move each
component through its whole log-SNR range in a sixth of the time at a = 50, in steps of
h_i ~ 1.2 at 25 calls (0.4 on the scalar rows): there no method reaches em within 25 calls (the
best is 16 - 650 times its KL) and unipc needs 40 - 50. The calls hold enough: fed the exact
x0 at the same 25 times on the exact flow, unipc's steps would be within 0.4 - 64 times em's KL
and a polynomial in t through the same nodes within 0.6 - 3.4 times. What is lost is causal: each
call is made at the predictor's state, whose error (a 3-node extrapolation over a step in which
about three components start and three stop) enters x0 through the model's Jacobian, a factor
3 - 40. Kink-aligned, activity-weighted and other non-uniform grids, nodes in t or in
(lambda, t), orders 2 - 5, the noise form and other node gaps do not recover it.
On the trained digits network (`--run`) the order at 25 and 50 calls is the same: unipc,
dpmpp3m, dpmpp2m, then the second-order single-step methods together; at 10 calls dpmpp3m
is closest.

Components that stand still (gamma flat over a step) come out bit-for-bit unchanged: em adds
beta-weighted terms, heun and midpoint gamma-increment-weighted ones, the exponential
integrators have ratio exactly 1 and weights w_n(0) = 0 times finite values. adaptive keeps them
to rounding only (dopri5's dense-output interpolation at t_end).

Time grids (`time_grid`, option `grid`; every fixed-step sampler takes the same grid, built once):
    uniform   t_k = 1 - k (1 - t_end) / steps.
    logsnr    uniform in the mean over components of gamma_i (the mean log-SNR).
    fitted    uniform in int max_i dgamma_i: every step holds the same largest move of any one
              component (the largest h_i). For a scalar schedule it is uniform in log-SNR (vp,
              cosine: the uniform grid wastes steps where gamma barely moves); for parallel or
              clipped lines (soft, sequential) it is uniform in t, where logsnr starves the
              components that move while few others do.
The non-uniform grids are fitted on 4097 points and mix in 2% uniform time, so that they stay
strictly decreasing where nothing moves. An explicit grid (steps + 1 strictly decreasing times
from 1 to t_end) may be passed instead of a name.

Numerics: the schedule and the model are only evaluated at times clamped into [0, 1] (dopri5
steps past t_end). Per-step coefficients are computed in float64 from float64 gamma and cast to
the state's dtype; beta / sigma (= sigma dgamma/dt; em, adaptive) is formed in float64 and is 0
where beta is 0, so that a sigma that underflows (float32: below gamma = -104) cannot give inf.
Final denoising (`denoise=True`, the default): one more model call at t_end returns the
Tweedie estimate chi_0 = (chi - sigma eps) / alpha; with `denoise=False` the output is the state
at t_end itself (a sample of the t_end marginal, noise level gamma(t_end) included).

Input: `eps_model(chi (B, D), t (B,), gamma (B, D)) -> eps (B, D)`, `schedule(t (B,)) ->
(gamma, beta)` (both (B, D)), the start chi(1) (B, D) and a step count. `sample()` draws chi(1)
~ N(0, I), the prior in whitened components, when given a shape. Computations follow the dtype
and device of chi(1). Samplers run without autograd. The defaults (DEFAULT_SAMPLER,
DEFAULT_STEPS, DEFAULT_GRID) are those of the spec's `sample` block.
Output: `SampleResult(x0 (B, D), nfe)`.

Errors (GudError):
    E650 unknown sampler method
    E651 invalid sampler argument (steps, t_end, grid, an option, the shape of the start)
    E652 the sampler produced non-finite values
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .diagnostics import GudError
from .schedules import BATCH_VALUES, row_runs
from .spec import MAX_SAMPLE_STEPS

CODES: dict[str, str] = {
    "E650": "unknown sampler method",
    "E651": "invalid sampler argument",
    "E652": "sampler produced non-finite values",
}

# Chosen by benchmarks/samplers.py; gudlang.spec.SampleSettings has the same defaults (a test
# keeps them equal).
DEFAULT_SAMPLER = "unipc"
DEFAULT_STEPS = 50
DEFAULT_GRID = "fitted"
GRIDS = ("uniform", "logsnr", "fitted")

# dopri5 tolerances below MIN_TOLERANCE ask for more than float64 holds (it stalls or its step
# underflows); MAX_ADAPTIVE_NFE model calls end a solve that makes no progress.
MIN_TOLERANCE = 1e-12
MAX_ADAPTIVE_NFE = 100_000

# A multistep node is used while it lies at least MIN_GAP of its share of the step apart (in
# the component's lambda) from the next newer one; benchmarks/samplers.py: 0.3 - 0.7 are alike.
MIN_GAP = 0.5

# Below |h| = _SERIES_BELOW the weights w_n are summed as their series (20 terms reach float64
# precision there); above it the recursion loses at most a digit.
_SERIES_BELOW = 1.0
_SERIES_TERMS = 20
# Non-uniform grids: points of the dense grid they are fitted on, share of uniform time. They
# evaluate the schedule at most schedules.BATCH_VALUES values at a time (one row of D at least).
_DENSE = 4097
_UNIFORM_SHARE = 0.02


@dataclass
class SampleResult:
    """Final samples x0 (B, D) in whitened components and the number of model calls."""

    x0: torch.Tensor
    nfe: int


# --------------------------------------------------------------------------- time grids
def _check_steps(steps, t_end) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise GudError.one("E651", f"steps must be a positive integer, got {steps!r}")
    if not isinstance(t_end, (int, float)) or isinstance(t_end, bool) or not 0.0 <= t_end < 1.0:
        raise GudError.one("E651", f"t_end must lie in [0, 1), got {t_end!r}")


def time_grid(kind: str, schedule, steps: int, t_end: float = 0.0, device=None) -> torch.Tensor:
    """The steps + 1 times a fixed-step sampler visits, from 1 down to t_end (float64, CPU);
    `device` is where the schedule is evaluated (default CPU)."""
    _check_steps(steps, t_end)
    if kind not in GRIDS:
        close = difflib.get_close_matches(str(kind), GRIDS, n=1)
        raise GudError.one("E651", f"unknown time grid {kind!r}",
                           help=f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(GRIDS)}")
    uniform = np.array([1.0 - k * (1.0 - t_end) / steps for k in range(steps)] + [t_end])
    if kind == "uniform" or steps == 1:
        return torch.as_tensor(uniform)
    dense = np.linspace(t_end, 1.0, _DENSE)
    progress = _progress(kind, schedule, dense, device)
    span = progress[-1] - progress[0]
    if not (np.isfinite(span) and span > 0):
        return torch.as_tensor(uniform)
    measure = ((1 - _UNIFORM_SHARE) * (progress - progress[0]) / span
               + _UNIFORM_SHARE * (dense - t_end) / (1 - t_end))
    ts = np.interp(1.0 - np.arange(steps + 1) / steps, measure, dense)
    ts[0], ts[-1] = 1.0, t_end
    return torch.as_tensor(ts)


def _progress(kind: str, schedule, dense: np.ndarray, device) -> np.ndarray:
    """At each dense time: mean_i gamma_i (logsnr), or the cumulative largest per-component move
    (fitted). In chunks of at most BATCH_VALUES values: the whole (times, D) table would not fit
    in memory for large images."""
    parts, previous = [], None
    with torch.no_grad():
        dim = schedule(torch.ones(1, dtype=torch.float64, device=device))[0].shape[-1]
    for chunk in np.array_split(dense, min(len(dense), -(-len(dense) * dim // BATCH_VALUES))):
        with torch.no_grad():
            times = torch.as_tensor(chunk, dtype=torch.float64, device=device)
            gamma = schedule(times)[0].to(torch.float64).cpu().numpy()
        if kind == "logsnr":
            parts.append(gamma.mean(axis=1))
        else:
            rows = gamma if previous is None else np.concatenate([previous, gamma])
            parts.append(np.diff(rows, axis=0).max(axis=1))
            previous = gamma[-1:]
    if kind == "logsnr":
        return np.concatenate(parts)
    return np.concatenate([[0.0], np.cumsum(np.concatenate(parts))])


def _times_of(grid, schedule, steps, t_end, like: torch.Tensor) -> list[float]:
    """The times of `grid`: a name of GRIDS, or steps + 1 strictly decreasing times from 1 to t_end."""
    if isinstance(grid, str):
        return time_grid(grid, schedule, steps, t_end, like.device).tolist()
    _check_steps(steps, t_end)
    ts = [float(v) for v in torch.as_tensor(grid, dtype=torch.float64).reshape(-1)]
    if len(ts) != steps + 1 or ts[0] != 1.0 or ts[-1] != t_end or any(not a > b for a, b in zip(ts, ts[1:])):
        raise GudError.one("E651", f"a time grid must be {steps + 1} (steps + 1) strictly decreasing "
                                   f"times from 1 to t_end = {t_end}, got {len(ts)} times")
    return ts


# --------------------------------------------------------------------------- kinks
# `schedule_kinks` scans the schedule on KINK_CELLS cells; a cell is searched where some
# component's dgamma/dt changes by more than _KINK_SEARCH of its size, and holds a kink when the
# change stays above _KINK_KEEP of it across _KINK_WIDTH (a smooth slope's does not). Kinks
# closer than KINK_MERGE (one time of several components, found in two cells) are one. Found
# cells are bisected in groups of _KINK_CHUNK, each until its widest cell is below _KINK_WIDTH.
# Every evaluation holds at most schedules.BATCH_VALUES values (one row of D at least).
KINK_CELLS = 4096
KINK_MERGE = 1e-11
_KINK_SEARCH = 0.25
_KINK_KEEP = 1e-3
_KINK_WIDTH = 1e-13
_KINK_CHUNK = 256


def schedule_kinks(schedule, cells: int = KINK_CELLS) -> list[float]:
    """Times in (0, 1) where some component's dgamma / dt jumps (the corners of a clipped
    schedule), sorted; at most one per cell of a uniform scan with `cells` cells. Each cell where
    a slope changes by more than _KINK_SEARCH of its size is bisected towards the larger change,
    down to _KINK_WIDTH, and kept when the change is still there (a steep smooth slope's is
    gone). The slope is beta / sigma^2 from `schedule(t) -> (gamma, beta)` in float64; a
    non-finite one (beta = 0 where sigma^2 underflows) counts as 0. Evaluated in runs of rows
    (`schedules.row_runs`): memory does not grow with D."""
    def slopes(times: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            gamma, beta = schedule(torch.as_tensor(times, dtype=torch.float64))
        slope = beta.double().cpu() / torch.sigmoid(gamma.double().cpu())
        return np.nan_to_num(slope.numpy(), nan=0.0, posinf=0.0, neginf=0.0)  # 0 / 0: standing still

    edges = np.linspace(0.0, 1.0, cells + 1)
    dim = slopes(edges[:1]).shape[1]
    found, previous = [], None  # previous: the slopes at the last edge of the run before
    for k0, k1 in row_runs(dim, cells + 1):
        s = slopes(edges[k0:k1])
        if previous is not None and _slope_changes(previous, s[:1], _KINK_SEARCH)[0]:
            found.append(k0 - 1)
        found.extend(k0 + np.flatnonzero(_slope_changes(s[:-1], s[1:], _KINK_SEARCH)))
        previous = s[-1:]
    kinks = []
    for first in range(0, len(found), _KINK_CHUNK):
        cell = np.asarray(found[first: first + _KINK_CHUNK], dtype=np.int64)
        parts = [(edges[cell[k0:k1]], edges[cell[k0:k1] + 1]) for k0, k1 in row_runs(dim, len(cell))]
        done = [_bisect(slopes, a, b) for a, b in parts]
        steps = max(taken for taken, _ in done)  # the group's: runs that stopped sooner go on as long
        for (a, b), (taken, kept) in zip(parts, done):
            kinks.extend(float(t) for t in (kept if taken == steps else _bisect(slopes, a, b, steps)[1]))
    merged: list[list[float]] = []  # kinks of several components at one time, found in two cells
    for t in sorted(kinks):
        if merged and t - merged[-1][-1] < KINK_MERGE:
            merged[-1].append(t)
        else:
            merged.append([t])
    return [t for t in (sum(g) / len(g) for g in merged) if KINK_MERGE < t < 1 - KINK_MERGE]


def _slope_changes(left: np.ndarray, right: np.ndarray, share: float) -> np.ndarray:
    """Per row: whether some component's slope changes by more than `share` of its size."""
    return (np.abs(right - left) - share * (np.abs(left) + np.abs(right))).max(axis=1) > 0


def _bisect(slopes, a: np.ndarray, b: np.ndarray, steps: int | None = None) -> tuple[int, np.ndarray]:
    """Bisect the cells [a, b] together, each towards its larger slope change, until the widest
    is below _KINK_WIDTH (or `steps` times): (steps taken, midpoints of the cells whose change
    stays above _KINK_KEEP)."""
    sa, sb = slopes(a), slopes(b)
    taken = 0
    while (np.max(b - a) > _KINK_WIDTH) if steps is None else (taken < steps):
        m = 0.5 * (a + b)
        sm = slopes(m)
        left = np.abs(sm - sa).max(axis=1) >= np.abs(sb - sm).max(axis=1)
        a, sa = np.where(left, a, m), np.where(left[:, None], sa, sm)
        b, sb = np.where(left, m, b), np.where(left[:, None], sm, sb)
        taken += 1
    return taken, 0.5 * (a + b)[_slope_changes(sa, sb, _KINK_KEEP)]


# --------------------------------------------------------------------------- coefficients
def _levels(schedule, t: float, like: torch.Tensor):
    """gamma and beta (1, D), float64, at t clamped into [0, 1]."""
    tt = torch.full((1,), min(max(t, 0.0), 1.0), dtype=torch.float64, device=like.device)
    gamma, beta = schedule(tt)
    return gamma.to(torch.float64), beta.to(torch.float64)


def _eps(eps_model, x: torch.Tensor, t: float, gamma: torch.Tensor) -> torch.Tensor:
    tt = torch.full((len(x),), min(max(t, 0.0), 1.0), dtype=x.dtype, device=x.device)
    return eps_model(x, tt, gamma.to(x.dtype).expand(len(x), -1))


def _cast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.to(dtype=x.dtype, device=x.device)


def _beta_over_sigma(gamma, beta):
    """beta / sigma = sigma dgamma/dt (float64), 0 where beta = 0 (sigma may underflow there)."""
    return torch.where(beta > 0, beta * torch.sigmoid(gamma).rsqrt(), torch.zeros_like(beta))


def _alpha_ratio(gamma_s, gamma_t):
    """alpha_s / alpha_t, exactly 1 where gamma_s == gamma_t (log alpha = -softplus(gamma) / 2)."""
    return torch.exp(0.5 * (F.softplus(gamma_t) - F.softplus(gamma_s)))


def _sigma_ratio(gamma_s, gamma_t):
    """sigma_s / sigma_t, exactly 1 where gamma_s == gamma_t (log sigma = -softplus(-gamma) / 2)."""
    return torch.exp(0.5 * (F.softplus(-gamma_t) - F.softplus(-gamma_s)))


def phi_weights(h: torch.Tensor, count: int) -> list[torch.Tensor]:
    """[w_0(h), ..., w_(count-1)(h)], w_n(h) = int_0^h e^(h - u) (u / h)^n du, float64, w_n(0) = 0."""
    h = h.to(torch.float64)
    small = h.abs() < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(h), h)
    direct = [torch.expm1(safe)]
    for n in range(1, count):
        direct.append(n * direct[-1] / safe - 1.0)
    out = []
    for n in range(count):
        series = torch.zeros_like(h)
        for m in reversed(range(_SERIES_TERMS)):
            series = series * h + math.factorial(n) / math.factorial(m + n + 1)
        out.append(torch.where(small, series * h, direct[n]))
    return out


def _lagrange_weights(z: list[torch.Tensor], w: list[torch.Tensor]) -> list[torch.Tensor]:
    """W_j = sum_n c_jn w_n, c_jn the coefficients of l_j(u) = prod_(m != j) (u - z_m) / (z_j - z_m)."""
    out = []
    for j, zj in enumerate(z):
        coefs, den = [torch.ones_like(zj)], torch.ones_like(zj)  # highest power first
        for m, zm in enumerate(z):
            if m != j:
                zero = torch.zeros_like(zj)
                coefs = [a - zm * b for a, b in zip(coefs + [zero], [zero] + coefs)]
                den = den * (zj - zm)
        k = len(coefs) - 1
        out.append(sum(coefs[k - n] * w[n] for n in range(k + 1)) / den)
    return out


def _step_weights(h, z: list[torch.Tensor], prediction: str, usable=None) -> list[torch.Tensor]:
    """Weights of the nodes z (1, D) each; `usable` (1, D): how many leading nodes each
    component uses (default all)."""
    w = phi_weights(h, len(z)) if prediction == "eps" else [-v for v in phi_weights(-h, len(z))]
    if usable is None:
        return _lagrange_weights(z, w)
    out = [torch.zeros_like(h) for _ in z]
    for q in range(1, len(z) + 1):
        chosen = usable == q
        # Components that use fewer nodes get distinct stand-ins, so no branch divides by zero.
        zq = [torch.where(chosen, zj, torch.full_like(zj, -float(j))) for j, zj in enumerate(z[:q])]
        for j, wj in enumerate(_lagrange_weights(zq, w)):
            out[j] = torch.where(chosen, wj, out[j])
    return out


def _exponential_step(x, gamma_t, gamma_s, weights, values, prediction: str):
    """The exact PF-ODE step from t to s with the prediction (eps or x0) replaced by the
    polynomial through `values` that `weights` integrate."""
    if prediction == "eps":
        out = _cast(_alpha_ratio(gamma_s, gamma_t), x) * x
        scale = -torch.sigmoid(gamma_s).sqrt()
    else:
        out = _cast(_sigma_ratio(gamma_s, gamma_t), x) * x
        scale = torch.sigmoid(-gamma_s).sqrt()
    for w, value in zip(weights, values):
        out = out + _cast(scale * w, x) * value
    return out


def _lambda_nodes(gamma_t, gamma_s, nodes: list[tuple[float, torch.Tensor]], t: float, s: float):
    """Per-component nodes z_j = (lambda_i(t_j) - lambda_i(t)) / h_i of (t_j, gamma(t_j)), newest
    first, and how many leading ones each component uses (see MIN_GAP)."""
    dg = gamma_t - gamma_s
    safe = torch.where(dg > 0, dg, torch.ones_like(dg))
    z = [(gamma_t - g) / safe for _, g in nodes]
    share = [(tj - t) / (s - t) for tj, _ in nodes]
    usable = torch.ones_like(dg, dtype=torch.long)
    apart = torch.ones_like(dg, dtype=torch.bool)
    for j in range(1, len(z)):
        apart = apart & ((z[j - 1] - z[j]).abs() >= MIN_GAP * abs(share[j - 1] - share[j]))
        usable = usable + apart.long()
    return z, usable


# --------------------------------------------------------------------------- samplers
def _finish(eps_model, schedule, x, t_end, denoise, nfe) -> SampleResult:
    if not denoise:
        return SampleResult(x, nfe)
    gamma, _ = _levels(schedule, t_end, x)
    return SampleResult(_x0(eps_model, x, t_end, gamma), nfe + 1)


def _x0(eps_model, x, t, gamma):
    """The model's x0 = (chi - sigma eps) / alpha at (x, t)."""
    eps = _eps(eps_model, x, t, gamma)
    inv_alpha = torch.sigmoid(-gamma).rsqrt()
    return _cast(inv_alpha, x) * x - _cast(inv_alpha * torch.sigmoid(gamma).sqrt(), x) * eps


@torch.no_grad()
def sample_em(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
              grid=DEFAULT_GRID) -> SampleResult:
    """Euler-Maruyama on the reverse SDE: chi <- chi + dt beta (chi / 2 - eps / sigma)
    + sqrt(beta dt) z, dt = t - s > 0."""
    ts = _times_of(grid, schedule, steps, t_end, x1)
    x = x1
    for t, s in zip(ts[:-1], ts[1:]):
        gamma, beta = _levels(schedule, t, x)
        eps = _eps(eps_model, x, t, gamma)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        dt = t - s
        x = (x + _cast(0.5 * dt * beta, x) * x - _cast(dt * _beta_over_sigma(gamma, beta), x) * eps
             + _cast((dt * beta).sqrt(), x) * noise)
    return _finish(eps_model, schedule, x, t_end, denoise, steps)


def _slope_in_gamma(x, eps, gamma):
    """d chi / d gamma = 1/2 (sigma eps - sigma^2 chi), per component."""
    var = torch.sigmoid(gamma)
    return _cast(0.5 * var.sqrt(), x) * eps - _cast(0.5 * var, x) * x


@torch.no_grad()
def sample_heun(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                grid=DEFAULT_GRID) -> SampleResult:
    """Heun on the PF-ODE with exact per-component gamma increments; the last step is Euler.
    `generator` is unused."""
    ts = _times_of(grid, schedule, steps, t_end, x1)
    x = x1
    gamma_t, _ = _levels(schedule, ts[0], x)
    for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        eps = _eps(eps_model, x, t, gamma_t)
        gamma_s, _ = _levels(schedule, s, x)
        dgamma = _cast(gamma_s - gamma_t, x)
        d = _slope_in_gamma(x, eps, gamma_t)
        x_euler = x + dgamma * d
        if k == steps - 1:
            x = x_euler
            break
        eps = _eps(eps_model, x_euler, s, gamma_s)
        x = x + dgamma * 0.5 * (d + _slope_in_gamma(x_euler, eps, gamma_s))
        gamma_t = gamma_s
    return _finish(eps_model, schedule, x, t_end, denoise, 2 * steps - 1)


@torch.no_grad()
def sample_midpoint(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                    grid=DEFAULT_GRID) -> SampleResult:
    """Explicit midpoint rule on the PF-ODE with exact per-component gamma increments.
    `generator` is unused."""
    ts = _times_of(grid, schedule, steps, t_end, x1)
    x = x1
    gamma_t, _ = _levels(schedule, ts[0], x)
    for t, s in zip(ts[:-1], ts[1:]):
        t_mid = 0.5 * (t + s)
        eps = _eps(eps_model, x, t, gamma_t)
        gamma_m, _ = _levels(schedule, t_mid, x)
        u = x + _cast(gamma_m - gamma_t, x) * _slope_in_gamma(x, eps, gamma_t)
        eps = _eps(eps_model, u, t_mid, gamma_m)
        gamma_s, _ = _levels(schedule, s, x)
        x = x + _cast(gamma_s - gamma_t, x) * _slope_in_gamma(u, eps, gamma_m)
        gamma_t = gamma_s
    return _finish(eps_model, schedule, x, t_end, denoise, 2 * steps)


def _ddim_step(x, gamma_t, gamma_s, eps):
    h = 0.5 * (gamma_t - gamma_s)
    return _exponential_step(x, gamma_t, gamma_s, _step_weights(h, [torch.zeros_like(h)], "eps"), [eps], "eps")


@torch.no_grad()
def sample_ddim(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                grid=DEFAULT_GRID) -> SampleResult:
    """Deterministic DDIM per component: chi_s = alpha_s / alpha_t chi_t - sigma_s expm1(h) eps_t.
    `generator` is unused."""
    ts = _times_of(grid, schedule, steps, t_end, x1)
    x = x1
    gamma_t, _ = _levels(schedule, ts[0], x)
    for t, s in zip(ts[:-1], ts[1:]):
        eps = _eps(eps_model, x, t, gamma_t)
        gamma_s, _ = _levels(schedule, s, x)
        x = _ddim_step(x, gamma_t, gamma_s, eps)
        gamma_t = gamma_s
    return _finish(eps_model, schedule, x, t_end, denoise, steps)


@torch.no_grad()
def sample_dpm2(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                grid=DEFAULT_GRID) -> SampleResult:
    """Second-order exponential integrator with the model called at the t-midpoint (see the
    module docstring). `generator` is unused."""
    ts = _times_of(grid, schedule, steps, t_end, x1)
    x = x1
    gamma_t, _ = _levels(schedule, ts[0], x)
    for t, s in zip(ts[:-1], ts[1:]):
        t_mid = 0.5 * (t + s)
        eps_t = _eps(eps_model, x, t, gamma_t)
        gamma_m, _ = _levels(schedule, t_mid, x)
        eps_m = _eps(eps_model, _ddim_step(x, gamma_t, gamma_m, eps_t), t_mid, gamma_m)
        gamma_s, _ = _levels(schedule, s, x)
        h = 0.5 * (gamma_t - gamma_s)
        weights = _step_weights(h, [torch.zeros_like(h), torch.full_like(h, 0.5)], "eps")
        x = _exponential_step(x, gamma_t, gamma_s, weights, [eps_t, eps_m], "eps")
        gamma_t = gamma_s
    return _finish(eps_model, schedule, x, t_end, denoise, 2 * steps)


def _variance_of(variance, x: torch.Tensor) -> torch.Tensor:
    """The whitened data's per-component variance as (1, D) float64 on x's device (default 1)."""
    if variance is None:
        return torch.ones((1, x.shape[1]), dtype=torch.float64, device=x.device)
    v = torch.as_tensor(variance, dtype=torch.float64).to(x.device).reshape(-1)
    if v.shape != (x.shape[1],) or not bool((torch.isfinite(v) & (v >= 0)).all()):
        raise GudError.one("E651", f"variance must be {x.shape[1]} finite non-negative numbers (one per "
                                   f"component), got shape {tuple(v.shape)}")
    return v[None]


def _gain(gamma, variance):
    """d x0 / d chi of N(0, v) data per component, alpha v / (alpha^2 v + sigma^2) (float64)."""
    alpha2 = torch.sigmoid(-gamma)
    return alpha2.sqrt() * variance / (alpha2 * variance + torch.sigmoid(gamma))


def _multistep(eps_model, schedule, x1, steps, t_end, denoise, grid, order: int, corrector: bool,
               variance=None):
    """Data-prediction multistep exponential integrator of `order`, with UniPC's corrector and the
    refresh of the stored x0 in every step (`corrector`, with the gain of N(0, variance)), or the
    corrector alone in the first order - 1 steps (start-up)."""
    ts = _times_of(grid, schedule, steps, t_end, x1)
    variance = _variance_of(variance, x1)
    x = x1
    gamma_t, _ = _levels(schedule, ts[0], x)
    history = [(ts[0], gamma_t, _x0(eps_model, x, ts[0], gamma_t))]  # (t_j, gamma_j, x0_j), oldest first
    for k in range(steps):
        t, s = ts[k], ts[k + 1]
        gamma_s, _ = _levels(schedule, s, x)
        h = 0.5 * (gamma_t - gamma_s)
        nodes = [(tj, gj) for tj, gj, _ in reversed(history)]
        values = [v for _, _, v in reversed(history)]
        z, usable = _lambda_nodes(gamma_t, gamma_s, nodes, t, s)
        x_new = _exponential_step(x, gamma_t, gamma_s, _step_weights(h, z, "x0", usable), values, "x0")
        if k < steps - 1:
            x0_s = _x0(eps_model, x_new, s, gamma_s)
            if corrector or len(history) < order:
                z, usable = _lambda_nodes(gamma_t, gamma_s, [(s, gamma_s)] + nodes, t, s)
                x_corrected = _exponential_step(x, gamma_t, gamma_s, _step_weights(h, z, "x0", usable),
                                                [x0_s] + values, "x0")
                if corrector:
                    # x0_s was called at the predictor's state and later steps integrate it as the value at
                    # the corrected one: move it there with the data's gain (module docstring, unipc).
                    x0_s = x0_s + _cast(_gain(gamma_s, variance), x) * (x_corrected - x_new)
                x_new = x_corrected
            history = (history + [(s, gamma_s, x0_s)])[-order:]
        x, gamma_t = x_new, gamma_s
    return _finish(eps_model, schedule, x, t_end, denoise, steps)


@torch.no_grad()
def sample_dpmpp2m(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                   grid=DEFAULT_GRID) -> SampleResult:
    """Two-step exponential integrator in the data prediction (DPM-Solver++(2M) generalised).
    `generator` is unused."""
    return _multistep(eps_model, schedule, x1, steps, t_end, denoise, grid, order=2, corrector=False)


@torch.no_grad()
def sample_dpmpp3m(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                   grid=DEFAULT_GRID) -> SampleResult:
    """Three-step exponential integrator in the data prediction (DPM-Solver++(3M) generalised).
    `generator` is unused."""
    return _multistep(eps_model, schedule, x1, steps, t_end, denoise, grid, order=3, corrector=False)


@torch.no_grad()
def sample_unipc(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                 grid=DEFAULT_GRID, variance=None) -> SampleResult:
    """dpmpp3m with UniPC's corrector (order 4, one model call per step); `variance` (D,): the
    whitened data's variance per component, for the corrector's gain (default 1, the whitened
    prior's). `generator` is unused."""
    return _multistep(eps_model, schedule, x1, steps, t_end, denoise, grid, order=3, corrector=True,
                      variance=variance)


@torch.no_grad()
def sample_adaptive(eps_model, schedule, x1, steps, generator=None, t_end=0.0, denoise=True,
                    rtol=1e-5, atol=1e-5, kinks=None) -> SampleResult:
    """dopri5 on the PF-ODE from t = 1 to t_end with torchdiffeq, restarted at `kinks` (default
    `schedule_kinks(schedule)`; callers that sample in batches pass them to scan once).
    `generator` is unused."""
    _check_steps(steps, t_end)
    kinks = schedule_kinks(schedule) if kinks is None else _checked_kinks(kinks)

    def velocity(t, x):
        gamma, beta = _levels(schedule, float(t), x)
        eps = _eps(eps_model, x, float(t), gamma)
        if not bool(torch.isfinite(eps).all()):
            # dopri5 would otherwise shrink its step until it underflows.
            raise GudError.one("E652", f"the model's eps is not finite at t = {float(t):.4g}")
        return _cast(0.5 * _beta_over_sigma(gamma, beta), x) * eps - _cast(0.5 * beta, x) * x

    span = torch.tensor([1.0, t_end], dtype=x1.dtype, device=x1.device)
    # Steps end exactly at t_end instead of stepping past it (where the schedule may differ,
    # or not be defined) and interpolating back.
    options = {"first_step": (1.0 - t_end) / steps, "step_t": torch.tensor([t_end], dtype=x1.dtype)}
    kinks = [t for t in kinks if t > t_end]
    if kinks:  # restart where the velocity jumps instead of stepping over the corner
        options["jump_t"] = torch.tensor(kinks[::-1], dtype=x1.dtype)
    xs, nfe = solve_dopri5(velocity, x1, span, rtol, atol, "E652", "the adaptive sampler",
                           help="loosen rtol and atol, or use a fixed-step sampler", options=options)
    return _finish(eps_model, schedule, xs[-1], t_end, denoise, nfe)


def _checked_kinks(kinks) -> list[float]:
    """Kinks given by a caller: times in (0, 1), returned sorted."""
    try:
        times = sorted(float(t) for t in kinks)
    except (TypeError, ValueError):
        raise GudError.one("E651", f"kinks must be a list of times, got {kinks!r}") from None
    if any(not 0.0 < t < 1.0 for t in times):
        raise GudError.one("E651", "kinks must lie in (0, 1)", help="pass schedule_kinks(schedule), or leave them out")
    return times


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
            "dpm2": sample_dpm2, "dpmpp2m": sample_dpmpp2m, "dpmpp3m": sample_dpmpp3m,
            "unipc": sample_unipc, "adaptive": sample_adaptive}
# Options each method accepts besides the common positional arguments.
OPTIONS = {name: ("t_end", "denoise", "grid") for name in SAMPLERS}
OPTIONS["adaptive"] = ("t_end", "denoise", "rtol", "atol", "kinks")
OPTIONS["unipc"] = ("t_end", "denoise", "grid", "variance")


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
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_SAMPLE_STEPS:
        raise GudError.one("E651", f"steps must be an integer from 1 to {MAX_SAMPLE_STEPS:,}, got {steps!r}")
    for name, value in (("eps_model", eps_model), ("schedule", schedule)):
        if not callable(value):
            raise GudError.one("E651", f"{name} must be callable (a torch module), got {type(value).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise GudError.one("E651", f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    for key in ("rtol", "atol"):
        if key in options and not (isinstance(options[key], (int, float)) and options[key] >= MIN_TOLERANCE):
            raise GudError.one("E651", f"{key} must be a number >= {MIN_TOLERANCE:g}, got {options[key]!r}")
    if isinstance(start, np.ndarray):
        raise GudError.one("E651", f"the start chi(1) must be a torch tensor (B, D), got a NumPy array of shape "
                                   f"{start.shape}", help="pass torch.as_tensor(start)")
    if torch.is_tensor(start):
        x1 = start
        weights = next(eps_model.parameters(), None) if isinstance(eps_model, torch.nn.Module) else None
        if weights is not None and weights.is_floating_point() and weights.dtype != x1.dtype:
            raise GudError.one("E651", f"the start chi(1) is {str(x1.dtype).replace('torch.', '')} and the eps "
                                       f"model's weights {str(weights.dtype).replace('torch.', '')}",
                               help=f"pass start.to({weights.dtype}) (samples are made in the start's dtype)")
    else:
        shape = tuple(start)
        if len(shape) != 2 or min(shape) < 1:
            raise GudError.one("E651", f"the sample shape must be (B, D) with B, D >= 1, got {shape}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        x1 = torch.randn(shape, generator=generator, dtype=dtype or torch.get_default_dtype(),
                         device=device)
    if x1.dim() != 2 or min(x1.shape) < 1 or not bool(torch.isfinite(x1).all()):
        raise GudError.one("E651", f"the start chi(1) must be a finite (B, D) tensor with B, D >= 1, got shape "
                           f"{tuple(x1.shape)}")
    result = SAMPLERS[method](eps_model, schedule, x1, steps, generator, **options)
    if not bool(torch.isfinite(result.x0).all()):
        raise GudError.one("E652", f"sampler {method!r} produced non-finite values with {steps} steps",
                           help="use more steps, or the adaptive sampler")
    return result
