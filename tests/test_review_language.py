"""Bugs found by a review of the language front end, one test each: a message that pointed at
the wrong line or said something false, a follow-on error after the real one, a spec accepted
that should be refused, a number read inexactly, or two different specs hashing alike."""

import pytest

from gudlang.check import check_text
from gudlang.diagnostics import GudError, render_text
from gudlang.hashing import model_hash

HEAD = "gud 1\ndata = digits()\nbasis = pca()\n"
GAMMA = "gamma_i(t) = soft(t, -log(var(i)))\n"
FP = "0" * 64  # a stand-in data fingerprint


def errors(text: str, overrides=None) -> list:
    with pytest.raises(GudError) as info:
        check_text(text, "t.gud", overrides)
    return info.value.diagnostics


# --------------------------------------------------------------------------- follow-on errors
def test_an_error_inside_a_helper_is_not_followed_by_a_false_shape_error():
    # the helper's error was stored once, so gamma looked clean and "does not depend on t" followed
    (d,) = errors(HEAD + "f(x) = nosuch\ngamma(t) = f(t)\n")
    assert d.code == "E202"


def test_mutual_recursion_is_not_followed_by_a_false_shape_error():
    ds = errors(HEAD + "f(x) = g(x)\ng(x) = f(x)\ngamma_i(t) = soft(f(t), rank(i))\n")
    assert {d.code for d in ds} == {"E209"}
    assert ds[0].message == "`g` calls itself through `f`"


def test_a_reserved_definition_is_one_error_not_also_an_unknown_name():
    (d,) = errors(HEAD + "rank_i = 2\ngamma_i(t) = soft(t, rank_i)\n")
    assert d.code == "E212"
    (d,) = errors(HEAD + "linear_i(t) = 2\ngamma_i(t) = soft(t, linear_i(t))\n")
    assert d.code == "E212"


# --------------------------------------------------------------------------- names
def test_a_definition_is_not_silently_shadowed_by_a_per_component_param():
    # `u` reads the param `u_i`: the definition `u = 5` was accepted and ignored
    (d,) = errors(HEAD + "param u_i ~ uniform(0, 1)\nu = 5\ngamma_i(t) = linear(t) + u\n")
    assert d.code == "E203" and d.span.line == 5


def test_params_u_and_u_i_are_one_name():
    (d,) = errors(HEAD + "param u_i ~ uniform(0, 1)\nparam u = 2\ngamma_i(t) = linear(t) + u\n")
    assert d.code == "E203" and d.span.line == 5


def test_a_param_naming_a_later_param_says_so():
    (d,) = errors(HEAD + "param a = b\nparam b = 1\n" + GAMMA)
    assert d.code == "E210" and "got the name `b`" in d.message and "declare `b` first" in d.help


# --------------------------------------------------------------------------- messages
def test_the_excerpt_shows_the_line_the_parser_counted():
    # splitlines() also broke lines at a form feed (whitespace) or U+2028 in a comment
    for text in ("gud 1\n\x0cdata = digits()\nbasis = pca()\ngamma_i(t) = lienar(t)\n",
                 "gud 1\n# a \u2028 b\ndata = digits()\nbasis = pca()\ngamma_i(t) = lienar(t)\n"):
        ds = errors(text)
        assert "| gamma_i(t) = lienar(t)" in render_text(ds, text)


def test_a_doubled_equals_sign_is_not_told_to_write_a_doubled_one():
    (d,) = errors(HEAD + "gamma_i(t) == linear(t)\n")
    assert d.code == "E105" and "`==` compares" in d.help


def test_a_dangling_operator_points_to_the_unfinished_statement():
    (d,) = errors(HEAD + "x = 1 +\n" + GAMMA)
    assert d.code == "E105" and "the one above is unfinished" in d.help


def test_a_chained_comparison_says_comparisons_do_not_chain():
    (d,) = errors(HEAD + "gamma_i(t) = where(0 < t <= 1, linear(t), linear(t))\n")
    assert d.code == "E105" and "do not chain" in d.help


def test_a_second_version_line_is_not_called_a_name():
    (d,) = errors(HEAD + GAMMA + "gud 1\n")
    assert d.code == "E105" and "version line" in d.help


def test_a_positional_argument_after_a_keyword_explains_the_repeat():
    ds = errors(HEAD + "gamma_i(t) = soft(t, l = -log(var(i)), a)\n")
    assert "by position and by name" in ds[0].message and "in order" in ds[0].help


def test_a_keyword_in_where_suggests_a_comparison():
    ds = errors(HEAD + "gamma_i(t) = where(t = 0.5, linear(t), linear(t))\n")
    assert any(d.help == "to compare, write `t == ...`" for d in ds)


def test_overflowing_constants_say_so_in_words():
    (d,) = errors(HEAD + "param a = 2^2000\n" + GAMMA)
    assert "beyond +-1.8e308" in d.message and "34" not in d.message
    (d,) = errors(HEAD + "param u ~ uniform(0, 1e308*10)\n" + GAMMA)
    assert "beyond +-1.8e308" in d.message


def test_huge_integer_arithmetic_is_refused_not_a_traceback_at_hash_time():
    big = "*".join(["100000000000000000000"] * 17)
    (d,) = errors(HEAD + GAMMA + f"train {{ warmup = {big} }}\n")
    assert d.code == "E213"


def test_a_negative_base_to_a_fractional_power_is_explained():
    (d,) = errors(HEAD + "param a = (-8)^(1/3)\n" + GAMMA)
    assert "fractional power" in d.message


# --------------------------------------------------------------------------- values
def test_the_largest_seed_the_message_allows_is_accepted_exactly():
    checked = check_text(HEAD + GAMMA + "train { seed = 9223372036854775807 }\n")
    assert checked.spec.train.seed == 2 ** 63 - 1


def test_seeds_beyond_2_53_differ_in_spec_override_and_hash():
    a = check_text(HEAD + GAMMA + "train { seed = 9007199254740993 }\n")
    b = check_text(HEAD + GAMMA + "train { seed = 9007199254740992 }\n")
    assert a.spec.train.seed == 9007199254740993
    assert model_hash(a, FP) != model_hash(b, FP)
    c = check_text(HEAD + GAMMA, overrides={"train.seed": "9007199254740993"})
    assert c.spec.train.seed == 9007199254740993 and model_hash(c, FP) == model_hash(a, FP)


@pytest.mark.parametrize("setting", ["flip = yes", 'ema_warmup = "off"', "flip = 1"])
def test_a_flag_takes_true_or_false_only(setting):
    (d,) = errors(HEAD + GAMMA + f"train {{ {setting} }}\n")
    assert d.code == "E210" and "true or false" in d.message


def test_a_flag_override_takes_true_or_false_only():
    (d,) = errors(HEAD + GAMMA, {"train.flip": "yes"})
    assert d.code == "E210" and "true or false" in d.message
    assert check_text(HEAD + GAMMA, overrides={"train.flip": "TRUE"}).spec.train.flip is True


@pytest.mark.parametrize("setting", ['steps = "100"', 'lr = "1e-3"', 'betas = ["0.9", 0.99]'])
def test_a_quoted_number_is_not_a_number(setting):
    (d,) = errors(HEAD + GAMMA + f"train {{ {setting} }}\n")
    assert d.code == "E210" and '"' in d.message


def test_an_override_number_is_written_as_in_a_spec():
    (d,) = errors(HEAD + "param a = 1\n" + GAMMA, {"a": "1_000"})
    assert d.code == "E210"
    (d,) = errors(HEAD + GAMMA, {"train.steps": "1_000"})
    assert d.code == "E210"


@pytest.mark.parametrize("key, hint", [("prior", "edit the spec"), ("train", "-s train.steps=..."),
                                       ("network", "-s network.channels=...")])
def test_overriding_a_whole_section_is_not_called_a_missing_param(key, hint):
    (d,) = errors(HEAD + GAMMA, {key: "x"})
    assert d.code == "E202" and "no param" not in d.message and hint in d.help


# --------------------------------------------------------------------------- explain
def test_explain_lists_the_features_the_schedule_reads_not_those_of_other_formulas():
    from gudlang.explain import explain_text
    from gudlang.pipeline import build_model
    text = ("gud 1\ndata = digits()\nbasis = pixel()\nunused_i = col(i)\ngiven_i = row(i) < 0.3\n"
            "gamma_i(t) = linear(t)\n")
    line = next(x for x in explain_text(build_model(check_text(text))).splitlines() if x.startswith("schedule:"))
    assert line.endswith("features used: none")


def test_true_where_a_condition_goes_says_it_is_a_number():
    text = "gud 1\ndata = digits()\nbasis = pca()\nprior = white\ngamma_i(t) = where(true, linear(t), linear(t))\n"
    with pytest.raises(GudError) as info:
        check_text(text, "w.gud")
    d = info.value.diagnostics[0]
    assert d.code == "E213" and d.help.startswith("`true` is the number 1 in a formula")


def test_a_default_that_uses_another_argument_says_so():
    text = "gud 1\ndata = digits()\nbasis = pca()\nprior = white\nf(x, y = x) = x + y\ngamma_i(t) = linear(f(t))\n"
    with pytest.raises(GudError) as info:
        check_text(text, "d.gud")
    d = info.value.diagnostics[0]
    assert d.code == "E202" and "a default cannot use another argument (`x`): pass `y`" in d.help


def test_a_declaration_argument_given_by_position_and_name_says_so():
    text = 'gud 1\ndata = npz(path = "x.npz", "k")\nbasis = pca()\nprior = white\ngamma_i(t) = linear(t)\n'
    with pytest.raises(GudError) as info:
        check_text(text, "e.gud")
    d = info.value.diagnostics[0]
    assert d.code == "E205" and "(by position and by name)" in d.message and "in order" in d.help
