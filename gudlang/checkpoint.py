"""Checkpoints: one safetensors file that reproduces a model, plus a training-state file.

Input: named tensors (namespaced `model.*`, `ema.*`, `basis.*`, `stats.*`, `prior.*`, see
`pack_tensors`) and string metadata holding the spec text (`gudlang_spec`) and its model
hash (`gudlang_hash`); `format_version` is added on save.
Output: `save_checkpoint` writes the file; `load_checkpoint` returns (tensors, metadata);
`verify_checkpoint` recomputes the hash from the stored spec text and refuses a mismatch.

Checkpoints are safetensors, never pickle: loading one cannot run code. The training
state (a run stores its optimizer state and step: `runs.save_run`) goes into a separate
`torch.save` file restricted to what `torch.load(..., weights_only=True)` accepts: tensors,
dicts, lists, tuples, numbers, strings and None (RNG states, where a caller stores them, as
tensors: see `capture_rng_state`).
Every file is written atomically (temporary file in the same folder, fsync, os.replace),
so a crash mid-write leaves the previous file intact and no temporary file behind.

Errors (GudError):
    E620 cannot read or write a run file (missing, a directory, no permission)
    E621 corrupt or truncated file
    E622 checkpoint metadata missing or not strings
    E623 checkpoint format version not supported by this gudlang
    E624 stored hash does not match the stored spec (modified, or another gudlang version)
    E625 value that a training-state file cannot hold
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import safetensors.torch
import torch

from .diagnostics import GudError

FORMAT_VERSION = "1"
REQUIRED_METADATA = ("gudlang_spec", "gudlang_hash", "format_version")
NAMESPACES = ("model", "ema", "basis", "stats", "prior")
# Mode of newly created files (mkstemp's 0600 would make run files private by accident).
_NEW_FILE_MODE = 0o644


# --------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers see the old or the new file, never a
    partial one. An existing file keeps its permissions."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else _NEW_FILE_MODE
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise GudError.one("E620", f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise GudError.one("E620", f"cannot write {path}: {e.strerror or e}") from e
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform / file system.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_bytes(path: str | os.PathLike, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise GudError.one("E620", f"{what} {path} not found") from None
    except IsADirectoryError:
        raise GudError.one("E620", f"{what} {path} is a directory, not a file") from None
    except OSError as e:
        raise GudError.one("E620", f"cannot read {what} {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------------- checkpoints
def pack_tensors(**groups: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flatten groups into one namespaced dict: pack_tensors(model={"w": t}) -> {"model.w": t}."""
    unknown = [name for name in groups if name not in NAMESPACES]
    if unknown:
        raise ValueError(f"unknown tensor namespace {unknown[0]!r}; namespaces are {NAMESPACES}")
    return {f"{name}.{key}": t for name, group in groups.items() for key, t in group.items()}


def unpack_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of `pack_tensors`: one dict per namespace, every namespace present."""
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in NAMESPACES}
    for key, t in tensors.items():
        name, _, rest = key.partition(".")
        if name not in groups or not rest:
            raise GudError.one("E621", f"checkpoint tensor {key!r} is outside the namespaces "
                               f"{', '.join(NAMESPACES)}")
        groups[name][rest] = t
    return groups


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str]) -> None:
    """Write tensors and metadata (must hold `gudlang_spec` and `gudlang_hash`) atomically."""
    metadata = {**metadata, "format_version": FORMAT_VERSION}
    _check_metadata(metadata, path)
    # Own contiguous CPU copies: safetensors refuses views and tensors sharing storage.
    own = {k: t.detach().cpu().clone(memory_format=torch.contiguous_format)
           for k, t in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(own, metadata=metadata))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint; refuses corrupt files, missing metadata and unknown versions."""
    data = _read_bytes(path, "checkpoint")
    try:
        tensors = safetensors.torch.load(data)
        # The header was validated by the load above: 8-byte length, then JSON.
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except Exception as e:  # noqa: BLE001 - any decoding failure means a corrupt file
        if len(data) > 8 and data[8:9] != b"{":  # a safetensors file starts with its length, then JSON
            raise GudError.one("E621", f"{path} is not a gudlang checkpoint (not a safetensors file)",
                               help="pass a run directory, an exported model folder, a checkpoint "
                                    "(.safetensors) or a spec with network = oracle()") from None
        raise GudError.one("E621", f"checkpoint {path} is corrupt or truncated ({e})",
                           help="restore it from a copy or retrain") from e
    _check_metadata(metadata, path)
    if metadata["format_version"] != FORMAT_VERSION:
        raise GudError.one("E623", f"checkpoint {path} has format version "
                           f"{metadata['format_version']!r}; this gudlang reads version "
                           f"{FORMAT_VERSION!r}")
    return tensors, metadata


def _check_metadata(metadata: dict, path: str | os.PathLike) -> None:
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise GudError.one("E622", f"checkpoint {path} lacks metadata {', '.join(missing)}",
                           help="a gudlang checkpoint stores its spec text and model hash")
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise GudError.one("E622", f"checkpoint metadata {bad[0]!r} of {path} is not a string")


def trained_overrides(metadata: dict[str, str], path: str | os.PathLike) -> dict[str, str]:
    """The `-s` overrides a checkpoint was trained with (`gudlang_overrides`, JSON of key: value
    text); E622 when they are not that."""
    try:
        overrides = json.loads(metadata.get("gudlang_overrides", "{}"))
    except json.JSONDecodeError:
        overrides = None
    if not (isinstance(overrides, dict) and all(isinstance(v, (str, int, float)) for v in overrides.values())):
        raise GudError.one("E622", f"checkpoint metadata `gudlang_overrides` of {path} is not a JSON object of "
                                   "settings and their texts", help="restore the checkpoint from a copy or retrain")
    return overrides


def trained_step(metadata: dict[str, str]) -> int | None:
    """The training step a checkpoint's weights are of (its `gudlang_step`), or None when it
    records none (an export of an oracle, an older file)."""
    step = str(metadata.get("gudlang_step", ""))
    return int(step) if step.isdigit() else None


def verify_checkpoint(metadata: dict[str, str], compute_hash: Callable[[str], str]) -> None:
    """Recompute the model hash from the stored spec text; E624 if it differs from the
    stored hash (or the stored spec no longer checks)."""
    stored = metadata["gudlang_hash"]
    try:
        actual = compute_hash(metadata["gudlang_spec"])
    except GudError as e:
        raise GudError.one("E624", "the spec stored in the checkpoint no longer checks: "
                           f"{e.diagnostics[0].code}: {e.diagnostics[0].message}",
                           help="checkpoint was modified or produced by a different gudlang "
                                "version; use that version") from e
    if actual != stored:
        raise GudError.one("E624", f"checkpoint hash {stored} does not match its spec, which "
                           f"hashes to {actual}: checkpoint was modified or produced by a "
                           "different gudlang version",
                           help="retrain, or load it with the gudlang version that wrote it")


# --------------------------------------------------------------------------- training state
def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors and numbers."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`: later draws equal those after the capture."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any, where: str) -> Any:
    """`value` as weights_only-loadable objects; numpy arrays and scalars become tensors and
    Python numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise GudError.one("E625", f"training state {where} is a {type(value).__name__}; only "
                       "tensors, arrays, numbers, strings, None, dicts, lists and tuples "
                       "can be stored")


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write optimizer / RNG / step state atomically, loadable with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(_plain(state, "state"), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training-state file with `torch.load(weights_only=True)` (runs no code)."""
    data = _read_bytes(path, "training state")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure means a corrupt file
        raise GudError.one("E621", f"training state {path} is corrupt or truncated ({e})") from e
    if not isinstance(state, dict):
        raise GudError.one("E621", f"training state {path} is not a dict")
    return state


def model_tensors(model) -> dict[str, dict[str, torch.Tensor]]:
    """The fitted parts of a model a checkpoint carries besides weights."""
    return {"basis": model.basis.state_tensors(), "stats": model.stats.to_tensors(),
            "prior": {"scales": model.prior.scales.detach().cpu()}}
