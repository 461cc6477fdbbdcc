"""`samplers.schedule_kinks` scans and bisects the schedule in runs of rows of at most
`schedules.BATCH_VALUES` values (one row of D at least): the same kinks, bit for bit, as with
a budget every table fits in, and no call asks for more. `plot.schedule_figure` evaluates in
runs too and keeps only the components it draws: the same lines."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gudlang import samplers, schedules
from gudlang.check import check_file, check_text
from gudlang.pipeline import build_model
from gudlang.plot import schedule_figure
from gudlang.samplers import schedule_kinks
from gudlang.schedules import compile_schedule
from schedule_fixtures import SequentialSchedule, one_thread  # noqa: F401 (autouse fixture)

D = 48
RNG = np.random.default_rng(5)
VAR = np.sort(RNG.uniform(0.01, 3.0, D))[::-1].copy()
ROWS, COLS = np.divmod(np.arange(D), 8)
FEATURES = {"var": VAR, "wvar": VAR, "rank": np.arange(D) / (D - 1), "row": ROWS / 5.0, "col": COLS / 7.0,
            "chan": np.zeros(D), "level": np.zeros(D)}
WHOLE = 1 << 40  # a budget every table fits in: one evaluation, as before chunking


def compiled(gamma: str):
    """gamma of a spec, compiled on FEATURES."""
    checked = check_text(f"gud 1\ndata = digits()\nbasis = pixel()\ngamma_i(t) = {gamma}\n", "test.gud")
    return compile_schedule(checked.gamma, FEATURES, checked.fixed_params, {}, D)


class Windows:
    """Component i moves linearly from gamma = -12 to 12 over its own window [start_i, start_i +
    width_i] and stands still outside it: 2 D kinks."""

    def __init__(self, dim: int, seed: int):
        g = np.random.default_rng(seed)
        self.width = torch.as_tensor(10 ** g.uniform(-2.7, -0.5, dim))
        self.start = torch.as_tensor(g.uniform(0, 1 - self.width.numpy()))

    def __call__(self, t: torch.Tensor):
        u = (t[:, None] - self.start[None]) / self.width[None]
        gamma = -12.0 + 24.0 * u.clamp(0.0, 1.0)
        return gamma, torch.sigmoid(gamma) * 24.0 / self.width[None] * ((u > 0) & (u < 1))


class Recorded:
    """A schedule that records the (times, D) of every evaluation."""

    def __init__(self, schedule):
        self.schedule, self.calls = schedule, []

    def __call__(self, t: torch.Tensor):
        gamma, beta = self.schedule(t)
        self.calls.append(tuple(gamma.shape))
        return gamma, beta


SCHEDULES = {
    "linear": lambda: compiled("linear(2 * t - 0.5, lo = -12, hi = 10)"),  # one kink per side, all components
    "soft clipped": lambda: compiled("soft(t, -log(var(i)), a = 2, clipped = true)"),  # two per component
    "sequential": lambda: compiled("sequential(t, col(i), b = 0.3)"),  # eight columns in turn
    "sequential groups": lambda: SequentialSchedule(torch.arange(D) % 5),  # hand-written, beta = 0 outside
    "windows": lambda: Windows(D, 0),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("budget", [1, 3 * D + 5, 16 * D + 1])
def test_kinks_in_runs_are_those_of_one_evaluation(monkeypatch, name, budget):
    schedule = SCHEDULES[name]()
    monkeypatch.setattr(schedules, "BATCH_VALUES", WHOLE)
    whole = schedule_kinks(schedule)
    assert whole  # every schedule here has kinks
    monkeypatch.setattr(schedules, "BATCH_VALUES", budget)
    recorded = Recorded(schedule)
    assert schedule_kinks(recorded) == whole
    assert max(rows * dim for rows, dim in recorded.calls) <= max(budget, D)


def test_groups_of_cells_bisect_as_long_as_their_widest_run(monkeypatch):
    # 1164 cells are 1 / (1164 2^33) ~ 1.0001e-13 wide after 33 halvings, about _KINK_WIDTH: some
    # cells need a 34th, and a group of _KINK_CHUNK bisects as long as its widest one. A run that
    # stopped sooner is bisected again as long (without that the kinks move by 2.5e-14).
    schedule = Windows(300, 5)
    monkeypatch.setattr(schedules, "BATCH_VALUES", WHOLE)
    whole = schedule_kinks(schedule, cells=1164)
    assert len(whole) > samplers._KINK_CHUNK  # more than one group
    monkeypatch.setattr(schedules, "BATCH_VALUES", 300)
    steps = []
    real = samplers._bisect
    monkeypatch.setattr(samplers, "_bisect", lambda *a: steps.append(a[3] if len(a) > 3 else None) or real(*a))
    assert schedule_kinks(schedule, cells=1164) == whole
    assert any(s is not None for s in steps)  # some runs went on


def test_one_row_per_run_when_a_row_is_over_the_budget(monkeypatch):
    monkeypatch.setattr(schedules, "BATCH_VALUES", 10)
    recorded = Recorded(compiled("linear(2 * t - 0.5, lo = -12, hi = 10)"))
    np.testing.assert_allclose(schedule_kinks(recorded), [0.25, 0.75], rtol=0, atol=1e-12)
    assert {rows for rows, _ in recorded.calls} == {1}


def test_schedule_figure_in_runs_draws_the_same_lines(monkeypatch):
    # inpainting: a scalar gamma (formulas of t alone, (times, 1) until broadcast) and given components
    model = build_model(check_file(str(Path(__file__).resolve().parent.parent / "specs" / "inpainting.gud")))

    def lines(budget: int, **kw):
        monkeypatch.setattr(schedules, "BATCH_VALUES", budget)
        fig = schedule_figure(model, pyplot=False, **kw)
        out = [(line.get_color(), line.get_linestyle(), np.asarray(line.get_xdata()).tobytes(),
                np.asarray(line.get_ydata()).tobytes()) for ax in fig.axes for line in ax.lines]
        return out

    for kw in ({"max_lines": 7}, {"grid": 100}):
        whole = lines(WHOLE, **kw)
        assert len(whole) > 4 and lines(16 * model.dim, **kw) == whole and lines(1, **kw) == whole
