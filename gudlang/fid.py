"""FID and KID of a model's samples against a reference set (`gud fid`).

Input: generated images (sampled from a model batch by batch, or read from a samples .npz or
PNG folder) and a reference: a folder of PNG / JPEG images, an .npz whose `arr_0` holds uint8
(N, H, W, C) images, or precomputed statistics (an .npz with `mu` (F,) and `sigma` (F, F), the
layout pytorch-fid and clean-fid write). Both image sets take the same path:

    data space --images.to_uint8--> uint8 (N, H, W, C) --> (N, 3, H, W), grey repeated
               --feature network--> features (N, F)

Feature networks (`FeatureNetwork`): the Inception-v3 pool3 features (F = 2048) of
torch-fidelity ("inception-v3-compat": the TensorFlow FID graph, bilinear resize to 299 as in
TF1) with the standard FID weights read from a local file (nothing is downloaded), or any
torch module that maps uint8 (N, 3, H, W) to (N, F) (or a tuple whose first item is that).

Output: `Scores` (FID, KID mean and spread over subsets, n of each set) and, from `gud fid`,
a JSON record RUN/fid-REF.json (written atomically, after everything else succeeded).

Maths (torchmetrics computes both from the features, in float64):
    FID = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)), sample means and covariances
          (ddof 1); biased upwards at small n (it falls as n grows).
    KID = MMD_u^2 with k(x, y) = (x.y / F + 1)^3 on m images of each set, averaged over random
          subsets: MMD_u^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1))
          - 2 sum_{i, j} k(x_i, y_j) / m^2, unbiased (expectation 0 for equal distributions,
          so single values can be negative). Statistics (mu, sigma) give FID only.
Scores are comparable only with the same reference (or statistics), the same n, the same
feature network (weights sha256, resize) and the same uint8 quantisation.

Generated sample k is sample k of `gud sample RUN -n N --seed S` (noise block by index), so
sampling here or scoring `gud sample --format npz` output gives the same numbers for
deterministic samplers.

Errors (GudError):
    E001 a reference, samples or weights path that does not exist
    E690 images or statistics that cannot be used (unreadable, wrong size or channels, fewer
         than two, statistics of another feature network or dimension), sampler options
         beside --samples
    E691 no feature network (torchmetrics or torch-fidelity missing, no Inception weights, a
         --features module that cannot be imported, fails, or gives no (N, F) features)
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gudlang.diagnostics import GudError

CODES: dict[str, str] = {
    "E690": "FID inputs that cannot be used (images, statistics, options that contradict them)",
    "E691": "no feature network for FID / KID",
}

# torch-fidelity's copy of the FID Inception weights (converted from the TensorFlow graph of
# the FID paper); torch hub file names end in the first hex digits of the file's sha256.
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_NAME = "inception-v3-compat pool3 (torch-fidelity, TF1 bilinear resize to 299)"

DEFAULT_N = 50_000  # the FID-50k convention
BATCH_SIZE = 256
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0  # torch-fidelity's defaults
_UPDATE_ROWS = 4096  # features per torchmetrics update: bounds the float64 copies


def _unusable(message: str, path=None, help: str | None = None) -> GudError:
    return GudError.one("E690", message, path=None if path is None else str(path), help=help)


def _no_network(message: str, help: str | None = None) -> GudError:
    return GudError.one("E691", message, help=help)


_INSTALL_HELP = ("pip install 'gudlang[fid]'; torch-fidelity needs torchvision, and torchvision must be the build "
                 "made for the installed torch (\"operator torchvision::nms does not exist\" means it is not)")


def _why(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- feature networks
@dataclass
class FeatureNetwork:
    """A module from uint8 images (N, 3, H, W) to features (N, F), and the name recorded with
    its scores (scores of different names are not comparable)."""

    module: torch.nn.Module
    name: str
    weights: str | None = None
    sha256: str | None = None

    @property
    def standard(self) -> bool:
        """Whether these are the standard FID Inception weights (by the sha256 prefix)."""
        return self.sha256 is not None and self.sha256.startswith(INCEPTION_SHA256_PREFIX)


def inception_cache() -> Path:
    """Where torch-fidelity (and pytorch-fid) keep the weights they download: TORCH_HOME's
    hub/checkpoints folder (~/.cache/torch/hub/checkpoints by default)."""
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The weights file: `path`, else the first of INCEPTION_FILES in `inception_cache()`."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise GudError.one("E001", f"no such file: {path}", help=f"the FID Inception weights are {INCEPTION_URL}")
        return path
    cache = inception_cache()
    for name in INCEPTION_FILES:
        if (cache / name).is_file():
            return cache / name
    raise _no_network(
        f"the FID Inception weights are not in {cache}, and nothing is downloaded",
        help=f"download {INCEPTION_URL} to {cache / INCEPTION_FILES[0]} (pytorch-fid's copy, {PYTORCH_FID_URL}, "
             "works too), or pass --inception FILE; or score with your own network: --features MODULE:NAME")


def inception(weights: str | Path | None = None) -> FeatureNetwork:
    """torch-fidelity's Inception-v3 pool3 features (2048) with the weights of a local file."""
    import torch
    path = find_inception_weights(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for files that are not weights
        raise _no_network(f"{path} is not a PyTorch weights file ({type(e).__name__})",
                          help=f"the FID Inception weights are {INCEPTION_URL}") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, torch.Tensor) or tuple(fc.shape) != (1008, 2048):
        raise _no_network(f"{path} does not hold the FID Inception-v3 weights (no fc.weight of shape (1008, 2048))",
                          help=f"the FID Inception weights are {INCEPTION_URL}")
    del state
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as e:  # ImportError, or a RuntimeError from a torchvision built for another torch
        raise _no_network(f"the Inception network needs torch-fidelity, which cannot be imported ({_why(e)})",
                          help=_INSTALL_HELP + ", or score with your own network: --features MODULE:NAME") from None
    # torch-fidelity unpickles the file itself; the restricted load above showed it holds tensors only.
    module = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return FeatureNetwork(module, f"{INCEPTION_NAME}, weights sha256 {digest[:16]}", str(path), digest)


def import_features(target: str) -> FeatureNetwork:
    """`MODULE:NAME`: a torch module, or a class or factory that makes one with no arguments."""
    import torch
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise _no_network(f"--features `{target}` is not `inception` or MODULE:NAME",
                          help="for example --features mypackage.features:Dinov2Features")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise _no_network(f"cannot import {target}: {e}", help="check that MODULE is importable (PYTHONPATH)") from None
    if not isinstance(found, torch.nn.Module):
        try:
            found = found()
        except Exception as e:  # the user's code: report it, do not crash
            raise _no_network(f"{target}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(found, torch.nn.Module):
        raise _no_network(f"{target} is not a torch module (got {type(found).__name__})",
                          help="give an nn.Module, or a class / function that returns one")
    return FeatureNetwork(found, target)


def _forward(network: FeatureNetwork, pixels: np.ndarray, device) -> np.ndarray:
    """uint8 (N, H, W, C) -> features (N, F) float32 (E691 when the network gives none)."""
    import numpy as np
    import torch
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    try:
        with torch.no_grad():
            out = network.module(x.contiguous().to(device))
    except Exception as e:  # a network that cannot take these images (size, dtype, ...)
        raise _no_network(f"the feature network {network.name} failed on uint8 images of shape {tuple(x.shape)}: "
                          f"{type(e).__name__}: {e}") from None
    out = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != len(pixels):
        raise _no_network(f"the feature network {network.name} did not return (N, F) features for N = {len(pixels)} "
                          f"images (got {getattr(out, 'shape', type(out).__name__)})")
    features = out.detach().reshape(len(pixels), -1).float().cpu().numpy()
    if not np.isfinite(features).all():
        raise _no_network(f"the feature network {network.name} gave non-finite features")
    return features


# --------------------------------------------------------------------------- image sets
@dataclass
class ImageSet:
    """uint8 images (H, W, C) made or read batch by batch; `record` is what is known about
    them (sampler settings, the file's own records)."""

    description: str
    count: int
    shape: tuple[int, int, int]
    batches: Callable[[int], Iterator[np.ndarray]]
    record: dict = field(default_factory=dict)


def sampled(model, n: int, *, sampler: str | None = None, steps: int | None = None, grid: str | None = None,
            seed: int | None = None, batch_size: int = BATCH_SIZE, first: int = 0) -> ImageSet:
    """Samples first .. first + n - 1 of a `GudModel`, made batch_size at a time, as `gud sample`
    makes them (a torchrun rank's share: `first` > 0)."""
    settings = model.spec.sample
    method, steps = sampler or settings.sampler, steps or settings.steps
    seed = settings.seed if seed is None else seed
    c, h, w = model.shape
    value_range = model.model.data.value_range

    def batches(size: int):
        from gudlang.images import to_uint8
        for lo in range(first, first + n, size):
            x = model.sample(min(size, first + n - lo), sampler=method, steps=steps, grid=grid, seed=seed,
                             batch_size=size, start=lo)
            yield to_uint8(x.numpy(), value_range)

    record = {"sampler": method, "steps": steps, "grid": grid or settings.grid, "seed": seed,
              "batch_size": batch_size, "model_hash": model.hash}
    return ImageSet(f"{n} samples", n, (h, w, c), batches, record)


def read_images(path: str | Path, shape, value_range, what: str = "images", limit: int | None = None) -> ImageSet:
    """Images of shape (C, H, W) from a folder of PNG / JPEG / TIFF files (read as `images()`
    reads training data: upright, transparency on white, 16-bit scaled, grey or RGB as C says),
    or an .npz with `arr_0` uint8 (N, H, W, C) / (N, H, W) pixels or `x` float (N, C, H, W)
    values in data space (`gud sample` writes both); the first `limit` if given."""
    path = Path(path)
    if path.is_dir():
        images = _folder(path, shape, what, limit)
    elif path.is_file():
        if path.suffix.lower() != ".npz":
            raise _unusable(f"{path} is not a folder of images or an .npz file", path,
                            help="give a folder of PNG / JPEG images or an .npz (arr_0: uint8 N H W C), not one image")
        with _open_npz(path) as archive:
            images = _npz_images(path, archive, shape, value_range, what, limit)
            if images is None:
                raise _unusable(f"{path} holds no images (no `arr_0` or `x`; arrays: {', '.join(archive.files)})", path,
                                help="store uint8 (N, H, W, C) pixels as arr_0 (gud sample --format npz)")
    else:
        raise GudError.one("E001", f"no such file or folder: {path}", help=f"give the {what} as a folder or .npz")
    if images.count < 2:
        raise _unusable(f"{path} holds {images.count} image(s); FID and KID need at least two", path)
    return images


def _open_npz(path: Path):
    import numpy as np
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _unusable(f"cannot read {path}: {e}", path) from None


def _check_count(path, count: int, limit: int | None, what: str) -> None:
    if limit is not None and count < limit:
        raise _unusable(f"-n {limit} asks for more {what} than the {count} in {path}", path)


def _check_size(path, found_hw, shape, what: str) -> None:
    c, h, w = shape
    if tuple(found_hw) != (h, w):
        raise _unusable(f"{path}: the {what} are {found_hw[0]}x{found_hw[1]}, the model's images {h}x{w}", path,
                        help=f"give {what} at the model's size ({h}x{w}); nothing is resized")


def _npz_images(path: Path, archive, shape, value_range, what: str, limit: int | None) -> ImageSet | None:
    import numpy as np
    c, h, w = shape
    record = {k: str(archive[k]) for k in archive.files if archive[k].ndim == 0}
    if "arr_0" in archive.files:
        pixels = archive["arr_0"]
        if pixels.dtype != np.uint8:
            raise _unusable(f"{path}: arr_0 holds {pixels.dtype} values, not uint8 pixels", path,
                            help="arr_0 is uint8 (N, H, W, C) in 0..255, as gud sample --format npz writes it")
        pixels = pixels[..., None] if pixels.ndim == 3 else pixels
        if pixels.ndim != 4:
            raise _unusable(f"{path}: arr_0 has shape {pixels.shape}, not (N, H, W, C)", path)
    elif "x" in archive.files:
        from gudlang.images import to_uint8
        x = archive["x"]
        if x.ndim != 4 or x.shape[1] != c:
            raise _unusable(f"{path}: x has shape {x.shape}, not (N, {c}, H, W)", path)
        if not np.isfinite(x).all():
            raise _unusable(f"{path}: x holds NaN or infinite values", path)
        pixels = to_uint8(x, value_range)
    else:
        return None
    _check_count(path, len(pixels), limit, what)
    pixels = pixels[:limit]
    _check_size(path, pixels.shape[1:3], shape, what)
    if pixels.shape[3] != c:
        raise _unusable(f"{path}: the {what} have {pixels.shape[3]} channel(s), the model's images {c}", path)

    def batches(size: int):
        for first in range(0, len(pixels), size):
            yield pixels[first: first + size]

    return ImageSet(f"{len(pixels)} images in {path}", len(pixels), (h, w, c), batches, record)


def _folder(folder: Path, shape, what: str, limit: int | None) -> ImageSet:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from gudlang.data import image_files
    from gudlang.datasets.readers import read_image, upright_size
    c, h, w = shape
    try:  # the files images() would read; other image formats and broken links are refused
        files = image_files(folder, False)
    except GudError as e:
        d = e.diagnostics[0]
        raise _unusable(d.message, folder, d.help) from None
    if not files:
        raise _unusable(f"no PNG, JPEG or TIFF images in {folder}", folder)
    _check_count(folder, len(files), limit, what)
    files = files[:limit]

    for path in files:  # headers only: a wrong size fails before any image is scored
        try:
            with Image.open(path) as image:
                width, height = upright_size(image)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise _unusable(f"cannot read {path}: {e}", path) from None
        _check_size(path, (height, width), shape, what)

    def batches(size: int):
        # As images() reads the training data (upright, transparency on white, 16-bit scaled):
        # a folder of training images scores FID 0 against them.
        for first in range(0, len(files), size):
            block = []
            for path in files[first: first + size]:
                try:
                    block.append(read_image(path, "L" if c == 1 else "RGB", (h, w)))
                except GudError as e:
                    raise _unusable(e.diagnostics[0].message, path) from None
            block = np.stack(block)
            yield block[..., None] if c == 1 else block

    record = {}
    if (folder / "samples.json").is_file():  # gud sample --format png-dir writes its settings here
        try:
            record = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
    return ImageSet(f"{len(files)} images in {folder}", len(files), (h, w, c), batches, record)


def features(images: ImageSet, network: FeatureNetwork, *, batch_size: int = BATCH_SIZE, device="cpu",
             progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The features (N, F) float32 of every image of the set."""
    import numpy as np
    out, done = [], 0
    for pixels in images.batches(batch_size):
        out.append(_forward(network, pixels, device))
        done += len(pixels)
        if progress is not None:
            progress(done, images.count)
    return np.concatenate(out)


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Statistics:
    """Mean (F,) and covariance (F, F) of a reference's features (float64), with n and the
    feature network's name when known (pytorch-fid's and clean-fid's files hold neither)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    features: str | None = None

    @classmethod
    def of(cls, features: np.ndarray, name: str | None = None) -> "Statistics":
        """Sample mean and covariance (ddof 1) of features (N, F)."""
        import numpy as np
        f = np.asarray(features, dtype=np.float64)
        return cls(f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False)), len(f), name)


def save_statistics(path: str | Path, stats: Statistics) -> None:
    """`mu`, `sigma` (pytorch-fid's layout) plus `n` and `features` when known, atomically."""
    import numpy as np

    from gudlang.checkpoint import atomic_write_bytes
    from gudlang.images import make_folder
    extra = {}
    if stats.n is not None:
        extra["n"] = np.asarray(stats.n)
    if stats.features is not None:
        extra["features"] = np.asarray(stats.features)
    buf = io.BytesIO()
    np.savez(buf, mu=stats.mu, sigma=stats.sigma, **extra)
    make_folder(Path(path).parent)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_statistics(path: str | Path) -> Statistics:
    """The statistics of an .npz with `mu` (F,) and `sigma` (F, F) (E690 when unusable)."""
    path = Path(path)
    if not path.is_file():
        raise GudError.one("E001", f"no such file: {path}")
    with _open_npz(path) as archive:
        return _statistics(path, archive)


def _statistics(path: Path, archive) -> Statistics:
    import numpy as np
    if not {"mu", "sigma"} <= set(archive.files):
        raise _unusable(f"{path} holds no statistics (arrays: {', '.join(archive.files)})", path,
                        help="statistics files hold mu (F,) and sigma (F, F), as pytorch-fid and clean-fid write them")
    mu, sigma = np.asarray(archive["mu"], dtype=np.float64), np.asarray(archive["sigma"], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise _unusable(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}, not (F,) and (F, F)", path)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise _unusable(f"{path}: the statistics hold NaN or infinite values", path)
    if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(sigma).max()))):
        raise _unusable(f"{path}: sigma is not symmetric, so it is not a covariance", path)
    try:
        n = int(archive["n"]) if "n" in archive.files else None
    except (TypeError, ValueError):
        raise _unusable(f"{path}: n is not a whole number", path) from None
    if n is not None and n < 2:
        raise _unusable(f"{path}: statistics of {n} image(s); FID needs at least two", path)
    name = str(archive["features"]) if "features" in archive.files else None
    return Statistics(mu, sigma, n, name)


def read_reference(path: str | Path, shape, value_range) -> ImageSet | Statistics:
    """A reference: images (a folder, an .npz with arr_0 or x) or statistics (an .npz with
    mu and sigma and no images)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        with _open_npz(path) as archive:
            if not _holds_images(archive):
                return _statistics(path, archive)
    return read_images(path, shape, value_range, what="reference images")


# --------------------------------------------------------------------------- the metrics
def _given_features(dim: int):
    """torchmetrics' feature network: the identity, as the features are computed once, outside
    the metrics, and both metrics read the same ones (float64, so they compute in float64)."""
    import torch
    identity = torch.nn.Identity()
    identity.num_features = dim
    return identity


def _float64(features):
    import numpy as np
    import torch
    return torch.from_numpy(np.asarray(features, dtype=np.float64))


def _metrics():
    try:  # torchmetrics imports torch-fidelity, when it is there, on import
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except Exception as e:  # as in `inception`
        raise _no_network(f"FID and KID need torchmetrics, which cannot be imported ({_why(e)})",
                          help=_INSTALL_HELP) from None
    return FrechetInceptionDistance, KernelInceptionDistance


def frechet_distance(generated: np.ndarray, reference: np.ndarray | Statistics) -> float:
    """FID between features (N, F) and reference features or statistics (torchmetrics)."""
    import torch
    fid_metric, _ = _metrics()
    # sync_on_compute: the features given are already all of them (under torchrun, gathered on rank 0)
    metric = fid_metric(feature=_given_features(generated.shape[1]), sync_on_compute=False)
    for first in range(0, len(generated), _UPDATE_ROWS):
        metric.update(_float64(generated[first: first + _UPDATE_ROWS]), real=False)
    if isinstance(reference, Statistics):
        # The metric keeps the reference as sums; these give back exactly mu and sigma (ddof 1)
        # in its compute() for any n >= 2 (statistics files need not say n).
        n = reference.n or 2
        mu = torch.from_numpy(reference.mu)
        metric.real_features_sum = mu * n
        metric.real_features_cov_sum = torch.from_numpy(reference.sigma) * (n - 1) + n * torch.outer(mu, mu)
        metric.real_features_num_samples = torch.tensor(n)
    else:
        for first in range(0, len(reference), _UPDATE_ROWS):
            metric.update(_float64(reference[first: first + _UPDATE_ROWS]), real=True)
    return float(metric.compute())


def kernel_distance(generated: np.ndarray, reference: np.ndarray, *, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> tuple[float, float, int]:
    """KID (mean and spread over `subsets` random subsets of min(subset_size, n_g, n_r)
    images of each set) and the subset size used (torchmetrics; subsets drawn from `seed`)."""
    import torch
    _, kid_metric = _metrics()
    size = min(subset_size, len(generated), len(reference))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = kid_metric(feature=_given_features(generated.shape[1]), subsets=subsets, subset_size=size,
                            sync_on_compute=False)
    metric.update(_float64(generated), real=False)
    metric.update(_float64(reference), real=True)
    with torch.random.fork_rng(devices=[]):  # the metric draws subsets from torch's global generator
        torch.manual_seed(seed)
        mean, spread = metric.compute()
    return float(mean), float(spread), size


@dataclass
class Scores:
    """FID, KID (None against statistics) and what they were measured on."""

    fid: float
    kid_mean: float | None
    kid_std: float | None
    kid_subsets: int | None
    kid_subset_size: int | None
    n: int
    n_reference: int | None
    feature_dim: int
    reference_statistics: Statistics


def reference_scores(reference: ImageSet | Statistics, network: FeatureNetwork, shape, *,
                     batch_size: int = BATCH_SIZE, device="cpu") -> tuple[Statistics, np.ndarray | None]:
    """(statistics, features or None) of the reference, checked against the feature network and
    the generated images' shape (H, W, C): done before any sample is made, so a bad reference
    fails first."""
    import numpy as np
    network.module.eval()
    if isinstance(reference, Statistics):
        if reference.features is not None and reference.features != network.name:
            raise _unusable(f"the reference statistics are of {reference.features}; the scores would use "
                            f"{network.name}", help="compute the statistics again with this feature network")
        h, w, c = shape
        dim = _forward(network, np.zeros((2, h, w, c), dtype=np.uint8), device).shape[1]
        if dim != len(reference.mu):
            raise _unusable(f"the reference statistics have {len(reference.mu)} features; {network.name} "
                            f"gives {dim}", help="use statistics computed with the same feature network")
        return reference, None
    reference_features = features(reference, network, batch_size=batch_size, device=device)
    return Statistics.of(reference_features, network.name), reference_features


def score_features(generated_features: np.ndarray, stats: Statistics, reference_features: np.ndarray | None, *,
                   kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE,
                   kid_seed: int = KID_SEED) -> Scores:
    """FID (and KID, given the reference's features) of generated features (N, F) against
    `reference_scores`' result."""
    if len(generated_features) < 2:
        raise _unusable(f"{len(generated_features)} generated image(s); FID and KID need at least two")
    fid = frechet_distance(generated_features, reference_features if reference_features is not None else stats)
    kid_mean = kid_std = size = None
    if reference_features is not None:
        kid_mean, kid_std, size = kernel_distance(generated_features, reference_features, subsets=kid_subsets,
                                                  subset_size=kid_subset_size, seed=kid_seed)
    return Scores(fid, kid_mean, kid_std, kid_subsets if size else None, size, len(generated_features), stats.n,
                  generated_features.shape[1], stats)


def score(generated: ImageSet, reference: ImageSet | Statistics, network: FeatureNetwork, *,
          batch_size: int = BATCH_SIZE, device="cpu", kid_subsets: int = KID_SUBSETS,
          kid_subset_size: int = KID_SUBSET_SIZE, kid_seed: int = KID_SEED,
          progress: Callable[[int, int], None] | None = None) -> Scores:
    """FID and KID of the generated images against the reference. The reference is checked
    and scored first, so a bad one fails before any sample is made."""
    if generated.count < 2:
        raise _unusable(f"{generated.count} generated image(s); FID and KID need at least two")
    stats, reference_features = reference_scores(reference, network, generated.shape, batch_size=batch_size,
                                                 device=device)
    generated_features = features(generated, network, batch_size=batch_size, device=device, progress=progress)
    return score_features(generated_features, stats, reference_features, kid_subsets=kid_subsets,
                          kid_subset_size=kid_subset_size, kid_seed=kid_seed)


# --------------------------------------------------------------------------- the command
def add_fid_parser(sub):
    """The `gud fid` subcommand on an argparse subparsers object; returns its parser."""
    import typing

    from gudlang.terminal import positive_int
    from gudlang.spec import GridName, SamplerName
    q = sub.add_parser("fid", help="FID and KID of a model's samples against reference images or statistics "
                                   "(pip install 'gudlang[fid]')")
    q.add_argument("run", help="a run directory, checkpoint, export or oracle spec")
    q.add_argument("--ref", required=True, metavar="DIR|FILE.npz",
                   help="reference images (a folder of PNG / JPEG, or an .npz with arr_0 uint8 N H W C) or "
                        "statistics (an .npz with mu and sigma, as pytorch-fid and clean-fid write)")
    q.add_argument("-n", type=positive_int, help=f"generated images (default {DEFAULT_N}, the FID-50k convention; "
                                                  "with --samples: all of them)")
    q.add_argument("--samples", metavar="DIR|FILE.npz",
                   help="score these samples (gud sample --format npz or png-dir) instead of sampling")
    q.add_argument("--features", default="inception", metavar="inception|MODULE:NAME",
                   help="the feature network: torch-fidelity's Inception-v3 (default) or a torch module "
                        "(or a class / factory) that maps uint8 (N, 3, H, W) to (N, F)")
    q.add_argument("--inception", metavar="FILE",
                   help=f"the FID Inception weights (default: {INCEPTION_FILES[0]} in TORCH_HOME/hub/checkpoints)")
    q.add_argument("--save-stats", metavar="FILE.npz",
                   help="also write the reference's statistics (mu, sigma), to pass as --ref later (a new file, "
                        "or one of statistics: images are never replaced)")
    q.add_argument("--sampler", choices=typing.get_args(SamplerName))
    q.add_argument("--steps", type=positive_int)
    q.add_argument("--grid", choices=typing.get_args(GridName), help="time grid of fixed-step samplers")
    q.add_argument("--seed", type=int)
    q.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"images per sampling and feature batch (default {BATCH_SIZE})")
    q.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="the EMA weights (default) or the trained ones")
    q.add_argument("-s", "--set", action="append", metavar="KEY=VALUE",
                   help="override a param (a=0.8) or a setting (train.steps=200)")
    return q


def _record_folder(target: str) -> Path:
    """Where the record goes: the run directory, samples/STEM for a spec, a file's folder."""
    path = Path(target)
    if path.suffix == ".gud":
        return Path("samples") / path.stem
    return path if path.is_dir() else path.parent


def cmd_fid(args, overrides: dict) -> int:
    """`gud fid RUN --ref DIR|FILE.npz`: FID and KID of the model's samples (or --samples)
    against the reference; prints them with what they were measured on and writes
    RUN/fid-REF.json."""
    from gudlang import distributed
    from gudlang.api import load
    from gudlang.checkpoint import atomic_write_text
    from gudlang.images import make_folder
    from gudlang.terminal import progress
    start = time.time()
    rank, world = distributed.rank_and_world()
    with distributed.every_rank("loading the run, the reference and the feature network"):
        model = load(args.run, params=overrides, weights=args.weights)
        c, h, w = model.shape
        if c not in (1, 3):
            raise _unusable(f"FID scores grey or RGB images; this model's images have {c} channels")
        value_range = model.model.data.value_range
        reference = read_reference(args.ref, model.shape, value_range)
        if args.save_stats and isinstance(reference, Statistics):
            raise _unusable(f"--save-stats needs reference images, and {args.ref} holds statistics already")
        if args.save_stats and Path(args.save_stats).suffix.lower() != ".npz":
            raise GudError.one("E003", f"--save-stats writes the reference statistics as an .npz file, got "
                                       f"{args.save_stats}",
                               help="name a file ending in .npz (an existing file of statistics is replaced)")
        if args.save_stats:
            _check_replaceable(Path(args.save_stats), args)
        if args.samples and world > 1:
            raise GudError.one("E003", "gud fid --samples scores files in one process",
                               help="run it without torchrun (torchrun splits the sampling of gud fid without "
                                    "--samples over its ranks)")
        if not args.samples and (args.n or DEFAULT_N) < 2:
            raise _unusable(f"{args.n} generated image(s); FID and KID need at least two")
        network = import_features(args.features) if args.features != "inception" else inception(args.inception)
        network.module.to(model.device)
    if args.samples:
        given = [f"--{k}" for k in ("sampler", "steps", "grid", "seed") if getattr(args, k) is not None]
        if given:
            raise _unusable(f"--samples scores the samples in {args.samples}; {', '.join(given)} only apply when "
                            "gud fid makes the samples", help="drop them, or drop --samples")
        generated = read_images(args.samples, model.shape, value_range, what="samples", limit=args.n)
        source = {"samples": str(args.samples), "samples_record": generated.record}
        if generated.count < 2:
            raise _unusable(f"{generated.count} generated image(s); FID and KID need at least two")
    else:
        first, count, _, _ = distributed.shard(args.n or DEFAULT_N)
        generated = sampled(model, count, sampler=args.sampler, steps=args.steps, grid=args.grid,
                            seed=args.seed, batch_size=args.batch_size, first=first)
        source = {"samples": "sampled", **generated.record, "weights": args.weights, "overrides": overrides}
    with distributed.every_rank("scoring the reference"):  # rank 0 scores it, before any sample is made
        prepared = reference_scores(reference, network, generated.shape, batch_size=args.batch_size,
                                    device=model.device) if rank == 0 else None
    update, close = progress("fid", generated.count, quiet=rank != 0)
    generated_features = distributed.gather(features(generated, network, batch_size=args.batch_size,
                                                     device=model.device, progress=update))
    close()
    if rank != 0:
        return 0
    scores = score_features(generated_features, *prepared)
    if args.save_stats:
        save_statistics(args.save_stats, scores.reference_statistics)
    record = {"fid": scores.fid, "kid_mean": scores.kid_mean, "kid_std": scores.kid_std,
              "kid_subsets": scores.kid_subsets, "kid_subset_size": scores.kid_subset_size, "kid_seed": KID_SEED,
              "n": scores.n, "reference": str(args.ref), "n_reference": scores.n_reference,
              "reference_kind": "statistics" if isinstance(reference, Statistics) else "images",
              "features": network.name, "feature_dim": scores.feature_dim, "inception_weights": network.weights,
              "inception_sha256": network.sha256, "image_shape": [c, h, w], "value_range": list(value_range),
              "quantisation": "uint8 (images.to_uint8: rounded, clipped to the data range)",
              "model_hash": model.hash, "saved_statistics": args.save_stats, **source,
              "seconds": time.time() - start}
    record["reference_path"] = str(Path(args.ref).resolve())
    out = _record_file(_record_folder(args.run), Path(args.ref).stem or "reference", record)
    make_folder(out.parent)
    atomic_write_text(out, json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(_summary(scores, record, network, generated, reference, args))
    print(f"wrote {out}" + (f" and the reference statistics to {args.save_stats}" if args.save_stats else ""))
    return 0


def _holds_images(archive) -> bool:
    """Whether an open .npz holds images (`arr_0` pixels or `x` values), not statistics."""
    return "arr_0" in archive.files or "x" in archive.files


def _check_replaceable(target: Path, args) -> None:
    """E003 unless `target` (--save-stats) is new or holds statistics: it must not replace the
    --ref or --samples images it is computed from, nor any other file of images."""
    if not target.exists():
        return
    for option, given in (("--ref", args.ref), ("--samples", args.samples)):
        if given and Path(given).exists() and target.resolve() == Path(given).resolve():
            raise GudError.one("E003", f"--save-stats {target} is the {option} file: writing the statistics "
                                       f"would replace its images", help="name another .npz file")
    if not target.is_file():
        raise GudError.one("E003", f"--save-stats {target} is a folder", help="name an .npz file")
    try:
        with _open_npz(target) as archive:
            statistics = "mu" in archive.files and not _holds_images(archive)
    except GudError:
        statistics = False
    if not statistics:
        raise GudError.one("E003", f"--save-stats {target} exists and holds no statistics (images, or "
                                   f"something else): it is not replaced", help="name a new .npz file")


# What a record measured: two records that agree on all else are the same measurement, repeated.
_RESULTS = ("fid", "kid_mean", "kid_std", "seconds", "saved_statistics")


def _record_file(folder: Path, stem: str, record: dict) -> Path:
    """FOLDER/fid-STEM.json, unless it holds another measurement (other samples, n, reference
    of the same stem, features): then FOLDER/fid-STEM-XXXXXXXX.json, named by a digest of what
    this one measured, so no record replaces one of something else."""
    def measured(r: dict) -> str:
        return json.dumps({k: v for k, v in r.items() if k not in _RESULTS}, sort_keys=True, default=str)

    plain = folder / f"fid-{stem}.json"
    try:
        old = json.loads(plain.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return plain
    if isinstance(old, dict) and measured(old) == measured(record):
        return plain
    return folder / f"fid-{stem}-{hashlib.sha256(measured(record).encode()).hexdigest()[:8]}.json"


def _summary(scores: Scores, record: dict, network: FeatureNetwork, generated: ImageSet, reference, args) -> str:
    if scores.kid_mean is not None:
        kid = (f"KID {scores.kid_mean:.6f} +- {scores.kid_std:.6f} (mean and spread over {scores.kid_subsets} "
               f"subsets of {scores.kid_subset_size})")
    else:
        kid = "no KID (statistics hold no features)"
    if record["samples"] == "sampled":
        made = (f"{scores.n} samples of {args.run} ({record['sampler']}, {record['steps']} steps, {record['grid']} "
                f"grid, seed {record['seed']}, {args.weights} weights, model {record['model_hash'][:24]})")
    else:
        made = generated.description + "".join(f", {k} {generated.record[k]}" for k in ("sampler", "steps", "seed")
                                                if k in generated.record)
    if isinstance(reference, Statistics):
        ref = f"statistics in {args.ref}" + (f" of {reference.n} images" if reference.n else "")
    else:
        ref = reference.description
    shown = 0.0 if abs(scores.fid) < 5e-5 else scores.fid  # rounding leaves -0.0000 for identical statistics
    lines = [f"FID {shown:.4f}, {kid}",
             f"  generated: {made}",
             f"  reference: {ref}",
             f"  features:  {network.name}, F = {scores.feature_dim}"]
    world, count = generated.record.get("world_size"), generated.record.get("count")
    if world is not None and str(world).isdigit() and int(str(world)) > 1:
        lines.append(f"  note: {args.samples} is one shard of a sample set made by {world} ranks ({count} of "
                     f"{generated.record.get('n')} samples): score all of them together")
    maker = generated.record.get("model_hash", record["model_hash"])
    if maker != record["model_hash"]:
        lines.append(f"  note: the samples' record names model {maker[:24]}, not this one")
    if network.sha256 is not None and not network.standard:
        lines.append(f"  note: the weights' sha256 does not start with {INCEPTION_SHA256_PREFIX}, the prefix of the "
                     "standard FID Inception file: not comparable with published FIDs")
    if scores.n < scores.feature_dim:
        lines.append(f"  note: n = {scores.n} < F = {scores.feature_dim}: the covariance is singular and FID "
                     "strongly biased; compare only at equal n")
    lines.append("  comparable only with scores of the same reference, the same n and the same feature network")
    return "\n".join(lines)
