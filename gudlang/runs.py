"""Run directories and checkpoints: what a training run leaves behind, and loading it back.

Input: a model, its network and EMA, the optimizer, the step (saving); a run directory, a
checkpoint file or an exported model folder (loading). Output: a run directory

    RUN/spec.gud               the spec as given
    RUN/resolved.gud           the spec with every default explicit (hashes the same)
    RUN/run.json               hashes, overrides, data identity, versions, the command, and
                               `segments`: the lineage of the run (one entry per `gud train`
                               that trained it: from which step to which, with which overrides)
    RUN/metrics.csv            step, loss, grad_norm, lr, seconds (appended, never rewritten)
    RUN/checkpoint.safetensors weights, EMA weights, basis state, statistics, prior (+ spec, hash)
    RUN/training_state.pt      optimizer state and step (torch.load(weights_only=True))
    RUN/samples/               PNG grids and arrays

Every file but metrics.csv is written atomically; metrics.csv only ever gains whole lines,
and a resumed run drops lines past its checkpoint (or cut short by a crash).

`load_run` returns (Model, EpsModel with the EMA or raw weights, metadata) from the
checkpoint alone: the spec, statistics and basis state are inside it, and its stored hash
must match the spec (`checkpoint.verify_checkpoint`). The data description (`gudlang_data`:
shape, value range, levels, fingerprint) cannot be checked against the fingerprint without the
data, so its sha256 is stored beside it (`gudlang_data_sha256`) and a changed description is
refused (E622; checkpoints written before the digest load unchecked). Hashes of the first scheme (gud1) still
verify, so old checkpoints sample and measure; they cannot train on (`check_resumable`).

Errors: GudError E640 run directory problems, E641 checkpoint and data or spec disagree,
E643 a custom network is needed, plus those of `gudlang.checkpoint` (E620-E625).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import numbers
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from gudlang import __version__
from gudlang import checkpoint as ckpt
from gudlang.check import check_text
from gudlang.diagnostics import WARNING, Diagnostic, GudError, describe_value, render_text
from gudlang.images import make_folder

CHECKPOINT = "checkpoint.safetensors"
STATE = "training_state.pt"
STATE_NEXT = "training_state.next.pt"  # a save's new state, until its checkpoint is in place
RUN_RECORD = "run.json"
METRICS = "metrics.csv"
METRICS_HEADER = "step,loss,grad_norm,lr,seconds\n"
WEIGHTS = ("ema", "raw")  # --weights: the EMA weights (default) or the trained ones
# The sha256 of the `gudlang_data` metadata text, stored beside it in every checkpoint.
DATA_DIGEST = "gudlang_data_sha256"


def device_for(runtime) -> torch.device:
    """The torch device a spec's `runtime.device` asks for (E640 when it cannot be had)."""
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(runtime.device)
    except RuntimeError:
        raise GudError.one("E640", f"unknown device `{runtime.device}`",
                           help="use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise GudError.one("E640", f"runtime.device `{runtime.device}` is not supported",
                           help="use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GudError.one("E640", "runtime.device asks for CUDA but no CUDA device is available",
                           help="use runtime { device = auto } or -s runtime.device=cpu")
    return device


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the run record
def new_run_dir(parent: Path, stem: str, model_hash: str) -> Path:
    """A fresh folder name under `parent`: STEM-HASH8, then STEM-HASH8-2, ..."""
    base = Path(parent) / f"{stem}-{model_hash.split(':')[1][:8]}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


def read_record(run: Path) -> dict:
    """RUN/run.json (E640 when missing or damaged)."""
    path = Path(run) / RUN_RECORD
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GudError.one("E640", f"{path} is missing", help="a run directory made by `gud train` has one; "
                           "without it the run cannot be resumed") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GudError.one("E640", f"{path} is not readable JSON ({e})",
                           help="restore it from a copy; `gud train` wrote it when the run began") from None
    overrides = info.get("overrides", {}) if isinstance(info, dict) else None
    if not isinstance(overrides, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in overrides.items()):
        raise GudError.one("E640", f"{path} does not hold a run record (`overrides` must map names to values)",
                           help="restore it from a copy; `gud train` wrote it when the run began")
    return info


def stored_overrides(run: Path) -> dict[str, str]:
    """The `-s` overrides the run was last trained with."""
    return {k: str(v) for k, v in read_record(run).get("overrides", {}).items()}


def init_run(run: Path, spec_text: str, model, overrides: dict, world: int, command: list[str]) -> None:
    """Create a run directory: the spec, the resolved spec, run.json and an empty metrics.csv."""
    from gudlang.explain import resolved_text
    make_folder(run / "samples", "run directory")
    ckpt.atomic_write_text(run / "spec.gud", spec_text)
    ckpt.atomic_write_text(run / "resolved.gud", resolved_text(model.spec, model.checked.source))
    info = {"model_hash": model.model_hash, "full_hash": model.full_hash, "overrides": overrides,
            "data": {"name": model.data.name, "fingerprint": model.data.fingerprint,
                     "shape": list(model.data.shape), "params": _jsonable(model.data.params)},
            "world_size": world, "gudlang": __version__, "torch": torch.__version__,
            "command": command, "created": _now(), "segments": []}
    ckpt.atomic_write_text(run / RUN_RECORD, json.dumps(info, indent=2, sort_keys=True) + "\n")
    ckpt.atomic_write_text(run / METRICS, METRICS_HEADER)


def record_segment(run: Path, start: int, stop: int, steps: int, overrides: dict, command: list[str],
                   world: int) -> None:
    """Append one training segment (steps start -> stop of train.steps) to run.json and make
    its overrides the run's current ones (a later --resume continues with them)."""
    info = read_record(run)
    segments = info.get("segments") if isinstance(info.get("segments"), list) else []
    segments.append({"from_step": start, "to_step": stop, "train_steps": steps, "overrides": overrides,
                     "command": command, "world_size": world, "gudlang": __version__,
                     "torch": torch.__version__, "finished": _now()})
    info.update(segments=segments, overrides=overrides)
    ckpt.atomic_write_text(run / RUN_RECORD, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return {k: str(v) for k, v in dict(value).items()}


# --------------------------------------------------------------------------- metrics
def append_metrics(path: Path, rows) -> None:
    """Append rows (step, loss, grad_norm, lr, seconds) as whole lines."""
    if not rows:
        return
    lines = "".join(f"{step},{loss!r},{norm:.6g},{lr:.6g},{seconds:.3f}\n" for step, loss, norm, lr, seconds in rows)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
    except OSError as e:
        raise GudError.one("E620", f"cannot write {path}: {e.strerror or e}") from None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the header and the well-formed rows up to `step` (a resumed run restarts there)."""
    if not path.exists():
        ckpt.atomic_write_text(path, METRICS_HEADER)
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as e:
        raise GudError.one("E640", f"{path} is not readable text ({e})",
                           help="move it aside; resuming then starts a new metrics.csv") from None

    def kept(line: str) -> bool:
        fields = line.rstrip("\n").split(",")
        return line.endswith("\n") and len(fields) == 5 and fields[0].isdigit() and int(fields[0]) <= step

    ckpt.atomic_write_text(path, METRICS_HEADER + "".join(line for line in lines[1:] if kept(line)))


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """metrics.csv as columns (step, loss, grad_norm, lr, seconds) of float arrays."""
    try:
        rows = [line.split(",") for line in Path(path).read_text(encoding="utf-8").splitlines()[1:]]
        table = np.array([[float(v) for v in row] for row in rows if len(row) == 5], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GudError.one("E640", f"{path} is not a metrics table ({e})") from None
    table = table.reshape(-1, 5)
    return dict(zip(METRICS_HEADER.strip().split(","), table.T))


# --------------------------------------------------------------------------- checkpoints
def checkpoint_metadata(model, spec_text: str, overrides: dict, step: int) -> dict[str, str]:
    """String metadata of a checkpoint: the spec, its hash and resolved text, the overrides,
    the data description, the step and the versions that wrote it."""
    from gudlang.explain import resolved_text
    d = model.data
    data = json.dumps({"fingerprint": d.fingerprint, "shape": list(d.shape), "name": d.name,
                       "levels": d.levels, "value_range": list(d.value_range)})
    return {
        "gudlang_spec": spec_text,
        "gudlang_hash": model.model_hash,
        "gudlang_resolved": resolved_text(model.spec, model.checked.source),
        "gudlang_overrides": json.dumps(overrides, sort_keys=True),
        "gudlang_data": data,
        DATA_DIGEST: _sha256(data),
        "gudlang_step": str(step),
        "gudlang_version": __version__,
        "torch_version": torch.__version__,
    }


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_run(run: Path, model, spec_text: str, overrides: dict, network, ema, optimizer, step: int,
             custom_network: str | None = None) -> None:
    """Checkpoint (weights, EMA weights, model tensors) and training state of one step."""
    meta = checkpoint_metadata(model, spec_text, overrides, step)
    if custom_network:
        meta["gudlang_custom_network"] = custom_network
    tensors = ckpt.pack_tensors(model=_weights(network), ema=_weights(ema.module), **ckpt.model_tensors(model))
    # Each write is atomic; the pair is made so by order: the new state beside the old one, then
    # the checkpoint (the switch), then the state renamed into place. A kill at any point leaves
    # a checkpoint with its own state (`settle_state` finishes or drops the half-done save).
    ckpt.save_training_state(run / STATE_NEXT, {"step": step, "optimizer": optimizer.state_dict()})
    ckpt.save_checkpoint(run / CHECKPOINT, tensors, meta)
    os.replace(run / STATE_NEXT, run / STATE)


def settle_state(run: Path, checkpoint_step: str) -> None:
    """Finish a save that was cut short (see `save_run`): a new state whose step is the
    checkpoint's goes into place; one of a save whose checkpoint was not written is dropped."""
    pending = run / STATE_NEXT
    if not pending.is_file():
        return
    try:
        step = ckpt.load_training_state(pending).get("step")
    except GudError:
        step = None  # cut short while being written
    if str(step) == checkpoint_step:
        os.replace(pending, run / STATE)
    else:
        pending.unlink()


def resume_step(state: dict, meta: dict, total: int, run: Path) -> int:
    """The step a resumed run continues from: the training state's, which must equal the
    checkpoint's (both are written at every save) and lie in [0, train.steps]. E621 otherwise."""
    step, saved = state.get("step"), meta.get("gudlang_step", "")
    if isinstance(step, bool) or not isinstance(step, int) or not saved.isdigit():
        raise GudError.one("E621", f"{run / STATE} or {run / CHECKPOINT} does not record a step",
                           help="restore the run from a copy, or start a new run")
    if step != int(saved):
        raise GudError.one("E621", f"{run / STATE} is at step {step} but {run / CHECKPOINT} at step {saved}: "
                           "a save was cut short", help="the checkpoint still samples; to train on, "
                           "restore both files from a copy or start a new run")
    if step > total:
        raise GudError.one("E641", f"{run} is at step {step}, beyond train.steps = {total}",
                           help="a run only grows: give -s train.steps=N with N >= the steps it has")
    if step < 0:
        raise GudError.one("E621", f"{run / STATE} is at step {step}",
                           help="restore the run from a copy, or start a new run")
    return step


def check_resumable(meta: dict, model, run: Path) -> None:
    """A run continues only with a checkpoint of this model (E641): same spec up to how long
    it trains and how it logs, same data."""
    from gudlang.hashing import SCHEME, model_hashes, scheme_of
    stored = meta.get("gudlang_hash", "")
    if scheme_of(stored) != SCHEME:
        raise GudError.one("E641", f"{run} was trained with an earlier gudlang (hash scheme "
                                   f"{scheme_of(stored)}): it samples and measures, but does not train on",
                           help="start a new run from its spec")
    if stored not in model_hashes(model.checked, model.data.fingerprint):
        changed = _changed_settings(meta, model)
        what = f"{', '.join(changed)} changed" if changed else "spec or data changed"
        cosine = " (with lr_schedule = cosine, train.steps sets the decay, so it is part of the model)" \
            if "train.steps" in changed else ""
        raise GudError.one("E641", f"{run}'s checkpoint was made from a different model ({what}){cosine}: only "
                                   "train.steps and the logging settings may change when a run grows",
                           help="start a new run instead of --resume (e.g. gud train SPEC)")


def _changed_settings(meta: dict, model) -> list[str]:
    """The dotted names (`train.lr`, `data`, `formula gamma`) whose hashed values differ between
    the checkpoint's model and `model`; [] when they cannot be told apart."""
    from gudlang.check import check_text
    from gudlang.hashing import payload

    def flat(value, prefix=""):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(v, f"{prefix}.{k}" if prefix else k)
        else:
            yield prefix, json.dumps(value, sort_keys=True)

    try:
        overrides = {k: str(v) for k, v in ckpt.trained_overrides(meta, "the run's checkpoint").items()}
        before = check_text(meta["gudlang_spec"], None, overrides)
        fingerprint = json.loads(meta["gudlang_data"])["fingerprint"]
        old = dict(flat(payload(before, fingerprint, full=False)))
    except (GudError, KeyError, ValueError, TypeError, AttributeError):
        return []
    new = dict(flat(payload(model.checked, model.data.fingerprint, full=False)))
    names = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            name = "the data" if key.startswith("data.") else key.split(".")[0] if key.split(".")[0] in \
                ("gamma", "weight", "given", "prior_scale") else ".".join(key.split(".")[:2])
            if name not in names:
                names.append(name)
    return names


def load_weights(module: torch.nn.Module, groups: dict, group: str, file: Path, given: str | None = None) -> None:
    """Load one weight group of a checkpoint into `module`, the spec's network or one the user
    `given` (a description naming its class); E621 when the group is missing or does not fit."""
    if not groups.get(group):
        raise GudError.one("E621", f"checkpoint {file} has no `{group}` weights",
                           help="restore it from a copy or retrain")
    try:
        module.load_state_dict(groups[group])
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise GudError.one("E621", f"the `{group}` weights in {file} do not fit "
                                   f"{given or 'the network its spec describes'} ({detail})",
                           help="restore it from a copy or retrain" if given is None
                           else "pass the network the run was trained with") from None


def check_network_argument(network) -> None:
    """E003 unless `network` (a user's module for training or loading) is None or a torch.nn.Module
    instance (a class, a function or a number is a mistake said plainly)."""
    if network is not None and not isinstance(network, torch.nn.Module):
        kind = f"the class {network.__qualname__}" if isinstance(network, type) else type(network).__name__
        raise GudError.one("E003", f"network must be an instance of torch.nn.Module, got {kind}",
                           help="pass an instance, e.g. network=MyNet(), whose forward is net(x, gamma) -> eps")


def make_spec_network(model):
    """The network a spec declares, untrained (E640 for `oracle()`, which needs none)."""
    from gudlang.networks import make_network
    net = model.spec.network
    if net.kind == "oracle":
        raise GudError.one("E640", "network = oracle() needs no training",
                           help="sample it directly: gud sample SPEC (the oracle is exact for Gaussian data)")
    options = net.model_dump()
    kind = options.pop("kind")
    return make_network(kind, model.data.shape, **options)


# --------------------------------------------------------------------------- loading
def checkpoint_file(target: str | Path) -> Path:
    """The checkpoint of a run directory, an exported folder, or a checkpoint file itself."""
    from gudlang.export import EXPORT_WEIGHTS
    path = Path(target)
    if path.is_dir():
        for name in (CHECKPOINT, EXPORT_WEIGHTS):
            if (path / name).is_file():
                return path / name
        raise GudError.one("E640", f"{path} holds no {CHECKPOINT} (a run) or {EXPORT_WEIGHTS} (an export)",
                           help="pass a run directory, an exported model folder or a checkpoint file")
    return path


def param_overrides(params, *, required: bool = False) -> dict[str, str]:
    """Drawn params (and settings) {"a": 0.8, "train.steps": 200} as the text overrides the
    loaders take; None is {} unless `required`. E003 unless a dict of names (str) to numbers
    (or their text, as `-s a=0.8` gives them); the values are checked by the spec (E210)."""
    example = 'for example {"a": 0.8}'
    if params is None and not required:
        return {}
    if not isinstance(params, Mapping):
        raise GudError.one("E003", f"params must be a dict of param name -> number, got {describe_value(params)}",
                           help=example)
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise GudError.one("E003", f"param names must be non-empty strings, got {describe_value(key)}",
                               help=example)
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            raise GudError.one("E003", f"param `{key}` must be a number, got {describe_value(value)}", help=example)
    return {key: str(value) for key, value in params.items()}


def load_run(target: str | Path, overrides: dict | None = None, network: torch.nn.Module | None = None,
             weights: str = "ema"):
    """A run directory, an export or a checkpoint file -> (Model, EpsModel, metadata), the
    network with the EMA weights (`weights = "raw"`: the trained ones, where stored). A run
    trained with a custom network needs that module again as `network`: a copy of it is loaded,
    the module given stays as it was. Torch's random state is left as it was."""
    from gudlang.data import DataSet
    from gudlang.export import verify_export
    from gudlang.hashing import model_hashes, scheme_of
    from gudlang.networks import make_network
    from gudlang.pipeline import build_model
    from gudlang.stats import ComponentStats
    from gudlang.train import EpsModel

    if weights not in WEIGHTS:
        raise GudError.one("E003", f"unknown weights {weights!r}", help=f"choose {' or '.join(WEIGHTS)}")
    check_network_argument(network)
    overrides = param_overrides(overrides)  # {"a": 0.8} as the text -s a=0.8 gives (E003: not such a dict)
    file = checkpoint_file(target)
    tensors, meta = ckpt.load_checkpoint(file)
    spec_text = meta["gudlang_spec"]
    stored_overrides = ckpt.trained_overrides(meta, file)
    data_info = _data_info(meta, file)

    def recompute(text: str) -> str:
        checked = check_text(text, f"{file}:spec", stored_overrides)
        hashes = model_hashes(checked, data_info["fingerprint"], scheme=scheme_of(meta["gudlang_hash"]))
        return meta["gudlang_hash"] if meta["gudlang_hash"] in hashes else hashes[0]

    ckpt.verify_checkpoint(meta, recompute)
    verify_export(tensors, meta, file)
    trained_settings = sorted(k for k in overrides or {} if "." in k and k.partition(".")[0] not in LOADED_SETTINGS)
    if trained_settings:
        raise GudError.one("E641", f"{', '.join(f'`{k}`' for k in trained_settings)} cannot be set on the trained "
                                   f"model {file}: its data, basis, network and training are those it was trained with",
                           help="a trained model takes params (-s a=...) and sample.* and runtime.* settings; "
                                "to change the others, train a new run")
    checked = check_text(spec_text, f"{file}:spec", {**stored_overrides, **(overrides or {})})
    groups = ckpt.unpack_tensors(tensors)
    shape = tuple(data_info["shape"])
    empty = np.zeros((0,) + shape, dtype=np.float32)
    data = DataSet(name=data_info["name"], train=empty, test=empty, shape=shape, params={},
                   fingerprint=data_info["fingerprint"], value_range=tuple(data_info["value_range"]),
                   levels=data_info["levels"])
    try:
        stats = ComponentStats.from_tensors(groups["stats"])
    except GudError as e:
        raise GudError.one(e.diagnostics[0].code, f"checkpoint {file}: {e.diagnostics[0].message}",
                           help="restore it from a copy or retrain") from None
    model = build_model(checked, data, stats=stats, basis_state=groups.get("basis"))
    if set_params(overrides or {}):  # settings (sample.steps) leave the schedule alone
        trained = build_model(check_text(spec_text, f"{file}:spec", stored_overrides), data, stats=stats,
                              basis_state=groups.get("basis"))
        within_training(trained, model, overrides)
    custom = meta.get("gudlang_custom_network")
    if network is None and custom:
        raise GudError.one("E643", f"{file} was trained with a custom network ({custom})",
                           help="load it from Python: gudlang.load(path, network=YourModule(...))")
    what = given = None  # the spec's own network
    if network is None:
        options = model.spec.network.model_dump()
        kind = options.pop("kind")
        with torch.random.fork_rng(devices=[]):  # its random initial weights: not the caller's random stream
            network = make_network(kind, shape, **options).float()  # not in torch's default dtype
    else:
        given = type(network).__qualname__
        network = _own_copy(network)  # the caller's module stays as given (a second load may reuse it)
        what = f"the network given ({given}" + (f"; the run was trained with {custom})" if custom and custom != given
                                                 else ")")
    group = "ema" if weights == "ema" else "model"
    if not groups.get(group) and groups.get("ema"):
        raise GudError.one("E640", f"{file} holds only the EMA weights (an export)",
                           help='use --weights ema (weights="ema" in Python)')
    if model.spec.runtime.dtype == "float64":  # trained in float64: loaded, sampled and measured in it
        network.double()  # before the weights: loaded into float32 they were rounded
    load_weights(network, groups, group, file, what)
    if custom and given is not None and custom != given:  # the weights fit, the class is not the one trained
        print(render_text([Diagnostic("W644", f"{file} was trained with a custom network {custom}; its weights "
                                      f"fit and are loaded into the {given} given", severity=WARNING,
                                      help=f"pass a {custom} if {given} is not the same network")]),
              file=sys.stderr)
    network.eval()
    return model, EpsModel(network, model.space), meta


def _own_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a user's network to load weights into; the module itself when it cannot be
    copied (it holds a lock, say), as before copies were made."""
    try:
        return copy.deepcopy(network)
    except (TypeError, RuntimeError, copy.Error):
        return network


# The settings of a spec that `-s` may change on a trained model (besides params, checked against
# the training support): how it samples and where it runs.
LOADED_SETTINGS = ("sample", "runtime")


def set_params(overrides: dict) -> dict:
    """The params among -s overrides (settings such as sample.rtol have a dot in their key)."""
    return {k: v for k, v in overrides.items() if "." not in k}


def within_training(trained, model, overrides: dict) -> None:
    """E303 unless `model` (the trained one's spec with `overrides`, e.g. a param set with -s)
    samples inside the states the network was trained on: its gamma and its sampling path
    against the support of `trained`'s gamma over its drawn params (`check_support`)."""
    from dataclasses import replace

    from gudlang.schedules import check_support
    from gudlang.spec import FixedParam
    shown = ", ".join(f"{k} = {v}" for k, v in overrides.items())
    fixed = [f"`{k}` = {p.value:g}" for k, p in trained.spec.params.items()
             if k in overrides and isinstance(p, FixedParam)]
    help = ("sample the model with the values it was trained on, or train it on these (draw the param over a "
            "range that holds them)")
    if fixed:
        help = (f"the network was trained at {', '.join(fixed)} only (a fixed param); a param drawn in training "
                f"(param a ~ uniform(lo, hi)) can be set anywhere in its range")
    for schedule in dict.fromkeys([model.schedule, model.sampling_path]):
        try:
            check_support(trained.schedule, schedule, trained.checked.drawn_ranges, trained.groups,
                          ignore=trained.given)
        except GudError as e:
            raise GudError([replace(d, message=f"with {shown}: {d.message}", help=help)
                            for d in e.diagnostics]) from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _data_info(meta: dict, file: Path) -> dict:
    """The data description a checkpoint carries (shape, value range, levels, fingerprint);
    E622 when it is not there or malformed."""
    def bad(why: str) -> GudError:
        return GudError.one("E622", f"checkpoint metadata `gudlang_data` of {file} {why}",
                            help="restore the checkpoint from a copy or retrain")
    stored = meta.get(DATA_DIGEST)
    if stored is not None and stored != _sha256(meta.get("gudlang_data", "")):
        raise bad("was changed after it was written (its sha256 differs from the one stored with it)")
    try:
        info = json.loads(meta.get("gudlang_data", ""))
    except json.JSONDecodeError:
        raise bad("is not JSON") from None
    if not isinstance(info, dict) or not {"name", "fingerprint", "shape", "value_range", "levels"} <= set(info):
        raise bad("lacks name, fingerprint, shape, value_range or levels")
    shape, value_range, levels = info["shape"], info["value_range"], info["levels"]
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
        raise bad(f"has an invalid shape {shape!r}")
    if not (isinstance(value_range, list) and len(value_range) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value_range)):
        raise bad(f"has an invalid value_range {value_range!r}")
    if levels is not None and not (isinstance(levels, int) and levels > 1):
        raise bad(f"has an invalid levels {levels!r}")
    return info
