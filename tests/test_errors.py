"""Every error code of the front end has a failing example with its exact expected output
(tests/golden/errors/CODE_*.gud -> .expected); no input produces anything but GudError."""

from pathlib import Path

import pytest

from golden_util import check_golden
from gudlang.check import check_text
from gudlang.diagnostics import CODES, GudError, Span, render_json, render_text

GOLDEN = Path(__file__).parent / "golden" / "errors"
EXAMPLES = sorted(GOLDEN.glob("*.gud"))
FRONT_END_CODES = {c for c in CODES if c[0] == "E" and c[1] in "12" and c not in {"E001", "E003"}}


def diagnose(path: Path):
    raw = path.read_bytes()
    name = f"errors/{path.name}"
    with pytest.raises(GudError) as info:
        check_text(raw, name)
    text = raw.decode("utf-8", errors="replace")
    return info.value.diagnostics, text


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_error_example_matches_golden_output(path):
    diagnostics, text = diagnose(path)
    code = path.stem.split("_")[0]
    assert code in {d.code for d in diagnostics}, render_text(diagnostics, text)
    check_golden(path.with_suffix(".expected"), render_text(diagnostics, text) + "\n")


def test_every_front_end_code_has_an_example():
    covered = {p.stem.split("_")[0] for p in EXAMPLES}
    assert FRONT_END_CODES - covered == set()


def test_all_errors_of_a_file_are_reported_in_one_run():
    diagnostics, _ = diagnose(GOLDEN / "E210_invalid_value.gud")
    assert len(diagnostics) >= 3
    diagnostics, _ = diagnose(GOLDEN / "E105_unexpected_token.gud")
    assert len(diagnostics) == 3


def test_did_you_mean_suggests_close_names():
    diagnostics, _ = diagnose(GOLDEN / "E201_unknown_function.gud")
    assert diagnostics[0].help == "did you mean `linear`?"
    assert diagnostics[0].span.line == 6 and diagnostics[0].span.col == 14


@pytest.mark.parametrize("data, code, suggestion", [
    ('dataset("MNIST", root = "x")', "E210", "did you mean `mnist`?"),          # case aside
    ('dataset("FashionMNIST", root = "x")', "E210", "did you mean `fashion_mnist`?"),
    ("digit()", "E201", "did you mean `digits`?"),
])
def test_a_refused_value_is_one_error_not_also_a_missing_one(data, code, suggestion):
    # the refused value was dropped, so Pydantic also found the setting (or `data`) missing: a
    # second, false E206 used to follow (or lead, without a position)
    text = f"gud 1\ndata = {data}\nbasis = pixel()\ngamma(t) = linear(t)\n"
    with pytest.raises(GudError) as err:
        check_text(text, "d.gud")
    assert [(d.code, d.help) for d in err.value.diagnostics] == [(code, suggestion)]


def test_json_output_has_the_same_objects():
    import json
    diagnostics, _ = diagnose(GOLDEN / "E202_unknown_name.gud")
    records = json.loads(render_json(diagnostics))
    assert records[0]["code"] == "E202"
    assert records[0]["span"] == {"line": 4, "col": 19, "end_line": 4, "end_col": 24}
    assert records[0]["path"] == "errors/E202_unknown_name.gud"


def test_a_diagnostic_without_file_or_position_starts_with_its_severity():
    # Run-time errors (a corrupt checkpoint) have no spec position: no made-up "<input>:" prefix.
    line = render_text([GudError.one("E621", "checkpoint x is corrupt").diagnostics[0]])
    assert line == "error[E621]: checkpoint x is corrupt"
    spanned = render_text(GudError.one("E105", "unexpected token", span=Span(2, 3, 2, 4)).diagnostics, "a\nbcd\n")
    assert spanned.startswith("<input>:2:3: error[E105]")


def codes_of(text: str) -> list[str]:
    from gudlang.check import check_text
    with pytest.raises(GudError) as err:
        check_text(text, "t.gud")
    return [d.code for d in err.value.diagnostics]


HEAD = "gud 1\ndata = digits()\nbasis = pca()\nprior = white\n"


def test_a_distribution_argument_given_twice_is_E205_not_last_wins():
    assert codes_of(HEAD + "param a ~ uniform(hi = 1.5, lo = 0.5, lo = 0.2)\ngamma(t) = linear(a * t)\n") == ["E205"]


def test_a_refused_param_is_reported_once_without_follow_on_errors():
    assert codes_of(HEAD + "param a ~ uniform(2, 1)\ngamma(t) = linear(a * t)\n") == ["E210"]
    assert codes_of(HEAD + "param a ~ uniform(0, 10^400)\ngamma(t) = linear(a * t)\n") == ["E213"]


def test_reductions_with_extra_arguments_say_so():
    for call in ("mean(rank(i), 2)", "sum(x = rank(i))"):
        with pytest.raises(GudError) as err:
            from gudlang.check import check_text
            check_text(HEAD + f"gamma_i(t) = linear(t) + {call}\n", "t.gud")
        d = err.value.diagnostics[0]
        assert d.code in {"E204", "E205"} and "one positional argument" in d.message and "did you mean" not in (d.help or "")


def test_pi_is_a_constant_in_params_and_settings():
    from gudlang.check import check_text
    checked = check_text(HEAD + "param a = pi\ntrain { lr = 2e-4 * pi }\ngamma(t) = linear(a * t / 4)\n", "t.gud")
    assert checked.spec.params["a"].value == pytest.approx(3.141592653589793)
    assert checked.spec.train.lr == pytest.approx(2e-4 * 3.141592653589793)


def test_a_function_naming_an_argument_twice_is_E203():
    assert codes_of(HEAD + "f(x, x) = x\ngamma(t) = linear(f(0.5, t))\n") == ["E203"]


def test_a_param_used_as_a_setting_says_params_only_enter_formulas():
    for where in ("network = unet(channels = a)\n", "train { steps = a }\n", "data = grf(size = a)\n"):
        text = HEAD.replace("data = digits()\n", "" if where.startswith("data") else "data = digits()\n")
        from gudlang.check import check_text
        with pytest.raises(GudError) as err:
            check_text(text + "param a = 4\n" + where + "gamma(t) = linear(t)\n", "t.gud")
        d = err.value.diagnostics[0]
        assert d.code == "E213" and "params only enter formulas" in d.message, where


@pytest.mark.parametrize("definition, hint", [("wieght(t) = 1", "did you mean `weight`?"),
                                              ("gama(t) = linear(t)", "did you mean `gamma`?"),
                                              ("path_j(t) = linear(t)", "did you mean `path_i`?"),
                                              ("given_j_i = index(i) < 3", "did you mean `given_i`?")])
def test_an_unused_definition_named_like_a_declaration_is_W201(definition, hint):
    # A misspelt weight or path would otherwise be a helper that nothing calls: silently ignored.
    text = f"gud 1\ndata = digits()\nbasis = pca()\ngamma(t) = linear(t)\nh(t) = t\nl_i = rank(i)\n{definition}\n"
    (w,) = check_text(text, "s.gud").warnings  # h and l_i, unused but unlike any declaration, are not warned about
    assert w.code == "W201" and w.severity == "warning" and hint in w.help and w.span.line == 7
    assert check_text(text.replace(definition, ""), "s.gud").warnings == ()


def test_a_schedule_refused_as_set_twice_is_not_also_missing():
    text = "gud 1\ndata = digits()\nbasis = pca()\nparam gamma = 1\ngamma(t) = linear(t)\n"
    with pytest.raises(GudError) as info:
        check_text(text, "s.gud")
    assert [d.code for d in info.value.diagnostics] == ["E203"]  # no follow-on "E206 the spec has no schedule"
    with pytest.raises(GudError) as info:
        check_text("gud 1\ndata = digits()\nbasis = pca()\n", "s.gud")
    assert [d.code for d in info.value.diagnostics] == ["E206"]


def test_a_drawn_param_whose_range_leaves_a_library_arguments_is_e210_at_the_argument():
    # it used to surface as E301 (gamma decreases) at some corner of the range
    text = ("gud 1\ndata = digits()\nbasis = pca()\nparam a ~ uniform(-1, 2)\nparam b ~ uniform(0.2, 0.5)\n"
            "gamma_i(t) = soft(t, rank(i), a = a) + 0 * sequential(t, rank(i), b = b)\n")
    with pytest.raises(GudError) as err:
        check_text(text, "d.gud")
    (d,) = err.value.diagnostics
    assert d.code == "E210" and d.span.col == 35
    assert d.message == ("argument `a` of `soft` must be a number >= 0 (0: no hierarchy), but param `a` is drawn "
                         "from uniform(-1, 2), which reaches -1")
