"""Check a spec: resolve names, inline definitions, and infer shapes.

Input: source text (or a `Spec` with its `SourceMap`) and parameter overrides.
Output: `CheckedSpec`, whose schedule `gamma` (and custom prior scale) is one expression in
which every user definition and library function is inlined: it mentions only numbers,
`t`, params, features `f(i)`, reductions, elementwise built-ins and the shape constants
H, W, C, D (names, scalar: their values come with the features once the data are loaded).
What exists is read from the registries of `gudlang.builtins`.

Shapes: every expression depends on a subset of {t, i, p}: `t` diffusion time, `i` the
component, `p` a param drawn per training example. Scalar = {}, per-time = {t},
per-component = {i}, per-time-and-component = {t, i}. A param drawn per component too
(`param u_i ~ uniform(0, 1)`, optionally `group = ...`) is {i, p}.

Formulas (`FORMULAS`): the training schedule `gamma_i(t)` (t ~ U(0, 1) in training: its
formula is the training distribution of noise states), an optional sampling path `path_i(t)`
(default: gamma itself), an optional loss weight `weight_i(t)` (default 1), the prior scale and
the given mask.

Errors (all collected): E201 unknown function, E202 unknown name, E204 / E205 / E206
arguments, E207 feature not offered by the basis, E208 shape, E209 recursion,
E212 reserved name, E213 value of the wrong kind, E214 misuse of `i`, plus those of
`gudlang.spec` and `gudlang.parser`.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from gudlang import ast as A
from gudlang.builtins import (BASIS_FEATURES, BLOCKS, CONSTANTS, FEATURES, FUNCTIONS, LIBRARY, LIBRARY_ARGUMENTS,
                              LIBRARY_BASES, PRELUDE, REDUCTIONS, RESERVED, SHAPE_CONSTANTS,
                              known_function_names)
from gudlang.diagnostics import WARNING, Diagnostic, GudError
from gudlang.lower import parse_program
from gudlang.spec import (ConstantError, FixedParam, Spec, constant, did_you_mean, invalid_value, setting_name,
                          validate_program)

Shape = frozenset  # subset of {"t", "i", "p"}
SCALAR: Shape = frozenset()


def describe_shape(shape: Shape) -> str:
    parts = {frozenset(): "scalar", frozenset("t"): "per-time", frozenset("i"): "per-component",
             frozenset("ti"): "per-time-and-component"}
    base = parts[frozenset(shape) - {"p"}]
    return base + (", per-example" if "p" in shape else "")


@dataclass(frozen=True)
class FormulaSlot:
    """A formula-valued declaration: its name (the key of `CheckedSpec.formulas` and of the
    hash), how a spec writes it, whether it is a condition or a number, what it must and may
    depend on (of {t, i, p}), and whether every spec needs one."""

    name: str
    what: str
    example: str
    condition: bool
    must: Shape
    may: Shape
    required: bool = False


# Every formula a spec can declare. The checker resolves each one here, hashing and the
# resolved spec iterate this table, so a new formula cannot be forgotten by either.
FORMULAS: tuple[FormulaSlot, ...] = (
    FormulaSlot("gamma", "schedule", "gamma_i(t) = linear(t)", condition=False,
                must=frozenset("t"), may=frozenset("tip"), required=True),
    FormulaSlot("path", "sampling path", "path_i(t) = edm_path(t)", condition=False,
                must=frozenset("t"), may=frozenset("tip")),
    FormulaSlot("weight", "loss weight", "weight_i(t) = 1 + exp(gamma_i(t))", condition=False,
                must=SCALAR, may=frozenset("tip")),
    FormulaSlot("prior_scale", "prior scale", "prior = scale(sqrt(var(i)))", condition=False,
                must=SCALAR, may=frozenset("i")),
    FormulaSlot("given", "given mask", "given_i = col(i) < 0.5", condition=True,
                must=SCALAR, may=frozenset("i")),
)


def is_condition(expr: A.Expr) -> bool:
    """Whether an inlined expression is a condition (true / false) rather than a number."""
    return isinstance(expr, (A.Compare, A.BoolOp, A.Not))


@dataclass(frozen=True)
class CheckedSpec:
    """A spec whose names are resolved: each declared formula (`FORMULAS`) is one inlined
    expression over numbers, t, params, features, reductions and elementwise built-ins."""

    spec: Spec
    formulas: dict[str, A.Expr]
    shapes: dict[str, Shape]
    features: frozenset[str]
    drawn: tuple[str, ...]
    source: A.SourceMap = field(compare=False)
    overrides: tuple[tuple[str, str], ...] = ()
    groups: dict[str, A.Expr] = field(default_factory=dict)  # per-component param -> its group
    warnings: tuple[Diagnostic, ...] = field(default=(), compare=False)  # W201: unused look-alikes

    @property
    def drawn_ranges(self) -> dict[str, tuple[float, float]]:
        """(lo, hi) of each drawn param, in `drawn` order."""
        return {n: (self.spec.params[n].lo, self.spec.params[n].hi) for n in self.drawn}

    @property
    def drawn_means(self) -> dict[str, float]:
        """The value each drawn param takes when it is not drawn (sampling): its mean."""
        return {n: self.spec.params[n].mean for n in self.drawn}

    @property
    def per_component(self) -> tuple[str, ...]:
        """The drawn params drawn per component (named `x_i`), in `drawn` order."""
        return tuple(n for n in self.drawn if n.endswith("_i"))

    @property
    def fixed_params(self) -> dict[str, float]:
        return {k: p.value for k, p in self.spec.params.items() if isinstance(p, FixedParam)}

    @property
    def gamma(self) -> A.Expr:
        return self.formulas["gamma"]

    @property
    def gamma_shape(self) -> Shape:
        return self.shapes["gamma"]

    @property
    def path(self) -> A.Expr | None:
        """The sampling path, or None when sampling follows gamma."""
        return self.formulas.get("path")

    @property
    def weight(self) -> A.Expr | None:
        """The loss weight, or None for the unweighted loss."""
        return self.formulas.get("weight")

    @property
    def prior_scale(self) -> A.Expr | None:
        return self.formulas.get("prior_scale")

    @property
    def given(self) -> A.Expr | None:
        return self.formulas.get("given")


# --------------------------------------------------------------------------- definitions
@dataclass
class _Def:
    name: str
    node: A.Define
    path: tuple  # of the Define statement
    library: bool = False

    @property
    def is_function(self) -> bool:
        return self.node.formals is not None


@lru_cache(maxsize=1)
def _library() -> dict[str, _Def]:
    program, _ = parse_program(PRELUDE, "<library>")
    return {st.name: _Def(st.name, st, ("statements", k), library=True)
            for k, st in enumerate(program.statements) if isinstance(st, A.Define)}


def _base(name: str) -> str:
    return name[:-2] if name.endswith("_i") and len(name) > 2 else name


def _reserved_kind(name: str) -> str:
    """What a reserved name is, for E212."""
    if name in LIBRARY:
        return "library function"
    if name in SHAPE_CONSTANTS:
        return f"built-in constant ({SHAPE_CONSTANTS[name]})"
    return "built-in name"


class _Resolver:
    def __init__(self, spec: Spec, smap: A.SourceMap):
        self.spec, self.smap = spec, smap
        self.errors: dict[tuple, Diagnostic] = {}
        self.reported = 0  # errors reported, repeats included: a formula is clean if none came in it
        self.refused: set[str] = set()  # definitions refused by name (E212): no "unknown name" after
        self.defs: dict[str, _Def] = {}
        self.values: dict[str, tuple[A.Expr, Shape]] = {}
        self.stack: list[str] = []
        # (function, its arguments, the one) whose default is being resolved
        self.defaulting: list[tuple[str, list[str], str]] = []
        self.features_used: set[str] = set()
        self.basis_kind = spec.basis.kind
        self.offered = set(BASIS_FEATURES[self.basis_kind])
        if spec.basis.kind == "pca" and spec.basis.channels == "mix":
            self.offered.discard("chan")
        self.library = _library()
        for k, d in spec.definitions:
            path = ("statements", k)
            base = _base(d.name)
            if d.name in RESERVED or base in RESERVED or d.name in LIBRARY or base in LIBRARY:
                self.error("E212", f"`{d.name}` is a {_reserved_kind(base)}", path + ("name",), "reserved",
                           help="choose another name")
                self.refused.add(base)
                continue
            if base in spec.params or d.name in spec.params or base + "_i" in spec.params:
                self.error("E203", f"`{d.name}` is both a param and a definition", path + ("name",),
                           "defined again here")
                continue
            if base in self.defs:
                self.error("E203", f"`{d.name}` is defined twice", path + ("name",), "defined again here")
                continue
            names = [f.name for f in d.formals or ()]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                self.error("E203", f"`{d.name}` names its argument `{repeated[0]}` twice", path + ("name",),
                           "repeated argument", help="give every argument its own name")
            self.defs[base] = _Def(d.name, d, path)
        for name in spec.params:
            if name in RESERVED or name in LIBRARY:
                self.error("E212", f"`{name}` is a {_reserved_kind(name)} and cannot be a param",
                           self._param_path(name), "reserved", help="choose another name")
            elif name.endswith("_i") and _base(name) in spec.params:  # `u` would name either
                later = max(name, _base(name), key=lambda n: self._param_path(n)[1:2])
                self.error("E203", f"params `{_base(name)}` and `{name}` have the same name (`{_base(name)}` "
                                   f"refers to `{name}` too)", self._param_path(later), "same name",
                           help="rename one of them")

    def _param_path(self, name: str):
        return self.smap.anchors.get(("param_name", name), ())

    # ------------------------------------------------------------------ reporting
    def error(self, code, message, path, label="", help=None, at=None):
        span = self.smap.span(at if at is not None else path)
        d = Diagnostic(code, message, span=span, label=label, help=help, path=self.smap.path)
        self.errors.setdefault((code, message, span), d)
        self.reported += 1

    # ------------------------------------------------------------------ resolution
    def resolve(self, expr: A.Expr, path, scope: Mapping[str, tuple[A.Expr, Shape]],
                site=None) -> tuple[A.Expr, Shape]:
        """Inline and shape-check `expr`. `site` is the user path that errors inside library
        code are reported at."""
        at = site if site is not None else path
        if isinstance(expr, A.Num):
            return A.Num(expr.value, expr.text), SCALAR
        if isinstance(expr, (A.Str, A.List)):
            what = "a string" if isinstance(expr, A.Str) else "a list"
            self.error("E213", f"{what} cannot be used in a formula", path, "not a number", at=site)
            return A.Num(0.0), SCALAR
        if isinstance(expr, A.Name):
            return self.name(expr.id, path, scope, at)
        if isinstance(expr, A.Neg):
            e, s = self.number(expr.operand, path + ("operand",), scope, site, "`-`")
            return A.Neg(e), s
        if isinstance(expr, A.BinOp):
            left, ls = self.number(expr.left, path + ("left",), scope, site, f"`{expr.op}`")
            right, rs = self.number(expr.right, path + ("right",), scope, site, f"`{expr.op}`")
            return A.BinOp(expr.op, left, right), ls | rs
        if isinstance(expr, A.Compare):
            left, ls = self.number(expr.left, path + ("left",), scope, site, f"`{expr.op}`")
            right, rs = self.number(expr.right, path + ("right",), scope, site, f"`{expr.op}`")
            return A.Compare(expr.op, left, right), ls | rs
        if isinstance(expr, A.BoolOp):
            left, ls = self.condition(expr.left, path + ("left",), scope, site, f"`{expr.op}`")
            right, rs = self.condition(expr.right, path + ("right",), scope, site, f"`{expr.op}`")
            return A.BoolOp(expr.op, left, right), ls | rs
        if isinstance(expr, A.Not):
            e, s = self.condition(expr.operand, path + ("operand",), scope, site, "`not`")
            return A.Not(e), s
        if isinstance(expr, A.Call):
            return self.call(expr, path, scope, site)
        raise AssertionError(type(expr))

    def number(self, expr: A.Expr, path, scope, site, user: str) -> tuple[A.Expr, Shape]:
        """Resolve an operand that must be a number, not a condition (E213)."""
        e, shape = self.resolve(expr, path, scope, site)
        if is_condition(e):
            self.error("E213", f"{user} needs a number here, not a condition", path, "a condition",
                       help="turn a condition into a number with where(condition, 1, 0)", at=site)
            return A.Num(0.0), shape
        return e, shape

    def condition(self, expr: A.Expr, path, scope, site, user: str) -> tuple[A.Expr, Shape]:
        """Resolve an operand that must be a condition (a comparison, and, or, not) (E213)."""
        e, shape = self.resolve(expr, path, scope, site)
        if not is_condition(e):
            word = f"`{expr.id}` is the number {1 if expr.id == 'true' else 0} in a formula: " \
                if isinstance(expr, A.Name) and expr.id in ("true", "false") else ""
            self.error("E213", f"{user} needs a condition here, not a number", path, "not a condition",
                       help=f"{word}write a comparison, e.g. col(i) < 0.5", at=site)
            return A.Compare("<", A.Num(0.0), A.Num(1.0)), shape
        return e, shape

    def name(self, name: str, path, scope, at) -> tuple[A.Expr, Shape]:
        if name in scope:
            return scope[name]
        if name in CONSTANTS:
            return A.Num(CONSTANTS[name]), SCALAR
        if name in SHAPE_CONSTANTS:  # known once the data are: the compiler substitutes them
            return A.Name(name), SCALAR
        if name not in self.spec.params and name + "_i" in self.spec.params:
            name += "_i"  # `u` for the per-component param `u_i`, as `l` for `l_i`
        if name in self.spec.params:
            p = self.spec.params[name]
            if isinstance(p, FixedParam):
                return A.Name(name), SCALAR
            return A.Name(name), frozenset("ip") if name.endswith("_i") else frozenset("p")
        base = _base(name)
        if base in self.defs:
            d = self.defs[base]
            if d.is_function:
                self.error("E208", f"`{name}` is a function; call it", path, "used as a value",
                           help=f"write {d.name}({', '.join(f.name for f in d.node.formals)})", at=at)
                return A.Num(0.0), SCALAR
            return self.value(d)
        if name == "t":
            self.error("E202", "`t` is not defined here", path, "unknown name",
                       help="t is the argument of a schedule: define a function of it, e.g. h_i(t) = ...",
                       at=at)
        elif name == "i":
            self.error("E214", "`i` names the component and is only a feature's argument", path,
                       "not a value", help="use a feature such as rank(i) or var(i)", at=at)
        elif name in FEATURES:
            self.error("E214", f"feature `{name}` needs the component", path, "missing (i)",
                       help=f"write {name}(i)", at=at)
        elif ("param_name", name) in self.smap.anchors or base in self.refused:
            pass  # a declared param or a definition that was refused: that error is already reported
        else:
            candidates = set(scope) | set(self.spec.params) | set(self.defs) | set(CONSTANTS) \
                | set(SHAPE_CONSTANTS) | {d.name for d in self.defs.values()}
            stem = name[:-2] if name.endswith("_i") else None
            if stem in self.spec.params:  # a_i for a param a: it has one value, not one per component
                hint = f"did you mean `{stem}`? a param has no `_i`"
            elif self.defaulting and name in self.defaulting[-1][1]:
                function, _, argument = self.defaulting[-1]
                hint = (f"a default cannot use another argument (`{name}`): pass `{argument}` when calling "
                        f"{function}(...), or compute it in the body")
            else:
                hint = did_you_mean(name, candidates) or "define it with `name = ...` or `param name = ...`"
            self.error("E202", f"unknown name `{name}`", path, "not defined", at=at, help=hint)
        return A.Num(0.0), SCALAR

    def value(self, d: _Def) -> tuple[A.Expr, Shape]:
        base = _base(d.name)
        if base in self.values:
            return self.values[base]
        if base in self.stack:
            self.error("E209", f"`{d.name}` is defined in terms of itself", d.path + ("name",),
                       "recursive definition", help=" -> ".join(self.stack + [base]))
            return A.Num(0.0), SCALAR
        self.stack.append(base)
        expr, shape = self.resolve(d.node.body, d.path + ("body",), {})
        self.stack.pop()
        if "i" in shape and not d.name.endswith("_i"):
            self.error("E208", f"`{d.name}` varies with the component", d.path + ("name",),
                       "per-component value", help=f"name it `{d.name}_i` to say so")
        self.values[base] = (expr, shape)
        return expr, shape

    def call(self, call: A.Call, path, scope, site) -> tuple[A.Expr, Shape]:
        fat = site if site is not None else path + ("func",)
        f = call.func
        nargs = len(call.args)
        if f in FEATURES:
            if call.kwargs or nargs != 1 or call.args[0] != A.Name("i"):
                self.error("E214", f"a feature takes the component index: write {f}(i)", path,
                           "expected (i)", at=site)
            elif f not in self.offered:
                offers = ", ".join(sorted(self.offered))
                why = " (PCA offers chan only with channels = \"separate\")" if f == "chan" and \
                    self.basis_kind == "pca" else ""
                self.error("E207", f"the {self.basis_kind} basis has no feature `{f}`{why}", fat,
                           "not offered", help=f"{self.basis_kind} offers: {offers}")
            self.features_used.add(f)
            return A.Call(f, (A.Name("i"),)), frozenset("i")
        if f in REDUCTIONS and nargs == 1 and not call.kwargs:
            arg, shape = self.number(call.args[0], path + ("args", 0), scope, site, f"`{f}`")
            if "t" in shape and f in {"max", "min"}:
                self.error("E208", f"{f}(...) over components of a time-dependent value is not supported",
                           path, "depends on t", help="reduce a value that does not depend on t", at=site)
            return A.Call(f, (arg,)), shape - {"i"}
        if f in REDUCTIONS and f not in FUNCTIONS:  # mean, sum: exactly one positional argument
            for k, a in enumerate(call.args):
                self.resolve(a, path + ("args", k), scope, site)
            self.error("E204" if not call.kwargs else "E205",
                       f"`{f}` takes one positional argument (the value to reduce over components)",
                       fat, "wrong arguments", help=f"write {f}(x)")
            return A.Num(0.0), SCALAR
        if f in FUNCTIONS:
            fn = FUNCTIONS[f]
            if call.kwargs:
                self.error("E205", f"`{f}` takes no keyword arguments", path + ("kwargs", 0), "keyword",
                           at=site, help=f"to compare, write `{call.kwargs[0].name} == ...`"
                           if fn.conditions else None)
            want = fn.arity
            if nargs != want:
                extra = " (or one argument: the reduction over components)" if f in REDUCTIONS else ""
                self.error("E204", f"`{f}` takes {want} argument(s){extra}, got {nargs}", fat,
                           "wrong number of arguments", help=f"{fn.signature}: {fn.doc}")
                return A.Num(0.0), SCALAR
            args, shape = [], SCALAR
            for k, a in enumerate(call.args):
                if k in fn.conditions:
                    e, s = self.condition(a, path + ("args", k), scope, site, f"{f}(...)")
                else:
                    e, s = self.number(a, path + ("args", k), scope, site, f"`{f}`")
                args.append(e)
                shape |= s
            return A.Call(f, tuple(args)), shape
        target = self.defs.get(_base(f)) or self.library.get(f)
        if target is None or not target.is_function:
            for k, a in enumerate(call.args):  # report errors inside the arguments too
                if a != A.Name("i"):  # f(i) of an unknown f: one error is enough
                    self.resolve(a, path + ("args", k), scope, site)
            if target is not None:
                self.error("E208", f"`{f}` is a value, not a function", fat, "not a function",
                           help=f"write `{f}` without arguments")
            elif _base(f) not in self.refused:  # a refused definition is reported at its name
                self.error("E201", f"unknown function `{f}`", fat, "not a known function",
                           help=did_you_mean(f, known_function_names() | {d.name for d in self.defs.values()
                                                                           if d.is_function})
                           or "built-in functions: " + ", ".join(sorted(known_function_names())))
            return A.Num(0.0), SCALAR
        return self.inline(target, call, path, scope, site)

    def argument(self, d: _Def, expr: A.Expr, path, scope, site) -> tuple[A.Expr, Shape]:
        """An argument of a call to `d`: library functions take numbers only; a user's own
        function may take a condition (its body is checked where the condition is used)."""
        if d.library:
            return self.number(expr, path, scope, site, f"`{d.name}`")
        return self.resolve(expr, path, scope, site)

    def library_argument(self, function: str, name: str, expr: A.Expr, path, site) -> None:
        """E210 when argument `name` of library `function` is a constant (or a fixed param)
        outside its range (`LIBRARY_ARGUMENTS`), or a drawn param whose range reaches outside
        it; other values (features, a helper's arguments) are left to the numeric checks."""
        rule = LIBRARY_ARGUMENTS.get((function, name))
        if rule is None:
            return
        fixed = {n: p.value for n, p in self.spec.params.items() if isinstance(p, FixedParam)}
        drawn = self.spec.params.get(expr.id) if isinstance(expr, A.Name) else None
        if drawn is not None and not isinstance(drawn, FixedParam):  # its range must lie inside the rule's
            bad = [v for v in (drawn.lo, drawn.hi) if not rule[1](float(v))]
            if bad:
                self.error("E210", f"argument `{name}` of `{function}` must be {rule[0]}, but param `{expr.id}` is "
                                   f"drawn from uniform({drawn.lo:g}, {drawn.hi:g}), which reaches {bad[0]:g}",
                           path, "out of range", at=site)
            return
        try:
            value = constant(expr, path, fixed)
        except ConstantError:
            return
        if isinstance(value, (bool, int, float)) and not rule[1](float(value)):
            shown = str(value).lower() if isinstance(value, bool) else f"{value:g}"
            self.error("E210", f"argument `{name}` of `{function}` must be {rule[0]}, got {shown}", path,
                       "out of range", at=site)

    def inline(self, d: _Def, call: A.Call, path, scope, site) -> tuple[A.Expr, Shape]:
        at = site if site is not None else path
        formals = d.node.formals
        names = [fm.name for fm in formals]
        if len(call.args) > len(formals):
            self.error("E204", f"`{d.name}` takes {len(formals)} argument(s), got {len(call.args)}",
                       path + ("args", len(formals)), "extra argument",
                       help=f"{d.name}({', '.join(names)})", at=site)
        bound: dict[str, tuple[A.Expr, Shape]] = {}
        for k, a in enumerate(call.args[:len(formals)]):
            bound[names[k]] = self.argument(d, a, path + ("args", k), scope, site)
        for k, kw in enumerate(call.kwargs):
            kpath = path + ("kwargs", k, "value")
            if kw.name not in names:
                self.error("E205", f"`{d.name}` has no argument `{kw.name}`", path + ("kwargs", k),
                           "unknown argument", help=did_you_mean(kw.name, names)
                           or f"{d.name}({', '.join(names)})", at=site)
                continue
            if kw.name in bound:
                by_position = kw.name in names[:len(call.args)]
                self.error("E205", f"argument `{kw.name}` of `{d.name}` given twice"
                           + (" (by position and by name)" if by_position else ""), path + ("kwargs", k),
                           "given again", at=site,
                           help=f"positional arguments fill {d.name}({', '.join(names)}) in order, wherever "
                                "they stand in the call: name the later ones too" if by_position else None)
                continue
            bound[kw.name] = self.argument(d, kw.value, kpath, scope, site)
        if d.library and LIBRARY_BASES.get(d.name, self.basis_kind) != self.basis_kind:
            self.error("E207", f"`{d.name}` is defined for the {LIBRARY_BASES[d.name]} basis, not "
                               f"{self.basis_kind}", at, f"needs basis = {LIBRARY_BASES[d.name]}()",
                       help=f"use basis = {LIBRARY_BASES[d.name]}() (the formula reads its features)")
            return A.Num(0.0), SCALAR  # its body would only add errors about those features
        if d.library:
            given = [(names[k], a, path + ("args", k)) for k, a in enumerate(call.args[:len(formals)])]
            given += [(kw.name, kw.value, path + ("kwargs", k, "value")) for k, kw in enumerate(call.kwargs)]
            for name, expr, apath in given:
                self.library_argument(d.name, name, expr, apath, site)
        if d.name in self.stack:
            through = self.stack[self.stack.index(d.name) + 1:]
            via = f" through {', '.join(f'`{n}`' for n in through)}" if through else ""
            self.error("E209", f"`{d.name}` calls itself{via}", at, "recursive call",
                       help=" -> ".join(self.stack + [d.name]))
            return A.Num(0.0), SCALAR
        inner_site = site if site is not None else (path if d.library else None)
        for k, fm in enumerate(formals):
            if fm.name in bound:
                continue
            if fm.default is None:
                self.error("E206", f"`{d.name}` needs argument `{fm.name}`", at, "missing argument",
                           help=f"{d.name}({', '.join(names)})")
                bound[fm.name] = (A.Num(0.0), SCALAR)
            else:
                self.defaulting.append((d.name, names, fm.name))  # a default sees no other argument
                bound[fm.name] = self.resolve(fm.default, d.path + ("formals", k, "default"), {},
                                              inner_site)
                self.defaulting.pop()
        self.stack.append(d.name)
        result = self.resolve(d.node.body, d.path + ("body",), bound, inner_site)
        self.stack.pop()
        return result


# --------------------------------------------------------------------------- entry points
def apply_overrides(text_overrides: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((text_overrides or {}).items()))


def check_spec(spec: Spec, smap: A.SourceMap, overrides: tuple[tuple[str, str], ...] = (),
               prior_errors: list[Diagnostic] = ()) -> CheckedSpec:
    """Spec -> CheckedSpec, or GudError with every problem found (after `prior_errors`,
    those of the earlier stages)."""
    r = _Resolver(spec, smap)
    for base, d in r.defs.items():  # report errors in every definition, used or not
        if base == "gamma":
            continue  # the schedule is resolved below, with t bound
        if d.is_function:
            scope = {fm.name: (A.Name(fm.name), SCALAR) for fm in d.node.formals}
            if d.node.formals and [fm.name for fm in d.node.formals] == ["t"]:
                scope["t"] = (A.Name("t"), frozenset("t"))
            r.stack.append(d.name)
            r.resolve(d.node.body, d.path + ("body",), scope)
            r.stack.pop()
        else:
            r.value(d)
    groups = _resolve_groups(spec, r)
    formulas: dict[str, A.Expr] = {}
    shapes: dict[str, Shape] = {}
    for slot in FORMULAS:
        located = _locate(slot, spec, smap, r)
        if located is None:
            continue
        body, path, scope, name_path = located
        outer, r.features_used = r.features_used, set()
        before = r.reported  # not len(r.errors): an error met again in a helper is stored once
        expr, shape = r.resolve(body, path, scope)
        clean = r.reported == before
        _check_formula(slot, expr, shape, path, name_path, clean, r)
        r.features_used |= outer
        formulas[slot.name], shapes[slot.name] = expr, shape
    if r.errors or prior_errors:
        errors = list(prior_errors) + list(r.errors.values())
        errors.sort(key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))
        raise GudError(errors)
    drawn = tuple(sorted(n for n, p in spec.params.items() if not isinstance(p, FixedParam)
                         and any(_mentions(formulas[f], n) for f in ("gamma", "path", "weight") if f in formulas)))
    groups = {n: g for n, g in groups.items() if n in drawn}
    return CheckedSpec(spec, formulas, shapes, frozenset(r.features_used), drawn, smap, overrides, groups,
                       _unused_look_alikes(spec, r))


def _unused_look_alikes(spec: Spec, r: "_Resolver") -> tuple[Diagnostic, ...]:
    """W201 for each definition that nothing uses and whose name is close to a declaration's
    (`wieght(t)`, `path_j(t)`): most likely a misspelt schedule, path, weight or given mask,
    which would otherwise be silently ignored."""
    slots = {slot.name for slot in FORMULAS}
    used: set[str] = set()
    roots = [d.node.body for d in r.defs.values() if not d.library]
    roots += [p.group for p in spec.params.values() if getattr(p, "group", None) is not None]
    roots += [spec.prior.s] if spec.prior.kind == "scale" else []
    for root in roots:
        for _, node in A.walk(root):
            if isinstance(node, A.Name):
                used.add(_base(node.id))
            elif isinstance(node, A.Call):
                used.add(_base(node.func))
    out = []
    for base, d in r.defs.items():
        if d.library or base in slots or base in used:
            continue
        stem = base.split("_")[0]
        hint = f"did you mean `{stem}_i`?" if stem in slots else did_you_mean(base, slots)
        if hint:
            out.append(Diagnostic("W201", f"`{d.name}` is defined but never used", span=r.smap.span(d.path + ("name",)),
                                  label="never used", help=f"{hint} (a declaration must be spelt exactly)",
                                  path=r.smap.path, severity=WARNING))
    return tuple(out)


def _resolve_groups(spec: Spec, r: "_Resolver") -> dict[str, A.Expr]:
    """The inlined `group = ...` expression of each per-component param that has one: a number
    per component (components with equal values share a draw), not depending on t or a param."""
    groups = {}
    for name, p in spec.params.items():
        if isinstance(p, FixedParam) or p.group is None:
            continue
        path = r.smap.anchors.get(("param_group", name), ())
        before = r.reported
        expr, shape = r.resolve(p.group, path, {})
        if r.reported > before:
            continue
        if is_condition(expr):
            r.error("E213", f"the group of `{name}` must be a number per component, not a condition", path,
                    "a condition", help="for example group = col(i)")
        elif shape - frozenset("i"):
            r.error("E208", f"the group of `{name}` must be per-component: it must not depend on "
                            f"{' or '.join(_DEPENDS[x] for x in sorted(shape - frozenset('i')))}", path,
                    describe_shape(shape), help="group components by features, e.g. group = col(i)")
        else:
            groups[name] = expr
    return groups


def _locate(slot: FormulaSlot, spec: Spec, smap: A.SourceMap, r: "_Resolver"):
    """(body, path, scope, name path) of a formula in the spec, or None when it is absent
    (a required one missing, or declared with the wrong head, is reported)."""
    if slot.name == "prior_scale":
        if spec.prior.kind != "scale":
            return None
        path = smap.anchors.get(("prior", "s"), smap.anchors.get(("prior",), ()))
        return spec.prior.s, path, {}, path
    d = r.defs.get(slot.name)
    if d is None:
        refused = any(("refused_definition", name) in smap.anchors for name in (slot.name, slot.name + "_i"))
        if slot.required and not refused:  # a refused one (set twice) is reported already
            r.error("E206", f"the spec has no {slot.what}", (), help=f"add one, e.g. `{slot.example}`")
        return None
    want = [("t", None)] if slot.name in ("gamma", "path", "weight") else None
    formals = None if d.node.formals is None else [(fm.name, fm.default) for fm in d.node.formals]
    if formals != want:
        r.error("E210", f"the {slot.what} must be declared as `{d.name}{'(t)' if want else ''} = ...`",
                d.path + ("name",), "expected (t)" if want else "expected no arguments")
        return None
    scope = {"t": (A.Name("t"), frozenset("t"))} if want else {}
    return d.node.body, d.path + ("body",), scope, d.path + ("name",)


def _check_formula(slot: FormulaSlot, expr: A.Expr, shape: Shape, path, name_path, clean: bool,
                   r: "_Resolver") -> None:
    """The rules of one formula slot: a number or a condition, and what it may depend on."""
    if clean and is_condition(expr) != slot.condition:
        kind = "a condition (a comparison, and, or, not)" if slot.condition else "a number"
        r.error("E213", f"the {slot.what} must be {kind}", path, "wrong kind",
                help=f"for example `{slot.example}`")
    declared = r.defs[slot.name].name if slot.name in r.defs else None
    if declared == slot.name and "i" in shape and slot.name in ("gamma", "path", "weight"):
        r.error("E208", f"the {slot.what} varies with the component", name_path, "per-component",
                help=f"name it `{slot.name}_i(t)` to say so")
    must = slot.must
    if slot.name == "gamma" and "path" in r.defs:
        # with a sampling path, the training states may be drawn by params alone (one noise
        # level per token, as in Diffusion Forcing): gamma must vary with t or a drawn param
        must = SCALAR
        if clean and not shape & frozenset("tp"):
            r.error("E208", "the schedule depends on neither t nor a drawn param: training would see one "
                            "noise state", path, "constant",
                    help="make gamma rise with t, or draw the noise level, e.g. linear(u_i) with "
                         "param u_i ~ uniform(0, 1)")
    if clean and not must <= shape:
        drawn_only = slot.name == "gamma" and "p" in shape  # noise drawn per example, as in Diffusion Forcing
        r.error("E208", f"the {slot.what} does not depend on t", path, "constant in t",
                help="a schedule drawn by params alone needs a sampling path that rises with t, e.g. "
                     "`path_i(t) = linear(t)`" if drawn_only else
                f"{slot.name} must rise from low noise at t = 0 to high noise at t = 1, e.g. linear(t)")
    if slot.name == "path" and clean:
        for name in sorted(n for n, p in r.spec.params.items()
                           if n.endswith("_i") and not isinstance(p, FixedParam) and _mentions(expr, n)):
            r.error("E208", f"the sampling path uses `{name}`, a param drawn per component in training: "
                            "sampling needs one value", path, "per-component param",
                    help=f"use a scalar param, or a feature such as rank(i), in the path")
    if shape - slot.may:
        allowed = describe_shape(slot.may)
        r.error("E208", f"the {slot.what} must be {allowed}: it must not depend on "
                        f"{' or '.join(_DEPENDS[x] for x in sorted(shape - slot.may))}", path,
                describe_shape(shape))
    if slot.name == "prior_scale" and "wvar" in r.features_used:
        r.error("E208", "the prior scale cannot use wvar(i), which is defined by the prior",
                path, "circular", help="use var(i)")


_DEPENDS = {"t": "t", "i": "the component", "p": "drawn params"}


def _mentions(expr: A.Expr, name: str) -> bool:
    return any(isinstance(n, A.Name) and n.id == name for _, n in A.walk(expr))


def _parse_override(key: str, value: str) -> Any:
    """The value of `-s key=value`: a number, true / false, a list or a quoted string written as
    in a spec (`[0.9, 0.99]`, `"cuda:0"`), or else the text itself (a word, `cuda:0`). GudError
    E003 for a list or string that a spec would not read. A number is one as a spec writes it
    (not Python's `1_000` or `nan`), a whole one read exactly (a seed beyond 2^53)."""
    number = re.fullmatch(r"[+-]?(([0-9]+)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", value.strip())
    if number is not None:
        whole = number.group(2) is not None and number.group(3) is None and number.group(4) is None
        return int(value) if whole and len(value) < 400 else float(value)
    try:
        if not math.isfinite(float(value)):
            return float(value)  # inf, nan: refused as not finite
    except ValueError:
        pass
    low = value.lower()
    if low in {"true", "false"}:
        return low == "true"
    if value.strip().startswith(("[", '"')):
        return _spec_constant(key, value.strip())
    return value


def _spec_constant(key: str, value: str) -> Any:
    """`value` read as the right-hand side of a spec setting, folded as a spec folds it."""
    what = "a list" if value.startswith("[") else "a string"
    example = "-s 'train.betas=[0.9, 0.99]'" if what == "a list" else "-s 'runtime.device=\"cuda:0\"'"
    reason = ""
    try:
        program, _ = parse_program(f"gud 1\ntrain {{ value = {value}\n}}\n")
        (block,) = program.statements
        (setting,) = block.settings
        return constant(setting.value, ())
    except ConstantError as e:
        reason = f" ({e.message})"
    except (GudError, ValueError):  # not an expression; more than one statement or setting
        pass
    raise GudError.one("E003", f"override `{key}={value}` is not {what} written as in a spec{reason}",
                       help=f"for example {example}; items are numbers or words separated by commas")


# Declarations whose constructor options `-s` may set (`-s network.channels=64`); the prior is a
# formula (`scale(...)`) or a word, not options.
OVERRIDABLE_DECLARATIONS = ("data", "basis", "network")


def override_spec(spec: Spec, overrides: Mapping[str, str]) -> Spec:
    """Apply `-s key=value` overrides: `name=value` for params (a drawn param becomes fixed),
    `block.key=value` for settings (train, sample, runtime) and for the options of the data,
    basis and network declarations. Raises GudError E003 / E202 / E210."""
    if not overrides:
        return spec
    data = spec.model_dump()
    data["definitions"] = spec.definitions
    if spec.prior.kind == "scale":
        data["prior"] = {"kind": "scale", "s": spec.prior.s}
    for name, p in spec.params.items():  # `group` is an expression, left out of the dump
        if not isinstance(p, FixedParam):
            data["params"][name]["group"] = p.group
    errors = []
    for key, raw in overrides.items():
        try:
            value = _parse_override(key, raw)
        except GudError as e:
            errors.extend(e.diagnostics)
            continue
        if "." in key:
            block, _, setting = key.partition(".")
            if block in OVERRIDABLE_DECLARATIONS and (setting not in data[block] or setting == "kind"):
                options = [k for k in data[block] if k != "kind"]
                errors.append(Diagnostic("E202", f"cannot override `{key}`: {block} = {data[block]['kind']}(...) "
                                                 f"has no option `{setting}`",
                                         help=did_you_mean(setting, options) or
                                         f"its options: {', '.join(options) or 'none'}"))
                continue
            if block not in BLOCKS + OVERRIDABLE_DECLARATIONS or setting not in data[block]:
                errors.append(Diagnostic("E202", f"cannot override `{key}`: no such setting",
                                         help="settings are train.*, sample.*, runtime.*, and the options of "
                                              "data.*, basis.*, network.*; params are overridden by name"))
                continue
            data[block][setting] = value
        elif key in spec.params:
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2 ** 1000:
                value = float(value)
            if not isinstance(value, float) or not math.isfinite(value):
                errors.append(Diagnostic("E210", f"override `{key}={raw}` is not a finite number"))
                continue
            data["params"][key] = {"kind": "fixed", "value": value}
        elif key in BLOCKS + OVERRIDABLE_DECLARATIONS + ("prior",):  # a section, not a param
            options = [k for k in data[key] if k != "kind"] if key != "prior" else []
            errors.append(Diagnostic("E202", f"cannot override `{key}` as a whole" + (
                ": the prior is a formula or a word of the spec, not an option" if key == "prior" else ""),
                help="edit the spec" if not options else
                f"override one of its {'settings' if key in BLOCKS else 'options'} by name, e.g. "
                f"-s {key}.{options[0]}=..."))
        else:
            settings = [f"{block}.{key}" for block in BLOCKS + OVERRIDABLE_DECLARATIONS
                        if isinstance(data.get(block), dict) and key in data[block] and key != "kind"]
            errors.append(Diagnostic("E202", f"cannot override `{key}`: the spec has no param `{key}`",
                                     help=f"settings are named with their block: "
                                          f"{' or '.join(f'-s {s}={raw}' for s in settings)}" if settings else
                                     did_you_mean(key, spec.params) or f"params: {', '.join(spec.params) or 'none'}"))
    if errors:
        raise GudError(errors)
    from pydantic import ValidationError
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise GudError(_override_diagnostics(e.errors(), data, overrides)) from None


def _override_diagnostics(errs, data: dict, overrides: Mapping[str, str]) -> list[Diagnostic]:
    """E210 for each setting an override made invalid, in the words of a spec's own errors."""
    out = []
    for err in errs:
        message, help = invalid_value(err, data, override=True)
        key = setting_name(err["loc"])
        given = f"override `{key}={overrides[key]}`: " if key in overrides else "after the overrides, "
        diagnostic = Diagnostic("E210", given + message, help=help)
        if diagnostic not in out:
            out.append(diagnostic)
    return out


def check_text(text: str | bytes, path: str | None = None,
               overrides: Mapping[str, str] | None = None) -> CheckedSpec:
    """Source text -> CheckedSpec: parse, lower, validate, override, check."""
    try:
        return _check_text(text, path, overrides)
    except RecursionError:
        raise GudError.one("E107", "definitions nest too deeply to check", path=path,
                           help="flatten long chains of definitions") from None


def _check_text(text, path, overrides) -> CheckedSpec:
    program, smap = parse_program(text, path)
    spec, errors = validate_program(program, smap)
    if spec is None:
        raise GudError(errors)
    try:
        spec = override_spec(spec, overrides or {})
    except GudError as e:
        raise GudError(errors + e.with_path(path).diagnostics) from None
    return check_spec(spec, smap, apply_overrides(overrides), errors)


def check_file(path: str, overrides: Mapping[str, str] | None = None) -> CheckedSpec:
    """Read and check a spec file; unreadable files give E001."""
    return check_text(read_source(path), path, overrides)


SPEC_TEXT = "<spec text>"  # how diagnostics and run.json name a spec given as text


def is_spec_text(value) -> bool:
    """Whether `value`, given where a spec's path is expected, is the spec's text instead: a str
    holding a line break (a spec has at least two lines; a path has none)."""
    return isinstance(value, str) and "\n" in value


def spec_source(spec) -> tuple[str, str, str]:
    """(text, name for diagnostics, stem for the run folder) of a spec given as the path of a
    .gud file or as its text (`is_spec_text`)."""
    if is_spec_text(spec):
        return spec, SPEC_TEXT, "spec"
    return read_source(str(spec)).decode("utf-8", errors="replace"), str(spec), Path(spec).stem


def read_source(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(2_000_001)
    except FileNotFoundError:
        raise GudError.one("E001", f"no such file: {path}", help="check the path") from None
    except IsADirectoryError:
        raise GudError.one("E001", f"{path} is a directory, not a spec file") from None
    except OSError as e:
        raise GudError.one("E001", f"cannot read {path}: {e.strerror}") from None
