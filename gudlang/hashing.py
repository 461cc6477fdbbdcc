"""Semantic hashes of checked specs (Dhall / Nix style: hash the normal form, not the text).

Input: a `CheckedSpec` and the data fingerprint (`gudlang.data.DataSet.fingerprint`).
Output: `model_hash` (data, basis, prior, schedule, params, network, train) and `full_hash`
(model + sample settings), strings tagged with their scheme, `gud1-sha256:<hex>`.
The normal form has every default filled in, every definition and library call inlined,
fixed params substituted and numeric sub-expressions folded, so comments, layout, statement
order, definition names and `1` vs `1.0` never change a hash. Runtime settings never enter.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from gudlang import LANGUAGE_VERSION
from gudlang import ast as A
from gudlang.check import FORMULAS, CheckedSpec
from gudlang.spec import FixedParam

SCHEME = "gud1-sha256"
# Where a formula sits in the payload when not at the top level under its own name (the
# prior scale replaces the raw expression of `prior = scale(...)`).
FORMULA_PLACES = {"prior_scale": ("prior", "s")}
# Spec fields that deliberately never enter the model hash, and why (a test checks that every
# other field does).
UNHASHED = {
    "version": "the language version is hashed as `language`",
    "definitions": "they enter through the formulas (FORMULAS), inlined and folded",
    "params": "fixed params are substituted into the formulas; drawn ones are hashed",
    "data.path": "where the data live; the fingerprint hashes what they are",
    "data.folder": "where the data live; the fingerprint hashes what they are",
    "data.root": "where the data live; the fingerprint hashes what they are",
    "sample": "how to sample: only in the full hash",
    "runtime": "how to run, never what is computed",
}

_FOLD = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else math.copysign(math.inf, a) if a else math.nan,
    "^": lambda a, b: float(a) ** b if a >= 0 or float(b).is_integer() else math.nan,
}


def normal_form(expr: A.Expr, fixed: dict[str, float]) -> Any:
    """A JSON-able normal form of an inlined expression: fixed params substituted, numeric
    sub-expressions folded, numbers as floats."""
    if isinstance(expr, A.Num):
        return float(expr.value)
    if isinstance(expr, A.Name):
        return float(fixed[expr.id]) if expr.id in fixed else ["name", expr.id]
    if isinstance(expr, A.Neg):
        x = normal_form(expr.operand, fixed)
        return -x if isinstance(x, float) else ["neg", x]
    if isinstance(expr, A.BinOp):
        left, right = normal_form(expr.left, fixed), normal_form(expr.right, fixed)
        if isinstance(left, float) and isinstance(right, float):
            try:
                return float(_FOLD[expr.op](left, right))
            except OverflowError:
                return math.inf
        return [expr.op, left, right]
    if isinstance(expr, A.Compare):
        return ["compare", expr.op, normal_form(expr.left, fixed), normal_form(expr.right, fixed)]
    if isinstance(expr, A.BoolOp):
        return [expr.op, normal_form(expr.left, fixed), normal_form(expr.right, fixed)]
    if isinstance(expr, A.Not):
        return ["not", normal_form(expr.operand, fixed)]
    if isinstance(expr, A.Call):
        return ["call", expr.func, [normal_form(a, fixed) for a in expr.args]]
    raise TypeError(f"not an inlined expression: {expr!r}")


def _json_floats(value: Any) -> Any:
    """Floats as repr strings, so that NaN / inf hash and 1 == 1.0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, dict):
        return {k: _json_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_floats(v) for v in value]
    return value


def payload(checked: CheckedSpec, data_fingerprint: str, *, full: bool) -> dict:
    """The normal form that is hashed (also shown by `gud hash --show`)."""
    spec = checked.spec
    fixed = checked.fixed_params
    data = spec.data.model_dump()
    for location in ("path", "folder", "root"):  # where the data lives is not what it is
        data.pop(location, None)
    out = {
        "scheme": SCHEME,
        "language": LANGUAGE_VERSION,
        "data": {**data, "fingerprint": data_fingerprint},
        "basis": spec.basis.model_dump(),
        "prior": spec.prior.model_dump(),
        "params": {n: p.model_dump() for n, p in sorted(spec.params.items())
                   if not isinstance(p, FixedParam) and n in checked.drawn},
        "network": spec.network.model_dump(),
        "train": spec.train.model_dump(),
    }
    for slot in FORMULAS:  # every formula the spec declares, in its normal form
        if slot.name in checked.formulas:
            *outer, key = FORMULA_PLACES.get(slot.name, (slot.name,))
            place = out
            for k in outer:
                place = place[k]
            place[key] = normal_form(checked.formulas[slot.name], fixed)
    if full:
        out["sample"] = spec.sample.model_dump()
    return _json_floats(out)


def _digest(obj: dict) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return f"{SCHEME}:{hashlib.sha256(text.encode()).hexdigest()}"


def model_hash(checked: CheckedSpec, data_fingerprint: str) -> str:
    """Hash of what determines the trained model (no sample or runtime settings)."""
    return _digest(payload(checked, data_fingerprint, full=False))


def full_hash(checked: CheckedSpec, data_fingerprint: str) -> str:
    """Hash of the model plus its sample settings (still no runtime settings)."""
    return _digest(payload(checked, data_fingerprint, full=True))
