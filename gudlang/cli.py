"""The `gud` command.

Input: command-line arguments. Output: text on stdout / stderr, files where asked, and the
exit code: 0 clean (warnings allowed), 1 diagnostics in a spec or its data, 2 usage or I/O
errors. Every `GudError` is printed as diagnostics; no user input produces a traceback.

    gud check FILES...            parse, validate, check, compile; all errors of each file
    gud fmt [--check|--diff] FILES...   (gud fmt - formats stdin to stdout)
    gud hash FILE [--full] [--show]
    gud explain FILE
    gud plot FILE (--schedule | --forward) -o OUT.png;  gud plot RUN --metrics -o OUT.png
    gud train SPEC [-s key=value ...] [--out DIR] [--resume RUN] [--name NAME]
    gud sample RUN [-n N] [--sampler S] [--steps K] [--given FILE] [--mask COND] [--path FORMULA] [-s param=value ...]
    gud extend RUN --image FILE (--columns N | --rows N)
    gud export RUN DIR
    gud fid RUN --ref DIR|FILE.npz [-n N] [--samples DIR|FILE.npz] [--features inception|MODULE:NAME] [--inception FILE]
    gud nll RUN [--split test] [-n N] [--divergence exact|hutchinson] [--given FILE] [--path FORMULA]
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shlex
import sys
import time
import typing
from pathlib import Path

from gudlang.diagnostics import GudError, render_json, render_text
from gudlang.spec import GridName, SamplerName
from gudlang.terminal import integer_in, positive_int, progress

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE = 0, 1, 2
# Codes about a file given on the command line (not about a spec): they exit like usage errors.
FILE_CODES = {"E681", "E644", "E690", "E691"}
# `gud plot --reverse` draws two rows per sample and a column per frame: beyond these the PNG
# outgrows what an image viewer (and matplotlib's 2^16 pixels a side) takes.
MAX_REVERSE_SAMPLES, MAX_REVERSE_FRAMES = 32, 32


def _usage(diagnostics) -> bool:
    return all(d.code.startswith("E0") or d.code in FILE_CODES for d in diagnostics if d.is_error)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        print(f"gud: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


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
                if model.given is not None:
                    msg += f", {int(model.given.sum())} of {model.dim} components given"
                if model.path is not None:
                    msg += ", sampling path inside the training support"
                if model.warnings:
                    msg += f", {len(model.warnings)} warning(s)"
            if args.format == "text":
                print(f"{path}: {msg}")
        except GudError as e:
            rep.report(e.with_path(path), _source(path))
    return rep.finish()


def cmd_fmt(args) -> int:
    from gudlang.check import read_source
    from gudlang.checkpoint import atomic_write_text
    from gudlang.fmt import format_text, unified_diff
    rep = _Reporter("text")
    if args.files == ["-"]:  # a filter for editors: the spec on stdin, the formatted spec on stdout
        from gudlang.parser import MAX_SOURCE_BYTES, decode_source
        text = None
        try:
            text = decode_source(sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1))
            new = format_text(text, "<stdin>")
            if args.check or args.diff:  # as for files: exit 1 when the spec would change
                if new != text and args.check:
                    print("<stdin>: would reformat", file=sys.stderr)
                elif new != text:
                    sys.stdout.write(unified_diff(text, new, "<stdin>"))
                return EXIT_DIAGNOSTICS if new != text else EXIT_OK
            sys.stdout.write(new)
            return EXIT_OK
        except GudError as e:
            rep.report(e.with_path("<stdin>"), text)
            return rep.finish()
    if "-" in args.files:
        rep.report(GudError.one("E003", "`-` (the spec on stdin) is given alone: gud fmt - < spec.gud",
                                help="format files by name, or one spec through stdin"))
        return rep.finish()
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
            try:  # all at once: a full disk or a kill mid-write must not cut a spec short
                atomic_write_text(Path(path).resolve(), new)  # resolved: a symlinked spec stays a link
            except GudError as e:
                rep.report(GudError.one("E001", f"{e.diagnostics[0].message}; the file is unchanged",
                                        path=path, help="free some space or fix the permissions, then format again"))
                continue
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
    from gudlang.plot import plot_forward, plot_metrics, plot_schedule
    rep = _Reporter("text")
    try:
        kind = "metrics" if args.metrics else "forward" if args.forward else "reverse" if args.reverse else "schedule"
        out = _plot_path(args.output, f"{kind}.png")
        for option, value in (("-n", args.n), ("--frames", args.frames), ("--sampler", args.sampler),
                              ("--steps", args.steps), ("--seed", args.seed)):
            if value is not None and not args.reverse:
                raise GudError.one("E003", f"{option} sets how --reverse samples", help=f"add --reverse, or drop {option}")
        if not (args.metrics or args.reverse) and Path(args.file).is_dir():
            raise GudError.one("E001", f"{args.file} is a folder; --schedule and --forward plot a spec",
                               help=f"plot a run's training curves with gud plot {args.file} --metrics -o {out}, "
                                    f"its samples coming about with --reverse, or its spec with "
                                    f"gud plot {Path(args.file) / 'spec.gud'} -o {out}")
        if args.metrics and args.set:
            raise GudError.one("E003", "-s sets a spec's values; --metrics plots what the run logged",
                               help="drop -s")
        if args.reverse:
            _plot_reverse(args, out)
        elif args.metrics:
            from gudlang.runs import METRICS, read_metrics
            run = Path(args.file)
            if not (run / METRICS).is_file():
                raise GudError.one("E001", f"{run} is not a run directory (no {METRICS})", path=str(run),
                                   help="--metrics plots a run: gud plot RUN --metrics -o metrics.png")
            metrics = read_metrics(run / METRICS)
            if len(metrics["step"]) == 0:
                raise GudError.one("E640", f"{run / METRICS} holds no logged steps yet", path=str(run),
                                   help="plot it after the run has logged (train.log_every steps)")
            plot_metrics(metrics, str(out), title=str(run))
        else:
            model = build_model(check_file(args.file, _overrides(args.set)))
            if args.forward:
                plot_forward(model, str(out))
            else:
                plot_schedule(model, str(out))
        print(f"wrote {out}")
    except GudError as e:
        rep.report(e.with_path(args.file), _source(args.file))
    return rep.finish()


def _plot_reverse(args, out: Path) -> None:
    """`gud plot RUN --reverse`: how n samples come about (`GudModel.trajectory`); for a model
    trained to complete given components, completions of the first n test images."""
    from gudlang.api import load
    from gudlang.plot import plot_reverse
    model = load(args.file, params=_overrides(args.set))
    n = 4 if args.n is None else args.n
    given = _known_images(model, argparse.Namespace(given=None, n=None), n)[0] if model.conditional else None
    trajectory = model.trajectory(n, frames=8 if args.frames is None else args.frames, sampler=args.sampler,
                                  steps=args.steps, seed=args.seed, given=given)
    sampler = args.sampler or model.spec.sample.sampler
    title = f"{Path(args.file).name}: {'completions' if given is not None else 'samples'} by {sampler}"
    plot_reverse(trajectory, str(out), model.model.data.value_range, title)


def _plot_path(text: str, default: str) -> Path:
    """The file `gud plot -o` writes: .png added when there is no extension, `default` inside an
    existing folder or one written with a trailing slash, its folder made (as `gud sample -o`
    does); E001 when the format is unknown or the folder cannot be made."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    out = Path(text)
    if text.endswith(("/", os.sep)) or out.is_dir():
        out = out / default
    elif out.name.startswith(".") and out.name[1:].lower() in formats:  # -o .png: a format, no name
        out = out.parent / f"{Path(default).stem}{out.name}"
    if not out.suffix:
        out = out.with_suffix(".png")
    if out.suffix[1:].lower() not in formats:
        raise GudError.one("E001", f"cannot write {out}: `{out.suffix}` is not an image format", path=str(out),
                           help="use .png, .pdf or .svg (or any of " + ", ".join(sorted(formats)) + ")")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GudError.one("E620", f"cannot write {out}: cannot create {out.parent} ({e.strerror or e})",
                           path=str(out), help="choose another output folder") from None  # as gud sample -o
    return out


def _run_command(handler):
    """A command that runs a model: GudError from it is reported like a spec's."""
    def run(args) -> int:
        rep = _Reporter("text")
        try:
            return handler(args, _overrides(getattr(args, "set", None)))
        except GudError as e:
            path = getattr(args, "spec", None)
            rep.report(e.with_path(path) if path else e, _source(path) if path else None)
        return rep.finish()
    return run


def _read_json(path: Path) -> dict:
    """A JSON object from `path`; {} when it cannot be read or is not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, record: dict) -> None:
    from gudlang.checkpoint import atomic_write_text
    from gudlang.images import make_folder
    make_folder(path.parent)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _outputs(args, target: str) -> Path:
    """Where a model's outputs go: RUN/samples, or samples/STEM for a spec (oracle) or export."""
    path = Path(target)
    if path.suffix == ".gud":
        return Path("samples") / path.stem
    return (path if path.is_dir() else path.parent) / "samples"


def _stem(args, default: str, folder: bool = False) -> Path:
    """The output prefix: -o as given (a trailing .png / .npz dropped; an existing folder, or one
    written with a trailing slash, gets the default name inside it), else RUN/samples/DEFAULT.
    With `folder` (--format png-dir) -o is the folder the files go into, as given."""
    if not args.output:
        return _outputs(args, args.run) / default
    out = Path(args.output)
    if folder:
        return out
    if args.output.endswith(("/", os.sep)) or out.is_dir():
        return out / default
    return out.with_suffix("") if out.suffix.lower() in (".png", ".npz") else out


def _with(stem: Path, suffix: str) -> Path:
    """stem + suffix, keeping any dot already in the stem's name (`res.a` -> `res.a.png`)."""
    return stem.parent / f"{stem.name}{suffix}"


# Settings that an output's default name already says (sampler, steps, seed) or that do not change
# it (how many, where it runs); any other -s setting makes the output a variant.
_NAMED_SETTINGS = ("sample.sampler", "sample.steps", "sample.seed", "sample.n")


def _variant(path: str | None, overrides: dict, weights: str = "ema", **options) -> dict:
    """What makes a measurement or a sample set other than the model's own: a sampling path, params
    set with -s, other -s settings (sample.grid, sample.rtol; on a spec, data or network: another
    model), raw weights, and `options` that are not None (--grid, --divergence); {} for none."""
    from gudlang.runs import set_params
    settings = {k: v for k, v in overrides.items()
                if "." in k and k not in _NAMED_SETTINGS and not k.startswith("runtime.")}
    return {k: v for k, v in (("path", path), ("params", set_params(overrides)), ("settings", settings),
                              ("weights", weights), *sorted(options.items()))
            if v is not None and v != {} and v != "ema"}


def _variant_tag(variant: dict) -> str:
    """'' for the model's own, else '-' and 8 hex digits of the variant's sha256."""
    if not variant:
        return ""
    return "-" + hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:8]


def cmd_train(args, overrides: dict) -> int:
    """`gud train SPEC` / `--resume RUN` / `--name NAME`: exit 128 + the signal number when
    SIGINT (130) or SIGTERM (143) stopped it, after saving a checkpoint."""
    from gudlang.trainer import train_run
    if args.resume and args.out is not None:
        raise GudError.one("E003", "--out names the folder new runs go into; --resume trains RUN where it is",
                           help=f"drop --out, or copy {args.resume} where you want it and resume the copy")
    if args.resume and args.name is not None:
        raise GudError.one("E003", "--name names a run to make or resume under --out; --resume names the run "
                                   "directory itself", help="drop one of them")
    result = train_run(args.spec, overrides, out=args.out or "runs", resume=args.resume, until=args.until,
                       quiet=args.quiet, name=args.name, command=["gud", *args.argv])
    return 128 + result.signal if result.interrupted else 0


def _load_run(args, overrides: dict):
    """`gudlang.load` of args.run with the command's params, weights and --path; the coverage
    warnings (W301 / W302) of the schedule that --path or params set with -s make go to stderr."""
    from gudlang.api import load
    from gudlang.distributed import every_rank
    from gudlang.runs import set_params
    with every_rank("loading the run"):  # under torchrun: a node without the run stops every rank
        model = load(args.run, params=overrides, weights=args.weights, path=args.path)
    if args.path is not None or set_params(overrides):
        _Reporter("text").show(model.model.warnings)
    return model


def cmd_sample(args, overrides: dict) -> int:
    """`gud sample RUN`: samples in data space as a PNG grid (+ a float .npz), a folder of PNGs,
    or a uint8 NHWC .npz; under torchrun each rank writes its shard. With --given FILE (or for
    a spec that declares `given_i`): completions beside what is given, --batch-size at a time."""
    import dataclasses
    import time

    import numpy as np

    from gudlang.distributed import shard, shard_suffix
    from gudlang.images import save_grid, save_npz, save_pairs, save_png_dir
    model = _load_run(args, overrides)
    settings = model.spec.sample
    method, steps, how = _sampling(args, settings)
    seed = settings.seed if args.seed is None else args.seed
    conditional = args.given is not None or args.mask is not None or model.conditional
    if conditional and args.format != "grid":
        raise GudError.one("E003", f"--format {args.format} writes unconditional samples; completions are written "
                                   "as a PNG grid beside what is given and a float .npz",
                           help="drop --format")
    start = time.time()
    given = ""
    if conditional:
        from gudlang.distributed import every_rank
        with every_rank("loading the images to complete"):
            images, source = _known_images(model, args, args.n or settings.n)
        # the spec's own test images with its own mask: "-given"; your images or mask: their digest too
        given = "-given" + (_digest_tag(images, args.mask) if args.given or args.mask else "")
    variant = _variant(args.path, overrides, args.weights, grid=args.grid)
    pixels = "-pixels" if args.format == "npz" else ""  # beside the grid's float .npz of the same samples
    stem = _stem(args, f"{method}-{how}-seed{seed}{_variant_tag(variant)}{given}{pixels}",
                 folder=args.format == "png-dir")
    record = {"sampler": method, "steps": steps, "grid": args.grid or settings.grid, "seed": seed,
              "model_hash": model.hash, "overrides": overrides, "path": args.path}
    if conditional:
        first, count, rank, world = shard(len(images), "images")
        size = args.batch_size or max(count, 1)
        parts = [model.complete(images[lo: min(lo + size, first + count)], mask=args.mask, sampler=method,
                                steps=steps, grid=args.grid, seed=seed, first=lo)
                 for lo in range(first, first + count, size)]
        done = dataclasses.replace(parts[0], x=np.concatenate([p.x for p in parts]),
                                   known=np.concatenate([p.known for p in parts]))
        record.update(conditioning=done.method, given=source, given_components=int(done.mask.sum()),
                      n=len(images), first=first, count=count, world_size=world, nfe=done.nfe,
                      seconds=time.time() - start)
        suffix = shard_suffix()
        png, npz = _with(stem, f"{suffix}.png"), _with(stem, f"{suffix}.npz")
        save_pairs(done.known, done.x, png, model.model.data.value_range)
        _save_float_npz(npz, record, x=done.x, known=done.known, mask=done.mask)
        print(f"wrote {png} and {npz}: {len(done.x)} completion{'s' if len(done.x) != 1 else ''} of {source}"
              f"{f' (images {first} to {first + count - 1}, shard {rank} of {world})' if world > 1 else ''} "
              f"({done.method} conditioning on {int(done.mask.sum())} of {model.model.dim} components), "
              f"beside what is given, {method}, {steps} steps, {done.nfe} network evaluations per batch, seed {seed}")
        return 0
    n = args.n or settings.n
    first, count, rank, world = shard(n)
    update, close = progress("sample", count, quiet=rank != 0)
    x, nfe = model.sample(count, sampler=method, steps=steps, grid=args.grid, seed=seed, batch_size=args.batch_size,
                          start=first, progress=update, with_nfe=True)
    close()
    x = x.numpy()
    record.update(n=n, first=first, count=count, world_size=world, nfe=nfe, seconds=time.time() - start)
    value_range = model.model.data.value_range
    suffix = shard_suffix()
    if args.format == "png-dir":
        if rank == 0:  # a set made before with a larger n: its PNGs beyond n would join this one
            _remove_pngs_from(stem, n)
        save_png_dir(x, stem, value_range, start=first)
        if rank == 0:
            _write_json(stem / "samples.json", dict(record, first=0, count=n))  # every rank's PNGs
        where = f"{stem}/ ({count} PNGs from {first:06d}.png)"
    elif args.format == "npz":
        out = _with(stem, f"{suffix}.npz")
        save_npz(x, out, value_range, **record)
        where = f"{out} (arr_0: uint8 {tuple(x.shape[:1]) + tuple(x.shape[2:]) + tuple(x.shape[1:2])}, N H W C)"
    else:
        png, npz = _with(stem, f"{suffix}.png"), _with(stem, f"{suffix}.npz")
        save_grid(x, png, value_range)
        _save_float_npz(npz, record, x=x)
        where = f"{png} and {npz}"
    steps_text = f"rtol {settings.rtol:g}, atol {settings.atol:g}" if method == "adaptive" else f"{steps} steps"
    print(f"wrote {where}: {count} samples{f' (shard {rank} of {world})' if world > 1 else ''}, {method}, "
          f"{steps_text}, {nfe} network evaluations per batch, seed {seed}")
    return 0


def _remove_pngs_from(folder: Path, index: int) -> None:
    """Remove the NNNNNN.png files (`save_png_dir`'s names) of `folder` numbered `index` and up."""
    import re
    if folder.is_dir():
        for path in folder.iterdir():
            if re.fullmatch(r"\d{6,}\.png", path.name) and int(path.stem) >= index and path.is_file():
                path.unlink()


def _digest_tag(images, mask: str | None = None) -> str:
    """'-' and 8 hex digits of the sha256 of the images (and mask text): outputs made from other
    images or masks get other default names instead of overwriting each other."""
    import numpy as np

    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float64).tobytes())
    digest.update(repr((tuple(np.shape(images)), mask)).encode())
    return "-" + digest.hexdigest()[:8]


def _save_float_npz(path: Path, record: dict, **arrays) -> None:
    import io

    import numpy as np

    from gudlang.checkpoint import atomic_write_bytes
    from gudlang.images import make_folder
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{k: np.asarray(str(v)) for k, v in record.items()})
    make_folder(path.parent)
    atomic_write_bytes(path, buf.getvalue())


def _known_images(model, args, n: int):
    """The images to complete: --given FILE (all of them, or the first n with -n), else the
    first n test images of the spec's data (train images when the test split is empty), once
    they are known to be the data the model was trained on (E641, `GudModel.training_data`)."""
    import numpy as np

    from gudlang.conditioning import load_images
    data = model.model.data
    if args.given is not None:
        images = load_images(args.given, data)
        if args.n and args.n > len(images):
            raise GudError.one("E651", f"-n {args.n} asks for more completions than {args.given} holds images "
                                       f"({len(images)})", help="-n takes the first n images; drop it to complete all")
        return (images[: args.n] if args.n else images), str(args.given)
    loaded = model.training_data()
    split, images = ("test", loaded.test) if len(loaded.test) else ("train", loaded.train)
    if args.n and args.n > len(images):
        raise GudError.one("E651", f"-n {args.n} asks for more completions than the {split} split holds images "
                                   f"({len(images)})", help="drop -n to complete them all, or give --given FILE")
    images = images[:n]
    return np.asarray(images, dtype=np.float64), f"the first {len(images)} {split} images"


def cmd_extend(args, overrides: dict) -> int:
    """`gud extend RUN --image FILE --columns N` (or --rows N): image extension by a sliding
    window, for a spec whose given components are a band of leading columns (rows). Under
    torchrun each rank extends its share of the images and writes its shard."""
    import time

    from gudlang.api import load
    from gudlang.conditioning import load_images
    from gudlang.distributed import every_rank, shard, shard_suffix
    from gudlang.images import save_grid
    with every_rank("loading the run and the images"):
        model = load(args.run, params=overrides)
        data = model.model.data
        images = load_images(args.image, data)
    first, many, rank, world = shard(len(images), "images")
    seed = model.spec.sample.seed if args.seed is None else args.seed
    start = time.time()
    update, close = progress("extend", 0, unit="window", quiet=rank != 0)  # its total is known once extension starts
    try:
        x, nfe, k = model.extend(images[first: first + many], columns=args.columns, rows=args.rows,
                                 sampler=args.sampler, steps=args.steps, seed=seed, progress=update, first=first)
    finally:
        close()
    axis, count = ("columns", args.columns) if args.columns else ("rows", args.rows)
    settings = model.spec.sample
    method, steps, how = _sampling(args, settings)
    stem = _stem(args, f"extend-{count}{axis}-{method}-{how}-seed{seed}{_variant_tag(_variant(None, overrides))}"
                       f"{_digest_tag(images)}")
    size = data.shape[2] if axis == "columns" else data.shape[1]
    record = {"axis": axis, "count": count, "band": k, "window": size, "sampler": method, "steps": steps,
              "grid": settings.grid, "seed": seed, "nfe": nfe,
              "model_hash": model.hash, "image": str(args.image), "first": first, "images": many,
              "world_size": world, "seconds": time.time() - start}
    suffix = shard_suffix()
    png, npz = _with(stem, f"{suffix}.png"), _with(stem, f"{suffix}.npz")
    save_grid(x, png, data.value_range, cols=1 if axis == "columns" else len(x))
    _save_float_npz(npz, record, x=x, given=images[first: first + many])
    print(f"wrote {png} and {npz}: {len(x)} image(s){f' ({first} to {first + many - 1})' if world > 1 else ''} "
          f"extended by {count} {axis} (window {size}, {k} given, {method}, {steps} steps, {nfe} network "
          f"evaluations), seed {seed}")
    return 0


def cmd_nll(args, overrides: dict) -> int:
    """`gud nll RUN`: bits per dimension by the probability-flow ODE on a data split (or on
    --given FILE); the conditional bits/dim of the generated components for a spec with a
    given mask. Under torchrun each rank measures its shard and rank 0 reports them all."""
    import numpy as np

    from gudlang.checkpoint import trained_step
    from gudlang.distributed import every_rank, gather, shard
    from gudlang.likelihood import mean_and_stderr
    if args.given is not None and args.split is not None:
        raise GudError.one("E003", "--split names a split of the spec's data; --given measures the images of a file",
                           help="drop one of them")
    model = _load_run(args, overrides)
    with every_rank("loading the images"):
        if args.given is not None:
            from gudlang.conditioning import load_images
            data = model.model.data
            x, split = load_images(args.given, data)[: args.n], str(args.given)
            if x.shape[1:] != tuple(data.shape):
                raise GudError.one("E681", f"{args.given} holds images of shape {x.shape[1:]}; the likelihood is "
                                           f"of the model's images, {tuple(data.shape)}",
                                   help="give images at the model's size (only sampling upsamples smaller ones)")
        else:  # the spec's split, once its data are known to be the training data
            x, split = model.split_images(args.split or "test", args.n), args.split or "test"
    first, count, rank, world = shard(len(x), "images")
    update, close = progress("nll", count, quiet=rank != 0)
    from gudlang.likelihood import divergence_method
    default_divergence = divergence_method(None, model.generated)
    if args.probes is not None and divergence_method(args.divergence, model.generated) == "exact":
        raise GudError.one("E003", f"--probes sets the Hutchinson estimate's probe vectors; the exact divergence "
                                   f"(of the {model.generated} generated components) has none",
                           help="add --divergence hutchinson, or drop --probes")
    result = model.nll(x[first: first + count], divergence=args.divergence, hutchinson_samples=args.probes,
                       batch_size=args.batch_size, seed=args.seed, progress=update, first=first)
    close()
    bits = gather(result.bits)
    # every rank's network calls, and its divergence evaluations over its images
    nfe, evaluations = gather(np.array([[result.nfe, result.divergence_evaluations * count]], dtype=np.float64)).sum(0)
    if rank != 0:
        return 0
    mean, stderr = mean_and_stderr(bits)
    record = {"bits_per_dim": mean, "stderr": stderr, "n": len(bits), "split": split, "divergence": result.divergence,
              "probes": args.probes, "dimensions": result.dims, "conditional": result.conditional,
              "dequantised": model.model.data.levels is not None, "levels": model.model.data.levels,
              "nfe": int(nfe), "divergence_evaluations_per_image": float(evaluations) / len(bits),
              "rtol": model.spec.sample.rtol, "atol": model.spec.sample.atol,
              "model_hash": model.hash, "step": trained_step(model.meta), "world_size": world, "path": args.path,
              "overrides": overrides, "weights": args.weights}
    folder = _outputs(args, args.run)
    # A file of the user's own is no split: its stem (test.npy) must not name the split's record.
    name = split if args.given is None else \
        f"given-{Path(split).stem}-{hashlib.sha256(str(Path(split).resolve()).encode()).hexdigest()[:8]}"
    variant = _variant(args.path, overrides, args.weights, probes=args.probes,
                       divergence=result.divergence if result.divergence != default_divergence else None)
    file, note = _nll_file(folder.parent if folder.name == "samples" else folder, name, record, variant)
    _write_json(file, record)
    what = "exact divergence" if result.divergence == "exact" else f"{result.divergence} divergence estimate"
    deq = f", uniform dequantisation of {model.model.data.levels} levels" if model.model.data.levels else \
        ", continuous data"
    cond = f" (conditional: the {result.dims} generated of {model.model.dim} components)" if result.conditional else ""
    print(f"NLL {mean:.4f} +- {stderr:.4f} bits/dim{cond} on {len(bits)} {split} images ({what}{deq}; "
          f"{record['nfe']} network calls along the trajectories, {record['divergence_evaluations_per_image']:.0f} "
          f"divergence evaluations per image)")
    print(f"wrote {file}{note}")
    return 0


def _nll_file(folder: Path, split: str, record: dict, variant: dict) -> tuple[Path, str]:
    """Where an NLL record goes, and a note on why there: `nll-SPLIT.json` holds the model's own
    NLL (its spec's path, params and settings, EMA weights, the default divergence; what `gud
    export` publishes), and is not replaced by one measured on fewer images (that goes to
    `nll-SPLIT-nN.json`); one of a `variant` (`_variant`: another path, params or settings set by
    -s, raw weights, another divergence or probe count) goes to `nll-SPLIT-VARIANT.json` (VARIANT:
    `_variant_tag`)."""
    if variant:
        return folder / f"nll-{split}{_variant_tag(variant)}.json", f" (not the model's own NLL: {_variant_text(variant)})"
    plain = folder / f"nll-{split}.json"
    old = _read_json(plain)
    kept = old.get("n", 0) if old.get("step") == record["step"] else 0  # of older weights: replaced
    if isinstance(kept, int) and kept > record["n"]:
        return folder / f"nll-{split}-n{record['n']}.json", f" ({plain} keeps the measurement on {kept} images)"
    return plain, ""


def _sampling(args, settings) -> tuple[str, int, str]:
    """(sampler, steps, how) of a command's --sampler / --steps over the spec's sample settings;
    `how` names them in default output names: `50steps`, or the tolerances of the adaptive one."""
    method, steps = args.sampler or settings.sampler, args.steps or settings.steps
    how = f"rtol{settings.rtol:g}-atol{settings.atol:g}" if method == "adaptive" else f"{steps}steps"
    return method, steps, how


def _variant_text(variant: dict) -> str:
    parts = [f"path {variant['path']}"] if "path" in variant else []
    parts += [f"{k} = {v}" for k, v in variant.get("params", {}).items()]
    parts += [f"{k} = {v}" for k, v in variant.get("settings", {}).items()]
    parts += [f"{k} {v}" for k, v in variant.items() if k not in ("path", "params", "settings", "weights")]
    if "weights" in variant:
        parts.append(f"{variant['weights']} weights")
    return ", ".join(parts)


def cmd_export(args, overrides: dict) -> int:
    """`gud export RUN DIR`: a self-contained folder with the EMA weights, spec, config and a
    model card (`gudlang.export`)."""
    from gudlang.api import load
    from gudlang.checkpoint import trained_step
    from gudlang.export import DIGEST_KEY
    from gudlang.runs import read_record
    target, out = Path(args.run), Path(args.dir)
    if out.exists():
        raise GudError.one("E644", f"{out} exists", help="export into a new folder (nothing was written)")
    model = load(target)
    nll, command = None, None
    folder = target if target.is_dir() else target.parent  # a run's or an export's checkpoint file: its folder
    if (folder / "config.json").is_file() and not (folder / "run.json").is_file():
        # an export: its NLL and command describe the weights its config names (load checked them)
        config = _read_json(folder / "config.json")
        if config.get("weights_sha256") and config.get("weights_sha256") == model.meta.get(DIGEST_KEY):
            nll, command = config.get("nll"), config.get("command")
    elif (folder / "run.json").is_file():
        record = folder / "nll-test.json"
        if record.is_file():
            nll = _read_json(record)
            if not nll or nll.get("split") != "test" or nll.get("probes") is not None or \
                    _variant(nll.get("path"), nll.get("overrides") or {}, nll.get("weights", "ema")):
                nll = None  # not the model's own NLL (older records held any measurement, a --given file's too)
            elif nll.get("step") != (step := trained_step(model.meta)):
                print(f"gud: {record} was measured at step {nll.get('step', 'unknown')}, the weights are of step "
                      f"{step}: not published (measure it again with gud nll {folder})",
                      file=sys.stderr)
                nll = None
        commands = [s.get("command") for s in read_record(folder).get("segments", []) if s.get("command")]
        command = " && ".join(" ".join(map(shlex.quote, c)) for c in commands) or None
    model.export(out, nll=nll, command=command)
    print(f"exported {target} to {out}: model.safetensors (EMA weights), spec.gud, config.json, README.md, "
          f"samples.png; load it with gudlang.load(\"{out}\") or gud sample {out}")
    return 0


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

    q = sub.add_parser("plot", help="plot the schedule, the forward process, or a run's metrics")
    q.add_argument("file", help="a spec (--schedule, --forward) or a run directory (--metrics, --reverse)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--schedule", action="store_true", help="gamma, sigma, beta, true SNR (default)")
    g.add_argument("--forward", action="store_true", help="one sample noised to several t")
    g.add_argument("--metrics", action="store_true", help="a run's loss, learning rate and gradient norm")
    g.add_argument("--reverse", action="store_true",
                   help="a run's samples coming about: x_t and the predicted x_0 at several t")
    q.add_argument("-o", "--output", required=True)
    q.add_argument("-n", type=integer_in(1, MAX_REVERSE_SAMPLES),
                   help=f"--reverse: how many samples (default 4, at most {MAX_REVERSE_SAMPLES})")
    q.add_argument("--frames", type=integer_in(2, MAX_REVERSE_FRAMES),
                   help=f"--reverse: how many times, t = 1 to 0 (default 8, at most {MAX_REVERSE_FRAMES})")
    q.add_argument("--sampler", choices=typing.get_args(SamplerName), help="--reverse: the sampler (default the spec's)")
    q.add_argument("--steps", type=positive_int, help="--reverse: its steps (default the spec's)")
    q.add_argument("--seed", type=int, help="--reverse: the seed (default the spec's)")
    with_set(q)
    q.set_defaults(func=cmd_plot)

    q = sub.add_parser("train", help="train the model a spec declares")
    q.add_argument("spec", nargs="?")
    q.add_argument("--out", help="parent folder of run directories (default runs/)")
    q.add_argument("--resume", metavar="RUN", help="continue the run in this directory (with -s train.steps=N: "
                                                   "let a finished run grow to N steps)")
    q.add_argument("--name", help="the run directory OUT/NAME; resumes it when it exists (requeued jobs)")
    q.add_argument("--until", type=positive_int, metavar="STEP",
                   help="stop after STEP steps with a checkpoint (continue later with --resume)")
    q.add_argument("--quiet", action="store_true")
    with_set(q)
    q.set_defaults(func=_run_command(cmd_train))

    def with_model(q):
        q.add_argument("--weights", choices=["ema", "raw"], default="ema",
                       help="the EMA weights (default) or the trained ones")
        q.add_argument("--path", metavar="FORMULA",
                       help='the path to sample along (gud nll: to integrate along) instead of the spec\'s, '
                            'written as a spec\'s path_i(t) = ..., e.g. "soft(t^2, -log(var(i)))" for '
                            'specs/digits.gud or "edm_path(t, rho = 5)" for specs/peers/edm.gud (it must stay '
                            'inside the training support)')

    q = sub.add_parser("sample", help="sample from a trained run, a checkpoint, an export or an oracle spec")
    q.add_argument("run")
    q.add_argument("-n", type=positive_int, default=None, help="number of samples")
    q.add_argument("--sampler", choices=typing.get_args(SamplerName))
    q.add_argument("--steps", type=positive_int)
    q.add_argument("--grid", choices=typing.get_args(GridName), help="time grid of fixed-step samplers")
    q.add_argument("--seed", type=int)
    q.add_argument("--batch-size", type=positive_int, help="samples (completions) per batch (default: all at once)")
    q.add_argument("--format", choices=["grid", "png-dir", "npz"], default="grid",
                   help="grid: PNG grid + float .npz; png-dir: one PNG per sample; npz: uint8 NHWC arr_0 "
                        "(what FID tools read)")
    q.add_argument("-o", "--output", help="output prefix (default RUN/samples/...)")
    q.add_argument("--given", metavar="FILE",
                   help="complete these images (PNG / JPEG, .npy or .npz in data space; smaller images "
                        "are upsampled: super-resolution)")
    q.add_argument("--mask", metavar="CONDITION",
                   help='the known components, written as in a spec, e.g. "col(i) < 0.5" (default: the '
                        "spec's given_i; a different mask conditions by replacement)")
    with_model(q)
    with_set(q)
    q.set_defaults(func=_run_command(cmd_sample))

    q = sub.add_parser("extend", help="extend images beyond the model's width (height) by a sliding window")
    q.add_argument("run")
    q.add_argument("--image", required=True, metavar="FILE", help="the image(s) to extend, in data space")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--columns", type=positive_int, metavar="N", help="add N columns on the right")
    g.add_argument("--rows", type=positive_int, metavar="N", help="add N rows at the bottom")
    q.add_argument("--sampler", choices=typing.get_args(SamplerName))
    q.add_argument("--steps", type=positive_int)
    q.add_argument("--seed", type=int)
    q.add_argument("-o", "--output", help="output prefix (default RUN/samples/...)")
    with_set(q)
    q.set_defaults(func=_run_command(cmd_extend))

    q = sub.add_parser("nll", help="negative log-likelihood in bits/dim by the probability-flow ODE")
    q.add_argument("run")
    q.add_argument("--split", choices=["train", "test"], help="the data split to measure (default test)")
    q.add_argument("--given", metavar="FILE", help="measure these images (data space) instead of a split")
    q.add_argument("-n", type=positive_int, default=256, help="at most this many images (default 256)")
    q.add_argument("--divergence", choices=["exact", "hutchinson"],
                   help="exact trace (default for D <= 256) or Hutchinson's estimate")
    q.add_argument("--probes", type=positive_int, help="Hutchinson probe vectors per image (default 1)")
    q.add_argument("--batch-size", type=positive_int, default=64, help="images per ODE solve")
    q.add_argument("--seed", type=int, default=0)
    with_model(q)
    with_set(q)
    q.set_defaults(func=_run_command(cmd_nll))

    q = sub.add_parser("export", help="write a self-contained model folder (EMA weights, spec, config, card)")
    q.add_argument("run")
    q.add_argument("dir")
    q.set_defaults(func=_run_command(cmd_export))

    from gudlang.fid import add_fid_parser, cmd_fid
    add_fid_parser(sub).set_defaults(func=_run_command(cmd_fid))
    return p


def _version() -> str:
    from gudlang import LANGUAGE_VERSION, __version__
    return f"gudlang {__version__} (language gud {LANGUAGE_VERSION})"


def share_the_cpu(samples: int = 5, loadavg: str = "/proc/loadavg") -> int | None:
    """When other processes are running on this CPU as gud starts (Linux: /proc/loadavg), use
    only the cores they leave free, with sleeping (not spinning) idle OpenMP threads: next to a
    busy process, torch's default threads slowed training 10-20 times
    (benchmarks/shared_cpu.py). Only when OMP_NUM_THREADS is not set; read when torch loads, so
    call it before. Returns the thread count chosen, or None."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    counts = []
    try:
        for k in range(samples):
            with open(loadavg) as f:  # "0.50 0.40 0.30 RUNNING/TOTAL LASTPID"
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # without this process
            if k + 1 < samples:
                time.sleep(0.01)
    except (OSError, ValueError, IndexError):
        return None
    others = sorted(counts)[len(counts) // 2]
    if others < 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores - others)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return threads


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "sample", "nll", "extend", "fid") and "torch" not in sys.modules:
        threads = share_the_cpu()
        if threads is not None:
            print(f"gud: other processes are busy on this CPU: using {threads} thread(s) "
                  "(set OMP_NUM_THREADS to choose)", file=sys.stderr)
    args = build_parser().parse_args(argv)
    args.argv = argv
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
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
    except OSError as e:  # the system refused a file: a name too long, a full disk, no permission
        print(render_text(os_error(e).diagnostics), file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except RuntimeError as e:  # under torchrun: another rank stopped while this one waited for it
        lost = sys.modules["gudlang.distributed"].lost_rank(e) if "gudlang.distributed" in sys.modules else None
        if lost is None:
            raise
        print(render_text(lost.diagnostics), file=sys.stderr)
        return EXIT_DIAGNOSTICS
    finally:
        if "gudlang.distributed" in sys.modules:  # a torchrun command started a process group
            sys.modules["gudlang.distributed"].leave(finished)


_OS_ERROR_HELP = {
    errno.ENAMETOOLONG: "a file or folder name is at most 255 bytes on most file systems: choose a shorter "
                        "spec file name, --name, --out or -o",
    errno.ENOSPC: "the disk is full: free some space and run again (a training run continues from its last "
                  "checkpoint with --resume)",
    errno.EDQUOT: "the disk quota is used up: free some space and run again",
    errno.EACCES: "choose a file or folder you may write to (--out, -o)",
    errno.EPERM: "choose a file or folder you may write to (--out, -o)",
    errno.EROFS: "the file system is read-only: choose another folder (--out, -o)",
    errno.EMFILE: "too many files are open: raise the limit (ulimit -n) or use fewer loader workers",
}


def os_error(e: OSError) -> GudError:
    """E001 for an OSError that no stage turned into a diagnostic: the file, the system's reason, advice."""
    where = f" {e.filename}" if e.filename else ""
    if len(where) > 120:
        where = where[:80] + "..." + where[-37:]
    return GudError.one("E001", f"cannot use{where}: {e.strerror or e}",
                        help=_OS_ERROR_HELP.get(e.errno, "check the path and the disk"))


if __name__ == "__main__":
    sys.exit(main())
