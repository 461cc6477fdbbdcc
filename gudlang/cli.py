"""The `gud` command.

Input: command-line arguments. Output: text on stdout / stderr, files where asked, and the
exit code: 0 clean (warnings allowed), 1 diagnostics in a spec or its data, 2 usage or I/O
errors. Every `GudError` is printed as diagnostics; no user input produces a traceback.

    gud check FILES...            parse, validate, check, compile; all errors of each file
    gud fmt [--check|--diff] FILES...
    gud hash FILE [--full] [--show]
    gud explain FILE
    gud plot FILE (--schedule | --forward) -o OUT.png
    gud train SPEC [-s key=value ...] [--out DIR] [--resume RUN]
    gud sample RUN [-n N] [--sampler S] [--steps K] [--given FILE] [--mask COND] [-s param=value ...]
    gud extend RUN --image FILE (--columns N | --rows N)
    gud nll RUN [--split test] [-n N]
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from gudlang.diagnostics import GudError, render_json, render_text
from gudlang.spec import SamplerName

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE = 0, 1, 2
# Codes about a file given on the command line (not about a spec): they exit like usage errors.
FILE_CODES = {"E681"}


def _usage(diagnostics) -> bool:
    return all(d.code.startswith("E0") or d.code in FILE_CODES for d in diagnostics if d.is_error)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        print(f"gud: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 would otherwise fall back to a default or mean nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _overrides(items) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GudError.one("E003", f"override `{item}` is not key=value",
                               help="for example -s a=0.8 or -s train.steps=200")
        out[key.strip()] = value.strip()
    return out


class _Reporter:
    def __init__(self, fmt: str):
        self.fmt = fmt
        self.records: list = []
        self.worst = EXIT_OK

    def report(self, err: GudError, source: str | None = None) -> None:
        usage = _usage(err.diagnostics)
        if any(d.is_error for d in err.diagnostics):
            self.worst = max(self.worst, EXIT_USAGE if usage else EXIT_DIAGNOSTICS)
        self.show(err.diagnostics, source)

    def show(self, diagnostics, source=None) -> None:
        if not diagnostics:
            return
        if self.fmt == "json":
            self.records.extend(diagnostics)
        else:
            print(render_text(diagnostics, source), file=sys.stderr)

    def finish(self) -> int:
        if self.fmt == "json":
            print(render_json(self.records))
        return self.worst


def _source(path: str) -> str | None:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


# --------------------------------------------------------------------------- commands
def cmd_check(args) -> int:
    from gudlang.check import check_file
    rep = _Reporter(args.format)
    for path in args.files:
        try:
            checked = check_file(path, _overrides(args.set))
            if args.static:
                msg = "ok (static checks)"
            else:
                from gudlang.pipeline import build_model
                model = build_model(checked)
                rep.show(model.warnings, _source(path))
                msg = f"ok: D = {model.dim}, {model.spec.basis.kind} basis, {model.spec.prior.kind} prior"
                if model.warnings:
                    msg += f", {len(model.warnings)} warning(s)"
            if args.format == "text":
                print(f"{path}: {msg}")
        except GudError as e:
            rep.report(e.with_path(path), _source(path))
    return rep.finish()


def cmd_fmt(args) -> int:
    from gudlang.check import read_source
    from gudlang.fmt import format_text, unified_diff
    rep = _Reporter("text")
    changed = 0
    for path in args.files:
        try:
            raw = read_source(path)
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rep.report(GudError.one("E002", "file is not UTF-8 text", path=path))
            continue
        except GudError as e:
            rep.report(e.with_path(path))
            continue
        try:
            new = format_text(text, path)
        except GudError as e:
            rep.report(e.with_path(path), text)
            continue
        if new == text:
            continue
        changed += 1
        if args.check:
            print(f"{path}: would reformat", file=sys.stderr)
        elif args.diff:
            sys.stdout.write(unified_diff(text, new, path))
        else:
            Path(path).write_text(new, encoding="utf-8")
            print(f"{path}: reformatted")
    code = rep.finish()
    if code:
        return code
    return EXIT_DIAGNOSTICS if changed and (args.check or args.diff) else EXIT_OK


def cmd_hash(args) -> int:
    from gudlang.check import check_file
    from gudlang.hashing import full_hash, model_hash, payload
    from gudlang.pipeline import load_spec_data
    rep = _Reporter("text")
    try:
        checked = check_file(args.file, _overrides(args.set))
        data = load_spec_data(checked)
        if args.show:
            print(json.dumps(payload(checked, data.fingerprint, full=args.full), indent=2, sort_keys=True))
        else:
            print(full_hash(checked, data.fingerprint) if args.full else model_hash(checked, data.fingerprint))
    except GudError as e:
        rep.report(e.with_path(args.file), _source(args.file))
    return rep.finish()


def cmd_explain(args) -> int:
    from gudlang.check import check_file
    from gudlang.explain import explain_text
    from gudlang.pipeline import build_model
    rep = _Reporter("text")
    try:
        model = build_model(check_file(args.file, _overrides(args.set)))
        sys.stdout.write(explain_text(model))
    except GudError as e:
        rep.report(e.with_path(args.file), _source(args.file))
    return rep.finish()


def cmd_plot(args) -> int:
    from gudlang.check import check_file
    from gudlang.pipeline import build_model
    from gudlang.plot import plot_forward, plot_schedule
    rep = _Reporter("text")
    try:
        out = _plot_path(args.output)
        model = build_model(check_file(args.file, _overrides(args.set)))
        if args.forward:
            plot_forward(model, str(out))
        else:
            plot_schedule(model, str(out))
        print(f"wrote {out}")
    except GudError as e:
        rep.report(e.with_path(args.file), _source(args.file))
    return rep.finish()


def _plot_path(text: str) -> Path:
    """The file `gud plot -o` writes: .png added when there is no extension, its folder made
    (as `gud sample -o` does); E001 when the format is unknown or the folder cannot be made."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(text)
    if not out.suffix:
        out = out.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        raise GudError.one("E001", f"cannot write {out}: `{out.suffix}` is not an image format", path=str(out),
                           help="use .png, .pdf or .svg (or any of " + ", ".join(sorted(formats)) + ")")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GudError.one("E001", f"cannot write {out}: cannot create {out.parent} ({e.strerror or e})",
                           path=str(out), help="choose another output folder") from None
    return out


def _run_command(name: str):
    def run(args) -> int:
        from gudlang import runs
        rep = _Reporter("text")
        try:
            return getattr(runs, name)(args, _overrides(getattr(args, "set", None)))
        except GudError as e:
            path = getattr(args, "spec", None)
            rep.report(e.with_path(path) if path else e, _source(path) if path else None)
        return rep.finish()
    return run


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gud", description="The gud language: declarative GUD diffusion models.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_set(q):
        q.add_argument("-s", "--set", action="append", metavar="KEY=VALUE",
                       help="override a param (a=0.8) or a setting (train.steps=200)")

    q = sub.add_parser("check", help="check specs: syntax, names, shapes, schedule numerics")
    q.add_argument("files", nargs="+")
    q.add_argument("--format", choices=["text", "json"], default="text")
    q.add_argument("--static", action="store_true", help="skip the data-dependent checks")
    with_set(q)
    q.set_defaults(func=cmd_check)

    q = sub.add_parser("fmt", help="format specs canonically (comments kept)")
    q.add_argument("files", nargs="+")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    g.add_argument("--diff", action="store_true", help="print a diff instead of writing")
    q.set_defaults(func=cmd_fmt)

    q = sub.add_parser("hash", help="semantic hash of the checked spec (model hash by default)")
    q.add_argument("file")
    q.add_argument("--full", action="store_true", help="include the sample settings")
    q.add_argument("--show", action="store_true", help="print the normal form that is hashed")
    with_set(q)
    q.set_defaults(func=cmd_hash)

    q = sub.add_parser("explain", help="resolved spec, shapes, generation order, schedule table, code")
    q.add_argument("file")
    with_set(q)
    q.set_defaults(func=cmd_explain)

    q = sub.add_parser("plot", help="plot the schedule or the forward process")
    q.add_argument("file")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--schedule", action="store_true", help="gamma, sigma, beta, true SNR (default)")
    g.add_argument("--forward", action="store_true", help="one sample noised to several t")
    q.add_argument("-o", "--output", required=True)
    with_set(q)
    q.set_defaults(func=cmd_plot)

    q = sub.add_parser("train", help="train the model a spec declares")
    q.add_argument("spec", nargs="?")
    q.add_argument("--out", default="runs", help="parent folder of run directories (default runs/)")
    q.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    q.add_argument("--until", type=_positive_int, metavar="STEP",
                   help="stop after STEP steps with a checkpoint (continue later with --resume)")
    q.add_argument("--quiet", action="store_true")
    with_set(q)
    q.set_defaults(func=_run_command("train"))

    q = sub.add_parser("sample", help="sample from a trained run")
    q.add_argument("run")
    q.add_argument("-n", type=_positive_int, default=None, help="number of samples")
    q.add_argument("--sampler", choices=typing.get_args(SamplerName))
    q.add_argument("--steps", type=_positive_int)
    q.add_argument("--seed", type=int)
    q.add_argument("-o", "--output", help="output prefix (default RUN/samples/...)")
    q.add_argument("--given", metavar="FILE",
                   help="complete these images (PNG / JPEG, .npy or .npz in data space; smaller images "
                        "are upsampled: super-resolution)")
    q.add_argument("--mask", metavar="CONDITION",
                   help='the known components, written as in a spec, e.g. "col(i) < 0.5" (default: the '
                        "spec's given_i; a different mask conditions by replacement)")
    with_set(q)
    q.set_defaults(func=_run_command("sample"))

    q = sub.add_parser("extend", help="extend images beyond the model's width (height) by a sliding window")
    q.add_argument("run")
    q.add_argument("--image", required=True, metavar="FILE", help="the image(s) to extend, in data space")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--columns", type=_positive_int, metavar="N", help="add N columns on the right")
    g.add_argument("--rows", type=_positive_int, metavar="N", help="add N rows at the bottom")
    q.add_argument("--sampler", choices=typing.get_args(SamplerName))
    q.add_argument("--steps", type=_positive_int)
    q.add_argument("--seed", type=int)
    q.add_argument("-o", "--output", help="output prefix (default RUN/samples/...)")
    with_set(q)
    q.set_defaults(func=_run_command("extend_images"))

    q = sub.add_parser("nll", help="negative log-likelihood in bits/dim by the probability-flow ODE")
    q.add_argument("run")
    q.add_argument("--split", choices=["train", "test"], default="test")
    q.add_argument("-n", type=_positive_int, default=256)
    q.add_argument("--seed", type=int, default=0)
    with_set(q)
    q.set_defaults(func=_run_command("nll"))
    return p


def _version() -> str:
    from gudlang import LANGUAGE_VERSION, __version__
    return f"gudlang {__version__} (language gud {LANGUAGE_VERSION})"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GudError as e:  # errors outside a file context (e.g. bad -s syntax)
        print(render_text(e.diagnostics), file=sys.stderr)
        return EXIT_USAGE if _usage(e.diagnostics) else EXIT_DIAGNOSTICS
    except KeyboardInterrupt:
        print("gud: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        print("gud: error[E107]: input nested too deeply", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
