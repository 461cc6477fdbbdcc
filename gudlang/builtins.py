"""The registry of built-in names: the one place the checker, the compiler, `gud explain`
and the docs learn what exists.

Input: nothing. Output: tables of per-component features (and which basis offers which),
reductions, elementwise functions with their arities, constants, and the schedule library
(`PRELUDE`), written in the gud language itself and checked like user code.

Vocabulary (one name per concept, used in code, docs and errors):
- `t` diffusion time, 0 = data, 1 = noise; `i` the component index.
- gamma: the negative log-SNR of the *whitened* process, gamma_i(t) = logit(sigma_i^2).
- label `l`: the ordering of a schedule family; a higher label is noised earlier in forward
  time and so generated *later*.
- `a`: hierarchy strength of the soft-conditioning family (the paper's a; the reference
  code's "softness" is 1/a). a = 0: no hierarchy, a = 1 with l = -log var: standard
  diffusion, large a with clipping: autoregressive in the order of l.
"""

from __future__ import annotations

import math

FEATURES: dict[str, str] = {
    "var": "data variance of component i in the basis (fitted on the training split)",
    "wvar": "variance of component i after whitening, var(i) / s_i^2 (1 under the matched prior)",
    "rank": "position of component i in the basis's natural order, scaled to [0, 1] (0 = first)",
    "freq": "radial spatial frequency of component i, scaled to [0, 1]",
    "level": "wavelet level of component i: 0 = coarsest approximation, `levels` = finest details",
    "row": "row of component i's position, scaled to [0, 1] (0 = top)",
    "col": "column of component i's position, scaled to [0, 1] (0 = left)",
    "chan": "channel of component i, scaled to [0, 1] (0 when there is one channel)",
}

_COMMON = {"var", "wvar", "rank"}
BASIS_FEATURES: dict[str, frozenset[str]] = {
    "pixel": frozenset(_COMMON | {"row", "col", "chan"}),
    "pca": frozenset(_COMMON | {"chan"}),  # chan only with channels = "separate"
    "dct": frozenset(_COMMON | {"freq", "chan"}),
    "fourier": frozenset(_COMMON | {"freq", "chan"}),
    "wavelet": frozenset(_COMMON | {"level", "row", "col", "chan"}),
}

REDUCTIONS = frozenset({"max", "min", "mean", "sum"})  # one argument: over components

# name -> number of arguments
ELEMENTWISE: dict[str, int] = {
    "log": 1, "exp": 1, "sqrt": 1, "abs": 1, "sigmoid": 1, "logit": 1, "softplus": 1,
    "cos": 1, "sin": 1, "tan": 1, "atan": 1, "expm1": 1, "log1p": 1, "tanh": 1,
    "clip": 3, "where": 3, "min": 2, "max": 2,
}

CONSTANTS: dict[str, float] = {"pi": math.pi, "true": 1.0, "false": 0.0}

RESERVED = frozenset({"t", "i"}) | set(FEATURES) | REDUCTIONS | set(ELEMENTWISE) | set(CONSTANTS) \
    | {"data", "basis", "prior", "network", "param", "train", "sample", "runtime", "gud", "uniform"}

# Parameter distributions: `param a ~ uniform(lo, hi)`.
DISTRIBUTIONS = {"uniform": ("lo", "hi")}

# Default gamma range of the library: VDM's linear schedule for `linear`, the design card's
# targets for the soft-conditioning family.
PRELUDE = """
gud 1

# Clip-interpolate a progress u in [0, 1] onto the gamma range [lo, hi].
linear(u, lo = -13.3, hi = 5) = lo + (hi - lo) * clip(u, 0, 1)

# DDPM / VP: beta(t) = b_min + t (b_max - b_min) on t' = t_min + (1 - t_min) t, so that
# gamma = logit(1 - exp(-B(t'))) = log(expm1(B(t'))) stays finite at t = 0.
vp(t, b_min = 0.1, b_max = 20, t_min = 0.001) =
    log(expm1(b_min * (t_min + (1 - t_min) * t)
              + (b_max - b_min) * (t_min + (1 - t_min) * t)^2 / 2))

# Cosine (Nichol & Dhariwal): alpha^2 = cos^2(theta) with theta linear in t, from
# s/(1 + s) pi/2 at t = 0 to the angle where gamma reaches hi at t = 1.
cosine(t, s = 0.008, hi = 10) =
    2 * log(tan(s / (1 + s) * pi / 2 + t * (atan(exp(hi / 2)) - s / (1 + s) * pi / 2)))

# The paper's soft-conditioning family: parallel lines in true log-SNR shifted by a * l.
# Every component's true SNR is >= exp(-g_den) at t = 0 and <= exp(-g_noise) at t = 1.
# clipped = true clips the true -log SNR to [g_den, g_noise]: components wait, then move.
soft(t, l, a = 1, g_den = -7, g_noise = 3, clipped = false) =
    log(wvar(i)) + where(clipped > 0.5,
        clip(g_den + a * (l - max(l)) + t * (g_noise - g_den + a * (max(l) - min(l))), g_den, g_noise),
        g_den + a * (l - max(l)) + t * (g_noise - g_den + a * (max(l) - min(l))))

# Sequential order with overlap: each component is noised over a window of length b,
# starting at (1 - l) (1 - b). Label l in [0, 1], higher = noised earlier = generated
# later: sequential(t, col(i)) generates the left column first. b = 1: all at once.
sequential(t, l, b = 0.5, lo = -7, hi = 3) = linear((t - (1 - l) * (1 - b)) / b, lo, hi)
"""

LIBRARY = ("linear", "vp", "cosine", "soft", "sequential")


def known_function_names() -> set[str]:
    """Every callable name a spec may use in an expression (for "did you mean")."""
    return set(FEATURES) | REDUCTIONS | set(ELEMENTWISE) | set(LIBRARY)
