"""Fuzzing the schedule compiler with Hypothesis: random gamma formulas from the whole stack.

Promises checked: (a) whatever formula a user writes, checking, compiling and the numeric
checks raise nothing but GudError (overflowing constants included); (b) where a formula
compiles, the generated torch code (after constant folding and algebraic rewriting) computes
what an independent NumPy evaluation of the same formula computes.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.schedules import check_schedule, compile_schedule

D = 12
ROWS, COLS = np.divmod(np.arange(D), 4)
FEATURES = {"var": np.linspace(2.0, 0.05, D), "wvar": np.linspace(2.0, 0.05, D),
            "rank": np.arange(D) / (D - 1), "row": ROWS / 2.0, "col": COLS / 3.0, "chan": np.zeros(D)}
PARAM_A = 0.7
T = np.linspace(0.0, 1.0, 9)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Each strategy yields (gud text, NumPy function of (t (N, 1), features) -> (N, D) or broadcastable).
UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "tanh": np.tanh,
    "log1p": np.log1p, "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softplus": lambda x: np.logaddexp(0.0, x),
}
BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


def _number(value: float):
    return (repr(value), lambda t, f, v=value: np.float64(v))


moderate = st.floats(-20, 20, allow_nan=False).map(lambda v: round(v, 3))
# Magnitudes where folding constants together could round, overflow or underflow.
extreme = st.sampled_from([1e16, -3e15, 1e-20, 2.5e-300, 1e300])
atoms = st.one_of(
    moderate.map(_number),
    extreme.map(_number),
    st.just(("t", lambda t, f: t)),
    st.just(("a", lambda t, f: np.float64(PARAM_A))),
    st.sampled_from(["rank", "var", "row", "col"]).map(
        lambda name: (f"{name}(i)", lambda t, f, n=name: f[n][None, :])),
)


def _unary(child):
    return st.tuples(st.sampled_from(sorted(UNARY)), child).map(
        lambda fc: (f"{fc[0]}({fc[1][0]})", lambda t, f, fn=UNARY[fc[0]], g=fc[1][1]: fn(g(t, f))))


def _binary(child):
    return st.tuples(st.sampled_from(sorted(BINARY)), child, child).map(
        lambda o: (f"({o[1][0]} {o[0]} {o[2][0]})",
                   lambda t, f, op=BINARY[o[0]], x=o[1][1], y=o[2][1]: op(x(t, f), y(t, f))))


def _clip(child):
    bounds = st.tuples(moderate, moderate).filter(lambda b: b[0] < b[1])
    return st.tuples(child, bounds).map(
        lambda c: (f"clip({c[0][0]}, {c[1][0]!r}, {c[1][1]!r})",
                   lambda t, f, x=c[0][1], lo=c[1][0], hi=c[1][1]: np.clip(x(t, f), lo, hi)))


def _where(child):
    return st.tuples(child, child, child, child).map(
        lambda w: (f"where({w[0][0]} < {w[1][0]}, {w[2][0]}, {w[3][0]})",
                   lambda t, f, a=w[0][1], b=w[1][1], x=w[2][1], y=w[3][1]:
                   np.where(a(t, f) < b(t, f), x(t, f), y(t, f))))


def _power(child):
    return st.tuples(child, st.sampled_from([0.5, 2.0, 3.0, -1.0])).map(
        lambda p: (f"({p[0][0]}) ^ {p[1]!r}", lambda t, f, x=p[0][1], e=p[1]: np.power(x(t, f), e)))


formulas = st.recursive(
    atoms, lambda child: st.one_of(_unary(child), _binary(child), _clip(child), _where(child), _power(child)),
    max_leaves=8)
# Constants at the edge of float64: folding may overflow them; that must stay a GudError.
huge = st.sampled_from(["1e308", "-1e308", "1e-308", "4e-320", "exp(1000)", "exp(-1000)", "0",
                        "1 / 0", "log(0)", "0 / 0", "10 ^ 400", "where(t < 0.5, 1e308, -1e308)"])


def _compile(formula: str):
    text = (f"gud 1\ndata = digits()\nbasis = pixel()\nprior = white\nparam a = {PARAM_A!r}\n"
            f"gamma_i(t) = {formula}\n")
    checked = check_text(text, "fuzz.gud")
    drawn = {n: checked.spec.params[n].mean for n in checked.drawn}
    return compile_schedule(checked.gamma, FEATURES, checked.fixed_params, drawn, D)


@FUZZ
@given(formulas, huge, st.sampled_from(["+", "*", "-", "/"]))
def test_any_formula_checks_and_compiles_or_raises_gud_error(formula, edge, op):
    for text in (formula[0], f"({formula[0]}) {op} {edge}"):
        note(f"gamma_i(t) = {text}")
        try:
            schedule = _compile(text)
            check_schedule(schedule, FEATURES["wvar"], {})
        except GudError:
            pass


@FUZZ
@given(formulas)
def test_compiled_code_computes_what_numpy_computes(formula):
    text, reference = formula
    note(f"gamma_i(t) = {text}")
    try:
        schedule = _compile(text)
    except GudError:
        return  # e.g. a formula without t is per-component only, which is fine to refuse
    with np.errstate(all="ignore"):
        expected = np.broadcast_to(reference(T[:, None], FEATURES), (len(T), D))
    with torch.no_grad():
        got, _ = schedule(torch.as_tensor(T, dtype=torch.float64))
    got = got.numpy()
    # Where NumPy gets a moderate finite value, the compiled code gets the same value.
    fine = np.isfinite(expected) & (np.abs(np.nan_to_num(expected)) < 1e12)
    assert np.isfinite(got[fine]).all(), text
    np.testing.assert_allclose(got[fine], expected[fine], rtol=1e-7, atol=1e-9, err_msg=text)
    # Folding may remove a nan that IEEE arithmetic makes (0 * x is 0 even where x is inf,
    # as in algebra), but never creates one: compiled non-finite implies NumPy non-finite.
    assert not (~np.isfinite(got) & np.isfinite(expected)).any(), text
