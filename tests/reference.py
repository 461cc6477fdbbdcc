"""A reference evaluator for gud schedules, written apart from the compiler, for differential tests.

Input: the source text of a spec, the per-component feature vectors (name -> float64 (D,)) with
the data's shape constants H, W, C, D (numbers) among them, times t (T,) and, optionally,
param values (a number, or one value per time for a drawn param; a drawn param not given
takes its mean, as the compiled schedule's default does).
Output: `Evaluation`: gamma (T, D), slope = dgamma/dt (T, D), beta = sigmoid(gamma) * slope,
and masks of the points where the slope is one-sided (`kink`) or may not be computable by a
symbolic derivative (`branch_point`, `extreme`). A spec it cannot read raises
`EvaluationError`: feed it specs that `gud check` accepts.

It reads the language on its own: the program is parsed and lowered by `gudlang.lower` (the
parser is not what is under test) and interpreted directly. Nothing of `gudlang.check` or
`gudlang.schedules` is used: no inlining, no folding, no code generation, no symbolic
derivative. The library is the text of `gudlang.builtins.PRELUDE`, parsed and interpreted like
user definitions. The rules, as the README states them:
- a name is, in this order, an argument of the function being evaluated, a constant (pi, true,
  false, or H, W, C, D: the image height, width, channels and C H W, given with the features),
  a param, or a definition; `l_i = ...` defines `l_i`, used as `l_i` or `l`, and
  `f_i(x) = ...` likewise. A function body sees its own arguments and the global names only;
  argument defaults are evaluated with the global names only.
- the schedule is the definition `gamma_i(t)` (or `gamma(t)`), called with the times.
- `min`, `max`, `mean`, `sum` with one argument reduce over components (a sum of zeros is +0,
  as numpy and torch sum); `min` and `max` with two arguments are elementwise, the first
  argument at a tie; `clip(x, lo, hi) = min(max(x, lo), hi)`. NaN in any argument of min /
  max / clip gives NaN (IEEE minimum / maximum).
- `where(a < b, x, y)` takes x where the comparison holds; comparisons with NaN are false.
- `floor` and `round` (halves to even) are steps: derivative 0. `ndtri(p)` is the standard
  normal quantile and `erfinv` the inverse error function (SciPy), with their exact derivatives
  sqrt(2 pi) exp(ndtri(p)^2 / 2) and sqrt(pi) / 2 exp(erfinv(x)^2).

Values are float64 NumPy arithmetic (logit and sigmoid accurate relative to their result).
The derivative in t comes from the complex step: every value is a complex128 array
v + i H v' (H = 1e-100), and every operation computes its real part with the float64 function
of the real parts (so the values are exactly those of a plain float64 interpreter) and its
imaginary part from the operation's complex extension, which is H times the derivative to
within H^2: exact to rounding for derivatives between about 1e-200 and MAX_SLOPE = 1e90
(beyond, NaN: not computed). A value that does not depend on t has derivative 0, even where it
is infinite (d/dt (c f(t)) = c f'(t) needs no 0 * c). Branches (comparisons, min / max, clip,
abs) look at real parts. Where the two sides of a branch tie (equal real parts, different
derivatives) the slope depends on the side: `kink` marks those points, and with `side = +1`
(or -1) ties are broken by the derivatives, as just after (before) t, which gives the
one-sided slopes. Where sqrt, log, logit, log1p, ndtri, erfinv or a power meets its branch point
(argument 0, or 1 for logit; -1 for log1p; 0 and 1 for ndtri, -1 and 1 for erfinv) and the
argument moves with t, the complex step gives no
derivative (the true one is infinite or does not exist): the slope is NaN there, through
everything computed from it. `branch_point` marks every such meeting, and `extreme` the points
where an intermediate value is not finite or its square over- or underflows (beyond about
1e+-154: a symbolic derivative, -x'/x^2 for 1 / x, may meet 0 * inf there); `extreme_moving`
those where a value that moves with t is not finite or below 1e-200: there H times its
derivative may underflow (sigmoid(-600) moves at 1e-261 per unit of its argument: the
imaginary part is 0), so the slope is not to be trusted.

`rounding` says what rounding may change, so that a test can allow a compiler that evaluates
the same formula in another order (folded, reassociated, with other libm functions) exactly
that much: it evaluates a few times with the result of every operation multiplied by
1 + r 2^-50 (|r| in [1/2, 1] with a random sign, as if every operation rounded 2 to 4 ulps
one way or the other; a sum of D terms moves by log2(D) such ulps of the sum of their
sizes), and reports how far gamma and its slope move (cancellation, e.g. 1e16 + t - 1e16,
amplifies it) and where a comparison's two sides lie within their movement of each other, so
that rounding may pick either branch (e.g. where(logit(sigmoid(t)) >= t, ...)); the argument of
floor or round counts as compared with its nearest step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from gudlang import ast as A
from gudlang.builtins import PRELUDE
from gudlang.lower import parse_program

H = 1e-100  # the complex step
MAX_SLOPE = 1e90  # the largest derivative (of any intermediate) it computes
CONSTANTS = {"pi": math.pi, "true": 1.0, "false": 0.0}
SHAPE = ("H", "W", "C", "D")  # given with the features
REDUCTIONS = {"min", "max", "mean", "sum"}
# name -> (the step function, where its steps are: integers + offset)
STEPS = {"floor": (np.floor, 0.0), "round": (np.round, 0.5)}


class EvaluationError(Exception):
    """A program the reference cannot evaluate (the checker should have refused it)."""


@dataclass
class Evaluation:
    gamma: np.ndarray  # (T, D)
    slope: np.ndarray  # (T, D), dgamma / dt
    beta: np.ndarray  # (T, D), sigmoid(gamma) * slope
    kink: np.ndarray  # (T, D) bool: a branch ties; the slope is one of `one_sided_slopes`
    branch_point: np.ndarray  # (T, D) bool: sqrt, log, logit, log1p or a power at a branch point
    extreme: np.ndarray  # (T, D) bool: an intermediate value is not finite, or its square is not
    extreme_moving: np.ndarray  # (T, D) bool: a value moving with t is not finite or below 1e-200


@dataclass
class Rounding:
    gamma: np.ndarray  # (T, D) how far rounding may move gamma
    slope: np.ndarray  # (T, D) ... and dgamma/dt
    branch: np.ndarray  # (T, D) bool: rounding may decide a branch here


def _complex(re, im) -> np.ndarray:
    """re + i im without arithmetic (1j * inf would be nan + inf j)."""
    re, im = np.broadcast_arrays(np.asarray(re, np.float64), np.asarray(im, np.float64))
    out = np.empty(re.shape, np.complex128)
    out.real, out.imag = re, im
    return out


def _moves(*inputs) -> np.ndarray:
    """Where some input depends on t (has a derivative, NaN included)."""
    moves = np.zeros((), bool)
    for x in inputs:
        moves = moves | (x.imag != 0)
    return moves


def _moving(im, *inputs) -> np.ndarray:
    """The imaginary part of a result, 0 where no input depends on t (so that an infinite
    constant times a zero derivative is 0, not NaN)."""
    return np.where(_moves(*inputs), im, 0.0)


def _real_sigmoid(x):
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _real_logit(x):
    # accurate relative to the result: near x = 1/2, log(x) - log1p(-x) cancels to an absolute
    # error of an ulp of log 2, while 2x - 1 is exact there
    middle = (x >= 0.25) & (x <= 0.75)
    return np.where(middle, 2.0 * np.arctanh(2.0 * x - 1.0), np.log(x) - np.log1p(-x))


def _complex_sigmoid(z):
    # each branch exponentiates a number with a non-positive real part: no overflow
    return np.where(z.real >= 0, 1.0 / (1.0 + np.exp(-z)), np.exp(z) / (1.0 + np.exp(z)))


def _complex_softplus(z):
    return np.where(z.real > 0, z + np.log(1.0 + np.exp(-z)), np.log(1.0 + np.exp(z)))


def _with_derivative(real_fn, derivative):
    """The complex step of a function known by its values and its derivative in terms of its
    value: f(x.real) + i f'(x.real) x.imag."""
    def complex_fn(z):
        value = real_fn(z.real)
        return _complex(value, derivative(value) * z.imag)
    return complex_fn


# name -> (float64 function, its complex extension, arguments where it has a branch point)
UNARY = {
    "ndtri": (special.ndtri, _with_derivative(special.ndtri, lambda v: math.sqrt(2.0 * math.pi) * np.exp(v * v / 2.0)),
              (0.0, 1.0)),
    "erfinv": (special.erfinv, _with_derivative(special.erfinv, lambda v: math.sqrt(math.pi) / 2.0 * np.exp(v * v)),
               (-1.0, 1.0)),
    "exp": (np.exp, np.exp, ()),
    "log": (np.log, np.log, (0.0,)),
    "sqrt": (np.sqrt, np.sqrt, (0.0,)),
    "cos": (np.cos, np.cos, ()),
    "sin": (np.sin, np.sin, ()),
    "tan": (np.tan, np.tan, ()),
    "atan": (np.arctan, np.arctan, ()),
    "tanh": (np.tanh, np.tanh, ()),
    "expm1": (np.expm1, lambda z: np.exp(z) - 1.0, ()),
    "log1p": (np.log1p, lambda z: np.log(1.0 + z), (-1.0,)),
    "sigmoid": (_real_sigmoid, _complex_sigmoid, ()),
    "logit": (_real_logit, lambda z: np.log(z) - np.log(1.0 - z), (0.0, 1.0)),
    "softplus": (lambda x: np.logaddexp(0.0, x), _complex_softplus, ()),
}


def _base(name: str) -> str:
    return name[:-2] if name.endswith("_i") and len(name) > 2 else name


class Reference:
    """One spec, read once; `run` interprets its schedule, the other methods build on it."""

    def __init__(self, source: str, formula: str = "gamma"):
        program, _ = parse_program(source, "<reference>")
        library, _ = parse_program(PRELUDE, "<library>")
        self.library = {st.name: st for st in library.statements if isinstance(st, A.Define)}
        self.definitions = {_base(st.name): st for st in program.statements if isinstance(st, A.Define)}
        self.fixed: dict[str, float] = {}
        self.drawn: dict[str, tuple[float, float]] = {}
        run = _Run(self, np.zeros(1), {}, {}, 1)  # a param's value may use earlier fixed params
        for st in program.statements:
            if isinstance(st, A.Param) and st.value is not None:
                self.fixed[st.name] = float(run.eval(st.value, {}).real.item())
                run.params[st.name] = _complex(self.fixed[st.name], 0.0)
            elif isinstance(st, A.Param):
                dist = A.Call(st.dist.func, st.dist.args, tuple(k for k in st.dist.kwargs if k.name != "group"))
                lo, hi = (run.eval(a, {}).real.item() for a in _bind(("lo", "hi"), dist))
                self.drawn[st.name] = (float(lo), float(hi))
        schedule = self.definitions.get(formula)  # gamma, or another formula of t: path, weight
        if schedule is None or schedule.formals is None or [f.name for f in schedule.formals] != ["t"]:
            raise EvaluationError(f"no formula {formula}(t) / {formula}_i(t)")
        self.schedule = schedule

    def run(self, t, features, params=None, *, side: int = 0, perturb=None) -> "_Run":
        """One interpretation of the schedule at times t; its result is `run.gamma`,
        gamma + i H dgamma/dt, complex (T, D)."""
        t = np.asarray(t, np.float64).reshape(-1, 1)
        dim = max(np.size(v) for v in features.values())
        values = {n: np.float64(v) for n, v in self.fixed.items()}
        values.update({n: np.float64(0.5 * (lo + hi)) for n, (lo, hi) in self.drawn.items()})
        for n, v in (params or {}).items():
            if n not in values:
                raise EvaluationError(f"the spec has no param `{n}`")
            v = np.asarray(v, np.float64)  # (T, D) for a param drawn per component
            values[n] = v if v.ndim == 2 else v.reshape(-1, 1) if v.ndim else np.float64(v)
        run = _Run(self, t, {k: np.asarray(v, np.float64).reshape(1, -1) for k, v in features.items()},
                   {n: _complex(v, 0.0) for n, v in values.items()}, dim, side, perturb)
        with np.errstate(all="ignore"):
            run.gamma = np.broadcast_to(run.eval(self.schedule.body, {"t": _complex(t, H)}), (len(t), dim))
        return run

    def __call__(self, t, features, params=None) -> Evaluation:
        """gamma, slope and beta, with the kinks and branch points (slope NaN there)."""
        run = self.run(t, features, params)
        with np.errstate(all="ignore"):
            gamma, slope = run.gamma.real.copy(), run.slope()
            return Evaluation(gamma, slope, _real_sigmoid(gamma) * slope, run.any(run.ties),
                              run.any(run.branch_points), run.any(run.extreme), run.any(run.extreme_moving))

    def one_sided_slopes(self, t, features, params=None) -> tuple[np.ndarray, np.ndarray]:
        """dgamma/dt just after and just before each t (NaN at a branch point)."""
        return tuple(self.run(t, features, params, side=s).slope() for s in (1, -1))

    def rounding(self, t, features, params=None, runs: int = 6, seed: int = 0) -> Rounding:
        """What rounding may change: how far gamma and slope move when every operation rounds
        a few ulps differently (the largest deviation over `runs` perturbed evaluations), and
        where a comparison's two sides are so close that rounding may decide the branch
        (closer than 4 times their movement: both branches are then right)."""
        rng = np.random.default_rng(seed)
        exact = self.run(t, features, params)
        gamma = np.zeros(exact.gamma.shape)
        slope = np.zeros(exact.gamma.shape)
        moves = [0.0] * len(exact.compared)
        with np.errstate(all="ignore"):
            for _ in range(runs):
                run = self.run(t, features, params, perturb=rng)
                gamma = np.fmax(gamma, _deviation(run.gamma.real, exact.gamma.real))
                slope = np.fmax(slope, _deviation(run.gamma.imag / H, exact.gamma.imag / H))
                for j, ((a, b), (a0, b0)) in enumerate(zip(run.compared, exact.compared)):
                    moves[j] = np.fmax(moves[j], _deviation(a, a0) + _deviation(b, b0))
            branch = exact.any([(m > 0) & (np.abs(a0 - b0) <= 4.0 * m) for (a0, b0), m in zip(exact.compared, moves)])
        return Rounding(gamma, slope, branch)


def _deviation(a, b):
    """|a - b|, 0 where both are the same (inf or NaN included), inf where only one is finite."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return np.where(same, 0.0, np.where(np.isfinite(a) & np.isfinite(b), np.abs(a - b), np.inf))


def _bind(names, call: A.Call) -> list[A.Expr]:
    """The arguments of a call in the order of `names` (positional, then keywords)."""
    bound = dict(zip(names, call.args))
    bound.update({kw.name: kw.value for kw in call.kwargs})
    if set(bound) != set(names):
        raise EvaluationError(f"{call.func} needs {names}")
    return [bound[n] for n in names]


class _Run:
    """One evaluation: times, features, param values, and the ties and branch points met."""

    def __init__(self, ref: Reference, t, features, params, dim, side=0, perturb=None):
        self.ref, self.t, self.features, self.params, self.dim = ref, t, features, params, dim
        self.side, self.perturb = side, perturb
        self.values: dict[str, np.ndarray] = {}
        self.active: list[str] = []
        self.ties: list[np.ndarray] = []
        self.branch_points: list[np.ndarray] = []
        self.compared: list[tuple[np.ndarray, np.ndarray]] = []  # real parts, in evaluation order
        self.extreme: list[np.ndarray] = []
        self.extreme_moving: list[np.ndarray] = []
        self.gamma: np.ndarray | None = None

    def slope(self) -> np.ndarray:
        """dgamma/dt (NaN where a branch point leaves it undetermined)."""
        return self.gamma.imag / H

    def any(self, masks) -> np.ndarray:
        """The union of masks, as (T, D)."""
        out = np.zeros((len(self.t), self.dim), bool)
        for mask in masks:
            out |= np.broadcast_to(mask, out.shape)
        return out

    def rounded(self, z, moves, scale=None):
        """The result of one operation, whose inputs move with t where `moves`; perturbed by a
        few ulps of `scale` (default |z|) when measuring what rounding may change."""
        z = np.asarray(z, np.complex128)
        with np.errstate(all="ignore"):
            square = z.real * z.real
            self.extreme.append(~np.isfinite(square) | (square == 0) & (z.real != 0))
            # a moving value below 1e-200 may have a derivative below 1e-208, which H = 1e-100
            # times flushes to zero (sigmoid(-600) moves at 1e-261 per unit of its argument)
            tiny = np.abs(z.real) < 1e-200
            self.extreme_moving.append(moves & (~np.isfinite(z.real) | tiny & (z.real != 0)))
            # beyond a derivative of MAX_SLOPE the step is no longer small (cos(x + 1e-3 i) is
            # not cos(x) - 1e-3 i sin(x) to rounding): no derivative there
            z = _complex(z.real, np.where(np.abs(z.imag) > MAX_SLOPE * H, np.nan, z.imag))
        if self.perturb is None:
            return z
        r = self.perturb.choice([-1.0, 1.0], z.shape) * self.perturb.uniform(0.5, 1.0, z.shape) * 2.0 ** -50
        if scale is None:
            return _complex(z.real * (1.0 + r), z.imag * (1.0 + r))
        return _complex(z.real + r * scale.real, z.imag + r * scale.imag)

    # -------------------------------------------------------------- expressions
    def eval(self, e, scope) -> np.ndarray:
        if isinstance(e, A.Num):
            return _complex(e.value, 0.0)
        if isinstance(e, A.Name):
            return self.name(e.id, scope)
        if isinstance(e, A.Neg):
            return -self.eval(e.operand, scope)
        if isinstance(e, A.BinOp):
            a, b = self.eval(e.left, scope), self.eval(e.right, scope)
            return self.rounded(self.binop(e.op, a, b), _moves(a, b))
        if isinstance(e, A.Call):
            return self.call(e, scope)
        if isinstance(e, A.Compare):  # conditions are bool arrays
            return self.compare(e.op, self.eval(e.left, scope), self.eval(e.right, scope))
        if isinstance(e, A.BoolOp):
            a, b = self.eval(e.left, scope), self.eval(e.right, scope)
            return (a & b) if e.op == "and" else (a | b)
        if isinstance(e, A.Not):
            return ~self.eval(e.operand, scope)
        raise EvaluationError(f"cannot evaluate {type(e).__name__} here")

    def name(self, name: str, scope) -> np.ndarray:
        if name in scope:
            return scope[name]
        if name in CONSTANTS:
            return _complex(CONSTANTS[name], 0.0)
        if name in SHAPE:
            if name not in self.features:
                raise EvaluationError(f"the shape constant {name} is not among the features")
            return _complex(self.features[name], 0.0)
        if name in self.params:
            return self.params[name]
        if name + "_i" in self.params:  # `u` names the per-component param `u_i`
            return self.params[name + "_i"]
        d = self.ref.definitions.get(_base(name))
        if d is None or d.formals is not None:
            raise EvaluationError(f"`{name}` is not a value")
        key = _base(name)
        if key not in self.values:
            if key in self.active:
                raise EvaluationError(f"`{name}` is defined in terms of itself")
            self.active.append(key)
            self.values[key] = self.eval(d.body, {})
            self.active.pop()
        return self.values[key]

    def binop(self, op: str, a, b) -> np.ndarray:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":  # real part a.real * b.real: no H^2 term
            return _complex(a.real * b.real, _moving(a.real * b.imag, b) + _moving(a.imag * b.real, a))
        if op == "/":
            return _complex(a.real / b.real, _moving((a / b).imag, a, b))
        if op == "^":
            return self.power(a, b)
        raise EvaluationError(f"unknown operator {op}")

    def power(self, x, y) -> np.ndarray:
        value = np.power(x.real, y.real)  # NaN for a negative base and a fractional exponent
        # x^y = (-1)^y (-x)^y for a negative base and an integer exponent: the complex power
        # of a number with a positive real part has no branch cut to cross
        flip = (x.real < 0) & (np.mod(y.real, 2.0) == 1.0)
        z = np.power(np.where(x.real < 0, -x, x), y)
        return _complex(value, self.at_branch_point(np.where(flip, -z.imag, z.imag), x.real == 0, x, y))

    def at_branch_point(self, im, at, *inputs) -> np.ndarray:
        """The imaginary part `im` of a function's result, NaN where its argument sits at a
        branch point (`at`) and moves with t: the complex step gives no derivative there, and
        the NaN follows it into everything computed from it, reductions over components too."""
        self.branch_points.append(at)
        return np.where(at & _moves(*inputs), np.nan, _moving(im, *inputs))

    def compare(self, op: str, a, b) -> np.ndarray:
        """The truth of `a op b`, from real parts; at a tie of the real parts, from the
        derivatives when evaluating one side (`side`)."""
        ar, br = a.real, b.real
        self.compared.append((ar, br))
        tie = ar == br
        self.ties.append(tie & (a.imag != b.imag))
        if self.side:
            # just after t (side +1) the one with the larger derivative is larger
            ar = np.where(tie, self.side * a.imag, ar)
            br = np.where(tie, self.side * b.imag, br)
        return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                "==": np.equal, "!=": np.not_equal}[op](ar, br)

    def pick(self, op: str, a, b) -> np.ndarray:
        """a if `a op b` else b, NaN if either is NaN (the elementwise min and max)."""
        out = np.where(self.compare(op, a, b), a, b)
        return np.where(np.isnan(a.real) | np.isnan(b.real), _complex(np.nan, np.nan), out)

    def call(self, e: A.Call, scope) -> np.ndarray:
        f, n = e.func, len(e.args)
        if f in self.features:
            if n != 1 or e.args[0] != A.Name("i") or e.kwargs:
                raise EvaluationError(f"a feature is written {f}(i)")
            return _complex(self.features[f], 0.0)
        if f in REDUCTIONS and n == 1 and not e.kwargs:
            x = np.broadcast_to(self.eval(e.args[0], scope), (len(self.t), self.dim))
            if f in ("sum", "mean"):
                # a sum of D terms may round by about log2(D) ulps of the sum of their sizes
                n = self.dim if f == "mean" else 1
                ulps = max(1.0, math.log2(self.dim))
                total = _complex(x.real.sum(axis=-1, keepdims=True) / n, x.imag.sum(axis=-1, keepdims=True) / n)
                size = _complex(np.abs(x.real).sum(axis=-1, keepdims=True) * (ulps / n),
                                np.abs(x.imag).sum(axis=-1, keepdims=True) * (ulps / n))
                return self.rounded(total, _moves(x).any(axis=-1, keepdims=True), size)
            k = (np.argmin if f == "min" else np.argmax)(x.real, axis=-1)[:, None]
            out = np.take_along_axis(x, k, axis=-1)
            return np.where(np.isnan(x.real).any(axis=-1, keepdims=True), _complex(np.nan, np.nan), out)
        if f == "where":
            if n != 3 or e.kwargs:
                raise EvaluationError("where(condition, x, y) takes three arguments")
            truth = self.eval(e.args[0], scope)
            if truth.dtype != bool:
                raise EvaluationError("where(...) needs a condition first")
            return np.where(truth, self.eval(e.args[1], scope), self.eval(e.args[2], scope))
        if f in ("min", "max") and n == 2 and not e.kwargs:
            a, b = (self.eval(x, scope) for x in e.args)
            return self.pick("<=" if f == "min" else ">=", a, b)
        if f == "clip" and n == 3 and not e.kwargs:
            x, lo, hi = (self.eval(a, scope) for a in e.args)
            return self.pick("<=", self.pick(">=", x, lo), hi)
        if f == "abs" and n == 1 and not e.kwargs:
            x = self.eval(e.args[0], scope)
            return np.where(self.compare(">=", x, _complex(0.0, 0.0)), x, -x)
        if f in STEPS and n == 1 and not e.kwargs:
            x = self.eval(e.args[0], scope)
            step, offset = STEPS[f]
            # rounding of x decides the step near one: compare x with the nearest
            self.compared.append((x.real, np.round(x.real - offset) + offset))
            return _complex(step(x.real), 0.0)
        if f in UNARY and n == 1 and not e.kwargs:
            real_fn, complex_fn, branch_points = UNARY[f]
            x = self.eval(e.args[0], scope)
            at = np.isin(x.real, branch_points)
            return self.rounded(_complex(real_fn(x.real), self.at_branch_point(complex_fn(x).imag, at, x)), _moves(x))
        return self.apply(e, scope)

    def apply(self, e: A.Call, scope) -> np.ndarray:
        """A user or library function: bind arguments by position and keyword, fill defaults,
        evaluate the body with only its own arguments in scope."""
        d = self.ref.definitions.get(_base(e.func)) or self.ref.library.get(e.func)
        if d is None or d.formals is None:
            raise EvaluationError(f"unknown function `{e.func}`")
        names = [f.name for f in d.formals]
        if len(e.args) > len(names):
            raise EvaluationError(f"too many arguments for `{e.func}`")
        local = {names[k]: self.eval(a, scope) for k, a in enumerate(e.args)}
        for kw in e.kwargs:
            if kw.name not in names or kw.name in local:
                raise EvaluationError(f"bad keyword `{kw.name}` for `{e.func}`")
            local[kw.name] = self.eval(kw.value, scope)
        for f in d.formals:
            if f.name not in local:
                if f.default is None:
                    raise EvaluationError(f"`{e.func}` needs `{f.name}`")
                local[f.name] = self.eval(f.default, {})
        if e.func in self.active:
            raise EvaluationError(f"`{e.func}` calls itself")
        self.active.append(e.func)
        try:
            return self.eval(d.body, local)
        finally:
            self.active.pop()


# --------------------------------------------------------------------------- comparison
def disagreements(got, want, spread, rtol: float, atol: float) -> np.ndarray:
    """Where `got` is not `want` within atol + rtol |want| + 4 spread (`spread` from
    `Reference.rounding`). Non-finite values must match exactly (NaN with NaN, inf with inf of
    the same sign). Not compared: where the spread is infinite or more than 1e-3 (1 + |want|),
    so that rounding alone decides whether the value is finite, or what it is (tan(exp(40)))."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(all="ignore"):
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        close = np.isfinite(want) & (np.abs(got - want) <= atol + rtol * np.abs(want) + 4.0 * spread)
        decided_by_rounding = ~(spread <= 1e-3 * (1.0 + np.where(np.isfinite(want), np.abs(want), 0.0)))
    return ~(same | close | decided_by_rounding)
