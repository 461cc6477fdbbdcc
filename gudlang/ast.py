"""The gud abstract syntax tree: plain frozen dataclasses with structural equality.

Input: nothing (these are the node types). Output: `Program`, `Statement` and `Expr` nodes.
Source positions are *not* stored on nodes: `gudlang.lower` returns them in a side table,
`SourceMap`, keyed by the node's path from the program root (field names and list
indices), so two programs that differ only in layout, comments or `1` vs `1.0` compare
equal. `Num.text` keeps the literal as written (for the formatter) and is left out of
equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterator, Union

from gudlang.diagnostics import Span

Path = tuple  # e.g. ("statements", 3, "value", "args", 0)


# --------------------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Num:
    value: float
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Name:
    id: str


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...] = ()
    kwargs: tuple[Keyword, ...] = ()


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / ^ (a key of gudlang.builtins.OPERATORS, as are the ops below)
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Neg:
    operand: "Expr"


@dataclass(frozen=True)
class Compare:
    op: str  # < <= > >= == !=
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and, or
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Not:
    operand: "Expr"


@dataclass(frozen=True)
class List:
    items: tuple["Expr", ...] = ()


Expr = Union[Num, Str, Name, Call, BinOp, Neg, Compare, BoolOp, Not, List]


# --------------------------------------------------------------------------- statements
@dataclass(frozen=True)
class Assign:
    """`data = ...`, `basis = ...`, `prior = ...`, `network = ...`."""

    section: str
    value: Expr


@dataclass(frozen=True)
class Param:
    """`param a = 1.0` (fixed, overridable) or `param a ~ uniform(lo, hi)` (drawn)."""

    name: str
    value: Expr | None = None
    dist: Call | None = None


@dataclass(frozen=True)
class Formal:
    name: str
    default: Expr | None = None


@dataclass(frozen=True)
class Define:
    """`l_i = expr` (no formals) or `gamma_i(t) = expr`, `f(x, y = 1) = expr`."""

    name: str
    body: Expr
    formals: tuple[Formal, ...] | None = None


@dataclass(frozen=True)
class Setting:
    key: str
    value: Expr


@dataclass(frozen=True)
class Block:
    kind: str  # train | sample | runtime
    settings: tuple[Setting, ...] = ()


Statement = Union[Assign, Param, Define, Block]


@dataclass(frozen=True)
class Program:
    version: Num | None
    statements: tuple[Statement, ...] = ()


# --------------------------------------------------------------------------- source map
@dataclass
class Comment:
    text: str
    line: int
    col: int


@dataclass
class SourceMap:
    """Spans of nodes by path, plus the comments and the source text itself."""

    spans: dict[Path, Span] = field(default_factory=dict)
    comments: list[Comment] = field(default_factory=list)
    text: str = ""
    path: str | None = None
    anchors: dict[tuple, Path] = field(default_factory=dict)  # spec location -> node path

    def span(self, path: Path) -> Span | None:
        """The span of the node at `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.spans:
                return self.spans[path]
            path = path[:-1]
        return self.spans.get(())


def children(node) -> Iterator[tuple[Path, object]]:
    """Direct child nodes with their relative paths (lists expand to indices)."""
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            for k, item in enumerate(value):
                if _is_node(item):
                    yield (f.name, k), item
        elif _is_node(value):
            yield (f.name,), value


def _is_node(value) -> bool:
    return hasattr(value, "__dataclass_fields__")


def walk(node, path: Path = ()) -> Iterator[tuple[Path, object]]:
    """Every node below and including `node`, depth first, with its path."""
    stack = [(path, node)]
    while stack:
        p, n = stack.pop()
        yield p, n
        kids = list(children(n))
        for rel, child in reversed(kids):
            stack.append((p + rel, child))


def dump(node, smap: SourceMap | None = None, path: Path = (), indent: int = 0, label: str = "") -> str:
    """An indented, human-readable tree (for golden tests and debugging); with a source map,
    each node's span is shown as @line:col-end_line:end_col."""
    scalars = []
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(value, (str, float, int)) and not (isinstance(node, Num) and f.name == "text"):
            scalars.append(f"{f.name}={value!r}")
    where = ""
    if smap is not None and tuple(path) in smap.spans:
        s = smap.spans[tuple(path)]
        where = f" @{s.line}:{s.col}-{s.end_line}:{s.end_col}"
    head = f"{label}: " if label else ""
    lines = [f"{'  ' * indent}{head}{type(node).__name__}{' ' if scalars else ''}{' '.join(scalars)}{where}"]
    for rel, child in children(node):
        lines.append(dump(child, smap, tuple(path) + rel, indent + 1, ".".join(str(r) for r in rel)))
    return "\n".join(lines)
