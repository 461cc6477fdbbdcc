"""Compile a checked schedule expression into a torch module, and check it numerically.

Input: the inlined `gamma` of a `CheckedSpec`, per-component feature vectors
(name -> float64 array of length D, e.g. from the fitted basis) with the data's shape
constants H, W, C, D among them (numbers: `builtins.shape_constants`; `stats.component_features`
gives both), and fixed param values.
Output: `CompiledSchedule`, an `nn.Module` with
    forward(t: (B,), params: {name: (B,), or (B, D) for `x_i`} | None) -> (gamma (B, D), beta (B, D)),
beta = sigmoid(gamma) * dgamma/dt. Everything that does not depend on t or on a drawn
param is folded at compile time into (1, D) buffers; dgamma/dt is a symbolic derivative
(the chain rule over the derivative rules of `builtins.FUNCTIONS`, `REDUCTIONS` and
`OPERATORS`, whose NumPy folds and torch code the folding and the emitter use too);
the remaining arithmetic is emitted as straight-line torch code (shown by `gud explain`),
so the module runs on CPU and CUDA and under `torch.compile`. It computes in float64
whatever dtype it is cast to (the precision `check_schedule` validates) and returns gamma and
beta in the dtype of the t it is given.

`check_schedule` evaluates it on a dense grid in float64 and raises `GudError`
E301 (gamma decreases in t), E302 (NaN / inf, or beyond float32's range); it returns warnings
W301 / W302 when the true SNR is not high at t = 0 or not low at t = 1. `check_weight` raises
E304 for a loss weight that is negative, not finite or zero everywhere; `check_support` raises
E303 when a sampling path leaves the training support (the states gamma takes over t and the
drawn params). `generation_order` and `motion` say in which order components are generated
and how many move at once.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from torch import nn

from gudlang import ast as A
from gudlang.builtins import CONSTANTS, FUNCTIONS, OPERATORS, REDUCTIONS, SHAPE_CONSTANTS, Function, Operator
from gudlang.diagnostics import WARNING, Diagnostic, GudError
from gudlang.lower import parse_program

SNR_HIGH = 10.0  # true SNR every component should exceed at t = 0
SNR_LOW = 0.1  # ... and stay below at t = 1
# ... where the marginal should be the prior N(0, I): W303 past PRIOR_BITS bits/dim of KL
# (components counted past PRIOR_KL nats each).
PRIOR_BITS = 0.01
PRIOR_KL = 0.05
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


def _is_reduction(e) -> bool:
    """Whether `e` reduces over components: `min`, `max`, `mean`, `sum` with one argument.
    `min` and `max` with two arguments are elementwise; the name alone does not tell."""
    return isinstance(e, A.Call) and e.func in REDUCTIONS and len(e.args) == 1


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
            if e.id in SHAPE_CONSTANTS:
                if e.id not in self.features:
                    raise ValueError(f"the shape constant {e.id} must be given with the features "
                                     "(builtins.shape_constants)")
                return self.const(self.features[e.id])
            return e  # t or a drawn param
        if isinstance(e, A.Neg):
            x = self.fold(e.operand)
            v = self.value(x)
            return self.const(OPERATORS["neg"].fold(v)) if v is not None else A.Neg(x)
        if isinstance(e, A.BinOp):
            left, right = self.fold(e.left), self.fold(e.right)
            lv, rv = self.value(left), self.value(right)
            if lv is not None and rv is not None:
                with np.errstate(all="ignore"):
                    return self.const(OPERATORS[e.op].fold(lv, rv))
            if e.op == "+":
                return self.reassociate(left, right)
            if left == ZERO and e.op in "*/" or right == ZERO and e.op == "*":
                # 0 * x and 0 / x are NaN where x is infinite (or 0): the value keeps them, so
                # that the checks see what the formula says (derivatives still drop them)
                return A.BinOp(e.op, left, right)
            return _simplify(A.BinOp(e.op, left, right), exact=True)
        if isinstance(e, A.Compare):
            return A.Compare(e.op, self.fold(e.left), self.fold(e.right))
        if isinstance(e, A.BoolOp):
            left, right = self.fold(e.left), self.fold(e.right)
            for const, other in ((left, right), (right, left)):
                v = self.truth(const)
                if v is not None and bool(np.all(v)) == bool(np.any(v)):  # the same for every component
                    # x and true, x or false -> x; x and false, x or true -> the constant
                    return other if (e.op == "and") == bool(np.all(v)) else const
            return A.BoolOp(e.op, left, right)
        if isinstance(e, A.Not):
            return A.Not(self.fold(e.operand))
        if isinstance(e, Between):
            return Between(self.fold(e.x), self.fold(e.lo), self.fold(e.hi))
        if isinstance(e, A.Call):
            f = e.func
            if f in self.features:
                return self.const(self.features[f])
            args = [self.fold(a) for a in e.args]
            if _is_reduction(e):
                v = self.value(args[0])
                if v is not None:
                    arr = np.broadcast_to(np.asarray(v, dtype=np.float64), (self.dim,))
                    return A.Num(float(REDUCTIONS[f].fold(arr)))
                if not self.depends_on_i(args[0]):  # the same value for every component
                    if f in ("min", "max"):
                        return args[0]
                    # D x or x, plus 0.0: a sum of zeros is +0, as torch and numpy sum it, even of -0s
                    total = _simplify(A.BinOp("*", A.Num(float(self.dim)), args[0])) if f == "sum" else args[0]
                    return A.BinOp("+", total, ZERO)
                return A.Call(f, (args[0],))
            if f == "where":
                cond = self.truth(args[0])
                if cond is not None:
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
                    return self.const(FUNCTIONS[f].fold(*values))
            return A.Call(f, tuple(args))
        raise AssertionError(e)

    def truth(self, c) -> np.ndarray | None:
        """The value (bool, scalar or (D,)) of a folded condition that depends on neither t nor
        a drawn param, or None."""
        if isinstance(c, A.Compare):
            left, right = self.value(c.left), self.value(c.right)
            if left is None or right is None:
                return None
            with np.errstate(invalid="ignore"):
                return OPERATORS[c.op].fold(left, right)
        if isinstance(c, A.BoolOp):
            left, right = self.truth(c.left), self.truth(c.right)
            if left is None or right is None:
                return None
            return OPERATORS[c.op].fold(left, right)
        if isinstance(c, A.Not):
            inner = self.truth(c.operand)
            return None if inner is None else OPERATORS["not"].fold(inner)
        return None

    def reassociate(self, left, right):
        """c1 + (c2 + x) -> (c1 + c2) + x for constants c: one full-size pass fewer."""
        for const, other in ((left, right), (right, left)):
            cv = self.value(const)
            if cv is None or not isinstance(other, A.BinOp) or other.op not in "+-":
                continue
            inner_left, inner_right = self.value(other.left), self.value(other.right)
            with np.errstate(all="ignore"):
                if inner_left is not None:  # c1 + (c2 +- x)
                    return _simplify(A.BinOp(other.op, self.const(cv + inner_left), other.right), exact=True)
                if inner_right is not None:  # c1 + (x +- c2)
                    c = cv + inner_right if other.op == "+" else cv - inner_right
                    return _simplify(A.BinOp("+", self.const(c), other.left), exact=True)
        return _simplify(A.BinOp("+", left, right), exact=True)

    def depends_on_i(self, e) -> bool:
        if isinstance(e, Vec):
            return True
        if isinstance(e, A.Name):
            return e.id in self.drawn and e.id.endswith("_i")  # a param drawn per component
        if _is_reduction(e):
            return False
        return any(self.depends_on_i(c) for _, c in A.children(e)) if hasattr(e, "__dataclass_fields__") \
            and not isinstance(e, (A.Num, A.Name)) else False

    # derivative ---------------------------------------------------------------------
    def diff(self, e) -> A.Expr | Vec:
        """d e / d t, simplified: the chain rule over the registries' derivative rules."""
        if isinstance(e, (A.Num, Vec)):
            return ZERO
        if isinstance(e, A.Name):
            return ONE if e.id == "t" else ZERO
        if isinstance(e, A.Neg):
            rule, args = OPERATORS["neg"], (e.operand,)
        elif isinstance(e, A.BinOp):
            rule, args = OPERATORS[e.op], (e.left, e.right)
        elif isinstance(e, A.Call):
            rule, args = REDUCTIONS[e.func] if _is_reduction(e) else FUNCTIONS[e.func], e.args
        else:
            raise AssertionError(e)
        conditions = rule.conditions if isinstance(rule, Function) else ()  # not differentiated
        slopes = [ZERO if k in conditions else self.diff(a) for k, a in enumerate(args)]
        return _derivative(rule, e, args, slopes)


def _derivative(rule: Function | Operator, value, args, slopes):
    """The derivative of `value` = rule(*args) whose arguments move by `slopes`: the first of
    the rule's derivative rules whose unmentioned argument derivatives are all zero."""
    if all(s == ZERO for s in slopes):
        return ZERO
    if not rule.derivative:
        raise AssertionError(f"{rule} has no derivative: the checker refuses its arguments moving in t")
    names = {"value": value, **dict(zip(rule.params, args)), **{f"d{p}": s for p, s in zip(rule.params, slopes)}}
    for text in rule.derivative[:-1]:
        body, mentioned = _rule(text)
        if all(s == ZERO for p, s in zip(rule.params, slopes) if f"d{p}" not in mentioned):
            return _build(body, names)
    return _build(_rule(rule.derivative[-1])[0], names)


@lru_cache(maxsize=None)
def _rule(text: str) -> tuple[A.Expr, frozenset[str]]:
    """A derivative rule (gud text) parsed, with the names it mentions."""
    program, _ = parse_program(f"gud 1\nrule = {text}\n", "<derivative rule>")
    body = program.statements[0].body
    return body, frozenset(n.id for _, n in A.walk(body) if isinstance(n, A.Name))


def _build(rule: A.Expr, names: Mapping[str, object]):
    """A derivative rule with its names bound, built with the simplifying constructors."""
    if isinstance(rule, A.Num):
        return A.Num(rule.value)
    if isinstance(rule, A.Name):
        return names[rule.id] if rule.id in names else A.Num(CONSTANTS[rule.id])
    if isinstance(rule, A.Neg):
        return _neg(_build(rule.operand, names))
    if isinstance(rule, A.BinOp):
        build = {"+": _add, "-": _sub, "*": _mul, "/": _div, "^": _pow}[rule.op]
        return build(_build(rule.left, names), _build(rule.right, names))
    if isinstance(rule, A.Compare):
        return A.Compare(rule.op, _build(rule.left, names), _build(rule.right, names))
    if isinstance(rule, A.Call):
        args = tuple(_build(a, names) for a in rule.args)
        if rule.func == "between":
            return Between(*args)
        if rule.func == "where" and args[1] == ZERO and args[2] == ZERO:
            return ZERO
        return A.Call(rule.func, args)
    raise AssertionError(rule)


ZERO, ONE = A.Num(0.0), A.Num(1.0)


def _simplify(e: A.BinOp, exact: bool = False):
    """Algebraic simplification. `exact`: only rewrites that keep every float64 value, the
    sign of a zero included (x + 0 is +0 where x is -0, so it is not x; 1 / x tells them apart)."""
    a, b = e.left, e.right
    if e.op == "+":
        if a == ZERO and not (exact and _positive_zero(a)):
            return b
        return a if b == ZERO and not (exact and _positive_zero(b)) else e
    if e.op == "-":
        if b == ZERO and not (exact and not _positive_zero(b)):
            return a
        return _neg(b) if a == ZERO and not (exact and _positive_zero(a)) else e
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


def _positive_zero(x: A.Num) -> bool:
    return math.copysign(1.0, x.value) > 0


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
    """Whether cond * (on - off) (+ off unless it is 0, as `_Emitter` writes it) gives exactly
    on and off: no overflow, no rounding, and the sign of a zero kept."""
    jump = on - off
    if not math.isfinite(jump):
        return False
    if off == 0.0:
        return _identical(jump, on) and _identical(0.0 * jump, off)
    return _identical(jump + off, on) and _identical(0.0 * jump + off, off)


def _identical(a: float, b: float) -> bool:
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


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
            return A.Num(float(OPERATORS[e.op].fold(e.left.value, e.right.value)))
    if e.op == "*":  # push constants into a where of constants: one pass instead of two
        for num, other in ((e.left, e.right), (e.right, e.left)):
            if isinstance(num, A.Num) and isinstance(other, A.Call) and other.func == "where" \
                    and all(isinstance(a, A.Num) for a in other.args[1:]):
                on, off = _mul(num, other.args[1]), _mul(num, other.args[2])
                return on if on == off else A.Call("where", (other.args[0], on, off))
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
            code = OPERATORS["neg"].torch.format(self.atom(e.operand))
        elif isinstance(e, (A.BinOp, A.Compare, A.BoolOp)):
            code = OPERATORS[e.op].torch.format(self.atom(e.left), self.atom(e.right))
        elif isinstance(e, A.Not):
            code = OPERATORS["not"].torch.format(self.atom(e.operand))
        elif isinstance(e, Between):
            code = f"({self.atom(e.x)} >= {self.atom(e.lo)}) & ({self.atom(e.x)} <= {self.atom(e.hi)})"
        elif isinstance(e, A.Call):
            args = [self.atom(a) for a in e.args]
            f = e.func
            on, off = e.args[1:] if f == "where" else (None, None)
            if _is_reduction(e):
                code = REDUCTIONS[f].torch.format(*args)
            elif isinstance(on, A.Num) and isinstance(off, A.Num) and _exact_step(on.value, off.value):
                # a step function: a cast and a multiply, no tensor constants to build
                code = f"{args[0]}.to(t.dtype) * {on.value - off.value!r}"
                if off.value != 0.0:
                    code += f" + {off.value!r}"
            elif f == "where" and _is_number(args[1]) and _is_number(args[2]):
                code = f"torch.where({args[0]}, {_tensor(args[1])}, {args[2]})"  # one tensor is needed
            elif f == "clip" and _is_number(args[1]) and _is_number(args[2]):
                code = f"torch.clamp({args[0]}, {args[1]}, {args[2]})"  # one pass for constant bounds
            else:
                code = FUNCTIONS[f].torch.format(*args, **{f"t{k}": _tensor(a) for k, a in enumerate(args)})
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
    (gamma (B, D), beta (B, D)) in t's dtype (a number or array t: float64; E003 for a t of
    more than one axis). It always computes in float64, the precision
    `check_schedule` validated (in float32, log(expm1(x)) for a small x is log(0) = -inf):
    the constants are float64 buffers that `.to(dtype)`, `.float()` or `.half()` leave in
    float64 (`_apply`), while `.to(device)` moves them as usual.
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
        self.forward_source = forward_source
        self._compile()

    def _compile(self) -> None:
        namespace: dict = {"torch": torch}
        # Code built from a checked AST: only numbers and names the emitter made appear in it.
        exec(compile(self.source + "\n" + self.forward_source, "<gud schedule>", "exec"), namespace)
        self._fn = namespace["schedule"]
        self._forward = namespace["schedule_forward"]
        self._value = namespace["schedule_value"]

    def __getstate__(self):
        """Pickled (torch.save, DataLoader workers) without the generated functions, which
        `__setstate__` compiles again from the source."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_fn", "_forward", "_value")}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._compile()

    def _apply(self, fn, recurse=True):
        def keep_float64(x: torch.Tensor) -> torch.Tensor:
            target = fn(x.new_empty(0))  # the device and dtype `fn` would give x
            return fn(x) if target.dtype == x.dtype else x.to(device=target.device)
        return super()._apply(keep_float64, recurse)

    def _args(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None) -> list:
        """[t (B, 1), constants (1, D)..., drawn params (B, 1)...] in float64."""
        buffers = self._buffers  # direct access: this runs at every training step
        ref = buffers["_ref"]
        t = t.reshape(-1, 1)
        if t.dtype != ref.dtype or t.device != ref.device:
            t = t.to(dtype=ref.dtype, device=ref.device)
        args = [t] + [buffers[name] for name in self._consts]
        for name in self.drawn:
            if params is not None and name in params:
                value = torch.as_tensor(params[name], dtype=ref.dtype, device=ref.device)
                if value.ndim == 2:  # drawn per component: (B, D)
                    args.append(value.expand(t.shape[0], self.dim))
                else:
                    args.append(value.reshape(-1, 1).expand(t.shape[0], 1))
            else:
                args.append(buffers[f"default_{name}"].expand(t.shape[0], 1))
        return args

    def gamma_and_slope(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None):
        """(gamma, dgamma/dt), both (B, D), in t's dtype."""
        t = _times(t)
        args = self._args(t, params)
        gamma, slope = self._fn(*args)
        shape = (args[0].shape[0], self.dim)
        dtype = _result_dtype(t)
        return _full(gamma, shape, args[0]).to(dtype), _full(slope, shape, args[0]).to(dtype)

    def value(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The formula's value (B, D) alone, in t's dtype (a loss weight, a sampling path): no
        derivative computed."""
        t = _times(t)
        args = self._args(t, params)
        return _full(self._value(*args), (args[0].shape[0], self.dim), args[0]).to(_result_dtype(t))

    def forward(self, t: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None):
        t = _times(t)
        dtype = _result_dtype(t)
        if self.drawn:
            gamma, beta = self._forward(*self._args(t, params))
            return gamma.to(dtype), beta.to(dtype)
        # the common case, inlined: no drawn params (this runs at every step)
        buffers = self._buffers
        ref = buffers["_ref"]
        t = t.reshape(-1, 1)
        if t.dtype != ref.dtype or t.device != ref.device:
            t = t.to(dtype=ref.dtype, device=ref.device)
        gamma, beta = self._forward(t, *[buffers[name] for name in self._consts])
        return gamma.to(dtype), beta.to(dtype)


def _times(t) -> torch.Tensor:
    """t as a tensor (a number or array as float64); E003 unless it has at most one axis (or is
    (B, 1)). A (B,) tensor, as every caller in gudlang gives, passes at once."""
    if torch.is_tensor(t) and t.dim() <= 1:
        return t
    if not torch.is_tensor(t):
        t = torch.as_tensor(np.asarray(t, dtype=np.float64))
    if t.dim() > 2 or (t.dim() == 2 and t.shape[1] != 1):
        raise GudError.one("E003", f"a schedule takes times t of shape (B,), got a tensor of shape {tuple(t.shape)}",
                           help="one time per example: gamma, beta = schedule(t) are then (B, D)")
    return t


def _result_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float64


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
    value_lines = list(em.lines)  # gamma alone: its lines come before the derivative's
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
           f"    shape = (t.shape[0], {dim})", "    return gamma.expand(shape), beta.expand(shape)", ""]
        + [f"def schedule_value({signature}):"] + value_lines + [f"    return {g_code}", ""])
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


def evaluate_condition(expr: A.Expr, features: Mapping[str, np.ndarray], fixed: Mapping[str, float],
                       dim: int) -> np.ndarray:
    """The value (D,) bool of a per-component condition (a given mask), folded as a schedule's
    conditions are."""
    folder = _Folder({k: np.asarray(v, dtype=np.float64) for k, v in features.items()}, fixed, (), dim)
    value = folder.truth(folder.fold(expr))
    if value is None:
        raise TypeError("evaluate_condition needs a condition without t or drawn params")
    return np.broadcast_to(np.asarray(value, dtype=bool), (dim,)).copy()


# --------------------------------------------------------------------------- numeric checks
FLOAT32_MAX = float(np.finfo(np.float32).max)
# |gamma| beyond which float32 sampling and likelihood break: exp(gamma) overflows past 88.7,
# and alpha = sqrt(sigmoid(-gamma)) is below 4e-18 (most schedules span about -15 .. 15).
GAMMA_LIMIT = 80.0
# A change of gamma over one cell of the check grid that the trapezoid rule on dgamma/dt misses
# by more than this (plus the most a kink inside the cell can miss) is a jump (E305).
JUMP = 0.5
# Halvings of a suspect cell at most: until neighbouring floats (about 52 in mid-range, over 1000
# towards t = 0, where gamma may approach its end as slowly as sqrt(log(1 / t)) does).
JUMP_HALVINGS = 1100
JUMP_SUSPECTS = 16  # suspect cells looked into per param values
ALL_CORNERS_UP_TO = 4  # drawn params: every corner of their box up to this many, then a Sobol set
SOBOL_POINTS = 64
SWEEP = 9  # interior values of each drawn param's sweep
BATCH_VALUES = 1 << 18  # gamma values evaluated at once (a row of D at least): a few MB per array, in cache


@np.errstate(all="ignore")  # overflow in a user's formula is reported as E302, not a RuntimeWarning
def check_schedule(schedule: CompiledSchedule, wvar: np.ndarray, drawn_ranges: Mapping[str, tuple[float, float]],
                   constant: np.ndarray | None = None, coverage: bool = True) -> list[Diagnostic]:
    """Evaluate on a dense t grid in float64 (a uniform grid plus a golden-ratio sequence, so
    that no period aliases with it) at the drawn params' values of `_param_values`, in batches
    of at most BATCH_VALUES values (`_evaluations`: memory does not grow with D).
    Narrower features than the grid can still slip through. Raise GudError E302 on NaN / inf,
    |gamma| > GAMMA_LIMIT or |beta| > 3.4e38 (training and sampling run in float32), E301 where
    gamma decreases, E305 where it jumps (`JUMP`), each naming component, t and param values.
    Return at most one warning per code, at the worst param values: W301 when the true
    SNR = wvar * exp(-gamma) is not >= SNR_HIGH at t = 0, W302 when not <= SNR_LOW at t = 1,
    W303 when it is but the marginal at t = 1 is still far from the prior N(0, I) (`prior_mismatch`)
    (components marked `constant`, whose data never varies, are left out of that test; with
    coverage = False no warnings: a training distribution whose sampling path is another
    formula). A param drawn per component takes one value for all components at a time."""
    names = list(drawn_ranges)
    t = _check_grid()
    combos = _param_values(drawn_ranges)
    log_wvar = np.log(np.asarray(wvar, dtype=np.float64))
    varying = np.ones(len(log_wvar), bool) if constant is None else ~np.asarray(constant, bool)
    worst0 = worst1 = None  # (log SNR, component, " with p = ...", count) of the worst start and end
    mismatch = None  # (KL bits/dim, component, its variance, " with p = ...", count) of the worst end
    offences = None
    for c, k0, (g, s) in _evaluations(schedule.gamma_and_slope, schedule.dim, t, names, combos):
        if k0 == 0:
            if offences is not None:
                offences.finish()
            where = (" with " + ", ".join(f"{n} = {v:g}" for n, v in zip(names, combos[c]))) if names else ""
            offences = _Offences(t, where, _gamma_at(schedule, names, combos[c]))
            log_snr0 = np.where(varying, log_wvar - g[0], np.inf)
            i0 = int(np.argmin(log_snr0))
            if worst0 is None or log_snr0[i0] < worst0[0]:
                worst0 = (log_snr0[i0], i0, where, int((log_snr0 < np.log(SNR_HIGH)).sum()))
        offences.add(k0, g, s)
        if k0 + len(g) == len(t):
            log_snr1 = np.where(varying, log_wvar - g[-1], -np.inf)
            i1 = int(np.argmax(log_snr1))
            if worst1 is None or log_snr1[i1] > worst1[0]:
                worst1 = (log_snr1[i1], i1, where, int((log_snr1 > np.log(SNR_LOW)).sum()))
            kl, variance = prior_mismatch(g[-1], log_wvar, varying)
            bits = kl.mean() / np.log(2)
            if mismatch is None or bits > mismatch[0]:
                j = int(np.argmax(kl))
                mismatch = (bits, j, variance[j], where, int((kl > PRIOR_KL).sum()))
    offences.finish()
    warnings: list[Diagnostic] = []
    if not coverage:
        return warnings
    dim = len(log_wvar)
    if worst0[0] < np.log(SNR_HIGH):
        log_snr, i, where, count = worst0
        warnings.append(Diagnostic("W301", f"{_how_many(count, dim)} start{'s' * (count == 1)} with true SNR below {SNR_HIGH:g} at "
                                           f"t = 0{where}, component {i} with {_snr_text(log_snr)}", severity=WARNING,
                                   help="lower gamma at t = 0, or the data is never seen clearly"
                                        + (" (gamma is log sigma^2 / alpha^2: -13 is sigma = 0.0015)"
                                           if count == int(varying.sum()) else "")))
    if worst1[0] <= np.log(SNR_LOW) and mismatch[0] > PRIOR_BITS:  # noised, but not to the prior's scale
        bits, i, variance, where, count = mismatch
        warnings.append(Diagnostic(
            "W303", f"the noised data at t = 1{where} are not the prior N(0, I) that sampling starts from: "
                    f"{_how_many(max(count, 1), dim)} have a variance far from 1 there (component {i}: "
                    f"{variance:.3g}), a mismatch of {bits:.3g} bits/dim", severity=WARNING,
            help="raise gamma at t = 1 where the data's variance is small (sigma_i(1) near 1 needs gamma_i(1) "
                 ">= 3; for soft(...) with the white prior, g_noise = 3 - log(min(wvar(i)))), or use "
                 "prior = matched"))
    if worst1[0] > np.log(SNR_LOW):
        log_snr, i, where, count = worst1
        warnings.append(Diagnostic("W302", f"{_how_many(count, dim)} end{'s' * (count == 1)} with true SNR above {SNR_LOW:g} at "
                                           f"t = 1{where}, component {i} with {_snr_text(log_snr)}", severity=WARNING,
                                   help="raise gamma at t = 1, or the prior will not match the noised data"))
    return warnings


def _gamma_at(schedule: CompiledSchedule, names: list[str], combo: tuple[float, ...]):
    """times (n,) -> gamma (n, D) as a float64 array, at the param values `combo`."""
    def gamma_at(times: np.ndarray) -> np.ndarray:
        ts = torch.as_tensor(times, dtype=torch.float64)
        params = {n: torch.full((len(ts),), v, dtype=torch.float64) for n, v in zip(names, combo)}
        with torch.no_grad():
            return schedule.gamma_and_slope(ts, params)[0].numpy()
    return gamma_at


def prior_mismatch(gamma1: np.ndarray, log_wvar: np.ndarray, varying: np.ndarray):
    """(KL (D,) in nats, variance (D,)) of each whitened component's marginal at t = 1,
    N(0, sigma^2 + alpha^2 wvar) for data of variance wvar (exact for Gaussian data), from the
    prior N(0, 1); 0 for components that never vary."""
    with np.errstate(over="ignore"):
        variance = 1.0 / (1.0 + np.exp(-gamma1)) + np.exp(log_wvar) / (1.0 + np.exp(gamma1))
    kl = 0.5 * (variance - 1.0 - np.log(variance))
    return np.where(varying, kl, 0.0), variance


def _how_many(count: int, dim: int) -> str:
    return f"all {dim} components" if count == dim else f"{count} of {dim} components"


def _evaluations(evaluate, dim: int, t: torch.Tensor, names: list[str], combos: list[tuple[float, ...]]):
    """(combo index, first row k0, arrays (rows, D)) of `evaluate(t, params)` (a tuple of
    tensors) at the times t and each param combo, in order: whole combos at once while they fit
    in BATCH_VALUES values, else runs of rows of one combo (one row at least per call)."""
    rows = max(1, BATCH_VALUES // dim)
    if rows >= len(t):
        per_batch = rows // len(t)
        for first in range(0, len(combos), per_batch):
            batch = combos[first:first + per_batch]
            params = {n: torch.tensor([c[j] for c in batch], dtype=torch.float64).repeat_interleave(len(t))
                      for j, n in enumerate(names)}
            with torch.no_grad():
                out = [x.reshape(len(batch), len(t), -1).numpy() for x in evaluate(t.repeat(len(batch)), params)]
            for b in range(len(batch)):
                yield first + b, 0, [x[b] for x in out]
        return
    for c, combo in enumerate(combos):
        for k0, k1 in row_runs(dim, len(t)):
            params = {n: torch.full((k1 - k0,), v, dtype=torch.float64) for n, v in zip(names, combo)}
            with torch.no_grad():
                yield c, k0, [x.numpy() for x in evaluate(t[k0:k1], params)]


def row_runs(dim: int, rows: int) -> list[tuple[int, int]]:
    """(start, stop) of runs of the rows of a (rows, dim) table, in order, each of at most
    BATCH_VALUES values (one row at least). Runs hold a multiple of 16 values where they can, so
    that torch's vectorized loops split them as they split the whole table: the same floats."""
    per_run = max(1, BATCH_VALUES // dim)
    align = 16 // math.gcd(dim, 16)
    if per_run >= align:
        per_run -= per_run % align
    return [(k0, min(rows, k0 + per_run)) for k0 in range(0, rows, per_run)]


def rows_of(evaluate, t: torch.Tensor, params, run: tuple[int, int]) -> list[np.ndarray]:
    """The outputs (rows, D) of `evaluate(t, params)` (a tuple of tensors) at the rows `run` of
    t; params given per time (a leading dimension len(t) > 1) are cut to them too."""
    k0, k1 = run
    if params:
        params = {n: v[k0:k1] if torch.is_tensor(v) and v.ndim and len(t) > 1 and v.shape[0] == len(t) else v
                  for n, v in params.items()}
    with torch.no_grad():
        return [x.numpy() for x in evaluate(t[k0:k1], params)]


def columns_of(schedule, dim: int, t: torch.Tensor, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gamma and beta (len(t), len(columns)) of `schedule` (D = dim) at the times t, for the
    components `columns` alone, evaluated in runs of rows (`rows_of`): memory does not grow with
    the number of times. Runs hold a multiple of 16 rows (of BATCH_VALUES values where
    that is 16 rows or more), so that a formula of t alone, (rows, 1) until it is broadcast,
    is vectorized as over all times at once: the same floats (`row_runs` cuts at 16 values)."""
    per_run = max(16, BATCH_VALUES // dim // 16 * 16)
    gamma, beta = np.empty((len(t), len(columns))), np.empty((len(t), len(columns)))
    for k0 in range(0, len(t), per_run):
        run = (k0, min(len(t), k0 + per_run))
        g, b = rows_of(lambda ts, _: schedule(ts), t, None, run)
        gamma[run[0]:run[1]], beta[run[0]:run[1]] = g[:, columns], b[:, columns]
    return gamma, beta


class _Offences:
    """E302 / E301 for gamma and its slope at one set of param values, fed a run of rows at a
    time in order (`add`); `finish` raises the first offence, as over the whole (T, D) table:
    the first non-finite value, else the first gamma, else the first beta beyond float32's
    range, else the first decrease, first in t, then in component."""

    def __init__(self, t: torch.Tensor, where: str, gamma_at=None):
        self.t, self.where, self.gamma_at = t, where, gamma_at  # gamma_at(times (n,)) -> gamma (n, D)
        self.found: dict[str, GudError] = {}  # kind -> the first offence of that kind
        self.first_decrease = None  # (message, component) of the first decrease: E301 at `finish`
        self.steepest = None  # (dgamma/dt, component, t) of the steepest decrease
        self.last = None  # (g, s) of the row before the next run: (1, D)

    def _stays(self, lo: float, hi: float, i: int) -> bool:
        """Whether component i's change over [lo, hi] stays above JUMP in the half that keeps
        the most of it down to neighbouring floats (a jump), or shrinks (continuous)."""
        g_lo, g_hi = self.gamma_at(np.array([lo, hi]))[:, i]
        for _ in range(JUMP_HALVINGS):
            if abs(g_hi - g_lo) <= JUMP:
                return False
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            g_mid = self.gamma_at(np.array([mid]))[0, i]
            if abs(g_mid - g_lo) >= abs(g_hi - g_mid):
                hi, g_hi = mid, g_mid
            else:
                lo, g_lo = mid, g_mid
        return abs(g_hi - g_lo) > JUMP

    def add(self, k0: int, g: np.ndarray, s: np.ndarray) -> None:
        """The rows k0, k0 + 1, ... of gamma g and its slope s (rows, D)."""
        t, where = self.t, self.where
        bad = ~(np.isfinite(g) & np.isfinite(s))
        if bad.any():
            k, i = np.argwhere(bad)[0]
            name = "gamma" if not np.isfinite(g[k, i]) else "dgamma/dt"
            raise GudError.one("E302", f"{name} is not finite for component {i} at t = {t[k0 + k].item():.3f}{where}",
                               help="check logs of values <= 0, divisions by zero and overflowing exp")
        with np.errstate(over="ignore"):
            beta = s / (1.0 + np.exp(-g))
        big = np.abs(g) > GAMMA_LIMIT
        if "gamma" not in self.found and big.any():
            k, i = np.argwhere(big)[0]
            self.found["gamma"] = GudError.one(
                "E302", f"gamma is {g[k, i]:.6g} for component {i} at t = {t[k0 + k].item():.3f}{where}, beyond "
                        f"+-{GAMMA_LIMIT:g}: in float32, as training and sampling run, exp(gamma) overflows and "
                        "alpha = sqrt(sigmoid(-gamma)) vanishes",
                help="keep gamma within +-80 (most schedules span about -15 .. 15)")
        big = np.abs(beta) > FLOAT32_MAX
        if "beta" not in self.found and big.any():
            k, i = np.argwhere(big)[0]
            self.found["beta"] = GudError.one(
                "E302", f"beta is {beta[k, i]:.3g} for component {i} at t = {t[k0 + k].item():.3f}{where}, beyond "
                        "the float32 range (+-3.4e38) of training and sampling",
                help="keep gamma's slope within float32's range")
        for check in (self._decreases, self._jumps):
            if self.last is not None:  # from the row before this run to its first row
                check(k0 - 1, np.concatenate([self.last[0], g[:1]]), np.concatenate([self.last[1], s[:1]]))
            check(k0, g, s)
        self.last = (g[-1:].copy(), s[-1:].copy())

    def _jumps(self, k0: int, g: np.ndarray, s: np.ndarray) -> None:
        """Note the first jump of gamma between rows k and k + 1 within g, s (rows k0, k0 + 1, ...):
        a change the trapezoid rule on its slope misses by more than JUMP plus what a kink can
        (a suspect), which halving the cell down to neighbouring floats does not shrink below
        JUMP (a steep but continuous gamma, such as a log near a singular end, shrinks)."""
        if "jump" in self.found or len(g) < 2 or self.gamma_at is None:
            return
        dt = np.diff(self.t[k0:k0 + len(g)].numpy())[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            missed = np.abs(np.diff(g, axis=0) - 0.5 * (s[:-1] + s[1:]) * dt)
            suspects = np.argwhere(missed > JUMP + 0.5 * (np.abs(s[:-1]) + np.abs(s[1:])) * dt)
        t = self.t
        for k, i in suspects[:JUMP_SUSPECTS]:
            if self._stays(float(t[k0 + k]), float(t[k0 + k + 1]), int(i)):
                break
        else:
            return
        self.found["jump"] = GudError.one(
            "E305", f"gamma jumps from {g[k, i]:.4g} to {g[k + 1, i]:.4g} between t = {t[k0 + k].item():.4f} and "
                    f"{t[k0 + k + 1].item():.4f} for component {i}{self.where}: the samplers and the likelihood "
                    "follow dgamma/dt, which does not see a jump",
            help="make gamma continuous in t: a steep ramp (clip(...), linear(...)) instead of where / floor / round")

    def _decreases(self, k0: int, g: np.ndarray, s: np.ndarray) -> None:
        """Note the first decrease of gamma from row k to k + 1 within g, s (rows k0, k0 + 1, ...),
        and the steepest negative slope over all rows (`steepest`)."""
        tol = 1e-9 * (1.0 + np.abs(g))
        dec = (s < -tol)[:-1] | (np.diff(g, axis=0) < -1e-9 * (1.0 + np.abs(g[1:])))
        if not dec.any():
            return
        t = self.t
        slopes = np.where(dec, s[:-1], np.inf)
        k, i = np.unravel_index(int(np.argmin(slopes)), slopes.shape)
        if slopes[k, i] < 0 and (self.steepest is None or slopes[k, i] < self.steepest[0]):
            self.steepest = (float(slopes[k, i]), int(i), t[k0 + k].item())
        if self.first_decrease is not None:
            return
        k, i = np.argwhere(dec)[0]
        how = (f"dgamma/dt = {s[k, i]:.3g}" if s[k, i] < -tol[k, i] else
               f"from {g[k, i]:.6g} to {g[k + 1, i]:.6g} by t = {t[k0 + k + 1].item():.4f}")
        self.first_decrease = (f"gamma decreases in t for component {i} at t = {t[k0 + k].item():.4f}"
                               f"{self.where} ({how})", int(i))

    def finish(self) -> None:
        """Raise the first offence found, if any."""
        if self.first_decrease is not None:
            message, first = self.first_decrease
            if self.steepest is not None and self.steepest[1] != first:
                slope, i, at = self.steepest
                message += f"; steepest: component {i} at t = {at:.4f} (dgamma/dt = {slope:.3g})"
            self.found["decrease"] = GudError.one(
                "E301", message, help="gamma_i(t) must be non-decreasing: noise only grows in forward time")
        for kind in ("gamma", "beta", "decrease", "jump"):
            if kind in self.found:
                raise self.found[kind]


def _check_grid() -> torch.Tensor:
    """Sorted times in [0, 1], 0 and 1 included: GRID uniform points and GRID points of the
    golden-ratio sequence (k * 0.618... mod 1), which no periodic formula can alias with both."""
    golden = torch.remainder(torch.arange(1, GRID + 1, dtype=torch.float64) * ((math.sqrt(5.0) - 1.0) / 2.0), 1.0)
    return torch.sort(torch.cat([torch.linspace(0.0, 1.0, GRID, dtype=torch.float64), golden]))[0]


def _param_values(ranges: Mapping[str, tuple[float, float]]) -> list[tuple[float, ...]]:
    """Drawn-param values to check a schedule at: the centre of their box; for each param its
    ends and SWEEP interior values with the others at their centres; and every corner of the
    box for up to ALL_CORNERS_UP_TO params (2^n of them), beyond that the two extreme corners
    and SOBOL_POINTS points of a scrambled Sobol sequence (seeded: the same every time)."""
    if not ranges:
        return [()]
    bounds = np.array(list(ranges.values()), dtype=np.float64)
    lo, hi = bounds[:, 0], bounds[:, 1]
    centre = 0.5 * (lo + hi)
    values = {tuple(centre)}
    for j in range(len(bounds)):
        for u in np.linspace(0.0, 1.0, SWEEP + 2):
            point = centre.copy()
            point[j] = lo[j] + (hi[j] - lo[j]) * u
            values.add(tuple(point))
    if len(bounds) <= ALL_CORNERS_UP_TO:
        values |= set(itertools.product(*bounds.tolist()))
    else:
        from scipy.stats import qmc
        sobol = qmc.Sobol(len(bounds), scramble=True, seed=0).random(SOBOL_POINTS)
        values |= {tuple(lo), tuple(hi)} | {tuple(p) for p in qmc.scale(sobol, lo, hi)}
    return sorted(tuple(float(v) for v in p) for p in values)


@np.errstate(all="ignore")
def check_weight(weight: CompiledSchedule, drawn_ranges: Mapping[str, tuple[float, float]],
                 ignore: np.ndarray | None = None) -> None:
    """E304 unless the loss weight is finite, >= 0 and within float32's range (training's dtype)
    on the check grid at every drawn-param value of `_param_values`, and positive in float32 on
    some component not in `ignore` (D,) bool (the given ones, which are never trained): a weight
    that is zero there trains nothing."""
    names = list(drawn_ranges)
    t = _check_grid()
    trained = np.ones(weight.dim, bool) if ignore is None else ~np.asarray(ignore, bool)
    combos = _param_values(drawn_ranges)
    positive = False
    for c, k0, (w,) in _evaluations(lambda ts, params: (weight.value(ts, params),), weight.dim, t, names, combos):
        bad = ~np.isfinite(w) | (w < 0) | (w > FLOAT32_MAX)
        if bad.any():
            k, i = np.argwhere(bad)[0]
            where = (" with " + ", ".join(f"{n} = {v:g}" for n, v in zip(names, combos[c]))) if names else ""
            raise GudError.one("E304", f"the loss weight is {w[k, i]:.6g} for component {i} at t = "
                                       f"{t[k0 + k].item():.4f}{where}: it must be finite, >= 0 and within "
                                       "float32's range (3.4e38)",
                               help="a weight multiplies each component's squared error; e.g. 1 + exp(gamma_i(t))")
        positive = positive or bool((w[:, trained].astype(np.float32) > 0).any())
    if not positive:
        which = "every component" if trained.all() else "every generated component (the given ones are not trained)"
        raise GudError.one("E304", f"the loss weight is 0 (in float32, as training computes it) for {which} and "
                                   "every t: training would learn nothing",
                           help="use a weight that is positive somewhere, e.g. 1 + exp(gamma_i(t))")


SUPPORT_PATH_POINTS = 129  # times on the sampling path whose states are checked
SUPPORT_T_CELLS = 512  # cells of training time
SUPPORT_PARAM_POINTS = 17  # grid points of one drawn param (fewer per axis with more params)
SUPPORT_VALUES = 1 << 20  # training gamma values held at once: the time cells are taken in runs


@np.errstate(all="ignore")
def check_support(train: CompiledSchedule, path: CompiledSchedule, drawn_ranges: Mapping[str, tuple[float, float]],
                  groups: Mapping[str, np.ndarray] | None = None, ignore: np.ndarray | None = None) -> None:
    """Raise E303 unless every state of the sampling path lies in the training support.

    The network is trained on the states gamma(t, params) for t in [0, 1] and the drawn params
    in their ranges, and only those; sampling along `path` (drawn params at their sampling
    values) asks it about the path's states. A path state p (D,) counts as inside when some
    cell of a grid over training time (SUPPORT_T_CELLS) and the drawn params' box puts every
    component's p_i within the range gamma_i spans at the cell's corners (exact where gamma is
    monotone in each variable over a cell, as in t it must be), up to float64 rounding. A param
    drawn per component (`groups[name]`: (D,) group ids) may sit in a different cell for each
    group of components. `ignore` (D,) bool marks components left out (given ones, pinned clean
    in both). Checked at SUPPORT_PATH_POINTS times of the path, against runs of time cells
    whose training values fit in SUPPORT_VALUES (memory does not grow with D beyond the path's
    states)."""
    s = torch.linspace(0.0, 1.0, SUPPORT_PATH_POINTS, dtype=torch.float64)
    keep = np.ones(train.dim, bool) if ignore is None else ~np.asarray(ignore, bool)
    p = np.empty((len(s), int(keep.sum())))
    for run in row_runs(path.dim, len(s)):
        p[run[0]:run[1]] = rows_of(lambda ts, params: (path.value(ts, params),), s, None, run)[0][:, keep]
    groups = dict(groups or {})
    shared = [n for n in drawn_ranges if n not in groups]
    free = [n for n in drawn_ranges if n in groups]
    per_axis = max(2, round(SUPPORT_PARAM_POINTS ** (1.0 / len(drawn_ranges)))) if drawn_ranges else 1
    axes = {n: np.linspace(lo, hi, per_axis) for n, (lo, hi) in drawn_ranges.items()}
    order, starts = _group_order(groups, free, keep)
    t = torch.linspace(0.0, 1.0, SUPPORT_T_CELLS + 1, dtype=torch.float64)
    # a run of time cells is searched as the whole grid is: gamma is non-decreasing in t, so a
    # component's cells within a run are the run's share of its cells over the whole grid
    evaluations = 2 ** len(shared) * math.prod(len(axes[n]) for n in free)  # per time, in `_cell_ranges`
    per_run = max(1, SUPPORT_VALUES // (evaluations * p.shape[1]) - 1)
    found = np.zeros(len(p), bool)
    low = np.full(p.shape[1], np.inf)
    high = np.full(p.shape[1], -np.inf)
    for shared_cell in _cells([len(axes[n]) for n in shared]):
        for k0 in range(0, SUPPORT_T_CELLS, per_run):
            times = t[k0:k0 + per_run + 1]
            lo_cell, hi_cell = _cell_ranges(train, times, shared, shared_cell, free, axes, keep)  # (E, K, D)
            run_low, run_high = lo_cell.min(axis=(0, 1)), hi_cell.max(axis=(0, 1))
            low, high = np.minimum(low, run_low), np.maximum(high, run_high)
            pending = np.flatnonzero(~found)
            for first in range(0, len(pending), 16):
                chunk = pending[first:first + 16]
                q, tol = p[chunk], _support_tol(p[chunk])
                near = ((q >= run_low - tol) & (q <= run_high + tol)).all(axis=1)  # else not in this run
                if near.any():
                    found[chunk[near]] = _inside(q[near], tol[near], lo_cell, hi_cell, order, starts)
            if found.all():
                return
    k = int(np.argmin(found))
    tol = _support_tol(p[k])
    outside = np.flatnonzero((p[k] < low - tol) | (p[k] > high + tol))
    where = f"at t = {s[k].item():.3f}"
    components = np.flatnonzero(keep)
    if len(outside):
        i = int(outside[0])
        raise GudError.one("E303", f"the sampling path leaves the training support {where}: it puts component "
                                   f"{components[i]} at gamma = {p[k, i]:.6g}, but training only sees it in "
                                   f"[{low[i]:.6g}, {high[i]:.6g}]",
                           help="the network only learns the states gamma takes in training: widen gamma's range "
                                "or keep the path inside it")
    raise GudError.one("E303", f"the sampling path leaves the training support {where}: each component's gamma "
                               "is one training sees, but no training time and param values give them all at once",
                       help="the network only learns the states gamma takes in training: make the path a "
                            "re-timing of gamma, or draw the noise levels per component (param u_i ~ uniform)")


def _support_tol(p: np.ndarray) -> np.ndarray:
    """How far outside the training range a path state p may lie: float64 rounding."""
    return 1e-6 * (1.0 + np.abs(p)) + 1e-9


def _inside(p: np.ndarray, tol: np.ndarray, lo: np.ndarray, hi: np.ndarray, order, starts) -> np.ndarray:
    """(P,) bool: whether some time cell k puts every component's p_i within [lo - tol, hi + tol]
    of cell k, where each group of components (order, starts; None: no per-component params)
    may pick its own cell e of the per-component params. lo, hi: (E, K, D), non-decreasing in k
    (gamma is non-decreasing in t), so component i allows a run of cells, from the first with
    hi >= p_i - tol to the last with lo <= p_i + tol: binary searches, not a scan."""
    runs = []
    below, above = torch.as_tensor((p - tol).T.copy()), torch.as_tensor((p + tol).T.copy())  # (D, P)
    for e in range(lo.shape[0]):
        first = torch.searchsorted(torch.as_tensor(np.ascontiguousarray(hi[e].T)), below, right=False).numpy()
        last = torch.searchsorted(torch.as_tensor(np.ascontiguousarray(lo[e].T)), above, right=True).numpy() - 1
        if order is None:
            return first.max(axis=0) <= last.min(axis=0)
        runs.append((np.maximum.reduceat(first[order], starts, axis=0),  # (G, P): the group's run
                     np.minimum.reduceat(last[order], starts, axis=0)))
    cells = lo.shape[1]
    cover = np.zeros((len(p), len(starts), cells + 1), np.int32)  # runs starting minus ending at k
    points, groups = np.meshgrid(np.arange(len(p)), np.arange(len(starts)), indexing="ij")
    for first, last in runs:
        first, last = first.T, last.T  # (P, G)
        good = first <= last
        np.add.at(cover, (points[good], groups[good], first[good]), 1)
        np.add.at(cover, (points[good], groups[good], last[good] + 1), -1)
    covered = np.cumsum(cover[..., :cells], axis=-1) > 0  # (P, G, K)
    return covered.all(axis=1).any(axis=-1)


def _cells(sizes: list[int]):
    """Index tuples of the cells of a grid with `sizes` points per axis."""
    return itertools.product(*[range(n - 1) for n in sizes])


def _group_order(groups: Mapping[str, np.ndarray], free: list[str], keep: np.ndarray):
    """(component order, group starts) that put components sharing every per-component draw
    next to each other, for `np.logical_and.reduceat`."""
    if not free:
        return None, None
    key = np.stack([np.asarray(groups[n])[keep] for n in free], axis=1)
    _, ids = np.unique(key, axis=0, return_inverse=True)
    order = np.argsort(ids.reshape(-1), kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(ids.reshape(-1)[order]) != 0])
    return order, starts


def _cell_ranges(train: CompiledSchedule, t: torch.Tensor, shared, shared_cell, free, axes, keep):
    """(lo, hi), each (E, K, D): the range gamma spans over the corners of every cell of time
    (K) and of the per-component params' grid (E), in one cell of the shared params."""
    shared_corners = list(itertools.product(*[(axes[n][c], axes[n][c + 1]) for n, c in zip(shared, shared_cell)]))
    free_points = list(itertools.product(*[axes[n] for n in free]))
    values = np.empty((len(shared_corners), len(free_points), len(t), int(keep.sum())))
    for a, corner in enumerate(shared_corners):
        for b, point in enumerate(free_points):
            params = {n: torch.full((len(t),), v, dtype=torch.float64)
                      for n, v in list(zip(shared, corner)) + list(zip(free, point))}
            with torch.no_grad():
                values[a, b] = train.value(t, params).numpy()[:, keep]
    lo = np.minimum(values[:, :, :-1], values[:, :, 1:]).min(axis=0)  # over time cells, shared corners
    hi = np.maximum(values[:, :, :-1], values[:, :, 1:]).max(axis=0)
    if free:  # over the corners of each cell of the per-component params' grid
        shape = tuple(len(axes[n]) for n in free)
        lo, hi = lo.reshape(shape + lo.shape[1:]), hi.reshape(shape + hi.shape[1:])
        for axis in range(len(free)):
            cut = lambda x, a, b: x[(slice(None),) * axis + (slice(a, b),)]
            lo = np.minimum(cut(lo, None, -1), cut(lo, 1, None))
            hi = np.maximum(cut(hi, None, -1), cut(hi, 1, None))
        lo, hi = lo.reshape((-1,) + lo.shape[len(free):]), hi.reshape((-1,) + hi.shape[len(free):])
    return lo, hi


def _snr_text(log_snr: float) -> str:
    """exp(log_snr) to 3 digits, or as exp(...) where it would overflow a float."""
    return f"{np.exp(log_snr):.3g}" if abs(log_snr) < 700 else f"exp({log_snr:.4g})"


def generation_order(schedule: CompiledSchedule, wvar: np.ndarray, params=None, grid: int = 1025) -> np.ndarray:
    """Component indices in generation order (first generated first).

    Generation runs forward time backwards, so a component noised later is generated
    earlier. A component's noising time is when its gamma is halfway between its values at
    t = 0 and t = 1; ties (e.g. a scalar gamma, or parallel lines) are broken by the mean
    true log-SNR over time (higher = visible longer = generated first), then by index. The
    (grid, D) table of gamma is evaluated in runs of rows (`row_runs`), twice over."""
    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    dim = schedule.dim
    runs = row_runs(dim, grid)

    def gamma_of(ts, p):
        return schedule.gamma_and_slope(ts, p)[:1]

    ends = {run: rows_of(gamma_of, t, params, run)[0] for run in (runs[0], runs[-1])}
    first = ends[runs[0]][0]
    span = ends[runs[-1]][-1] - first
    scale = np.where(span > 0, span, 1.0)
    below = np.zeros(dim, np.int64)  # times with progress < 0.5, per component
    total = first.copy()  # the sum over time, row by row (as gamma.sum(axis=0) adds)
    for run in runs:
        gamma = ends.pop(run) if run in ends else rows_of(gamma_of, t, params, run)[0]
        below += ((gamma - first) / scale < 0.5).sum(axis=0)
        for row in gamma[1:] if run[0] == 0 else gamma:
            total += row
    k = np.clip(below, 1, grid - 1)  # gamma is non-decreasing
    cols = np.arange(dim)
    p0, p1 = np.empty(dim), np.empty(dim)  # progress at k - 1 and at k
    for k0, k1 in runs:
        progress = (rows_of(gamma_of, t, params, (k0, k1))[0] - first) / scale
        for rows, out in ((k - 1, p0), (k, p1)):
            hit = (rows >= k0) & (rows < k1)
            out[hit] = progress[rows[hit] - k0, cols[hit]]
    frac = np.clip((0.5 - p0) / np.where(p1 > p0, p1 - p0, 1.0), 0.0, 1.0)
    t_mid = np.round((k - 1 + frac) / (grid - 1), 6)
    mean_log_snr = np.round(np.log(np.asarray(wvar, dtype=np.float64)) - total / grid, 9)
    return np.lexsort((cols, -mean_log_snr, -t_mid))


MOTION_BETA = 1e-3  # beta above which a component counts as in motion


@dataclass(frozen=True)
class Motion:
    """Which components move when (`motion`): `times` (G,), `counts` (G,) of components in
    motion, `never_noised` (D,) bool, and `in_motion` (G, D) bool, kept packed to bits."""

    times: np.ndarray
    counts: np.ndarray
    never_noised: np.ndarray
    packed: np.ndarray  # in_motion, np.packbits along components

    @property
    def in_motion(self) -> np.ndarray:
        """(G, D) bool: whether each component is in motion at each time."""
        return np.unpackbits(self.packed, axis=1, count=len(self.never_noised)).astype(bool)

    @property
    def busiest(self) -> tuple[int, float]:
        """(the most components in motion at one time, the first time with that many)."""
        k = int(np.argmax(self.counts))
        return int(self.counts[k]), float(self.times[k])


def motion(schedule: CompiledSchedule, params=None, grid: int = 2048) -> Motion:
    """Where each component is in motion, at the midpoints of `grid` equal cells of [0, 1]
    (float64; off the grid's own points, so a kink that lands on one, where a clip's derivative
    counts both ends, does not count a starting and a finishing component at once).

    A component is in motion at t where beta_i(t) > MOTION_BETA, or where gamma_i(t) lies
    strictly between gamma_i(0) and gamma_i(1) (so a slow component at very low gamma, whose
    beta = sigmoid(gamma) dgamma/dt is tiny, still counts). It is never noised when its gamma
    has the same value at every time: it is never generated either, and has no place in the
    generation order. Evaluated in runs of rows (`row_runs`)."""
    t = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    dim = schedule.dim
    ends, _ = rows_of(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64), params, (0, 2))
    first, last = ends[0], ends[1]
    lo, hi = np.minimum(first, last), np.maximum(first, last)
    counts = np.empty(grid, np.int64)
    packed = np.empty((grid, (dim + 7) // 8), np.uint8)
    never_noised = first == last
    for k0, k1 in row_runs(dim, grid):
        g, b = rows_of(schedule, t, params, (k0, k1))
        in_motion = (b > MOTION_BETA) | ((g > lo) & (g < hi))
        counts[k0:k1] = in_motion.sum(axis=1)
        packed[k0:k1] = np.packbits(in_motion, axis=1)
        never_noised &= np.all(g == first, axis=0)
    return Motion(t.numpy(), counts, never_noised, packed)
