"""Semantic hashes of checked specs (Dhall / Nix style: hash the normal form, not the text).

Input: a `CheckedSpec` and the data fingerprint (`gudlang.data.DataSet.fingerprint`).
Output: `model_hash` (data, basis, prior, schedule, params, network, train) and `full_hash`
(model + sample settings), strings tagged with their scheme, `gud1-sha256:<hex>`.
The normal form has every default filled in, every definition and library call inlined,
fixed params substituted and numeric sub-expressions folded, so comments, layout, statement
order, definition names and `1` vs `1.0` never change a hash. A formula that folds to what
leaving it out means (`REDUNDANT`: `weight(t) = 1`, `prior = scale(1)`, a path equal to gamma)
hashes as if left out. Runtime settings never enter.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from gudlang import LANGUAGE_VERSION
from gudlang import ast as A
from gudlang.builtins import OPERATORS
from gudlang.check import FORMULAS, CheckedSpec
from gudlang.spec import FixedParam

SCHEME = "gud2-sha256"
# The first scheme hashed every train setting; checkpoints made with it still verify
# (`model_hash(..., scheme=LEGACY_SCHEME)`) and sample, but do not train on.
LEGACY_SCHEME = "gud1-sha256"
_LEGACY_TRAIN = ("steps", "batch", "lr", "ema", "seed", "warmup", "grad_clip", "weight_decay", "log_every",
                 "sample_every", "checkpoint_every")
# How long a run trains and how it logs: not what the model is.
RUN_LENGTH = ("steps", "log_every", "sample_every", "checkpoint_every")
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
    "train.steps": "how long a run trains (run.json records it); hashed with lr_schedule = cosine, "
                   "whose decay it sets",
    "train.log_every": "how a run logs",
    "train.sample_every": "how a run logs",
    "train.checkpoint_every": "how a run logs",
    "sample": "how to sample: only in the full hash",
    "runtime": "how to run, never what is computed",
}

def normal_form(expr: A.Expr, fixed: dict[str, float]) -> Any:
    """A JSON-able normal form of an inlined expression: fixed params substituted, numeric
    sub-expressions of operators folded, numbers as floats. Folding uses the operators' NumPy
    folds (`builtins.OPERATORS`), the ones the schedule compiler folds with: IEEE float64
    (signed zeros and infinities, 0 ^ -1 = inf, (-10) ^ 401 = -inf, (-8) ^ (1/3) = nan), so
    equal hashes mean equal schedules. Calls of constants stay as written (folding them would
    change the hash of every library schedule, and they cannot make different schedules
    hash alike). The shape constants H, W, C, D stay names: the data fingerprint, which
    hashes the data's shape, fixes their values."""
    if isinstance(expr, A.Num):
        return float(expr.value)
    if isinstance(expr, A.Name):
        return float(fixed[expr.id]) if expr.id in fixed else ["name", expr.id]
    if isinstance(expr, A.Neg):
        x = normal_form(expr.operand, fixed)
        return float(OPERATORS["neg"].fold(np.float64(x))) if isinstance(x, float) else ["neg", x]
    if isinstance(expr, A.BinOp):
        left, right = normal_form(expr.left, fixed), normal_form(expr.right, fixed)
        if isinstance(left, float) and isinstance(right, float):
            with np.errstate(all="ignore"):
                return float(OPERATORS[expr.op].fold(np.float64(left), np.float64(right)))
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


def redundant(checked: CheckedSpec) -> set[str]:
    """The formulas of `checked` (names of `FORMULAS`) whose normal form says what leaving them
    out says: a loss weight of 1, a prior scale of 1 (the white prior), a sampling path equal to
    gamma. The hash leaves them out and the compiler compiles no weight for them."""
    fixed, formulas = checked.fixed_params, checked.formulas
    forms = {name: normal_form(expr, fixed) for name, expr in formulas.items()}
    out = {name for name in ("weight", "prior_scale") if forms.get(name) == 1.0}
    if "path" in forms and forms["path"] == forms["gamma"]:
        out.add("path")
    return out


def _json_floats(value: Any) -> Any:
    """Floats as repr strings, so that NaN / inf hash and 1 == 1.0; an integer that no float
    holds exactly as its digits."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and float(value) != value:  # a seed beyond 2^53: every digit counts
        return str(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, dict):
        return {k: _json_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_floats(v) for v in value]
    return value


def payload(checked: CheckedSpec, data_fingerprint: str, *, full: bool, scheme: str = SCHEME,
            literal: bool = False) -> dict:
    """The normal form that is hashed (also shown by `gud hash --show`). `literal` keeps the
    `redundant` formulas as written, as hashes made before that rule did
    (checkpoints that carry them still verify and train on)."""
    spec = checked.spec
    fixed = checked.fixed_params
    data = spec.data.model_dump()
    for location in ("path", "folder", "root"):  # where the data lives is not what it is
        data.pop(location, None)
    train = spec.train.model_dump()
    if scheme == LEGACY_SCHEME:
        train = {k: train[k] for k in _LEGACY_TRAIN}
    else:
        for key in RUN_LENGTH:
            if not (key == "steps" and spec.train.lr_schedule == "cosine"):
                del train[key]
    out = {
        "scheme": scheme,
        "language": LANGUAGE_VERSION,
        "data": {**data, "fingerprint": data_fingerprint},
        "basis": spec.basis.model_dump(),
        "prior": spec.prior.model_dump(),
        "params": {n: p.model_dump() for n, p in sorted(spec.params.items())
                   if not isinstance(p, FixedParam) and n in checked.drawn},
        "network": _network(spec.network.model_dump()),
        "train": train,
    }
    for name, group in sorted(checked.groups.items()):  # which components share a draw
        out["params"][name]["group"] = normal_form(group, fixed)
    left_out = set() if literal else redundant(checked)
    if "prior_scale" in left_out:
        out["prior"] = {"kind": "white"}
    for slot in FORMULAS:  # every formula the spec declares, in its normal form
        if slot.name == "path" and not full:
            continue  # the sampling path does not change the trained network: like `sample`
        if slot.name in checked.formulas and slot.name not in left_out:
            *outer, key = FORMULA_PLACES.get(slot.name, (slot.name,))
            place = out
            for k in outer:
                place = place[k]
            place[key] = normal_form(checked.formulas[slot.name], fixed)
    if full:
        out["sample"] = spec.sample.model_dump()
    return _json_floats(out)


# Network options added after the scheme was fixed, with the default that keeps the networks
# made before them: they enter the hash only when set otherwise, so older hashes stand.
_LATER_NETWORK_OPTIONS = {"state": "linear"}


def _network(options: dict) -> dict:
    return {k: v for k, v in options.items() if _LATER_NETWORK_OPTIONS.get(k, ...) != v}


def _digest(obj: dict) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return f"{obj['scheme']}:{hashlib.sha256(text.encode()).hexdigest()}"


def model_hash(checked: CheckedSpec, data_fingerprint: str, scheme: str = SCHEME, literal: bool = False) -> str:
    """Hash of what determines the trained model (no sample or runtime settings, not how long
    it trained). `scheme` = LEGACY_SCHEME recomputes a hash of the first scheme; `literal`:
    see `payload`."""
    return _digest(payload(checked, data_fingerprint, full=False, scheme=scheme, literal=literal))


def model_hashes(checked: CheckedSpec, data_fingerprint: str, scheme: str = SCHEME) -> tuple[str, ...]:
    """Every hash a checkpoint of this model may carry: today's first, then the literal one
    (`payload`) when it differs."""
    hashes = [model_hash(checked, data_fingerprint, scheme), model_hash(checked, data_fingerprint, scheme, True)]
    return tuple(dict.fromkeys(hashes))


def full_hash(checked: CheckedSpec, data_fingerprint: str) -> str:
    """Hash of the model plus its sample settings (still no runtime settings)."""
    return _digest(payload(checked, data_fingerprint, full=True))


def scheme_of(hash_text: str) -> str:
    """The scheme a stored hash was made with ("gud2-sha256:..." -> "gud2-sha256")."""
    return hash_text.split(":", 1)[0]
