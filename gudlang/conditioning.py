"""Conditioning on known components: inpainting, outpainting, image extension, super-resolution.

A mask (D,) of *given* components says which whitened components are known; the rest are
generated. Two methods, named in every output:

    trained      the spec declares `given_i = ...`: the model was trained with the given
                 components held clean, and its network learned the conditional. Given
                 components have beta = 0 and gamma pinned at GIVEN_GAMMA (`GivenSchedule`),
                 their state is the known value itself, and the loss counts only the generated
                 components. Every sampler leaves components with beta = 0 unchanged, so
                 sampling from chi(1) = (known, noise) is exact conditional sampling up to the
                 sampler's discretisation (tested with the Gaussian oracle).
    replacement  zero-shot, for a model trained without the mask (Song et al. 2021): before
                 every network call at noise level gamma the known components of the state are
                 replaced by their forward-noised values alpha c + sigma z, z ~ N(0, I) fresh
                 at every call (on the Gaussian oracle fresh noise came 5-10% closer to the
                 conditional than one z per sample). An approximation: the generated
                 components see the joint score at a noised c, not the conditional score; on
                 strongly correlated Gaussian data it leaves a KL of several nats where the
                 trained conditional reaches the sampler's floor (tests/test_conditioning.py).

GIVEN_GAMMA = -30 (sigma = 3e-7) is the noise level a given component shows the network; it
lies below every schedule's clean end, so the network can tell given from generated.

Known values come from images in data space (`load_images`: PNG / JPEG, .npy, .npz, from
`gud sample --given FILE`; image files and uint8 arrays, such as `gud sample --format npz`
writes, are pixels mapped onto the data range), are encoded by the model's `Space`, and the
given components of the encoding are kept. A smaller image (super-resolution) is first
upsampled the way the basis makes exact: block replication for the wavelet and pixel bases (a
Haar coarse level is the block mean), spectral zero-padding for the DCT basis.

Image extension (`extend`): a spec whose given components are exactly a band of the first k
columns (rows) extends an image to the right (downwards) by a sliding window: generate the
other W - k columns conditioned on the last k known ones, append them, shift, repeat.

Errors (GudError):
    E680 a mask that gives every component or none
    E681 given images that cannot be used (unreadable, none, wrong size, layout or channels,
         out of range)
    E682 image extension with a mask that is not a band of leading columns or rows
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gudlang.diagnostics import GudError
from gudlang.space import noise_levels

CODES: dict[str, str] = {
    "E680": "a given mask that gives every component or none",
    "E681": "given images that cannot be used",
    "E682": "image extension needs a band of given columns or rows",
}

GIVEN_GAMMA = -30.0
# Known values in data space may overshoot the declared range by this fraction of its width
# (dequantised or resampled data) before they are refused.
RANGE_SLACK = 0.05


def check_mask(mask: np.ndarray) -> np.ndarray:
    """A bool (D,) mask that gives some components and generates others (E680 otherwise)."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    if mask.all() or not mask.any():
        what = "every component" if mask.all() else "no component"
        raise GudError.one("E680", f"the given mask selects {what} of {len(mask)}",
                           help="a mask must leave some components to generate and give some; "
                                "check the comparison's threshold")
    return mask


class GivenSchedule(nn.Module):
    """A schedule with the given components held clean: forward(t, params) -> (gamma, beta)
    with gamma = GIVEN_GAMMA and beta = 0 on the mask, the wrapped schedule elsewhere."""

    def __init__(self, schedule: nn.Module, mask):
        super().__init__()
        self.schedule = schedule
        self.drawn = getattr(schedule, "drawn", ())
        self.register_buffer("mask", torch.as_tensor(check_mask(mask)).reshape(1, -1))
        self.dim = self.mask.shape[1]

    def forward(self, t: torch.Tensor, params=None):
        gamma, beta = self.schedule(t) if params is None else self.schedule(t, params)
        return gamma.masked_fill(self.mask, GIVEN_GAMMA), beta.masked_fill(self.mask, 0.0)

    def gamma_and_slope(self, t: torch.Tensor, params=None):
        gamma, slope = self.schedule.gamma_and_slope(t, params)
        return gamma.masked_fill(self.mask, GIVEN_GAMMA), slope.masked_fill(self.mask, 0.0)


class ReplacementEpsModel(nn.Module):
    """Zero-shot conditioning by replacement: eps_model(x, t, gamma) evaluated at x with the
    masked components set to alpha c + sigma z, z fresh from `generator` at every call."""

    def __init__(self, eps_model: nn.Module, mask: torch.Tensor, known: torch.Tensor,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.eps_model, self.mask, self.known, self.generator = eps_model, mask, known, generator

    def forward(self, x: torch.Tensor, t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        alpha, sigma = noise_levels(gamma.to(x.dtype))
        z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        replaced = torch.where(self.mask, alpha * self.known.to(x.dtype) + sigma * z, x)
        return self.eps_model(replaced, t, gamma)


# --------------------------------------------------------------------------- known values
def load_images(path: str | Path, data) -> np.ndarray:
    """Images in data space (N, C, h, w) float64 for `data` (a DataSet: its shape, value range
    and levels) from an image file or an .npy array or .npz archive (key `x`, else its only
    image array). E681 for unreadable files, wrong layouts or channels and values out of range
    (`check_value_range`).

    Arrays hold (N, C, h, w), (C, h, w) or (h, w) values in data space, or channels last,
    (N, h, w, C) or (h, w, C), where only that reading has the model's C channels. uint8 arrays
    are 0..255 pixels, like `gud sample --format npz` writes (arr_0, N H W C): 0..255 maps onto
    the data range. Image files are read as the `images()` loader reads them
    (`readers.flat_image`: EXIF orientation applied, transparency on white, 16-bit and float
    pixels scaled, never clipped) and mapped onto the data range; 16-bit pixels are rounded to
    8 bits for data of at most 256 levels (as `images()` reads them), else kept at full depth."""
    path = Path(path)
    c = data.shape[0]
    if not path.is_file():
        raise GudError.one("E681", f"no such file: {path}", help="give an image, .npy or .npz file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".npz", ".npy"):
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    arr = _pick_array(archive, path)
            else:
                arr = np.load(path, allow_pickle=False)
            return images_from_array(arr, data, str(path), f"the values in {path}")
        if c not in (1, 3):
            raise GudError.one("E681", f"{path} is an image file, which holds grey or RGB pixels; the model's "
                                       f"images have {c} channels",
                               help=f"give them as an .npy / .npz array of (N, {c}, H, W) values")
        arr = _from_pixels(_read_image_file(path, c, data.levels), data, 1.0)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # corrupt or truncated
        raise GudError.one("E681", f"cannot read {path}: {e}", help="give an image, .npy or .npz file") from None
    except MemoryError:
        raise GudError.one("E681", f"{path} holds more than fits in memory",
                           help="give fewer or smaller images") from None
    if not np.isfinite(arr).all():
        raise GudError.one("E681", f"{path} holds NaN or infinite values")
    return arr


def images_from_array(arr: np.ndarray, data, source: str = "the array",
                      values: str = "the images' values") -> np.ndarray:
    """An array of images as (N, C, h, w) float64 in `data`'s space: the layouts of
    `_channels_first`, uint8 as 0..255 pixels mapped onto the data range, other numbers as data
    values (range-checked, `check_value_range`). E681 naming `source` otherwise (bool, complex
    or other non-numbers too), or for NaN."""
    if arr.dtype.kind not in "iuf":
        raise GudError.one("E681", f"{source} holds {arr.dtype} values, not real numbers",
                           help="give images as integer (uint8 pixels) or float values")
    pixels = arr.dtype == np.uint8
    arr = _channels_first(np.asarray(arr, dtype=np.float64), data.shape, source)
    if not np.isfinite(arr).all():
        raise GudError.one("E681", f"{source} holds NaN or infinite values")
    if pixels:
        return _from_pixels(arr, data, 255.0)
    check_value_range(arr, data, values)
    return arr


def _from_pixels(arr: np.ndarray, data, white: float) -> np.ndarray:
    """Pixels 0..white mapped onto `data`'s value range."""
    lo, hi = data.value_range
    return lo + (hi - lo) * arr / white


def _read_image_file(path: Path, c: int, levels: int | None) -> np.ndarray:
    """An image file's pixels (1, c, h, w) in 0..1 (c = 1 grey, else RGB), read by
    `readers.flat_image`; 16-bit and float pixels rounded to 8 bits when `levels` <= 256."""
    from PIL import Image, UnidentifiedImageError

    from gudlang.datasets.readers import flat_image, image_pixels
    mode = "L" if c == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image = flat_image(image, mode, path, code="E681")
            arr = image_pixels(image, mode).astype(np.float64) / 255.0
    except UnidentifiedImageError:
        raise GudError.one("E681", f"{path} is not an image PIL can read",
                           help="give a PNG or JPEG image, or an .npy / .npz array") from None
    except Image.DecompressionBombError as e:
        raise GudError.one("E681", f"{path} is too large to read ({e})",
                           help="give the images at the model's size") from None
    if image.mode == "F" and levels is not None and levels <= 256:
        arr = np.rint(arr * 255.0) / 255.0
    return arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]


def _channels_first(arr: np.ndarray, shape, path) -> np.ndarray:
    """An array of images as (N, C, h, w) for the model's `shape` (C, H, W): (N, C, h, w),
    (C, h, w) and (h, w) as they are, for C = 1 also (N, h, w), (N, h, w, C) and (h, w, C) transposed, where only one
    reading has C channels (or, for both, only one is H x W). E681 naming the problem
    otherwise (no images, empty or ambiguous images, wrong channels)."""
    c, height, width = shape
    shapes = f"(N, {c}, H, W), ({c}, H, W)" + (", (N, H, W) or (H, W)" if c == 1 else "")
    help = f"give {shapes} values in data space, or uint8 (N, H, W, {c}) pixels"
    given = arr.shape
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3 and c == 1 and given[0] != 1 and given[2] != 1:  # (N, h, w): a stack of grey images
        arr = arr[:, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise GudError.one("E681", f"{path} holds a {len(given)}-D array of shape {given}, not images",
                           help=help)
    if arr.shape[0] == 0:
        raise GudError.one("E681", f"{path} holds no images (an array of shape {given})", help=help)
    if arr.size == 0:
        raise GudError.one("E681", f"{path} holds empty images (an array of shape {given})", help=help)
    first, last = arr.shape[1] == c, arr.shape[3] == c
    if arr.shape[1:] == (1, 1, 1):  # one-pixel grey images: both readings are the same array
        return arr
    if first and last:  # (N, C, h, C): h x C images channels first, C x h channels last
        first, last = arr.shape[2:] == (height, width), arr.shape[1:3] == (height, width)
        if first == last:
            raise GudError.one("E681", f"{path} holds an array of shape {given}, which is either {arr.shape[2]} x "
                                       f"{arr.shape[3]} images channels first or {arr.shape[1]} x {arr.shape[2]} "
                                       f"images channels last, of {c} channel(s)",
                               help=f"give (N, {c}, H, W) values (x.transpose(0, 3, 1, 2) of channels-last x)")
    if last and not first:
        return arr.transpose(0, 3, 1, 2)
    if not first:
        batch = ""
        raise GudError.one("E681", f"{path} holds an array of shape {given}: images of {arr.shape[1]} channel(s) "
                                   f"if channels first, {arr.shape[3]} if channels last; the model's images "
                                   f"have {c} channel(s)", help=help + batch)
    return arr


def check_value_range(images: np.ndarray, data, what: str = "the images' values") -> None:
    """E681 when images (N, C, H, W) lie outside `data`'s value range by more than RANGE_SLACK
    of its width, or by more than its whole width for continuous data (no `levels`), whose
    range can be a display window (grf: +-4 standard deviations, which real samples pass);
    either way 0..255 pixels given for [-1, 1] data are refused."""
    lo, hi = data.value_range
    slack = (RANGE_SLACK if data.levels is not None else 1.0) * (hi - lo)
    low, high = float(images.min()), float(images.max())
    if low < lo - slack or high > hi + slack:
        raise GudError.one("E681", f"{what} lie in [{low:.3g}, {high:.3g}], outside the data range [{lo:g}, {hi:g}]",
                           help="give values in data space (as `gud sample` writes them), not 0..255 pixels")


def _pick_array(archive, path: Path) -> np.ndarray:
    if "x" in archive.files:
        return archive["x"]
    arrays = [k for k in archive.files if archive[k].ndim >= 2]
    if len(arrays) != 1:
        raise GudError.one("E681", f"{path} holds {len(arrays)} image arrays ({', '.join(archive.files)})",
                           help="store the images under the key `x`")
    return archive[arrays[0]]


def upsample(images: np.ndarray, shape, basis_kind: str) -> np.ndarray:
    """Images (N, C, h, w) brought to the model's (C, H, W): unchanged at full size, else
    upsampled by an integer factor the way `basis_kind` makes exact (module docstring)."""
    n, c, h, w = images.shape
    _, height, width = shape
    if (h, w) == (height, width):
        return images
    if height % h or width % w or height // h != width // w:
        raise GudError.one("E681", f"a given image of {h} x {w} does not scale to the model's {height} x {width}",
                           help="give full-size images, or smaller ones by one integer factor in both axes")
    factor = height // h
    if basis_kind in ("wavelet", "pixel"):
        return images.repeat(factor, axis=2).repeat(factor, axis=3)
    if basis_kind == "dct":
        from scipy.fft import dctn, idctn
        coeffs = dctn(images, type=2, norm="ortho", axes=(2, 3))
        padded = np.zeros((n, c, height, width))
        padded[:, :, :h, :w] = coeffs * factor  # orthonormal: energy per pixel kept
        return idctn(padded, type=2, norm="ortho", axes=(2, 3))
    raise GudError.one("E681", f"a smaller given image (super-resolution) needs a wavelet, dct or pixel basis, "
                               f"not {basis_kind}", help=f"give full-size {height} x {width} images")


# --------------------------------------------------------------------------- sampling
def complete(eps_model, schedule, space, mask: np.ndarray, known_images: np.ndarray, *, method: str,
             sampler: str, steps: int, device, dtype, seed: int, trained_mask: np.ndarray | None = None,
             options: dict | None = None, noise: torch.Tensor | None = None) -> tuple[np.ndarray, int]:
    """Fill in the generated components of `known_images` (N, C, H, W) in data space.

    `schedule` is the model's compiled schedule; `trained_mask` its spec's given mask (held
    clean by `GivenSchedule`); `mask` the components known now, a superset of it. With
    method = "replacement" the known components outside `trained_mask` are conditioned on by
    replacement. `noise` (N, D): the generated components' start at t = 1 (default: drawn from
    the generator of `seed`, which draws the sampler's and the replacement's noise). Returns
    the completed images (N, C, H, W) float32 and the network calls."""
    from gudlang.samplers import sample
    mask = check_mask(mask)
    if trained_mask is not None and (trained_mask & ~mask).any():
        raise GudError.one("E680", "the mask must keep every component the model was trained to be given",
                           help="add the spec's own given_i to the mask with `or`")
    gen = torch.Generator(device=device).manual_seed(seed)
    space = space.to(device)
    with torch.no_grad():
        known = space.encode(torch.as_tensor(known_images, dtype=torch.float64, device=device)).to(dtype)
    mask_t = torch.as_tensor(mask, device=device)
    if trained_mask is not None:
        schedule = GivenSchedule(schedule, trained_mask)
    schedule = schedule.to(device)
    if noise is None:
        noise = torch.randn(known.shape, generator=gen, dtype=dtype, device=device)
    elif noise.shape != known.shape:
        raise GudError.one("E651", f"the start noise has shape {tuple(noise.shape)}, the images' components "
                                   f"{tuple(known.shape)}")
    noise = noise.to(dtype=dtype, device=device)
    if method == "replacement":
        replaced = mask_t if trained_mask is None else mask_t & ~torch.as_tensor(trained_mask, device=device)
        eps_model = ReplacementEpsModel(eps_model, replaced, known, gen)
    start = torch.where(mask_t, known, noise)
    result = sample(sampler, eps_model, schedule, start, steps, generator=gen, **(options or {}))
    chi = torch.where(mask_t, known, result.x0.to(dtype))
    with torch.no_grad():
        return space.decode(chi.double()).float().cpu().numpy(), result.nfe


def shown_known(space, mask: np.ndarray, known_images: np.ndarray) -> np.ndarray:
    """What the given components alone show: the images decoded with the generated components
    at zero (the data mean there), for grids beside the completions."""
    device = space.mean.device
    with torch.no_grad():
        chi = space.encode(torch.as_tensor(known_images, dtype=torch.float64, device=device))
        chi = chi * torch.as_tensor(mask, dtype=torch.float64, device=device)
        return space.decode(chi).float().cpu().numpy()


# --------------------------------------------------------------------------- extension
def extension_band(space, mask: np.ndarray, axis: str) -> int:
    """k such that the given components are exactly the first k columns (axis = "columns")
    or rows (axis = "rows") of the image: every given basis vector lives there and together
    they span it. E682 otherwise."""
    c, h, w = space.shape
    mask = np.asarray(mask, dtype=bool)
    eye = torch.eye(space.dim, dtype=torch.float64)[torch.as_tensor(mask)]
    with torch.no_grad():
        vectors = space.basis.inverse(eye).abs().numpy()  # given basis vectors as images
    support = vectors.max(axis=(0, 1, 2 if axis == "columns" else 3)) > 1e-9
    lines = w if axis == "columns" else h
    k = int(support.sum())
    per_line = c * (h if axis == "columns" else w)
    if not (support[:k].all() and k < lines and mask.sum() == k * per_line):
        raise GudError.one("E682", f"the given components are not a band of leading {axis}: extension "
                                   f"needs given_i to be exactly the first k {axis} (e.g. "
                                   f"given_i = {'col' if axis == 'columns' else 'row'}(i) < 0.5)",
                           help="train a spec whose given mask is such a band, in the pixel basis")
    return k


def extend(images: np.ndarray, count: int, axis: str, k: int, size: int, fill) -> tuple[np.ndarray, int]:
    """Extend images (N, C, H, W0) by `count` columns (rows) with a sliding window of the
    model's width (height) `size`: `fill(window (N, C, H, W) with its first k columns known) ->
    (completed window, network calls)`. Returns (N, C, H, W0 + count) (or H0 + count rows)
    and the calls."""
    along = 3 if axis == "columns" else 2
    if images.shape[along] < k:
        raise GudError.one("E681", f"the image has {images.shape[along]} {axis}; extension starts from the "
                                   f"last {k} (the given band)", help=f"give an image with at least {k} {axis}")
    steps = math.ceil(count / (size - k))
    start = images.shape[along]
    shape = list(images.shape)
    shape[along] = start + steps * (size - k)
    canvas = np.empty(shape)  # filled in place: appending copied the whole canvas per window

    def band(lo: int, hi: int) -> tuple:
        index = [slice(None)] * 4
        index[along] = slice(lo, hi)
        return tuple(index)

    canvas[band(0, start)] = images
    calls, end = 0, start
    for _ in range(steps):
        window = np.zeros(images.shape[:along] + (size,) + images.shape[along + 1:])
        window[band(0, k)] = canvas[band(end - k, end)]
        done, nfe = fill(window)
        calls += nfe
        canvas[band(end, end + size - k)] = done[band(k, size)]
        end += size - k
    return canvas[band(0, start + count)], calls
