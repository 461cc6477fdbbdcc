"""Parse gud source text with Lark's LALR parser.

Input: source text (str or bytes) and an optional path for messages.
Output: `parse(text) -> (lark.Tree, comments)`, or `GudError` with every syntax error of
the file (E0xx input, E1xx syntax). After an error the parser resynchronises at the next
line that starts a statement, so one run reports all the syntax errors of a file.
Keywords (`builtins.KEYWORDS`) are reserved: a keyword where a name should be is E105.
Messages name terminals with the words of the keyword and operator registries.
Nothing here can raise anything but `GudError`, whatever the input.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from gudlang.ast import Comment
from gudlang.builtins import KEYWORDS, OPERATORS
from gudlang.diagnostics import Diagnostic, GudError, Span

MAX_SOURCE_BYTES = 1_000_000
MAX_NESTING = 64
MAX_ERRORS = 50

# How messages name each terminal: keywords and operators from their registries.
_TERMINAL_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "EQUAL": "`=`",
    "TILDE": "`~`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "LBRACE": "`{`", "RBRACE": "`}`", "COMMA": "`,`", "SEMI": "`;`", "COMPARE": "a comparison",
    "$END": "end of input",
    **{op.terminal: f"`{op.symbol}`" for op in OPERATORS.values() if op.terminal != "COMPARE"},
    **{k.terminal: f"`{k.word}`" for k in KEYWORDS.values()},
}
_EXPR_START = {"NAME", "NUMBER", "LPAR", "MINUS"}
_OPERATORS = {op.terminal for op in OPERATORS.values() if op.level in ("sum", "product", "power")}
_KEYWORD_TERMINALS = {k.terminal for k in KEYWORDS.values()}
_STATEMENT_WORDS = [k.word for k in KEYWORDS.values() if k.role in ("section", "param", "block")]
_STATEMENT_START = {KEYWORDS[word].terminal for word in _STATEMENT_WORDS}
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_RESYNC = re.compile(
    rf"^[ \t]*({'|'.join(_STATEMENT_WORDS)})\b"
    r"|^[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*(\([^()\n]*\))?[ \t]*=(?!=)"
)


def grammar_text() -> str:
    """The grammar: shipped inside the wheel, or read from the source checkout."""
    packaged = resources.files("gudlang").joinpath("grammar/gud.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "grammar" / "gud.lark").read_text(encoding="utf-8")


@lru_cache(maxsize=2)
def build_parser(strict: bool = False) -> Lark:
    """The LALR parser. `strict=True` (used by the tests) also proves the grammar has no
    conflicts or terminal collisions."""
    return Lark(grammar_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True, strict=strict, cache=False,
                lexer_callbacks={"NAME": _reserve_keywords})


def _reserve_keywords(token: Token) -> Token:
    """A keyword is never a name. The contextual lexer reads `data` as a NAME where only a name
    can follow (`param data = 1`); giving it back its keyword's terminal makes that a syntax
    error whose message says why."""
    keyword = KEYWORDS.get(str(token))
    if keyword is not None:
        token.type = keyword.terminal
    return token


def decode_source(data: bytes | str) -> str:
    """Bytes to text with lines ended by LF or CRLF (a lone CR becomes LF), refusing binary junk
    and oversized input (E002, E107)."""
    if isinstance(data, str):
        size = len(data.encode("utf-8", "surrogatepass"))
        text = data
    else:
        size = len(data)
        text = None
    if size > MAX_SOURCE_BYTES:
        raise GudError.one("E107", f"spec is too large ({size / 1e6:.1f} MB)",
                           help=f"a spec is at most {MAX_SOURCE_BYTES // 1000} kB of text; "
                                "put data in an .npz file and refer to it with npz(\"path\")")
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GudError.one("E002", f"file is not UTF-8 text (invalid byte at offset {e.start})",
                               help="a .gud spec is a plain text file") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise GudError.one("E002", "file contains NUL bytes; it looks like a binary file",
                           span=Span.point(line, 1), help="a .gud spec is a plain text file")
    # Old Mac line ends (a lone CR) end lines too: the grammar sees one line, and a comment
    # would swallow the rest of the file.
    return re.sub("\r(?!\n)", "\n", text.lstrip("\ufeff"))


def parse(source: str | bytes, path: str | None = None) -> tuple[Tree, list[Comment]]:
    """Parse `source` into a Lark tree and the list of comments; raise `GudError` on errors."""
    try:
        text = decode_source(source)
    except GudError as e:
        raise e.with_path(path) from None
    diagnostics, comments = _scan(text)
    if diagnostics:
        raise GudError([d.with_path(path) for d in diagnostics])
    trees: list[Tree] = []
    errors: list[Diagnostic] = []
    lines = text.split("\n")
    offset_line = 0  # parse text[line offset_line:], blanking the lines before it
    while True:
        chunk = "\n" * offset_line + "\n".join(lines[offset_line:])
        try:
            tree = build_parser().parse(chunk)
        except (UnexpectedInput, LarkError) as e:
            errors.append(_diagnose(e, text))
            line = getattr(e, "line", None)
            if not isinstance(line, int) or line < 1:
                break
            resume = _next_statement_line(lines, line)  # 0-based index
            if resume is None or len(errors) >= MAX_ERRORS:
                break
            offset_line = resume
            continue
        trees.append(tree)
        break
    if errors:
        raise GudError([d.with_path(path) for d in errors])
    return trees[0], comments


def _next_statement_line(lines: list[str], error_line: int) -> int | None:
    for k in range(error_line, len(lines)):  # error_line is 1-based: start after it
        if _RESYNC.match(lines[k]):
            return k
    return None


def _describe_expected(expected: set[str]) -> str:
    expected = {e for e in expected if not e.startswith("__")}
    if _OPERATORS <= expected:
        closers = sorted(_TERMINAL_WORDS[e] for e in expected & {"RPAR", "RSQB", "RBRACE", "COMMA"})
        words = ["an operator"] + closers + ["the next statement"]
    elif _EXPR_START <= expected:
        rest = sorted(_TERMINAL_WORDS.get(e, e) for e in expected - _EXPR_START - {"PLUS", "STRING", "LSQB", "NOT"})
        words = ["an expression"] + [w for w in rest if w != "a name"]
    elif _STATEMENT_START <= expected:
        words = ["a statement (`data = ...`, `param ...`, `name = ...`, a block, ...)"]
        words += sorted(_TERMINAL_WORDS.get(e, e) for e in expected - _STATEMENT_START - {"NAME", "SEMI", "GUD"})
    else:
        words = sorted(_TERMINAL_WORDS.get(e, e) for e in expected)
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _token_words(token: Token) -> str:
    if token.type == "$END":
        return "end of input"
    value = str(token)
    if len(value) > 20:
        value = value[:17] + "..."
    return f"`{value}`"


def _diagnose(e: Exception, text: str) -> Diagnostic:
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
        span = Span.point(e.line, e.column)
        if ord(ch) > 127:
            return Diagnostic("E101", f"unexpected character {ch!r} (U+{ord(ch):04X})", span=span,
                              label="not allowed here",
                              help="gud source is ASCII outside strings and comments: "
                                   "write digits 0-9, names [A-Za-z0-9_] and operators + - * / ^")
        return Diagnostic("E101", f"unexpected character {ch!r}", span=span, label="not allowed here",
                          help=f"expected {_describe_expected(set(e.allowed or ()))}")
    if isinstance(e, UnexpectedToken):
        token = e.token
        expected = set(e.expected or ())
        if token.type == "$END":
            return Diagnostic("E106", "unexpected end of input",
                              span=_end_span(text), help=f"expected {_describe_expected(expected)}")
        span = Span(token.line, token.column, token.end_line or token.line,
                    token.end_column or token.column + len(str(token)))
        help_ = f"expected {_describe_expected(expected)}"
        if token.type == "GUD" and _STATEMENT_START <= expected:  # a second version line
            help_ = "the version line `gud 1` comes once, before every statement"
        elif token.type in _KEYWORD_TERMINALS and "NAME" in expected:
            help_ = f"`{token}` is a keyword and cannot be used as a name"
        elif token.type == "EQUAL" and text[token.start_pos - 1:token.start_pos] == "=":
            help_ = "`==` compares (inside where(...) or a condition); a definition or setting takes one `=`"
        elif token.type == "EQUAL" and "PLUS" in expected and _starts_statement(text, token):
            help_ = ("a new statement starts on this line, so the one above is unfinished: "
                     "complete it, or remove its trailing operator")
        elif token.type == "EQUAL" and "COMPARE" in expected or token.type == "EQUAL" and _EXPR_START <= expected:
            help_ = "`=` assigns; to compare inside where(...) write `==`"
        elif token.type == "COMPARE" and "COMPARE" not in expected and "PLUS" in expected \
                and "NUMBER" not in expected:  # right after a comparison's operand
            help_ = "comparisons do not chain: write `a < b and b < c`"
        return Diagnostic("E105", f"unexpected {_token_words(token)}", span=span,
                          label="unexpected here", help=help_)
    if isinstance(e, UnexpectedEOF):
        return Diagnostic("E106", "unexpected end of input", span=_end_span(text),
                          help=f"expected {_describe_expected(set(e.expected or ()))}")
    return Diagnostic("E105", f"syntax error: {e}")


def _starts_statement(text: str, token: Token) -> bool:
    """Whether `token` (an `=`) is the first `=` of a line that reads as a statement of its own
    (`name = ...`, `f(x) = ...`)."""
    line = text.split("\n")[token.line - 1] if token.line else ""
    head = re.match(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*(\([^()\n]*\))?[ \t]*=(?!=)", line)
    return head is not None and head.end() == token.column and head.group(1) not in KEYWORDS


def _end_span(text: str) -> Span:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return Span.point(len(lines), len(lines[-1]) + 1)


def _scan(text: str) -> tuple[list[Diagnostic], list[Comment]]:
    """One pass over the characters: the comments (for the formatter), and unclosed /
    unmatched brackets and excessive nesting, found before parsing so that the message can
    point at the opening bracket (E102, E107)."""
    stack: list[tuple[str, int, int]] = []
    errors: list[Diagnostic] = []
    comments: list[Comment] = []
    comment_start = 0
    line, col = 1, 0
    in_comment = in_string = False
    comment_col = 0
    escaped = False
    for k, ch in enumerate(text):
        col += 1
        if ch == "\n":
            if in_comment:
                comments.append(Comment(text[comment_start:k].rstrip("\r"), line, comment_col))
            line, col = line + 1, 0
            in_comment = False
            in_string = False
            continue
        if in_comment:
            continue
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == "#":
            in_comment = True
            comment_start, comment_col = k, col
        elif ch == '"':
            in_string = True
        elif ch in _OPEN:
            stack.append((ch, line, col))
            if len(stack) > MAX_NESTING:
                return [Diagnostic("E107", f"brackets nested more than {MAX_NESTING} deep",
                                   span=Span.point(line, col),
                                   help="split the expression into named definitions")], comments
        elif ch in _CLOSE:
            if stack and stack[-1][0] == _CLOSE[ch]:
                stack.pop()
            else:
                if stack:
                    o, ol, oc = stack[-1]
                    msg = f"`{ch}` does not match `{o}` opened at {ol}:{oc}"
                    help_ = f"close `{o}` with `{_OPEN[o]}` first"
                else:
                    msg, help_ = f"unmatched `{ch}`", "remove it or add the opening bracket"
                errors.append(Diagnostic("E102", msg, span=Span.point(line, col),
                                         label="unmatched", help=help_))
                return errors, comments
    if in_comment:
        comments.append(Comment(text[comment_start:].rstrip("\r"), line, comment_col))
    for o, ol, oc in stack:
        errors.append(Diagnostic("E102", f"unclosed `{o}`", span=Span.point(ol, oc),
                                 label="opened here", help=f"add the matching `{_OPEN[o]}`"))
    return errors, comments
