"""Data sources given the wrong thing: a message that says where and what to do, never a
traceback or an internal name."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from gudlang.check import check_text
from gudlang.data import digits, grf, grf_covariance, images, iterate_batches, load_data, npz
from gudlang.diagnostics import GudError
from test_data import fails


# ----------------------------------------------------------------------------- npz: not an npz

@pytest.mark.parametrize("content, found", [
    (b"hello\n", "looks like a text file, starting 'hello\\n'"),
    (b"1,2,3\n4,5,6\n", "looks like a text file"),
    (pickle.dumps({"x": np.zeros(3)}, protocol=4), "looks like a Python pickle"),
    (b"", "it is empty"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "first bytes are 1f 8b 08 00"),
], ids=["text", "csv", "pickle", "empty", "gzip"])
def test_npz_of_a_file_that_is_no_npz_says_so_and_names_it(tmp_path, content, found):
    (tmp_path / "x.npz").write_bytes(content)
    with fails("E402", str(tmp_path / "x.npz"), "not a readable .npz archive",
               "numpy.savez", found) as info:
        npz(tmp_path / "x.npz")
    if "pickle" not in found:
        assert "pickled" not in str(info.value)


def test_npz_and_npy_files_under_either_name_still_load(tmp_path):
    x = np.zeros((4, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.npy").rename(tmp_path / "npy_named.npz")
    np.savez(tmp_path / "b.npz", x=x)
    (tmp_path / "b.npz").rename(tmp_path / "npz_named.npy")
    assert npz(tmp_path / "npy_named.npz").train.shape[1:] == (1, 3, 3)
    assert npz(tmp_path / "npz_named.npy").train.shape[1:] == (1, 3, 3)


# ----------------------------------------------------------------------------- npz: a folder

def test_npz_of_an_empty_folder_says_it_is_a_folder(tmp_path):
    (tmp_path / "somedir").mkdir()
    with fails("E402", str(tmp_path / "somedir"), "is a folder", "npz() needs an .npz file") \
            as info:
        npz(tmp_path / "somedir")
    assert "not found" not in str(info.value)


def test_npz_of_a_folder_of_images_suggests_images(tmp_path):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "pics" / "a.png")
    with fails("E402", "is a folder", f'images("{(tmp_path / "pics").as_posix()}")'):
        npz(tmp_path / "pics")


def test_npz_of_a_folder_of_arrays_suggests_one_of_them(tmp_path):
    (tmp_path / "arrays").mkdir()
    np.savez(tmp_path / "arrays" / "faces.npz", x=np.zeros((3, 4, 4)))
    with fails("E402", "is a folder", f'npz("{(tmp_path / "arrays" / "faces.npz").as_posix()}")'):
        npz(tmp_path / "arrays")


def test_npz_in_a_spec_names_the_folder_at_the_data_line(tmp_path):
    from gudlang.pipeline import load_spec_data

    (tmp_path / "somedir").mkdir()
    folder = (tmp_path / "somedir").as_posix()
    checked = check_text(f'gud 1\ndata = npz("{folder}")\nbasis = pixel()\nprior = white\n'
                         "gamma(t) = linear(t, lo = -10, hi = 10)\n")
    with pytest.raises(GudError) as info:
        load_spec_data(checked)
    d = info.value.diagnostics[0]
    assert d.code == "E402" and "is a folder" in d.message and d.span is not None


# ----------------------------------------------------------------------------- booleans

_NUMBER_ARGUMENTS = [
    (lambda v: grf(size=v), "size"),
    (lambda v: grf(n=v), "n"),
    (lambda v: grf(channels=v), "channels"),
    (lambda v: grf(seed=v), "seed"),
    (lambda v: grf(slope=v), "slope"),
    (lambda v: grf(test_fraction=v), "test_fraction"),
    (lambda v: digits(seed=v), "seed"),
    (lambda v: grf_covariance(size=v, slope=2.0), "size"),
    (lambda v: npz("unused.npz", levels=v), "levels"),
    (lambda v: npz("unused.npz", shape=(1, v, 8)), "shape[1]"),
    (lambda v: npz("unused.npz", seed=v), "seed"),
    (lambda v: npz("unused.npz", range=(v, 2)), "range[0]"),
    (lambda v: images("unused", size=v), "size"),
    (lambda v: images("unused", size=(8, v)), "size[1]"),
    (lambda v: images("unused", channels=v), "channels"),
    (lambda v: images("unused", seed=v), "seed"),
    (lambda v: list(iterate_batches(np.zeros(4), batch_size=v)), "batch_size"),
    (lambda v: load_data("grf", size=v), "size"),
]
_NUMBER_IDS = ["grf.size", "grf.n", "grf.channels", "grf.seed", "grf.slope",
               "grf.test_fraction", "digits.seed", "grf_covariance.size", "npz.levels",
               "npz.shape", "npz.seed", "npz.range", "images.size", "images.size_pair",
               "images.channels", "images.seed", "iterate_batches.batch_size", "load_data.grf"]


@pytest.mark.parametrize("call, name", _NUMBER_ARGUMENTS, ids=_NUMBER_IDS)
@pytest.mark.parametrize("value", [True, False, np.True_], ids=["True", "False", "np.True_"])
def test_a_boolean_is_refused_where_a_number_is_wanted(call, name, value):
    with fails("E400", f"`{name}`", "a boolean"):
        call(value)


def test_numpy_booleans_are_booleans_for_recursive(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    d = images(tmp_path, size=4, recursive=np.False_, test_fraction=0.0, use_cache=False)
    assert d.params["recursive"] is False and d.params["channels"] == 3


@pytest.mark.parametrize("argument", ["seed = true", "slope = true", "channels = true"])
def test_a_boolean_in_a_spec_is_refused_where_a_number_is_wanted(argument):
    text = (f"gud 1\ndata = grf({argument})\nbasis = pixel()\nprior = white\n"
            "gamma(t) = linear(t, lo = -10, hi = 10)\n")
    with pytest.raises(GudError) as info:
        check_text(text)
    d = info.value.diagnostics[0]
    assert d.code == "E210" and f"data.{argument.split()[0]}" in d.message
