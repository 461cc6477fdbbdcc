"""`gud explain`'s account of the generation order: components that never move are reported as
never noised (not as generated first), and the most components in motion at once is shown."""

import re
from pathlib import Path

from gudlang.check import check_file, check_text
from gudlang.explain import explain_text
from gudlang.pipeline import build_model

SPECS = Path(__file__).resolve().parent.parent / "specs"


def order_section(model) -> str:
    return explain_text(model).split("# generation order")[1].split("\n\n")[0]


def test_components_whose_gamma_never_moves_are_never_noised_not_first_generated():
    text = ("gud 1\ndata = digits()\nbasis = pixel()\nprior = white\n"
            "gamma_i(t) = where(col(i) < 0.5, linear(t), -13.3 + 0 * t)\n")
    model = build_model(check_text(text, "still.gud"))
    section = order_section(model)
    assert "never noised:    32 of 64 components (gamma constant in t)" in section
    for line in ("first generated", "then", "middle", "last generated"):
        i = int(re.search(rf"{line}: +component (\d+)", section).group(1))
        assert model.features["col"][i] < 0.5, line
    assert "most in motion:  32 of 64 components at once" in section


def test_the_autoregressive_spec_moves_one_component_at_a_time():
    section = order_section(build_model(check_file(str(SPECS / "autoregressive.gud"))))
    assert "never noised" not in section
    assert "most in motion:  1 of 64 components at once" in section


def test_given_components_are_listed_as_given_not_generated():
    model = build_model(check_file(str(SPECS / "inpainting.gud")))
    section = order_section(model)
    given = int(model.given.sum())
    assert f"given:           {given} of 64 components (given_i: known when sampling" in section
    assert "never noised" not in section
    first = int(re.search(r"first generated: +component (\d+)", section).group(1))
    assert not model.given[first]
