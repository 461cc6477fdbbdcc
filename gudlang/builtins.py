"""The registries of the language: the one place the checker, the compiler, hashing, the
formatter, the parser's messages, `gud explain` and the docs learn what exists.

Input: nothing. Output, one registry per concept, each entry defined once:
- `FEATURES` (and `BASIS_FEATURES`, which basis offers which): per-component features f(i);
- `CONSTANTS` (numbers) and `SHAPE_CONSTANTS` (H, W, C, D of the data, known once the data
  shape is: the checker keeps them as names, `shape_constants` gives their values, which are
  supplied with the features and substituted by the compiler);
- `FUNCTIONS` (elementwise) and `REDUCTIONS` (over components): arity, one-line doc, the
  NumPy implementation the compiler and hashing fold constants with, the torch code the
  compiler emits and the derivative rule;
- `OPERATORS`: precedence for the formatter, the NumPy fold, the torch code, the derivative;
- `KEYWORDS`: every reserved word of the grammar (grammar/gud.lark spells the syntax; a test
  checks the two agree);
- the schedule library (`PRELUDE`), written in the gud language itself and checked like user
  code.

Derivative rules are written in gud: an expression of the arguments (a function's `params`,
an operator's x and y), `value` (the result) and `d<param>` (each argument's derivative in t).
A rule list is tried in order; a rule is used when every argument derivative it does not
mention is zero, the last one always (`schedules` builds them, simplifying as it goes).
`between(x, lo, hi)` (lo <= x <= hi) exists only in rules: the closed-interval test of clip.

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
from dataclasses import dataclass
from typing import Callable

import numpy as np

# --------------------------------------------------------------------------- features
FEATURES: dict[str, str] = {
    "var": "data variance of component i in the basis (fitted on the training split)",
    "wvar": "variance of component i after whitening, var(i) / s_i^2 (1 under the matched prior)",
    "rank": "position of component i in the basis's natural order, scaled to [0, 1] (0 = first)",
    "index": "position of component i in the basis's natural order, an integer 0 .. D - 1 (0 = first)",
    "freq": "radial spatial frequency of component i, scaled to [0, 1]",
    "kx": "horizontal frequency index of component i, an integer: DCT 0 .. W - 1, Fourier 0 .. W / 2",
    "ky": "vertical frequency index of component i, an integer: DCT 0 .. H - 1, Fourier -H / 2 < ky <= H / 2",
    "level": "wavelet level of component i: 0 = coarsest approximation, `levels` = finest details",
    "orient": "wavelet orientation of component i: 0 approximation, 1 horizontal detail (high-pass along H: "
              "horizontal edges), 2 vertical (high-pass along W), 3 diagonal",
    "row": "row of component i's position, scaled to [0, 1] (0 = top)",
    "col": "column of component i's position, scaled to [0, 1] (0 = left)",
    "chan": "channel of component i, scaled to [0, 1] (0 when there is one channel)",
}

_COMMON = {"var", "wvar", "rank", "index"}
BASIS_FEATURES: dict[str, frozenset[str]] = {
    "pixel": frozenset(_COMMON | {"row", "col", "chan"}),
    "pca": frozenset(_COMMON | {"chan"}),  # chan only with channels = "separate"
    "dct": frozenset(_COMMON | {"freq", "kx", "ky", "chan"}),
    "fourier": frozenset(_COMMON | {"freq", "kx", "ky", "chan"}),
    "wavelet": frozenset(_COMMON | {"level", "orient", "row", "col", "chan"}),
}

# --------------------------------------------------------------------------- constants
CONSTANTS: dict[str, float] = {"pi": math.pi, "true": 1.0, "false": 0.0}

SHAPE_CONSTANTS: dict[str, str] = {
    "H": "image height of the spec's data, in pixels",
    "W": "image width of the spec's data, in pixels",
    "C": "number of channels of the spec's data",
    "D": "number of components, C * H * W",
}


def shape_constants(shape) -> dict[str, np.float64]:
    """The values of `SHAPE_CONSTANTS` for data of shape (C, H, W), as float64 numbers."""
    c, h, w = (int(s) for s in shape)
    return {"H": np.float64(h), "W": np.float64(w), "C": np.float64(c), "D": np.float64(c * h * w)}


# --------------------------------------------------------------------------- functions
@dataclass(frozen=True)
class Function:
    """A built-in function: its parameters (their number is its arity), a one-line doc, the
    NumPy fold (float64 arrays in, float64 array out), the torch call it compiles to
    (`{k}` is argument k, `{tk}` the same made a tensor of t's dtype where it is a plain
    number), its derivative rules (see the module docstring; empty: the checker refuses
    arguments that depend on t), and the positions of arguments that are conditions."""

    name: str
    params: tuple[str, ...]
    doc: str
    fold: Callable[..., np.ndarray]
    torch: str
    derivative: tuple[str, ...]
    conditions: tuple[int, ...] = ()

    @property
    def arity(self) -> int:
        return len(self.params)

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.params)})"


def _minimum(a, b):
    """torch.minimum's answer, which folding must give too: NaN if either is, else the first at
    a tie (np.minimum gives the second: -0.0 for min(0.0, -0.0), where torch gives 0.0)."""
    return np.where(np.isnan(b) | (b < a), b, a)


def _maximum(a, b):
    return np.where(np.isnan(b) | (b > a), b, a)


# SciPy is imported only when a formula folds these: importing the registry stays light.
def _ndtri(p):
    from scipy.special import ndtri
    return ndtri(p)


def _erfinv(x):
    from scipy.special import erfinv
    return erfinv(x)


# torch's softplus returns x itself above `threshold` (default 20, off by exp(-20) relative);
# log(1 + exp(-x)) is below half an ulp of x in float64 only from x = 37 on
SOFTPLUS_THRESHOLD = 40.0


def _unary(name, doc, fold, torch, derivative, param="x") -> Function:
    return Function(name, (param,), doc, fold, torch or f"torch.{name}({{0}})", (derivative,))


FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    _unary("log", "natural logarithm", np.log, None, "1 / x * dx"),
    _unary("exp", "exponential", np.exp, None, "value * dx"),
    _unary("sqrt", "square root", np.sqrt, None, "0.5 / value * dx"),
    _unary("abs", "absolute value", np.abs, None, "where(x >= 0, 1, -1) * dx"),
    _unary("sigmoid", "logistic function 1 / (1 + exp(-x))", lambda x: 1.0 / (1.0 + np.exp(-x)), None,
           "value * (1 - value) * dx"),
    _unary("logit", "log(x / (1 - x)), the inverse of sigmoid", lambda x: np.log(x) - np.log1p(-x), None,
           "1 / (x * (1 - x)) * dx"),
    _unary("softplus", "log(1 + exp(x))", lambda x: np.logaddexp(0.0, x),
           f"torch.nn.functional.softplus({{0}}, 1.0, {SOFTPLUS_THRESHOLD!r})", "sigmoid(x) * dx"),
    _unary("cos", "cosine", np.cos, None, "-sin(x) * dx"),
    _unary("sin", "sine", np.sin, None, "cos(x) * dx"),
    _unary("tan", "tangent", np.tan, None, "(1 + value * value) * dx"),
    _unary("atan", "arc tangent", np.arctan, None, "1 / (1 + x * x) * dx"),
    _unary("tanh", "hyperbolic tangent", np.tanh, None, "(1 - value * value) * dx"),
    _unary("expm1", "exp(x) - 1, accurate near 0", np.expm1, None, "exp(x) * dx"),
    _unary("log1p", "log(1 + x), accurate near 0", np.log1p, None, "1 / (1 + x) * dx"),
    _unary("floor", "the largest integer <= x (derivative 0 between the steps)", np.floor, None, "0"),
    _unary("round", "the nearest integer, halves to even as torch.round (derivative 0 between the steps)",
           np.round, None, "0"),
    _unary("ndtri", "the standard normal quantile Phi^-1(p), p in (0, 1): ndtri(0.975) = 1.95996...", _ndtri,
           "torch.special.ndtri({0})", "sqrt(2 * pi) * exp(value * value / 2) * dp", param="p"),
    _unary("erfinv", "the inverse error function, erf(erfinv(x)) = x on (-1, 1)", _erfinv, None,
           "sqrt(pi) / 2 * exp(value * value) * dx"),
    Function("clip", ("x", "lo", "hi"), "x limited to [lo, hi]: min(max(x, lo), hi)",
             lambda x, lo, hi: _minimum(_maximum(x, lo), hi), "torch.minimum(torch.maximum({t0}, {t1}), {t2})",
             # closed interval: at a kink the component counts as moving, so that e.g. linear(t)
             # has beta > 0 at t = 1, where samplers take their first step
             # (a where, not a product: outside, dx may be infinite, as ndtri's at 0 and 1)
             ("where(between(x, lo, hi), dx, 0)",
              "where(max(x, lo) <= hi, where(x >= lo, dx, dlo), dhi)")),
    Function("where", ("c", "x", "y"), "x where the condition c holds, else y", np.where,
             "torch.where({0}, {1}, {2})", ("where(c, dx, dy)",), conditions=(0,)),
    Function("min", ("x", "y"), "the smaller of x and y (x at a tie, NaN if either is)", _minimum,
             "torch.minimum({t0}, {t1})", ("where(x <= y, dx, dy)",)),
    Function("max", ("x", "y"), "the larger of x and y (x at a tie, NaN if either is)", _maximum,
             "torch.maximum({t0}, {t1})", ("where(x >= y, dx, dy)",)),
)}

# Over components, one argument (`min` and `max` with two arguments are elementwise).
REDUCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("max", ("x",), "the largest value of x over components (x must not depend on t)", np.max,
             "torch.amax({0}, dim=-1, keepdim=True)", ()),
    Function("min", ("x",), "the smallest value of x over components (x must not depend on t)", np.min,
             "torch.amin({0}, dim=-1, keepdim=True)", ()),
    Function("mean", ("x",), "the mean of x over components", np.mean,
             "torch.mean({0}, dim=-1, keepdim=True)", ("mean(dx)",)),
    Function("sum", ("x",), "the sum of x over components", np.sum,
             "torch.sum({0}, dim=-1, keepdim=True)", ("sum(dx)",)),
)}

# name -> number of arguments (of the elementwise functions)
ELEMENTWISE: dict[str, int] = {name: f.arity for name, f in FUNCTIONS.items()}

# --------------------------------------------------------------------------- operators
# Precedence levels, loosest first (as grammar/gud.lark nests its rules).
LEVELS = ("or", "and", "not", "compare", "sum", "product", "unary", "power", "primary")


@dataclass(frozen=True)
class Operator:
    """An operator: the grammar terminal that spells it, its precedence level, the level each
    operand needs (printed in parentheses when looser), how the formatter writes it (between
    or before its operands), the NumPy fold, the torch code and the derivative rules in its
    operands x and y (none for conditions)."""

    symbol: str
    terminal: str
    level: str
    operands: tuple[str, ...]
    text: str
    fold: Callable[..., np.ndarray]
    torch: str
    derivative: tuple[str, ...] = ()
    doc: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        return ("x", "y")[:len(self.operands)]


def _compare(symbol: str, fold) -> Operator:
    # comparisons do not chain: both operands are sums
    return Operator(symbol, "COMPARE", "compare", ("sum", "sum"), f" {symbol} ", fold, f"{{0}} {symbol} {{1}}",
                    doc=f"x {symbol} y, a condition (false where either is NaN, except !=)")


# Keyed by symbol; the unary minus is "neg" (its symbol `-` is also subtraction's).
OPERATORS: dict[str, Operator] = {
    "+": Operator("+", "PLUS", "sum", ("sum", "product"), " + ", np.add, "{0} + {1}", ("dx + dy",), "addition"),
    "-": Operator("-", "MINUS", "sum", ("sum", "product"), " - ", np.subtract, "{0} - {1}", ("dx - dy",),
                  "subtraction"),
    "*": Operator("*", "STAR", "product", ("product", "unary"), "*", np.multiply, "{0} * {1}",
                  ("dx * y + x * dy",), "multiplication"),
    # (dx - (x / y) dy) / y: no y * y to underflow or overflow
    "/": Operator("/", "SLASH", "product", ("product", "unary"), "/", np.divide, "{0} / {1}",
                  ("(dx - value * dy) / y",), "division"),
    # right-associative, and a^-b is a^(-b); a constant exponent needs no log of the base
    "^": Operator("^", "CARET", "power", ("primary", "unary"), "^", np.power, "{0} ** {1}",
                  ("y * x ^ (y - 1) * dx", "value * (dy * log(x) + y * dx / x)"), "power (IEEE: 0 ^ -1 = inf)"),
    "neg": Operator("-", "MINUS", "unary", ("unary",), "-", np.negative, "-{0}", ("-dx",), "negation"),
    **{s: _compare(s, fold) for s, fold in (("<", np.less), ("<=", np.less_equal), (">", np.greater),
                                              (">=", np.greater_equal), ("==", np.equal), ("!=", np.not_equal))},
    "not": Operator("not", "NOT", "not", ("not",), "not ", np.logical_not, "~{0}", doc="negation of a condition"),
    "and": Operator("and", "AND", "and", ("and", "not"), " and ", np.logical_and, "{0} & {1}",
                    doc="both conditions hold"),
    "or": Operator("or", "OR", "or", ("or", "and"), " or ", np.logical_or, "{0} | {1}",
                   doc="at least one condition holds"),
}

# --------------------------------------------------------------------------- keywords


@dataclass(frozen=True)
class Keyword:
    """A reserved word of the grammar: its terminal in grammar/gud.lark and what it starts."""

    word: str
    terminal: str
    role: str  # "version", "section" (word = ...), "param", "block" (word { ... }), "operator"
    doc: str


KEYWORDS: dict[str, Keyword] = {k.word: k for k in (
    Keyword("gud", "GUD", "version", "the version line, `gud 1`"),
    Keyword("data", "DATA", "section", "the data, `data = digits()`"),
    Keyword("basis", "BASIS", "section", "the basis, `basis = pca()`"),
    Keyword("prior", "PRIOR", "section", "the prior, `prior = white`"),
    Keyword("network", "NETWORK", "section", "the network, `network = unet()`"),
    Keyword("param", "PARAM", "param", "a parameter, `param a = 1` or `param a ~ uniform(0, 1)`"),
    Keyword("train", "TRAIN", "block", "training settings, `train { steps = 3000 }`"),
    Keyword("sample", "SAMPLE", "block", "sampling settings, `sample { steps = 50 }`"),
    Keyword("runtime", "RUNTIME", "block", "how to run (never hashed), `runtime { device = \"cuda\" }`"),
    Keyword("and", "AND", "operator", OPERATORS["and"].doc),
    Keyword("or", "OR", "operator", OPERATORS["or"].doc),
    Keyword("not", "NOT", "operator", OPERATORS["not"].doc),
)}

BLOCKS = tuple(k.word for k in KEYWORDS.values() if k.role == "block")


def keywords() -> tuple[str, ...]:
    """Every reserved word of the grammar."""
    return tuple(KEYWORDS)


def constants() -> tuple[str, ...]:
    """Every built-in constant a formula may use: numbers and the data's shape."""
    return tuple(CONSTANTS) + tuple(SHAPE_CONSTANTS)


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

# Cosine (Nichol & Dhariwal's angle, as the GUD reference code has it): alpha^2 = cos^2(theta)
# with theta linear in t, from s/(1 + s) pi/2 at t = 0 to the angle where gamma reaches hi at
# t = 1. Not divided by f(0) as their alpha_bar is, and stretched to end at hi: gamma runs from
# -8.77 (theirs -inf) to 10 (theirs +inf), within 0.39 of theirs on t in [0.02, 0.98];
# iddpm_cosine below is their schedule exactly.
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

# Loss weight (weight_i(t) = snr_weight(gamma_i(t))): the sigmoid weighting of Kingma & Gao
# 2023 per component, sigmoid(b - lambda_i) with lambda_i = log wvar_i - gamma_i the true
# log SNR of component i: 1 while the component is noise, 0 once it is clean, where its
# eps-loss is noise the network cannot predict (with a strong hierarchy few components are in
# motion at any t, and the noise of the clean ones swamps their gradient: benchmarks/weighting.py).
snr_weight(g, b = 0) = sigmoid(b + g - log(wvar(i)))

# ---- Published schedules (docs/presets.md), each with its paper's defaults.

# Ho et al. 2020 (DDPM), Sec. 4: betas linear from beta_1 to beta_T over T = steps steps,
# alpha_bar_k = prod_{j <= k} (1 - beta_j) (Eq. 4) at t = k / T. Exact, not the VP SDE limit
# (Song et al. 2021, beta from 0.1 to 20, off by up to 0.095 in gamma at k = 1; `vp` above is
# that SDE started at t' = 0.001, so at the same t it is 0.87 off at k = 1):
# log alpha_bar = sum_{u < k} log(y - u d), y = 1 - beta_1, d = (beta_T - beta_1) / (T - 1),
# summed by Euler-Maclaurin to the d^2 term (the rest is below 1e-17), smooth between steps.
# Below t = 1 / T it holds step 1, DDPM's least noisy latent (t = 0 would be gamma = -inf).
ddpm_linear(t, beta_1 = 1e-4, beta_T = 0.02, steps = 1000) =
    log(expm1(max(steps * t, 1) * (1 - log(1 - beta_1))
              + ((1 - beta_1) * (steps - 1) / (beta_T - beta_1) - max(steps * t, 1) + 1 / 2)
                * log1p(-max(steps * t, 1) * (beta_T - beta_1) / ((steps - 1) * (1 - beta_1)))
              + (beta_T - beta_1) / (12 * (steps - 1))
                * (1 / (1 - beta_1 - max(steps * t, 1) * (beta_T - beta_1) / (steps - 1)) - 1 / (1 - beta_1))))

# Nichol & Dhariwal 2021 (improved DDPM), Eq. 17: alpha_bar(t) = f(t) / f(0) with
# f(t) = cos^2((t + s) / (1 + s) pi / 2); gamma = log((f(0) - f(t)) / f(t)), the difference
# written as sin(b + a) sin(b - a) to stay exact near t = 0. Their betas
# 1 - alpha_bar(k / T) / alpha_bar((k - 1) / T), clipped at max_beta, reach the clip only at
# the last step (f(1) = 0 makes it 1), so alpha_bar(1) = (1 - max_beta) alpha_bar(1 - 1 / T):
# the min is that clip (gamma(1) = 19.8 at T = 1000). Below t = 1 / T it holds step 1.
iddpm_cosine(t, s = 0.008, steps = 1000, max_beta = 0.999) =
    min(log(sin((max(t, 1 / steps) + 2 * s) / (1 + s) * pi / 2) * sin(max(t, 1 / steps) / (1 + s) * pi / 2))
        - 2 * log(cos((max(t, 1 / steps) + s) / (1 + s) * pi / 2)),
        log(cos(s / (1 + s) * pi / 2)^2 / ((1 - max_beta) * cos((1 - 1 / steps + s) / (1 + s) * pi / 2)^2) - 1))

# Kingma et al. 2021 (VDM), Sec. 3.2, Eqs. 3-5: their gamma is this gamma (SNR = exp(-gamma),
# sigma^2 = sigmoid(gamma)); the fixed linear schedule of their experiments.
vdm(t, g0 = -13.3, g1 = 5) = g0 + (g1 - g0) * t

# Hoogeboom et al. 2023 (simple diffusion), Sec. 3.1, Eq. 5: SNR shifted from resolution ref
# to d, log SNR + 2 log(ref / d), so gamma gains 2 log(d / ref); the cosine log SNR is their
# listing's, -2 log tan(pi t / 2) truncated to [-hi, -lo] by mapping t onto the angles of
# gamma = lo and hi. d = H in a spec; lo, hi bound the unshifted gamma.
shifted_cosine(t, d = 64, ref = 64, lo = -15, hi = 15) =
    2 * log(tan(atan(exp(lo / 2)) + t * (atan(exp(hi / 2)) - atan(exp(lo / 2))))) + 2 * log(d / ref)

# Karras et al. 2022 (EDM), Table 1 and Sec. 5: training noise ln sigma ~ N(P_mean, P_std^2),
# here by the quantile at t (uniform t gives their distribution), gamma = -log SNR = 2 ln sigma
# (sigma in units of the whitened data; EDM's images have sigma_data = 0.5). t is clipped to
# [tail, 1 - tail]: 2 tail of the mass (2e-6) sits on the ends, ln sigma = P_mean +- 4.75 P_std.
edm_sigma(t, P_mean = -1.2, P_std = 1.2, tail = 1e-6) = 2 * (P_mean + P_std * ndtri(clip(t, tail, 1 - tail)))

# Karras et al. 2022 (EDM), Eq. 5: the sampling noise levels
# sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho as a
# continuous path, t = 1 - i / (N - 1): sigma_max at t = 1, sigma_min at t = 0.
edm_path(t, sigma_min = 0.002, sigma_max = 80, rho = 7) =
    2 * rho * log(sigma_min^(1 / rho) + t * (sigma_max^(1 / rho) - sigma_min^(1 / rho)))

# Hoogeboom & Salimans 2023 (blurring diffusion), their pseudo-code (get_frequency_scaling,
# get_noise_scaling_cosine), for the dct basis: mode (ky, kx) is scaled by alpha_t d_i(t),
# d_i = (1 - m) exp(-lambda_i tau_t) + m, m = min_scale, lambda_i = pi^2 (kx^2 / W^2 +
# ky^2 / H^2) (frequencies pi k / n per axis), tau_t = sigma_B^2 / 2, sigma_B =
# sigma_blur_max sin^2(pi t / 2), plus noise sigma_t; alpha_t, sigma_t their cosine with
# log SNR in [-hi, -lo]. So gamma_i = -log(alpha_t^2 / sigma_t^2) - 2 log d_i.
blurring(t, sigma_blur_max = 20, min_scale = 0.001, lo = -10, hi = 10) =
    shifted_cosine(t, lo = lo, hi = hi)
    - 2 * log(min_scale + (1 - min_scale)
                * exp(-pi^2 * (kx(i)^2 / W^2 + ky(i)^2 / H^2) * sigma_blur_max^2 * sin(pi * t / 2)^4 / 2))

# Falck et al. 2025 (a Fourier space perspective), EqualSNR: the noise covariance follows the
# data's, so every component has the same true SNR, here the SNR of DDPM's linear betas (the
# paper writes its SNRs with DDPM's alpha_bar; the noise's overall scale is our choice: the
# true SNR is exactly the base schedule's).
equal_snr(t, beta_1 = 1e-4, beta_T = 0.02, steps = 1000) = log(wvar(i)) + ddpm_linear(t, beta_1, beta_T, steps)

# Ruhe et al. 2024 (rolling diffusion), Sec. 3.2: frame k of a window of W frames has local
# time (k + t) / W; each time t has run down to 0 the window rolls on by one frame, leaving
# clean frames behind it and noise ahead. One formula for a whole sequence: frame labels l in
# [0, 1], the window w in label units (W frames of N: w = W / (N - 1)), the window sliding in
# over the first frames (where the paper uses a separate init schedule, Sec. 3.3), local time
# clip((l - 1 + t (1 + w)) / w, 0, 1): `sequential` with b = w / (1 + w). Base: the
# truncated cosine (shifted_cosine) in [lo, hi], our choice.
rolling(t, l, w = 0.5, lo = -15, hi = 15) = shifted_cosine(clip((l - 1 + t * (1 + w)) / w, 0, 1), lo = lo, hi = hi)

# Wu et al. 2023 (AR-Diffusion), Sec. 3, f(n, t): token n of N gets a timestep on the line
# through the start point (n_s, t_s) = (max(N - s, 0), max(s - N, 0)) and the anchor point
# (anchor N, T), clipped to [0, T], for a global step s in [0, N + T] (here s = t (N + T)
# and n = l (N - 1), l in [0, 1]). Their code rounds f to an integer step; in continuous
# time that would make beta 0 between the steps, so f stays a real number (still monotone).
# Local time f / T, base the truncated cosine in [lo, hi] (theirs, Diffusion-LM's sqrt
# schedule, is made for word embeddings).
ar_diffusion(t, l, tokens = W, steps = 2000, anchor = 2, lo = -15, hi = 15) =
    shifted_cosine(clip(max((t * (tokens + steps) - tokens) / steps, 0)
                        + (1 - max((t * (tokens + steps) - tokens) / steps, 0))
                          * (l * (tokens - 1) / tokens - max(1 - t * (tokens + steps) / tokens, 0))
                          / (anchor - max(1 - t * (tokens + steps) / tokens, 0)), 0, 1), lo = lo, hi = hi)

# Chen et al. 2024 (Diffusion Forcing), the pyramid scheduling matrix of its sampling
# (Algorithm 2's K; their code's _generate_pyramid_scheduling_matrix):
# K[m, n] = clip(S + n u - m, 0, S) for sampling row m and token n of N, S = steps noise
# levels, u = scale (their uncertainty scale), as a sampling path: t = 1 - m / (S + (N - 1) u),
# l = n / (N - 1), local time K / S; later tokens are noisier. (They floor n u; with an
# integer u that changes nothing.) Base the truncated cosine in [lo, hi], our choice.
pyramid(t, l, tokens = W, steps = 50, scale = 1, lo = -15, hi = 15) =
    shifted_cosine(clip(t + (tokens - 1) * scale * (t + l - 1) / steps, 0, 1), lo = lo, hi = hi)
"""

LIBRARY = ("linear", "vp", "cosine", "soft", "sequential", "snr_weight", "ddpm_linear", "iddpm_cosine", "vdm",
           "shifted_cosine", "edm_sigma", "edm_path", "blurring", "equal_snr", "rolling", "ar_diffusion", "pyramid")


def _positive_integer(v: float) -> bool:
    return v >= 1 and float(v).is_integer()


# Arguments of library functions whose range is restricted, checked where a call gives them as
# constants or fixed params (E210 at the argument; drawn params and a helper's arguments are
# left to the numeric checks):
# (function, argument) -> (what it must be, test of the value).
LIBRARY_ARGUMENTS: dict[tuple[str, str], tuple[str, object]] = {
    ("soft", "clipped"): ("true or false", lambda v: v in (0, 1)),
    ("soft", "a"): ("a number >= 0 (0: no hierarchy)", lambda v: v >= 0),
    ("sequential", "b"): ("in (0, 1] (the share of time each component moves)", lambda v: 0 < v <= 1),
    ("rolling", "w"): ("a number > 0 (the window's width in label units)", lambda v: v > 0),
    ("shifted_cosine", "d"): ("a resolution > 0", lambda v: v > 0),
    ("shifted_cosine", "ref"): ("a resolution > 0", lambda v: v > 0),
    ("edm_sigma", "P_std"): ("a standard deviation > 0", lambda v: v > 0),
    ("edm_sigma", "tail"): ("in (0, 0.5)", lambda v: 0 < v < 0.5),
    ("edm_path", "sigma_min"): ("a noise level > 0", lambda v: v > 0),
    ("edm_path", "rho"): ("a number > 0", lambda v: v > 0),
    ("blurring", "min_scale"): ("in (0, 1]", lambda v: 0 < v <= 1),
    **{(f, "steps"): ("a positive integer (a number of diffusion steps)", _positive_integer)
       for f in ("ddpm_linear", "iddpm_cosine", "equal_snr", "ar_diffusion", "pyramid")},
    **{(f, "tokens"): ("a positive integer (a number of tokens)", _positive_integer)
       for f in ("ar_diffusion", "pyramid")},
    ("pyramid", "scale"): ("a number > 0", lambda v: v > 0),
}


# Library functions that are right in one basis only (their formula reads that basis's
# features): function -> the basis kind (E207 at the call in any other).
LIBRARY_BASES: dict[str, str] = {"blurring": "dct"}


def known_function_names() -> set[str]:
    """Every callable name a spec may use in an expression (for "did you mean")."""
    return set(FEATURES) | set(REDUCTIONS) | set(FUNCTIONS) | set(LIBRARY)


# Names a definition or a param may not take (E212).
RESERVED = frozenset({"t", "i"} | set(FEATURES) | set(REDUCTIONS) | set(FUNCTIONS) | set(constants())
                     | set(KEYWORDS) | set(DISTRIBUTIONS))
