"""The plots' numbers: the forward process `gud plot --forward` draws."""

from pathlib import Path

import numpy as np
import pytest

from gudlang.check import check_file
from gudlang.pipeline import build_model
from gudlang.plot import forward_images

SPECS = Path(__file__).resolve().parent.parent / "specs"


def test_forward_images_hold_the_given_pixels_and_noise_the_rest():
    model = build_model(check_file(str(SPECS / "inpainting.gud")))
    image = model.data.train[3]
    imgs = forward_images(model, image, [0.0, 0.5, 1.0])
    given = np.asarray(model.given).reshape(image.shape)  # pixel basis: components are pixels
    for img in imgs:
        np.testing.assert_allclose(img[given], image[given], atol=1e-12)
    hole_change = np.abs(imgs[-1][~given] - image[~given]).max()
    assert hole_change > 0.5  # the hole is pure noise at t = 1
    np.testing.assert_allclose(imgs[0], image, atol=0.05)  # gamma(0) = -13.3: nearly clean


def test_forward_images_of_a_spec_without_given_noise_every_pixel():
    model = build_model(check_file(str(SPECS / "sequential_columns.gud")))
    image = model.data.train[0]
    noisy = forward_images(model, image, [1.0])[0]
    assert np.abs(noisy - image).min() > 0  # every pixel moved


def test_plot_output_names(tmp_path, capsys, monkeypatch):
    from gudlang.cli import main

    monkeypatch.chdir(tmp_path)
    spec = str(SPECS / "digits.gud")
    (tmp_path / "figs").mkdir()
    cases = [("figs", "figs/schedule.png"), ("new/", "new/schedule.png"), (".pdf", "schedule.pdf"),
             ("a.b", None), ("plain", "plain.png")]
    for given, written in cases:
        code = main(["plot", spec, "-o", given])
        out, err = capsys.readouterr()
        if written is None:
            assert code == 2 and "E001" in err and "not an image format" in err  # `.b` is no format
            continue
        assert code == 0, err
        assert (tmp_path / written).is_file() and out.strip() == f"wrote {written}"
    assert not (tmp_path / "figs.png").exists() and not (tmp_path / ".pdf.png").exists()


def test_plot_of_a_run_folder_without_metrics_says_what_to_do(tmp_path, capsys):
    from gudlang.cli import main

    run = tmp_path / "digits-12345678"
    run.mkdir()
    code = main(["plot", str(run), "-o", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code != 0 and "is a folder" in err and "--metrics" in err and "spec.gud" in err


def test_the_training_range_spans_the_drawn_params_not_their_mean():
    # Diffusion Forcing: gamma_i = shifted_cosine(u_i), u_i ~ U(0, 1) per column; at the mean
    # u = 0.5 gamma is 0 at every t, which explain and plot used to show as "training"
    import torch

    from gudlang.explain import explain_text, training_range

    model = build_model(check_file(str(SPECS / "peers" / "diffusion_forcing.gud")))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    low, high = training_range(model, ts)
    np.testing.assert_allclose(low, -15.0, atol=1e-6)
    np.testing.assert_allclose(high, 15.0, atol=1e-6)
    assert "-15.000..15.000" in explain_text(model)
    plain = build_model(check_file(str(SPECS / "digits.gud")))  # nothing drawn: gamma itself, twice
    low, high = training_range(plain, ts)
    np.testing.assert_array_equal(low, high)
    np.testing.assert_allclose(low, plain.schedule(ts)[0].numpy())


def test_images_of_two_or_four_channels_show_their_channels_side_by_side(tmp_path, capsys):
    # a PNG reads 2 channels as grey + transparency and 4 as RGB + transparency, and matplotlib
    # refused (H, W, 2): grids, PNG folders and the forward plot show each channel in grey
    from PIL import Image

    from gudlang.cli import main
    from gudlang.images import save_grid, save_png_dir, viewable
    x = np.random.default_rng(0).uniform(-1, 1, (3, 2, 5, 7))
    side = viewable(x)
    assert side.shape == (3, 1, 5, 14)
    np.testing.assert_array_equal(side[:, 0, :, 7:], x[:, 1])
    assert viewable(x[:, :1]).shape == (3, 1, 5, 7) and viewable(np.zeros((1, 3, 4, 4))).shape == (1, 3, 4, 4)
    save_grid(x, tmp_path / "grid.png", (-1, 1))
    save_png_dir(np.repeat(x, 2, axis=1), tmp_path / "dir", (-1, 1))  # four channels
    assert Image.open(tmp_path / "grid.png").mode == "L"
    png = Image.open(tmp_path / "dir" / "000000.png")
    assert png.mode == "L" and png.size == (28, 5)
    np.savez(tmp_path / "two.npz", x=np.random.default_rng(1).uniform(-1, 1, (40, 2, 8, 8)))
    spec = tmp_path / "two.gud"
    spec.write_text(f'gud 1\ndata = npz("{tmp_path / "two.npz"}")\nbasis = pixel()\ngamma(t) = linear(t)\n')
    assert main(["plot", str(spec), "--forward", "-o", str(tmp_path / "forward.png")]) == 0
    assert (tmp_path / "forward.png").is_file()


@pytest.mark.parametrize("shape", [(1, 64), (64, 1), (8, 8), (12, 20), (3, 40)])
def test_grids_are_about_square_whatever_the_image_shape(tmp_path, shape):
    # 64 thin 1 x 64 rows in 8 columns made a 17 x 521 strip in which each image was one pixel
    # high; in 2 columns of 32 they make a 131 x 65 grid, upscaled twice
    from PIL import Image

    from gudlang.images import save_grid
    save_grid(np.zeros((64, 1) + shape), tmp_path / "grid.png", (-1, 1))
    width, height = Image.open(tmp_path / "grid.png").size
    assert 0.4 <= width / height <= 2.5 and min(width, height) >= 128, (width, height)


def test_plotting_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    # plot.py forced the Agg backend (and set MPLBACKEND): after model.plot_schedule() a user's
    # plt.show() showed nothing; the returned figure is pyplot's, as the user's own would be,
    # and the figures drawn into files are not left in pyplot
    import os
    import subprocess
    import sys

    code = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import gudlang
from gudlang.plot import plot_schedule
model = gudlang.load({str(SPECS / "grf_oracle.gud")!r})
fig = model.plot_schedule()
plot_schedule(model.model, "schedule.png")
print(matplotlib.get_backend(), fig.number in plt.get_fignums(), len(plt.get_fignums()))
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "True", "1"]
    assert (tmp_path / "schedule.png").read_bytes()[:4] == b"\x89PNG"
