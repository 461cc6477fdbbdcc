"""Lower a Lark parse tree to the gud AST, with positions in a side table.

Input: the `lark.Tree` and comments from `gudlang.parser.parse`.
Output: `(Program, SourceMap)`. The source map records the span of every node by its path
from the root, and of names inside nodes (`(..., "func")`, `(..., "name")`, `(..., "key")`).
Raises `GudError` E103 (missing `gud` version line), E104 (unsupported version),
E107 (expression nested too deeply for the compiler), E210 (a number beyond the float64
range).
"""

from __future__ import annotations

import math

from lark import Token, Tree

from gudlang import LANGUAGE_VERSION
from gudlang import ast as A
from gudlang.diagnostics import Diagnostic, GudError, Span
from gudlang.parser import parse


def _span(item) -> Span | None:
    if isinstance(item, Token):
        if item.line is None:
            return None
        return Span(item.line, item.column, item.end_line or item.line,
                    item.end_column or item.column + len(item))
    meta = getattr(item, "meta", None)
    if meta is None or getattr(meta, "empty", True):
        return None
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _number(tok: Token) -> A.Num:
    text = str(tok)
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange(tok)
    return A.Num(value, text)


MAX_DEPTH = 200  # expression nesting; deeper input is refused (E107) before any recursion limit


class _TooDeep(Exception):
    def __init__(self, item):
        self.item = item


class _OutOfRange(_TooDeep):
    """A number literal beyond the float64 range (it would read as inf)."""


class _Lowerer:
    def __init__(self, smap: A.SourceMap):
        self.smap = smap
        self.depth = 0

    def mark(self, path, item) -> None:
        span = _span(item)
        if span is not None:
            self.smap.spans[tuple(path)] = span

    # ------------------------------------------------------------------ statements
    def program(self, tree: Tree) -> A.Program:
        version = None
        statements = []
        for child in tree.children:
            if isinstance(child, Tree) and child.data == "version":
                version = _number(child.children[1])
                self.mark(("version",), child)
            elif isinstance(child, Tree) and child.data == "empty":
                continue
            else:
                path = ("statements", len(statements))
                statements.append(self.statement(child, path))
                self.mark(path, child)
        return A.Program(version, tuple(statements))

    def statement(self, tree: Tree, path) -> A.Statement:
        kind = tree.data
        ch = tree.children
        if kind == "assign":
            section = str(ch[0].children[0])
            self.mark(path + ("section",), ch[0])
            return A.Assign(section, self.expr(ch[2], path + ("value",)))
        if kind == "param_fixed":
            self.mark(path + ("name",), ch[1])
            return A.Param(str(ch[1]), value=self.expr(ch[3], path + ("value",)))
        if kind == "param_drawn":
            self.mark(path + ("name",), ch[1])
            dist = self.expr(ch[3], path + ("dist",))
            return A.Param(str(ch[1]), dist=dist)
        if kind == "define_value":
            self.mark(path + ("name",), ch[0])
            return A.Define(str(ch[0]), self.expr(ch[2], path + ("body",)))
        if kind == "define_function":
            self.mark(path + ("name",), ch[0])
            formals = []
            for k, f in enumerate(ch[2].children):
                if not isinstance(f, Tree):
                    continue
                fpath = path + ("formals", len(formals))
                self.mark(fpath, f)
                if f.data == "formal_default":
                    formals.append(A.Formal(str(f.children[0]), self.expr(f.children[2], fpath + ("default",))))
                else:
                    formals.append(A.Formal(str(f.children[0])))
            return A.Define(str(ch[0]), self.expr(ch[5], path + ("body",)), tuple(formals))
        if kind == "block":
            block_kind = str(ch[0].children[0])
            self.mark(path + ("kind",), ch[0])
            settings = []
            for s in ch[2:-1]:
                if isinstance(s, Tree) and s.data == "setting":
                    spath = path + ("settings", len(settings))
                    self.mark(spath, s)
                    self.mark(spath + ("key",), s.children[0])
                    settings.append(A.Setting(str(s.children[0]), self.expr(s.children[2], spath + ("value",))))
            return A.Block(block_kind, tuple(settings))
        raise AssertionError(f"unknown statement {kind}")  # grammar and lowering disagree

    # ------------------------------------------------------------------ expressions
    def expr(self, item, path) -> A.Expr:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(item)
            return self._expr(item, path)
        finally:
            self.depth -= 1

    def _expr(self, item, path) -> A.Expr:
        self.mark(path, item)
        if isinstance(item, Token):  # only via ?rules that inline a token; not expected
            raise AssertionError(f"bare token {item.type}")
        kind = item.data
        ch = item.children
        if kind == "number":
            return _number(ch[0])
        if kind == "name":
            return A.Name(str(ch[0]))
        if kind == "string":
            return A.Str(_unescape(str(ch[0])[1:-1]))
        if kind == "group":
            return self.expr(ch[1], path)
        if kind == "list":
            items = [c for c in ch[1:-1] if isinstance(c, Tree)]
            return A.List(tuple(self.expr(c, path + ("items", k)) for k, c in enumerate(items)))
        if kind == "binop":
            return A.BinOp(str(ch[1]), self.expr(ch[0], path + ("left",)), self.expr(ch[2], path + ("right",)))
        if kind == "compare":
            return A.Compare(str(ch[1]), self.expr(ch[0], path + ("left",)), self.expr(ch[2], path + ("right",)))
        if kind == "boolop":
            return A.BoolOp(str(ch[1]), self.expr(ch[0], path + ("left",)), self.expr(ch[2], path + ("right",)))
        if kind == "not_":
            return A.Not(self.expr(ch[1], path + ("operand",)))
        if kind == "neg":
            return A.Neg(self.expr(ch[1], path + ("operand",)))
        if kind == "pos":
            return self.expr(ch[1], path)
        if kind == "call":
            self.mark(path + ("func",), ch[0])
            args, kwargs = [], []
            arguments = ch[2]
            for a in (arguments.children if arguments is not None else []):
                if not isinstance(a, Tree):
                    continue
                if a.data == "keyword":
                    kpath = path + ("kwargs", len(kwargs))
                    self.mark(kpath, a)
                    kwargs.append(A.Keyword(str(a.children[0]), self.expr(a.children[2], kpath + ("value",))))
                else:
                    args.append(self.expr(a, path + ("args", len(args))))
            return A.Call(str(ch[0]), tuple(args), tuple(kwargs))
        raise AssertionError(f"unknown expression {kind}")


def _unescape(s: str) -> str:
    out, k = [], 0
    while k < len(s):
        if s[k] == "\\" and k + 1 < len(s):
            out.append({"n": "\n", "t": "\t"}.get(s[k + 1], s[k + 1]))
            k += 2
        else:
            out.append(s[k])
            k += 1
    return "".join(out)


def lower(tree: Tree, comments=(), text: str = "", path: str | None = None) -> tuple[A.Program, A.SourceMap]:
    """Parse tree -> (Program, SourceMap); checks the version line."""
    smap = A.SourceMap(comments=list(comments), text=text, path=path)
    try:
        program = _Lowerer(smap).program(tree)
    except _OutOfRange as e:
        raise GudError.one("E210", f"number `{e.item}` is out of range", path=path, span=_span(e.item),
                           label="reads as infinity",
                           help="numbers must lie within +-1.8e308 (64-bit floats)") from None
    except _TooDeep as e:
        raise GudError.one("E107", f"expression nested more than {MAX_DEPTH} levels deep", path=path,
                           span=_span(e.item), help="split it into named definitions") from None
    except RecursionError:
        raise GudError.one("E107", "expression nested too deeply", path=path,
                           help="split it into named definitions") from None
    _check_version(program, smap, path)
    return program, smap


def _check_version(program: A.Program, smap: A.SourceMap, path: str | None) -> None:
    if program.version is None:
        first = smap.span(("statements", 0)) if program.statements else None
        raise GudError(Diagnostic(
            "E103", "missing language version line", span=first, path=path,
            label="expected `gud 1` before this",
            help=f"start every spec with the line `gud {LANGUAGE_VERSION}`"))
    v = program.version.value
    if v != LANGUAGE_VERSION:
        raise GudError(Diagnostic(
            "E104", f"unsupported language version `gud {program.version.text}`",
            span=smap.span(("version",)), path=path, label="unsupported",
            help=f"this gudlang reads `gud {LANGUAGE_VERSION}`"))


def parse_program(source: str | bytes, path: str | None = None) -> tuple[A.Program, A.SourceMap]:
    """Text -> (Program, SourceMap): parse and lower in one call."""
    tree, comments = parse(source, path)
    text = source if isinstance(source, str) else source.decode("utf-8")
    return lower(tree, comments, text.lstrip("\ufeff"), path)
