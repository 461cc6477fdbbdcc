"""Compile a checked schedule expression into a torch module, and check it numerically.

Input: the inlined `gamma` of a `CheckedSpec`, per-component feature vectors
(name -> float64 array of length D, e.g. from the fitted basis) and fixed param values.
Output: `CompiledSchedule`, an `nn.Module` with
    forward(t: (B,), params: {name: (B,)} | None) -> (gamma (B, D), beta (B, D)),
beta = sigmoid(gamma) * dgamma/dt. Everything that does not depend on t or on a drawn
param is folded at compile time into (1, D) buffers; dgamma/dt is a symbolic derivative;
the remaining arithmetic is emitted as straight-line torch code (shown by `gud explain`),
so the module runs on CPU and CUDA, in float32 and float64, and under `torch.compile`.

`check_schedule` evaluates it on a dense grid in float64 and raises `GudError`
E301 (gamma decreases in t), E302 (NaN / inf); it returns warnings W301 / W302 when the
true SNR is not high at t = 0 or not low at t = 1.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from gudlang import ast as A
from gudlang.diagnostics import WARNING, Diagnostic, GudError

SNR_HIGH = 10.0  # true SNR every component should exceed at t = 0
SNR_LOW = 0.1  # ... and stay below at t = 1
GRID = 1001


@dataclass(frozen=True)
class Between:
    """lo <= x <= hi, elementwise (the interior of a clip, where it passes the slope on)."""

    x: object
    lo: object
    hi: object


@dataclass(frozen=True)
class Vec:
    """A folded per-component constant: row `index` of the constant table."""

    index: int


_NP = {
    "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs, "cos": np.cos, "sin": np.sin,
    "tan": np.tan, "atan": np.arctan, "expm1": np.expm1, "log1p": np.log1p, "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "logit": lambda x: np.log(x) - np.log1p(-x),
    "softplus": lambda x: np.logaddexp(0.0, x), "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "min": np.minimum, "max": np.maximum, "where": np.where,
}
_TORCH = {
    "log": "torch.log", "exp": "torch.exp", "sqrt": "torch.sqrt", "abs": "torch.abs", "cos": "torch.cos",
    "sin": "torch.sin", "tan": "torch.tan", "atan": "torch.atan", "expm1": "torch.expm1",
    "log1p": "torch.log1p", "tanh": "torch.tanh", "sigmoid": "torch.sigmoid", "logit": "torch.logit",
    "softplus": "torch.nn.functional.softplus",
}
_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal,
        "!=": np.not_equal}
_BIN = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power}
_REDUCE = {"max": np.max, "min": np.min, "mean": np.mean, "sum": np.sum}


class _Folder:
    """Substitutes features and fixed params, folds constants, builds the derivative."""

    def __init__(self, features: Mapping[str, np.ndarray], fixed: Mapping[str, float], drawn, dim: int):
        self.features, self.fixed, self.drawn, self.dim = features, fixed, set(drawn), dim
        self.table: list[np.ndarray] = []
        self._index: dict[bytes, int] = {}

    # constants ----------------------------------------------------------------------
    def const(self, value) -> A.Expr | Vec:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0 or arr.size == 1 or np.all(arr == arr.flat[0]):
            return A.Num(float(arr.flat[0]))
        key = arr.tobytes()
        if key not in self._index:
            self._index[key] = len(self.table)
            self.table.append(arr)
        return Vec(self._index[key])

    def value(self, node):
        """The numeric value of a constant node, or None if it is symbolic."""
        if isinstance(node, A.Num):
            return node.value
        if isinstance(node, Vec):
            return self.table[node.index]
        return None

    # folding --------------------------------------------------------------------------
    def fold(self, e) -> A.Expr | Vec:
        if isinstance(e, (A.Num, Vec)):
            return e
        if isinstance(e, A.Name):
            if e.id in self.fixed:
                return A.Num(float(self.fixed[e.id]))
            return e  # t or a drawn param
        if isinstance(e, A.Neg):
            x = self.fold(e.operand)
            v = self.value(x)
            return self.const(-v) if v is not None else A.Neg(x)
        if isinstance(e, A.BinOp):
            left, right = self.fold(e.left), self.fold(e.right)
            lv, rv = self.value(left), self.value(right)
            if lv is not None and rv is not None:
                with np.errstate(all="ignore"):
                    return self.const(_BIN[e.op](lv, rv))
            if e.op == "+":
                return self.reassociate(left, right)
            return _simplify(A.BinOp(e.op, left, right))
        if isinstance(e, A.Compare):
            return A.Compare(e.op, self.fold(e.left), self.fold(e.right))
        if isinstance(e, Between):
            return Between(self.fold(e.x), self.fold(e.lo), self.fold(e.hi))
        if isinstance(e, A.Call):
            f = e.func
            if f in self.features:
                return self.const(self.features[f])
            args = [self.fold(a) for a in e.args]
            if f in _REDUCE and len(args) == 1:
                v = self.value(args[0])
                if v is not None:
                    arr = np.broadcast_to(np.asarray(v, dtype=np.float64), (self.dim,))
                    return A.Num(float(_REDUCE[f](arr)))
                if not self.depends_on_i(args[0]):  # the same value for every component
                    return _simplify(A.BinOp("*", A.Num(float(self.dim)), args[0])) if f == "sum" else args[0]
                return A.Call(f, (args[0],))
            if f == "where" and isinstance(args[0], A.Compare):
                c = args[0]
                cl, cr = self.value(c.left), self.value(c.right)
                if cl is not None and cr is not None:
                    cond = _CMP[c.op](cl, cr)
                    if np.all(cond):
                        return args[1]
                    if not np.any(cond):
                        return args[2]
                    values = [self.value(a) for a in args[1:]]
                    if all(v is not None for v in values):
                        return self.const(np.where(cond, *values))
                return A.Call(f, tuple(args))
            values = [self.value(a) for a in args]
            if all(v is not None for v in values):
                with np.errstate(all="ignore"):
                    return self.const(_NP[f](*values))
            return A.Call(f, tuple(args))
        raise AssertionError(e)

    def reassociate(self, left, right):
        """c1 + (c2 + x) -> (c1 + c2) + x for constants c: one full-size pass fewer."""
        for const, other in ((left, right), (right, left)):
            cv = self.value(const)
            if cv is None or not isinstance(other, A.BinOp) or other.op not in "+-":
                continue
            inner_left, inner_right = self.value(other.left), self.value(other.right)
            with np.errstate(all="ignore"):
                if inner_left is not None:  # c1 + (c2 +- x)
                    return _simplify(A.BinOp(other.op, self.const(cv + inner_left), other.right))
                if inner_right is not None:  # c1 + (x +- c2)
                    c = cv + inner_right if other.op == "+" else cv - inner_right
                    return _simplify(A.BinOp("+", self.const(c), other.left))
        return _simplify(A.BinOp("+", left, right))

    def depends_on_i(self, e) -> bool:
        if isinstance(e, Vec):
            return True
        if isinstance(e, A.Call) and e.func in _REDUCE and len(e.args) == 1:
            return False
        return any(self.depends_on_i(c) for _, c in A.children(e)) if hasattr(e, "__dataclass_fields__") \
            and not isinstance(e, (A.Num, A.Name)) else False

    # derivative ---------------------------------------------------------------------
    def diff(self, e) -> A.Expr | Vec:
        """d e / d t, simplified."""
        if isinstance(e, (A.Num, Vec)):
            return ZERO
        if isinstance(e, A.Name):
            return ONE if e.id == "t" else ZERO
        if isinstance(e, A.Neg):
            return _neg(self.diff(e.operand))
        if isinstance(e, A.BinOp):
            a, b = e.left, e.right
            da, db = self.diff(a), self.diff(b)
            if e.op in "+-":
                return _simplify(A.BinOp(e.op, da, db))
            if e.op == "*":
                return _add(_mul(da, b), _mul(a, db))
            if e.op == "/":
                return _sub(_div(da, b), _div(_mul(a, db), _mul(b, b)))
            if e.op == "^":
                if db == ZERO:
                    return _mul(_mul(b, _pow(a, _sub(b, ONE))), da)
                return _mul(e, _add(_mul(db, A.Call("log", (a,))), _div(_mul(b, da), a)))
        if isinstance(e, A.Call):
            f, args = e.func, e.args
            if f in _REDUCE:
                d = self.diff(args[0])
                return ZERO if d == ZERO else A.Call(f, (d,))  # only sum / mean reach here with t
            if f == "where":
                d1, d2 = self.diff(args[1]), self.diff(args[2])
                return ZERO if d1 == ZERO and d2 == ZERO else A.Call("where", (args[0], d1, d2))
            if f in ("min", "max"):
                a, b = args
                da, db = self.diff(a), self.diff(b)
                if da == ZERO and db == ZERO:
                    return ZERO
                return A.Call("where", (A.Compare("<=" if f == "min" else ">=", a, b), da, db))
            if f == "clip":
                x, lo, hi = args
                dx, dlo, dhi = self.diff(x), self.diff(lo), self.diff(hi)
                # Closed interval: at a kink the component counts as moving, so that
                # e.g. linear(t) has beta > 0 at t = 1, where samplers take their first step.
                if dlo == ZERO and dhi == ZERO:
                    return _mul(A.Call("where", (Between(x, lo, hi), ONE, ZERO)), dx)
                inner = A.Call("where", (A.Compare(">", x, hi), dhi, dx)) if dhi != ZERO or dx != ZERO else ZERO
                if inner == ZERO and dlo == ZERO:
                    return ZERO
                return A.Call("where", (A.Compare("<", x, lo), dlo, inner))
            x = args[0]
            dx = self.diff(x)
            if dx == ZERO:
                return ZERO
            outer = {
                "log": lambda: _div(ONE, x),
                "exp": lambda: e,
                "expm1": lambda: A.Call("exp", (x,)),
                "log1p": lambda: _div(ONE, _add(ONE, x)),
                "sqrt": lambda: _div(A.Num(0.5), e),
                "abs": lambda: A.Call("where", (A.Compare(">=", x, ZERO), ONE, A.Num(-1.0))),
                "sigmoid": lambda: _mul(e, _sub(ONE, e)),
                "logit": lambda: _div(ONE, _mul(x, _sub(ONE, x))),
                "softplus": lambda: A.Call("sigmoid", (x,)),
                "cos": lambda: _neg(A.Call("sin", (x,))),
                "sin": lambda: A.Call("cos", (x,)),
                "tan": lambda: _add(ONE, _mul(e, e)),
                "atan": lambda: _div(ONE, _add(ONE, _mul(x, x))),
                "tanh": lambda: _sub(ONE, _mul(e, e)),
            }[f]()
            return _mul(outer, dx)
        raise AssertionError(e)


ZERO, ONE = A.Num(0.0), A.Num(1.0)


def _simplify(e: A.BinOp):
    a, b = e.left, e.right
    if e.op == "+":
        return b if a == ZERO else a if b == ZERO else e
    if e.op == "-":
        return a if b == ZERO else _neg(b) if a == ZERO else e
    if e.op == "*":
        if a == ZERO or b == ZERO:
            return ZERO
        if a == ONE or b == ONE:
            return b if a == ONE else a
        for one_over, other in ((a, b), (b, a)):  # (1 / y) * z -> z / y: one pass fewer
            if isinstance(one_over, A.BinOp) and one_over.op == "/" and one_over.left == ONE:
                return A.BinOp("/", other, one_over.right)
        return _scaled(e)
    if e.op == "/":
        if a == ZERO or b == ONE:
            return ZERO if a == ZERO else a
        if isinstance(b, A.Num) and b.value != 0.0 and _representable(1.0 / b.value, b.value):
            return _scaled(A.BinOp("*", A.Num(1.0 / b.value), a))  # x / c -> (1 / c) * x
        return e
    if e.op == "^":
        return ONE if b == ZERO else a if b == ONE else e
    return e


def _scaled(e: A.BinOp):
    """c1 * (c2 * x), c1 * (x * c2), c1 * (x / c2) -> c * x for scalar constants: each
    constant factor folded away saves one full pass at run time."""
    c, x = (e.left, e.right) if isinstance(e.left, A.Num) else (e.right, e.left)
    if not isinstance(c, A.Num) or not isinstance(x, A.BinOp) or x.op not in "*/":
        return e
    if x.op == "*" and isinstance(x.left, A.Num):
        d, rest = x.left.value, x.right
        combined = c.value * d
    elif x.op == "*" and isinstance(x.right, A.Num):
        d, rest = x.right.value, x.left
        combined = c.value * d
    elif x.op == "/" and isinstance(x.right, A.Num) and x.right.value != 0.0:
        d, rest = x.right.value, x.left
        combined = c.value / d
    else:
        return e
    return A.BinOp("*", A.Num(combined), rest) if _representable(combined, c.value, d) else e


def _exact_step(on: float, off: float) -> bool:
    """Whether cond * (on - off) + off gives exactly on and off (no overflow, no rounding)."""
    jump = on - off
    return math.isfinite(jump) and jump + off == on and 0.0 * jump + off == off


def _representable(combined: float, *factors: float) -> bool:
    """Whether a constant folded from `factors` keeps their value: finite, and not flushed to
    zero or into the subnormal range from non-zero factors (folding must not create inf or nan
    where the formula as written has none)."""
    if not math.isfinite(combined):
        return False
    return combined == 0.0 if 0.0 in factors else abs(combined) >= sys.float_info.min


def _neg(x):
    if isinstance(x, A.Num):
        return A.Num(-x.value)
    return x.operand if isinstance(x, A.Neg) else A.Neg(x)


def _add(a, b): return _num_or(A.BinOp("+", a, b))
def _sub(a, b): return _num_or(A.BinOp("-", a, b))
def _mul(a, b): return _num_or(A.BinOp("*", a, b))
def _div(a, b): return _num_or(A.BinOp("/", a, b))
def _pow(a, b): return _num_or(A.BinOp("^", a, b))


def _num_or(e: A.BinOp):
    if isinstance(e.left, A.Num) and isinstance(e.right, A.Num):
        with np.errstate(all="ignore"):
            return A.Num(float(_BIN[e.op](e.left.value, e.right.value)))
    if e.op == "*":  # push constants into a where of constants: one pass instead of two
        for num, other in ((e.left, e.right), (e.right, e.left)):
            if isinstance(num, A.Num) and isinstance(other, A.Call) and other.func == "where" \
                    and all(isinstance(a, A.Num) for a in other.args[1:]):
                return A.Call("where", (other.args[0], _mul(num, other.args[1]), _mul(num, other.args[2])))
    return _simplify(e)


# --------------------------------------------------------------------------- code generation
class _Emitter:
    def __init__(self, params: list[str]):
        self.lines: list[str] = []
        self.memo: dict = {}
        self.params = params
        self.consts: set[int] = set()

    def atom(self, e) -> str:
        if isinstance(e, A.Num):
            if not np.isfinite(e.value):  # folded from finite inputs (exp(1000)); E302 reports it
                return f"float('{e.value!r}')"
            return f"({e.value!r})" if e.value < 0 else repr(e.value)
        if isinstance(e, Vec):
            self.consts.add(e.index)
            return f"c{e.index}"
        if isinstance(e, A.Name):
            return "t" if e.id == "t" else f"p_{e.id}"
        return self.emit(e)

    def emit(self, e) -> str:
        if isinstance(e, (A.Num, Vec, A.Name)):
            return self.atom(e)
        if e in self.memo:
            return self.memo[e]
        if isinstance(e, A.Neg):
            code = f"-{self.atom(e.operand)}"
        elif isinstance(e, A.BinOp):
            op = "**" if e.op == "^" else e.op
            code = f"{self.atom(e.left)} {op} {self.atom(e.right)}"
        elif isinstance(e, A.Compare):
            code = f"{self.atom(e.left)} {e.op} {self.atom(e.right)}"
        elif isinstance(e, Between):
            code = f"({self.atom(e.x)} >= {self.atom(e.lo)}) & ({self.atom(e.x)} <= {self.atom(e.hi)})"
        elif isinstance(e, A.Call):
            args = [self.atom(a) for a in e.args]
            f = e.func
            if f in _REDUCE:
                fn = {"max": "torch.amax", "min": "torch.amin", "mean": "torch.mean", "sum": "torch.sum"}[f]
                code = f"{fn}({args[0]}, dim=-1, keepdim=True)"
            elif f == "where":
                a, b = args[1], args[2]
                on, off = e.args[1], e.args[2]
                if isinstance(on, A.Num) and isinstance(off, A.Num) and _exact_step(on.value, off.value):
                    # a step function: a cast and a multiply, no tensor constants to build
                    code = f"{args[0]}.to(t.dtype) * {on.value - off.value!r}"
                    if off.value != 0.0:
                        code += f" + {off.value!r}"
                elif _is_number(a) and _is_number(b):
                    code = f"torch.where({args[0]}, {_tensor(a)}, {b})"
                else:
                    code = f"torch.where({args[0]}, {a}, {b})"
            elif f == "clip":
                if _is_number(args[1]) and _is_number(args[2]):
                    code = f"torch.clamp({args[0]}, {args[1]}, {args[2]})"
                else:
                    code = f"torch.minimum(torch.maximum({args[0]}, {_tensor(args[1])}), {_tensor(args[2])})"
            elif f in ("min", "max"):
                code = f"torch.{f}imum({_tensor(args[0])}, {_tensor(args[1])})"
            else:
                code = f"{_TORCH[f]}({args[0]})"
        else:
            raise AssertionError(e)
        name = f"v{len(self.memo)}"
        self.lines.append(f"    {name} = {code}")
        self.memo[e] = name
        return name


def _is_number(code: str) -> bool:
    return not code.startswith(("v", "c", "t", "p_"))


def _tensor(code: str) -> str:
    """A Python float where torch needs a tensor: make it one of t's dtype and device."""
    return f"t.new_tensor({code})" if _is_number(code) else code


# --------------------------------------------------------------------------- the module
class CompiledSchedule(nn.Module):
    """gamma_i(t) and beta_i(t) of one spec, as straight-line torch code.

    forward(t: (B,), params: dict name -> (B,) for drawn params, optional) ->
    (gamma (B, D), beta (B, D)). Constants are float64 buffers; `.to(torch.float32)` casts them.
    """

    def __init__(self, dim: int, table: dict[int, np.ndarray], source: str, drawn: dict[str, float],
                 forward_source: str):
        super().__init__()
        self.dim = dim
        self.source = source
        self.drawn = tuple(drawn)
        self.register_buffer("_ref", torch.zeros((), dtype=torch.float64))
        for k, arr in table.items():
            self.register_buffer(f"c{k}", torch.tensor(np.array(arr, dtype=np.float64)).reshape(1, dim))
        for name, default in drawn.items():
            self.register_buffer(f"default_{name}", torch.tensor(float(default), dtype=torch.float64))
        self._consts = tuple(f"c{k}" for k in table)
        namespace: dict = {"torch": torch}
        # Code built from a checked AST: only numbers and names the emitter made appear in it.
        exec(compile(source + "\n" + forward_source, "<gud schedule>", "exec"), namespace)
        self._fn = namespace["schedule"]
        self._forward = namespace["schedule_forward"]

    def _args(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None) -> list:
        """[t (B, 1), constants (1, D)..., drawn params (B, 1)...] in the buffers' dtype."""
        buffers = self._buffers  # direct access: this runs at every training step
        ref = buffers["_ref"]
        t = t.reshape(-1, 1)
        if t.dtype != ref.dtype or t.device != ref.device:
            t = t.to(dtype=ref.dtype, device=ref.device)
        args = [t] + [buffers[name] for name in self._consts]
        for name in self.drawn:
            if params is not None and name in params:
                args.append(torch.as_tensor(params[name], dtype=ref.dtype, device=ref.device)
                            .reshape(-1, 1).expand(t.shape[0], 1))
            else:
                args.append(buffers[f"default_{name}"].expand(t.shape[0], 1))
        return args

    def gamma_and_slope(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None):
        """(gamma, dgamma/dt), both (B, D)."""
        args = self._args(t, params)
        gamma, slope = self._fn(*args)
        shape = (args[0].shape[0], self.dim)
        return _full(gamma, shape, args[0]), _full(slope, shape, args[0])

    def forward(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None):
        if self.drawn:
            return self._forward(*self._args(t, params))
        # the common case, inlined: no drawn params (this runs at every step)
        buffers = self._buffers
        ref = buffers["_ref"]
        t = t.reshape(-1, 1)
        if t.dtype != ref.dtype or t.device != ref.device:
            t = t.to(dtype=ref.dtype, device=ref.device)
        return self._forward(t, *[buffers[name] for name in self._consts])


def _full(x, shape, like: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x):
        return like.new_full(shape, float(x))
    return x.expand(shape)


def compile_schedule(gamma: A.Expr, features: Mapping[str, np.ndarray], fixed: Mapping[str, float],
                     drawn: Mapping[str, float], dim: int) -> CompiledSchedule:
    """Fold, differentiate and emit `gamma`. `drawn` maps each drawn param used to its
    default value (the mean of its distribution)."""
    folder = _Folder({k: np.asarray(v, dtype=np.float64) for k, v in features.items()},
                     fixed, drawn, dim)
    g = folder.fold(gamma)
    dg = folder.fold(folder.diff(g))
    params = list(drawn)
    em = _Emitter(params)
    g_code = em.emit(g)
    dg_code = em.emit(dg)
    used = {k: folder.table[k] for k in sorted(em.consts)}
    signature = ", ".join(["t"] + [f"c{k}" for k in used] + [f"p_{p}" for p in params])
    source = "\n".join([f"def schedule({signature}):"] + em.lines + [f"    return {g_code}, {dg_code}", ""])
    # forward in one generated call (beta and the broadcast to (B, D) included): a schedule is
    # evaluated at every training and sampling step, so Python overhead counts.
    gamma_value = g_code if g_code.startswith(("v", "c", "t", "p_")) else f"t.new_full((t.shape[0], 1), {g_code})"
    forward_source = "\n".join(
        [f"def schedule_forward({signature}):"] + em.lines
        + [f"    gamma = {gamma_value}", f"    beta = torch.sigmoid(gamma) * {dg_code}",
           f"    shape = (t.shape[0], {dim})", "    return gamma.expand(shape), beta.expand(shape)", ""])
    return CompiledSchedule(dim, used, source, dict(drawn), forward_source)


def evaluate_constant(expr: A.Expr, features: Mapping[str, np.ndarray], fixed: Mapping[str, float],
                      dim: int) -> np.ndarray:
    """The value (D,) of an expression that depends on neither t nor a drawn param, such as
    a prior's `scale(...)`, folded exactly as a schedule's constants are."""
    folder = _Folder({k: np.asarray(v, dtype=np.float64) for k, v in features.items()}, fixed, (), dim)
    value = folder.value(folder.fold(expr))
    if value is None:
        raise TypeError("evaluate_constant needs an expression without t or drawn params")
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (dim,)).copy()


# --------------------------------------------------------------------------- numeric checks
@np.errstate(all="ignore")  # overflow in a user's formula is reported as E302, not a RuntimeWarning
def check_schedule(schedule: CompiledSchedule, wvar: np.ndarray, drawn_ranges: Mapping[str, tuple[float, float]],
                   constant: np.ndarray | None = None) -> list[Diagnostic]:
    """Evaluate on a dense t grid (float64; a uniform grid plus a golden-ratio sequence, so that
    no period aliases with it) for the corners, the centre and a sweep of every drawn param's
    range (`_param_values`). Narrower features than the grid can still slip through. Raise GudError E302 on NaN / inf, E301 where gamma decreases; return warnings when
    the true SNR = wvar * exp(-gamma) is not >= SNR_HIGH at t = 0 or not <= SNR_LOW at t = 1
    (components marked `constant`, whose data never varies, are left out of that test)."""
    sched = schedule.to(torch.float64)
    t = _check_grid()
    combos = _param_values(drawn_ranges)
    warnings: list[Diagnostic] = []
    log_wvar = np.log(np.asarray(wvar, dtype=np.float64))
    varying = np.ones(len(log_wvar), bool) if constant is None else ~np.asarray(constant, bool)
    for combo in combos or [()]:
        params = {n: torch.full((len(t),), v, dtype=torch.float64) for n, v in zip(drawn_ranges, combo)}
        where = (" with " + ", ".join(f"{n} = {v:g}" for n, v in zip(drawn_ranges, combo))) if combo else ""
        with torch.no_grad():
            gamma, slope = sched.gamma_and_slope(t, params)
        g, s = gamma.numpy(), slope.numpy()
        bad = ~(np.isfinite(g) & np.isfinite(s))
        if bad.any():
            k, i = np.argwhere(bad)[0]
            raise GudError.one("E302", f"gamma is not finite for component {i} at t = {t[k].item():.3f}{where}",
                               help="check logs of values <= 0, divisions by zero and overflowing exp")
        tol = 1e-9 * (1.0 + np.abs(g))
        dec = (s < -tol)[:-1] | (np.diff(g, axis=0) < -1e-9 * (1.0 + np.abs(g[1:])))
        if dec.any():
            k, i = np.argwhere(dec)[0]
            how = (f"dgamma/dt = {s[k, i]:.3g}" if s[k, i] < -tol[k, i] else
                   f"from {g[k, i]:.6g} to {g[k + 1, i]:.6g} by t = {t[k + 1].item():.4f}")
            raise GudError.one("E301", f"gamma decreases in t for component {i} at t = {t[k].item():.4f}"
                                       f"{where} ({how})",
                               help="gamma_i(t) must be non-decreasing: noise only grows in forward time")
        log_snr0 = np.where(varying, log_wvar - g[0], np.inf)
        log_snr1 = np.where(varying, log_wvar - g[-1], -np.inf)
        if log_snr0.min() < np.log(SNR_HIGH):
            i = int(np.argmin(log_snr0))
            warnings.append(Diagnostic("W301", f"component {i} starts with true SNR {_snr_text(log_snr0[i])} "
                                               f"at t = 0{where} (want >= {SNR_HIGH:g})", severity=WARNING,
                                       help="lower gamma at t = 0, or the data is never seen clearly"))
        if log_snr1.max() > np.log(SNR_LOW):
            i = int(np.argmax(log_snr1))
            warnings.append(Diagnostic("W302", f"component {i} ends with true SNR {_snr_text(log_snr1[i])} "
                                               f"at t = 1{where} (want <= {SNR_LOW:g})", severity=WARNING,
                                       help="raise gamma at t = 1, or the prior will not match the noised data"))
    return warnings


def _check_grid() -> torch.Tensor:
    """Sorted times in [0, 1], 0 and 1 included: GRID uniform points and GRID points of the
    golden-ratio sequence (k * 0.618... mod 1), which no periodic formula can alias with both."""
    golden = torch.remainder(torch.arange(1, GRID + 1, dtype=torch.float64) * ((math.sqrt(5.0) - 1.0) / 2.0), 1.0)
    return torch.sort(torch.cat([torch.linspace(0.0, 1.0, GRID, dtype=torch.float64), golden]))[0]


def _param_values(ranges: Mapping[str, tuple[float, float]], sweep: int = 9) -> list[tuple[float, ...]]:
    """Drawn-param values to check a schedule at: every corner of the box, its centre, and for
    each param `sweep` interior values with the others at their centres."""
    if not ranges:
        return []
    bounds = list(ranges.values())
    centre = tuple(0.5 * (lo + hi) for lo, hi in bounds)
    values = set(itertools.product(*bounds)) | {centre}
    for j, (lo, hi) in enumerate(bounds):
        for k in range(1, sweep + 1):
            values.add(centre[:j] + (lo + (hi - lo) * k / (sweep + 1),) + centre[j + 1:])
    return sorted(values)


def _snr_text(log_snr: float) -> str:
    """exp(log_snr) to 3 digits, or as exp(...) where it would overflow a float."""
    return f"{np.exp(log_snr):.3g}" if abs(log_snr) < 700 else f"exp({log_snr:.4g})"


def generation_order(schedule: CompiledSchedule, wvar: np.ndarray, params=None, grid: int = 1025) -> np.ndarray:
    """Component indices in generation order (first generated first).

    Generation runs forward time backwards, so a component noised later is generated
    earlier. A component's noising time is when its gamma is halfway between its values at
    t = 0 and t = 1; ties (e.g. a scalar gamma, or parallel lines) are broken by the mean
    true log-SNR over time (higher = visible longer = generated first), then by index."""
    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    sched = schedule.to(torch.float64)
    with torch.no_grad():
        gamma = sched.gamma_and_slope(t, params)[0].numpy()
    span = gamma[-1] - gamma[0]
    progress = (gamma - gamma[0]) / np.where(span > 0, span, 1.0)
    k = np.clip((progress < 0.5).sum(axis=0), 1, grid - 1)  # gamma is non-decreasing
    cols = np.arange(gamma.shape[1])
    p0, p1 = progress[k - 1, cols], progress[k, cols]
    frac = np.clip((0.5 - p0) / np.where(p1 > p0, p1 - p0, 1.0), 0.0, 1.0)
    t_mid = np.round((k - 1 + frac) / (grid - 1), 6)
    mean_log_snr = np.round(np.log(np.asarray(wvar, dtype=np.float64)) - gamma.mean(axis=0), 9)
    return np.lexsort((cols, -mean_log_snr, -t_mid))
