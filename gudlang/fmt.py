"""The canonical formatter: one layout for every spec, whatever its input layout.

Input: a `Program` with its `SourceMap` (`format_program`), or source text (`format_text`,
which parses it first). Output: the canonical text, ending in exactly one newline.
Errors: `format_text` raises the parser's `GudError` for text that does not parse;
`format_program` raises nothing for ASTs the parser can produce.

Layout:
- `gud 1`, one blank line, then one statement per line in source order. A blank line is
  kept between statements where the source had one or more (paragraphs survive); none is
  added elsewhere.
- Expressions carry the fewest parentheses their precedence needs; spaces around `+ -`
  and comparisons, none around `* / ^`; numbers keep the text they were written with.
- A block sits on one line (`train { steps = 3000; batch = 128 }`) when it holds no
  comments and fits in `WIDTH` columns, else one setting per line, indented by two spaces.
  Other statements take one line, except one wider than `WIDTH` whose value is a call of two
  or more arguments: its head and `(` on the first line, one argument per line indented by
  two spaces (`,` at the ends), `)` alone on the last. Whether to wrap depends only on the
  one-line form, so formatting stays idempotent.
- Comments are never lost or duplicated. A comment on its own line stays before the
  statement (or setting) that follows it; one at the end of a statement's last line stays
  there, after two spaces; one inside a multi-line statement moves before it; comments
  before `gud 1` stay before it and those after the last statement stay at the end.
  Formatting twice gives the same text as formatting once.
"""

from __future__ import annotations

import difflib
from bisect import bisect_right

from gudlang import ast as A
from gudlang.builtins import LEVELS, OPERATORS, Operator
from gudlang.diagnostics import Span
from gudlang.lower import parse_program

WIDTH = 88
INDENT = "  "

# Precedence levels, loosest first (`builtins.LEVELS`); a node printed where a tighter level is
# required gets parentheses. Each operator's own level, the levels its operands need and how
# it is written come from `builtins.OPERATORS`.
OR, UNARY, PRIMARY = (LEVELS.index(level) for level in ("or", "unary", "primary"))


def _layout(op: Operator) -> tuple:
    """(own level, the level each operand needs, text) of an operator."""
    return LEVELS.index(op.level), tuple(LEVELS.index(x) for x in op.operands), op.text


_OPERATORS = {name: _layout(op) for name, op in OPERATORS.items()}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}
# Synthesized programs (`gud explain`) have no positions; they have no comments either.
_NO_SPAN = Span(0, 0, 0, 0)


# --------------------------------------------------------------------------- expressions
def format_expr(expr: A.Expr) -> str:
    """One expression in canonical form. Iterative, so that the deepest expression the
    parser accepts never exhausts Python's stack."""
    out: list[str] = []
    stack: list = [(expr, OR)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node, needs = item
        level, pieces = _pieces(node)
        if level < needs:
            pieces = ["(", *pieces, ")"]
        stack.extend(reversed(pieces))
    return "".join(out)


def _pieces(node) -> tuple[int, list]:
    """The node's precedence level and its text as strings and (child, level needed)."""
    if isinstance(node, A.Num):
        text = node.text or repr(float(node.value))
        # A synthesized negative number prints with its sign, so it binds like unary minus.
        return (UNARY if text.startswith("-") else PRIMARY), [text]
    if isinstance(node, A.Name):
        return PRIMARY, [node.id]
    if isinstance(node, A.Str):
        return PRIMARY, ['"' + "".join(_ESCAPES.get(ch, ch) for ch in node.value) + '"']
    if isinstance(node, (A.BinOp, A.BoolOp, A.Compare)):
        level, (left, right), text = _OPERATORS[node.op]
        return level, [(node.left, left), text, (node.right, right)]
    if isinstance(node, (A.Neg, A.Not)):
        level, (operand,), text = _OPERATORS["neg" if isinstance(node, A.Neg) else "not"]
        return level, [text, (node.operand, operand)]
    if isinstance(node, A.List):
        return PRIMARY, ["[", *_joined([(x, OR) for x in node.items]), "]"]
    if isinstance(node, A.Call):
        args = [(x, OR) for x in node.args]
        args += [[f"{k.name} = ", (k.value, OR)] for k in node.kwargs]
        return PRIMARY, [node.func, "(", *_joined(args), ")"]
    raise TypeError(f"not an expression: {node!r}")


def _joined(items: list) -> list:
    """Items separated by `, `; an item given as a list is spliced in."""
    out: list = []
    for k, item in enumerate(items):
        if k:
            out.append(", ")
        out.extend(item if isinstance(item, list) else [item])
    return out


# --------------------------------------------------------------------------- statements
def format_statement(stmt: A.Statement) -> str:
    """One statement on one line (a block in its one-line form)."""
    if isinstance(stmt, A.Assign):
        return f"{stmt.section} = {format_expr(stmt.value)}"
    if isinstance(stmt, A.Param):
        if stmt.dist is not None:
            return f"param {stmt.name} ~ {format_expr(stmt.dist)}"
        return f"param {stmt.name} = {format_expr(stmt.value)}"
    if isinstance(stmt, A.Define):
        head = stmt.name
        if stmt.formals is not None:
            head += "(" + ", ".join(_formal(f) for f in stmt.formals) + ")"
        return f"{head} = {format_expr(stmt.body)}"
    if isinstance(stmt, A.Block):
        if not stmt.settings:
            return f"{stmt.kind} {{}}"
        return f"{stmt.kind} {{ " + "; ".join(_setting(s) for s in stmt.settings) + " }"
    raise TypeError(f"not a statement: {stmt!r}")


def _formal(f: A.Formal) -> str:
    return f.name if f.default is None else f"{f.name} = {format_expr(f.default)}"


def _setting(s: A.Setting) -> str:
    return f"{s.key} = {format_expr(s.value)}"


# --------------------------------------------------------------------------- comments
class _Attached:
    """Comments attached to a sequence of items (statements, or settings of a block):
    `before[k]` lines above item k, `inside[k]` within its lines (not on its last one),
    `trailing[k]` at the end of its last line, `after` below the last item."""

    def __init__(self, comments: list[A.Comment], spans: list[Span]):
        n = len(spans)
        self.before: list[list[A.Comment]] = [[] for _ in range(n)]
        self.inside: list[list[A.Comment]] = [[] for _ in range(n)]
        self.trailing: list[A.Comment | None] = [None] * n
        self.after: list[A.Comment] = []
        starts = [s.line for s in spans]
        for c in comments:
            # A comment runs to the end of its line, so only the last item starting on or
            # before that line can contain it or end just before it.
            k = bisect_right(starts, c.line) - 1
            if k >= 0 and c.line < spans[k].end_line:
                self.inside[k].append(c)
            elif k >= 0 and c.line == spans[k].end_line:
                self.trailing[k] = c
            elif k + 1 < n:
                self.before[k + 1].append(c)
            else:
                self.after.append(c)

    def holds_comments(self) -> bool:
        return bool(self.after) or any(self.before) or any(self.inside) or any(self.trailing)


class _Writer:
    """Accumulates output lines; knows the source text to find its paragraph breaks."""

    def __init__(self, smap: A.SourceMap):
        self.smap = smap
        self.source = smap.text.split("\n")
        self.lines: list[str] = []
        self.force_blank = False  # the first line after `gud 1` follows one blank line

    def span(self, path: tuple) -> Span | None:
        return self.smap.spans.get(path)

    def blank_before(self, line: int, col: int) -> bool:
        """Whether the source had a blank line just above an item that starts its line."""
        if not 2 <= line <= len(self.source):
            return False
        return not self.source[line - 2].strip() and not self.source[line - 1][:col - 1].strip()

    def emit(self, text: str, line: int = 0, col: int = 1) -> None:
        """Append a line; `line` and `col` (0 for none) locate it in the source."""
        blank = self.force_blank or self.blank_before(line, col)
        self.force_blank = False
        if blank and self.lines and self.lines[-1]:
            self.lines.append("")
        self.lines.append(text)

    def comment(self, c: A.Comment, indent: str = "", paragraphs: bool = True) -> None:
        line = c.line if paragraphs else 0
        self.emit(indent + c.text.rstrip(), line, c.col)


def _with_trailing(text: str, c: A.Comment | None) -> str:
    return text if c is None else f"{text}  {c.text.rstrip()}"


def format_program(program: A.Program, smap: A.SourceMap) -> str:
    """The canonical text of a program, with the comments and paragraphs of `smap`."""
    out = _Writer(smap)
    paths = [("statements", k) for k in range(len(program.statements))]
    if program.version is not None:
        paths.insert(0, ("version",))
    spans = [out.span(p) or _NO_SPAN for p in paths]
    attached = _Attached(smap.comments, spans)
    offset = 0
    if program.version is not None:
        for c in attached.before[0] + attached.inside[0]:
            out.comment(c)
        out.emit(_with_trailing(f"gud {format_expr(program.version)}", attached.trailing[0]),
                 spans[0].line, spans[0].col)
        out.force_blank = True
        offset = 1
    for k, stmt in enumerate(program.statements):
        j = k + offset
        span = spans[j]
        if isinstance(stmt, A.Block):
            for c in attached.before[j]:
                out.comment(c)
            _block(out, stmt, paths[j], span, attached.inside[j], attached.trailing[j])
            continue
        for c in attached.before[j] + attached.inside[j]:
            out.comment(c)
        lines = _wrapped(stmt)
        for n, line in enumerate(lines):
            last = n == len(lines) - 1
            out.emit(_with_trailing(line, attached.trailing[j]) if last else line,
                     span.line if n == 0 else 0, span.col)
    for c in attached.after:
        out.comment(c)
    return "\n".join(out.lines) + "\n"


def _wrapped(stmt: A.Statement) -> list[str]:
    """The lines of a statement other than a block: one, or a wide call one argument a line."""
    text = format_statement(stmt)
    call = stmt.value if isinstance(stmt, A.Assign) else stmt.dist if isinstance(stmt, A.Param) \
        else stmt.body if isinstance(stmt, A.Define) else None
    if len(text) <= WIDTH or not isinstance(call, A.Call) or len(call.args) + len(call.kwargs) < 2:
        return [text]
    head = text[: len(text) - len(format_expr(call))] + call.func + "("
    args = [format_expr(a) for a in call.args] + [f"{k.name} = {format_expr(k.value)}" for k in call.kwargs]
    return [head] + [INDENT + a + ("," if k < len(args) - 1 else "") for k, a in enumerate(args)] + [")"]


def _block(out: _Writer, block: A.Block, path: tuple, span: Span,
           comments: list[A.Comment], trailing: A.Comment | None) -> None:
    """A block: one line if it holds no comments and fits, else one setting per line."""
    spans = [out.span(path + ("settings", k)) or _NO_SPAN for k in range(len(block.settings))]
    inner = _Attached(comments, spans)
    one_line = format_statement(block)
    if not inner.holds_comments() and len(one_line) <= WIDTH:
        out.emit(_with_trailing(one_line, trailing), span.line, span.col)
        return
    out.emit(f"{block.kind} {{", span.line, span.col)
    for k, setting in enumerate(block.settings):
        for c in inner.before[k] + inner.inside[k]:
            out.comment(c, INDENT, paragraphs=False)
        out.emit(INDENT + _with_trailing(_setting(setting), inner.trailing[k]))
    for c in inner.after:
        out.comment(c, INDENT, paragraphs=False)
    out.emit(_with_trailing("}", trailing))


def format_text(text: str | bytes, path: str | None = None) -> str:
    """Parse `text` and return its canonical form; raises `GudError` if it does not parse."""
    program, smap = parse_program(text, path)
    return format_program(program, smap)


def unified_diff(old: str, new: str, path: str | None = None) -> str:
    """A unified diff from `old` to `new` for `gud fmt --diff` ('' when they are equal)."""
    name = path or "<input>"
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"{name} (original)", f"{name} (formatted)"))
