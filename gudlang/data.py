"""Data sources: the images a spec is trained and evaluated on.

Input: a source kind and its arguments, e.g. `load_data("digits")` or
`load_data("npz", path="faces.npz", range=None)`.
Output: a `DataSet` with float32 arrays `train` and `test` of shape (N, C, H, W), the value
range (for display), the number of discrete levels per value (for dequantisation; None for
continuous data), the arguments (`params`) and `fingerprint`, the sha256 "data identity"
that goes into the spec hash.

Sources (each a function with checked arguments; `load_data` dispatches by kind):
    digits   scikit-learn's 8x8 digits, bundled: values 0..16 -> x / 16 * 2 - 1, 17 levels
    grf      stationary periodic Gaussian random fields with a power-law spectrum; their
             mean and covariance are known exactly, which makes them the test oracle
    npz      one array of a .npz (or .npy) file
    images   a folder of PNG / JPEG / TIFF images (with recursive = true its subfolders too,
             symlinked ones included), resized and center-cropped; the decoded images
             are cached (see `gudlang.datasets.readers`: `$GUDLANG_CACHE/images`), which
             changes nothing in the DataSet, only the time it takes to load
    dataset  MNIST / FashionMNIST (IDX files) and CIFAR-10 (binary or python version) from
             a folder

Nothing is downloaded, and a data file never runs code: arrays load with
allow_pickle=False, and CIFAR-10's python batches are unpickled by a loader that builds
only numpy arrays, lists, dicts, strings and numbers. The train / test split is a seeded
permutation (`test_fraction`, `seed`); `dataset` keeps the official split. 8-bit sources
map 0..255 to [-1, 1] with 256 levels.

Errors (GudError, raised before any training):
    E400 invalid source argument (unknown kind or dataset name, wrong type or value)
    E401 file or folder not found (for `dataset`: which files to put where), a file where a
         folder is needed, an image that is a broken symbolic link
    E402 unreadable or corrupt file (for `npz` a folder, or a file that is neither .npz nor
         .npy, or a zip archive without .npy members; bad image, a multi-page TIFF stack,
         image files of formats `images` does not read (BMP, GIF, WebP, ...: never silently
         left out), bad or truncated IDX / CIFAR file, a header declaring more data than the
         file holds, a CIFAR-10 python batch that is not a dict of uint8 (N, 3072) b"data"
         and N b"labels", or that refers to anything but numpy's array reconstruction), or
         an array larger than memory
    E403 array key missing from an npz file, or ambiguous
    E404 wrong shape or dtype (ndim, declared shape, object / ragged arrays, a layout that
         `auto` cannot tell)
    E405 NaN or infinite values, or values beyond float32 (which become infinite)
    E406 values outside the declared range, or off the declared levels
    E407 no data (empty folder, array, IDX file or CIFAR-10 batch, too few samples to split)
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .datasets.readers import (CIFAR_PYTHON_URL, CIFAR_URL, IMAGE_SUFFIXES, find_file, read_cifar_batch,
                               read_cifar_python_batch, read_idx_images, read_images,
                               read_npz_array)
from .diagnostics import GudError

FINGERPRINT_SCHEME = "gudlang-data-v1"
# Arguments that say where the data lives, not what it is: moving a file keeps its identity.
_LOCATION_PARAMS = ("path", "folder", "root")
# Image files of other formats (or other JPEG suffixes), which `images` does not read: a
# folder holding any is refused rather than silently loaded without them.
OTHER_IMAGE_SUFFIXES = (".bmp", ".dib", ".gif", ".webp", ".jfif", ".jpe", ".ppm", ".pgm",
                        ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".jxl", ".heic", ".heif",
                        ".avif")
# Relative slack (of hi - lo) allowed outside a declared range, for rounding in saved floats.
RANGE_TOLERANCE = 1e-3
# How far (in level steps) a value declared `levels` may sit off its level: float32 rounding.
LEVEL_TOLERANCE = 0.01
_LEVEL_CHUNK = 1 << 22  # values checked at once (float64 temporaries of 32 MB)
_GRF_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class DataSet:
    """Train and test images of one source, with their identity and display metadata.

    `mean` (C, H, W) float64 and `spectrum` (H, W) float64 are set for Gaussian sources
    (grf): `spectrum[k]` is the variance of Fourier mode k of each channel (channels are
    independent), which gives the exact covariance `cov`.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    shape: tuple[int, int, int]
    params: dict
    fingerprint: str
    value_range: tuple[float, float]
    levels: int | None
    mean: np.ndarray | None = None
    spectrum: np.ndarray | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """D = C * H * W."""
        return int(np.prod(self.shape))

    @property
    def cov(self) -> np.ndarray | None:
        """Exact (D, D) float64 covariance of a Gaussian source, in (C, H, W) order; else None."""
        if self.spectrum is None:
            return None
        return _circulant_covariance(self.spectrum, self.shape[0])

    def describe(self) -> str:
        """One-line summary."""
        lo, hi = self.value_range
        levels = f"{self.levels} levels" if self.levels is not None else "continuous"
        return (f"{self.name}: {len(self.train)} train + {len(self.test)} test of shape "
                f"{self.shape}, values in [{lo:g}, {hi:g}], {levels}, "
                f"fingerprint {self.fingerprint[:12]}")


def fingerprint(train: np.ndarray, test: np.ndarray, params: dict,
                value_range: tuple[float, float], levels: int | None) -> str:
    """sha256 over the scheme tag, the content-defining params, shapes, dtype and array bytes."""
    header = {
        "scheme": FINGERPRINT_SCHEME,
        "params": {k: v for k, v in params.items() if k not in _LOCATION_PARAMS},
        "train_shape": list(train.shape),
        "test_shape": list(test.shape),
        "dtype": "<f4",
        "value_range": [float(v) for v in value_range],
        "levels": levels,
    }
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for a in (train, test):
        h.update(b"\0")
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()


def _dataset(name: str, train: np.ndarray, test: np.ndarray, params: dict,
             value_range: tuple[float, float], levels: int | None, *,
             mean: np.ndarray | None = None, spectrum: np.ndarray | None = None) -> DataSet:
    train = np.ascontiguousarray(train, dtype=np.float32)
    test = np.ascontiguousarray(test, dtype=np.float32)
    value_range = (float(value_range[0]), float(value_range[1]))
    return DataSet(name=name, train=train, test=test, shape=tuple(int(s) for s in train.shape[1:]),
                   params=params, fingerprint=fingerprint(train, test, params, value_range, levels),
                   value_range=value_range, levels=levels, mean=mean, spectrum=spectrum)


# ----------------------------------------------------------------------------- arguments

def _bad_arg(message: str, help: str | None = None) -> GudError:
    return GudError.one("E400", message, help=help)


def _got(value) -> str:
    """The value in a message; a bool says it is one (True is also the integer 1)."""
    if isinstance(value, (bool, np.bool_)):
        return f"{value!r}, a boolean (true / false)"
    return repr(value)


def _int_arg(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise _bad_arg(f"`{name}` must be an integer >= {lo}, got {_got(value)}")
    return int(value)


def _float_arg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or isinstance(value, np.bool_) or not np.isfinite(value):
        raise _bad_arg(f"`{name}` must be a finite number, got {_got(value)}")
    return float(value)


def _split_args(test_fraction, seed) -> tuple[float, int]:
    f = _float_arg("test_fraction", test_fraction)
    if not 0.0 <= f < 1.0:
        raise _bad_arg(f"`test_fraction` must be in [0, 1), got {test_fraction!r}",
                       help="e.g. test_fraction=0.1 keeps 10% of the samples for testing")
    return f, _int_arg("seed", seed, lo=0)


def _path_arg(name: str, value) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise _bad_arg(f"`{name}` must be a path, got {value!r}")
    return Path(value)


def _range_arg(value) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise _bad_arg(f"`range` must be a pair (lo, hi) or None, got {value!r}")
    lo, hi = _float_arg("range[0]", value[0]), _float_arg("range[1]", value[1])
    if not lo < hi:
        raise _bad_arg(f"`range` must have lo < hi, got {value!r}")
    return lo, hi


def _hw_arg(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return _int_arg("size[0]", size[0]), _int_arg("size[1]", size[1])
    if isinstance(size, (tuple, list)):
        raise _bad_arg(f"`size` must be an integer or a pair (H, W), got {size!r}")
    s = _int_arg("size", size)
    return s, s


def _choice_arg(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _bad_arg(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- shared steps

def split(x: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split: a permutation by `seed`; its first round(N * test_fraction) are the test set.

    Both parts keep the source order, so the result depends only on (N, test_fraction, seed).
    """
    n = len(x)
    n_test = int(round(n * test_fraction))
    if n - n_test < 1:
        raise GudError.one("E407", f"{n} sample(s) leave no training data with "
                                   f"test_fraction={test_fraction}",
                           help="provide more samples or lower test_fraction")
    order = np.random.default_rng(seed).permutation(n)
    return x[np.sort(order[n_test:])], x[np.sort(order[:n_test])]


def _from_levels(x: np.ndarray, top: int) -> np.ndarray:
    """Map integers 0..top to [-1, 1] (x / top * 2 - 1) in float32."""
    return x.astype(np.float32) / np.float32(top) * np.float32(2) - np.float32(1)


def _check_finite(x: np.ndarray, what: str) -> None:
    """Raise E405 if a float array has NaN / infinite values, or finite ones beyond float32.

    The data are used as float32, so a float64 1e300 is as bad as an inf: it becomes one.
    """
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))
        raise GudError.one("E405", f"{what} has {count} NaN or infinite value(s); the first at "
                                   f"index {first} is {x[first]}",
                           help="remove or repair those samples before training")
    if x.dtype.itemsize > 4:
        with np.errstate(over="ignore"):
            big = np.isinf(x.astype(np.float32))  # all finite so far: these overflowed
        count = int(big.sum())
        if count:
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(big)), x.shape))
            raise GudError.one(
                "E405", f"{what} has {count} value(s) beyond the float32 range "
                        f"(|x| > {np.finfo(np.float32).max:.4g}), which become infinite when "
                        f"the data are cast to float32; the first at index {first} is {x[first]}",
                help="rescale the data (e.g. to [-1, 1]) or remove those samples")


def _check_range(x: np.ndarray, bounds: tuple[float, float], what: str,
                 integer: bool = False) -> None:
    """E406 if `x` (from an `integer` array or not) leaves `bounds`, beyond rounding slack."""
    lo, hi = bounds
    slack = RANGE_TOLERANCE * (hi - lo)
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - slack or x_max > hi + slack:
        help = (f"rescale the data to [{lo:g}, {hi:g}], declare the range it has "
                f"(range = [{x_min:g}, {x_max:g}]), or pass range = none to skip the check")
        if integer and 0 <= x_min and x_max <= 255:
            # Only uint8 pixels are mapped to [-1, 1]; int64 ones (np.array of a list) are
            # used as they are, 0..255, unless saved as uint8.
            help = ("pixels 0..255 map to [-1, 1] with 256 levels when saved as uint8 "
                    "(numpy: x.astype(np.uint8)); or declare range = [0, 255] to use them "
                    "unscaled")
        raise GudError.one(
            "E406", f"{what} has values in [{x_min:g}, {x_max:g}], outside the declared "
                    f"range [{lo:g}, {hi:g}]", help=help)


def _check_levels(x: np.ndarray, value_range: tuple[float, float], levels: int,
                  what: str) -> None:
    """Raise E406 unless every value sits on one of the `levels` levels lo + k (hi - lo) /
    (levels - 1) that the likelihood assumes (`gudlang.likelihood`), within LEVEL_TOLERANCE
    of a level step."""
    lo, hi = value_range
    step = (hi - lo) / (levels - 1)
    if not step > 0:
        raise GudError.one("E406", f"{what} has a single value, {lo:g}, which cannot hold "
                                   f"levels={levels}", help="declare range = [lo, hi]")
    # plus the float32 rounding of the largest value, in steps
    slack = LEVEL_TOLERANCE + float(np.spacing(np.float32(max(abs(lo), abs(hi))))) / step
    rows = max(1, _LEVEL_CHUNK // max(1, x[0].size))
    for start in range(0, len(x), rows):
        k = (x[start:start + rows].astype(np.float64) - lo) / step
        off = np.abs(k - np.rint(k))
        worst = int(np.argmax(off))
        if off.flat[worst] > slack:
            break
    else:
        return
    first = tuple(int(i) for i in np.unravel_index(worst, off.shape))
    first = (first[0] + start,) + first[1:]
    raise GudError.one(
        "E406", f"{what} has values between the {levels} levels of [{lo:g}, {hi:g}] (steps "
                f"of {step:.6g}) that levels={levels} declares; e.g. {float(x[first]):.6g} "
                f"at index {first} (N, C, H, W) is {float(off.flat[worst]):.2f} steps off a "
                "level",
        help="declare the range the levels span (range = [lo, hi], the first and last "
             "level) and their number, or drop `levels` for continuous data")


# ----------------------------------------------------------------------------- digits

def digits(test_fraction: float = 0.1, seed: int = 0) -> DataSet:
    """scikit-learn's 1,797 handwritten 8x8 digits (bundled), shape (1, 8, 8), 17 levels."""
    test_fraction, seed = _split_args(test_fraction, seed)
    resource = importlib.resources.files("gudlang.datasets") / "digits.npz"
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npzfile:
        x = npzfile["x"]
    train, test = split(_from_levels(x[:, None], 16), test_fraction, seed)
    params = {"test_fraction": test_fraction, "seed": seed}
    return _dataset("digits", train, test, params, (-1.0, 1.0), 17)


# ----------------------------------------------------------------------------- grf

def grf_spectrum(size: int, slope: float) -> np.ndarray:
    """(size, size) float64 power of each Fourier mode, normalised to mean 1.

    P(k) = (|k|^2 + 1)^(-slope / 2) with k the integer wave vector (numpy's fftfreq * size):
    the +1 keeps the constant mode finite. The per-pixel variance of the field is mean(P),
    so normalising to mean 1 makes it exactly 1.
    """
    k = np.fft.fftfreq(size, d=1.0 / size)
    power = (k[:, None] ** 2 + k[None, :] ** 2 + 1.0) ** (-slope / 2.0)
    return power / power.mean()


def _circulant_covariance(spectrum: np.ndarray, channels: int) -> np.ndarray:
    """Covariance of a stationary periodic field with this spectrum, channels independent.

    Cov[(y1, x1), (y2, x2)] = c((y1 - y2) mod H, (x1 - x2) mod W), c = inverse DFT of P
    (Wiener-Khinchin); the blocks of the C channels sit on the diagonal.
    """
    h, w = spectrum.shape
    c = np.fft.ifft2(spectrum).real
    y, x = np.divmod(np.arange(h * w), w)
    block = c[(y[:, None] - y[None, :]) % h, (x[:, None] - x[None, :]) % w]
    block = (block + block.T) / 2  # exact symmetry; the FFT leaves rounding-level asymmetry
    return np.kron(np.eye(channels), block)


def grf_covariance(size: int, slope: float, channels: int = 1) -> np.ndarray:
    """Exact (D, D) float64 covariance of `grf(size, slope, channels=channels)`, D = C * size^2."""
    size, channels = _int_arg("size", size), _int_arg("channels", channels)
    return _circulant_covariance(grf_spectrum(size, _slope_arg(slope)), channels)


def _slope_arg(value) -> float:
    slope = _float_arg("slope", value)
    if slope < 0:
        raise _bad_arg(f"`slope` must be >= 0, got {slope}",
                       help="slope=0 gives white noise; larger slopes give smoother fields")
    return slope


def grf(size: int = 8, slope: float = 2.0, n: int = 2000, channels: int = 1, seed: int = 0,
        test_fraction: float = 0.1) -> DataSet:
    """`n` periodic Gaussian random fields (channels, size, size), mean 0, spectrum `grf_spectrum`.

    Each channel is white noise filtered by sqrt(P) in Fourier space, so its covariance is
    exactly `grf_covariance`. Generated in float64 from numpy's PCG64 (`seed`), then cast to
    float32. `value_range` is (-4, 4), a display window of +-4 standard deviations.
    """
    size, n, channels = _int_arg("size", size), _int_arg("n", n), _int_arg("channels", channels)
    slope = _slope_arg(slope)
    test_fraction, seed = _split_args(test_fraction, seed)
    spectrum = grf_spectrum(size, slope)
    amplitude = np.sqrt(spectrum)[:, : size // 2 + 1]  # the rfft half-plane
    rng = np.random.default_rng(seed)
    chunks = []
    # Chunks bound the memory; the random stream, and so the samples, do not depend on them.
    for start in range(0, n, _GRF_CHUNK):
        white = rng.standard_normal((min(_GRF_CHUNK, n - start), channels, size, size))
        fields = np.fft.irfft2(amplitude * np.fft.rfft2(white), s=(size, size))
        # Casting to float32 also absorbs last-bit FFT differences between machines, which
        # keeps the fingerprint stable (bar a rounding tie, vanishingly rare).
        chunks.append(fields.astype(np.float32))
    train, test = split(np.concatenate(chunks), test_fraction, seed)
    params = {"size": size, "slope": slope, "n": n, "channels": channels, "seed": seed,
              "test_fraction": test_fraction}
    return _dataset("grf", train, test, params, (-4.0, 4.0), None,
                    mean=np.zeros((channels, size, size)), spectrum=spectrum)


# ----------------------------------------------------------------------------- npz

def _channels_last(shape: tuple[int, ...], layout: str, declared: tuple[int, ...] | None,
                   what: str) -> bool:
    """Whether a 4-D array is (N, H, W, C); `auto` uses the declared shape if given."""
    first, last = tuple(shape[1:]), (shape[3], shape[1], shape[2])
    if layout != "auto":
        return layout == "channels_last"
    if declared is not None:
        if declared not in (first, last):
            raise GudError.one("E404", f"{what} has shape {tuple(shape)}, which is neither "
                                       f"(N, {declared[0]}, {declared[1]}, {declared[2]}) nor "
                                       f"(N, {declared[1]}, {declared[2]}, {declared[0]}), as "
                                       f"declared by shape={declared}",
                               help="declare the shape the data has, or fix the data")
        return declared != first
    channel_sizes = (1, 2, 3, 4)  # grey, two-channel (what `gud sample --format npz` writes for it), RGB, RGBA
    if shape[3] > 4 and shape[1] > shape[3]:
        # Neither axis is channel-sized, and channels first would make more channels than the
        # image is wide, e.g. 13-band (N, 64, 64, 13) images read as 64 channels of 64 x 13.
        raise GudError.one("E404", f"{what} has shape {tuple(shape)}: as (N, C, H, W) that is "
                                   f"{shape[1]} channels of {shape[2]}x{shape[3]}, as (N, H, W, C) "
                                   f"{shape[3]} channels of {shape[1]}x{shape[2]}; which is meant "
                                   "cannot be told",
                           help='set layout = "channels_last" or "channels_first", or declare '
                                "shape = [C, H, W]")
    # A channel-sized last axis means channels-last, unless axis 1 is channel-sized too
    # and the trailing two axes look like a square image.
    return shape[3] in channel_sizes and (shape[1] not in channel_sizes
                                          or shape[1] == shape[2] != shape[3])


def _check_array_file(path: Path) -> None:
    """Raise E402 if `path` is a folder, or a file np.load would not read as an array: one
    that starts neither like a zip archive (.npz) nor like a .npy file. Missing or unreadable
    files are left to `read_npz_array`."""
    if path.is_dir():
        try:
            inside = sorted(p.name for p in path.iterdir() if p.is_file())
        except OSError:
            inside = []  # unlistable: the folder is still no file
        arrays = [n for n in inside if n.lower().endswith((".npz", ".npy"))]
        pictures = [n for n in inside if n.lower().endswith(IMAGE_SUFFIXES)]
        if arrays:
            hint = f"name one of its array files, e.g. npz(\"{(path / arrays[0]).as_posix()}\")"
        elif pictures:
            hint = (f"it holds PNG / JPEG / TIFF images: load them with images(\"{path.as_posix()}\") "
                    "instead")
        else:
            hint = "give the path of the file numpy.savez wrote"
        raise GudError.one("E402", f"{path} is a folder, but npz() needs an .npz file (or a "
                                   ".npy file)", help=hint)
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", np.lib.format.MAGIC_PREFIX)):
        return
    if not head:
        found = "it is empty"
    elif head[0] == 0x80 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        found = "it looks like a Python pickle, which is never loaded"
    elif _is_text(head):
        found = f"it looks like a text file, starting {head[:24].decode('utf-8', 'replace')!r}"
    else:
        found = f"its first bytes are {head[:8].hex(' ')}"
    raise GudError.one("E402", f"{path} is not a readable .npz archive (the zip file "
                               f"numpy.savez writes) or .npy file (numpy.save): {found}",
                       help='save the images with numpy.savez("file.npz", x=images), an '
                            "(N, H, W) or (N, C, H, W) array; a folder of PNG / JPEG images "
                            "loads with images(folder)")


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as text (UTF-8 without control characters)."""
    text = head.decode("utf-8", "ignore")  # a multi-byte character may be cut at the end
    return len(text) >= len(head) - 3 and all(c.isprintable() or c in "\t\r\n" for c in text)


def npz(path, key: str | None = None, layout: str = "auto",
        shape: tuple[int, int, int] | None = None, range: tuple[float, float] | None = (-1, 1),
        levels: int | None = None, test_fraction: float = 0.1, seed: int = 0) -> DataSet:
    """One array of a .npz / .npy file: (N, H, W) (C = 1) or (N, C, H, W) / (N, H, W, C).

    `key=None` takes the only array. uint8 data map 0..255 to [-1, 1] with 256 levels; other
    real data are used as they are and checked against `range` (None: no check).
    `layout="auto"` reads a last axis of size 1 to 4 as channels, unless axis 1 is that small
    too (then channels first, but for a square image behind it); a last axis above 4 means
    channels first, unless it is smaller than axis 1 (ambiguous: E404); "channels_first" /
    "channels_last", or the declared `shape`, decide it instead. `levels` (float data) must
    match the values: each on one of `levels` even steps from the range's lo to hi (E406).
    """
    path = _path_arg("path", path)
    if key is not None and not isinstance(key, str):
        raise _bad_arg(f"`key` must be a string or None, got {key!r}")
    layout = _choice_arg("layout", layout, ("auto", "channels_first", "channels_last"))
    if shape is not None:
        if not isinstance(shape, (tuple, list)) or len(shape) != 3:
            raise _bad_arg(f"`shape` must be (C, H, W), got {shape!r}")
        shape = tuple(_int_arg(f"shape[{i}]", s) for i, s in enumerate(shape))
    bounds = _range_arg(range)
    if levels is not None:
        levels = _int_arg("levels", levels, lo=2)
    test_fraction, seed = _split_args(test_fraction, seed)

    _check_array_file(path)
    x, what = read_npz_array(path, key)
    if x.dtype.kind not in "uif":
        raise GudError.one("E404", f"{what} has dtype {x.dtype}, not a real number type",
                           help="save the images as uint8 (0..255) or float arrays")
    if x.ndim not in (3, 4):
        raise GudError.one("E404", f"{what} has shape {x.shape} ({x.ndim}-D); expected "
                                   "(N, H, W), (N, C, H, W) or (N, H, W, C)",
                           help="a single image needs a leading sample axis: x[None]")
    if x.shape[0] == 0 or x.size == 0:
        raise GudError.one("E407", f"{what} is empty (shape {x.shape})")
    if x.dtype.kind == "f":
        _check_finite(x, what)
    if x.ndim == 3:
        x = x[:, None]
    elif _channels_last(x.shape, layout, shape, what):
        x = x.transpose(0, 3, 1, 2)
    if shape is not None and x.shape[1:] != shape:
        raise GudError.one("E404", f"{what} has images of shape {x.shape[1:]} (C, H, W), but "
                                   f"shape={shape} was declared",
                           help="declare the shape the data has, or set layout= explicitly")

    if x.dtype == np.uint8:
        if levels not in (None, 256):
            raise _bad_arg(f"{what} is uint8, which has 256 levels, not levels={levels}")
        x, value_range, levels = _from_levels(x, 255), (-1.0, 1.0), 256
    else:
        integer = x.dtype.kind in "iu"
        x = x.astype(np.float32)
        if bounds is not None:
            _check_range(x, bounds, what, integer)
        value_range = bounds if bounds is not None else (float(x.min()), float(x.max()))
        if levels is not None:
            _check_levels(x, value_range, levels, what)
    train, test = split(x, test_fraction, seed)
    params = {"path": str(path), "key": key, "layout": layout, "shape": shape, "range": bounds,
              "levels": levels, "test_fraction": test_fraction, "seed": seed}
    return _dataset(path.stem, train, test, params, value_range, levels)


# ----------------------------------------------------------------------------- images

def images(folder, size: int | tuple[int, int] = 32, channels: int = 3, recursive: bool = False,
           test_fraction: float = 0.1, seed: int = 0, *, use_cache: bool = True) -> DataSet:
    """The PNG / JPEG / TIFF images of a folder (sorted by path; `recursive`: and of its
    subfolders, `image_files`), as RGB (3) or grey (1), 256 levels.

    Each image's shorter side is resized (bicubic) to fit `size`, then it is center-cropped.
    The decoded images come from the cache when no file changed (`use_cache=False`: always
    decode); either way the DataSet is the same.
    """
    root = _path_arg("folder", folder)
    hw = _hw_arg(size)
    if isinstance(channels, (bool, np.bool_)) or not isinstance(channels, (int, np.integer)) \
            or channels not in (1, 3):
        raise _bad_arg(f"`channels` must be 1 (grey) or 3 (RGB), got {_got(channels)}")
    channels = int(channels)
    if not isinstance(recursive, (bool, np.bool_)):
        raise _bad_arg(f"`recursive` must be true or false, got {recursive!r}")
    recursive = bool(recursive)
    test_fraction, seed = _split_args(test_fraction, seed)
    if not root.is_dir():
        raise _not_a_folder(root, "image folder", "images() needs a folder of PNG / JPEG / TIFF "
                            "images", "check the path (relative paths start at the working "
                            "directory)", "give the folder that holds the images (unpack an "
                            "archive first); one .npz / .npy array loads with npz(path)")
    files = image_files(root, recursive)
    if not files:
        raise GudError.one("E407", f"no PNG, JPEG or TIFF images in {root}",
                           help=None if recursive else "images(..., recursive = true) also searches its subfolders")
    mode = "RGB" if channels == 3 else "L"
    x = read_images(root, files, mode, hw, recursive=recursive, use_cache=use_cache)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    train, test = split(_from_levels(x, 255), test_fraction, seed)
    params = {"folder": str(root), "size": list(hw), "channels": channels, "recursive": recursive,
              "test_fraction": test_fraction, "seed": seed}
    return _dataset(root.name or "images", train, test, params, (-1.0, 1.0), 256)


def _not_a_folder(path: Path, what: str, needs: str, help: str, file_help: str) -> GudError:
    """E401 for a folder argument that is missing (`help`), or a file (`file_help`), such as
    the archive the data came in, which "not found" would misdescribe."""
    if path.is_file():
        return GudError.one("E401", f"{what} {path} is a file, not a folder: {needs}",
                            help=file_help)
    return GudError.one("E401", f"{what} {path} not found", help=help)


def image_files(root: Path, recursive: bool) -> list[Path]:
    """The image files of `root` (with `recursive`, of its subfolders too, symlinked ones
    included, each real folder once: a link back up does not loop), sorted by their path below
    `root`. E401 for an image that is a broken link, E402 for image files of formats `images`
    does not read (`OTHER_IMAGE_SUFFIXES`): the data would silently lack them."""
    if not recursive:
        found = [p for p in root.iterdir() if not p.is_dir()]
    else:
        found, seen = [], set()
        for folder, subfolders, names in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            found.extend(p for p in (Path(folder) / name for name in names) if not p.is_dir())
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    broken = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and not p.exists()]
    if broken:
        raise GudError.one("E401", f"image {broken[0]} is a broken symbolic link (to "
                                   f"{os.readlink(broken[0])})"
                                   + (f", and {len(broken) - 1} more" if len(broken) > 1 else ""),
                           help="restore what it points to, or remove the link")
    other = [p for p in found if p.suffix.lower() in OTHER_IMAGE_SUFFIXES and p.is_file()]
    if other:
        names = ", ".join(p.relative_to(root).as_posix() for p in other[:5])
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        raise GudError.one("E402", f"{root} holds {len(other)} image file(s) that images() does "
                                   f"not read ({names}{more}); they would be left out of the data",
                           help="images() reads PNG (.png), JPEG (.jpg, .jpeg) and TIFF (.tif, "
                                ".tiff): convert those files to PNG, or move them out of the "
                                "folder")
    return [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


# ----------------------------------------------------------------------------- dataset

_IDX_SOURCES = {
    "mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision's mirror; "
                       "yann.lecun.com often refuses downloads)"),
    "fashion_mnist": ("FashionMNIST", "https://github.com/zalandoresearch/fashion-mnist "
                                      "(folder data/fashion)"),
}
_IDX_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
# (version, folder, file suffix, reader, where to get it), in the order they are looked for:
# the binary version first, as it needs no unpickling at all.
_CIFAR_VERSIONS = (
    ("binary", "cifar-10-batches-bin", ".bin", read_cifar_batch, CIFAR_URL),
    ("python", "cifar-10-batches-py", "", read_cifar_python_batch, CIFAR_PYTHON_URL),
)
DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")


def _missing(title: str, root: Path, folders: list[Path], missing: list[str], url: str) -> GudError:
    where = " or ".join(f"{f}/" for f in folders)
    return GudError.one("E401", f"{title} files not found under {root}: {', '.join(missing)}",
                        help=f"put {', '.join(missing)} in {where} (download from {url}; "
                             "nothing is downloaded automatically)")


def _load_idx(name: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    subdir, url = _IDX_SOURCES[name]
    folders = [root / subdir / "raw", root]
    paths = [find_file(folders, (f, f + ".gz")) for f in _IDX_FILES]
    missing = [f + "[.gz]" for f, p in zip(_IDX_FILES, paths) if p is None]
    if missing:
        raise _missing(subdir, root, folders, missing, url)
    train, test = (read_idx_images(p) for p in paths)
    if train.shape[1:] != test.shape[1:]:
        raise GudError.one("E404", f"{subdir} train images are {train.shape[1:]} but test "
                                   f"images are {test.shape[1:]} ({paths[0]}, {paths[1]})")
    return train[:, None], test[:, None]


def _load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first version whose six batches are all found, in its folder or in root."""
    lacking, sources = [], []
    for version, subdir, suffix, read, url in _CIFAR_VERSIONS:
        names = [f"data_batch_{i}{suffix}" for i in (1, 2, 3, 4, 5)] + [f"test_batch{suffix}"]
        paths = [find_file([root / subdir, root], (f,)) for f in names]
        missing = [f for f, p in zip(names, paths) if p is None]
        if not missing:
            batches = [read(p) for p in paths]
            return np.concatenate(batches[:-1]), batches[-1]
        lacking.append(f"the {version} version lacks {', '.join(missing)}")
        sources.append(f"the {version} version ({url}) in {root / subdir}/")
    raise GudError.one("E401", f"CIFAR-10 files not found under {root}: {'; '.join(lacking)}",
                       help=f"unpack {' or '.join(sources)}; the files may also sit in "
                            f"{root}/ itself (nothing is downloaded automatically)")


def dataset(name: str, root) -> DataSet:
    """MNIST / FashionMNIST (IDX) or CIFAR-10 from local files, official split, 256 levels.

    Looked up in torchvision's layout (root/MNIST/raw, root/FashionMNIST/raw,
    root/cifar-10-batches-bin or root/cifar-10-batches-py) or directly in root. CIFAR-10's
    binary version is read if all its batches are found, else the python version; both hold
    the same images, so they give the same DataSet (and fingerprint).
    """
    canonical = {n.replace("_", ""): n for n in DATASET_NAMES}
    key = name.lower().replace("-", "").replace("_", "") if isinstance(name, str) else None
    if key not in canonical:
        raise _bad_arg(f"unknown dataset {name!r}",
                       help=f"available: {', '.join(DATASET_NAMES)} (others: use npz or images)")
    name = canonical[key]
    root = _path_arg("root", root)
    if not root.is_dir():
        raise _not_a_folder(root, "data folder", f"dataset() needs the folder that holds the "
                            f"{name} files", f"create it and put the {name} files there",
                            "give the folder that holds the files (unpack an archive into it "
                            "first)")
    train, test = _load_cifar10(root) if name == "cifar10" else _load_idx(name, root)
    params = {"name": name, "root": str(root), "split": "official"}
    return _dataset(name, _from_levels(train, 255), _from_levels(test, 255), params,
                    (-1.0, 1.0), 256)


# ----------------------------------------------------------------------------- dispatch

SOURCES = {"digits": digits, "grf": grf, "npz": npz, "images": images, "dataset": dataset}


def load_data(kind: str, **kwargs) -> DataSet:
    """Load the source `kind` (digits, grf, npz, images, dataset) with its arguments."""
    source = SOURCES.get(kind)
    if source is None:
        close = difflib.get_close_matches(str(kind), SOURCES, n=1)
        raise _bad_arg(f"unknown data source {kind!r}",
                       help=(f"did you mean {close[0]!r}? " if close else "")
                            + f"sources: {', '.join(SOURCES)}")
    accepted = inspect.signature(source).parameters
    for arg in kwargs:
        if arg not in accepted:
            raise _bad_arg(f"data source {kind!r} has no argument {arg!r}",
                           help=f"its arguments are: {', '.join(accepted)}")
    for arg, p in accepted.items():
        if p.default is inspect.Parameter.empty and arg not in kwargs:
            raise _bad_arg(f"data source {kind!r} needs the argument {arg!r}")
    return source(**kwargs)


def iterate_batches(array: np.ndarray, batch_size: int,
                    seed: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive batches of `array` along axis 0 (the last may be smaller); shuffled if `seed`."""
    batch_size = _int_arg("batch_size", batch_size)
    n = len(array)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    for start in range(0, n, batch_size):
        yield array[order[start:start + batch_size]]
