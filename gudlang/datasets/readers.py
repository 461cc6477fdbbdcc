"""File readers: bytes on disk -> numpy arrays, with a GudError for every bad file.

Input: a path (and, for .npz files, an array key; for images, a mode and target size).
Output: the array as stored (.npz / .npy) or uint8 images: (H, W) / (H, W, 3) for one
PNG / JPEG, (N, H, W) for an IDX file, (N, 3, 32, 32) for a CIFAR-10 binary batch.
Nothing is unpickled: np.load always runs with allow_pickle=False.

Errors (GudError): E401 file not found, E402 unreadable or corrupt file (including
truncated IDX / CIFAR files), E403 npz key missing or ambiguous, E404 object (e.g. ragged)
arrays, E407 an npz file without arrays. `gudlang.data` documents the codes.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..diagnostics import GudError

# Fixed so that the same images always give the same arrays.
RESAMPLING = Image.Resampling.BICUBIC
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, green and blue bytes

# numpy's message when an array needs unpickling (object dtype, e.g. a ragged list).
_OBJECTS = "Object arrays cannot be loaded"


def _not_an_array_file(path: Path, e: Exception) -> GudError:
    return GudError.one("E402", f"{path} is not a readable .npz or .npy file ({e})",
                        help="save arrays with numpy.savez / numpy.save "
                             "(pickled data is never loaded)")


def _object_array(what: str) -> GudError:
    return GudError.one("E404", f"{what} holds Python objects (e.g. a ragged list of images of "
                                "different shapes), which are never loaded",
                        help="save one numeric array of shape (N, H, W) or (N, C, H, W)")


def read_npz_array(path: Path, key: str | None) -> tuple[np.ndarray, str]:
    """The array `key` (or the only one) of a .npz / .npy file, and a phrase naming it."""
    if not path.is_file():
        raise GudError.one("E401", f"array file {path} not found",
                           help="check the path (relative paths start at the working directory)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        if _OBJECTS in str(e):
            raise _object_array(f"the array in {path}") from None
        raise _not_an_array_file(path, e) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise _not_an_array_file(path, e) from None
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise GudError.one("E403", f"{path} is a .npy file holding one array, so it has "
                                       f"no key {key!r}", help="drop `key`")
        return loaded, f"array in {path}"
    with loaded:
        keys = list(loaded.files)
        if not keys:
            raise GudError.one("E407", f"{path} holds no arrays")
        if key is None and len(keys) > 1:
            raise GudError.one("E403", f"{path} holds several arrays: {', '.join(keys)}",
                               help="choose one with key=, e.g. key=" + repr(keys[0]))
        key = keys[0] if key is None else key
        if key not in keys:
            raise GudError.one("E403", f"{path} has no array {key!r}; it holds: {', '.join(keys)}",
                               help="pass one of those names as key=")
        what = f"array {key!r} in {path}"
        try:
            return loaded[key], what
        except ValueError as e:
            if _OBJECTS in str(e):
                raise _object_array(what) from None
            raise GudError.one("E402", f"{what} cannot be read ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise GudError.one("E402", f"{what} is corrupt ({e})",
                               help="re-create the file with numpy.savez") from None


def read_image(path: Path, mode: str, hw: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3): shorter side resized to fit, then center-cropped."""
    h, w = hw
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            scale = max(h / im.height, w / im.width)
            size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
            if size != im.size:
                im = im.resize(size, RESAMPLING)
            left, top = (size[0] - w) // 2, (size[1] - h) // 2
            return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise GudError.one("E402", f"cannot read image {path} ({e})",
                           help="remove or replace that file (PNG and JPEG are read)") from None


def find_file(folders: list[Path], names: tuple[str, ...]) -> Path | None:
    """The first existing folder / name, trying every name in each folder in turn."""
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, H, W) images of an IDX file (magic 0x00000803), gzip-compressed if .gz."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise GudError.one("E402", f"cannot read {path} ({e})",
                           help="download the file again") from None
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise GudError.one("E402", f"{path} is not an IDX image file (it must start with the "
                                   f"magic number 0x00000803, found 0x{raw[:4].hex() or 'none'})",
                           help="use the image files (…-images-idx3-ubyte), not the label files")
    dims = struct.unpack(">3I", raw[4:16])
    expected = 16 + int(np.prod(dims))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise GudError.one("E402", f"{path} is {state}: its header declares {dims[0]} images of "
                                   f"{dims[1]}x{dims[2]} ({expected} bytes), the file has "
                                   f"{len(raw)} bytes", help="download the file again")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(dims)


def read_cifar_batch(path: Path) -> np.ndarray:
    """uint8 (N, 3, 32, 32) images of a CIFAR-10 binary batch."""
    raw = path.read_bytes()
    if not raw or len(raw) % CIFAR_RECORD:
        raise GudError.one("E402", f"{path} is truncated or not a CIFAR-10 binary batch: "
                                   f"{len(raw)} bytes is not a whole number of {CIFAR_RECORD}-"
                                   "byte records (1 label byte + 3072 pixel bytes)",
                           help=f"download the binary version again from {CIFAR_URL}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    if records[:, 0].max() > 9:
        raise GudError.one("E402", f"{path} is not a CIFAR-10 binary batch (labels beyond 9)",
                           help=f"use the binary version ({CIFAR_URL}), not the python one")
    return records[:, 1:].reshape(-1, 3, 32, 32)
