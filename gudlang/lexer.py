"""Syntax highlighting for gud source: the Pygments lexer and the rules that editors share.

Input: gud source text. Output: `GudLexer`, a Pygments lexer (alias `gud`, files `*.gud`)
whose tokens cover the text exactly, and `RULES` / `REGIONS`, the same highlighting rules as
plain regular expressions tagged with token categories, from which editors/generate.py
writes the TextMate grammar of editors/vscode/ (tests/test_editors.py checks that the two
agree on every character, and that both split the text as the grammar's own lexer does).
Errors: none. A character that the gud lexer (grammar/gud.lark) rejects becomes an `Error`
token of its own (`$`, NUL, a non-ASCII character outside strings and comments, the quote of
a string that is not closed on its line), so highlighting never fails and shows where
`gud check` reports E101.

Categories (`TOKENS` maps them to Pygments tokens): comment, string, string-escape,
integer, float, keyword, word-operator (`and or not`), constant, implicit (`t`, `i`),
feature (`var`, `rank`, ...), builtin (functions and constructors), name,
function-definition, variable-definition, setting, assignment / comparison / arithmetic
operators, separator, open-bracket, close-bracket, whitespace and invalid.

Words come from gudlang.builtins: `keywords()` (without it, the grammar's keyword
terminals), `known_function_names()`, `features()` and `constants()` (without them, the
`FEATURES` and `CONSTANTS` tables). Position decides the rest: the name before `(...) =` or
`=` where a statement starts (line start or after `;`, outside brackets) is a definition,
the name after `param` a parameter, the name after `data | basis | prior | network =` (the
sections of the grammar) or after `~` a constructor, and `name =` directly inside `{ }` a
setting.

Pygments imports this module through the `pygments.lexers` entry point of pyproject.toml;
nothing else in gudlang does, so Pygments stays an optional dependency of gudlang.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from pygments.lexer import RegexLexer, bygroups, include
from pygments.token import (Comment, Error, Keyword, Name, Number, Operator, Punctuation,
                            String, Whitespace)

from gudlang import builtins
from gudlang.parser import build_parser

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
WORD_END = r"(?![A-Za-z0-9_])"  # the grammar's NAME is ASCII: `\b` would treat `é` as a letter
WORD_OPERATORS = ("and", "not", "or")
# Reserved names with a fixed meaning: the schedule's time argument and the component index.
IMPLICIT = ("i", "t")

TOKENS = {
    "comment": Comment.Single,
    "string": String.Double,
    "string-escape": String.Escape,
    "integer": Number.Integer,
    "float": Number.Float,
    "keyword": Keyword,
    "word-operator": Operator.Word,
    "constant": Keyword.Constant,
    "implicit": Name.Builtin.Pseudo,
    "feature": Name.Attribute,
    "builtin": Name.Builtin,
    "name": Name,
    "function-definition": Name.Function,
    "variable-definition": Name.Variable,
    "setting": Name.Property,
    "assignment": Operator,
    "comparison": Operator,
    "arithmetic": Operator,
    "separator": Punctuation,
    "open-bracket": Punctuation,
    "close-bracket": Punctuation,
    "whitespace": Whitespace,
    "invalid": Error,
}


class Vocabulary(NamedTuple):
    """The words the highlighters know, each class sorted."""

    keywords: tuple[str, ...]  # statement words: gud, data, param, train, ...
    sections: tuple[str, ...]  # keywords of `section = constructor(...)`
    word_operators: tuple[str, ...]
    constants: tuple[str, ...]
    implicit: tuple[str, ...]
    features: tuple[str, ...]
    functions: tuple[str, ...]  # elementwise functions, reductions, the schedule library


def _registry(function: str, table: str) -> frozenset[str]:
    """Names from the registry function `function` of gudlang.builtins, else from its table."""
    source = getattr(builtins, function, None)
    return frozenset(source() if callable(source) else getattr(builtins, table, ()))


def grammar_keywords() -> frozenset[str]:
    """The grammar's keywords: the literal terminals that the NAME pattern also matches."""
    return frozenset(t.pattern.value for t in build_parser().terminals
                     if t.pattern.type == "str" and re.fullmatch(NAME, t.pattern.value))


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """Read the words from gudlang.builtins and the grammar (see the module docstring)."""
    keywords_of = getattr(builtins, "keywords", None)
    keywords = frozenset(keywords_of()) if callable(keywords_of) else grammar_keywords()
    terminals = {t.name: t.pattern.value for t in build_parser().terminals}
    sections = {terminals[r.expansion[0].name] for r in build_parser().rules if r.origin.name == "section"}
    constants = _registry("constants", "CONSTANTS")
    features = _registry("features", "FEATURES")
    functions = frozenset(builtins.known_function_names()) - features

    def ordered(names) -> tuple[str, ...]:
        return tuple(sorted(names))

    return Vocabulary(
        keywords=ordered(keywords - set(WORD_OPERATORS)), sections=ordered(sections),
        word_operators=WORD_OPERATORS, constants=ordered(constants), implicit=IMPLICIT,
        features=ordered(features), functions=ordered(functions))


def words(names) -> str:
    """A regex matching exactly one of `names` as a whole name."""
    return "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")" + WORD_END


class Rule(NamedTuple):
    """A regex with the category of its match, or one category per group (groups cover the
    match); `region` names the region of `REGIONS` that the match opens."""

    regex: str
    tokens: str | tuple[str, ...]
    region: str | None = None


class Region(NamedTuple):
    """Text between an opening rule's match and `end`, highlighted by the rule lists
    `contexts` of `RULES`; `category` (if any) is the category of the text in between."""

    end: str
    end_token: str
    contexts: tuple[str, ...]
    category: str | None = None


def _rules(vocab: Vocabulary) -> dict[str, list[Rule]]:
    """The rule lists by context; the first rule that matches at a position wins."""
    not_keyword = "(?!" + words(vocab.keywords + vocab.word_operators) + ")"
    declared = not_keyword + "(" + NAME + ")"
    statement_start = r"(?:^|(?<=;))([ \t]*)"
    return {
        # Only at the top level, where statements start.
        "statement": [
            Rule(statement_start + declared + r"(?=[ \t]*\([^()\n]*\)[ \t]*=(?!=))",
                 ("whitespace", "function-definition")),
            Rule(statement_start + declared + r"(?=[ \t]*=(?!=))", ("whitespace", "variable-definition")),
            Rule("(" + words(vocab.sections) + r")([ \t]*)(=)([ \t]*)" + declared,
                 ("keyword", "whitespace", "assignment", "whitespace", "builtin")),
            Rule(r"(param)([ \t]+)" + declared, ("keyword", "whitespace", "variable-definition")),
            Rule(r"(~)([ \t]*)" + declared, ("assignment", "whitespace", "builtin")),
        ],
        # Only directly inside `{ }`.
        "setting": [Rule(declared + r"(?=[ \t]*=(?!=))", ("setting",))],
        "expression": [
            Rule(r"#[^\n]*", "comment"),
            Rule(r'"(?=(?:[^"\\\n\r]|\\["\\nt])*")', "string", "string"),
            Rule(r"(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+", "float"),
            Rule(r"[0-9]+", "integer"),
            Rule(words(vocab.word_operators), "word-operator"),
            Rule(words(vocab.keywords), "keyword"),
            Rule(words(vocab.constants), "constant"),
            Rule(words(vocab.implicit), "implicit"),
            Rule(words(vocab.features), "feature"),
            Rule(words(vocab.functions), "builtin"),
            Rule(NAME, "name"),
            Rule(r"<=|>=|==|!=|<|>", "comparison"),
            Rule(r"[=~]", "assignment"),
            Rule(r"[-+*/^]", "arithmetic"),
            Rule(r"[,;]", "separator"),
            Rule(r"\(", "open-bracket", "paren"),
            Rule(r"\[", "open-bracket", "bracket"),
            Rule(r"\{", "open-bracket", "block"),
            Rule(r"[)\]}]", "close-bracket"),  # unmatched: `gud check` reports E102
            Rule(r"[^ \t\f\r\n]", "invalid"),  # rejected by the grammar: E101 (or E002 for NUL)
        ],
        "string-content": [
            Rule(r'\\["\\nt]', "string-escape"),
            Rule(r'[^"\\\n\r]+', "string"),
        ],
    }


RULES = _rules(vocabulary())
REGIONS = {
    "paren": Region(r"\)", "close-bracket", ("expression",)),
    "bracket": Region(r"\]", "close-bracket", ("expression",)),
    "block": Region(r"\}", "close-bracket", ("setting", "expression")),
    "string": Region('"', "string", ("string-content",), "string"),
}
TOP_LEVEL = ("statement", "expression")  # the contexts outside every region


def _pygments(rule: Rule) -> tuple:
    if isinstance(rule.tokens, str):
        action = TOKENS[rule.tokens]
    else:
        action = bygroups(*(TOKENS[c] for c in rule.tokens))
    return (rule.regex, action, rule.region) if rule.region else (rule.regex, action)


def _pygments_tokens() -> dict[str, list]:
    # Whitespace outside strings; at the top level it stops at each newline so that the next
    # line's statement rules see its start (`^`).
    spaces = (r"[ \t\f\r\n]+", Whitespace)
    tokens: dict[str, list] = {
        "root": [_pygments(r) for r in RULES["statement"]]
        + [(r"[ \t\f\r]*\n", Whitespace), (r"[ \t\f\r]+", Whitespace), include("expression")],
        "setting": [_pygments(r) for r in RULES["setting"]],
        "expression": [_pygments(r) for r in RULES["expression"]],
        "string-content": [_pygments(r) for r in RULES["string-content"]],
    }
    for name, region in REGIONS.items():
        inside = [include(c) for c in region.contexts]
        if region.category != "string":
            inside.insert(0, spaces)
        tokens[name] = [(region.end, TOKENS[region.end_token], "#pop"), *inside]
    return tokens


class GudLexer(RegexLexer):
    """The gud specification language of gudlang (declarative GUD diffusion models)."""

    name = "gud"
    aliases = ["gud"]
    filenames = ["*.gud"]
    mimetypes = ["text/x-gud"]
    flags = re.MULTILINE
    tokens = _pygments_tokens()

    def analyse_text(text):
        """Sure when the first line that is not blank or a comment is `gud <version>`."""
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return 0.9 if re.fullmatch(r"gud[ \t]+[0-9]+[ \t]*(#.*)?", line) else 0.0
        return 0.0
