"""Exported models: one folder that reproduces a trained model anywhere it is copied.

Input: a `GudModel` with its EMA weights (`gudlang.load(RUN)`), optionally the run's NLL and
the command that trained it. Output: a folder

    DIR/model.safetensors  the EMA weights, the fitted basis, the statistics and the prior
                           scales; metadata: the spec, its model hash, the data description,
                           the versions, and the sha256 of every tensor (`weights_digest`)
    DIR/spec.gud           the spec as trained
    DIR/config.json        the resolved spec, overrides, model and full hashes, data, versions,
                           the weights digest, the training command and the NLL
    DIR/samples.png        a grid of samples (completions for a conditional spec)
    DIR/README.md          a model card: what the model is, samples, NLL, how to reproduce
                           and use it

The folder is written under a temporary name and renamed when complete, so an interrupted
export (an error, Ctrl-C, SIGTERM) leaves nothing behind; a spec.gud whose line endings were
changed (git on Windows) still describes its weights. `gudlang.load(DIR)` and `gud sample DIR` read it; a
tampered export is refused: a changed spec no longer hashes to its stored hash (E624), changed
weights no longer match their digest, a config.json or spec.gud that no longer describes the
weights file (hashes, digest, resolved spec, overrides, data; the spec's text) is E626. The
weights file alone is the model: without config.json or spec.gud it still loads.

Errors (GudError): E644 the export folder exists, or the model is not a trained one as its spec
describes it (an oracle, raw weights, another path or params), E626 a tampered or mismatched
export, E620 cannot write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import threading
from pathlib import Path

import torch

from gudlang import __version__
from gudlang import checkpoint as ckpt
from gudlang.diagnostics import GudError

CODES: dict[str, str] = {
    "E626": "an exported model was changed after export",
    "E644": "the export folder exists, or the model is not a trained one as its spec describes it",
}

EXPORT_WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DIGEST_KEY = "gudlang_weights_sha256"


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def verify_export(tensors: dict[str, torch.Tensor], meta: dict[str, str], file: Path) -> None:
    """For an exported weights file: its tensors match their stored digest, and a config.json
    beside it names the same digest and hash (E626). Run checkpoints carry no digest."""
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        return
    if weights_digest(tensors) != stored:
        raise GudError.one("E626", f"the weights in {file} were changed after export (their sha256 no "
                                   "longer matches the one stored with them)",
                           help="export the model again from its run")
    folder = Path(file).parent
    config = folder / CONFIG
    if config.is_file():
        try:
            info = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GudError.one("E626", f"{config} is not readable JSON ({e})") from None
        expected = {"weights_sha256": stored, "model_hash": meta.get("gudlang_hash"),
                    "resolved_spec": meta.get("gudlang_resolved", ""),
                    "overrides": ckpt.trained_overrides(meta, file),
                    "data": json.loads(meta.get("gudlang_data", "{}"))}
        differ = [k for k, v in expected.items() if not isinstance(info, dict) or info.get(k) != v]
        if differ:
            raise GudError.one("E626", f"{config} does not describe {file} (its {', '.join(differ)} differ)",
                               help="export the model again from its run")
    spec = folder / "spec.gud"
    if spec.is_file() and _lines(spec.read_bytes().decode("utf-8", errors="replace")) != \
            _lines(meta.get("gudlang_spec", "")):
        raise GudError.one("E626", f"{spec} is not the spec the weights in {file} were trained with",
                           help="export the model again from its run, or delete that spec.gud (the spec "
                                "inside the weights file is the one used)")


def _lines(text: str) -> list[str]:
    """A text's lines, whatever their endings (git on Windows checks an export out with CRLF)."""
    return text.splitlines()


def export_model(model, folder: Path, *, nll: dict | None = None, command: str | None = None) -> Path:
    """Write `model` (a GudModel holding EMA weights) to `folder`; see the module docstring."""
    folder = Path(folder)
    if folder.exists():
        raise GudError.one("E644", f"{folder} exists", help="export into a new folder (nothing was written)")
    if getattr(model, "_weights", "ema") != "ema":
        raise GudError.one("E644", "an export holds the EMA weights", help="load the run with weights='ema'")
    if getattr(model.eps_model, "network", None) is None:
        raise GudError.one("E644", "network = oracle(): there are no weights to export",
                           help="share the spec itself: with the oracle it is the whole model")
    network = model.eps_model.network
    tensors = ckpt.pack_tensors(ema={k: v.detach().cpu() for k, v in network.state_dict().items()},
                                **ckpt.model_tensors(model.model))
    meta = {k: v for k, v in model.meta.items() if k.startswith("gudlang_") and k != DIGEST_KEY}
    meta.update(gudlang_version=__version__, torch_version=torch.__version__)
    meta[DIGEST_KEY] = weights_digest(tensors)
    temporary = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    with _sigterm_as_exit():  # a scheduler's kill must not leave the weights behind in `temporary`
        try:
            temporary.mkdir(parents=True)
        except OSError as e:
            raise GudError.one("E620", f"cannot create {temporary}: {e.strerror or e}") from None
        _write_export(model, folder, temporary, tensors, meta, nll, command)
    return folder


def _write_export(model, folder: Path, temporary: Path, tensors, meta, nll, command) -> None:
    """Fill `temporary`, then rename it to `folder`; `temporary` is removed when anything stops it."""
    try:
        ckpt.save_checkpoint(temporary / EXPORT_WEIGHTS, tensors, meta)
        ckpt.atomic_write_text(temporary / "spec.gud", model.spec_text)
        config = _config(model, meta, nll, command)
        ckpt.atomic_write_text(temporary / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
        model.grid(temporary / "samples.png")
        ckpt.atomic_write_text(temporary / "README.md", model_card(model, config))
        os.rename(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM raises SystemExit(128 + 15) inside the block (as Ctrl-C raises KeyboardInterrupt),
    so that cleanup runs; in the main thread only (elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _config(model, meta: dict, nll: dict | None, command: str | None) -> dict:
    from gudlang.hashing import full_hash
    return {
        "model_hash": meta["gudlang_hash"],
        "full_hash": full_hash(model.model.checked, model.model.data.fingerprint),
        "resolved_spec": meta.get("gudlang_resolved", ""),
        "overrides": ckpt.trained_overrides(meta, "the model's checkpoint"),
        "data": json.loads(meta.get("gudlang_data", "{}")),
        "trained_steps": ckpt.trained_step(meta),
        "weights_sha256": meta[DIGEST_KEY],
        "gudlang_version": __version__,
        "trained_with_gudlang": meta.get("gudlang_version"),
        "torch_version": torch.__version__,
        "command": command,
        "nll": nll,
    }


def model_card(model, config: dict) -> str:
    """The README of an export: what the model is, its samples and NLL, how to reproduce it."""
    spec = model.spec
    data = config["data"]
    lines = [f"# {data.get('name', 'gudlang')} model (gudlang)", "",
             f"A {spec.network.kind} network trained by gudlang {config['trained_with_gudlang'] or '?'} "
             f"for {config['trained_steps']} steps on `{data.get('name')}` ({' x '.join(map(str, data.get('shape', [])))}), "
             f"diffusing in the {spec.basis.kind} basis with the {spec.prior.kind} prior"
             + (" and given components (a conditional model)" if model.conditional else "") + ".", "",
             f"- model hash: `{config['model_hash']}`",
             f"- weights sha256: `{config['weights_sha256']}`", "",
             "## Samples", "", "![samples](samples.png)", ""]
    nll = config.get("nll")
    lines += ["## Likelihood", ""]
    if nll:
        lines.append(f"{nll['bits_per_dim']:.4f} +- {nll['stderr']:.4f} bits/dim on {nll['n']} {nll['split']} images "
                     f"({nll['divergence']} divergence, probability-flow ODE).")
    else:
        lines.append("Not measured at export: `gud nll DIR` measures it.")
    lines += ["", "## Use", "", "```bash", "gud sample DIR -n 64", "```", "", "```python", "import gudlang",
              "model = gudlang.load(\"DIR\")", "images = model.sample(16)  # (16, C, H, W) in data space", "```",
              "", "## Reproduce", ""]
    overrides = config.get("overrides") or {}
    sets = "".join(f" -s {shlex.quote(f'{k}={v}')}" for k, v in sorted(overrides.items()))
    lines += ["From this folder (its spec.gud and the data the spec names):", "", "```bash",
              f"gud train spec.gud{sets}", "```"]
    if config.get("command"):
        lines += ["", "The command that trained it, as it was run:", "", "```bash", config["command"], "```"]
    lines += ["", "## Spec", ""]
    if overrides:
        lines += ["Trained with these settings changed from the text below (`-s`): "
                  + ", ".join(f"`{k} = {v}`" for k, v in sorted(overrides.items())) + ".", ""]
    lines += ["```gud", model.spec_text.rstrip(), "```", ""]
    return "\n".join(lines)
