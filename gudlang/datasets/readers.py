"""File readers: bytes on disk -> numpy arrays, with a GudError for every bad file.

Input: a path (and, for .npz files, an array key; for images, a mode and target size).
Output: the array as stored (.npz / .npy) or uint8 images: (H, W) / (H, W, 3) for one
PNG / JPEG, (N, H, W) for an IDX file, (N, 3, 32, 32) for a CIFAR-10 binary batch.
Nothing is unpickled: np.load always runs with allow_pickle=False.

Sizes declared in a file's header (.npy / .npz, IDX) are checked against the bytes present
and against `memory_limit()` before anything is allocated.

Errors (GudError): E401 file not found, E402 unreadable, corrupt or truncated file, or an
array larger than memory, E403 npz key missing or ambiguous, E404 object (e.g. ragged)
arrays, E407 an npz file without arrays or an IDX file without images. `gudlang.data`
documents the codes.
"""

from __future__ import annotations

import gzip
import math
import os
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


def memory_limit() -> int | None:
    """Bytes of physical memory, the most one array may take; None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: int) -> str:
    """A byte count for people: 5.82 TiB, 64 bytes."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"


def _too_large(what: str, needed: int, help: str) -> GudError:
    return GudError.one("E402", f"{what} needs {_size(needed)}, more than this machine's "
                                f"memory ({_size(memory_limit() or 0)})", help=help)


def _check_memory(what: str, needed: int, help: str) -> None:
    """Raise E402 if `needed` bytes exceed the physical memory."""
    limit = memory_limit()
    if limit is not None and needed > limit:
        raise _too_large(what, needed, help)


def _check_npy_header(fp, present: int, what: str) -> None:
    """Check that the .npy stream `fp` (at its start, `present` bytes long) holds its array.

    Reads only the header; raises E402 if the declared shape needs more bytes than present
    or more memory than the machine has. Headers numpy cannot parse are left to np.load.
    """
    try:
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0), (3, 0)):
            return
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)  # 3.0 is 2.0 in UTF-8
        shape, _, dtype = read_header(fp)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
        return
    if dtype.hasobject:
        return  # pickled, never loaded: np.load reports it
    header_end = fp.tell()
    needed = math.prod(int(n) for n in shape) * dtype.itemsize  # Python ints: no wrap-around
    if header_end + needed > present:
        dims = "x".join(str(int(n)) for n in shape) or "scalar"
        raise GudError.one("E402", f"{what} is truncated or corrupt: its header declares a "
                                   f"{dims} {dtype} array ({_size(needed)} of data), but it "
                                   f"holds only {max(present - header_end, 0)} bytes of data",
                           help="re-create the file with numpy.save / numpy.savez")
    _check_memory(what, needed, help="use a smaller array, or split it into several files")


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
        with path.open("rb") as f:
            if f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
                f.seek(0)
                _check_npy_header(f, path.stat().st_size, f"the array in {path}")
        loaded = np.load(path, allow_pickle=False)
    except MemoryError:
        raise _too_large(f"the array in {path}", path.stat().st_size,
                         help="use a smaller array, or split it into several files") from None
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
        # numpy's own lookup: the member name as given, else with .npy appended.
        member = key if key in loaded.zip.namelist() else key + ".npy"
        try:
            info = loaded.zip.getinfo(member)
            with loaded.zip.open(member) as f:
                if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
                    raise GudError.one("E402", f"{what} is not a numpy array (the zip member "
                                               f"{member} is not in .npy format)",
                                       help="save arrays with numpy.savez")
            with loaded.zip.open(member) as f:
                _check_npy_header(f, info.file_size, what)
            array = loaded[key]
        except MemoryError:
            raise _too_large(what, info.file_size,
                             help="use a smaller array, or split it into several files") from None
        except ValueError as e:
            if _OBJECTS in str(e):
                raise _object_array(what) from None
            raise GudError.one("E402", f"{what} cannot be read ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise GudError.one("E402", f"{what} is corrupt ({e})",
                               help="re-create the file with numpy.savez") from None
        return array, what


def read_image(path: Path, mode: str, hw: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3): shorter side resized to fit, then center-cropped."""
    h, w = hw
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            scale = max(h / im.height, w / im.width)
            size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
            limit = Image.MAX_IMAGE_PIXELS
            if size != im.size and limit is not None and size[0] * size[1] > limit:
                raise GudError.one(
                    "E402", f"cannot resize image {path} ({im.width}x{im.height}) to fit "
                            f"{w}x{h}: the resized image, {size[0]}x{size[1]} before the crop, "
                            f"would exceed Pillow's limit of {limit} pixels",
                    help="use a smaller size, or crop that image to a less extreme aspect ratio")
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


def _read_bytes(path: Path) -> bytes:
    """The bytes of a data file; E402 if unreadable or larger than memory."""
    try:
        _check_memory(str(path), path.stat().st_size, help="is this the right file?")
        return path.read_bytes()
    except OSError as e:
        raise GudError.one("E402", f"cannot read {path} ({e})",
                           help="check the file's permissions, or download it again") from None


def _gunzip(path: Path, limit: int, keep: bool = True) -> tuple[bytes, int]:
    """The first `limit` decompressed bytes of a gzip file (a bomb stops there) and their count.

    With keep=False the bytes are only counted, not kept (b"" is returned).
    """
    chunks, total = [], 0
    with gzip.open(path, "rb") as f:
        while total < limit:
            chunk = f.read(min(limit - total, 1 << 24))
            if not chunk:
                break
            if keep:
                chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks), total


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, H, W) images of an IDX file (magic 0x00000803), gzip-compressed if .gz."""
    gz = path.suffix == ".gz"
    try:
        raw = _gunzip(path, 16)[0] if gz else _read_bytes(path)
    except (OSError, EOFError, zlib.error) as e:
        raise GudError.one("E402", f"cannot read {path} ({e})",
                           help="download the file again") from None
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise GudError.one("E402", f"{path} is not an IDX image file (it must start with the "
                                   f"magic number 0x00000803, found 0x{raw[:4].hex() or 'none'})",
                           help="use the image files (…-images-idx3-ubyte), not the label files")
    dims = struct.unpack(">3I", raw[4:16])
    expected = 16 + math.prod(dims)  # Python ints: (4, 2^31, 2^31) must not wrap around
    declared = f"its header declares {dims[0]} images of {dims[1]}x{dims[2]} ({expected} bytes)"
    length = len(raw)
    if gz:
        limit = memory_limit()
        keep = limit is None or expected <= limit  # else only count: truncated or too large
        try:
            raw, length = _gunzip(path, expected + 1, keep)  # one byte more: over-long file
        except (OSError, EOFError, zlib.error) as e:
            raise GudError.one("E402", f"cannot read {path} ({e})",
                               help="download the file again") from None
        if not keep and length >= expected:
            raise _too_large(str(path), expected, help="is this the right file?")
    if length != expected:
        if length < expected:
            state, has = "truncated", f"{length} bytes"
        else:
            state, has = "longer than its header says", \
                f"more than {expected} bytes" if gz else f"{length} bytes"
        raise GudError.one("E402", f"{path} is {state}: {declared}, the file has {has}"
                                   + (" uncompressed" if gz else ""),
                           help="download the file again")
    if 0 in dims:
        raise GudError.one("E407", f"{path} holds no image data: {declared}",
                           help="download the file again")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(dims)


def read_cifar_batch(path: Path) -> np.ndarray:
    """uint8 (N, 3, 32, 32) images of a CIFAR-10 binary batch."""
    raw = _read_bytes(path)
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
