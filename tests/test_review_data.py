"""Messy user data that used to load silently wrong or fail unclearly: image files of other
formats and broken links left out of a folder, a decoded-image cache reused after a rewrite
that kept size and mtime, float arrays whose declared `levels` do not match their values, an
(N, H, W, C) array with many channels read channels first, a zip of images taken for an
.npz with several arrays, and a file given where a folder is needed.

Files are written into tmp_path; the decoded-image cache lives in a temporary folder too.
"""

from __future__ import annotations

import gzip
import os
import struct
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from gudlang.data import dataset, images, npz

from expect_util import fails

pytestmark = pytest.mark.usefixtures("fresh_image_cache")






def _rgb(path, seed, shape=(6, 6, 3), **save):
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(a).save(path, **save)
    return a


# ----------------------------------------------------------------------------- images: files

@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".webp", ".jfif"])
def test_images_of_other_formats_are_refused_not_left_out(tmp_path, suffix):
    _rgb(tmp_path / "a.png", 0)
    _rgb(tmp_path / "b.jpg", 1)
    fmt = {".jfif": "JPEG"}.get(suffix)
    _rgb(tmp_path / f"c{suffix}", 2, format=fmt)  # Pillow reads it; images() would drop it
    (tmp_path / "notes.txt").write_text("not an image")  # other files stay ignored
    with fails("E402", str(tmp_path), f"c{suffix}", "left out", "convert those files to PNG"):
        images(tmp_path, size=6)
    (tmp_path / f"c{suffix}").unlink()
    assert len(images(tmp_path, size=6, test_fraction=0.0).train) == 2


def test_a_folder_of_only_bmp_images_names_them(tmp_path):
    _rgb(tmp_path / "a.bmp", 0)
    with fails("E402", "a.bmp", "PNG"):
        images(tmp_path, size=6)


def test_other_formats_in_subfolders_are_refused_with_recursive(tmp_path):
    _rgb(tmp_path / "a.png", 0)
    (tmp_path / "sub").mkdir()
    _rgb(tmp_path / "sub" / "b.webp", 1)
    assert len(images(tmp_path, size=6, test_fraction=0.0).train) == 1  # not searched
    with fails("E402", "sub/b.webp"):
        images(tmp_path, size=6, recursive=True)


def test_a_broken_link_to_an_image_is_named_not_left_out(tmp_path):
    _rgb(tmp_path / "a.png", 0)
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    with fails("E401", str(tmp_path / "b.png"), "broken symbolic link", "gone.png"):
        images(tmp_path, size=6)


def test_a_link_to_an_image_is_read(tmp_path):
    (tmp_path / "store").mkdir()
    a = _rgb(tmp_path / "store" / "a.png", 0)
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").symlink_to(tmp_path / "store" / "a.png")
    d = images(tmp_path / "pics", size=6, test_fraction=0.0)
    np.testing.assert_array_equal(d.train[0], a.transpose(2, 0, 1) / np.float32(255) * 2 - 1)


def test_macos_metadata_files_are_explained(tmp_path):
    _rgb(tmp_path / "a.png", 0)
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    with fails("E402", "._a.png", "AppleDouble", "__MACOSX"):
        images(tmp_path, size=6)


@pytest.mark.parametrize("load, what", [
    (lambda p: images(p), "image folder"),
    (lambda p: dataset("cifar10", p), "data folder"),
], ids=["images", "dataset"])
def test_a_file_where_a_folder_is_needed_is_not_called_missing(tmp_path, load, what):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00")
    with fails("E401", f"{what} {archive} is a file, not a folder", "unpack") as info:
        load(archive)
    assert "not found" not in str(info.value)
    with fails("E401", "not found"):
        load(tmp_path / "missing")


# ----------------------------------------------------------------------------- images: cache

def test_cache_is_not_reused_after_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    """cp -p, tar and unzip restore the mtime; an uncompressed TIFF keeps its size."""
    _rgb(tmp_path / "a.tif", 0)
    _rgb(tmp_path / "b.tif", 1)
    then = time.time() - 3600
    for p in tmp_path.iterdir():
        os.utime(p, (then, then))
    before = images(tmp_path, size=6, test_fraction=0.0)
    st = (tmp_path / "a.tif").stat()
    new = _rgb(tmp_path / "a.tif", 2)
    os.utime(tmp_path / "a.tif", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (tmp_path / "a.tif").stat().st_size == st.st_size
    assert (tmp_path / "a.tif").stat().st_mtime_ns == st.st_mtime_ns
    after = images(tmp_path, size=6, test_fraction=0.0)
    np.testing.assert_array_equal(after.train[0], new.transpose(2, 0, 1) / np.float32(255) * 2 - 1)
    assert after.fingerprint != before.fingerprint
    assert after.fingerprint == images(tmp_path, size=6, test_fraction=0.0,
                                       use_cache=False).fingerprint


# ----------------------------------------------------------------------------- npz: levels

def test_npz_levels_that_do_not_match_the_values_are_refused(tmp_path):
    """Values k / 255 in [0, 1] are not on the 256 levels of the default range [-1, 1] (steps
    of 2 / 255), which the likelihood would assume (its bits / dim would be wrong)."""
    k = np.random.default_rng(0).integers(0, 256, (20, 4, 4))
    np.save(tmp_path / "unit.npy", (k / 255).astype(np.float32))
    with fails("E406", "unit.npy", "256 levels of [-1, 1]", "0.50 steps off", "range = [lo, hi]"):
        npz(tmp_path / "unit.npy", levels=256)
    d = npz(tmp_path / "unit.npy", levels=256, range=(0, 1), test_fraction=0.0)
    assert (d.levels, d.value_range) == (256, (0.0, 1.0))
    np.testing.assert_array_equal(d.train[:, 0], (k / 255).astype(np.float32))
    with fails("E406", "128 levels"):
        npz(tmp_path / "unit.npy", levels=128, range=(0, 1))


def test_npz_levels_accept_float32_rounding_of_a_fine_grid(tmp_path):
    k = np.random.default_rng(0).integers(0, 65536, (20, 4, 4))
    np.save(tmp_path / "a.npy", (k / 65535 * 2 - 1).astype(np.float32))
    assert npz(tmp_path / "a.npy", levels=65536).levels == 65536
    np.save(tmp_path / "b.npy", k.astype(np.uint16))
    assert npz(tmp_path / "b.npy", levels=65536, range=(0, 65535)).levels == 65536


def test_npz_levels_are_checked_in_chunks_and_name_the_value_off_its_level(tmp_path, monkeypatch):
    """The check works on a few samples at a time (float64 copies of a whole set would not
    fit); the value it names is the one off its level, in a later chunk."""
    import gudlang.data

    k = np.random.default_rng(1).integers(0, 256, (20, 1, 4, 4))
    x = (k / 255 * 2 - 1).astype(np.float32)
    x[13, 0, 2, 1] = (100 + 0.3) / 255 * 2 - 1
    np.save(tmp_path / "a.npy", x)
    monkeypatch.setattr(gudlang.data, "_LEVEL_CHUNK", 48)  # 3 samples of 16 values
    with fails("E406", "at index (13, 0, 2, 1)", "0.30 steps off"):
        npz(tmp_path / "a.npy", levels=256)


# ----------------------------------------------------------------------------- npz: layout

def test_npz_many_channels_last_is_ambiguous_not_read_channels_first(tmp_path):
    """13-band (N, 64, 64, 13) images were read as 64 channels of 64 x 13."""
    x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 13)).astype(np.float32)
    np.save(tmp_path / "bands.npy", x)
    with fails("E404", "bands.npy", "(3, 16, 16, 13)", "13 channels of 16x16", "layout"):
        npz(tmp_path / "bands.npy")
    d = npz(tmp_path / "bands.npy", layout="channels_last", test_fraction=0.0)
    np.testing.assert_array_equal(d.train, x.transpose(0, 3, 1, 2))
    assert npz(tmp_path / "bands.npy", shape=(13, 16, 16)).shape == (13, 16, 16)
    np.save(tmp_path / "first.npy", x.transpose(0, 3, 1, 2))  # (N, 13, 16, 16) stays auto
    assert npz(tmp_path / "first.npy").shape == (13, 16, 16)


# ----------------------------------------------------------------------------- npz: zips

def test_a_zip_of_images_is_no_npz_with_several_arrays(tmp_path):
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as z:
        for name in ("a.png", "b.png"):
            z.writestr(name, b"\x89PNG\r\n\x1a\n")
    with fails("E402", "faces.zip", "without numpy arrays", "'a.png', 'b.png'", "images(folder)") \
            as info:
        npz(tmp_path / "faces.zip")
    assert "several arrays" not in str(info.value)


def test_an_npz_with_one_array_beside_other_members_loads_that_array(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x)
    with zipfile.ZipFile(tmp_path / "a.npz", "a") as z:
        z.writestr("README.txt", "made by hand")
    np.testing.assert_array_equal(npz(tmp_path / "a.npz", test_fraction=0.0).train[:, 0], x)
    np.savez(tmp_path / "b.npz", x=x, y=x)
    with zipfile.ZipFile(tmp_path / "b.npz", "a") as z:
        z.writestr("README.txt", "made by hand")
    with fails("E403", "several arrays: x, y") as info:
        npz(tmp_path / "b.npz")
    assert "README" not in str(info.value)


def test_integer_pixels_that_are_not_uint8_are_told_how_to_map_them(tmp_path):
    """np.array(list of pixels) is int64: used as it is, unlike uint8, so the help says how."""
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 4))
    np.save(tmp_path / "a.npy", x)
    with fails("E406", "[0, 255]", "x.astype(np.uint8)", "range = [0, 255]"):
        npz(tmp_path / "a.npy")
    np.save(tmp_path / "b.npy", x.astype(np.uint8))
    d = npz(tmp_path / "b.npy", test_fraction=0.0)
    np.testing.assert_array_equal(d.train[:, 0], x.astype(np.float32) / np.float32(255) * 2 - 1)
    np.save(tmp_path / "c.npy", x * 4)  # beyond 255: the generic help
    with fails("E406", "range = [0, 1020]"):
        npz(tmp_path / "c.npy")


# ----------------------------------------------------------------------------- IDX files

def _idx(x: np.ndarray) -> bytes:
    return struct.pack(">4I", 0x0803, *x.shape) + x.astype(np.uint8).tobytes()


def test_a_gz_idx_file_a_browser_already_unpacked_is_read(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (4, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(_idx(train))  # not compressed
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(test)))
    d = dataset("mnist", tmp_path)
    np.testing.assert_array_equal(d.train[:, 0], train.astype(np.float32) / np.float32(255) * 2 - 1)
    np.testing.assert_array_equal(d.test[:, 0], test.astype(np.float32) / np.float32(255) * 2 - 1)


def test_an_idx_file_that_is_a_web_page_says_so(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx(np.zeros((2, 28, 28)))))
    (tmp_path / "train-images-idx3-ubyte.gz").write_text(
        "<html><head><title>403 Forbidden</title></head></html>")
    with fails("E402", "train-images-idx3-ubyte.gz", "text", "<html>", "download the file again") \
            as info:
        dataset("mnist", tmp_path)
    assert "label" not in str(info.value)


# ----------------------------------------------------------------------------- TIFF stacks

def test_a_multi_page_tiff_stack_is_refused_not_cut_to_its_first_page(tmp_path):
    pages = [Image.fromarray(np.full((6, 6), 40 * i, np.uint8)) for i in range(5)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with fails("E402", "stack.tif", "multi-page TIFF", "5 pages", "4 would be left out", "npz"):
        images(tmp_path, size=6)


def test_a_tiff_with_a_smaller_thumbnail_page_is_read(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.tif", save_all=True,
                            append_images=[Image.fromarray(a[::2, ::2])])
    d = images(tmp_path, size=6, channels=1, test_fraction=0.0)
    np.testing.assert_array_equal(d.train[0, 0], a.astype(np.float32) / np.float32(255) * 2 - 1)
