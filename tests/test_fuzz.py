"""Fuzzing the front end with Hypothesis.

Promises checked: (a) every AST the grammar can express prints (with the formatter) to text
that parses back to the same AST, in any layout and with comments anywhere, and formatting
is idempotent; (b) no input, however malformed, makes `parse_program` raise anything but
`GudError`; (c) hostile inputs (huge, deep, binary, non-ASCII) fail fast with the right code.
"""

import math
import re
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gudlang.builtins
from gudlang import ast as A
from gudlang.diagnostics import GudError
from gudlang.fmt import format_program, format_text
from gudlang.lower import parse_program

KEYWORDS = list(gudlang.builtins.keywords())
# About 5,000 cases in all, under a minute on two cores; test_many_more_layouts is the long run.
AST_FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT_FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- ASTs
# Names that start like keywords check that the lexer does not split them. (Composed from
# small strategies: `st.from_regex` is several times slower to draw.)
LETTERS = string.ascii_letters + "_"
DIGITS = string.digits
names = st.one_of(
    st.builds(str.__add__, st.sampled_from(LETTERS), st.text(LETTERS + DIGITS, max_size=6)),
    st.sampled_from(["t", "i", "l_i", "gamma_i", "datax", "params", "trainer", "gud1", "sample_"]),
).filter(lambda s: s not in KEYWORDS)
digits = st.text(DIGITS, min_size=1, max_size=4)
mantissas = st.one_of(digits, st.builds("{}.{}".format, digits, st.text(DIGITS, max_size=3)),
                      digits.map(".{}".format))
exponents = st.one_of(st.just(""), st.builds("{}{}{}".format, st.sampled_from("eE"),
                                             st.sampled_from(["", "+", "-"]), digits))
# Literals beyond the float64 range are E210 (a hostile case below), not part of the grammar's ASTs.
number_texts = st.builds(str.__add__, mantissas, exponents).filter(lambda text: math.isfinite(float(text)))
numbers = number_texts.map(lambda text: A.Num(float(text), text))
# A string holds anything but CR (no escape for it) and NUL (refused as binary input).
strings = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"),
                  max_size=8).map(A.Str)
atoms = st.one_of(numbers, names.map(A.Name), strings)


def _compound(children):
    keywords = st.builds(A.Keyword, names, children)
    return st.one_of(
        st.builds(A.BinOp, st.sampled_from("+-*/^"), children, children),
        st.builds(A.Neg, children),
        st.builds(A.Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), children, children),
        st.builds(A.List, st.lists(children, max_size=3).map(tuple)),
        st.builds(A.Call, names, st.lists(children, max_size=3).map(tuple),
                  st.lists(keywords, max_size=2).map(tuple)),
    )


exprs = st.recursive(atoms, _compound, max_leaves=12)
calls = st.builds(A.Call, names, st.lists(exprs, max_size=3).map(tuple),
                  st.lists(st.builds(A.Keyword, names, exprs), max_size=2).map(tuple))
formals = st.builds(A.Formal, names, st.none() | exprs)
statements = st.one_of(
    st.builds(A.Assign, st.sampled_from(["data", "basis", "prior", "network"]), exprs),
    st.builds(A.Param, names, value=exprs),
    st.builds(A.Param, names, dist=calls),
    st.builds(A.Define, names, exprs, st.none() | st.lists(formals, min_size=1, max_size=3).map(tuple)),
    st.builds(A.Block, st.sampled_from(["train", "sample", "runtime"]),
              st.lists(st.builds(A.Setting, names, exprs), max_size=4).map(tuple)),
)
programs = st.builds(A.Program, st.sampled_from([A.Num(1.0, "1"), A.Num(1.0, "1.0")]),
                     st.lists(statements, max_size=5).map(tuple))

# The tokens of canonical text (a Lark lexer costs tens of ms to build, per call of `lex`).
TOKEN = re.compile(r'"(?:[^"\\\n\r]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*'
                   r"|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[<>=!]=|\S")
# Between two tokens any whitespace, newline or comment may appear.
SEPARATORS = [" ", "  ", "\t", "\n", "\n\n", "\n\n\n", " # note\n", "# x #y\n", "\n  # own line\n\n", "\r\n"]


@st.composite
def laid_out(draw):
    """A random program and a random layout of its canonical text."""
    program = draw(programs)
    tokens = TOKEN.findall(format_program(program, A.SourceMap()))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    return program, "".join(t + s for t, s in zip(tokens, seps))


def comment_texts(text):
    return sorted(c.text.rstrip() for c in parse_program(text)[1].comments)


@AST_FUZZ
@given(programs)
def test_printed_ast_parses_back_to_itself(program):
    text = format_program(program, A.SourceMap())
    assert parse_program(text)[0] == program
    assert format_text(text) == text


@AST_FUZZ
@given(laid_out())
def test_any_layout_with_comments_formats_to_the_same_ast_and_comments(case):
    program, text = case
    out = format_text(text)
    assert parse_program(text)[0] == program
    assert parse_program(out)[0] == program
    assert format_text(out) == out
    assert comment_texts(out) == comment_texts(text)


# --------------------------------------------------------------------------- junk
TERMINALS = KEYWORDS + ["=", "~", "+", "-", "*", "/", "^", "(", ")", "[", "]", "{", "}", ",", ";",
                        "<", "<=", ">", ">=", "==", "!=", "#", '"', "\\", "1", "1.5e-3", ".5", "2.",
                        "x", "gamma_i", '"s"', '"\\"', " ", "\n", "\t", "\r", "\f"]
soup_pieces = st.one_of(
    st.sampled_from(TERMINALS),
    names,
    number_texts,
    st.characters(),  # any code point: unicode letters and digits, controls, surrogates
    st.sampled_from(["\x00", "\x7f", "\x0b", "\x1c", "\x85", "\u2028", "\ufeff", "٣", "１", "é", "{{", "]]"]),
)
soups = st.lists(soup_pieces, max_size=40).map("".join)


@st.composite
def mutants(draw):
    """Valid text with a few characters deleted, replaced or inserted: near misses that
    drive the parser's error recovery."""
    _, text = draw(laid_out())
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 3)))
        text = text[:start] + draw(st.just("") | soup_pieces) + text[end:]
    return text


def parses_or_reports(text):
    """`parse_program` gives a program or a GudError; when it succeeds, the formatter
    keeps the AST and comments and is idempotent."""
    try:
        program, _ = parse_program(text)
    except GudError:
        return
    out = format_text(text)
    assert parse_program(out)[0] == program
    assert format_text(out) == out
    assert comment_texts(out) == comment_texts(text)


@TEXT_FUZZ
@given(soups)
def test_token_soup_parses_or_raises_gud_error(text):
    parses_or_reports(text)


@TEXT_FUZZ
@given(soups)
def test_token_soup_after_a_version_line_parses_or_raises_gud_error(text):
    parses_or_reports("gud 1\n" + text)


@AST_FUZZ
@given(mutants())
def test_near_miss_text_parses_or_raises_gud_error(text):
    parses_or_reports(text)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_arbitrary_text_parses_or_raises_gud_error(text):
    parses_or_reports(text)


@settings(max_examples=500, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_parse_or_raise_gud_error(data):
    try:
        parse_program(data)
    except GudError:
        pass


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(laid_out())
def test_many_more_layouts(case):
    program, text = case
    assert parse_program(format_text(text))[0] == program


# --------------------------------------------------------------------------- hostile inputs
def codes(source):
    with pytest.raises(GudError) as info:
        parse_program(source)
    return {d.code for d in info.value.diagnostics}


@pytest.mark.parametrize("source, code", [
    ("", "E103"),
    ("\n\n  \n", "E103"),
    ("# only\n# comments\n", "E103"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "E002"),
    (b"gud 1\n\xff\xfe junk", "E002"),
    ("gud 1\nx = 1\x00\n", "E002"),
    ("gud ١", "E101"),
    ("gud 1\nparam a = ١٢\n", "E101"),
    ("gud 1\ntrain { steps = 1\n", "E102"),
    ("gud 1\nx = f(1, [2)\n", "E102"),
    ("gud 1\nx = 1)\n", "E102"),
    ("gud 2\n", "E104"),
    ("gud 1\nx = 1 +\n", "E106"),
    ("gud 1\nx = " + "(" * 10_000 + "1" + ")" * 10_000 + "\n", "E107"),
    ("gud 1\nparam a = 1e400\n", "E210"),
    ("gud 1\ntrain { lr = 0.5e99999 }\n", "E210"),
])
def test_hostile_input_gives_its_error_code(source, code):
    assert code in codes(source)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_ten_megabyte_file_fails_fast(as_bytes):
    source = "gud 1\n" + "x = 1 + 2  # padding\n" * 500_000
    source = source.encode() if as_bytes else source
    start = time.perf_counter()
    assert codes(source) == {"E107"}
    assert time.perf_counter() - start < 2.0


def test_fifty_thousand_term_sum_is_rejected_or_parsed_without_recursion_error():
    try:
        parse_program("gud 1\nx = " + "+".join(["1"] * 50_000) + "\n")
    except GudError as e:
        assert {d.code for d in e.diagnostics} == {"E107"}


@pytest.mark.parametrize("body", [
    "+".join(["1"] * 900),
    "*".join(["a"] * 900),
    "^".join(["a"] * 900),
    "-" * 900 + "a",
    "(" * 64 + "a" + ")" * 64,
], ids=["sum", "product", "power", "negation", "parentheses"])
def test_deepest_accepted_expressions_format_idempotently(body):
    try:
        parse_program(f"gud 1\nx = {body}\n")
    except GudError as e:  # too deep for the lowering: a clean error is also a pass
        assert {d.code for d in e.diagnostics} == {"E107"}
        return
    out = format_text(f"gud 1\nx = {body}\n")
    assert format_text(out) == out


def test_very_long_names_parse_and_format():
    name = "n" * 200_000
    program, _ = parse_program(f"gud 1\n{name} = f({name}, k = {name})\n")
    assert program.statements[0].name == name
    assert format_text(f"gud 1\n{name}={name}") == f"gud 1\n\n{name} = {name}\n"
