"""Diagnostics: the one error type of gudlang and how it is shown.

Every stage (parse, validate, check, compile, data, bases, training) reports problems as
`Diagnostic` objects collected into a `GudError`. A diagnostic carries an error code, a
message, an optional source span (1-based line / column, end exclusive) and an optional
help line. `render_text` prints them gcc-style with an excerpt and a caret;
`render_json` gives the same objects as JSON. The CLI catches `GudError` and never shows
a Python traceback for user input.

Error codes (each has at least one failing example under tests/golden/errors/):
    E0xx input / usage      E1xx syntax            E2xx names, types, shapes
    E3xx schedule numerics  E4xx data              E5xx bases and priors
    E6xx runs and checkpoints, W-prefixed codes are warnings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# Every error code of the language front end, with its meaning; then those of modules that
# keep no table of their own (data, networks, checkpoints, runs, training; their docstrings say
# more). Bases, priors, statistics, samplers, the oracle, likelihood, conditioning, exports and
# FID list theirs in their module's CODES. tests/test_registry.py checks that every code the
# package uses is in one of these tables.
CODES: dict[str, str] = {
    "E001": "cannot read or write a file (missing, a directory, no permission, unknown format)",
    "E002": "not a text file (binary, NUL bytes, not UTF-8)",
    "E003": "malformed command-line override (-s key=value)",
    "E101": "unexpected character (including non-ASCII outside strings and comments)",
    "E102": "unclosed or mismatched bracket",
    "E103": "missing `gud 1` version line",
    "E104": "unsupported language version",
    "E105": "unexpected token",
    "E106": "unexpected end of input",
    "E107": "input too large or nested too deeply",
    "E201": "unknown function, constructor or distribution",
    "E202": "unknown name",
    "E203": "set or defined twice",
    "E204": "wrong number of positional arguments",
    "E205": "unknown or repeated keyword argument",
    "E206": "missing statement or argument",
    "E207": "feature not offered by the chosen basis",
    "E208": "shape error (per-time / per-component where not allowed)",
    "E209": "recursive definition",
    "E210": "invalid value",
    "E211": "unknown setting in a block",
    "E212": "reserved name",
    "E213": "value of the wrong kind (string, list, comparison, non-constant)",
    "E214": "misuse of the component index i or of a feature",
    "E301": "gamma decreases in t",
    "E302": "gamma is not finite, or beyond what float32 sampling can take",
    "E303": "sampling path leaves the training support",
    "E304": "loss weight negative, not finite, or zero everywhere",
    "E305": "gamma jumps in t",
    "W201": "a definition that nothing uses, named like a declaration (a misspelling?)",
    "W204": "an override fixes a param the spec draws: one model is trained, not the family",
    "W301": "true SNR not high at t = 0",
    "W302": "true SNR not low at t = 1",
    "W303": "the noised data at t = 1 are not the prior sampling starts from",
    # gudlang.data, gudlang.datasets.readers
    "E400": "invalid data source argument (unknown kind or dataset name, wrong type or value)",
    "E401": "data file or folder not found",
    "E402": "unreadable, corrupt or truncated data file, or one larger than memory",
    "E403": "array key missing from an npz file, or ambiguous",
    "E404": "data of the wrong shape or dtype",
    "E405": "NaN or infinite data values, or values beyond float32",
    "E406": "data values outside the declared range",
    "E407": "no data (empty folder, array or file, too few samples to split)",
    # gudlang.networks, gudlang.train
    "E610": "unknown network name",
    "E611": "unknown network option",
    "E612": "invalid network option value, or options incompatible with the data shape",
    "E613": "network input or prediction of the wrong shape",
    # gudlang.checkpoint, gudlang.images, gudlang.export
    "E620": "cannot read or write a run file",
    "E621": "corrupt or truncated run file",
    "E622": "checkpoint metadata missing or malformed",
    "E623": "checkpoint format version not supported",
    "E624": "stored hash does not match the stored spec",
    "E625": "value that a training-state file cannot hold",
    # gudlang.trainer, gudlang.runs, gudlang.api
    "E630": "non-finite training loss",
    "W630": "a runtime setting the device cannot honour (bfloat16 autocast off CUDA)",
    "E640": "run directory problem (missing, damaged, exists, device unavailable, no network needed)",
    "E641": "checkpoint and data or spec disagree",
    "E642": "network = oracle() needs Gaussian data with a known covariance",
    "E643": "a custom network is needed to load this run",
    "W644": "a custom-network run loaded into a module of another class (its weights fit)",
    "E645": "another torchrun rank stopped with an error (it names the rank and what it said), or no process group",
}

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Span:
    """A region of source text: 1-based line and column, end column exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def point(line: int, col: int) -> "Span":
        return Span(line, col, line, col + 1)


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec, its data, or a run."""

    code: str
    message: str
    severity: str = ERROR
    span: Span | None = None
    label: str = ""
    help: str | None = None
    path: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def with_path(self, path: str | None) -> "Diagnostic":
        if self.path is not None or path is None:
            return self
        return Diagnostic(self.code, self.message, self.severity, self.span, self.label,
                          self.help, path, self.notes)

    def with_span(self, span: Span | None) -> "Diagnostic":
        if self.span is not None or span is None:
            return self
        return Diagnostic(self.code, self.message, self.severity, span, self.label,
                          self.help, self.path, self.notes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


class GudError(Exception):
    """One or more diagnostics, at least one of them an error."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(_plain(d) for d in self.diagnostics))

    @classmethod
    def one(cls, code: str, message: str, *, help: str | None = None,
            span: Span | None = None, label: str = "", path: str | None = None) -> "GudError":
        return cls(Diagnostic(code, message, span=span, label=label, help=help, path=path))

    def with_path(self, path: str | None) -> "GudError":
        return GudError([d.with_path(path) for d in self.diagnostics])

    def with_span(self, span: Span | None) -> "GudError":
        return GudError([d.with_span(span) for d in self.diagnostics])


def _plain(d: Diagnostic) -> str:
    """A diagnostic as the text of a Python exception: "CODE: message", then where (file, line
    and column) and the help, each on its own line when known. The CLI renders with excerpts."""
    where = d.path or ""
    if d.span is not None:
        where += f"{':' if where else 'line '}{d.span.line}:{d.span.col}"
    return (f"{d.code}: {d.message}" + (f"\n  --> {where}" if where else "")
            + (f"\n  help: {d.help}" if d.help else ""))


def _excerpt(d: Diagnostic, lines: list[str]) -> list[str]:
    span = d.span
    if span is None or not (1 <= span.line <= len(lines)):
        return []
    text = lines[span.line - 1].expandtabs(1)
    if len(text) > 200:  # keep excerpts of huge lines readable
        start = max(0, span.col - 80)
        text = ("..." if start else "") + text[start:start + 160]
        col = span.col - start + (3 if start else 0)
    else:
        col = span.col
    width = len(str(span.line))
    end = span.end_col if span.end_line == span.line else len(text) + 1
    carets = "^" * max(1, min(end, len(text) + 1) - col)
    pad = " " * width
    out = [f"{pad} |", f"{span.line} | {text}", f"{pad} | {' ' * (col - 1)}{carets}"]
    if d.label:
        out[-1] += f" {d.label}"
    return out


def render_text(diagnostics: list[Diagnostic], source: str | None = None) -> str:
    """Format diagnostics as `path:line:col: severity[CODE]: message` plus excerpt and help."""
    # Lines as the parser counts them: only "\n" ends one (not "\f", "\u2028", ... as splitlines has it).
    lines = [line.removesuffix("\r") for line in source.split("\n")] if source is not None else []
    out: list[str] = []
    for d in diagnostics:
        where = d.path or ("<input>" if d.span is not None else "")
        if d.span is not None:
            where += f":{d.span.line}:{d.span.col}"
        out.append(f"{where + ': ' if where else ''}{d.severity}[{d.code}]: {d.message}")
        out.extend(_excerpt(d, lines))
        for note in d.notes:
            out.append(f"   = note: {note}")
        if d.help:
            out.append(f"   = help: {d.help}")
    return "\n".join(out)


def render_json(diagnostics: list[Diagnostic]) -> str:
    """The same diagnostics as a JSON list of objects."""
    return json.dumps([d.to_dict() for d in diagnostics], indent=2)


def describe_value(value) -> str:
    """A short description of a value for a message: an array's shape and dtype, else its repr."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a NumPy array or a tensor
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
