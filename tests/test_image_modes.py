"""Image files beyond 8-bit opaque upright pixels, read by `images(folder)` (readers.read_image)
and by `--given` / `--image` (conditioning.load_images): 16-bit and float pixels are scaled,
not clipped; EXIF orientation is applied; transparent pixels are composited onto white. And
the arrays `gud sample --format npz` writes (uint8 N H W C) are read back as given images.

Every image is written here with PIL (16-bit RGB PNGs, which PIL cannot write, by hand)."""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gudlang.conditioning import load_images
from gudlang.data import images
from gudlang.datasets.readers import flat_image, read_image
from gudlang.diagnostics import GudError
from gudlang.images import save_npz

GREY16 = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)  # 0, 1/255, about 1/2, white


def _mode(path):
    with Image.open(path) as image:
        return image.mode


def _data(c=1, size=4, levels=256, value_range=(-1.0, 1.0)):
    """What load_images needs of a DataSet."""
    return SimpleNamespace(shape=(c, size, size), value_range=value_range, levels=levels)


def _png16(path, pixels):
    """uint16 (H, W, 3) as a 16-bit RGB PNG (PIL writes no 16-bit colour PNG)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- 16-bit and float
def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "a.png")
    assert _mode(tmp_path / "a.png") == "I;16"
    assert read_image(tmp_path / "a.png", "L", (4, 4))[0].tolist() == [0, 1, 128, 255]
    assert read_image(tmp_path / "a.png", "RGB", (4, 4))[0, :, 0].tolist() == [0, 1, 128, 255]
    d = images(tmp_path, size=4, channels=1, test_fraction=0.0, use_cache=False)
    np.testing.assert_allclose(d.train[0, 0, 0], np.array([0, 1, 128, 255]) / 255 * 2 - 1, atol=1e-6)
    assert d.levels == 256


def test_a_big_endian_16_bit_image_is_scaled(tmp_path):
    image = Image.fromarray(GREY16.astype(">u2"))
    assert image.mode == "I;16B"
    image.save(tmp_path / "b.tif")
    assert _mode(tmp_path / "b.tif").startswith("I;16")
    assert read_image(tmp_path / "b.tif", "L", (4, 4))[0].tolist() == [0, 1, 128, 255]
    flat = flat_image(image, "L", "b")
    np.testing.assert_allclose(np.asarray(flat)[0], [0, 1, 32768 / 257, 255], rtol=1e-6)


def test_a_16_bit_image_is_resized_at_full_depth(tmp_path):
    Image.fromarray(np.full((8, 6), 65535, np.uint16)).save(tmp_path / "white.png")
    assert read_image(tmp_path / "white.png", "L", (4, 4)).min() == 255
    Image.fromarray(np.full((8, 6), 2 * 257, np.uint16)).save(tmp_path / "dark.png")
    assert read_image(tmp_path / "dark.png", "RGB", (4, 4)).max() == 2


def test_mode_i_from_a_png_is_16_bit_and_32_bit_integers_are_refused(tmp_path):
    image = Image.fromarray(GREY16.astype(np.int32))
    assert image.mode == "I"
    image.format = "PNG"  # older Pillow opens 16-bit grey PNGs as mode I
    np.testing.assert_allclose(np.asarray(flat_image(image, "L", "a.png"))[0], [0, 1, 32768 / 257, 255],
                               rtol=1e-6)
    image.save(tmp_path / "c.tif")  # a 32-bit integer TIFF: no white level
    with pytest.raises(GudError) as e:
        read_image(tmp_path / "c.tif", "L", (4, 4))
    assert "E402" in str(e.value) and "32-bit integer" in str(e.value) and "c.tif" in str(e.value)


def test_float_pixels_in_0_to_1_are_scaled_and_others_refused(tmp_path):
    Image.fromarray(GREY16.astype(np.float32) / 65535).save(tmp_path / "f.tif")
    assert _mode(tmp_path / "f.tif") == "F"
    assert read_image(tmp_path / "f.tif", "L", (4, 4))[0].tolist() == [0, 1, 128, 255]
    Image.fromarray(GREY16.astype(np.float32)).save(tmp_path / "g.tif")  # 0..65535 floats
    with pytest.raises(GudError) as e:
        read_image(tmp_path / "g.tif", "L", (4, 4))
    assert "E402" in str(e.value) and "0..1" in str(e.value)
    with pytest.raises(GudError) as e:
        load_images(tmp_path / "g.tif", _data())
    assert "E681" in str(e.value) and "0..1" in str(e.value)


def test_a_16_bit_rgb_png_keeps_its_scale(tmp_path):
    """PIL reads 16-bit colour PNGs at 8 bits itself (the high byte): a guard, not a fix."""
    pixels = np.zeros((4, 4, 3), np.uint16)
    pixels[..., 0], pixels[..., 1] = 65535, 40000
    _png16(tmp_path / "rgb16.png", pixels)
    assert read_image(tmp_path / "rgb16.png", "RGB", (4, 4))[0, 0].tolist() == [255, 156, 0]
    np.testing.assert_allclose(load_images(tmp_path / "rgb16.png", _data(c=3))[0, :, 0, 0],
                               [1, 156 / 255 * 2 - 1, -1])


def test_given_16_bit_pngs_are_8_bit_for_256_levels_and_full_depth_for_continuous_data(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "a.png")
    quantised = load_images(tmp_path / "a.png", _data(levels=256))
    np.testing.assert_allclose(quantised[0, 0, 0], np.array([0, 1, 128, 255]) / 255 * 2 - 1)
    full = load_images(tmp_path / "a.png", _data(levels=None, value_range=(0.0, 4.0)))
    np.testing.assert_allclose(full[0, 0, 0], GREY16[0] / 65535 * 4)
    assert load_images(tmp_path / "a.png", _data(c=3)).shape == (1, 3, 4, 4)


# --------------------------------------------------------------------------- EXIF orientation
def _rotated_jpeg(path):
    """Stored 16 wide x 8 high, left half black; orientation 6: a viewer turns it 90 degrees
    clockwise, showing 8 wide x 16 high, top half black."""
    pixels = np.full((8, 16), 255, np.uint8)
    pixels[:, :8] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_as_a_viewer_shows_the_image(tmp_path):
    _rotated_jpeg(tmp_path / "r.jpg")
    x = read_image(tmp_path / "r.jpg", "L", (16, 8)).astype(float)
    assert x[:6].mean() < 30 and x[10:].mean() > 225
    given = load_images(tmp_path / "r.jpg", SimpleNamespace(shape=(1, 16, 8), value_range=(-1.0, 1.0),
                                                            levels=256))
    assert given.shape == (1, 1, 16, 8)
    assert given[0, 0, :6].mean() < -0.8 and given[0, 0, 10:].mean() > 0.8


# --------------------------------------------------------------------------- transparency
def _transparent_images(folder):
    folder.mkdir()
    red = np.zeros((4, 4, 4), np.uint8)
    red[..., 0] = 255  # red, alpha 0
    Image.fromarray(red).save(folder / "a_rgba.png")
    half = red.copy()
    half[..., 3] = 128
    Image.fromarray(half).save(folder / "b_half.png")
    Image.fromarray(np.zeros((4, 4, 2), np.uint8), mode="LA").save(folder / "c_la.png")
    palette = Image.fromarray(np.zeros((4, 4), np.uint8), mode="P")
    palette.putpalette([255, 0, 0] * 256)
    palette.save(folder / "d_p.png", transparency=0)
    return folder


def test_transparent_pixels_are_composited_onto_white(tmp_path):
    folder = _transparent_images(tmp_path / "t")
    d = images(folder, size=4, test_fraction=0.0, use_cache=False)
    pixels = np.round((d.train[:, :, 0, 0] + 1) / 2 * 255).astype(int).tolist()
    assert pixels == [[255, 255, 255], [255, 127, 127], [255, 255, 255], [255, 255, 255]]
    grey = images(folder, size=4, channels=1, test_fraction=0.0, use_cache=False)
    assert grey.train[[0, 2, 3], 0, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_given_transparent_pixels_are_composited_onto_white(tmp_path):
    folder = _transparent_images(tmp_path / "t")
    for name in ("a_rgba.png", "c_la.png", "d_p.png"):
        np.testing.assert_allclose(load_images(folder / name, _data(c=3)), 1.0, err_msg=name)


# --------------------------------------------------------------------------- array layouts
def test_the_uint8_nhwc_npz_gud_sample_writes_is_read_back(tmp_path):
    rng = np.random.default_rng(0)
    for c in (1, 3):
        x = rng.uniform(-1, 1, size=(5, c, 4, 4))
        save_npz(x, tmp_path / f"s{c}.npz", (-1.0, 1.0), sampler="heun", seed=0)
        assert np.load(tmp_path / f"s{c}.npz")["arr_0"].shape == (5, 4, 4, c)
        given = load_images(tmp_path / f"s{c}.npz", _data(c=c))
        assert given.shape == (5, c, 4, 4)
        np.testing.assert_allclose(given, x, atol=1 / 255 + 1e-9)


def test_float_channels_last_arrays_are_transposed(tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 4, 4, 3))
    np.save(tmp_path / "last.npy", x)
    np.testing.assert_allclose(load_images(tmp_path / "last.npy", _data(c=3)), x.transpose(0, 3, 1, 2))
    np.save(tmp_path / "one.npy", x[0])  # one (H, W, C) image
    np.testing.assert_allclose(load_images(tmp_path / "one.npy", _data(c=3)), x[:1].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("shape, words", [
    ((0, 1, 4, 4), "holds no images"),
    ((0, 4, 4, 1), "holds no images"),
    ((2, 1, 0, 4), "empty images"),
    ((2, 3, 4, 4), "3 channel(s)"),
    ((2, 4, 4, 2), "1 channel(s)"),
    ((2, 1, 4, 1), "either"),  # (N, 1, 4, 1) is 4 x 1 channels-first or 1 x 4 channels-last
    ((5,), "1-D"),
])
def test_bad_array_layouts_say_what_is_wrong(tmp_path, shape, words):
    np.save(tmp_path / "x.npy", np.zeros(shape))
    with pytest.raises(GudError) as e:
        load_images(tmp_path / "x.npy", _data(c=1))
    assert "E681" in str(e.value) and words in str(e.value), str(e.value)


def test_sample_npz_output_is_accepted_by_sample_given(tmp_path, capsys):
    """End to end: `gud sample --format npz` then `gud sample --given` that file."""
    from gudlang.cli import main
    spec = ("gud 1\ndata = grf(size = 8, slope = 3, n = 200)\nbasis = pixel()\nnetwork = oracle()\n"
            "given_i = col(i) < 0.5\ngamma_i(t) = linear(t, lo = -10, hi = 8)\n"
            "sample { sampler = heun; steps = 5; n = 2 }\n")
    (tmp_path / "cond.gud").write_text(spec)
    (tmp_path / "uncond.gud").write_text(spec.replace("given_i = col(i) < 0.5\n", ""))
    assert main(["sample", str(tmp_path / "uncond.gud"), "--format", "npz", "-o", str(tmp_path / "s")]) == 0
    code = main(["sample", str(tmp_path / "cond.gud"), "--given", str(tmp_path / "s.npz"), "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert np.load(tmp_path / "c.npz")["x"].shape == (2, 1, 8, 8)


def test_an_image_file_for_a_model_of_two_channels_is_refused_in_its_own_words(tmp_path):
    # it spoke of a (1, 3, 4, 4) array: PNG / JPEG hold grey or RGB, so say so and name the file
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(GudError) as info:
        load_images(tmp_path / "grey.png", _data(c=2))
    d = info.value.diagnostics[0]
    assert d.code == "E681" and "grey.png is an image file, which holds grey or RGB pixels" in d.message
    assert "(N, 2, H, W)" in d.help


def test_one_pixel_grey_images_are_not_ambiguous(tmp_path):
    # (N, 1, 1, 1) reads the same channels first or last: super-resolution from 1 x 1 images
    np.save(tmp_path / "dots.npy", np.array([0.5, -0.5]).reshape(2, 1, 1, 1))
    np.testing.assert_array_equal(load_images(tmp_path / "dots.npy", _data(c=1, size=2)).ravel(), [0.5, -0.5])
