"""`train_run`: train a spec in a run directory, resume it, or let it grow.

Input: a spec file (or a run directory to resume), `-s` overrides, and optionally a custom
network. Output: a run directory (`gudlang.runs`) and a `TrainResult`.

Three parts:
    setup     check the spec, build the model, make or reopen the run directory (a new run,
              `resume=RUN`, or `name=NAME`, which resumes runs/NAME when it exists: requeued
              cluster jobs rerun the same command), restore weights, EMA and optimizer.
    loop      one `train.train_step` per step; after each, the callbacks: `Progress` (a bar on a
              terminal, one line per log interval otherwise), `MetricsLog` (metrics.csv, and
              TensorBoard with runtime { log = tensorboard }), `Checkpoints`, `SampleGrids`.
              SIGINT / SIGTERM stop at the end of the step with a checkpoint; under DDP every
              rank stops at the same step.
    teardown  the last checkpoint, the final sample grid, the lineage in run.json, DDP cleanup.

A run grows with `gud train --resume RUN -s train.steps=N`: the step count and the logging
settings are not part of the model hash, so the checkpoint still matches; run.json records
each segment. A killed run resumed repeats an uninterrupted one step for step (every step's
randomness comes from its own generator, and torch's global stream, which dropout draws from,
is seeded anew every step: see `gudlang.train`).

Errors: those of every stage; E630 for a non-finite loss (metrics and the last checkpoint kept,
the message says which step each holds), E640 for a batch that does not fit in memory (a run
directory this call made is removed when no step was trained), E640 / E641 for runs that cannot
be resumed.
"""

from __future__ import annotations

import gc
import numbers
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gudlang import checkpoint as ckpt
from gudlang import distributed, runs
from gudlang.check import SPEC_TEXT, check_text, is_spec_text, spec_source
from gudlang.diagnostics import WARNING, Diagnostic, GudError, render_text
from gudlang.spec import FixedParam


@dataclass
class TrainResult:
    """Where a training run went, the step it reached, and whether a signal stopped it."""
    run: Path
    step: int
    interrupted: bool = False
    signal: int = 0


@dataclass
class Session:
    """Everything the training loop and its callbacks share."""
    run: Path
    model: object
    spec_text: str
    overrides: dict
    network: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    objective: torch.nn.Module
    device: torch.device
    data: torch.Tensor
    start: int
    stop: int
    rank: int = 0
    world: int = 1
    autocast: torch.dtype | None = None
    custom: str | None = None
    command: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    began: float = field(default_factory=time.time)
    until: int | None = None  # --until as given
    saved: int | None = None  # the step of the last checkpoint on disk (None: none yet)
    made: tuple = ()  # folders this call created for a new run, the run directory first
    lock: object = None  # rank 0: the open lock file that keeps other `gud train`s off the run

    @property
    def settings(self):
        return self.model.spec.train

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def save(self, step: int) -> None:
        runs.save_run(self.run, self.model, self.spec_text, self.overrides, self.network, self.ema,
                      self.optimizer, step, self.custom)


# --------------------------------------------------------------------------- callbacks
class Progress:
    """A tqdm bar with the smoothed loss on a terminal; elsewhere one line per log interval."""

    def __init__(self, session: Session, quiet: bool):
        self.quiet = quiet or not session.writer
        self.every = session.settings.log_every
        self.avg = None
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=session.settings.steps, initial=session.start, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)

    def on_step(self, session: Session, step: int, loss: float, norm: float) -> None:
        self.avg = loss if self.avg is None else 0.95 * self.avg + 0.05 * loss
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.avg:.4f}", refresh=False)
        elif not self.quiet and step % self.every == 0:
            rate = (step - session.start) / max(time.time() - session.began, 1e-9)
            left = (session.stop - step) / max(rate, 1e-9)
            print(f"step {step}/{session.settings.steps} loss {self.avg:.4f} {rate:.1f} steps/s "
                  f"{left:.0f} s left", file=sys.stderr, flush=True)

    def on_end(self, session: Session) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog:
    """metrics.csv rows, appended every log interval and before every checkpoint; TensorBoard
    scalars too with runtime { log = tensorboard }."""

    def __init__(self, session: Session):
        self.path = session.run / runs.METRICS
        self.rows: list = []
        self.every = session.settings.log_every
        self.tensorboard = None
        if session.writer and session.model.spec.runtime.log == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise GudError.one("E640", "runtime { log = tensorboard } needs the tensorboard package",
                                   help='pip install "gudlang[tensorboard]", or log = csv') from None
            self.tensorboard = SummaryWriter(str(session.run / "tensorboard"), purge_step=session.start + 1)

    def on_step(self, session: Session, step: int, loss: float, norm: float) -> None:
        lr = session.optimizer.param_groups[0]["lr"]
        self.rows.append((step, loss, norm, lr, time.time() - session.began))
        if self.tensorboard is not None:
            for name, value in (("loss", loss), ("grad_norm", norm), ("lr", lr)):
                self.tensorboard.add_scalar(name, value, step)
        if step % self.every == 0 or step % session.settings.checkpoint_every == 0:
            self.flush(session)

    def flush(self, session: Session) -> None:
        if session.writer:
            runs.append_metrics(self.path, self.rows)
            if self.tensorboard is not None:
                self.tensorboard.flush()
        self.rows = []

    def on_end(self, session: Session) -> None:
        self.flush(session)
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


class Checkpoints:
    """A checkpoint every `checkpoint_every` steps and at the last step of train.steps."""

    def on_step(self, session: Session, step: int, loss: float, norm: float) -> None:
        every = session.settings.checkpoint_every
        if step % every == 0 or step == session.settings.steps:
            if session.writer:
                session.save(step)
            session.saved = step


class SampleGrids:
    """A grid of samples (completions, for a conditional spec) every `sample_every` steps."""

    def on_step(self, session: Session, step: int, loss: float, norm: float) -> None:
        every = session.settings.sample_every
        if session.writer and every and step % every == 0 and step < session.settings.steps:
            sample_grid(session, session.run / "samples" / f"step_{step:06d}.png")


def _killed_before_a_checkpoint(folder: Path, spec, overrides: dict) -> bool:
    """Whether `folder` (no checkpoint) is a run directory of `spec` with `overrides` that stopped
    before its first checkpoint: its spec.gud holds the same text and its run.json the same
    overrides and no finished training segment."""
    try:
        if spec is None or not (folder / "spec.gud").is_file():
            return False
        record = runs.read_record(folder)
        return (spec_source(folder / "spec.gud")[0] == spec_source(spec)[0] and not record.get("segments")
                and runs.stored_overrides(folder) == {k: str(v) for k, v in overrides.items()})
    except (GudError, OSError, ValueError, AttributeError):
        return False


def sample_grid(session: Session, out: Path) -> None:
    """A preview grid (`GudModel.grid`: at most PREVIEW_SAMPLES samples) of the EMA network:
    quick, so that a signal that arrives while it is drawn waits seconds, not the length of a
    large sample.n."""
    from gudlang.api import GudModel
    GudModel.from_parts(session.model, session.ema.module, device=session.device).grid(out)


# --------------------------------------------------------------------------- setup
def _open_run(spec, overrides: dict, out, resume, name) -> tuple[Path | None, tuple[str, str, str], dict]:
    """(existing run or None, the spec to check as `spec_source` gives it, overrides) for a new or
    resumed run."""
    if name is not None and (not name or Path(name).name != name or name in (".", "..")):
        raise GudError.one("E003", f"--name must be a folder name inside --out, got {name!r}",
                           help="choose a name without / or .., e.g. --name digits-a08")
    if resume is None and name is not None:
        candidate = Path(out) / name
        if (candidate / runs.CHECKPOINT).is_file():
            resume = candidate
        elif candidate.exists():
            probe = _lock_run(candidate) if candidate.is_dir() else None  # E640 if another gud train starts it
            if probe is not None:
                probe.close()
            if _killed_before_a_checkpoint(candidate, spec, overrides):
                # the same command, requeued after a kill (SIGKILL, OOM, a lost node) before the first
                # checkpoint: nothing to resume, so it starts over there (init_run rewrites its files)
                print(f"gud: {candidate} holds no checkpoint (a run of this spec stopped before its first): "
                      f"training it from step 0", file=sys.stderr)
                return None, spec_source(spec), overrides
            raise GudError.one("E640", f"{candidate} exists but holds no checkpoint to resume",
                               help="remove it, or choose another --name")
    if resume is not None:
        run = Path(resume)
        if not run.exists():
            raise GudError.one("E001", f"{run} not found", help="pass the folder that `gud train` created")
        if not (run / "spec.gud").is_file():
            raise GudError.one("E640", f"{run} is not a run directory (no spec.gud)",
                               help="pass the folder that `gud train` created")
        own = spec_source(run / "spec.gud")
        if spec is not None:  # a spec beside --resume (or --name) must be the run's own
            given = spec_source(spec)
            if given[0] != own[0]:
                raise GudError.one("E641", f"{given[1]} differs from the spec {run} was trained with",
                                   help=f"use another --name, or train on with gud train --resume {run}"
                                   if name is not None else f"drop {given[1]}: gud train --resume {run} trains on "
                                                            "with the run's own spec")
        return run, own, {**runs.stored_overrides(run), **overrides}
    if not spec:
        raise GudError.one("E003", "gud train needs a spec file or --resume RUN")
    return None, spec_source(spec), overrides


def setup(spec, overrides: dict, *, out, resume, until, network, name, command) -> Session:
    from gudlang.pipeline import build_model
    from gudlang.train import EMA, Objective, make_optimizer

    rank, world = distributed.rank_and_world()
    with distributed.every_rank("reading the spec and loading the data"):
        run, (spec_text, source, stem), overrides = _open_run(spec, overrides, out, resume, name)
        model = build_model(check_text(spec_text, source, overrides))
        device = runs.device_for(model.spec.runtime)
    if rank == 0:
        for w in model.warnings + _fixed_families(spec_text, source, overrides):
            print(render_text([w], spec_text), file=sys.stderr)
    settings = model.spec.train
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        _check_ranks_agree(model)
        _check_batch_split(settings, world)
    torch.manual_seed(settings.seed)
    custom = type(network).__qualname__ if network is not None else None
    start, state, made, lock, meta = 0, None, (), None, None
    try:
        with distributed.every_rank("building the network and opening the run directory"):
            if network is not None:
                probe_network(network, model)  # before a run directory exists for it
            network = network if network is not None else runs.make_spec_network(model)
            if model.spec.runtime.dtype == "float64":  # before a checkpoint's weights are loaded into it
                network.double()
            ema = EMA(network, settings.ema, settings.ema_warmup)
            if run is None:
                run = Path(out) / name if name is not None else runs.new_run_dir(Path(out), stem,
                                                                                   model.model_hash)
                made = _missing_folders(run)
                if rank == 0:
                    lock = _lock_run(run)
                    if name is not None and (run / runs.CHECKPOINT).exists():  # made by another call meanwhile
                        raise GudError.one("E640", f"{run} was created by another gud train while this one started",
                                           help=f"resume it with gud train --resume {run}, or use another --name")
                    runs.init_run(run, spec_text, model, overrides, world, command)
            else:
                if rank == 0:
                    lock = _lock_run(run)
                tensors, meta = ckpt.load_checkpoint(run / runs.CHECKPOINT)
                runs.check_resumable(meta, model, run)
                groups = ckpt.unpack_tensors(tensors)
                runs.load_weights(network, groups, "model", run / runs.CHECKPOINT)
                runs.load_weights(ema.module, groups, "ema", run / runs.CHECKPOINT)
                if rank == 0:
                    runs.settle_state(run, meta.get("gudlang_step", ""))
    except GudError as e:
        if rank == 0 and made and e.diagnostics[0].code == "E645":
            _discard(made)  # rank 0 made it, another rank could not start: no stub to block a --name requeue
        raise
    if meta is not None:  # every rank passed the block: rank 0 has settled the state files the others read
        with distributed.every_rank("reading the run's training state"):
            state = ckpt.load_training_state(run / runs.STATE)
            start = runs.resume_step(state, meta, settings.steps, run)
            if rank == 0:
                runs.truncate_metrics(run / runs.METRICS, start)
    network.to(device)
    ema.module.to(device)
    objective = Objective(model, network).to(device)
    if model.spec.runtime.dtype == "float64":
        objective.to(torch.float64)
        ema.module.to(torch.float64)
    optimizer = make_optimizer(network.parameters(), settings)
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise GudError.one("E621", f"the optimizer state in {run / runs.STATE} does not fit this model ({e})",
                               help="restore the run from a copy, or start a new run") from None
    if world > 1:
        objective.network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.bfloat16 if model.spec.runtime.dtype == "bfloat16" and device.type == "cuda" else None
    if model.spec.runtime.dtype == "bfloat16" and autocast is None and rank == 0:
        print(render_text([Diagnostic("W630", f"runtime.dtype = bfloat16 autocasts on CUDA only; "
                                      f"training on {device.type} in float32", severity=WARNING,
                                      path=source)]), file=sys.stderr)
    if model.spec.runtime.compile:
        objective.network = torch.compile(objective.network)
    stop = settings.steps if until is None else min(settings.steps, until)
    return Session(run, model, spec_text, overrides, network, ema, optimizer, objective, device,
                   torch.as_tensor(model.data.train), start, stop, rank, world, autocast, custom, command,
                   until=until, saved=None if state is None else start, made=made, lock=lock)


def _fixed_families(spec_text: str, path: str, overrides: dict) -> list[Diagnostic]:
    """W204 for each -s that fixes a param the spec draws (`param a ~ uniform(...)`): the run
    then trains the one model at that value, not the family (sampling a trained family with
    -s a=... picks a member instead, and says nothing)."""
    drawn = [k for k in overrides if "." not in k]
    if not drawn:
        return []
    try:
        params = check_text(spec_text, path).spec.params
    except GudError:
        return []
    return [Diagnostic("W204", f"-s {k}={overrides[k]} fixes param `{k}`, which the spec draws from "
                               f"uniform({params[k].lo:g}, {params[k].hi:g}): this trains one model at {k} = "
                               f"{overrides[k]}, not the family", severity=WARNING, path=path,
                       help=f"to train the family, drop -s {k}; to sample a member of a trained family, give "
                            f"-s {k}=... to gud sample")
            for k in drawn if k in params and not isinstance(params[k], FixedParam)]


def _lock_run(run: Path):
    """An exclusive lock on RUN for as long as this process trains it (the open file RUN/.lock
    holds it; the system drops it when the process ends, however it ends): E640 when another
    `gud train` holds it. Makes RUN when it does not exist yet."""
    try:
        import fcntl
    except ImportError:  # not on this system: no lock
        return None
    try:
        run.mkdir(parents=True, exist_ok=True)
        handle = open(run / ".lock", "a+")  # noqa: SIM115 (held open on purpose)
    except OSError as e:
        raise GudError.one("E620", f"cannot create the run directory {run}: {e.strerror or e}",
                           help="choose another output folder (--out)") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise GudError.one("E640", f"{run} is being trained by another gud train right now",
                           help="wait for it to finish, or train under another --name") from None
    return handle


def _check_batch_split(settings, world: int) -> None:
    """E210 unless train.batch splits evenly over the ranks and each rank's share over
    train.accumulate micro-batches (a remainder was dropped: fewer examples per step than asked)."""
    per_rank, parts = settings.batch // world, settings.accumulate
    if settings.batch % world == 0 and per_rank % parts == 0:
        return
    unit = world * parts
    near = max(unit, round(settings.batch / unit) * unit)  # the nearest batch that splits
    raise GudError.one("E210", f"train.batch = {settings.batch} does not split over {world} ranks"
                               + (f" and train.accumulate = {parts} micro-batches" if parts > 1 else "")
                               + f": each step would drop {settings.batch - per_rank // parts * parts * world} "
                                 "examples",
                       help=f"use a batch that {unit} divides, e.g. -s train.batch={near}")


def _check_ranks_agree(model) -> None:
    """E641 on every rank when the ranks built different models (another spec or other data on
    some node: each rank loads its own files)."""
    distributed.check_same(model.model_hash, "built another model",
                           help="give every node the same spec, data files and -s overrides")


def _missing_folders(folder: Path) -> tuple:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return tuple(missing)


def probe_network(network: torch.nn.Module, model) -> None:
    """Call a user's network once on 2 examples shaped like the data (no gradients, eval mode,
    no random numbers drawn): E613 if it fails or returns a tensor of another shape."""
    from gudlang.train import checked_output
    x = torch.zeros((2,) + tuple(model.data.shape))
    gamma = torch.zeros(2, model.dim)
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            pred = network(x, gamma)
    except GudError:
        raise
    except Exception as e:  # the user's code: say what it raised, where training would have
        raise GudError.one("E613", f"the network raised {type(e).__name__} on an input x of shape "
                                   f"{tuple(x.shape)} with gamma of shape {tuple(gamma.shape)}: {e}",
                           help="a network maps (x (B, C, H, W), gamma (B, D)) to eps shaped like x") from None
    finally:
        network.train(was_training)
    checked_output(pred, x)
    if not any(p.requires_grad for p in network.parameters()):
        raise GudError.one("E613", f"the network ({type(network).__qualname__}) has no parameters to train",
                           help="a network registers its weights as nn.Parameter (e.g. in nn.Linear / nn.Conv2d)")


# --------------------------------------------------------------------------- loop
class _StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) set a flag instead of stopping
    the process mid-step. Handlers can only be set from the main thread; elsewhere signals act
    as usual."""

    def __init__(self):
        self.signal = 0
        self.old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {sig: signal.signal(sig, self._on) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _on(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            if handler is not None:
                signal.signal(sig, handler)
        return False


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


def loop(session: Session, callbacks: list, stop: _StopSignals) -> tuple[int, bool]:
    """Train from session.start to session.stop; (step reached, whether a signal stopped it)."""
    from gudlang.train import make_batch, seed_network_randomness, train_step
    s = session
    settings = s.settings
    per_rank = max(1, settings.batch // s.world)
    params = list(s.network.parameters())
    step = s.start
    while step < s.stop:
        drawing = True
        try:
            batch = make_batch(s.data, s.model.spec, s.model.checked.drawn, step, per_rank, settings.seed, s.rank,
                               s.device, s.model.groups)
            drawing = False
            seed_network_randomness(settings.seed, step, s.rank)
            loss, norm = train_step(s.objective, s.optimizer, batch, settings, step, s.autocast, params)
        except GudError as e:
            if e.diagnostics[0].code == "E630":  # train_step names the step; say what is on disk
                d = e.diagnostics[0]
                raise GudError(replace(d, message=f"{d.message}; {_on_disk(s, step)}")) from None
            raise
        except (RuntimeError, MemoryError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(e):
                raise
            raise _batch_too_large(s, step, e, drawing) from None
        s.ema.update(s.network, step)
        s.losses.append(loss)
        step += 1
        for callback in callbacks:
            callback.on_step(s, step, loss, norm)
        if _any_rank(bool(stop.signal), s.world, s.device):  # every rank stops at the same step
            return step, True
    return step, False


def _on_disk(s: Session, step: int) -> str:
    """What a run stopped by an error after `step` steps holds: its metrics and last checkpoint."""
    rows = f"metrics.csv ends at step {step}" if step else "metrics.csv holds no step yet"
    if s.saved is None:
        first = min(s.settings.checkpoint_every, s.settings.steps)
        return f"{rows}, and no checkpoint was written yet (the first is due at step {first})"
    return f"{rows}, and the last checkpoint is of step {s.saved}"


class BatchTooLarge(GudError):
    """E640: a training step ran out of memory (see `_batch_too_large`); `stub`: whether the
    run directory is one this call made and trained no step in."""
    stub = False


def _out_of_memory(error: BaseException) -> bool:
    """Whether an error is an allocator's refusal (CPU, CUDA, MPS), not a bug elsewhere."""
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text


def _allocation(error: BaseException) -> str:
    """The size an allocator's error says it was asked for ('745.1 GiB'), or ''."""
    text = str(error)
    found = re.search(r"allocate (\d+) bytes", text)  # torch's CPU allocator
    if found:
        size = int(found.group(1))
        return f"{size / 2 ** 30:.1f} GiB" if size >= 2 ** 30 else f"{size / 2 ** 20:.1f} MiB"
    found = re.search(r"allocate ([\d.]+ ?[KMGTP]i?B)", text)  # CUDA, MPS
    return found.group(1) if found else ""


def _batch_too_large(s: Session, step: int, error: BaseException, drawing: bool) -> BatchTooLarge:
    """E640 for a step that ran out of memory: the batch, the size asked for, what is on disk."""
    settings = s.settings
    batch = f"train.batch = {settings.batch}" + (f" ({settings.batch // s.world} per rank)" if s.world > 1 else "")
    size = _allocation(error)
    asked = f": step {step + 1} could not allocate {size}" if size else f" (step {step + 1})"
    stub = _stub(s, step)
    kept = f"nothing was kept (the new run directory {s.run} is removed)" if stub else _on_disk(s, step)
    if drawing:  # the batch's data and noise alone: micro-batches would not shrink them
        advice = "lower train.batch (a step draws the data and noise of its whole batch at once)"
    else:
        advice = (f"lower train.batch, or keep it and split each step into micro-batches with "
                  f"-s train.accumulate=K (K divides train.batch; batch / K examples go through the network "
                  f"at a time, now {settings.accumulate})")
    refused = BatchTooLarge.one("E640", f"{batch} does not fit in memory on {s.device}{asked}; {kept}", help=advice)
    refused.stub = stub
    return refused


def _stub(s: Session, step: int) -> bool:
    """Whether the run directory is one this call made and trained no step in (nothing to keep)."""
    return bool(s.made) and step == s.start


def _discard(made: tuple) -> None:
    """Remove the run directory this call made (`made`: it, then the parents it made, innermost
    first), its lock file, and those parents when empty."""
    shutil.rmtree(made[0], ignore_errors=True)
    for folder in made[1:]:
        try:
            folder.rmdir()
        except OSError:
            break


def train_run(spec: str | Path | None = None, overrides: dict | None = None, *, out: str | Path = "runs",
              resume: str | Path | None = None, until: int | None = None, quiet: bool = False,
              network: torch.nn.Module | None = None, name: str | None = None,
              command: list[str] | None = None) -> TrainResult:
    """Train a spec (the path of a .gud file, or its text) or resume a run, and return where it
    went; the run folder records the spec's text either way. `network` replaces the spec's
    network by any module with the call `net(x (B, C, H, W), gamma (B, D)) -> eps (B, C, H, W)`;
    pass the same module to `gudlang.load` to sample from the checkpoint. `quiet` drops the progress
    lines (not the summary). `command` is what
    run.json records as the command that trained it (the CLI passes its own). The caller's
    random states (torch, NumPy, Python) are as they were when it returns."""
    overrides = _check_arguments(spec, overrides, network, out, until, name, quiet)
    if command is None:
        shown = [SPEC_TEXT if is_spec_text(v) else repr(str(v)) for v in (spec, resume) if v is not None]
        command = ["train_run(" + ", ".join(shown)
                   + "".join(f", {k}={v!r}" for k, v in dict(overrides or {}).items()) + ")"]
    callers = ckpt.capture_rng_state()  # training seeds the global generators: give them back after
    try:
        return _train(spec, dict(overrides or {}), out=out, resume=resume, until=until, quiet=quiet, network=network,
                      name=name, command=command)
    finally:
        ckpt.restore_rng_state(callers)


def _check_arguments(spec, overrides, network, out, until, name, quiet) -> dict[str, str]:
    """E003 for arguments of `train_run` of the wrong kind (a spec neither a path nor text, a list
    of "k=v" for the overrides dict, a network class or function for a module, an `until` below
    1); the overrides as the text `-s key=value` gives (numbers, true / false, lists as in a spec)."""
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        raise GudError.one("E003", f"spec must be the path of a .gud file or its text, got {type(spec).__name__}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise GudError.one("E003", f"overrides must be a dict such as {{\"train.steps\": 200}}, got "
                                   f"{type(overrides).__name__}")
    runs.check_network_argument(network)
    if not isinstance(out, (str, os.PathLike)):
        raise GudError.one("E003", f"out must be a folder name (a str or path), got {type(out).__name__}")
    if name is not None and not isinstance(name, str):
        raise GudError.one("E003", f"name must be a folder name (a str or path), got {type(name).__name__}")
    if not isinstance(quiet, (bool, np.bool_)):
        raise GudError.one("E003", f"quiet must be True or False, got {quiet!r}")
    if until is not None and (isinstance(until, bool) or not isinstance(until, numbers.Integral) or until < 1):
        raise GudError.one("E003", f"until must be a positive integer (the step to stop at), got {until!r}")
    return {key: _override_text(key, value) for key, value in (overrides or {}).items()}


def _override_text(key, value) -> str:
    """One override as `-s key=value` would give it; E003 for a key or value of the wrong kind."""
    if not isinstance(key, str) or not key:
        raise GudError.one("E003", f"override names must be non-empty strings, got {key!r}",
                           help='for example {"train.steps": 200, "a": 0.8}')
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, numbers.Real)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, numbers.Real)) and not isinstance(v, bool)
                                                for v in value):
        return "[" + ", ".join(str(v) for v in value) + "]"
    raise GudError.one("E003", f"override `{key}` must be a number, true / false, a string or a list of "
                               f"numbers, got {type(value).__name__}", help='for example {"train.betas": [0.9, 0.99]}')


def _train(spec, overrides: dict, *, out, resume, until, quiet, network, name, command) -> TrainResult:
    """`train_run` once its arguments are checked."""
    s = setup(spec, overrides, out=out, resume=resume, until=until, network=network, name=name, command=command)
    try:
        metrics = MetricsLog(s)
        progress = Progress(s, quiet)
    except GudError:  # e.g. log = tensorboard without the package
        if s.writer and s.made:
            _discard(s.made)  # a new run that could not start: no stub left to block a --name requeue
        raise
    callbacks = [progress, metrics, Checkpoints(), SampleGrids()]
    step, interrupted, failed = s.start, False, True
    try:
        with _StopSignals() as stop:
            try:
                step, interrupted = loop(s, callbacks, stop)
            except BatchTooLarge as e:
                metrics.on_end(s)
                if s.writer and e.stub:
                    _discard(s.made)  # a new run that did not train a step: no stub left behind
                raise
            finally:
                metrics.flush(s)  # a NaN stop keeps the rows logged so far
            progress.on_end(s)
            metrics.on_end(s)
            failed = False
            result = _finish(s, step, interrupted, stop.signal)
            if stop.signal and not result.interrupted:  # it came while the end was written: say so in the exit code
                result = TrainResult(result.run, result.step, True, stop.signal)
            return result
    finally:
        if s.world > 1 and torch.distributed.is_initialized():
            # Drop the DDP wrapper while the process group is still registered: freed later, its
            # reducer held the group's last reference, and destroying the group there (holding
            # the GIL) could deadlock with a gloo thread that needs it.
            s.objective.network = s.network
            gc.collect()
            distributed.leave(finished=not failed)  # after a barrier: rank 0 may still be writing


def _finish(s: Session, step: int, interrupted: bool, signum: int) -> TrainResult:
    """Teardown: the last checkpoint, the lineage, the final grid and the summary line."""
    settings = s.settings
    agree = _ranks_agree(s.network) if s.world > 1 and not interrupted else None
    if not s.writer:
        return TrainResult(s.run, step, interrupted, signum if interrupted else 0)
    if interrupted or step == s.start or step % settings.checkpoint_every:
        s.save(step)  # leave a checkpoint of the last step
    if step > s.start:
        runs.record_segment(s.run, s.start, step, settings.steps, s.overrides, s.command, s.world)
    if interrupted:
        name = signal.Signals(signum).name if signum else "a signal"
        print(f"\ninterrupted by {name} at step {step}: checkpoint saved; continue with "
              f"`gud train --resume {s.run}`", file=sys.stderr)
        return TrainResult(s.run, step, True, signum or int(signal.SIGINT))
    elapsed = time.time() - s.began
    if not s.losses:
        print(_nothing_to_train(s, step))
        return TrainResult(s.run, step)
    if step < settings.steps:
        print(f"stopped {s.run} at step {step} of {settings.steps} (--until) in {elapsed:.0f} s; "
              f"continue with `gud train --resume {s.run}`")
        return TrainResult(s.run, step)
    sample_grid(s, s.run / "samples" / "final.png")
    print(f"trained {s.run}: steps {s.start} -> {step} in {elapsed:.0f} s, final loss "
          f"{np.mean(s.losses[-50:]):.4f}")
    if agree is not None:
        print(f"DDP: {s.world} ranks, weights identical on every rank: {agree}")
    print(f"model hash {s.model.model_hash}")
    return TrainResult(s.run, step)


def _nothing_to_train(s: Session, step: int) -> str:
    """Why a call trained no step (an --until not beyond the run's step, or train.steps reached)
    and what to pass instead."""
    steps, until = s.settings.steps, s.until
    if until is not None and until <= step:
        if step < steps:
            return (f"nothing to train: --until {until} is not beyond {s.run}'s step {step}; pass an --until "
                    f"from {step + 1} to {steps} (train.steps), or leave it out to train to step {steps}")
        return (f"nothing to train: --until {until} is not beyond {s.run}'s step {step}, its last of "
                f"train.steps = {steps}; let it grow with gud train --resume {s.run} -s train.steps=N "
                f"and an --until above {step}, or none")
    return (f"nothing to train: {s.run} is at step {step} of {steps}; let it grow with "
            f"gud train --resume {s.run} -s train.steps=N")
