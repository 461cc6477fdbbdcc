"""The numeric checks evaluate schedules in bounded pieces (`schedules.BATCH_VALUES`,
`SUPPORT_VALUES`): the same diagnostics, orders and motion as one evaluation of the whole
(times, D) table, and no call asks for more values than the budget (or one row of D)."""

import numpy as np
import pytest
import torch

from gudlang import schedules
from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.schedules import (CompiledSchedule, check_schedule, check_support, check_weight, compile_schedule,
                               generation_order, motion)

D = 48
RNG = np.random.default_rng(3)
VAR = np.sort(RNG.uniform(0.01, 3.0, D))[::-1].copy()
ROWS, COLS = np.divmod(np.arange(D), 8)
FEATURES = {"var": VAR, "wvar": VAR, "rank": np.arange(D) / (D - 1), "row": ROWS / 5.0, "col": COLS / 7.0,
            "chan": np.zeros(D), "level": np.minimum(np.arange(D) // 12, 3).astype(float)}
WHOLE = 1 << 40  # a budget every table fits in: one evaluation, as before chunking


def compiled(gamma: str, params: str = "", path: str | None = None):
    """gamma (and the sampling path, when given) of a spec, compiled on FEATURES, and the drawn
    params' ranges."""
    text = f"gud 1\ndata = digits()\nbasis = pixel()\n{params}\ngamma_i(t) = {gamma}\n"
    checked = check_text(text + (f"path_i(t) = {path}\n" if path else ""), "test.gud")
    drawn = {n: checked.spec.params[n].mean for n in checked.drawn}
    ranges = {n: (checked.spec.params[n].lo, checked.spec.params[n].hi) for n in checked.drawn}
    modules = [compile_schedule(e, FEATURES, checked.fixed_params, drawn, D)
               for e in ([checked.gamma, checked.path] if path else [checked.gamma])]
    return (*modules, ranges)


def outcome(f):
    """What a check says: its warnings or its errors, as (code, message)."""
    try:
        result = f()
    except GudError as e:
        return "error", [(d.code, d.message) for d in e.diagnostics]
    return "ok", [(w.code, w.message) for w in result or ()]


@pytest.fixture
def budget(monkeypatch):
    """Set BATCH_VALUES (and SUPPORT_VALUES) for the rest of a test."""
    def set_budget(values: int, support: int | None = None):
        monkeypatch.setattr(schedules, "BATCH_VALUES", values)
        if support is not None:
            monkeypatch.setattr(schedules, "SUPPORT_VALUES", support)
    return set_budget


@pytest.fixture
def calls(monkeypatch):
    """The (times, D) of every evaluation of a CompiledSchedule."""
    seen = []
    for method in ("gamma_and_slope", "value", "forward"):
        original = getattr(CompiledSchedule, method)

        def wrapped(self, t, params=None, _original=original):
            seen.append((len(t), self.dim))
            return _original(self, t, params)
        monkeypatch.setattr(CompiledSchedule, method, wrapped)
    return seen


SCHEDULES = [
    ("soft(t, -log(var(i)), a = 1)", ""),  # fine
    ("linear(t, lo = -2 - b, hi = 3 - b)", "param b ~ uniform(0, 2)"),  # W301 and W302 at the worst b
    ("linear(t) - 5 * exp(-((t - 0.3005) / 0.0001)^2)", ""),  # E301 between grid points
    ("-7 + 10 * t * cos(pi * a) + log(wvar(i))", "param a ~ uniform(0, 4)"),  # E301 at some a only
    ("10 * t - mean(t * rank(i)) - 60 * rank(i) * (t - 0.6)^2", ""),  # a reduction over components
    ("where(t > 0.8, 1e39, 10 * t - 5 * exp(-((t - 0.3) / 0.01)^2))", ""),  # beyond float32 after a decrease
    ("where(t > 0.9, log(t - 0.95 - rank(i)), where(rank(i) > 0.5, -1e39, 0))", ""),  # not finite after too big
    ("atan(1e40 * t)", ""),  # beta beyond float32
]


@pytest.mark.parametrize("formula, params", SCHEDULES)
def test_a_check_in_pieces_says_what_one_evaluation_says(formula, params, budget):
    s, ranges = compiled(formula, params)
    constant = np.arange(D) % 5 == 0
    budget(WHOLE)
    whole = [outcome(lambda: check_schedule(s, VAR, ranges, constant)),
             outcome(lambda: check_weight(s, ranges, ignore=constant))]
    for values in (1, 7 * D, 64 * D):  # one row, a few rows, runs that split the grid unevenly
        budget(values)
        assert [outcome(lambda: check_schedule(s, VAR, ranges, constant)),
                outcome(lambda: check_weight(s, ranges, ignore=constant))] == whole


@pytest.mark.parametrize("formula", ["soft(t, -log(var(i)), a = 2)", "sequential(t, row(i), b = 0.3)",
                                     "0 * t + where(rank(i) > 0.5, 0, 1) * (t - 0.5)"])
def test_order_and_motion_in_pieces_are_those_of_one_evaluation(formula, budget):
    s, _ = compiled(formula)
    budget(WHOLE)
    order, moving = generation_order(s, VAR), motion(s)
    budget(5 * D)
    assert np.array_equal(generation_order(s, VAR), order)
    pieces = motion(s)
    assert np.array_equal(pieces.in_motion, moving.in_motion) and pieces.busiest == moving.busiest
    assert np.array_equal(pieces.never_noised, moving.never_noised)


def test_no_evaluation_asks_for_more_than_the_budget(budget, calls):
    s, ranges = compiled("linear(t, lo = -2 - b, hi = 3 - b)", "param b ~ uniform(0, 2)")
    weight, _ = compiled("1 + b * t * rank(i)", "param b ~ uniform(0, 2)")
    budget(10 * D)
    check_schedule(s, VAR, ranges)
    check_weight(weight, ranges)
    generation_order(s, VAR)
    motion(s)
    assert calls and max(n * dim for n, dim in calls) <= 10 * D
    calls.clear()
    budget(D // 2)  # less than one row: a row at a time
    check_schedule(s, VAR, ranges)
    assert {n for n, _ in calls} == {1}


SUPPORT = [  # (params, gamma, path, inside)
    ("param u_i ~ uniform(0, 1, group = col(i))", "linear(0.5 * t + 0.5 * u_i)",
     "linear(t + 0.1 * col(i) * t * (1 - t))", True),
    ("param u_i ~ uniform(0, 1, group = row(i))", "linear(0.5 * t + 0.5 * u_i)", "linear(0.5 * t + 0.5 * col(i))",
     False),  # each component's gamma is trained, not all at once
    ("param a ~ uniform(0.4, 1.6)", "soft(t, -log(var(i)), a = a)", "soft(t, -log(var(i)), a = 2)", False),
    ("", "linear(t - 0.5 * rank(i))", "linear(t^2 - 0.5 * rank(i))", True),
]


@pytest.mark.parametrize("params, gamma, path, inside", SUPPORT)
def test_the_support_check_in_runs_of_time_cells_says_what_the_whole_grid_says(params, gamma, path, inside,
                                                                              budget, calls):
    train, sampling, ranges = compiled(gamma, params, path)
    groups = {n: (ROWS if "row(i)" in params else COLS).astype(float) for n in ranges if n.endswith("_i")}
    budget(WHOLE, WHOLE)
    whole = outcome(lambda: check_support(train, sampling, ranges, groups))
    assert whole[0] == ("ok" if inside else "error")
    for support in (1, 40 * D):
        budget(6 * D, support)
        calls.clear()
        assert outcome(lambda: check_support(train, sampling, ranges, groups)) == whole
        assert max(n * dim for n, dim in calls) <= max(support, 6 * D)
