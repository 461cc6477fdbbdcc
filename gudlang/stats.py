"""Streaming statistics of training data: the per-pixel mean and each component's variance.

Input: training images (N, C, H, W), as a `gudlang.data.DataSet` (its `train` split), an
array, or an iterable of batches, and a `Basis`.
Output: `ComponentStats`: `mean` (C, H, W) float64 (per pixel), `var` (D,) float64 (the
variance of each component of U (x - mean), population normalisation: ddof = 0) and `n`.

`compute_stats` makes one pass over the batches in float64 and merges per-batch moments
with Chan's pairwise update, so every batch is centred on its own mean before its variances
are taken (no cancellation from a large mean). `fit_stats` first fits the basis if it needs
data (PCA: its covariance is also mean-removed), then computes the statistics, with a disk
cache keyed by the data fingerprint, the basis config (kind, shape, options) and, for a
basis fitted beforehand, a digest of its fitted tensors. A cache entry also stores the
fitted basis, so a hit restores a PCA basis without refitting.

Cache: `$GUDLANG_CACHE/stats/<key>.safetensors` (default root `~/.cache/gudlang`), written
atomically (temporary file, then `os.replace`). An unreadable, corrupt or mismatched entry
is recomputed and overwritten; an unwritable cache directory only costs the recomputation.

Errors (GudError):
    E520 no data: no images, or a one-shot iterator where a basis needs two passes
    E521 saved statistics that do not match (missing tensors, wrong shapes)
    E501 / E503 from the basis (wrongly shaped batches)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .bases import Basis, as_float64
from .builtins import shape_constants
from .data import DataSet
from .datasets.readers import cache_root
from .diagnostics import GudError

CODES: dict[str, str] = {
    "E520": "no data to compute statistics from",
    "E521": "saved statistics do not match",
    "E522": "the data do not vary (every component has zero variance)",
}

CACHE_SCHEME = "gudlang-stats-v1"
BATCH_SIZE = 1024


@dataclass(frozen=True, eq=False)
class ComponentStats:
    """Per-pixel mean (C, H, W) and per-component variance (D,) of the training data."""

    mean: np.ndarray
    var: np.ndarray
    n: int

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Float64 / int64 tensors for a checkpoint or the cache."""
        return {"mean": torch.as_tensor(self.mean, dtype=torch.float64),
                "var": torch.as_tensor(self.var, dtype=torch.float64),
                "n": torch.tensor([self.n], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "ComponentStats":
        """The inverse of `to_tensors` (E521 if tensors are missing or misshapen)."""
        missing = {"mean", "var", "n"} - set(tensors)
        if missing:
            raise GudError.one("E521", f"saved statistics lack {', '.join(sorted(missing))}")
        mean, var, n = tensors["mean"], tensors["var"], tensors["n"]
        if mean.dim() != 3 or var.dim() != 1 or var.numel() != mean.numel() or n.numel() != 1:
            raise GudError.one("E521", f"saved statistics have inconsistent shapes: mean "
                               f"{tuple(mean.shape)}, var {tuple(var.shape)}, n {tuple(n.shape)}")
        return cls(mean.detach().cpu().double().numpy().copy(),
                   var.detach().cpu().double().numpy().copy(), int(n.reshape(()).item()))


class _Moments:
    """Running count, mean and sum of squared deviations (diagonal), merged batch by batch."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        """x: (B, ...) float64."""
        b = len(x)
        b_mean = x.mean(dim=0)
        b_m2 = ((x - b_mean) ** 2).sum(dim=0)
        if self.n == 0:
            self.mean, self.m2 = b_mean, b_m2
        else:
            total = self.n + b
            delta = b_mean - self.mean
            self.mean = self.mean + delta * (b / total)
            self.m2 = self.m2 + b_m2 + delta ** 2 * (self.n * b / total)
        self.n += b


def _device(basis: Basis) -> torch.device:
    return next(iter(basis.buffers()), torch.empty(0)).device


def compute_stats(batches: Iterable, basis: Basis) -> ComponentStats:
    """One float64 pass: per-pixel mean of x and variance of each component of U x.

    U is linear, so var(U x) = var(U (x - mean)); the per-batch centring of `_Moments`
    removes the mean before any squares are taken. The basis must be fitted.
    """
    pixels, comps = _Moments(), _Moments()
    device = _device(basis)
    with torch.no_grad():
        for batch in batches:
            x = as_float64(batch).to(device)
            if len(x) == 0:
                continue
            chi = basis(x)  # checks the shape (E501)
            pixels.add(x.cpu())
            comps.add(chi.cpu())
    if pixels.n == 0:
        raise GudError.one("E520", "no images to compute statistics from")
    return ComponentStats(pixels.mean.numpy(), (comps.m2 / comps.n).numpy(), pixels.n)


class _ArrayBatches:
    """Consecutive batches of an array; iterable more than once (fit, then statistics)."""

    def __init__(self, array: np.ndarray, batch_size: int):
        self.array, self.batch_size = array, batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.array), self.batch_size):
            yield self.array[start:start + self.batch_size]


def array_fingerprint(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (for arrays that are not a DataSet)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(json.dumps([str(a.dtype), list(a.shape)]).encode())
    h.update(a.tobytes())
    return "array-sha256:" + h.hexdigest()


def cache_dir() -> Path:
    """`$GUDLANG_CACHE/stats`, by default `~/.cache/gudlang/stats`."""
    return cache_root() / "stats"


def cache_key(fingerprint: str, basis: Basis) -> str:
    """The cache entry name: sha256 over the scheme, the data identity and the basis config,
    plus the fitted tensors of a basis fitted before the call (e.g. from a checkpoint)."""
    ident = {"scheme": CACHE_SCHEME, "data": fingerprint, "basis": basis.config()}
    if basis.needs_fit and basis.fitted:
        h = hashlib.sha256()
        for name, t in sorted(basis.state_tensors().items()):
            h.update(name.encode() + b"\0" + t.detach().cpu().double().numpy().tobytes())
        ident["state"] = h.hexdigest()
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, key: str, basis: Basis) -> ComponentStats | None:
    """The cached stats (loading the fitted basis state into `basis`), or None if the entry
    is missing, unreadable, or does not match."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        stats = ComponentStats.from_tensors(tensors)
        state = {k[len("basis."):]: v for k, v in tensors.items() if k.startswith("basis.")}
        if stats.mean.shape != basis.shape or stats.var.shape != (basis.dim,):
            return None
        if basis.needs_fit and not basis.fitted:
            basis.load_state_tensors(state)
        return stats
    except (OSError, SafetensorError, GudError, ValueError, RuntimeError):
        return None


def _write_cache(path: Path, key: str, stats: ComponentStats, basis: Basis) -> None:
    tensors = stats.to_tensors()
    tensors.update({f"basis.{k}": v.detach().cpu().contiguous()
                    for k, v in basis.state_tensors().items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"key": key, "scheme": CACHE_SCHEME})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass  # a read-only or full cache only costs recomputing next time


def fit_stats(data, basis: Basis, *, batch_size: int = BATCH_SIZE, use_cache: bool = True,
              fingerprint: str | None = None) -> ComponentStats:
    """Fit `basis` if it needs data and is not fitted yet, then `compute_stats`, cached.

    `data`: a DataSet (its train split and fingerprint), an array (N, C, H, W), or an
    iterable of batches (re-iterable, e.g. a list, when the basis needs fitting; cached
    only if `fingerprint` is given).
    """
    if isinstance(data, DataSet):
        fingerprint = fingerprint or data.fingerprint
        data = data.train
    if isinstance(data, np.ndarray):
        fingerprint = fingerprint or array_fingerprint(data)
        data = _ArrayBatches(data, batch_size)
    elif basis.needs_fit and not basis.fitted and iter(data) is data:
        raise GudError.one("E520", f"the {basis.kind} basis needs two passes over the data "
                           "(fit, then statistics), but got a one-shot iterator",
                           help="pass an array or a list of batches")
    path = key = None
    if use_cache and fingerprint is not None:
        key = cache_key(fingerprint, basis)
        path = cache_dir() / f"{key}.safetensors"
        cached = _read_cache(path, key, basis)
        if cached is not None:
            return cached
    if basis.needs_fit and not basis.fitted:
        basis.fit(data)
    stats = compute_stats(data, basis)
    if path is not None:
        _write_cache(path, key, stats, basis)
    return stats


def component_features(basis: Basis, stats: ComponentStats) -> dict[str, np.ndarray]:
    """What the names of a formula stand for in this basis: the per-component features, the
    basis's (float64 (D,)) plus `var`, and the data's shape constants H, W, C, D (float64
    numbers, `gudlang.builtins.shape_constants`), which the schedule compiler substitutes."""
    feats = {k: v.numpy() for k, v in basis.features().items()}
    feats["var"] = np.asarray(stats.var, dtype=np.float64).copy()
    feats.update(shape_constants(basis.shape))
    return feats


__all__ = ["ComponentStats", "CODES", "compute_stats", "fit_stats", "component_features",
           "cache_dir", "cache_key", "array_fingerprint"]
