"""Run directories and the `gud train`, `gud sample` and `gud nll` commands.

Input: a spec file (train) or a run directory / checkpoint file (sample, nll), and
`-s key=value` overrides. Output: a run directory

    RUN/spec.gud               the spec as given
    RUN/resolved.gud           the spec with every default explicit (hashes the same)
    RUN/run.json               hashes, overrides, data identity, device, world size
    RUN/metrics.csv            step, loss, grad_norm, lr, seconds
    RUN/checkpoint.safetensors weights, EMA weights, basis state, statistics, prior (+ spec, hash)
    RUN/training_state.pt      optimizer state and step (torch.load(weights_only=True))
    RUN/samples/               PNG grids and .npz arrays

Every file is written atomically. Errors: GudError E6xx (E630 non-finite loss, E640 run
directory problems, E641 checkpoint and data disagree), plus those of every stage. Warning
W630: runtime.dtype = bfloat16 on a device without bf16 autocast (training goes on in float32).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gudlang import checkpoint as ckpt
from gudlang.check import check_text, read_source
from gudlang.diagnostics import WARNING, Diagnostic, GudError, render_text

CHECKPOINT = "checkpoint.safetensors"
STATE = "training_state.pt"
METRICS_HEADER = "step,loss,grad_norm,lr,seconds\n"


# --------------------------------------------------------------------------- helpers
def _device(runtime) -> torch.device:
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


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _stored_overrides(run: Path) -> dict[str, str]:
    """The `-s` overrides recorded in RUN/run.json; E640 when the file is missing or damaged."""
    path = run / "run.json"
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
    return {k: str(v) for k, v in overrides.items()}


def _new_run_dir(parent: Path, stem: str, model_hash: str) -> Path:
    base = parent / f"{stem}-{model_hash.split(':')[1][:8]}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


def _network(model):
    from gudlang.networks import make_network
    net = model.spec.network
    if net.kind == "oracle":
        raise GudError.one("E640", "network = oracle() needs no training",
                           help="sample it directly: gud sample SPEC (the oracle is exact for Gaussian data)")
    options = net.model_dump()
    kind = options.pop("kind")
    return make_network(kind, model.data.shape, **options)


def _metadata(model, spec_text: str, overrides: dict, step: int) -> dict[str, str]:
    from gudlang.explain import resolved_text
    d = model.data
    return {
        "gudlang_spec": spec_text,
        "gudlang_hash": model.model_hash,
        "gudlang_resolved": resolved_text(model.spec, model.checked.source),
        "gudlang_overrides": json.dumps(overrides, sort_keys=True),
        "gudlang_data": json.dumps({"fingerprint": d.fingerprint, "shape": list(d.shape), "name": d.name,
                                    "levels": d.levels, "value_range": list(d.value_range)}),
        "gudlang_step": str(step),
    }


def _checkpoint_tensors(model, network, ema) -> dict[str, torch.Tensor]:
    return ckpt.pack_tensors(
        model={k: v.detach().cpu() for k, v in network.state_dict().items()},
        ema={k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
        basis=model.basis.state_tensors(),
        stats=model.stats.to_tensors(),
        prior={"scales": model.prior.scales.detach().cpu()},
    )


# --------------------------------------------------------------------------- train
def train(args, overrides: dict) -> int:
    """`gud train SPEC` / `gud train --resume RUN` (exit code 128 + signal number when stopped
    by SIGINT (130) or SIGTERM (143), after saving a checkpoint)."""
    result = train_run(args.spec, overrides, out=args.out, resume=args.resume, until=args.until,
                       quiet=args.quiet)
    return 128 + result.signal if result.interrupted else 0


@dataclass
class TrainResult:
    """Where a training run went, the step it reached, and whether a signal stopped it."""
    run: Path
    step: int
    interrupted: bool = False
    signal: int = 0


def train_run(spec: str | Path | None, overrides: dict | None = None, *, out: str | Path = "runs",
              resume: str | Path | None = None, until: int | None = None, quiet: bool = False,
              network: torch.nn.Module | None = None) -> TrainResult:
    """Train a spec (or resume a run) and return where it went. `network` replaces the spec's
    network by any module with the call `net(x (B, C, H, W), gamma (B, D)) -> eps (B, C, H, W)`;
    pass the same module to `load_run` to sample from the checkpoint."""
    from gudlang.pipeline import build_model
    from gudlang.train import EMA, Objective, make_batch, train_step

    overrides = dict(overrides or {})
    rank, world = _dist_info()
    if resume:
        run = Path(resume)
        if not (run / "spec.gud").is_file():
            raise GudError.one("E640", f"{run} is not a run directory (no spec.gud)",
                               help="pass the folder that `gud train` created")
        overrides = {**_stored_overrides(run), **overrides}
        spec_path = run / "spec.gud"
    else:
        if not spec:
            raise GudError.one("E003", "gud train needs a spec file or --resume RUN")
        spec_path = Path(spec)
        run = None
    spec_text = read_source(str(spec_path)).decode("utf-8", errors="replace")
    checked = check_text(spec_text, str(spec_path), overrides)
    model = build_model(checked)
    for w in model.warnings:
        if rank == 0:
            print(render_text([w], spec_text), file=sys.stderr)
    spec = model.spec
    settings = spec.train
    device = _device(spec.runtime)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    torch.manual_seed(settings.seed)
    custom = network is not None
    network = network if custom else _network(model)
    ema = EMA(network, settings.ema)
    network_name = type(network).__qualname__ if custom else model.spec.network.kind
    start = 0
    if run is None:
        run = _new_run_dir(Path(out), spec_path.stem, model.model_hash)
        if rank == 0:
            _init_run(run, spec_text, model, overrides, world)
    else:
        tensors, meta = ckpt.load_checkpoint(run / CHECKPOINT)
        if meta["gudlang_hash"] != model.model_hash:
            raise GudError.one("E641", "the run's checkpoint was made from a different spec or data",
                               help="start a new run instead of --resume")
        groups = ckpt.unpack_tensors(tensors)
        _load_weights(network, groups, "model", run / CHECKPOINT)
        _load_weights(ema.module, groups, "ema", run / CHECKPOINT)
        state = ckpt.load_training_state(run / STATE)
        start = _resume_step(state, meta, settings.steps, run)
        if rank == 0:
            _truncate_metrics(run / "metrics.csv", start)
    network.to(device)
    ema.module.to(device)
    objective = Objective(model, network).to(device)
    if spec.runtime.dtype == "float64":
        objective.to(torch.float64)
        ema.module.to(torch.float64)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if start:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise GudError.one("E621", f"the optimizer state in {run / STATE} does not fit this model ({e})",
                               help="restore the run from a copy, or start a new run") from None
    ddp_net = network
    if world > 1:
        ddp_net = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index]
                                                            if device.type == "cuda" else None)
        objective.network = ddp_net
    autocast = torch.bfloat16 if spec.runtime.dtype == "bfloat16" and device.type == "cuda" else None
    if spec.runtime.dtype == "bfloat16" and autocast is None and rank == 0:
        print(render_text([Diagnostic("W630", f"runtime.dtype = bfloat16 autocasts on CUDA only; "
                                      f"training on {device.type} in float32", severity=WARNING,
                                      path=str(spec_path))]), file=sys.stderr)
    if spec.runtime.compile:
        objective.network = torch.compile(objective.network)
    data = torch.as_tensor(model.data.train)
    per_rank = max(1, settings.batch // world)
    metrics_path = run / "metrics.csv"
    interrupted = {"flag": False, "signal": 0}

    def on_signal(signum, frame):
        interrupted["flag"], interrupted["signal"] = True, signum

    # Ctrl-C and a scheduler's SIGTERM (preemption) both stop at the end of the step with a
    # checkpoint. Handlers can only be set from the main thread; elsewhere signals act as usual.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    old_handlers = ({sig: signal.signal(sig, on_signal) for sig in stop_signals}
                    if threading.current_thread() is threading.main_thread() else {})
    losses = []
    t0 = time.time()
    bar = _progress(start, settings.steps, quiet=quiet or rank != 0)
    step = start
    stop = settings.steps if until is None else min(settings.steps, until)
    try:
        rows = []
        while step < stop:
            batch = make_batch(data, spec, model.checked.drawn, step, per_rank, settings.seed, rank, device)
            try:
                loss, norm = train_step(objective, optimizer, batch, settings, step, autocast,
                                        list(network.parameters()))
            except GudError:
                if rank == 0:
                    _append_metrics(metrics_path, rows)
                raise
            ema.update(network)
            losses.append(loss)
            step += 1
            rows.append((step, loss, norm, optimizer.param_groups[0]["lr"], time.time() - t0))
            bar.update(loss)
            if rank == 0 and step % settings.log_every == 0:
                _append_metrics(metrics_path, rows)
                rows = []
            if rank == 0 and (step % settings.checkpoint_every == 0 or step == settings.steps):
                _append_metrics(metrics_path, rows)
                rows = []
                _save(run, model, spec_text, overrides, network, ema, optimizer, step, custom and network_name)
            if rank == 0 and settings.sample_every and step % settings.sample_every == 0 and step < settings.steps:
                _sample_grid(model, ema.module, run / "samples" / f"step_{step:06d}.png", device)
            if _any_rank(interrupted["flag"], world, device):  # every rank stops at the same step
                if rank == 0:
                    _append_metrics(metrics_path, rows)
                    _save(run, model, spec_text, overrides, network, ema, optimizer, step, custom and network_name)
                    name = signal.Signals(interrupted["signal"]).name if interrupted["signal"] else "a signal"
                    print(f"\ninterrupted by {name} at step {step}: checkpoint saved; continue with "
                          f"`gud train --resume {run}`", file=sys.stderr)
                return TrainResult(run, step, interrupted=True,
                                   signal=interrupted["signal"] or int(signal.SIGINT))
        bar.close()
        agree = _ranks_agree(network) if world > 1 else None
        if rank == 0:
            _append_metrics(metrics_path, rows)
            if step == start or step % settings.checkpoint_every:  # leave a checkpoint of the last step
                _save(run, model, spec_text, overrides, network, ema, optimizer, step, custom and network_name)
            elapsed = time.time() - t0
            if not losses:
                print(f"nothing to train: {run} is at step {step} of {settings.steps}")
                return TrainResult(run, step)
            last = np.mean(losses[-50:])
            if step < settings.steps:
                print(f"stopped {run} at step {step} of {settings.steps} (--until) in {elapsed:.0f} s; "
                      f"continue with `gud train --resume {run}`")
                return TrainResult(run, step)
            _sample_grid(model, ema.module, run / "samples" / "final.png", device)
            print(f"trained {run}: {step} steps in {elapsed:.0f} s, final loss {last:.4f}")
            if agree is not None:
                print(f"DDP: {world} ranks, weights identical on every rank: {agree}")
            print(f"model hash {model.model_hash}")
    finally:
        for sig, handler in old_handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        if world > 1 and torch.distributed.is_initialized():
            if sys.exc_info()[0] is None:
                # rank 0 is still writing after the loop: tearing gloo down under it aborts
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return TrainResult(run, step)


def _resume_step(state: dict, meta: dict, total: int, run: Path) -> int:
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
    if not 0 <= step <= total:
        raise GudError.one("E621", f"{run / STATE} is at step {step}, outside 0..{total} (train.steps)",
                           help="restore the run from a copy, or start a new run")
    return step


def _load_weights(module: torch.nn.Module, groups: dict, group: str, file: Path) -> None:
    """Load one weight group of a checkpoint; E621 when it is missing or does not fit."""
    if group not in groups:
        raise GudError.one("E621", f"checkpoint {file} has no `{group}` weights",
                           help="restore it from a copy or retrain")
    try:
        module.load_state_dict(groups[group])
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise GudError.one("E621", f"the `{group}` weights in {file} do not fit the network its spec "
                           f"describes ({detail})", help="restore it from a copy or retrain") from None


def _any_rank(flag: bool, world: int, device) -> bool:
    """Whether `flag` is set on any rank (one small all-reduce per step under DDP)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _ranks_agree(network) -> bool:
    """Whether every DDP rank holds the same weights (checksums compared across ranks)."""
    with torch.no_grad():
        total = torch.stack([p.double().sum() for p in network.parameters()]).sum().reshape(1)
    lo, hi = total.clone(), total.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    return bool(lo == hi)


def _init_run(run: Path, spec_text: str, model, overrides: dict, world: int) -> None:
    from gudlang.explain import resolved_text
    _make_folder(run / "samples", "run directory")
    ckpt.atomic_write_text(run / "spec.gud", spec_text)
    ckpt.atomic_write_text(run / "resolved.gud", resolved_text(model.spec, model.checked.source))
    info = {"model_hash": model.model_hash, "full_hash": model.full_hash, "overrides": overrides,
            "data": {"name": model.data.name, "fingerprint": model.data.fingerprint,
                     "shape": list(model.data.shape), "params": _jsonable(model.data.params)},
            "world_size": world, "torch": torch.__version__}
    ckpt.atomic_write_text(run / "run.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    ckpt.atomic_write_text(run / "metrics.csv", METRICS_HEADER)
    print(f"run directory: {run}", file=sys.stderr)


def _make_folder(folder: Path, what: str) -> None:
    """mkdir -p, with E620 naming the folder when it cannot be made (a file in the way, no
    permission, a read-only disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GudError.one("E620", f"cannot create the {what} {folder}: {e.strerror or e}",
                           help="choose another output folder") from None


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return {k: str(v) for k, v in dict(value).items()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a resumed run restarts from."""
    if not path.exists():
        ckpt.atomic_write_text(path, METRICS_HEADER)
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as e:
        raise GudError.one("E640", f"{path} is not readable text ({e})",
                           help="move it aside; resuming then starts a new metrics.csv") from None
    kept = lines[:1] + [line for line in lines[1:] if line.split(",")[0].isdigit()
                        and int(line.split(",")[0]) <= step]
    ckpt.atomic_write_text(path, "".join(kept))


def _append_metrics(path: Path, rows) -> None:
    if not rows:
        return
    old = path.read_text(encoding="utf-8") if path.exists() else METRICS_HEADER
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for step, loss, norm, lr, seconds in rows:
        writer.writerow([step, repr(loss), f"{norm:.6g}", f"{lr:.6g}", f"{seconds:.3f}"])
    ckpt.atomic_write_text(path, old + buf.getvalue())


def _save(run: Path, model, spec_text, overrides, network, ema, optimizer, step: int,
          custom_network: str | bool = False) -> None:
    meta = _metadata(model, spec_text, overrides, step)
    if custom_network:
        meta["gudlang_custom_network"] = str(custom_network)
    ckpt.save_checkpoint(run / CHECKPOINT, _checkpoint_tensors(model, network, ema), meta)
    ckpt.save_training_state(run / STATE, {"step": step, "optimizer": optimizer.state_dict()})


class _progress:
    """A tqdm bar with loss, it/s and time left (silent when quiet)."""

    def __init__(self, start: int, total: int, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        self.avg = None

    def update(self, loss: float) -> None:
        self.avg = loss if self.avg is None else 0.95 * self.avg + 0.05 * loss
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.avg:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- loading a run
def load_run(target: str | Path, overrides: dict | None = None, network: torch.nn.Module | None = None):
    """A run directory or checkpoint file -> (Model, EpsModel (EMA weights), metadata).
    The checkpoint alone suffices: spec, statistics and basis state are inside it. A run
    trained with a custom network needs that module again as `network`."""
    from gudlang.data import DataSet
    from gudlang.hashing import model_hash
    from gudlang.networks import make_network
    from gudlang.pipeline import build_model
    from gudlang.stats import ComponentStats
    from gudlang.train import EpsModel

    path = Path(target)
    file = path / CHECKPOINT if path.is_dir() else path
    tensors, meta = ckpt.load_checkpoint(file)
    spec_text = meta["gudlang_spec"]
    stored_overrides = json.loads(meta.get("gudlang_overrides", "{}"))
    data_info = _data_info(meta, file)

    def recompute(text: str) -> str:
        return model_hash(check_text(text, f"{file}:spec", stored_overrides), data_info["fingerprint"])

    ckpt.verify_checkpoint(meta, recompute)
    sample_overrides = {**stored_overrides, **(overrides or {})}
    checked = check_text(spec_text, f"{file}:spec", sample_overrides)
    groups = ckpt.unpack_tensors(tensors)
    shape = tuple(data_info["shape"])
    empty = np.zeros((0,) + shape, dtype=np.float32)
    data = DataSet(name=data_info["name"], train=empty, test=empty, shape=shape, params={},
                   fingerprint=data_info["fingerprint"], value_range=tuple(data_info["value_range"]),
                   levels=data_info["levels"])
    stats = ComponentStats.from_tensors(groups["stats"])
    model = build_model(checked, data, stats=stats, basis_state=groups.get("basis"))
    custom = meta.get("gudlang_custom_network")
    if network is None and custom:
        raise GudError.one("E643", f"{file} was trained with a custom network ({custom})",
                           help="load it from Python: load_run(path, network=YourModule(...))")
    if network is None:
        options = model.spec.network.model_dump()
        kind = options.pop("kind")
        network = make_network(kind, shape, **options)
    _load_weights(network, groups, "ema", file)
    network.eval()
    return model, EpsModel(network, model.space), meta


def _data_info(meta: dict, file: Path) -> dict:
    """The data description a checkpoint carries (shape, value range, levels, fingerprint);
    E622 when it is not there or malformed."""
    def bad(why: str) -> GudError:
        return GudError.one("E622", f"checkpoint metadata `gudlang_data` of {file} {why}",
                            help="restore the checkpoint from a copy or retrain")
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


def _sample_grid(model, network, out: Path, device, n: int = 64) -> None:
    """A PNG grid of samples with the spec's sample settings (used during training); for a
    conditional spec, completions of the first test (else training) images beside them."""
    from gudlang.train import EpsModel
    eps_model = EpsModel(network, model.space).to(device)
    settings, seed = model.spec.sample, model.spec.sample.seed
    if model.given is None:
        save_grid(draw_samples(model, eps_model, n, settings, device, seed=seed), out, model.data.value_range)
        return
    images = model.data.test if len(model.data.test) else model.data.train
    result = complete_images(model, eps_model, images[: n // 2], settings, device, seed)
    save_pairs(result.known, result.x, out, model.data.value_range)


@dataclass
class Completion:
    """Completed images (N, C, H, W) float32, what their given components alone show, the
    mask (D,) bool, the method (trained | replacement) and the network calls."""
    x: np.ndarray
    known: np.ndarray
    mask: np.ndarray
    method: str
    nfe: int


def complete_images(model, eps_model, images: np.ndarray, settings, device, seed: int, *,
                    mask_text: str | None = None, sampler: str | None = None,
                    steps: int | None = None) -> Completion:
    """Generate the components of `images` (N, C, h, w) in data space that the mask does not
    give: the spec's own `given_i` (method "trained"), or the condition `mask_text` written as
    in a spec, e.g. "col(i) < 0.5" (method "replacement" where it differs from the spec's).
    Smaller images are upsampled for super-resolution (`gudlang.conditioning.upsample`)."""
    from gudlang.conditioning import complete, shown_known, upsample
    from gudlang.pipeline import given_from_text
    if model.given is None and mask_text is None:
        raise GudError.one("E680", "the model was trained without a given mask, so the known components "
                                   "must be named", help="pass --mask, e.g. --mask \"col(i) < 0.5\" "
                                                         "(zero-shot conditioning by replacement)")
    mask = model.given if mask_text is None else given_from_text(model, mask_text)
    same = model.given is not None and np.array_equal(mask, model.given)
    method = "trained" if same else "replacement"
    images = upsample(np.asarray(images, dtype=np.float64), model.data.shape, model.spec.basis.kind)
    weights = next(eps_model.parameters(), None)
    dtype = weights.dtype if weights is not None and weights.is_floating_point() else torch.float32
    name = sampler or settings.sampler
    x, nfe = complete(eps_model.to(device), model.schedule, model.space, mask, images, method=method,
                      sampler=name, steps=steps or settings.steps, device=device, dtype=dtype, seed=seed,
                      trained_mask=model.given, options=_sampler_options(name, settings))
    return Completion(x, shown_known(model.space, mask, images), mask, method, nfe)


def draw_samples(model, eps_model, n: int, settings, device, seed: int, sampler: str | None = None,
                 steps: int | None = None, with_nfe: bool = False):
    """n samples in data space, (n, C, H, W) float32 (and the number of network evaluations)."""
    from gudlang.samplers import sample
    weights = next(eps_model.parameters(), None)
    dtype = weights.dtype if weights is not None and weights.is_floating_point() else torch.float32
    schedule = model.schedule.to(device=device, dtype=dtype)
    space = model.space.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        result = sample(sampler or settings.sampler, eps_model, schedule, (n, model.dim), steps or settings.steps,
                        generator=gen, dtype=dtype,
                        **_sampler_options(sampler or settings.sampler, settings))
        x = space.decode(result.x0).float()
    return (x.cpu().numpy(), result.nfe) if with_nfe else x.cpu().numpy()


def _sampler_options(name: str, settings) -> dict:
    if name == "adaptive":
        return {"rtol": settings.rtol, "atol": settings.atol, "denoise": settings.denoise}
    return {"denoise": settings.denoise, "grid": settings.grid}


def save_grid(x: np.ndarray, out: Path, value_range, cols: int | None = None) -> None:
    """Save images (N, C, H, W) as one PNG grid (`cols` per row, default about square), values
    mapped from value_range to [0, 255]."""
    from PIL import Image
    lo, hi = value_range
    n, c, h, w = x.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 1
    grid = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    img = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img[k]
    arr = (grid * 255).round().astype(np.uint8)
    image = Image.fromarray(arr[0] if c == 1 else arr[:3].transpose(1, 2, 0))
    scale = max(1, 256 // max(image.size))
    if scale > 1:
        image = image.resize((image.size[0] * scale, image.size[1] * scale), Image.NEAREST)
    _make_folder(out.parent, "output folder")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    ckpt.atomic_write_bytes(out, buf.getvalue())


def save_pairs(known: np.ndarray, completed: np.ndarray, out: Path, value_range) -> None:
    """A PNG grid of (what is given, its completion) pairs, four pairs per row."""
    n = len(known)
    pairs = np.stack([known, completed], axis=1).reshape((2 * n,) + known.shape[1:])
    save_grid(pairs, out, value_range, cols=2 * min(4, n))


# --------------------------------------------------------------------------- sample
def oracle_eps_model(model):
    """The exact eps predictor for a spec whose data are Gaussian (`grf`)."""
    from gudlang.oracle import GaussianOracle
    d = model.data
    if d.cov is None:
        raise GudError.one("E642", f"network = oracle() needs Gaussian data with a known covariance, "
                                   f"and {d.name} has none", help="use data = grf(...), or train a network")
    return GaussianOracle(*model.space.moments(d.mean, d.cov))


def _eps_model_for(target: str, overrides: dict):
    """(model, eps_model, output folder, metadata) for a run, a checkpoint or an oracle spec."""
    from gudlang.pipeline import build_model
    path = Path(target)
    if path.suffix == ".gud":
        checked = check_text(read_source(target), target, overrides)
        if checked.spec.network.kind != "oracle":
            raise GudError.one("E640", f"{target} declares a network that must be trained first",
                               help=f"gud train {target}, then gud sample RUN")
        model = build_model(checked)
        return model, oracle_eps_model(model), Path("samples") / path.stem, {"gudlang_hash": model.model_hash}
    model, eps_model, meta = load_run(target, overrides)
    folder = (path if path.is_dir() else path.parent) / "samples"
    return model, eps_model, folder, meta


def sample(args, overrides: dict) -> int:
    """`gud sample RUN`: a PNG grid and an .npz of samples in data space; with --given FILE
    (or for a spec that declares `given_i`) completions of known images beside them."""
    model, eps_model, folder, meta = _eps_model_for(args.run, overrides)
    settings = model.spec.sample
    device = _device(model.spec.runtime)
    method = args.sampler or settings.sampler
    steps = args.steps or settings.steps
    n = args.n or settings.n
    seed = settings.seed if args.seed is None else args.seed
    eps_model = eps_model.to(device)
    start = time.time()
    conditional = args.given is not None or args.mask is not None or model.given is not None
    stem = Path(args.output) if args.output else folder / (
        f"{method}-{steps}steps-seed{seed}" + ("-given" if conditional else ""))
    record = {"sampler": method, "steps": steps, "seed": seed, "model_hash": meta["gudlang_hash"],
              "overrides": overrides}
    if not conditional:
        x, nfe = draw_samples(model, eps_model, n, settings, device, seed, method, steps, with_nfe=True)
        arrays = {"x": x}
    else:
        images, source = _known_images(model, args, n)
        done = complete_images(model, eps_model, images, settings, device, seed, mask_text=args.mask,
                               sampler=method, steps=steps)
        x, nfe = done.x, done.nfe
        arrays = {"x": x, "known": done.known, "mask": done.mask}
        record.update(conditioning=done.method, given=source, given_components=int(done.mask.sum()))
    record.update(n=len(x), nfe=nfe, seconds=time.time() - start)
    _make_folder(stem.parent, "output folder")
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{k: np.asarray(str(v)) for k, v in record.items()})
    ckpt.atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
    if conditional:
        save_pairs(arrays["known"], x, stem.with_suffix(".png"), model.data.value_range)
        what = (f"{len(x)} completions of {record['given']} ({record['conditioning']} conditioning on "
                f"{record['given_components']} of {model.dim} components), beside what is given")
    else:
        save_grid(x, stem.with_suffix(".png"), model.data.value_range)
        what = f"{len(x)} samples"
    print(f"wrote {stem.with_suffix('.png')} and {stem.with_suffix('.npz')}: {what}, {method}, "
          f"{steps} steps, {nfe} network evaluations, seed {seed}")
    return 0


def _known_images(model, args, n: int) -> tuple[np.ndarray, str]:
    """The images to complete: --given FILE (all of them, or the first n with -n), else the
    first n test images of the spec's data."""
    from gudlang.conditioning import load_images
    from gudlang.pipeline import load_spec_data
    if args.given is not None:
        images = load_images(args.given, model.data.shape, model.data.value_range)
        return (images[: args.n] if args.n else images), str(args.given)
    data = load_spec_data(model.checked)
    split = data.test if len(data.test) else data.train
    return np.asarray(split[:n], dtype=np.float64), f"the first {min(n, len(split))} test images"


def extend_images(args, overrides: dict) -> int:
    """`gud extend RUN --image FILE --columns N` (or --rows N): image extension by a sliding
    window, for a spec whose given components are a band of leading columns (rows)."""
    from gudlang.conditioning import extend, extension_band, load_images
    model, eps_model, folder, meta = _eps_model_for(args.run, overrides)
    axis, count = ("columns", args.columns) if args.columns else ("rows", args.rows)
    if model.given is None:
        raise GudError.one("E682", "image extension needs a model trained with a given band",
                           help="train a spec with e.g. given_i = col(i) < 0.5 (see specs/column_extension.gud)")
    k = extension_band(model.space, model.given, axis)
    settings = model.spec.sample
    device = _device(model.spec.runtime)
    seed = settings.seed if args.seed is None else args.seed
    images = load_images(args.image, model.data.shape, model.data.value_range)
    across = model.data.shape[1] if axis == "columns" else model.data.shape[2]
    if images.shape[2 if axis == "columns" else 3] != across:
        raise GudError.one("E681", f"the image must have the model's {across} "
                                   f"{'rows' if axis == 'columns' else 'columns'} to extend its {axis}, "
                                   f"got shape {images.shape[1:]}")
    size = model.data.shape[2] if axis == "columns" else model.data.shape[1]
    windows = iter(range(1 << 30))
    eps_model = eps_model.to(device)

    def fill(window):
        done = complete_images(model, eps_model, window, settings, device, seed + next(windows),
                               steps=args.steps, sampler=args.sampler)
        return done.x, done.nfe

    start = time.time()
    x, nfe = extend(images, count, axis, k, size, fill)
    stem = Path(args.output) if args.output else folder / f"extend-{count}{axis}-seed{seed}"
    _make_folder(stem.parent, "output folder")
    record = {"axis": axis, "count": count, "band": k, "window": size, "seed": seed, "nfe": nfe,
              "model_hash": meta["gudlang_hash"], "image": str(args.image), "seconds": time.time() - start}
    buf = io.BytesIO()
    np.savez(buf, x=x, given=images, **{k2: np.asarray(str(v)) for k2, v in record.items()})
    ckpt.atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
    save_grid(x, stem.with_suffix(".png"), model.data.value_range, cols=1 if axis == "columns" else len(x))
    print(f"wrote {stem.with_suffix('.png')} and {stem.with_suffix('.npz')}: {len(x)} image(s) extended by "
          f"{count} {axis} (window {size}, {k} given, {nfe} network evaluations), seed {seed}")
    return 0


# --------------------------------------------------------------------------- nll
def nll(args, overrides: dict) -> int:
    """`gud nll RUN`: bits per dimension on a data split by the probability-flow ODE."""
    from gudlang.likelihood import bits_per_dim, dequantise, log_likelihood, mean_and_stderr
    from gudlang.pipeline import load_spec_data

    model, eps_model, folder, meta = _eps_model_for(args.run, overrides)
    data = load_spec_data(model.checked)
    if data.fingerprint != model.data.fingerprint:
        raise GudError.one("E641", f"the data of {args.run} changed since training "
                                   f"(fingerprint {data.fingerprint[:12]} != {model.data.fingerprint[:12]})",
                           help="evaluate on the data the model was trained on")
    split = data.test if args.split == "test" else data.train
    if len(split) == 0:
        raise GudError.one("E641", f"the {args.split} split is empty", help="use --split train")
    x = torch.as_tensor(split[: args.n], dtype=torch.float64)
    oracle = model.spec.network.kind == "oracle"
    dtype = torch.float64 if oracle else torch.float32
    device = _device(model.spec.runtime)
    gen = torch.Generator().manual_seed(args.seed)
    lo, hi = data.value_range
    scale = float(hi - lo)
    if data.levels is not None:
        x = dequantise(x, data.levels, scale, generator=gen)
    space = model.space.to(device=device)
    schedule = model.schedule.to(device=device, dtype=dtype)
    eps_model = eps_model.to(device=device, dtype=dtype)
    logabsdet = space.logabsdet()
    bits, nfe, method = [], 0, ""
    start = time.time()
    for chunk in torch.split(x, 64):
        chunk = chunk.to(device=device, dtype=dtype)
        with torch.no_grad():
            chi = space.encode(chunk)
        res = log_likelihood(eps_model, schedule, chi, generator=gen, rtol=model.spec.sample.rtol,
                             atol=model.spec.sample.atol)
        bits.append(bits_per_dim(res.logp.double().cpu(), logabsdet, model.dim, scale, data.levels))
        nfe += res.nfe
        method = res.method
    values = torch.cat(bits)
    mean_bpd, stderr = mean_and_stderr(values)
    record = {"bits_per_dim": mean_bpd, "stderr": stderr, "n": len(values), "split": args.split,
              "divergence": method, "dequantised": data.levels is not None, "levels": data.levels,
              "nfe": nfe, "rtol": model.spec.sample.rtol, "atol": model.spec.sample.atol,
              "model_hash": meta["gudlang_hash"], "seconds": time.time() - start}
    _make_folder(folder, "output folder")
    ckpt.atomic_write_text(folder.parent / f"nll-{args.split}.json" if folder.name == "samples"
                           else folder / f"nll-{args.split}.json", json.dumps(record, indent=2) + "\n")
    what = "exact divergence" if method == "exact" else f"{method} divergence estimate"
    deq = f", uniform dequantisation of {data.levels} levels" if data.levels else ", continuous data"
    print(f"NLL {mean_bpd:.4f} +- {stderr:.4f} bits/dim on {len(values)} {args.split} images "
          f"({what}{deq}, {nfe} network evaluations)")
    return 0
