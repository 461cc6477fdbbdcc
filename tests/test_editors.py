"""Editor support promises: the Pygments lexer highlights every shipped spec without error
tokens and splits any text exactly where gud's own lexer (Lark, from grammar/gud.lark) does;
characters the gud lexer rejects are error tokens at the position `gud check` reports; the
TextMate grammar and the Vim syntax file agree with the lexer on every character; the
committed editor files are what editors/generate.py writes; the lexer is registered with
Pygments and gudlang works without it; and the problem matchers, the Vim errorformat and the
format-on-save recipe of docs/editors.md work on real `gud check` / `gud fmt` output (Vim
and Node.js checks are skipped where those programs are missing).

The TextMate grammar is run by `TextMate` below, a small interpreter of the TextMate rules
(leftmost match, ties to the earlier pattern, end pattern first, line by line) on Python's
`re`, which agrees with Oniguruma on the constructs the grammar uses (checked by
`test_textmate_regexes_use_only_portable_constructs`).
"""

import contextlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Lark

pytest.importorskip("pygments")
from lark.exceptions import UnexpectedCharacters  # noqa: E402
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename  # noqa: E402
from pygments.token import Error, Token, Whitespace  # noqa: E402

from gudlang import builtins  # noqa: E402
from gudlang import lexer as L  # noqa: E402
from gudlang.cli import main as gud  # noqa: E402
from gudlang.parser import build_parser, grammar_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "editors"))
import generate  # noqa: E402

SHIPPED = sorted([*(ROOT / "specs").glob("*.gud"), *(ROOT / "specs" / "paper").glob("*.gud"),
                  *(ROOT / "specs" / "peers").glob("*.gud"),
                  *GOLDEN.glob("**/*.gud")])
# The golden files that the gud lexer itself rejects (NUL bytes, `$`, a non-ASCII digit).
LEXICALLY_INVALID = {GOLDEN / "errors" / n for n in
                     ("E002_binary.gud", "E101_unexpected_character.gud", "E101_unicode_digit.gud")}
DOCS = (ROOT / "docs" / "editors.md").read_text(encoding="utf-8")
PACKAGE = json.loads((ROOT / "editors" / "vscode" / "package.json").read_text(encoding="utf-8"))
GRAMMAR = json.loads(generate.TEXTMATE.read_text(encoding="utf-8"))


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def pygments_tokens(text: str) -> list[tuple[int, object, str]]:
    return list(L.GudLexer().get_tokens_unprocessed(text))


def per_char(tokens, length: int) -> list:
    kinds = [None] * length
    for start, kind, value in tokens:
        kinds[start:start + len(value)] = [kind] * len(value)
    return kinds


# --------------------------------------------------------------------------- Pygments
@pytest.mark.parametrize("path", SHIPPED, ids=ids(SHIPPED))
def test_shipped_file_has_no_error_token_unless_gud_rejects_its_characters(path):
    text = read(path)
    errors = [(start, value) for start, kind, value in pygments_tokens(text) if kind is Error]
    if path not in LEXICALLY_INVALID:
        assert errors == []
        return
    # The first error token sits at the line:col of the diagnostic `gud check` prints.
    header = (path.with_suffix(".expected")).read_text(encoding="utf-8").splitlines()[0]
    line, col = map(int, re.match(r"[^:]*:(\d+):(\d+): error\[E(?:002|101)\]", header).groups())
    start = errors[0][0]
    assert text.count("\n", 0, start) + 1 == line
    if "[E101]" in header:  # E002 points at the line of the NUL byte only
        assert start - text.rfind("\n", 0, start) == col


def test_the_schedule_library_highlights_without_error_tokens():
    assert not [t for t in pygments_tokens(builtins.PRELUDE) if t[1] is Error]


def test_tokens_cover_the_text_exactly():
    for path in SHIPPED:
        text = read(path)
        assert "".join(value for _, _, value in pygments_tokens(text)) == text


# gud's lexer alone: the terminals of grammar/gud.lark, as `build_parser().lex` uses them,
# built once (`lex` of the LALR parser rebuilds its lexer on every call).
GUD_LEXER = Lark(grammar_text(), parser=None, lexer="basic")

# Lark terminal -> the Pygments token types allowed for its text.
KEYWORD_TERMINALS = {t.name: t.pattern.value for t in build_parser().terminals
                     if t.pattern.value in L.grammar_keywords()}
ALLOWED = {"NUMBER": {Token.Literal.Number.Integer, Token.Literal.Number.Float},
           "STRING": {Token.Literal.String.Double, Token.Literal.String.Escape},
           "NAME": {Token.Name, Token.Name.Builtin, Token.Name.Builtin.Pseudo, Token.Name.Attribute,
                    Token.Name.Function, Token.Name.Variable, Token.Name.Property, Token.Keyword.Constant},
           **{name: {Token.Operator} for name in ("EQUAL", "TILDE", "PLUS", "MINUS", "STAR", "SLASH",
                                                  "CARET", "COMPARE")},
           **{name: {Token.Punctuation} for name in ("LPAR", "RPAR", "LSQB", "RSQB", "LBRACE", "RBRACE",
                                                     "COMMA", "SEMI")},
           **{name: {Token.Operator.Word if word in L.WORD_OPERATORS else Token.Keyword}
              for name, word in KEYWORD_TERMINALS.items()}}


def assert_agrees_with_the_gud_lexer(text: str) -> None:
    """Pygments splits and classifies `text` as Lark's lexer of grammar/gud.lark does, and
    its first error token is where Lark's lexer stops (none when Lark accepts the text)."""
    tokens = pygments_tokens(text)
    first_error = next((start for start, kind, _ in tokens if kind is Error), None)
    try:
        reference = list(GUD_LEXER.lex(text))
        stop = None
    except UnexpectedCharacters as e:
        stop = e.pos_in_stream
        reference = list(GUD_LEXER.lex(text[:stop]))
    assert first_error == stop
    kinds = per_char(tokens, len(text))
    bounds = {start for start, _, _ in tokens} | {len(text)}
    covered = [False] * len(text)
    for tok in reference:
        start, end = tok.start_pos, tok.end_pos
        assert start in bounds and end in bounds, f"{tok!r} split differently at {start}"
        assert set(kinds[start:end]) <= ALLOWED[tok.type], f"{tok!r}: {set(kinds[start:end])}"
        if tok.type == "NUMBER":
            assert kinds[start] is (Token.Literal.Number.Float if set(tok) & set(".eE")
                                    else Token.Literal.Number.Integer)
        covered[start:end] = [True] * (end - start)
    gaps = {kind for kind, c in zip(kinds[:stop], covered[:stop]) if not c}
    assert gaps <= {Whitespace, Token.Comment.Single}


@pytest.mark.parametrize("path", sorted(set(SHIPPED) - LEXICALLY_INVALID),
                         ids=ids(sorted(set(SHIPPED) - LEXICALLY_INVALID)))
def test_shipped_file_splits_like_the_gud_lexer(path):
    assert_agrees_with_the_gud_lexer(read(path))


FRAGMENTS = ["gud", "data", "basis", "param", "train", "sample", "and", "or", "not", "andy", "nota",
             "x", "l_i", "i", "t", "pi", "true", "var", "rank", "log", "linear", "max", "uniform",
             "1", "1.", ".5", "2e-3", "1e", "0007", "E5", '"a"', '"\\n"', '"\\q"', '"é"', '"', "\\",
             "# note", "=", "==", "<=", "!", "~", "+", "-", "*", "/", "^", "(", ")", "[", "]", "{", "}",
             ",", ";", " ", "\t", "\n", "\r\n", "\f", "$", "é", "\x0b", "\x00", "٣"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_any_fragment_soup_splits_like_the_gud_lexer(text):
    assert_agrees_with_the_gud_lexer(text)


SAMPLE = "gamma_i(t) = soft(t, l_i, a = a) + max(var(i)) * pi and not x  # note\n"
SAMPLE_CATEGORIES = [
    ("gamma_i", "function-definition"), ("(", "open-bracket"), ("t", "implicit"), (")", "close-bracket"),
    ("=", "assignment"), ("soft", "builtin"), ("(", "open-bracket"), ("t", "implicit"), (",", "separator"),
    ("l_i", "name"), (",", "separator"), ("a", "name"), ("=", "assignment"), ("a", "name"),
    (")", "close-bracket"), ("+", "arithmetic"), ("max", "builtin"), ("(", "open-bracket"),
    ("var", "feature"), ("(", "open-bracket"), ("i", "implicit"), (")", "close-bracket"),
    (")", "close-bracket"), ("*", "arithmetic"), ("pi", "constant"), ("and", "word-operator"),
    ("not", "word-operator"), ("x", "name"), ("# note", "comment"),
]
STATEMENTS = ('data = digits()\nparam a ~ uniform(0, 1)\nl_i = 2e-3 * rank(i)\n'
              'train {\n  steps = 10; lr = f(x = "a\\n")\n}\nnetwork = unet(\n  channels = 32)\n')
STATEMENT_CATEGORIES = [
    ("data", "keyword"), ("=", "assignment"), ("digits", "builtin"), ("(", "open-bracket"),
    (")", "close-bracket"), ("param", "keyword"), ("a", "variable-definition"), ("~", "assignment"),
    ("uniform", "builtin"), ("(", "open-bracket"), ("0", "integer"), (",", "separator"), ("1", "integer"),
    (")", "close-bracket"), ("l_i", "variable-definition"), ("=", "assignment"), ("2e-3", "float"),
    ("*", "arithmetic"), ("rank", "feature"), ("(", "open-bracket"), ("i", "implicit"),
    (")", "close-bracket"), ("train", "keyword"), ("{", "open-bracket"), ("steps", "setting"),
    ("=", "assignment"), ("10", "integer"), (";", "separator"), ("lr", "setting"), ("=", "assignment"),
    ("f", "name"), ("(", "open-bracket"), ("x", "name"), ("=", "assignment"), ('"', "string"), ("a", "string"),
    ("\\n", "string-escape"), ('"', "string"), (")", "close-bracket"), ("}", "close-bracket"),
    ("network", "keyword"), ("=", "assignment"), ("unet", "builtin"), ("(", "open-bracket"),
    ("channels", "name"), ("=", "assignment"), ("32", "integer"), (")", "close-bracket"),
]


def pygments_words(text: str) -> list[tuple[str, object]]:
    return [(v, k) for _, k, v in pygments_tokens(text) if k is not Whitespace]


@pytest.mark.parametrize("text, expected", [(SAMPLE, SAMPLE_CATEGORIES), (STATEMENTS, STATEMENT_CATEGORIES)],
                         ids=["expression", "statements"])
def test_pygments_classifies_a_sample(text, expected):
    assert pygments_words(text) == [(word, L.TOKENS[c]) for word, c in expected]


def test_words_come_from_the_registry_and_the_grammar():
    vocab = L.vocabulary()
    assert set(vocab.keywords) | set(vocab.word_operators) == L.grammar_keywords()
    assert set(vocab.functions) | set(vocab.features) == builtins.known_function_names()
    assert {"linear", "soft", "log", "where", "max"} <= set(vocab.functions)
    assert {"var", "rank", "freq", "level", "row", "col"} <= set(vocab.features)
    assert {"pi", "true", "false"} <= set(vocab.constants)
    assert set(vocab.sections) == {"data", "basis", "prior", "network"}


def test_lexer_is_registered_with_pygments():
    points = importlib.metadata.entry_points(group="pygments.lexers")
    assert {(p.name, p.value) for p in points} >= {("gud", "gudlang.lexer:GudLexer")}, \
        'reinstall gudlang (pip install -e ".[test]") to register the entry point'
    assert type(get_lexer_by_name("gud")).__name__ == "GudLexer"
    assert type(get_lexer_for_filename("specs/digits.gud")).__name__ == "GudLexer"
    assert L.GudLexer.analyse_text(read(ROOT / "specs" / "digits.gud")) > 0.5
    assert L.GudLexer.analyse_text("x = 1\n") == 0.0


def test_pygmentize_highlights_a_spec():
    out = subprocess.run([sys.executable, "-m", "pygments", "-l", "gud", "-f", "html",
                          str(ROOT / "specs" / "digits.gud")], capture_output=True, text=True, check=True)
    assert '<span class="nf">gamma_i</span>' in out.stdout
    assert '<span class="na">var</span>' in out.stdout
    assert 'class="err"' not in out.stdout


def test_gudlang_works_without_pygments():
    code = ("import sys; sys.modules['pygments'] = None\n"
            "from gudlang.cli import main\n"
            "assert main(['check', '--static', sys.argv[1]]) == 0\n"
            "assert not any(m.startswith('gudlang.lexer') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "specs" / "digits.gud")], check=True,
                   capture_output=True)


# --------------------------------------------------------------------------- TextMate
class TextMate:
    """Scopes of each character of a text under a TextMate grammar (no backreferences in
    `end`, no `while`: the gud grammar uses neither)."""

    def __init__(self, grammar: dict):
        self.repository = grammar["repository"]
        self.top = self._flatten(grammar["patterns"])

    def _flatten(self, patterns: list) -> list:
        out = []
        for pattern in patterns:
            if "include" in pattern:
                entry = self.repository[pattern["include"].removeprefix("#")]
                out.extend([entry] if "match" in entry or "begin" in entry else self._flatten(entry["patterns"]))
            else:
                out.append(pattern)
        return out

    def tokens(self, text: str) -> list[tuple[int, int, tuple[str, ...]]]:
        """(start, end, scopes) runs covering `text`: one per match, capture and gap."""
        scopes: list[tuple[str, ...]] = [()] * len(text)
        cuts = {0, len(text)}
        frames: list[tuple[dict, tuple[str, ...]]] = []  # open begin/end rules and their scopes

        def paint(start, end, value):
            scopes[start:end] = [value] * (end - start)
            cuts.update((start, end))

        def paint_match(offset, m, stack, name, captures):
            base = stack + ((name,) if name else ())
            paint(offset + m.start(), offset + m.end(), base)
            for group, capture in (captures or {}).items():
                if m.group(int(group)):
                    paint(offset + m.start(int(group)), offset + m.end(int(group)), base + (capture["name"],))

        offset = 0
        for line in text.split("\n"):
            line += "\n"  # as editors match: each line with its newline
            pos = 0
            while pos < len(line):
                entry, stack = frames[-1] if frames else (None, ())
                candidates = [("end", entry)] if entry else []
                candidates += [("rule", r) for r in (self._flatten(entry["patterns"]) if entry else self.top)]
                best = None
                for kind, rule in candidates:
                    regex = rule["end"] if kind == "end" else rule.get("match") or rule["begin"]
                    m = re.compile(regex).search(line, pos)
                    if m and (best is None or m.start() < best[2].start()):
                        best = (kind, rule, m)
                end = best[2].start() if best else len(line)
                paint(offset + pos, offset + end, stack)
                if best is None:
                    break
                kind, rule, m = best
                assert m.end() > m.start(), f"empty match of {m.re.pattern!r}"
                if kind == "end":
                    outer = stack[:-1] if entry.get("name") else stack
                    paint_match(offset, m, outer, entry.get("name"), entry.get("endCaptures"))
                    frames.pop()
                elif "begin" in rule:
                    paint_match(offset, m, stack, rule.get("name"), rule.get("beginCaptures"))
                    frames.append((rule, stack + ((rule["name"],) if rule.get("name") else ())))
                else:
                    paint_match(offset, m, stack, rule.get("name"), rule.get("captures"))
                pos = m.end()
            offset += len(line)
        scopes = scopes[:len(text)]
        points = sorted(c for c in cuts if c <= len(text)) 
        runs = []
        for a, b in zip(points, points[1:]):
            k = a
            while k < b:  # split further where the scopes change
                j = k
                while j < b and scopes[j] == scopes[k]:
                    j += 1
                runs.append((k, j, scopes[k]))
                k = j
        return runs


CATEGORY_OF_SCOPE = {scope: c for c, scope in generate.SCOPES.items() if scope}


def category(scopes: tuple[str, ...]) -> str | None:
    """The category of the innermost scope that names one (quotes belong to their string)."""
    return next((CATEGORY_OF_SCOPE[s] for s in reversed(scopes) if s in CATEGORY_OF_SCOPE), None)


def textmate_words(text: str) -> list[tuple[str, str]]:
    """(text, category) of each run that is not blank, as the TextMate grammar sees it."""
    words = []
    for start, end, scopes in TextMate(GRAMMAR).tokens(text):
        if category(scopes) is None:
            assert text[start:end].isspace(), f"no scope for {text[start:end]!r}"
            continue
        words.append((text[start:end], category(scopes)))
    return words


def test_committed_editor_files_are_what_generate_writes():
    for path, text in generate.outputs().items():
        assert read(path) == text, f"{path.relative_to(ROOT)} is stale: run python editors/generate.py"


def all_regexes(node) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("match", "begin", "end") and isinstance(v, str)]
        return found + [r for v in node.values() for r in all_regexes(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_regexes(v)]
    return []


def test_textmate_regexes_use_only_portable_constructs():
    regexes = all_regexes(GRAMMAR)
    assert len(regexes) > 20
    for regex in regexes:
        re.compile(regex)
        # Escapes only of literal and control characters: no \b \w \s \d (ASCII or Unicode
        # depending on the engine), \h \G \A \z (Oniguruma only) or backreferences.
        assert set(re.findall(r"\\(.)", regex)) <= set('\\"()[]{}.*+?^$|/-ntfr'), regex
        # Groups only (?: (?= (?! (?<= (?<!: no inline flags, named or atomic groups.
        assert not re.search(r"\(\?(?![:=!]|<[=!])", regex), regex
        # No possessive quantifiers or POSIX classes.
        assert not re.search(r"[*+?}]\+|\[\[:", regex), regex


@pytest.mark.parametrize("text, expected", [(SAMPLE, SAMPLE_CATEGORIES), (STATEMENTS, STATEMENT_CATEGORIES)],
                         ids=["expression", "statements"])
def test_textmate_classifies_a_sample(text, expected):
    assert textmate_words(text) == expected


def assert_textmate_agrees_with_pygments(text: str) -> None:
    pyg = per_char(pygments_tokens(text), len(text))
    tm = [None] * len(text)
    for start, end, scopes in TextMate(GRAMMAR).tokens(text):
        tm[start:end] = [category(scopes)] * (end - start)
    wrong = [(k, text[k], pyg[k], tm[k]) for k in range(len(text))
             if pyg[k] is not (L.TOKENS[tm[k]] if tm[k] else Whitespace)]
    assert wrong == []


@pytest.mark.parametrize("path", SHIPPED, ids=ids(SHIPPED))
def test_textmate_and_pygments_agree_on_every_character(path):
    assert_textmate_agrees_with_pygments(read(path))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_textmate_and_pygments_agree_on_any_fragment_soup(text):
    assert_textmate_agrees_with_pygments(text)


# --------------------------------------------------------------------------- Vim syntax
VIM = shutil.which("vim")
VIM_RUNTIME = ROOT / "editors" / "vim"
needs_vim = pytest.mark.skipif(VIM is None, reason="vim is not installed")
# Pygments token -> the category Vim shows (Vim leaves names, operators and brackets plain).
VIM_CATEGORY = {Token.Comment.Single: "comment", Token.Literal.String.Double: "string",
                Token.Literal.String.Escape: "string-escape", Token.Literal.Number.Integer: "number",
                Token.Literal.Number.Float: "number", Token.Keyword: "keyword",
                Token.Operator.Word: "word-operator", Token.Keyword.Constant: "constant",
                Token.Name.Builtin.Pseudo: "implicit", Token.Name.Attribute: "feature",
                Token.Name.Builtin: "builtin", Token.Name.Function: "function-definition",
                Token.Name.Variable: "variable-definition", Token.Name.Property: "setting", Error: "invalid"}


def vim(tmp_path, *commands: str, files=()) -> None:
    """Run Vim without any user setup, with editors/vim on the runtime path."""
    script = tmp_path / "script.vim"
    script.write_text("\n".join(commands) + "\nqall!\n", encoding="utf-8")
    subprocess.run([VIM, "-N", "-u", "NONE", "-i", "NONE", "-n", "-es", "--cmd", f"set rtp^={VIM_RUNTIME}",
                    "-c", "filetype plugin on", "-c", "syntax on", "-S", str(script), *map(str, files)],
                   check=True, capture_output=True, timeout=60)


VIM_DUMP = r"""
let s:out = []
for s:path in g:paths
  execute 'edit! ' . fnameescape(s:path)
  call add(s:out, &filetype)
  for s:lnum in range(1, line('$'))
    let s:names = []
    for s:col in range(1, strlen(getline(s:lnum)))
      let s:name = synIDattr(synID(s:lnum, s:col, 1), 'name')
      call add(s:names, empty(s:name) ? '-' : s:name)
    endfor
    call add(s:out, join(s:names, ' '))
  endfor
endfor
call writefile(s:out, g:out)
"""


@pytest.fixture(scope="module")
def vim_groups(tmp_path_factory):
    """Vim's syntax group of every character of every shipped file but the binary one."""
    if VIM is None:
        pytest.skip("vim is not installed")
    tmp = tmp_path_factory.mktemp("vim")
    paths = [p for p in SHIPPED if p.name != "E002_binary.gud"]
    out = tmp / "groups.txt"
    vim(tmp, f"let g:paths = {json.dumps([str(p) for p in paths])}", f"let g:out = '{out}'", VIM_DUMP)
    lines = out.read_text(encoding="utf-8").split("\n")
    groups = {}
    for path in paths:
        filetype = lines.pop(0)
        assert filetype == "gud", f"{path}: detected as {filetype!r}"
        chars: list = []
        for text in read(path).removesuffix("\n").split("\n"):
            dumped = lines.pop(0)
            names = dumped.split(" ") if text else []
            column = 0  # Vim counts bytes
            for ch in text:
                chars.append(None if names[column] == "-" else names[column])
                column += len(ch.encode("utf-8"))
            chars.append(None)  # the newline
        groups[path] = chars[:len(read(path))]
    return groups


@needs_vim
@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name != "E002_binary.gud"],
                         ids=ids([p for p in SHIPPED if p.name != "E002_binary.gud"]))
def test_vim_syntax_agrees_with_pygments(vim_groups, path):
    text = read(path)
    pyg = per_char(pygments_tokens(text), len(text))
    wrong = [(k, text[k], pyg[k], group) for k, group in enumerate(vim_groups[path])
             if not text[k].isspace()
             and VIM_CATEGORY.get(pyg[k]) != (generate.VIM_GROUPS[group][0] if group else None)]
    assert wrong == []


@needs_vim
def test_vim_syntax_classifies_the_samples(tmp_path):
    sample = tmp_path / "sample.gud"
    sample.write_text(SAMPLE + STATEMENTS, encoding="utf-8")
    out = tmp_path / "groups.txt"
    vim(tmp_path, f"let g:paths = ['{sample}']", f"let g:out = '{out}'", VIM_DUMP)
    seen = set()
    for line, dumped in zip((SAMPLE + STATEMENTS).splitlines(), out.read_text(encoding="utf-8").split("\n")[1:]):
        names = dumped.split(" ")
        seen |= {(m.group(), generate.VIM_GROUPS[names[m.start()]][0] if names[m.start()] != "-" else None)
                 for m in re.finditer(r"[A-Za-z_]\w*", line)}
    assert {("gamma_i", "function-definition"), ("var", "feature"), ("soft", "builtin"), ("pi", "constant"),
            ("t", "implicit"), ("and", "word-operator"), ("data", "keyword"), ("digits", "builtin"),
            ("a", "variable-definition"), ("uniform", "builtin"), ("steps", "setting"), ("lr", "setting"),
            ("channels", None), ("l_i", "variable-definition"), ("l_i", None)} <= seen


# --------------------------------------------------------------------------- gud check output
@pytest.fixture(scope="module")
def check_output(tmp_path_factory):
    """`gud check` on every golden error file, a missing file and a spec that warns: its
    text output (stderr) and the same diagnostics as JSON records."""
    tmp = tmp_path_factory.mktemp("check")
    warns = tmp / "warns.gud"  # the noise never gets low enough at t = 0 (W301) nor high at t = 1 (W302)
    warns.write_text("gud 1\ndata = digits()\nbasis = pixel()\nprior = white\ngamma(t) = linear(t, -2, 1)\n",
                     encoding="utf-8")
    paths = [*map(str, sorted(GOLDEN.glob("errors/*.gud"))), str(tmp / "missing.gud"), str(warns)]
    text = io.StringIO()
    with contextlib.redirect_stderr(text), contextlib.redirect_stdout(io.StringIO()):
        assert gud(["check", *paths]) != 0
    records = io.StringIO()
    with contextlib.redirect_stdout(records):
        gud(["check", "--format", "json", *paths])
    return text.getvalue(), json.loads(records.getvalue())


def expected_problems(records) -> list[tuple]:
    return [(r["path"], r["span"]["line"] if r["span"] else None, r["span"]["col"] if r["span"] else None,
             r["severity"], r["code"], r["message"]) for r in records]


def vscode_problems(output: str) -> list[tuple]:
    """What the extension's problem matchers read from `gud check` output."""
    found = []
    for line in output.splitlines():
        hits = []
        for matcher in PACKAGE["contributes"]["problemMatchers"]:
            p = matcher["pattern"]
            m = re.match(p["regexp"], line)
            if m:
                hits.append((m[p["file"]], int(m[p["line"]]) if "line" in p else None,
                             int(m[p["column"]]) if "column" in p else None,
                             m[p["severity"]], m[p["code"]], m[p["message"]]))
        assert len(hits) <= 1, f"two matchers read {line!r}"
        found += hits
    return found


def test_problem_matchers_read_every_diagnostic_of_gud_check(check_output):
    output, records = check_output
    expected = expected_problems(records)
    assert {"E101", "E201", "E001", "W301", "W302"} <= {p[4] for p in expected}
    assert vscode_problems(output) == expected


def test_docs_show_the_problem_matchers_of_the_extension():
    readme = (ROOT / "editors" / "vscode" / "README.md").read_text(encoding="utf-8")
    tasks = [task for doc in (DOCS, readme) for block in re.findall(r"```json\n(.*?)```", doc, re.S)
             for task in json.loads(block).get("tasks", [])]
    matchers = [m for task in tasks for m in task["problemMatcher"]]
    contributed = PACKAGE["contributes"]["problemMatchers"]
    assert {m for m in matchers if isinstance(m, str)} == {f"${m['name']}" for m in contributed}
    inline = [m for m in matchers if isinstance(m, dict)]
    assert inline == [{k: v for k, v in m.items() if k not in ("name", "label")} for m in contributed]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_problem_matchers_and_grammar_work_in_javascript(check_output):
    """VS Code runs the matchers and the language configuration's patterns as JavaScript
    regular expressions; the grammar's patterns must at least compile there too."""
    output, records = check_output
    script = """
const [pkg, grammarRegexes, output] = JSON.parse(require('fs').readFileSync(0, 'utf8'));
grammarRegexes.forEach(r => new RegExp(r));
const found = [];
for (const line of output.split('\\n')) {
  for (const {pattern: p} of pkg.contributes.problemMatchers) {
    const m = new RegExp(p.regexp).exec(line);
    if (m) found.push([m[p.file], p.line ? +m[p.line] : null, p.column ? +m[p.column] : null,
                       m[p.severity], m[p.code], m[p.message]]);
  }
}
console.log(JSON.stringify(found));
"""
    configuration = json.loads((ROOT / "editors" / "vscode" / "language-configuration.json").read_text())
    regexes = [*all_regexes(GRAMMAR), configuration["wordPattern"], *configuration["indentationRules"].values()]
    result = subprocess.run(["node", "-e", script], input=json.dumps([PACKAGE, regexes, output]),
                            capture_output=True, text=True, check=True, timeout=60)
    assert [tuple(p) for p in json.loads(result.stdout)] == expected_problems(records)


@needs_vim
def test_vim_errorformat_reads_every_diagnostic_of_gud_check(check_output, tmp_path):
    output, records = check_output
    (tmp_path / "output.txt").write_text(output, encoding="utf-8")
    out = tmp_path / "quickfix.json"
    vim(tmp_path, "compiler gud", f"cgetfile {tmp_path / 'output.txt'}",
        "call writefile([json_encode(map(getqflist(), {_, e -> [bufname(e.bufnr), e.lnum, e.col, e.type, e.nr, "
        f"e.text]}}))], '{out}')")
    found = [tuple(e) for e in json.loads(out.read_text(encoding="utf-8"))]
    assert found == [(path, line or 0, col or 0, severity[0], int(code[1:]), message)
                     for path, line, col, severity, code, message in expected_problems(records)]


def test_docs_errorformat_is_the_compiler_files():
    compiler = (VIM_RUNTIME / "compiler" / "gud.vim").read_text(encoding="utf-8")
    for option in ("errorformat", "makeprg"):
        documented = re.search(rf"^set {option}=(.*)$", DOCS, re.M).group(1)
        assert re.search(rf"^CompilerSet {option}=(.*)$", compiler, re.M).group(1) == documented


# --------------------------------------------------------------------------- formatting, Markdown
@needs_vim
def test_vim_format_on_save_recipe_formats_the_file(tmp_path, monkeypatch):
    from gudlang.fmt import format_text
    recipe = re.search(r"```vim\n(augroup gud_fmt\n.*?)```", DOCS, re.S).group(1)
    messy = "gud 1\ndata=digits( ) ;basis = pca()\ngamma_i(t)=linear(a*t-b*rank(i))   # order\n"
    spec = tmp_path / "messy.gud"
    spec.write_text("gud 1\n", encoding="utf-8")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "buffer.txt"
    vim(tmp_path, recipe, f"edit {spec}", "%delete", f"call setline(1, {json.dumps(messy.splitlines())})",
        "write", f"call writefile(getline(1, '$'), '{out}')")
    assert read(spec) == format_text(messy) != messy
    assert out.read_text(encoding="utf-8") == format_text(messy)


def test_markdown_codehilite_highlights_gud_blocks():
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown("```gud\ngamma_i(t) = linear(var(i))\n```\n", extensions=["fenced_code", "codehilite"])
    assert '<span class="nf">gamma_i</span>' in html and '<span class="na">var</span>' in html
