"""The Python API at the level users think in: `gudlang.load(...)` and what a model does.

Input: a run directory, a checkpoint file, an exported model folder, or a spec with
`network = oracle()` (exact, for Gaussian data; its path or its text). Output: a `GudModel`:

    model.sample(n, sampler=, steps=, grid=, seed=, batch_size=, params=) -> (N, C, H, W) data space
    model.complete(images, mask=)       -> Completion (inpainting, outpainting, super-resolution)
    model.extend(images, columns=N)     -> Extension: images extended by a sliding window
    model.trajectory(n, frames=K)       -> Trajectory: x_t and the predicted x_0 along the sampler
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
likelihood (E66x). Arguments are checked before any work: a target, params or path of the
wrong kind is E003, a device that cannot be had E640, a bad count or seed E651 (sampling) or
E660 (likelihood), unusable images E681 and a bad mask E680.
"""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from gudlang.diagnostics import GudError, describe_value
from gudlang.runs import param_overrides

NOISE_BLOCK = 256
# Samples in a preview grid (what training and `gud export` draw), whatever sample.n is.
PREVIEW_SAMPLES = 64


def load(target: str | Path, *, network: torch.nn.Module | None = None, weights: str = "ema",
         params: dict | None = None, device: str | torch.device | None = None,
         path: str | None = None) -> "GudModel":
    """A trained model from a run directory, checkpoint file or export, or the exact model of a
    spec with `network = oracle()` (its path, or its text: a str with a line break). `params`
    sets drawn params ({"a": 0.8}), `weights` picks the EMA (default) or raw weights, `network`
    is the module a custom-network run needs, `path` a sampling path other than the spec's
    ("edm_path(t, rho = 5)"; see `with_path`)."""
    loaded = _load(load_target(target), network, weights, param_overrides(params), device)
    return loaded if path is None else loaded.with_path(path)


def _load(path: Path | str, network, weights, overrides: dict[str, str], device) -> "GudModel":
    from gudlang import runs
    if isinstance(path, str) or (path.suffix == ".gud" and not path.is_dir()):
        from gudlang.check import check_text, spec_source
        from gudlang.pipeline import build_model
        if weights not in runs.WEIGHTS:
            raise GudError.one("E003", f"unknown weights {weights!r}", help=f"choose {' or '.join(runs.WEIGHTS)}")
        runs.check_network_argument(network)
        text, name, _ = spec_source(path)
        checked = check_text(text, name, overrides)
        if checked.spec.network.kind != "oracle":
            raise GudError.one("E640", f"{name} declares a network that must be trained first",
                               help=f"gud train {name}, then load the run" if isinstance(path, Path) else
                               "train it with gudlang.train_run(text), then load the run")
        if network is not None:
            raise GudError.one("E003", f"{name} declares network = oracle(), the exact denoiser: it takes no "
                                       f"network ({type(network).__qualname__} given)",
                               help="leave network out, or load the run your network was trained in")
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


class Extension(NamedTuple):
    """Extended images (N, C, H, W + columns) or (N, C, H + rows, W), the network calls, and the
    width k of the given band each window is completed from (unpacks as (x, nfe, band))."""
    x: np.ndarray
    nfe: int
    band: int


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
        if grid is not None:
            raise GudError.one("E651", f"the adaptive sampler chooses its own steps: a time grid ({grid}) is for the "
                                       "fixed-step samplers", help="drop the grid, or choose a fixed-step sampler")
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


# ------------------------------------------------------------------ checking arguments
SEED_MODULUS = 2 ** 64  # torch generators take seeds modulo 2**64 (negative ones wrap)
DEVICE_HELP = 'use device="auto", "cpu", "cuda" or "cuda:N" (or a torch.device)'


def _integer(value, name: str, code: str, *, least: int = 1, optional: bool = True) -> int | None:
    """`value` as an int >= `least` (a Python or NumPy integer, not a bool); None stays None
    when `optional`. GudError `code` naming `name` otherwise."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise GudError.one(code, f"{name} must be {kind}, got {describe_value(value)}")
    return int(value)


def _callback(value, code: str) -> None:
    """GudError `code` unless `value` (a progress callback) is None or callable."""
    if value is not None and not callable(value):
        raise GudError.one(code, f"progress must be a function progress(done, total), got {describe_value(value)}")


def _seed(value, default: int, code: str) -> int:
    """A seed: `value` (any integer; call sites reduce it modulo SEED_MODULUS, as torch does
    negative ones), or `default` when None. GudError `code` when it is not an integer."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GudError.one(code, f"the seed must be an integer, got {describe_value(value)}")
    return int(value)


def load_target(target) -> Path | str:
    """What `gudlang.load` reads: the Path of a run directory, checkpoint, export folder or .gud
    spec (given as a str or os.PathLike, a line ending around it dropped), or the text of a spec
    (a str holding a line break). E003 for anything else (None, a number, an empty string), E001
    for a path not there."""
    from gudlang.check import is_spec_text
    if is_spec_text(target):
        line = target.strip("\r\n")
        if "\n" in line or not os.path.exists(line):
            return target
        target = line  # a path read with its line ending (from a file, or a command's output)
    if not isinstance(target, (str, os.PathLike)) or not str(target):
        raise GudError.one("E003", f"gudlang.load needs the path of a run directory, checkpoint file, export "
                                   f"folder or .gud spec, got {describe_value(target)}",
                           help='for example gudlang.load("runs/digits-9f7289d4")')
    if not os.path.exists(target):
        raise GudError.one("E001", f"{target} not found",
                           help="give a run directory (gud train makes them under runs/), a checkpoint file, an "
                                "export folder or a .gud spec")
    return Path(target)


def path_formula(text) -> str:
    """A sampling path given with `with_path` / `load(path=)`: a string (the right-hand side
    of a spec's `path_i(t) = ...`), checked by `pipeline.with_path_text`. E003 otherwise."""
    if not isinstance(text, str):
        raise GudError.one("E003", f"the path must be a formula written as a spec's path_i(t) = ... right-hand "
                                   f"side, got {describe_value(text)}", help='for example "edm_path(t, rho = 5)"')
    return text


def nll_split(split) -> str:
    """The data split `nll` measures: "train" or "test" (E660 otherwise)."""
    if not (isinstance(split, str) and split in ("train", "test")):
        raise GudError.one("E660", f'split must be "train" or "test", got {describe_value(split)}')
    return split


def pick_device(device, runtime) -> torch.device:
    """The torch device to run on: `device` ("auto", "cpu", "cuda", "cuda:N" or a
    torch.device), or the spec's `runtime.device` when None (`runs.device_for`). E640, as for
    runtime.device, when it is unknown, not a CPU or CUDA device, or not available here."""
    from gudlang.runs import device_for
    if device is None:
        try:
            return device_for(runtime)
        except GudError as e:  # a run trained on a GPU, loaded on a machine without one: say how from Python
            raise GudError.one("E640", e.diagnostics[0].message,
                               help='load it with device="cpu" or device="auto" (gud: -s runtime.device=cpu)') from None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GudError.one("E640", f"unknown device {describe_value(device)}", help=DEVICE_HELP) from None
    if chosen.type not in ("cpu", "cuda"):
        raise GudError.one("E640", f"device {describe_value(device)} is not supported", help=DEVICE_HELP)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise GudError.one("E640", f"device {describe_value(device)} asks for CUDA but no CUDA device is available",
                           help='use device="cpu" or device="auto"')
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise GudError.one("E640", f"there is no CUDA device {chosen.index} ({torch.cuda.device_count()} "
                                   f"available)", help=DEVICE_HELP)
    return chosen


def _check_extension_size(images: np.ndarray, count: int, axis: str) -> None:
    """E651 when images extended by `count` columns (rows) would take more than half the memory
    of this machine as float64 (as they are built), before a window is drawn."""
    n, c, h, w = images.shape
    values = n * c * (h * (w + count) if axis == "columns" else (h + count) * w)
    need = 8 * values
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every system
        return
    if need > memory // 2:
        raise GudError.one("E651", f"extending {n} image(s) by {count} {axis} makes {values:.3g} values "
                                   f"({need / 2 ** 30:.1f} GiB as float64), more than half of this machine's "
                                   f"{memory / 2 ** 30:.1f} GiB",
                           help=f"extend by fewer {axis}, or fewer images at a time")


def given_images(images, data, *, full_size: bool = False) -> np.ndarray:
    """Images in data space (N, C, h, w) float64 for `data` (a DataSet): from an array,
    tensor or nested list of (N, C, h, w), (C, h, w) or (h, w) numbers (or channels last; uint8
    as 0..255 pixels: `conditioning.images_from_array`), or the path of a PNG / JPEG, .npy or
    .npz file, read as `--given FILE` is (`conditioning.load_images`). E681 when there are
    none, the channels (with `full_size` the size too) are not the data's, or a value is NaN,
    infinite or outside the data's range (`check_value_range`)."""
    from gudlang.conditioning import images_from_array, load_images
    c, height, width = data.shape
    shapes = f"(N, {c}, H, W), ({c}, H, W)" + (" or (H, W)" if c == 1 else "")
    if isinstance(images, (str, os.PathLike)):
        arr = load_images(images, data)
    else:
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", torch.float64).numpy()
        try:
            arr = None if images is None else np.asarray(images)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.dtype.kind not in "iuf":
            raise GudError.one("E681", f"the images must be an array of numbers, got {describe_value(images)}",
                               help=f"give {shapes} values in data space, or the path of an image, .npy or "
                                    f".npz file")
        arr = images_from_array(arr, data, "the array of images")
    if full_size and arr.shape[2:] != (height, width):
        raise GudError.one("E681", f"the images are {arr.shape[2]} x {arr.shape[3]}, the model's {height} x {width}",
                           help="give full-size images")
    return arr


def given_mask(model, mask) -> np.ndarray | None:
    """The known components (D,) bool that `mask` names in `model` (a pipeline Model): a
    condition written as in a spec, e.g. "col(i) < 0.5" (`pipeline.given_from_text`), or a bool
    array of the D components (as `Completion.mask`); None is the spec's own given_i (None
    when it has none). E680 for anything else."""
    from gudlang.pipeline import given_from_text
    if mask is None:
        return model.given
    if isinstance(mask, str):
        return given_from_text(model, mask)
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask
    try:
        arr = np.asarray(arr) if isinstance(arr, (np.ndarray, list, tuple)) else None
    except ValueError:  # a ragged list
        arr = None
    if arr is None or arr.dtype != bool or arr.shape != (model.dim,):
        raise GudError.one("E680", f"the mask must be a condition written as in a spec or a bool array of the "
                                   f"model's {model.dim} components, got {describe_value(mask)}",
                           help='for example mask="col(i) < 0.5", or the .mask of a Completion')
    return arr


@dataclass
class Trajectory:
    """How samples came about: the times t (K,) of K model calls, from 1 towards 0, the state x_t
    the sampler held at each (K, N, C, H, W) and the clean image the model predicted from it,
    x0_hat = (x_t - sigma eps) / alpha per whitened component (K, N, C, H, W), all in data space,
    float32; `samples` (N, C, H, W) are where the sampler ended, after `nfe` calls."""
    times: np.ndarray
    states: np.ndarray
    predictions: np.ndarray
    samples: np.ndarray
    nfe: int


class _Frames(torch.nn.Module):
    """An eps model that keeps, for each of the times `targets`, the call nearest to it: the
    state and the prediction decoded by `space` (only K frames are held, whatever the calls)."""

    def __init__(self, eps_model, space, targets):
        super().__init__()
        from gudlang.space import noise_levels
        self.eps_model, self.space, self.targets, self.noise_levels = eps_model, space, targets, noise_levels
        self.best: dict[int, tuple[float, float, torch.Tensor, torch.Tensor]] = {}

    def forward(self, chi, t, gamma):
        eps = self.eps_model(chi, t, gamma)
        now = float(t.reshape(-1)[0])
        nearer = [k for k, target in enumerate(self.targets)
                  if k not in self.best or abs(now - target) < self.best[k][0]]
        if nearer:
            alpha, sigma = self.noise_levels(gamma.to(torch.float64))
            chi64 = chi.to(torch.float64)
            state = self.space.decode(chi64).float().cpu()
            prediction = self.space.decode((chi64 - sigma * eps.to(torch.float64)) / alpha).float().cpu()
            for k in nearer:
                self.best[k] = (abs(now - self.targets[k]), now, state, prediction)
        return eps


class GudModel:
    """A trained (or exact) model: a pipeline `Model` (schedule, basis, prior, data description)
    with an eps model, a device and its checkpoint metadata. What it does: see the module
    docstring (`help(gudlang.api)`)."""

    def __init__(self, model, eps_model, meta: dict, device=None, *, source=None, overrides=None,
                 network=None, weights: str = "ema", path: str | None = None):
        self.model, self.meta = model, meta
        self.device = pick_device(device, model.spec.runtime)
        self.eps_model = eps_model.to(self.device)
        self._source, self._overrides, self._network, self._weights = source, overrides or {}, network, weights
        self._path = path  # the sampling path given with `with_path`, if any

    @classmethod
    def from_parts(cls, model, network: torch.nn.Module, device=None) -> "GudModel":
        """A model being trained: the pipeline Model and a network (its EMA copy, say)."""
        from gudlang.train import EpsModel
        return cls(model, EpsModel(network, model.space), {"gudlang_hash": model.model_hash}, device)

    # ------------------------------------------------------------------ what it is
    def __repr__(self) -> str:
        from gudlang.check import SPEC_TEXT
        spec, step = self.spec, self.meta.get("gudlang_step")
        where = "in memory" if self._source is None else SPEC_TEXT if isinstance(self._source, str) else self._source
        return (f"GudModel({where}: {spec.data.kind} {'x'.join(map(str, self.shape))}, {spec.basis.kind} basis, "
                f"{spec.prior.kind} prior, {spec.network.kind} network"
                + (f", step {step}" if step else "") + (", conditional" if self.conditional else "")
                + f", {self.device}, {str(self.dtype).replace('torch.', '')}, {self.hash[:20]})")

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
    def generated(self) -> int:
        """How many components the model generates: D, less the given ones of a conditional spec."""
        given = self.model.given
        return self.model.dim if given is None else int((~np.asarray(given, dtype=bool)).sum())

    @property
    def dtype(self) -> torch.dtype:
        weights = next(self.eps_model.parameters(), None)
        return weights.dtype if weights is not None and weights.is_floating_point() else torch.float32

    def with_params(self, params: dict) -> "GudModel":
        """The same model at other values of its drawn params (a member of a trained family)."""
        if self._source is None:
            raise GudError.one("E640", "params can only be changed on a model loaded with gudlang.load")
        params = param_overrides(params, required=True)
        return load(self._source, network=self._network, weights=self._weights,
                    params={**self._overrides, **params}, device=self.device, path=self._path)

    def with_path(self, text: str) -> "GudModel":
        """The same trained network sampled along another path, written as a spec's
        `path_i(t) = ...` right-hand side: it must stay inside the training support (E303).
        Samples, completions and the likelihood then follow it."""
        from gudlang.pipeline import with_path_text
        text = path_formula(text)
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
               params: dict | None = None, given=None, mask: str | np.ndarray | None = None, start: int = 0,
               progress: Callable[[int, int], None] | None = None, with_nfe: bool = False):
        """n samples in data space, (n, C, H, W) float32 on the CPU (and the network calls when
        `with_nfe`). Samples start .. start + n - 1 of the seed's sequence (torchrun shards).
        With `given` images (N, C, h, w) in data space: their completions (see `complete`)."""
        from gudlang.samplers import sample, schedule_kinks
        if params:
            return self.with_params(params).sample(n, sampler=sampler, steps=steps, grid=grid, seed=seed,
                                                   batch_size=batch_size, given=given, mask=mask, start=start,
                                                   progress=progress, with_nfe=with_nfe)
        steps, batch_size = _integer(steps, "steps", "E651"), _integer(batch_size, "batch_size", "E651")
        start = _integer(start, "start", "E651", least=0, optional=False)
        _callback(progress, "E651")
        if given is not None:
            n = _integer(n, "the number of samples", "E651")
            images = given_images(given, self.model.data)
            if n is not None and n > len(images):
                raise GudError.one("E651", f"{n} completions asked of {len(images)} given image(s)",
                                   help="n takes the first n images; leave it out to complete them all")
            images = images[:n] if n else images
            parts, step = [], batch_size or len(images)
            for lo in range(0, len(images), step):  # image k starts from the noise of sample start + k
                parts.append(self._complete(images[lo:lo + step], mask, sampler, steps, grid, seed, start + lo))
                if progress is not None:
                    progress(min(lo + step, len(images)), len(images))
            x = torch.cat([torch.as_tensor(done.x) for done in parts])
            return (x, parts[-1].nfe) if with_nfe else x
        if mask is not None:
            raise GudError.one("E651", "a mask names the known components of given images, and none were given",
                               help="pass the images too: sample(given=images, mask=...), or model.complete")
        if self.conditional:
            raise GudError.one("E680", "this model was trained to complete given components",
                               help="give it images: model.complete(images), or gud sample RUN --given FILE")
        n = _integer(n, "the number of samples", "E651", optional=False)
        settings = self.spec.sample
        method, steps = sampler or settings.sampler, steps or settings.steps
        seed = _seed(seed, settings.seed, "E651")
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
            gen = torch.Generator(device=self.device).manual_seed((seed * 7919 + lo) % SEED_MODULUS)
            with torch.no_grad():
                result = sample(method, self.eps_model, schedule, x1, steps, generator=gen, **options)
                out.append(space.decode(result.x0).float().cpu())
            nfe = result.nfe
            if progress is not None:
                progress(hi - start, n)
        x = torch.cat(out)
        return (x, nfe) if with_nfe else x

    def trajectory(self, n: int = 4, *, frames: int = 8, sampler: str | None = None, steps: int | None = None,
                   grid: str | None = None, seed: int | None = None, params: dict | None = None,
                   given=None, mask: str | np.ndarray | None = None) -> Trajectory:
        """How n samples (the first n of the seed's, as `sample` makes them) come about: the
        model calls nearest to `frames` - 1 equally spaced times from t = 1 down to 1 / (frames - 1)
        (fewer when the sampler makes fewer calls), and the samples. With `given`, the
        completions of those images (as `complete`)."""
        if params:
            return self.with_params(params).trajectory(n, frames=frames, sampler=sampler, steps=steps, grid=grid,
                                                       seed=seed, given=given, mask=mask)
        frames = _integer(frames, "frames", "E651", least=2, optional=False)
        targets = np.linspace(1.0, 0.0, frames)[:-1].tolist()
        watched = copy.copy(self)
        watched.eps_model = _Frames(self.eps_model, self.model.space.to(self.device), targets)
        samples, nfe = watched.sample(n, sampler=sampler, steps=steps, grid=grid, seed=seed, given=given,
                                      mask=mask, with_nfe=True)
        kept = sorted({(t, id(state)): (t, state, prediction)
                       for _, t, state, prediction in watched.eps_model.best.values()}.values(),
                      key=lambda frame: -frame[0])
        return Trajectory(np.array([t for t, _, _ in kept]), torch.stack([s for _, s, _ in kept]).numpy(),
                          torch.stack([p for _, _, p in kept]).numpy(), samples.float().numpy(), nfe)

    def complete(self, images, *, mask: str | np.ndarray | None = None, sampler: str | None = None,
                 steps: int | None = None, grid: str | None = None, seed: int | None = None,
                 first: int = 0) -> Completion:
        """Generate the components of `images` in data space that the mask does not give: the
        spec's own `given_i` (method "trained"), or the condition `mask` written as in a spec,
        e.g. "col(i) < 0.5", or a bool array of the D components (method "replacement" where it
        differs from the spec's). Images are (N, C, h, w), (C, h, w) or (h, w) values, or the
        path of a file as `gud sample --given` reads it (`given_images`); smaller ones are
        upsampled for super-resolution (`gudlang.conditioning.upsample`). `first`: the index of
        images[0] in a larger set (a torchrun shard): image k starts from the noise of sample k
        of the seed, so the trained method with a deterministic sampler completes it the same
        however the set is split."""
        first = _integer(first, "first", "E651", least=0, optional=False)
        return self._complete(given_images(images, self.model.data), mask, sampler, steps, grid, seed, first)

    def _complete(self, images: np.ndarray, mask, sampler, steps, grid, seed, first: int = 0) -> Completion:
        """`complete` of images (N, C, h, w) float64 that `given_images` passed (or windows made
        of them), the first of them image `first` of the set."""
        from gudlang.conditioning import complete, shown_known, upsample
        model = self.model
        if model.given is None and mask is None:
            raise GudError.one("E680", "the model was trained without a given mask, so the known components "
                                       "must be named", help='pass a mask, e.g. --mask "col(i) < 0.5" '
                                                             '(mask="col(i) < 0.5" in Python; zero-shot '
                                                             "conditioning by replacement)")
        settings = self.spec.sample
        steps = _integer(steps, "steps", "E651") or settings.steps
        seed = _seed(seed, settings.seed, "E651")
        chosen = given_mask(model, mask)
        same = model.given is not None and np.array_equal(chosen, model.given)
        images = upsample(images, model.data.shape, model.spec.basis.kind)
        name = sampler or settings.sampler
        noise = start_noise(seed, first, first + len(images), model.dim, self.dtype, self.device)
        x, nfe = complete(self.eps_model, model.sampling_path, model.space, chosen, images,
                          method="trained" if same else "replacement", sampler=name, steps=steps,
                          device=self.device, dtype=self.dtype, seed=(seed * 7919 + first) % SEED_MODULUS,
                          trained_mask=model.given, options=self._options(name, grid), noise=noise)
        return Completion(x, shown_known(model.space, chosen, images), chosen.copy(),  # not the model's own given
                          "trained" if same else "replacement", nfe)

    def extend(self, images, *, columns: int | None = None, rows: int | None = None, sampler: str | None = None,
               steps: int | None = None, seed: int | None = None, progress=None, first: int = 0) -> "Extension":
        """Extend images (N, C, H, W) by `columns` on the right or `rows` at the bottom with a
        sliding window: an `Extension` (extended images, network calls, the given band k). `progress(done,
        total)` is called after each window. `first`: the index of images[0] in a larger set (a
        torchrun shard): window w of image k starts from the noise of sample k of the window's own
        seed, so a deterministic sampler extends it the same however the set is split. E651 when
        the result would not fit in half the machine's memory."""
        from gudlang.conditioning import extend, extension_band
        _callback(progress, "E651")
        if (columns is None) == (rows is None):
            raise GudError.one("E003", "extend by columns or by rows, not both and not neither")
        axis, count = ("columns", columns) if columns is not None else ("rows", rows)
        count = _integer(count, axis, "E003", optional=False)
        steps, seed = _integer(steps, "steps", "E651"), _seed(seed, self.spec.sample.seed, "E651")
        first = _integer(first, "first", "E651", least=0, optional=False)
        model = self.model
        if model.given is None:
            raise GudError.one("E682", "image extension needs a model trained with a given band",
                               help="train a spec with e.g. given_i = col(i) < 0.5 (see specs/column_extension.gud)")
        k = extension_band(model.space, model.given, axis)
        images = given_images(images, model.data)
        c, h, w = model.data.shape
        across, size = (h, w) if axis == "columns" else (w, h)
        if images.ndim != 4 or images.shape[1] != c or images.shape[2 if axis == "columns" else 3] != across:
            raise GudError.one("E681", f"to extend {axis} the images need the model's {c} channel(s) and "
                                       f"{across} {'rows' if axis == 'columns' else 'columns'}, got shape "
                                       f"{images.shape[1:]}")
        _check_extension_size(images, count, axis)
        total = -(-count // (size - k))
        windows = iter(range(1 << 62))

        def fill(window):
            index = next(windows)
            # window 0 draws from the seed itself, later ones from seeds far from it (with seed + index,
            # window 1 of seed s was window 0 of seed s + 1)
            window_seed = seed if index == 0 else (seed * 1_000_003 + 7919 * index) % SEED_MODULUS
            done = self._complete(window, None, sampler, steps, None, window_seed, first)
            if progress is not None:
                progress(index + 1, total)
            return done.x, done.nfe

        x, nfe = extend(images, count, axis, k, size, fill)
        return Extension(x, nfe, k)

    def grid(self, out: Path, n: int | None = None) -> None:
        """A PNG grid of n (default the spec's sample.n, at most PREVIEW_SAMPLES) samples with
        the spec's settings (completions of the first test images beside their given parts, for
        a conditional spec): the preview training and `gud export` write."""
        from gudlang.images import save_grid, save_pairs
        n = _integer(n, "n", "E651") or min(self.spec.sample.n, PREVIEW_SAMPLES)
        value_range = self.model.data.value_range
        if not self.conditional:
            save_grid(self.sample(n).numpy(), out, value_range)
            return
        data = self.model.data
        images = data.test if len(data.test) else data.train
        known = np.asarray(images[: max(1, n // 2)], dtype=np.float64)  # the data's own: no range check
        done = self._complete(known, None, None, None, None, None)
        save_pairs(done.known, done.x, out, value_range)

    # ------------------------------------------------------------------ likelihood
    def training_data(self):
        """The spec's data (a `gudlang.data.DataSet`), once they are known to be those the model
        was trained on (E641 when their fingerprint changed)."""
        from gudlang.pipeline import load_spec_data
        data = load_spec_data(self.model.checked)
        if data.fingerprint != self.model.data.fingerprint:
            raise GudError.one("E641", f"the data changed since training (fingerprint {data.fingerprint[:12]} "
                                       f"!= {self.model.data.fingerprint[:12]})",
                               help="evaluate on the data the model was trained on")
        return data

    def split_images(self, split: str = "test", n: int | None = None) -> np.ndarray:
        """The first n (default all) images of the spec's data split, once the data are known to
        be those the model was trained on (E641: their fingerprint changed, or the split is empty)."""
        split, n = nll_split(split), _integer(n, "n", "E660")
        data = self.training_data()
        x = data.test if split == "test" else data.train
        if len(x) == 0:
            raise GudError.one("E641", f"the {split} split is empty", help="use the train split")
        return x[:n] if n else x

    def nll(self, x=None, *, split: str = "test", n: int | None = None, divergence: str | None = None,
            hutchinson_samples: int | None = None, batch_size: int = 64, seed: int = 0,
            progress: Callable[[int, int], None] | None = None, first: int = 0) -> NllResult:
        """Bits/dim by the probability-flow ODE of images x (N, C, H, W) in data space, or of the
        spec's data split. For a conditional model: the conditional bits/dim of the generated
        components given the others (`likelihood.dataset_bits_per_dim` with a mask). `first`:
        the offset of x in a larger set (a rank's shard), which seeds each image's dequantisation."""
        from gudlang.conditioning import GivenSchedule
        from gudlang.likelihood import dataset_bits_per_dim, divergence_method
        model = self.model
        split, n = nll_split(split), _integer(n, "n", "E660")
        batch_size = _integer(batch_size, "batch_size", "E660", optional=False)
        hutchinson_samples = _integer(hutchinson_samples, "hutchinson_samples", "E660")
        seed = _seed(seed, 0, "E660")
        first = _integer(first, "first", "E660", least=0, optional=False)
        _callback(progress, "E660")
        generated = self.generated
        if hutchinson_samples is not None and divergence_method(divergence, generated) == "exact":
            raise GudError.one("E660", f"hutchinson_samples sets the probes of Hutchinson's estimate, and this "
                                       f"measures the exact divergence of the {generated} components",
                               help='pass divergence="hutchinson" with it, or leave it out')
        if x is None:
            x = self.split_images(split, n)
        else:
            x = given_images(x, model.data, full_size=True)
            x = x[:n] if n else x
        oracle = model.spec.network.kind == "oracle"
        dtype = torch.float64 if oracle else self.dtype  # the network's own: never cast in place
        space = model.space.to(self.device)
        schedule = model.sampling_path.to(self.device)
        given = None
        if model.given is not None:
            schedule = GivenSchedule(schedule, model.given).to(self.device)
            given = torch.as_tensor(model.given)
        lo, hi = model.data.value_range
        eps_model = self.eps_model.to(dtype=dtype) if oracle else self.eps_model

        def encode(chunk):
            with torch.no_grad():
                return space.encode(chunk.to(device=self.device, dtype=torch.float64)).to(dtype)

        gen = torch.Generator().manual_seed(seed % SEED_MODULUS)
        settings = self.spec.sample
        logabsdet = space.logabsdet(None if given is None else ~given)
        result = dataset_bits_per_dim(eps_model, schedule, encode, x, levels=model.data.levels,
                                      data_scale=float(hi - lo), logabsdet=logabsdet,
                                      divergence=divergence, hutchinson_samples=hutchinson_samples or 1,
                                      batch_size=batch_size, rtol=settings.rtol, atol=settings.atol,
                                      generator=gen, progress=progress, given=given,
                                      first=first)
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
        from gudlang.runs import set_params
        variant = ([f"the path {self._path}"] if self._path else []) + \
            [f"{k} = {v}" for k, v in set_params(self._overrides or {}).items()]
        if variant:
            raise GudError.one("E644", f"an export holds the model its spec describes, not one with "
                                       f"{', '.join(variant)}",
                               help="export the model as loaded without them; whoever samples it sets them again")
        return export_model(self, Path(folder), nll=nll, command=command)
