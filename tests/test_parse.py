"""Parsing and lowering: golden AST dumps with spans, grammar hygiene, and the promise that
the design card's one-liner means what it says."""

import re
from pathlib import Path

import pytest

from golden_util import check_golden
from gudlang import ast as A
from gudlang.lower import parse_program
from gudlang.parser import build_parser, grammar_text

GOLDEN = Path(__file__).parent / "golden" / "parse"
EXAMPLES = sorted(GOLDEN.glob("*.gud"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_parse_matches_golden_dump(path):
    program, smap = parse_program(path.read_text(), path.name)
    comments = "".join(f"comment {c.line}:{c.col} {c.text}\n" for c in smap.comments)
    check_golden(path.with_suffix(".expected"), A.dump(program, smap) + "\n" + comments)


def test_design_card_line_parses_to_what_it_says():
    program, _ = parse_program("gud 1\ngamma_i(t) = linear(a*t - b*rank(i))\n")
    (define,) = program.statements
    assert define == A.Define(
        "gamma_i",
        A.Call("linear", (A.BinOp("-", A.BinOp("*", A.Name("a"), A.Name("t")),
                                  A.BinOp("*", A.Name("b"), A.Call("rank", (A.Name("i"),)))),)),
        (A.Formal("t"),))


def test_positions_are_not_part_of_the_ast():
    one, smap_one = parse_program("gud 1\nx = 1 + 2\n")
    two, smap_two = parse_program("gud 1\n\n\n   x=1.0+\n 2 # comment\n")
    assert one == two
    assert smap_one.spans != smap_two.spans


def test_precedence_and_associativity():
    (st,) = parse_program("gud 1\nx = -a^b^c - d - e\n")[0].statements
    body = st.body
    assert body.op == "-" and body.right == A.Name("e")  # left-associative minus
    neg = body.left.left
    assert neg == A.Neg(A.BinOp("^", A.Name("a"), A.BinOp("^", A.Name("b"), A.Name("c"))))


def test_grammar_builds_in_strict_mode():
    build_parser(strict=True)  # raises on conflicts and terminal collisions


def test_grammar_uses_ascii_classes_and_names_every_terminal():
    text = grammar_text()
    rules = [line for line in text.splitlines() if line and not line.lstrip().startswith("//")]
    for line in rules:
        if re.match(r"^\s*[A-Z_][A-Z_0-9.]*\s*:", line):  # a terminal definition
            assert not re.search(r"\\[wdsWDS]", line), line  # \w \d \s match non-ASCII
        elif not line.lstrip().startswith("%"):
            # rules refer to named terminals only: no anonymous "..." literals
            assert '"' not in line, f"anonymous terminal in rule: {line}"


def test_old_mac_line_ends_are_line_ends():
    # a lone CR (classic Mac OS) ended no line: `# note` swallowed the rest of the file
    text = "gud 1\n# note\ndata = digits()\nbasis = pca()  # inline\ngamma(t) = linear(t)\n"
    lf_program, lf_map = parse_program(text, "lf.gud")
    cr_program, cr_map = parse_program(text.replace("\n", "\r"), "cr.gud")
    assert A.dump(cr_program, cr_map) == A.dump(lf_program, lf_map)
    assert [(c.line, c.col, c.text) for c in cr_map.comments] == [(c.line, c.col, c.text) for c in lf_map.comments]
