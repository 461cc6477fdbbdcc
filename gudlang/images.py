"""Writing images: PNG grids, folders of PNGs and arrays for FID tools.

Input: images (N, C, H, W) in data space (float) and the data's value range.
Output: files, each written atomically:
    grid      one PNG, `cols` images per row (default: the grid about square), upscaled towards 384 px
    png-dir   a folder of N PNGs (000000.png, ...) at their own size
    npz       `arr_0` uint8 (N, H, W, C), the layout FID tools (torch-fidelity, clean-fid,
              the TF reference) read
`to_uint8` maps [lo, hi] to 0..255 (rounded, clipped).

Errors: GudError E620 when an output cannot be written.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from gudlang.checkpoint import atomic_write_bytes
from gudlang.diagnostics import GudError

FORMATS = ("grid", "png-dir", "npz")


def make_folder(folder: Path, what: str = "output folder") -> None:
    """mkdir -p, with E620 naming the folder when it cannot be made."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GudError.one("E620", f"cannot create the {what} {folder}: {e.strerror or e}",
                           help="choose another output folder") from None


def to_uint8(x: np.ndarray, value_range) -> np.ndarray:
    """Images (N, C, H, W) in [lo, hi] -> uint8 (N, H, W, C), rounded and clipped."""
    lo, hi = value_range
    unit = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return (unit * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def _png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, C), C = 1 or 3 (`viewable`) -> PNG bytes, grey or RGB."""
    from PIL import Image
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def viewable(x: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) as a PNG shows them: grey (C = 1) and RGB (C = 3) as they are, any
    other C as its channels side by side in grey, (N, 1, H, C W) (a PNG would read 2 channels
    as grey and transparency, and 4 as RGB and transparency)."""
    n, c, h, w = x.shape
    if c in (1, 3):
        return x
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(n, 1, h, c * w))


def save_grid(x: np.ndarray, out: Path, value_range, cols: int | None = None) -> None:
    """Images (N, C, H, W) as one PNG grid with a 1-pixel white border between them (`viewable`),
    by default as many columns as make the grid about square (one for thin 1 x 64 rows)."""
    from PIL import Image
    x = viewable(x)
    n, c, h, w = x.shape
    pad = 1
    cols = cols or min(n, int(math.ceil(math.sqrt(n * (h + pad) / (w + pad)))))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    pixels = to_uint8(x, value_range)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = pixels[k]
    scale = max(1, 384 // max(grid.shape[:2]))
    if scale > 1:
        grid = np.asarray(Image.fromarray(grid[..., 0] if c == 1 else grid[..., :3]).resize(
            (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST))
        grid = grid[..., None] if grid.ndim == 2 else grid
    make_folder(Path(out).parent)
    atomic_write_bytes(out, _png(grid))


def save_pairs(known: np.ndarray, completed: np.ndarray, out: Path, value_range) -> None:
    """A PNG grid of (what is given, its completion) pairs, four pairs per row."""
    n = len(known)
    pairs = np.stack([known, completed], axis=1).reshape((2 * n,) + known.shape[1:])
    save_grid(pairs, out, value_range, cols=2 * min(4, n))


def save_png_dir(x: np.ndarray, folder: Path, value_range, start: int = 0) -> None:
    """One PNG per image, named by its index (start, start + 1, ...) with six digits (`viewable`)."""
    make_folder(folder)
    for k, pixels in enumerate(to_uint8(viewable(x), value_range)):
        atomic_write_bytes(Path(folder) / f"{start + k:06d}.png", _png(pixels))


def save_npz(x: np.ndarray, out: Path, value_range, **records) -> None:
    """`arr_0` uint8 (N, H, W, C) plus string records (sampler, seed, hash, ...)."""
    buf = io.BytesIO()
    np.savez(buf, to_uint8(x, value_range), **{k: np.asarray(str(v)) for k, v in records.items()})
    make_folder(Path(out).parent)
    atomic_write_bytes(out, buf.getvalue())
