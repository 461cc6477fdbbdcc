"""Fuzzing the schedule compiler with Hypothesis: random gamma formulas from the whole stack,
constants at the edges of float64 included.

Promises checked: (a) whatever formula a user writes, checking, compiling and the numeric
checks raise nothing but GudError (overflowing constants included); (b) where a formula
compiles, the generated torch code (after constant folding and algebraic rewriting) computes
what the reference evaluator (tests/reference.py), which reads the formula on its own,
computes: gamma, dgamma/dt and beta, in float64 and float32.
"""

import re

import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gudlang.builtins import ELEMENTWISE
from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.schedules import check_schedule, compile_schedule
from test_reference import assert_matches_reference

D = 12
ROWS, COLS = np.divmod(np.arange(D), 4)
FEATURES = {"var": np.linspace(2.0, 0.05, D), "wvar": np.linspace(2.0, 0.05, D),
            "rank": np.arange(D) / (D - 1), "row": ROWS / 2.0, "col": COLS / 3.0, "chan": np.zeros(D)}
PARAM_A = 0.7
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNARY = sorted(f for f, n in ELEMENTWISE.items() if n == 1)
moderate = st.floats(-20, 20, allow_nan=False).map(lambda v: round(v, 3))
# Magnitudes where folding constants together could round, overflow or underflow.
extreme = st.sampled_from([1e16, -3e15, 1e-20, 2.5e-300, 1e300])
atoms = st.one_of(
    st.one_of(moderate, extreme).map(lambda v: repr(v) if v >= 0 else f"({v!r})"),
    st.just("t"), st.just("a"),
    st.sampled_from(["rank", "var", "row", "col"]).map(lambda name: f"{name}(i)"),
)


def _extend(child):
    bounds = st.tuples(moderate, moderate).filter(lambda b: b[0] < b[1])
    return st.one_of(
        st.tuples(st.sampled_from(UNARY), child).map(lambda u: f"{u[0]}({u[1]})"),
        st.tuples(st.sampled_from(["+", "-", "*", "/"]), child, child).map(lambda o: f"({o[1]} {o[0]} {o[2]})"),
        st.tuples(child, bounds).map(lambda c: f"clip({c[0]}, {c[1][0]!r}, {c[1][1]!r})"),
        st.tuples(child, child, child, child).map(lambda w: f"where({w[0]} < {w[1]}, {w[2]}, {w[3]})"),
        st.tuples(st.sampled_from(["min", "max"]), child, child).map(lambda m: f"{m[0]}({m[1]}, {m[2]})"),
        st.tuples(child, st.sampled_from([0.5, 2.0, 3.0, -1.0])).map(lambda p: f"({p[0]}) ^ {p[1]!r}"),
    )


formulas = st.recursive(atoms, _extend, max_leaves=8)
# Constants at the edge of float64: folding may overflow them; that must stay a GudError.
huge = st.sampled_from(["1e308", "-1e308", "1e-308", "4e-320", "exp(1000)", "exp(-1000)", "0",
                        "1 / 0", "log(0)", "0 / 0", "10 ^ 400", "where(t < 0.5, 1e308, -1e308)"])


def _spec(formula: str) -> str:
    return (f"gud 1\ndata = digits()\nbasis = pixel()\nprior = white\nparam a = {PARAM_A!r}\n"
            f"gamma_i(t) = {formula}\n")


def _compile(text: str):
    checked = check_text(text, "fuzz.gud")
    drawn = {n: checked.spec.params[n].mean for n in checked.drawn}
    return compile_schedule(checked.gamma, FEATURES, checked.fixed_params, drawn, D)


@FUZZ
@given(formulas, huge, st.sampled_from(["+", "*", "-", "/"]))
def test_any_formula_checks_and_compiles_or_raises_gud_error(formula, edge, op):
    for text in (formula, f"({formula}) {op} {edge}"):
        note(f"gamma_i(t) = {text}")
        try:
            schedule = _compile(_spec(text))
            check_schedule(schedule, FEATURES["wvar"], {})
        except GudError:
            pass


@FUZZ
@given(formulas)
def test_compiled_code_computes_what_the_reference_computes(formula):
    if not re.search(r"\bt\b", formula):
        formula = f"({formula}) * t"  # a schedule must depend on t
    note(f"gamma_i(t) = {formula}")
    try:
        schedule = _compile(_spec(formula))
    except GudError:
        return  # e.g. t vanished by folding (0 * t), which is fine to refuse
    assert_matches_reference(schedule, _spec(formula), FEATURES)
