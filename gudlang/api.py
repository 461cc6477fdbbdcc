"""The Python API at the level users think in: `gudlang.load(...)` and what a model does.

Input: a run directory, a checkpoint file, an exported model folder, or a spec with
`network = oracle()` (exact, for Gaussian data). Output: a `GudModel`:

    model.sample(n, sampler=, steps=, grid=, seed=, batch_size=, params=) -> (N, C, H, W) data space
    model.complete(images, mask=)       -> Completion (inpainting, outpainting, super-resolution)
    model.extend(images, columns=N)     -> images extended by a sliding window
    model.nll(x=None, split="test")     -> NllResult (bits/dim; conditional for a given mask)
    model.plot_schedule()               -> matplotlib Figure
    model.export(folder)                -> a folder that `gudlang.load` and `gud sample` read
    model.spec, model.spec_text, model.hash, model.shape, model.conditional

Every command of the `gud` CLI that uses a trained model is a thin layer over this.

Reproducibility: sample k starts from noise drawn from its own block of generators (blocks of
NOISE_BLOCK samples seeded by (seed, block)), so deterministic samplers give the same sample k
for any batch size and any split over torchrun ranks; stochastic ones (em) also depend on the
batch boundaries.

Errors: those of loading (`gudlang.runs`), sampling (E65x), conditioning (E68x) and the
likelihood (E66x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gudlang.diagnostics import GudError

NOISE_BLOCK = 256


def load(target: str | Path, *, network: torch.nn.Module | None = None, weights: str = "ema",
         params: dict | None = None, device: str | torch.device | None = None,
         path: str | None = None) -> "GudModel":
    """A trained model from a run directory, checkpoint file or export, or the exact model of a
    spec with `network = oracle()`. `params` sets drawn params ({"a": 0.8}), `weights` picks
    the EMA (default) or raw weights, `network` is the module a custom-network run needs,
    `path` a sampling path other than the spec's ("edm_path(t, rho = 5)"; see `with_path`)."""
    loaded = _load(target, network, weights, params, device)
    return loaded if path is None else loaded.with_path(path)


def _load(target, network, weights, params, device) -> "GudModel":
    from gudlang import runs
    overrides = {k: str(v) for k, v in (params or {}).items()}
    path = Path(target)
    if path.suffix == ".gud":
        from gudlang.check import check_text, read_source
        from gudlang.pipeline import build_model
        checked = check_text(read_source(str(path)), str(path), overrides)
        if checked.spec.network.kind != "oracle":
            raise GudError.one("E640", f"{path} declares a network that must be trained first",
                               help=f"gud train {path}, then load the run")
        model = build_model(checked)
        return GudModel(model, oracle_eps_model(model), {"gudlang_hash": model.model_hash}, device,
                        source=path, overrides=overrides)
    model, eps_model, meta = runs.load_run(path, overrides, network=network, weights=weights)
    return GudModel(model, eps_model, meta, device, source=path, overrides=overrides, network=network,
                    weights=weights)


def oracle_eps_model(model):
    """The exact eps predictor for a spec whose data are Gaussian (`grf`)."""
    from gudlang.oracle import GaussianOracle
    d = model.data
    if d.cov is None:
        raise GudError.one("E642", f"network = oracle() needs Gaussian data with a known covariance, "
                                   f"and {d.name} has none", help="use data = grf(...), or train a network")
    return GaussianOracle(*model.space.moments(d.mean, d.cov))


@dataclass
class Completion:
    """Completed images (N, C, H, W) float32, what their given components alone show, the
    mask (D,) bool, the method (trained | replacement) and the network calls."""
    x: np.ndarray
    known: np.ndarray
    mask: np.ndarray
    method: str
    nfe: int


@dataclass
class NllResult:
    """Bits/dim per image (N,), their mean and standard error, how the divergence was
    computed, the network calls along the trajectories, the divergence evaluations per image
    (each D vector-Jacobian products, or the Hutchinson probes), and the number of dimensions
    each image's bits are over (D, or the generated components of a conditional model)."""
    bits: np.ndarray
    mean: float
    stderr: float
    divergence: str
    nfe: int
    divergence_evaluations: float
    dims: int
    conditional: bool


def sampler_options(sampler: str, settings, grid: str | None = None) -> dict:
    """The options of `samplers.sample` a spec's sample block sets for `sampler`."""
    if sampler == "adaptive":
        return {"rtol": settings.rtol, "atol": settings.atol, "denoise": settings.denoise}
    return {"denoise": settings.denoise, "grid": grid or settings.grid}


def start_noise(seed: int, lo: int, hi: int, dim: int, dtype, device) -> torch.Tensor:
    """chi(1) ~ N(0, I) of samples lo .. hi - 1: block k of NOISE_BLOCK samples from a
    generator seeded by (seed, k), so sample j is the same however the samples are batched."""
    rows = []
    for block in range(lo // NOISE_BLOCK, (hi - 1) // NOISE_BLOCK + 1):
        gen = torch.Generator().manual_seed((seed * 1_000_003 + block * 7919) % (2 ** 63 - 1))
        noise = torch.randn(NOISE_BLOCK, dim, generator=gen, dtype=torch.float64)
        first = block * NOISE_BLOCK
        rows.append(noise[max(lo, first) - first: min(hi, first + NOISE_BLOCK) - first])
    return torch.cat(rows).to(dtype=dtype, device=device)


class GudModel:
    """A trained (or exact) model: see the module docstring."""

    def __init__(self, model, eps_model, meta: dict, device=None, *, source=None, overrides=None,
                 network=None, weights: str = "ema", path: str | None = None):
        from gudlang.runs import device_for
        self.model, self.meta = model, meta
        self.device = torch.device(device) if device is not None else device_for(model.spec.runtime)
        self.eps_model = eps_model.to(self.device)
        self._source, self._overrides, self._network, self._weights = source, overrides or {}, network, weights
        self._path = path  # the sampling path given with `with_path`, if any

    @classmethod
    def from_parts(cls, model, network: torch.nn.Module, device=None) -> "GudModel":
        """A model being trained: the pipeline Model and a network (its EMA copy, say)."""
        from gudlang.train import EpsModel
        return cls(model, EpsModel(network, model.space), {"gudlang_hash": model.model_hash}, device)

    # ------------------------------------------------------------------ what it is
    @property
    def spec(self):
        return self.model.spec

    @property
    def spec_text(self) -> str:
        return self.meta.get("gudlang_spec") or self.model.checked.source.text

    @property
    def hash(self) -> str:
        return self.meta["gudlang_hash"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.model.data.shape)

    @property
    def conditional(self) -> bool:
        """Whether the spec declares given components (`given_i = ...`)."""
        return self.model.given is not None

    @property
    def dtype(self) -> torch.dtype:
        weights = next(self.eps_model.parameters(), None)
        return weights.dtype if weights is not None and weights.is_floating_point() else torch.float32

    def with_params(self, params: dict) -> "GudModel":
        """The same model at other values of its drawn params (a member of a trained family)."""
        if self._source is None:
            raise GudError.one("E640", "params can only be changed on a model loaded with gudlang.load")
        return load(self._source, network=self._network, weights=self._weights,
                    params={**self._overrides, **params}, device=self.device, path=self._path)

    def with_path(self, text: str) -> "GudModel":
        """The same trained network sampled along another path, written as a spec's
        `path_i(t) = ...` right-hand side: it must stay inside the training support (E303).
        Samples, completions and the likelihood then follow it."""
        from gudlang.pipeline import with_path_text
        return GudModel(with_path_text(self.model, text), self.eps_model, self.meta, self.device, source=self._source,
                        overrides=self._overrides, network=self._network, weights=self._weights, path=text)

    def _options(self, sampler: str, grid: str | None) -> dict:
        from gudlang.samplers import OPTIONS
        options = sampler_options(sampler, self.spec.sample, grid)
        if "variance" in OPTIONS.get(sampler, ()):
            options["variance"] = self.model.features["wvar"]  # the whitened data's, for unipc's gain
        return options

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int | None = None, *, sampler: str | None = None, steps: int | None = None,
               grid: str | None = None, seed: int | None = None, batch_size: int | None = None,
               params: dict | None = None, given=None, mask: str | None = None, start: int = 0,
               progress: Callable[[int, int], None] | None = None, with_nfe: bool = False):
        """n samples in data space, (n, C, H, W) float32 on the CPU (and the network calls when
        `with_nfe`). Samples start .. start + n - 1 of the seed's sequence (torchrun shards).
        With `given` images (N, C, h, w) in data space: their completions (see `complete`)."""
        from gudlang.samplers import sample, schedule_kinks
        if params:
            return self.with_params(params).sample(n, sampler=sampler, steps=steps, grid=grid, seed=seed,
                                                   batch_size=batch_size, given=given, mask=mask, start=start,
                                                   progress=progress, with_nfe=with_nfe)
        if given is not None:
            images = np.asarray(given)[:n] if n else np.asarray(given)
            done = self.complete(images, mask=mask, sampler=sampler, steps=steps, grid=grid, seed=seed)
            x = torch.as_tensor(done.x)
            return (x, done.nfe) if with_nfe else x
        if self.conditional:
            raise GudError.one("E680", "this model was trained to complete given components",
                               help="give it images: model.complete(images), or gud sample RUN --given FILE")
        if not (isinstance(n, int) and n >= 1):
            raise GudError.one("E651", f"the number of samples must be a positive integer, got {n!r}")
        settings = self.spec.sample
        method, steps = sampler or settings.sampler, steps or settings.steps
        seed = settings.seed if seed is None else seed
        batch_size = batch_size or n
        schedule = self.model.sampling_path.to(self.device)
        space = self.model.space.to(self.device)
        options = self._options(method, grid)
        if method == "adaptive":  # its restart times, found once for every batch
            options["kinks"] = schedule_kinks(schedule)
        out, nfe = [], 0
        for lo in range(start, start + n, batch_size):
            hi = min(lo + batch_size, start + n)
            x1 = start_noise(seed, lo, hi, self.model.dim, self.dtype, self.device)
            gen = torch.Generator(device=self.device).manual_seed(seed * 7919 + lo)
            with torch.no_grad():
                result = sample(method, self.eps_model, schedule, x1, steps, generator=gen, **options)
                out.append(space.decode(result.x0).float().cpu())
            nfe = result.nfe
            if progress is not None:
                progress(hi - start, n)
        x = torch.cat(out)
        return (x, nfe) if with_nfe else x

    def complete(self, images, *, mask: str | None = None, sampler: str | None = None, steps: int | None = None,
                 grid: str | None = None, seed: int | None = None) -> Completion:
        """Generate the components of `images` (N, C, h, w) in data space that the mask does not
        give: the spec's own `given_i` (method "trained"), or the condition `mask` written as in
        a spec, e.g. "col(i) < 0.5" (method "replacement" where it differs from the spec's).
        Smaller images are upsampled for super-resolution (`gudlang.conditioning.upsample`)."""
        from gudlang.conditioning import complete, shown_known, upsample
        from gudlang.pipeline import given_from_text
        model = self.model
        if model.given is None and mask is None:
            raise GudError.one("E680", "the model was trained without a given mask, so the known components "
                                       "must be named", help='pass a mask, e.g. --mask "col(i) < 0.5" '
                                                             "(zero-shot conditioning by replacement)")
        chosen = model.given if mask is None else given_from_text(model, mask)
        same = model.given is not None and np.array_equal(chosen, model.given)
        images = upsample(np.asarray(images, dtype=np.float64), model.data.shape, model.spec.basis.kind)
        settings = self.spec.sample
        name = sampler or settings.sampler
        x, nfe = complete(self.eps_model, model.sampling_path, model.space, chosen, images,
                          method="trained" if same else "replacement", sampler=name, steps=steps or settings.steps,
                          device=self.device, dtype=self.dtype, seed=settings.seed if seed is None else seed,
                          trained_mask=model.given, options=self._options(name, grid))
        return Completion(x, shown_known(model.space, chosen, images), chosen,
                          "trained" if same else "replacement", nfe)

    def extend(self, images, *, columns: int | None = None, rows: int | None = None, sampler: str | None = None,
               steps: int | None = None, seed: int | None = None) -> tuple[np.ndarray, int, int]:
        """Extend images (N, C, H, W) by `columns` on the right or `rows` at the bottom with a
        sliding window; (extended images, network calls, the given band k)."""
        from gudlang.conditioning import extend, extension_band
        if (columns is None) == (rows is None):
            raise GudError.one("E003", "extend by columns or by rows, not both and not neither")
        axis, count = ("columns", columns) if columns is not None else ("rows", rows)
        model = self.model
        if model.given is None:
            raise GudError.one("E682", "image extension needs a model trained with a given band",
                               help="train a spec with e.g. given_i = col(i) < 0.5 (see specs/column_extension.gud)")
        k = extension_band(model.space, model.given, axis)
        images = np.asarray(images, dtype=np.float64)
        c, h, w = model.data.shape
        across, size = (h, w) if axis == "columns" else (w, h)
        if images.ndim != 4 or images.shape[1] != c or images.shape[2 if axis == "columns" else 3] != across:
            raise GudError.one("E681", f"to extend {axis} the images need the model's {c} channel(s) and "
                                       f"{across} {'rows' if axis == 'columns' else 'columns'}, got shape "
                                       f"{images.shape[1:]}")
        seed = self.spec.sample.seed if seed is None else seed
        windows = iter(range(1 << 30))

        def fill(window):
            done = self.complete(window, sampler=sampler, steps=steps, seed=seed + next(windows))
            return done.x, done.nfe

        x, nfe = extend(images, count, axis, k, size, fill)
        return x, nfe, k

    def grid(self, out: Path, n: int | None = None) -> None:
        """A PNG grid of n (default the spec's sample.n) samples with the spec's settings
        (completions of the first test images beside their given parts, for a conditional
        spec): what training writes."""
        from gudlang.images import save_grid, save_pairs
        n = n or self.spec.sample.n
        value_range = self.model.data.value_range
        if not self.conditional:
            save_grid(self.sample(n).numpy(), out, value_range)
            return
        data = self.model.data
        images = data.test if len(data.test) else data.train
        done = self.complete(images[: max(1, n // 2)])
        save_pairs(done.known, done.x, out, value_range)

    # ------------------------------------------------------------------ likelihood
    def nll(self, x=None, *, split: str = "test", n: int | None = None, divergence: str | None = None,
            hutchinson_samples: int = 1, batch_size: int = 64, seed: int = 0,
            progress: Callable[[int, int], None] | None = None) -> NllResult:
        """Bits/dim by the probability-flow ODE of images x (N, C, H, W) in data space, or of the
        spec's data split. For a conditional model: the conditional bits/dim of the generated
        components given the others (`likelihood.dataset_bits_per_dim` with a mask)."""
        from gudlang.conditioning import GivenSchedule
        from gudlang.likelihood import dataset_bits_per_dim
        from gudlang.pipeline import load_spec_data
        model = self.model
        if x is None:
            data = load_spec_data(model.checked)
            if data.fingerprint != model.data.fingerprint:
                raise GudError.one("E641", f"the data changed since training (fingerprint {data.fingerprint[:12]} "
                                           f"!= {model.data.fingerprint[:12]})",
                                   help="evaluate on the data the model was trained on")
            x = data.test if split == "test" else data.train
            if len(x) == 0:
                raise GudError.one("E641", f"the {split} split is empty", help="use the train split")
        x = np.asarray(x)[:n] if n else np.asarray(x)
        oracle = model.spec.network.kind == "oracle"
        dtype = torch.float64 if oracle else torch.float32
        space = model.space.to(self.device)
        schedule = model.sampling_path.to(self.device)
        given = None
        if model.given is not None:
            schedule = GivenSchedule(schedule, model.given).to(self.device)
            given = torch.as_tensor(model.given)
        lo, hi = model.data.value_range
        eps_model = self.eps_model.to(dtype=dtype)

        def encode(chunk):
            with torch.no_grad():
                return space.encode(chunk.to(device=self.device, dtype=torch.float64)).to(dtype)

        gen = torch.Generator().manual_seed(seed)
        settings = self.spec.sample
        logabsdet = space.logabsdet(None if given is None else ~given)
        result = dataset_bits_per_dim(eps_model, schedule, encode, x, levels=model.data.levels,
                                      data_scale=float(hi - lo), logabsdet=logabsdet,
                                      divergence=divergence, hutchinson_samples=hutchinson_samples,
                                      batch_size=batch_size, rtol=settings.rtol, atol=settings.atol,
                                      generator=gen, progress=progress, given=given)
        points = float(torch.as_tensor(result.divergence_points, dtype=torch.float64).mean())
        return NllResult(np.asarray(result.bits), result.mean, result.stderr, result.method, result.nfe, points,
                         result.dims, given is not None)

    # ------------------------------------------------------------------ pictures and files
    def plot_schedule(self):
        """gamma, sigma, beta and true SNR of every component against t (a matplotlib Figure)."""
        from gudlang.plot import schedule_figure
        return schedule_figure(self.model)

    def export(self, folder: str | Path, *, nll: dict | None = None, command: str | None = None) -> Path:
        """Write a self-contained model folder (`gudlang.export`)."""
        from gudlang.export import export_model
        return export_model(self, Path(folder), nll=nll, command=command)
