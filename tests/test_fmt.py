"""`gud fmt` promises: formatting is idempotent, never changes the AST, keeps every comment
exactly once, and gives the documented canonical layout (exact examples and golden files
tests/golden/fmt/*.gud -> .expected)."""

from collections import Counter
from pathlib import Path

import pytest

from golden_util import check_golden
from gudlang import ast as A
from gudlang.builtins import PRELUDE
from gudlang.fmt import format_expr, format_program, format_text, unified_diff
from gudlang.lower import parse_program

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted([*(ROOT / "specs").glob("*.gud"), *(ROOT / "specs").glob("peers/*.gud")])
GOLDEN = sorted((Path(__file__).parent / "golden" / "fmt").glob("*.gud"))

# Every syntax form, comments in every position, and layouts far from canonical.
INLINE = {
    "minimal": "gud 1",
    "version_split_by_comment": "gud # between\n1 # after\n",
    "version_only_with_comment": "gud 1 # v\n",
    "only_comments_after_version": "gud 1\n\n\n# a\n\n\n# b\n",
    "all_statement_kinds": (
        "gud 1\ndata = digits()\nbasis = pca(keep = 16)\nprior = white\nnetwork = unet()\n"
        "param a = 1.0\nparam b ~ uniform(0.4, 1.6)\nl_i = -log(var(i))\n"
        "f(x, y = 2) = x + y\ntrain { steps = 1 }\nsample {}\nruntime { device = \"cpu\" }\n"
    ),
    "one_line_file": "gud 1 data = digits() basis = pca() prior = white train { steps = 3; batch = 4 }",
    "semicolons": "gud 1;;data = digits();;param a = 1;\ntrain { ; ; a = 1 ;; b = 2 ; }",
    "multi_line_expressions": (
        "gud 1\ng(t) =\n    log(1 +\n        t) *\n    2\n\nh(t, a = [1,\n  2]) = (\n  t\n)\n"
    ),
    "nested_calls": "gud 1\nx = f(g(h(k(1, 2), m = n(o = p())), [q(), [r]]), s = [])\n",
    "unary_and_power": "gud 1\nx = -a^2 - (-a)^2 + a^-b^c - (-(a^b))^c + --a - - -a + +a*-b/-c\n",
    "associativity": "gud 1\nx = (a - b) - c + (a - (b - c)) * ((a / b) / c) / (a / (b / c))\n",
    "comparisons": "gud 1\nx = where((a < b) == (c >= d), a != b, (a + 1) <= [b > c])\n",
    "numbers": "gud 1\nx = 1 + 1.0 + 1. + .5 + 2e-4 + 2E+04 + 1e308 + 0007 + 3.25e0\n",
    "strings": 'gud 1\ndata = npz("a \\"b\\" \\\\ c\\nd\\te\tf é # not a comment")\n',
    "keywords_before_positionals": "gud 1\nx = f(a = 1, 2, b = 3, 4)\n",
    "crlf_and_tabs": "gud 1\r\n\r\n\tdata = digits()\t# tabbed\r\ntrain {\r\n\tsteps = 1\r\n}\r\n",
    "comments_everywhere": (
        "# head 1\n\n# head 2\ngud 1 # v\n# before a\na = 1 # a\nb = f(1, # in b\n  2 # in b too\n"
        ") # after b\n\n\n# paragraph\ntrain { # brace\n  x = 1 # x\n  # before y\n  y = [1, # in y\n"
        "  2]\n  # dangling\n} # after train\nsample { # alone\n}\n# tail 1\n\n# tail 2"
    ),
    "comment_in_block_on_one_line": "gud 1\ntrain { steps = 1; batch = 2 } # fine\n",
    "two_statements_one_line_comment": "gud 1\na = 1; b = 2 # on b\n",
    "hash_inside_string": 'gud 1\ndata = npz("x#y") # real\n',
    "empty_comments": "#\ngud 1 #\na = 1 #\n#\n",
    "trailing_spaces_in_comments": "gud 1   \n# spaced   \na = 1  # spaced too   \n",
    "bom": "\ufeffgud 1\na = 1\n",
    "long_block": "gud 1\ntrain { " + "; ".join(f"setting_{k} = {k}" for k in range(12)) + " }\n",
    "long_definition": "gud 1\nx = " + " + ".join(f"term_{k}*t" for k in range(20)) + "\n",
    # Deep, but within what dataclass equality can compare without a RecursionError.
    "deep_left_sum": "gud 1\nx = " + "+".join(["1"] * 200) + "\n",
    "deep_power_chain": "gud 1\nx = " + "^".join(["a"] * 200) + "\n",
}

# Input -> exact canonical output: the layout rules, spelled out.
EXPECTED = [
    ("gud 1", "gud 1\n"),
    ("gud   1\n\n\n\ndata=digits( )\nprior =white", "gud 1\n\ndata = digits()\nprior = white\n"),
    ("gud 1\nparam a=1.0\nparam b~uniform(0.4,1.6)", "gud 1\n\nparam a = 1.0\nparam b ~ uniform(0.4, 1.6)\n"),
    ("gud 1\nf(x,y=2)=x+y", "gud 1\n\nf(x, y = 2) = x + y\n"),
    ("gud 1\ng(t)=linear(a * t-b * rank(i))", "gud 1\n\ng(t) = linear(a*t - b*rank(i))\n"),
    ("gud 1\nx = (a-b)-c - (a-(b-c))", "gud 1\n\nx = a - b - c - (a - (b - c))\n"),
    ("gud 1\nx = -(a^2) + (-a)^2 + a^(-b) + (a^b)^c + a^(b^c)",
     "gud 1\n\nx = -a^2 + (-a)^2 + a^-b + (a^b)^c + a^b^c\n"),
    ("gud 1\nx=f( [1,2] ,k=\"q\\\"\" )", 'gud 1\n\nx = f([1, 2], k = "q\\"")\n'),
    ("gud 1\na = 1\n\n\n\nb = 2\nc = 3", "gud 1\n\na = 1\n\nb = 2\nc = 3\n"),
    ("gud 1\ntrain {\n steps = 3000\n batch = 128\n}", "gud 1\n\ntrain { steps = 3000; batch = 128 }\n"),
    ("gud 1\ntrain {steps = 3000 # why\n}", "gud 1\n\ntrain {\n  steps = 3000  # why\n}\n"),
    ("gud 1\ntrain {  }", "gud 1\n\ntrain {}\n"),
    ("gud 1\nx = f(1, # one\n 2)  # two", "gud 1\n\n# one\nx = f(1, 2)  # two\n"),
    ("# top\ngud 1\n# end", "# top\ngud 1\n\n# end\n"),
]


def _comments(text: str) -> Counter:
    _, smap = parse_program(text)
    return Counter(c.text.rstrip() for c in smap.comments)


CASES = [pytest.param(p.read_text(encoding="utf-8"), id=f"specs/{p.name}") for p in SPECS]
CASES += [pytest.param(p.read_text(encoding="utf-8"), id=f"golden/{p.name}") for p in GOLDEN]
CASES += [pytest.param(text, id=name) for name, text in INLINE.items()]
CASES += [pytest.param(PRELUDE, id="prelude")]
CASES += [pytest.param(text, id=f"expected{k}") for k, (text, _) in enumerate(EXPECTED)]


@pytest.mark.parametrize("text", CASES)
def test_formatting_is_idempotent(text):
    once = format_text(text)
    assert format_text(once) == once


@pytest.mark.parametrize("text", CASES)
def test_formatting_keeps_the_ast(text):
    assert parse_program(format_text(text))[0] == parse_program(text)[0]


@pytest.mark.parametrize("text", CASES)
def test_formatting_keeps_every_comment_exactly_once(text):
    assert _comments(format_text(text)) == _comments(text)


@pytest.mark.parametrize("text", CASES)
def test_output_ends_with_one_newline_and_has_no_trailing_spaces(text):
    out = format_text(text)
    assert out.endswith("\n") and not out.endswith("\n\n")
    assert all(line == line.rstrip() for line in out.split("\n"))
    assert "\n\n\n" not in out


@pytest.mark.parametrize("text, expected", EXPECTED)
def test_canonical_layout(text, expected):
    assert format_text(text) == expected


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_output(path):
    check_golden(path.with_suffix(".expected"), format_text(path.read_text(encoding="utf-8"), str(path)))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_spec_is_in_canonical_form(path):
    text = path.read_text(encoding="utf-8")
    assert format_text(text) == text, unified_diff(text, format_text(text), str(path))


@pytest.mark.parametrize("source, expected", [
    ("a - (b - c)", "a - (b - c)"),
    ("(a - b) - c", "a - b - c"),
    ("a / (b * c)", "a/(b*c)"),
    ("(a * b) / c", "a*b/c"),
    ("-a^2", "-a^2"),
    ("(-a)^2", "(-a)^2"),
    ("a^-b", "a^-b"),
    ("a^(b + c)", "a^(b + c)"),
    ("(a < b) < c", "(a < b) < c"),
    ("a < (b < c)", "a < (b < c)"),
    ("-(a + b)", "-(a + b)"),
    ("a * -b", "a*-b"),
    ("(a)", "a"),
])
def test_format_expr_uses_minimal_parentheses(source, expected):
    program, _ = parse_program(f"gud 1\nx = {source}\n")
    assert format_expr(program.statements[0].body) == expected


def test_format_program_needs_no_source_map():
    """`gud explain` prints synthesized definitions without a version line or source."""
    program = A.Program(None, (A.Define("g", A.BinOp("*", A.Num(2.0, "2"), A.Name("t")), (A.Formal("t"),)),
                               A.Block("train", (A.Setting("steps", A.Num(3.0)),))))
    assert format_program(program, A.SourceMap()) == "g(t) = 2*t\ntrain { steps = 3.0 }\n"


def test_unified_diff_names_the_file_and_is_empty_when_unchanged():
    old = "gud 1\nx=1\n"
    new = format_text(old)
    diff = unified_diff(old, new, "specs/x.gud")
    assert diff.startswith("--- specs/x.gud (original)\n+++ specs/x.gud (formatted)\n")
    assert "-x=1\n" in diff and "+x = 1\n" in diff
    assert unified_diff(new, new, "specs/x.gud") == ""


def test_fmt_dash_is_a_filter_from_stdin_to_stdout():
    import subprocess
    import sys
    messy = "gud 1\ndata=digits()\ngamma(t)=linear( t )\n"
    done = subprocess.run([sys.executable, "-m", "gudlang", "fmt", "-"], input=messy, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "gud 1\n\ndata = digits()\ngamma(t) = linear(t)\n"
    bad = subprocess.run([sys.executable, "-m", "gudlang", "fmt", "-"], input="gud 1\ndata = (\n",
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "error[E1" in bad.stderr and bad.stdout == ""


def test_fmt_dash_beside_files_is_a_usage_error(capsys):
    # it was read as a file named `-`
    from gudlang.cli import main
    assert main(["fmt", "specs/digits.gud", "-"]) == 2
    assert "error[E003]: `-` (the spec on stdin) is given alone" in capsys.readouterr().err


def test_fmt_dash_refuses_bytes_that_are_not_utf8_as_fmt_file_does():
    import subprocess
    import sys
    latin1 = "gud 1\n# caf\u00e9\ndata = digits()\n".encode("latin-1")
    done = subprocess.run([sys.executable, "-m", "gudlang", "fmt", "-"], input=latin1, capture_output=True)
    assert done.returncode == 2 and done.stdout == b""  # not rewritten with U+FFFD; as `gud fmt FILE`
    assert b"E002" in done.stderr and b"not UTF-8" in done.stderr and b"<stdin>" in done.stderr
    utf8 = "gud 1\n# caf\u00e9\ndata = digits()\n".encode()
    done = subprocess.run([sys.executable, "-m", "gudlang", "fmt", "-"], input=utf8, capture_output=True)
    assert done.returncode == 0 and done.stdout == "gud 1\n\n# caf\u00e9\ndata = digits()\n".encode()


def test_a_wide_call_takes_one_argument_a_line_and_stays_so():
    text = ("gud 1\n# the network\nnetwork = unet(channels = 128, channel_mult = [1, 2, 2, 2], num_res_blocks = 2, "
            "attention_resolutions = [16], dropout = 0.1)  # 35M\nparam a ~ uniform(0, 1)\n")
    want = ("gud 1\n\n# the network\nnetwork = unet(\n  channels = 128,\n  channel_mult = [1, 2, 2, 2],\n"
            "  num_res_blocks = 2,\n  attention_resolutions = [16],\n  dropout = 0.1\n)  # 35M\n"
            "param a ~ uniform(0, 1)\n")
    assert format_text(text) == want
    assert format_text(want) == want
    short = "gud 1\n\nnetwork = unet(channels = 32)\n"
    assert format_text(short) == short
    wide_single = "gud 1\n\nl_i = " + " + ".join(["rank(i)"] * 14) + "\n"  # not a call: one line
    assert format_text(wide_single) == wide_single


@pytest.mark.parametrize("option", ["--check", "--diff"])
def test_fmt_dash_with_check_or_diff_says_whether_the_spec_would_change(option, monkeypatch, capsys):
    # both were ignored: the formatted spec was printed and the exit code was 0
    import io
    import sys

    from gudlang.cli import main
    messy, tidy = "gud 1\ndata=digits()\ngamma(t)=linear( t )\n", "gud 1\n\ndata = digits()\ngamma(t) = linear(t)\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(messy.encode())))
    assert main(["fmt", option, "-"]) == 1
    out, err = capsys.readouterr()
    if option == "--check":
        assert out == "" and "<stdin>: would reformat" in err
    else:
        assert "--- <stdin> (original)" in out and "+data = digits()" in out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(tidy.encode())))
    assert main(["fmt", option, "-"]) == 0 and capsys.readouterr().out == ""


def test_fmt_never_leaves_a_spec_cut_short(tmp_path, monkeypatch, capsys):
    # the file was rewritten in place: a full disk left the first 1024 bytes, which still checked
    import errno
    import os

    from gudlang import checkpoint
    from gudlang.cli import main
    spec = tmp_path / "s.gud"
    messy = "gud 1\ndata=digits()\ngamma(t)=linear( t )\n"
    spec.write_text(messy)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    assert main(["fmt", str(spec)]) == 2  # a file that cannot be written: as one that cannot be read
    err = capsys.readouterr().err
    assert "E001" in err and str(spec) in err and "No space left" in err and "unchanged" in err
    assert spec.read_text() == messy and sorted(p.name for p in tmp_path.iterdir()) == ["s.gud"]


def test_fmt_keeps_a_symlinked_spec_a_link(tmp_path):
    from gudlang.cli import main
    target, link = tmp_path / "real.gud", tmp_path / "link.gud"
    target.write_text("gud 1\ndata=digits()\ngamma(t)=linear( t )\n")
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("symlinks not available")
    assert main(["fmt", str(link)]) == 0
    assert link.is_symlink() and target.read_text() == "gud 1\n\ndata = digits()\ngamma(t) = linear(t)\n"
