"""The decoded-image cache of `images(folder)`: used only when no file changed, never a
different DataSet, and a damaged or unwritable cache only costs decoding again.

Folders are written into tmp_path, with mtimes set an hour back (files younger than the
cache's racy window are never cached); the cache root ($GUDLANG_CACHE) is a temporary folder.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from gudlang.data import DataSet, images
from gudlang.datasets import readers
from test_data import _levels, _png


@pytest.fixture(autouse=True)
def image_cache(tmp_path_factory, monkeypatch):
    """A fresh, empty cache root for every test, never the user's."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("GUDLANG_CACHE", str(root))
    return root


def _image_folder(folder, n=5, shape=(9, 7, 3), seed=0):
    """`n` random PNGs, last modified an hour ago (older than the cache's racy window)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        _png(folder / f"{i}.png", rng.integers(0, 256, shape))
    _age(folder)
    return folder


def _age(folder, seconds=3600):
    """Set every file's mtime `seconds` into the past."""
    then = time.time() - seconds
    for p in folder.iterdir():
        os.utime(p, (then, then))


@pytest.fixture
def decodes(monkeypatch):
    """The paths `read_image` decodes, in order."""
    seen = []
    decode = readers.read_image

    def counting(path, mode, hw):
        seen.append(path.name)
        return decode(path, mode, hw)

    monkeypatch.setattr(readers, "read_image", counting)
    return seen


def _same(a: DataSet, b: DataSet) -> None:
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert (a.fingerprint, a.params, a.shape, a.name) == (b.fingerprint, b.params, b.shape, b.name)


def _entries(cache_root):
    return sorted((cache_root / "images").glob("*.safetensors"))


def test_images_second_load_comes_from_the_cache_unchanged(tmp_path, image_cache, monkeypatch):
    folder = _image_folder(tmp_path / "imgs")
    uncached = images(folder, size=6, seed=2, use_cache=False)
    assert _entries(image_cache) == []
    first = images(folder, size=6, seed=2)
    assert len(_entries(image_cache)) == 1

    def no_decoding(*args):
        raise AssertionError("an image was decoded although the cache holds the folder")

    monkeypatch.setattr(readers, "read_image", no_decoding)
    second = images(folder, size=6, seed=2)
    _same(second, uncached)
    _same(first, uncached)
    with pytest.raises(AssertionError, match="decoded"):
        images(folder, size=6, seed=2, use_cache=False)  # the guard is live


def test_images_cache_entry_is_keyed_by_the_options(tmp_path, image_cache, decodes):
    folder = _image_folder(tmp_path / "imgs", n=3)
    images(folder, size=6)
    for kwargs in ({"size": 4}, {"size": (6, 4)}, {"size": 6, "channels": 1}):
        before = len(decodes)
        d = images(folder, **kwargs)
        assert len(decodes) == before + 3, kwargs
        _same(d, images(folder, **kwargs, use_cache=False))
    assert len(_entries(image_cache)) == 4
    before = len(decodes)
    images(folder, size=6, seed=1, test_fraction=0.5)  # the split is not part of the entry
    assert len(decodes) == before


def test_images_cache_keeps_one_entry_per_folder_and_options(tmp_path, image_cache, decodes):
    folder = _image_folder(tmp_path / "imgs", n=2)
    _image_folder(folder / "sub", n=1)
    flat, deep = images(folder, size=4), images(folder, size=4, recursive=True)
    assert len(decodes) == 5 and len(flat.train) + len(flat.test) == 2
    for _ in range(2):  # alternating does not evict either entry
        _same(images(folder, size=4), flat)
        _same(images(folder, size=4, recursive=True), deep)
    assert len(decodes) == 5
    (folder / "1.png").unlink()
    images(folder, size=4)  # a changed folder replaces its entry instead of adding one
    assert len(_entries(image_cache)) == 2


def test_images_touched_file_invalidates_the_cache(tmp_path, decodes):
    folder = _image_folder(tmp_path / "imgs", n=4)
    images(folder, size=6)
    assert len(decodes) == 4
    then = time.time() - 7200
    os.utime(folder / "2.png", (then, then))  # same bytes, another mtime
    images(folder, size=6)
    assert len(decodes) == 8
    images(folder, size=6)
    assert len(decodes) == 8  # and the new entry is used


def test_images_rewritten_file_is_read_again(tmp_path, decodes):
    folder = _image_folder(tmp_path / "imgs", n=4)
    old = images(folder, size=6, test_fraction=0)
    _png(folder / "1.png", np.full((9, 7, 3), 200))
    new = images(folder, size=6, test_fraction=0)
    np.testing.assert_array_equal(new.train[1], _levels(np.full((3, 6, 6), 200), 255))
    np.testing.assert_array_equal(new.train[[0, 2, 3]], old.train[[0, 2, 3]])
    assert new.fingerprint != old.fingerprint
    _age(folder)  # old enough to be cached: the entry now holds the new image
    images(folder, size=6, test_fraction=0)
    decoded = len(decodes)
    _same(images(folder, size=6, test_fraction=0), new)
    assert len(decodes) == decoded


@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_images_changed_file_list_invalidates_the_cache(tmp_path, change):
    folder = _image_folder(tmp_path / "imgs", n=4)
    images(folder, size=6)
    if change == "add":
        _png(folder / "9.png", np.zeros((5, 5, 3)))
    elif change == "remove":
        (folder / "0.png").unlink()
    else:
        (folder / "3.png").rename(folder / "0a.png")  # now second in sorted order
    _age(folder)
    _same(images(folder, size=6), images(folder, size=6, use_cache=False))


def test_images_just_written_are_not_cached(tmp_path, image_cache, decodes):
    # A rewrite within the mtime's resolution would keep size and mtime: trust neither yet.
    folder = _image_folder(tmp_path / "imgs", n=3)
    _png(folder / "0.png", np.zeros((9, 7, 3)))
    images(folder, size=6)
    images(folder, size=6)
    assert len(decodes) == 6 and _entries(image_cache) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pixel", "empty"])
def test_images_corrupt_cache_entry_is_ignored_and_rewritten(tmp_path, image_cache, decodes,
                                                             damage):
    folder = _image_folder(tmp_path / "imgs", n=3)
    expected = images(folder, size=6, use_cache=False)
    images(folder, size=6)
    [entry] = _entries(image_cache)
    data = entry.read_bytes()
    entry.write_bytes({"garbage": b"not a cache entry" * 10, "truncated": data[:len(data) // 2],
                       "pixel": data[:-1] + bytes([data[-1] ^ 1]), "empty": b""}[damage])
    before = len(decodes)
    _same(images(folder, size=6), expected)
    assert len(decodes) == before + 3
    _same(images(folder, size=6), expected)
    assert len(decodes) == before + 3  # rewritten, then used


def test_images_unwritable_cache_only_costs_decoding(tmp_path, monkeypatch, decodes):
    folder = _image_folder(tmp_path / "imgs", n=3)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so no cache folder below it")
    monkeypatch.setenv("GUDLANG_CACHE", str(blocker))
    expected = images(folder, size=6, use_cache=False)
    _same(images(folder, size=6), expected)
    _same(images(folder, size=6), expected)
    assert len(decodes) == 9


def test_images_without_cache_leave_no_entry(tmp_path, image_cache):
    images(_image_folder(tmp_path / "imgs", n=2), size=4, use_cache=False)
    assert not (image_cache / "images").exists()


def test_images_cache_entry_is_a_safetensors_file_of_the_decoded_pixels(tmp_path, image_cache):
    d = images(_image_folder(tmp_path / "imgs", n=2), size=4, test_fraction=0)
    [entry] = _entries(image_cache)
    stack = load_file(entry)["images"]
    assert stack.dtype == np.uint8 and stack.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(_levels(stack.transpose(0, 3, 1, 2), 255), d.train)
