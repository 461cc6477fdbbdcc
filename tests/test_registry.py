"""The registries of gudlang.builtins define each built-in once, and everything that reads
them agrees with them.

Promises checked: every function and reduction is documented, known to the checker (its arity
enforced), compiles, computes in torch what its NumPy fold computes, and has a derivative that
matches a central finite difference of the compiled gamma; so does every arithmetic operator,
and every operator prints back to what it parsed from; every built-in name is reserved and is
listed in docs/architecture.md (functions with the registry's signature, doc and derivative
rules) and the README; every keyword is a literal terminal of the grammar and is never a name;
every error code the package uses is in a CODES table.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gudlang
from gudlang import ast as A
from gudlang.builtins import (CONSTANTS, FEATURES, FUNCTIONS, KEYWORDS, OPERATORS, REDUCTIONS, SHAPE_CONSTANTS,
                              keywords, known_function_names, shape_constants)
from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.fmt import format_expr
from gudlang.lower import parse_program
from gudlang.parser import grammar_text
from gudlang.schedules import compile_schedule

ROOT = Path(__file__).resolve().parent.parent
D = 6
FEATURE_VALUES = {name: np.linspace(0.1, 0.9, D) for name in FEATURES} | shape_constants((1, 2, 3))

# Arguments of each function that move with t and stay inside its domain on [0, 1]; some
# functions twice, so that each of their derivative rules is used.
CALLS = {
    "log": [("0.5 + t",)], "exp": [("2 * t - 1",)], "sqrt": [("0.5 + t",)], "abs": [("t - 0.37",)],
    "sigmoid": [("4 * t - 2",)], "logit": [("0.1 + 0.8 * t",)], "softplus": [("4 * t - 2",)],
    "cos": [("3 * t",)], "sin": [("3 * t",)], "tan": [("t",)], "atan": [("3 * t - 1",)], "tanh": [("2 * t - 1",)],
    "expm1": [("t - 0.5",)], "log1p": [("t - 0.5",)], "floor": [("5 * t",)], "round": [("5 * t",)],
    "ndtri": [("0.02 + 0.96 * t",)], "erfinv": [("1.9 * t - 0.95",)],
    "clip": [("3 * t - 1", "0", "1"), ("3 * t - 1", "0.2 * t", "0.8 - 0.1 * t")],
    "where": [("t < 0.5", "t ^ 2", "1 - 2 * t")],
    "min": [("t", "0.8 - t")], "max": [("t", "0.8 - t")],
}
REDUCTION_CALLS = {"mean": "t * rank(i)", "sum": "t * rank(i)", "max": "rank(i)", "min": "rank(i)"}
# x op y, with a constant and a moving exponent for the power
OPERATOR_CALLS = {"+": ["(t ^ 2) + (3 * t)"], "-": ["(t ^ 2) - (3 * t)"], "*": ["(t + 1) * (2 - t)"],
                  "/": ["(t + 1) / (2 - t)"], "^": ["(t + 1) ^ 2.5", "(t + 1) ^ (2 - t)"], "neg": ["-(t ^ 2)"]}


def compiled(gamma: str):
    text = f"gud 1\ndata = digits()\nbasis = pixel()\ngamma_i(t) = {gamma}\n"
    checked = check_text(text, "registry.gud")
    return compile_schedule(checked.gamma, FEATURE_VALUES, checked.fixed_params, {}, D)


def gamma_and_slope(schedule, t: np.ndarray):
    with torch.no_grad():
        gamma, slope = schedule.gamma_and_slope(torch.as_tensor(t, dtype=torch.float64))
    return gamma.numpy(), slope.numpy()


def assert_slope_is_a_finite_difference(gamma: str):
    """The compiled dgamma/dt against central differences (h = 1e-6), at times whose two
    one-sided differences agree (no step or kink within h)."""
    schedule = compiled(gamma)
    t = np.random.default_rng(0).uniform(0.03, 0.97, 200)
    h = 1e-6
    (g, slope), (up, _), (down, _) = (gamma_and_slope(schedule, x) for x in (t, t + h, t - h))
    right, left = (up - g) / h, (g - down) / h
    smooth = np.abs(right - left) <= 1e-3 * (1 + np.abs(right))
    assert smooth.mean() > 0.8, f"{gamma}: too few smooth points"
    central = (up - down) / (2 * h)
    np.testing.assert_allclose(slope[smooth], central[smooth], rtol=1e-6, atol=1e-6, err_msg=gamma)


# --------------------------------------------------------------------------- functions
def test_every_built_in_is_covered_by_these_tests():
    assert set(CALLS) == set(FUNCTIONS)
    assert set(REDUCTION_CALLS) == set(REDUCTIONS)
    assert {"+", "-", "*", "/", "^", "neg"} == {name for name, op in OPERATORS.items() if op.derivative}


@pytest.mark.parametrize("entry", [*FUNCTIONS.values(), *REDUCTIONS.values(), *OPERATORS.values()],
                         ids=lambda f: getattr(f, "name", None) or f.symbol)
def test_every_entry_is_documented_in_one_line(entry):
    assert entry.doc and "\n" not in entry.doc and entry.doc == entry.doc.strip()


@pytest.mark.parametrize("rule", [(f, r) for f in (*FUNCTIONS.values(), *REDUCTIONS.values(), *OPERATORS.values())
                                  for r in f.derivative], ids=lambda fr: fr[1])
def test_derivative_rules_are_gud_over_the_arguments(rule):
    entry, text = rule
    program, _ = parse_program(f"gud 1\nrule = {text}\n")
    body = program.statements[0].body
    names = {n.id for _, n in A.walk(body) if isinstance(n, A.Name)}
    allowed = set(entry.params) | {f"d{p}" for p in entry.params} | {"value"} | set(CONSTANTS)
    assert names <= allowed, names - allowed
    calls = {n.func for _, n in A.walk(body) if isinstance(n, A.Call)}
    assert calls <= set(FUNCTIONS) | set(REDUCTIONS) | {"between"}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_is_known_to_the_checker_with_its_arity(name):
    fn = FUNCTIONS[name]
    assert name in known_function_names()
    for args in CALLS[name]:
        checked = check_text(f"gud 1\ndata = digits()\ngamma(t) = {name}({', '.join(args)})\n")
        assert isinstance(checked.gamma, A.Call) and checked.gamma.func == name
    wrong = ", ".join(["t"] * (fn.arity + 1))
    with pytest.raises(GudError) as err:
        check_text(f"gud 1\ndata = digits()\ngamma(t) = {name}({wrong})\n")
    assert [d.code for d in err.value.diagnostics] == ["E204"]
    assert fn.signature in err.value.diagnostics[0].help


@pytest.mark.parametrize("call", [(name, args) for name, calls in CALLS.items() for args in calls],
                         ids=lambda c: f"{c[0]}({', '.join(c[1])})")
def test_every_function_compiles_and_its_slope_is_a_finite_difference(call):
    name, args = call
    assert_slope_is_a_finite_difference(f"{name}({', '.join(args)})")


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_every_reduction_compiles_and_its_slope_is_a_finite_difference(name):
    assert_slope_is_a_finite_difference(f"{name}({REDUCTION_CALLS[name]}) + t")


# Values inside (and at the edges of) each function's domain.
VALUES = np.array([-3.7, -1.0, -0.5, -1e-8, 0.0, 1e-8, 0.3, 0.5, 0.975, 1.0, 2.5, 7.25, 40.0])


@pytest.mark.parametrize("name", sorted(f for f, fn in FUNCTIONS.items() if not fn.conditions))
def test_torch_code_computes_what_the_fold_computes(name):
    """f(x + 0 * t) is not folded (0 * t keeps t), so the torch code computes it; at the same
    values the NumPy fold gives the same numbers (NaN where both do)."""
    fn = FUNCTIONS[name]
    carriers = ("var", "wvar", "rank")[:fn.arity]  # features that carry the values in
    args = ", ".join(f"{f}(i) + 0 * t" for f in carriers)
    checked = check_text(f"gud 1\ndata = digits()\nbasis = pixel()\ngamma_i(t) = {name}({args})\n")
    rng = np.random.default_rng(1)
    for _ in range(4):
        values = [rng.choice(VALUES, D) for _ in carriers]
        schedule = compile_schedule(checked.gamma, {**FEATURE_VALUES, **dict(zip(carriers, values))}, {}, {}, D)
        got = gamma_and_slope(schedule, np.array([0.5]))[0][0]
        with np.errstate(all="ignore"):
            want = fn.fold(*values)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0, equal_nan=True, err_msg=str(values))


# --------------------------------------------------------------------------- operators
@pytest.mark.parametrize("gamma", [g for gs in OPERATOR_CALLS.values() for g in gs])
def test_every_operator_compiles_and_its_slope_is_a_finite_difference(gamma):
    assert_slope_is_a_finite_difference(gamma)


def _ops(expr) -> set[str]:
    """The registry keys of the operators in an expression."""
    out = set()
    for _, node in A.walk(expr):
        if isinstance(node, (A.BinOp, A.Compare, A.BoolOp)):
            out.add(node.op)
        elif isinstance(node, (A.Neg, A.Not)):
            out.add("neg" if isinstance(node, A.Neg) else "not")
    return out


def test_every_operator_the_grammar_produces_is_registered_and_prints_back():
    texts = ["a + b - c * d / e ^ f", "-a", *(f"a {op} b" for op in ("<", "<=", ">", ">=", "==", "!=")),
             "not a < b and c < d or e < f"]
    seen = set()
    for text in texts:
        expr = parse_program(f"gud 1\nx = {text}\n")[0].statements[0].body
        seen |= _ops(expr)
        assert parse_program(f"gud 1\nx = {format_expr(expr)}\n")[0].statements[0].body == expr
    assert seen == set(OPERATORS)


@pytest.mark.parametrize("op", [o for o in OPERATORS if OPERATORS[o].level in ("compare", "and", "or", "not")])
def test_every_condition_operator_compiles_to_its_fold(op):
    """where(condition, 1, 0) of conditions on per-component values and t: the torch code of
    the operator picks the components its NumPy fold picks."""
    fold = OPERATORS[op].fold
    left, right = FEATURE_VALUES["var"], np.array([0.1, 0.5, 0.4, 0.9, 0.2, 0.7])
    features = {**FEATURE_VALUES, "wvar": right}
    if op in ("and", "or"):
        condition, want = f"var(i) + 0 * t < 0.5 {op} wvar(i) + 0 * t > 0.3", fold(left < 0.5, right > 0.3)
    elif op == "not":
        condition, want = "not var(i) + 0 * t < 0.5", fold(left < 0.5)
    else:
        condition, want = f"var(i) + 0 * t {op} wvar(i)", fold(left, right)
    checked = check_text(f"gud 1\ndata = digits()\nbasis = pixel()\ngamma_i(t) = where({condition}, 1, 0) + t\n")
    schedule = compile_schedule(checked.gamma, features, {}, {}, D)
    np.testing.assert_array_equal(gamma_and_slope(schedule, np.array([0.0]))[0][0], want.astype(float))


# --------------------------------------------------------------------------- names and docs
RESERVED_NAMES = sorted(set(FEATURES) | set(FUNCTIONS) | set(REDUCTIONS) | set(CONSTANTS) | set(SHAPE_CONSTANTS))


@pytest.mark.parametrize("name", RESERVED_NAMES)
def test_every_built_in_name_is_reserved(name):
    with pytest.raises(GudError) as err:
        check_text(f"gud 1\ndata = digits()\n{name} = 3\ngamma(t) = t\n")
    assert [d.code for d in err.value.diagnostics] == ["E212"]


@pytest.mark.parametrize("word", keywords())
def test_every_keyword_is_a_grammar_terminal_and_never_a_name(word):
    terminal = KEYWORDS[word].terminal
    assert re.search(rf'^{terminal}: "{word}"$', grammar_text(), re.M)
    names = [f"param {word} = 1", f"f({word}) = 1", f"x = g({word} = 1)"]
    if word == "not":  # an argument may start with `not`: in g(not = 1) the `=` is what is wrong
        names.pop()
    for text in names:
        with pytest.raises(GudError) as err:
            parse_program(f"gud 1\n{text}\n")
        assert err.value.diagnostics[0].code == "E105"
        assert err.value.diagnostics[0].help == f"`{word}` is a keyword and cannot be used as a name"


def test_the_grammar_has_no_other_keywords():
    words = set(re.findall(r'^[A-Z_]+: "([A-Za-z_]+)"$', grammar_text(), re.M))
    assert words == set(keywords())


def _docs_section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_docs_list_every_built_in_as_the_registry_defines_it():
    docs = (ROOT / "docs" / "architecture.md").read_text()
    section = _docs_section(docs, "## Built-ins: one registry per concept")
    for fn in FUNCTIONS.values():
        rules = ", ".join(f"`{r}`" for r in fn.derivative)
        assert f"| `{fn.signature}` | {fn.doc} | {rules} |" in section, fn.name
    for fn in REDUCTIONS.values():
        assert f"| `{fn.signature}` | {fn.doc} |" in section, fn.name
    for name, doc in SHAPE_CONSTANTS.items():
        assert f"| `{name}` | {doc} |" in section
    for name in CONSTANTS:
        assert f"`{name}`" in section
    assert "Keywords: " + ", ".join(f"`{k}`" for k in keywords()) + "." in section
    features = _docs_section(docs, "## Per-component features")
    documented = {name.strip() for row in re.findall(r"^\| ([a-z, ]+) \|", features, re.M) for name in row.split(",")}
    assert set(FEATURES) <= documented


def test_readme_lists_every_built_in():
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Built-ins:"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    words = set(re.findall(r"[A-Za-z_0-9]+", paragraph))
    assert set(FUNCTIONS) | set(REDUCTIONS) | set(FEATURES) | set(CONSTANTS) | set(SHAPE_CONSTANTS) <= words


# --------------------------------------------------------------------------- error codes
def test_every_error_code_of_the_package_is_registered():
    registered = set()
    for info in pkgutil.walk_packages(gudlang.__path__, "gudlang."):
        if info.name.endswith("__main__"):
            continue  # running it runs the command line
        module = importlib.import_module(info.name)
        registered |= {code for name, table in vars(module).items() if name.endswith("CODES")
                       and isinstance(table, dict) for code in table}
    used = {}
    for path in (ROOT / "gudlang").rglob("*.py"):
        for code in re.findall(r"\b([EW]\d{3})\b", path.read_text()):
            used.setdefault(code, set()).add(path.name)
    missing = {code: sorted(files) for code, files in used.items() if code not in registered}
    assert not missing, f"codes used but in no CODES table: {missing}"
