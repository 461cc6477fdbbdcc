"""File readers: bytes on disk -> numpy arrays, with a GudError for every bad file.

Input: a path (and, for .npz files, an array key; for images, a mode and target size).
Output: the array as stored (.npz / .npy) or uint8 images: (H, W) / (H, W, 3) for one
PNG / JPEG, (N, H, W) / (N, H, W, 3) for a folder of them, (N, H, W) for an IDX file,
(N, 3, 32, 32) for a CIFAR-10 batch (binary or python version).

Images are read as a viewer shows them (`flat_image`): turned by their EXIF orientation,
transparent pixels composited onto white (RGBA, LA, P or L / RGB with a transparent
colour; torchvision's ImageFolder drops alpha instead, showing the colours hidden under it),
16-bit grey pixels (PIL modes I;16, I;16B, I from a PNG or 16-bit TIFF) scaled so that 65535
is white, float pixels (mode F) read with 1.0 white. A folder's images are 8-bit (256
levels), so deeper pixels are resized at full depth and then rounded to 8 bits, never
clipped; 32-bit integer pixels (no known white) and float pixels outside 0..1 are refused
(E402), as are multi-page TIFF stacks (`_check_single_page`: one image per file). PIL
reads 16-bit colour PNGs at 8 bits itself (the high byte).

No data file can run code. np.load always runs with allow_pickle=False. CIFAR-10's python
batches are pickles: their bytes are first scanned opcode by opcode (every declared length
must fit in the file), then unpickled by `_BatchUnpickler`, whose `find_class` resolves only
numpy's array reconstruction (`numpy.core.multiarray._reconstruct`, or `numpy._core...` as
numpy 2 writes it, `numpy.ndarray`, `numpy.dtype`; protocol 5's `numpy.core.numeric.
_frombuffer`) and the two ways protocol 2 writes Python 3 bytes (`_codecs.encode(text,
"latin1")`, `bytes()` when empty), and refuses every other global unloaded. They resolve to
stand-ins that check every value and build the array with np.frombuffer: numpy's own
__setstate__ code, which some malformed states crash, never runs. So batches pickled with
any protocol from 2 (Python 2's cPickle, the official files) to 5 load.
The result must be a dict with b"data", a uint8 (N, 3072) array (rows: 1024 red, then
green, then blue bytes, like the binary version), and b"labels", N integers 0..9.

Sizes declared in a file's header (.npy / .npz, IDX, pickle opcodes) are checked against
the bytes present and against `memory_limit()` before anything is allocated.

Decoded-image cache: `read_images` keeps the uint8 stack of a folder in
`$GUDLANG_CACHE/images/<slot>.safetensors` (default root `~/.cache/gudlang`), one entry per
folder and options (size, mode, recursive); the entry's key covers the relative path, size,
mtime and ctime of every file, the options, Pillow's version and `IMAGE_CACHE_SCHEME`, and
it is used only when the key and a sha256 of its pixels match. Files modified in the last
`RACY_SECONDS` are never cached (a rewrite within their timestamp's resolution would keep
the mtime). Entries are written atomically (temporary file, then os.replace); a corrupt or
stale entry is decoded again and overwritten; an unwritable cache only costs the decoding.

Errors (GudError): E401 file not found, E402 unreadable, corrupt or truncated file, an
image whose pixels have no known white level (a
CIFAR-10 python batch of another structure, or referring to anything but numpy's array
reconstruction), or an array larger than memory, E403 npz key missing or ambiguous, E404
object (e.g. ragged) arrays, E407 an npz file without arrays, an IDX file without images or
an empty CIFAR-10 python batch. `gudlang.data` documents the codes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..diagnostics import GudError

# Fixed so that the same images always give the same arrays.
RESAMPLING = Image.Resampling.BICUBIC
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, green and blue bytes
# Bump when `read_image` changes what it returns: old cache entries then no longer match.
IMAGE_CACHE_SCHEME = "gudlang-images-v2"  # v2: EXIF orientation, alpha, 16-bit pixels
# Transparent pixels are composited onto white, as a web page shows them.
BACKGROUND = (255, 255, 255)
# PIL modes with 16-bit unsigned grey pixels.
MODES_16 = ("I;16", "I;16L", "I;16B", "I;16N")
# FAT stores mtimes in 2 s steps; other file systems are finer.
RACY_SECONDS = 2.0

# numpy's message when an array needs unpickling (object dtype, e.g. a ragged list).
_OBJECTS = "Object arrays cannot be loaded"

# The image files `images()` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


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


def _no_arrays(path: Path, members: list[str]) -> None:
    """E402 for a zip archive without .npy members, naming them; a hint for an image archive."""
    shown = ", ".join(map(repr, members[:5])) + (f" and {len(members) - 5} more"
                                                 if len(members) > 5 else "")
    pictures = any(m.lower().endswith(IMAGE_SUFFIXES)
                   for m in members)
    which = ("its member", "is not a numpy array") if len(members) == 1 else \
        ("its members", "are not numpy arrays")
    raise GudError.one("E402", f"{path} is a zip archive without numpy arrays: {which[0]} "
                               f"{shown} {which[1]} (numpy.savez writes one NAME.npy member per "
                               "array)",
                       help="it holds images: unpack it into a folder and load that with "
                            "images(folder)" if pictures else
                            "save the images with numpy.savez(\"file.npz\", x=images)")


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
        if key is None:
            # numpy.savez writes NAME.npy members; others (a zip of images renamed .npz, a
            # README beside the arrays) are no arrays to choose from.
            names = set(loaded.zip.namelist())
            arrays = [k for k in keys if k + ".npy" in names]
            if not arrays:
                _no_arrays(path, keys)
            if len(arrays) > 1:
                raise GudError.one("E403", f"{path} holds several arrays: {', '.join(arrays)}",
                                   help="choose one with key=, e.g. key=" + repr(arrays[0]))
            key = arrays[0]
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


def _upright(im: Image.Image) -> Image.Image:
    """`im` turned / mirrored by its EXIF orientation tag, as a viewer shows it."""
    try:
        return ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return im  # unreadable EXIF: the pixels as stored


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as a viewer shows it (`_upright`), from its header:
    EXIF orientations 5 - 8 turn it a quarter."""
    try:
        turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        turned = False  # unreadable EXIF: `_upright` keeps the pixels as stored
    return im.size[::-1] if turned else im.size


def _white_level(im: Image.Image, where: str, code: str) -> float | None:
    """The value of white in a 16-bit or float image; None for 8-bit modes. `code` for a
    32-bit integer image, whose white level is unknown."""
    if im.mode in MODES_16:
        return 65535.0
    if im.mode == "F":
        return 1.0
    if im.mode != "I":
        return None
    # PIL opens 16-bit grey PNGs as mode I before Pillow 10, and signed or 16-bit TIFFs.
    tiff_bits = getattr(im, "tag_v2", {}).get(258) if im.format == "TIFF" else None
    if im.format == "PNG" or tiff_bits in (16, (16,)):
        return 65535.0
    raise GudError.one(code, f"cannot read image {where}: it has 32-bit integer pixels, "
                             "whose white level is unknown",
                       help="save it as an 8- or 16-bit PNG (or as floats in 0..1)")


def flat_image(im: Image.Image, mode: str, where, code: str = "E402") -> Image.Image:
    """An opened image as a viewer shows it, ready to resize: upright, transparent pixels
    composited onto white, in `mode` ("L" or "RGB") for 8-bit images; a grey "F" image with
    values in 0..255 (unrounded) for 16-bit and float ones, whatever `mode` (PIL's convert
    would clip them at 255). `code` (E402) names the image `where` when its pixels have no
    known white level or lie outside it."""
    white = _white_level(im, where, code)  # before the turn, whose copy forgets the format
    im = _upright(im)
    if white is not None:
        x = np.asarray(im, dtype=np.float64)
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= white):
            kind = "float pixels outside 0..1" if im.mode == "F" else "negative pixels"
            raise GudError.one(code, f"cannot read image {where}: it has {kind} "
                                     f"(from {x.min():.4g} to {x.max():.4g})",
                               help="save it as an 8- or 16-bit PNG, or as floats in 0..1")
        transparent = im.info.get("transparency")
        if isinstance(transparent, int):  # one grey value marked transparent
            x = np.where(x == transparent, white, x)
        return Image.fromarray((x * (255.0 / white)).astype(np.float32))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        background = Image.new("RGBA", im.size, BACKGROUND + (255,))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert(mode)


def image_pixels(im: Image.Image, mode: str) -> np.ndarray:
    """The pixels of a `flat_image` as (H, W) or (H, W, 3) for mode "RGB": uint8 for 8-bit
    images, float32 in 0..255 for "F" ones."""
    x = np.asarray(im)
    if im.mode == "F" and mode == "RGB":
        x = np.repeat(x[..., None], 3, axis=2)
    return x


def _check_single_page(im: Image.Image, path: Path) -> None:
    """E402 for a TIFF stack (a second page of the first one's size): one image per file is
    read, so all pages but the first would be silently left out. Smaller pages (thumbnails,
    reduced-resolution copies) are allowed."""
    try:
        if im.format != "TIFF" or getattr(im, "n_frames", 1) < 2:
            return
        size, pages = im.size, im.n_frames
        im.seek(1)
        same = im.size == size
        im.seek(0)
    except (EOFError, struct.error, KeyError, TypeError):
        return  # a damaged page list: decoding the first page says what is wrong
    if same:
        raise GudError.one("E402", f"cannot read image {path}: it is a multi-page TIFF (a stack "
                                   f"of {pages} pages), but images are read one per file, so "
                                   f"{pages - 1} would be left out",
                           help="save each page as its own file, or the stack as an array "
                                "(numpy.savez) and load it with npz(path)")


def read_image(path: Path, mode: str, hw: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3): shorter side resized to fit, then center-cropped.

    The image is read by `flat_image` (upright, on white, 16-bit and float pixels scaled),
    resized at full depth, then rounded to 8 bits."""
    h, w = hw
    try:
        with Image.open(path) as im:
            _check_single_page(im, path)
            im = flat_image(im, mode, path)
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
            x = image_pixels(im.crop((left, top, left + w, top + h)), mode)
            if x.dtype != np.uint8:  # 16-bit or float pixels: rounded to 8 bits
                x = np.rint(np.clip(x, 0, 255))  # the clip only catches bicubic overshoot
            return x.astype(np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        help = "remove or replace that file (PNG, JPEG and TIFF are read)"
        if path.name.startswith("._"):
            help = ("it looks like macOS metadata (an AppleDouble \"._\" file, e.g. from a zip "
                    "made on a Mac), not an image: delete the ._* files (and any __MACOSX folder)")
        raise GudError.one("E402", f"cannot read image {path} ({e})", help=help) from None


def cache_root() -> Path:
    """`$GUDLANG_CACHE`, by default `~/.cache/gudlang`."""
    return Path(os.environ.get("GUDLANG_CACHE") or Path.home() / ".cache" / "gudlang")


def _decode_images(files: list[Path], mode: str, hw: tuple[int, int]) -> np.ndarray:
    return np.stack([read_image(p, mode, hw) for p in files])


def _image_cache_key(root: Path, files: list[Path], mode: str, hw: tuple[int, int],
                     recursive: bool) -> tuple[Path, str] | None:
    """The cache entry of this folder and options, and the key its content must carry;
    None when a file cannot be listed or was modified too recently to trust its mtime."""
    options = {"scheme": IMAGE_CACHE_SCHEME, "pillow": PIL.__version__,
               "folder": str(root.resolve()), "mode": mode, "size": list(hw),
               "recursive": recursive}
    racy_after = time.time_ns() - int(RACY_SECONDS * 1e9)
    listing = []
    try:
        for p in files:
            st = p.stat()
            if st.st_mtime_ns > racy_after:
                return None
            # ctime too: a rewrite that keeps size and mtime (cp -p, tar, unzip, rsync -t
            # restore the mtime) still changes it, and no program can set it back.
            listing.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns,
                            st.st_ctime_ns])
    except OSError:
        return None  # decoding will name the file
    slot = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256(json.dumps([options, listing], sort_keys=True).encode()).hexdigest()
    return cache_root() / "images" / f"{slot}.safetensors", key


def _read_image_cache(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached stack if the entry carries `key`, has `shape` and its pixels' sha256; else None."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key or tuple(f.get_slice("images").get_shape()) != shape:
                return None
            x = f.get_tensor("images")
    except (OSError, SafetensorError, ValueError, KeyError):
        return None
    if x.dtype != np.uint8 or _sha256(x) != meta.get("sha256"):
        return None
    return x


def _sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).data).hexdigest()


def _write_image_cache(path: Path, key: str, x: np.ndarray) -> None:
    metadata = {"scheme": IMAGE_CACHE_SCHEME, "key": key, "sha256": _sha256(x)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"images": x}, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except (OSError, SafetensorError):
        pass  # a read-only or full cache only costs decoding again next time


def read_images(root: Path, files: list[Path], mode: str, hw: tuple[int, int], *,
                recursive: bool, use_cache: bool = True) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3): `read_image` of each of `files` (found under `root`,
    `recursive`ly or not), or the same stack from the decoded-image cache."""
    entry = _image_cache_key(root, files, mode, hw, recursive) if use_cache else None
    if entry is None:
        return _decode_images(files, mode, hw)
    path, key = entry
    shape = (len(files), *hw) + ((3,) if mode == "RGB" else ())
    x = _read_image_cache(path, key, shape)
    if x is None:
        x = _decode_images(files, mode, hw)
        _write_image_cache(path, key, x)
    return x


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


def _starts_with(path: Path, magic: bytes) -> bool:
    """Whether the file starts with `magic` (False if unreadable: reading it names the error)."""
    try:
        with path.open("rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, H, W) images of an IDX file (magic 0x00000803), gzip-compressed if .gz
    (a .gz file that is not compressed, as some browsers save it, is read as it is)."""
    gz = path.suffix == ".gz" and _starts_with(path, b"\x1f\x8b")
    try:
        raw = _gunzip(path, 16)[0] if gz else _read_bytes(path)
    except (OSError, EOFError, zlib.error) as e:
        raise GudError.one("E402", f"cannot read {path} ({e})",
                           help="download the file again") from None
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        head = raw[:16].decode("ascii", "replace")
        if raw[:1] and all(c.isprintable() or c in "\t\r\n" for c in head):
            raise GudError.one("E402", f"{path} is not an IDX image file but text, starting "
                                       f"{head!r} (e.g. the error page of a failed download)",
                               help="download the file again")
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
                           help=f"download the binary version again from {CIFAR_URL}")
    return records[:, 1:].reshape(-1, 3, 32, 32)


def _not_a_python_batch(path: Path, found: str) -> GudError:
    return GudError.one("E402", f"{path} is not a CIFAR-10 python batch: {found}",
                        help=f"download the python version again from {CIFAR_PYTHON_URL} "
                             f"(or use the binary version, {CIFAR_URL})")


# Stands for numpy.ndarray in a pickle: only `_reconstruct` may use it, nothing can call it.
_NDARRAY = object()


def _text(value) -> str | None:
    """A short ASCII str or bytes (Python 2 strings unpickle as bytes) as str; else None."""
    if isinstance(value, bytes) and len(value) <= 8:
        value = value.decode("latin-1")
    return value if isinstance(value, str) and len(value) <= 8 and value.isascii() else None


class _PickledDtype:
    """What a pickle's `numpy.dtype(spec, align, copy)` builds: a plain numeric dtype. Its
    BUILD state may only set the byte order; numpy's own dtype.__setstate__, which crashes
    the interpreter on some malformed states, never sees the pickle's values."""

    def __init__(self, spec, align=False, copy=True):
        spec = _text(spec)
        if spec is None or len(spec) < 2 or spec[0] not in "biuf" or not spec[1:].isdigit():
            raise pickle.UnpicklingError(f"unsupported dtype {spec!r}")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # numpy writes (3, byte order, subarray, names, fields, elsize, alignment, flags)
        order = _text(state[1]) if isinstance(state, tuple) and len(state) == 8 else None
        if order not in ("<", ">", "|", "=") or state[0] != 3 \
                or state[2:] != (None, None, None, -1, -1, 0):
            raise pickle.UnpicklingError("unsupported dtype state")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _array(raw: bytes, dtype: _PickledDtype, shape: tuple, fortran: bool) -> np.ndarray:
    """np.frombuffer of `raw`, once its bytes are known to fill `shape` exactly."""
    if not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise pickle.UnpicklingError("unsupported array shape")
    if math.prod(shape) * dtype.dtype.itemsize != len(raw):  # Python ints: no wrap-around
        raise pickle.UnpicklingError(f"array data of {len(raw)} bytes for a {dtype.dtype} "
                                     f"array of shape {shape}")
    return np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C")


class _PickledArray:
    """What numpy's `_reconstruct(ndarray, (0,), b"b")` and then BUILD with (1, shape, dtype,
    fortran order, raw bytes) make of a pickle (or protocol 5's `_frombuffer`): the array,
    made by `_array`. numpy's ndarray.__setstate__ is never used."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5) or self.array is not None:
            raise pickle.UnpicklingError("unsupported array state")
        version, shape, dtype, fortran, raw = state
        if version != 1 or not isinstance(dtype, _PickledDtype) or not isinstance(raw, bytes) \
                or not isinstance(fortran, bool) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("unsupported array state")
        self.array = _array(raw, dtype, shape, fortran)


def _reconstruct(subtype, shape, typecode):
    """numpy's pickled-array constructor, for the one call numpy writes: an empty ndarray,
    whose shape, dtype and bytes come next in its BUILD state."""
    if subtype is not _NDARRAY or shape != (0,) or _text(typecode) != "b":
        raise pickle.UnpicklingError("unexpected array reconstruction")
    return _PickledArray()


def _frombuffer(buffer, dtype, shape, order):
    """numpy's pickled-array constructor at protocol 5: the whole array in one call."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, _PickledDtype) \
            or not isinstance(shape, tuple) or _text(order) not in ("C", "F"):
        raise pickle.UnpicklingError("unsupported array data")
    built = _PickledArray()
    built.array = _array(bytes(buffer), dtype, shape, _text(order) == "F")
    return built


def _codecs_encode(text, encoding):
    """Protocol 2's way to write Python 3 bytes: `_codecs.encode(text, "latin1")`, each
    character one byte; no other encoding is allowed."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("unsupported bytes encoding")
    return text.encode("latin-1")


def _empty_bytes():
    """Protocol 2's way to write b"": `bytes()`, with no arguments (bytes(n) would allocate)."""
    return b""


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 python batch holds: dicts, lists, strings, numbers and
    numpy arrays (as `_PickledArray`). Any other global is refused before it is imported."""

    _GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2
                ("numpy", "ndarray"): _NDARRAY,
                ("numpy", "dtype"): _PickledDtype,
                ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5, numpy 1
                ("numpy._core.numeric", "_frombuffer"): _frombuffer,  # protocol 5, numpy 2
                ("_codecs", "encode"): _codecs_encode,  # protocol 2: bytes
                ("__builtin__", "bytes"): _empty_bytes}  # protocol 2: b""

    def __init__(self, raw: bytes, path: Path):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = self._GLOBALS.get((module, name))
        if allowed is None:
            raise _not_a_python_batch(self.path, f"it refers to {module + '.' + name!r}, which "
                                                 "a data file never needs; it was not loaded")
        return allowed


def _check_pickle_opcodes(raw: bytes, path: Path) -> None:
    """Raise E402 unless `raw` is a sequence of pickle opcodes whose declared lengths fit in it.

    pickletools reads each argument from a BytesIO, which returns what is present, so a
    length of 2^60 is found short without being allocated (the unpickler would allocate it).
    """
    try:
        for _ in pickletools.genops(io.BytesIO(raw)):
            pass
    except ValueError as e:
        raise _not_a_python_batch(path, f"it is truncated or not a pickle ({e})") from None


def _kind(value) -> str:
    """What an unpickled value is, in words (the stand-ins' class names mean nothing to users)."""
    if isinstance(value, _PickledArray):
        return "a numpy array" if value.array is not None else "a numpy array without its data"
    if isinstance(value, _PickledDtype):
        return "a numpy dtype"
    if value is _NDARRAY:
        return "the numpy array type"
    return f"a value of type {type(value).__name__}"


# Internal names that Python's own messages may quote, and what a user calls them.
_IN_WORDS = (("_PickledDtype.__init__()", "numpy.dtype()"), ("_PickledArray", "numpy array"),
             ("_PickledDtype", "numpy dtype"), ("_codecs_encode()", "_codecs.encode()"),
             ("_empty_bytes()", "bytes()"))


def _in_words(message: str) -> str:
    for name, words in _IN_WORDS:
        message = message.replace(name, words)
    return message


def _batch_images(batch, path: Path) -> np.ndarray:
    """The (N, 3, 32, 32) images of an unpickled batch, after checking its structure."""
    if not isinstance(batch, dict):
        raise _not_a_python_batch(path, f"it holds {_kind(batch)}, not a dict")
    missing = [k for k in (b"data", b"labels") if k not in batch]
    if missing:
        keys = ", ".join(repr(k)[:40] if isinstance(k, (bytes, str, int)) else _kind(k)
                         for k in list(batch)[:8]) or "none"
        raise _not_a_python_batch(path, f"it has no {' or '.join(map(repr, missing))} entry "
                                        f"(its keys: {keys})")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, _PickledArray) or data.array is None:
        raise _not_a_python_batch(path, f"b'data' is {_kind(data)}, not an array")
    data = data.array
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _not_a_python_batch(path, f"b'data' is a {data.dtype} array of shape "
                                        f"{data.shape}, not uint8 of shape (N, 3072)")
    if not isinstance(labels, list):
        raise _not_a_python_batch(path, f"b'labels' is {_kind(labels)}, not a list of integers")
    if not all(type(v) is int for v in labels):
        kinds = sorted({_kind(v) for v in labels if type(v) is not int})
        raise _not_a_python_batch(path, f"b'labels' is not a list of integers (it holds "
                                        f"{', '.join(kinds)})")
    if len(labels) != len(data):
        raise _not_a_python_batch(path, f"it has {len(data)} images but {len(labels)} labels")
    if any(not 0 <= v <= 9 for v in labels):
        raise _not_a_python_batch(path, "labels beyond 0..9")
    if len(data) == 0:
        raise GudError.one("E407", f"the CIFAR-10 python batch {path} holds no images",
                           help=f"download the python version again from {CIFAR_PYTHON_URL}")
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32)


def read_cifar_python_batch(path: Path) -> np.ndarray:
    """uint8 (N, 3, 32, 32) images of a CIFAR-10 python batch, unpickled without running code."""
    raw = _read_bytes(path)
    _check_pickle_opcodes(raw, path)
    try:
        batch = _BatchUnpickler(raw, path).load()
    except GudError:
        raise
    except Exception as e:  # the bytes are untrusted: any failure to build them is corruption
        detail = str(e) if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}"
        raise _not_a_python_batch(path, f"it cannot be unpickled ({_in_words(detail)})") \
            from None
    return _batch_images(batch, path)
