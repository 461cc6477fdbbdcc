"""torchrun: this process's rank, the process group, and one rule — an error on one rank stops
every rank with a message, never a hang.

Under torchrun every rank reads its own files (the spec, the data, the run). A node whose data
file is missing would otherwise exit while the other nodes waited in their first collective
until its timeout (30 minutes for gloo). The setup of each command therefore runs inside
`every_rank(...)`: when it fails on some ranks, those raise their own error and every other
rank raises E645 naming them and what they said.

The group is one default group: gloo for tensors on the CPU (and for Python objects), nccl for
CUDA tensors when CUDA is available ("cpu:gloo,cuda:nccl"), so that it can start before the spec
says which device the run uses.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch

from gudlang.diagnostics import GudError


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def join() -> None:
    """Start the default process group of this torchrun world (once; nothing under one process)."""
    _, world = rank_and_world()
    if world > 1 and not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        except (ValueError, RuntimeError) as e:  # WORLD_SIZE set without torchrun's other variables, ...
            raise GudError.one("E645", f"cannot start the process group of {world} ranks: {e}",
                               help="start the command with torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR "
                                    "and MASTER_PORT (or unset WORLD_SIZE to run one process)") from None


# Set when every rank has heard of a failure (`every_rank`): they all stop at the same point.
_stopping_together = False


def leave(finished: bool) -> None:
    """End the default process group, if one was started. `finished`: this rank's command ended
    without an error. Ranks that all got here (finished, or stopped by `every_rank`) wait for each
    other first: a rank that tore gloo down while another still used it aborted at exit."""
    global _stopping_together
    if torch.distributed.is_initialized():
        if finished or _stopping_together:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _stopping_together = False


def _summary(error: BaseException) -> str:
    if isinstance(error, GudError):
        return "; ".join(f"{d.code} {d.message}" for d in error.diagnostics)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


@contextmanager
def every_rank(what: str):
    """Run the block on every rank, then compare: when it raised on some rank, that rank raises
    its own error and every other rank E645 with the failing ranks' messages. Under one process
    it is the block alone. `what` says what the block does ("loading the data and the spec")."""
    _, world = rank_and_world()
    if world == 1:
        yield
        return
    join()
    failure: Exception | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 (re-raised below, after the other ranks heard of it)
        failure = e
    said: list = [None] * world
    torch.distributed.all_gather_object(said, None if failure is None else _summary(failure))
    failed = [(r, text) for r, text in enumerate(said) if text is not None]
    global _stopping_together
    _stopping_together = bool(failed)
    if failure is not None:
        raise failure
    if failed:
        ranks = ", ".join(str(r) for r, _ in failed)
        raise GudError.one("E645", f"rank{'s' if len(failed) > 1 else ''} {ranks} stopped while {what}: "
                                   + " | ".join(f"rank {r}: {text}" for r, text in failed),
                           help="fix it on the node that ran that rank (each node reads its own spec, data and "
                                "run files), then start every node again")


def lost_rank(error: BaseException) -> GudError | None:
    """E645 for an error raised while this rank waited in a collective for a rank that had
    stopped (killed, out of memory, its node lost: gloo says "Connection closed by peer");
    None for any other error."""
    text = str(error)
    if rank_and_world()[1] == 1:  # (the group may be gone: the trainer ends it on its way out)
        return None
    if not (isinstance(error, torch.distributed.DistError)
            or any(words in text for words in ("Connection closed by peer", "Connection reset by peer"))):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return GudError.one("E645", f"another rank stopped while this one waited for it ({first})",
                        help="its output says why; start every node again (gud train --resume RUN trains on "
                             "from the last checkpoint)")


def check_same(value: str, what: str, help: str) -> None:
    """E641 on every rank when `value` (a hash) differs between ranks: `what` names it."""
    _, world = rank_and_world()
    if world == 1:
        return
    values: list = [None] * world
    torch.distributed.all_gather_object(values, value)
    other = next((r for r, v in enumerate(values) if v != values[0]), None)
    if other is not None:
        raise GudError.one("E641", f"rank {other} {what} than rank 0 ({values[other][:24]}... != "
                                   f"{values[0][:24]}...)", help=help)


def shard(n: int, what: str = "samples") -> tuple[int, int, int, int]:
    """(first index, count, rank, world) of this rank's share of n items; E003 when some rank
    would get none (every rank says so and stops)."""
    rank, world = rank_and_world()
    if n < world:
        raise GudError.one("E003", f"{n} {what} over {world} ranks leaves a rank with none",
                           help=f"ask for at least {world} (-n), or run with --nproc_per_node={max(1, n)}")
    lo, hi = rank * n // world, (rank + 1) * n // world
    return lo, hi - lo, rank, world


def shard_suffix() -> str:
    """What names this rank's output files under torchrun (".shard1of4"); "" in one process."""
    rank, world = rank_and_world()
    return f".shard{rank}of{world}" if world > 1 else ""


def gather(values) -> np.ndarray:
    """Every rank's rows (an array (k, ...) per rank, k may differ), concatenated in rank order,
    on every rank, in the values' own dtype."""
    _, world = rank_and_world()
    if world == 1:
        return np.asarray(values)
    join()
    local = torch.as_tensor(np.ascontiguousarray(values))
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([len(local)]))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest,) + tuple(local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return np.concatenate([p[: int(s.item())].numpy() for p, s in zip(parts, sizes)])
