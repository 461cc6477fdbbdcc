"""`gud sample --given / --mask` and `gud extend` on Gaussian-field oracle specs: outputs, the
method they name, and clear errors (exit 2 for files, nothing written) on bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from gudlang.cli import main

CONDITIONAL = """gud 1
data = grf(size = 8, slope = 3, n = 200)
basis = pixel()
network = oracle()
given_i = col(i) < 0.5
gamma_i(t) = linear(t, lo = -10, hi = 8)
sample { sampler = heun; steps = 20; n = 4 }
"""
UNCONDITIONAL = CONDITIONAL.replace("given_i = col(i) < 0.5\n", "")
WAVELET = CONDITIONAL.replace("basis = pixel()", "basis = wavelet(levels = 2)").replace(
    "given_i = col(i) < 0.5", "given_i = level(i) <= 1")


@pytest.fixture
def files(tmp_path):
    for name, text in (("cond", CONDITIONAL), ("uncond", UNCONDITIONAL), ("wavelet", WAVELET)):
        (tmp_path / f"{name}.gud").write_text(text)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.uniform(-1, 1, size=(3, 1, 8, 8)))
    np.save(tmp_path / "small.npy", rng.uniform(-1, 1, size=(2, 1, 4, 4)))
    np.save(tmp_path / "pixels.npy", rng.uniform(0, 255, size=(2, 1, 8, 8)))
    np.save(tmp_path / "rgb.npy", rng.uniform(-1, 1, size=(2, 3, 8, 8)))
    np.save(tmp_path / "odd.npy", rng.uniform(-1, 1, size=(2, 1, 8, 6)))
    Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(tmp_path / "one.png")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04garbage")  # a zip header and nothing else
    np.savez(tmp_path / "whole.npz", x=rng.uniform(-1, 1, size=(2, 1, 8, 8)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])  # truncated mid-member
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "big.png")
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_given_completes_the_images_keeping_the_given_pixels(capsys, files):
    code, out, err = run(capsys, "sample", files / "cond.gud", "--given", files / "images.npy", "-o", files / "o" / "a")
    assert code == 0, err
    assert "trained conditioning on 32 of 64 components" in out
    result = np.load(files / "o" / "a.npz")
    given = np.load(files / "images.npy")
    assert result["x"].shape == (3, 1, 8, 8) and str(result["conditioning"]) == "trained"
    np.testing.assert_allclose(result["x"][..., :4], given[..., :4], atol=1e-5)
    assert (files / "o" / "a.png").is_file()


def test_a_png_is_read_in_pixel_values_and_mapped_to_the_data_range(capsys, files):
    code, _, err = run(capsys, "sample", files / "cond.gud", "--given", files / "one.png", "-o", files / "b")
    assert code == 0, err
    from gudlang.check import check_text
    from gudlang.pipeline import load_spec_data
    lo, hi = load_spec_data(check_text(CONDITIONAL)).value_range
    png = lo + (hi - lo) * np.asarray(Image.open(files / "one.png"), dtype=np.float64) / 255
    np.testing.assert_allclose(np.load(files / "b.npz")["x"][0, 0, :, :4], png[:, :4], atol=1e-5)


def test_a_mask_on_an_unconditional_model_conditions_by_replacement(capsys, files):
    code, out, err = run(capsys, "sample", files / "uncond.gud", "--given", files / "images.npy",
                         "--mask", "row(i) >= 0.5 or col(i) < 0.25", "-o", files / "c")
    assert code == 0, err
    assert "replacement conditioning on 40 of 64 components" in out
    assert str(np.load(files / "c.npz")["conditioning"]) == "replacement"


def test_a_smaller_image_is_upsampled_onto_the_coarse_wavelet_levels(capsys, files):
    code, out, err = run(capsys, "sample", files / "wavelet.gud", "--given", files / "small.npy", "-o", files / "d")
    assert code == 0, err
    x = np.load(files / "d.npz")["x"]
    small = np.load(files / "small.npy")
    # the 2 x 2 block means of the completion are the given 4 x 4 image (Haar coarse levels)
    means = x.reshape(2, 1, 4, 2, 4, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(means, small, atol=1e-5)


def test_extend_adds_columns_and_keeps_the_given_image(capsys, files):
    code, out, err = run(capsys, "extend", files / "cond.gud", "--image", files / "images.npy", "--columns", 10,
                         "-o", files / "e")
    assert code == 0, err
    x = np.load(files / "e.npz")["x"]
    assert x.shape == (3, 1, 8, 18)
    np.testing.assert_allclose(x[..., :8], np.load(files / "images.npy"), atol=1e-5)


@pytest.mark.parametrize("args, code, words", [
    (("sample", "cond.gud", "--given", "missing.npy"), 2, "E681"),
    (("sample", "cond.gud", "--given", "pixels.npy"), 2, "outside the data range"),
    (("sample", "cond.gud", "--given", "rgb.npy"), 2, "1 channel(s)"),
    (("sample", "cond.gud", "--given", "odd.npy"), 2, "does not scale"),
    (("sample", "cond.gud", "--given", "cond.gud"), 2, "not an image"),
    (("sample", "uncond.gud", "--given", "images.npy"), 1, "--mask"),
    (("sample", "uncond.gud", "--given", "images.npy", "--mask", "col(i) + 1"), 1, "must be a condition"),
    (("sample", "uncond.gud", "--given", "images.npy", "--mask", "col(i) < 2"), 1, "every component"),
    (("sample", "uncond.gud", "--given", "images.npy", "--mask", "col(i) < t"), 1, "`t` is not defined"),
    (("sample", "cond.gud", "--given", "images.npy", "--mask", "row(i) < 0.5"), 1, "trained to be given"),
    (("extend", "uncond.gud", "--image", "images.npy", "--columns", "3"), 1, "E682"),
    (("extend", "wavelet.gud", "--image", "images.npy", "--columns", "3"), 1, "not a band"),
    (("sample", "cond.gud", "--given", "garbage.npz"), 2, "cannot read"),
    (("sample", "cond.gud", "--given", "cut.npz"), 2, "cannot read"),
    (("extend", "cond.gud", "--image", "garbage.npz", "--columns", "3"), 2, "cannot read"),
    (("sample", "cond.gud", "--given", "big.png"), 2, "too large to read"),
])
def test_bad_conditioning_input_is_a_clear_error_and_writes_nothing(capsys, files, args, code, words, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # big.png (1600 pixels) counts as a decompression bomb
    argv = [files / a if a.endswith((".gud", ".npy", ".npz", ".png")) else a for a in args]
    got, out, err = run(capsys, *argv, "-o", files / "bad" / "x")
    assert got == code, err
    assert words in err and "Traceback" not in err
    assert not (files / "bad").exists()


def test_the_python_api_samples_given_images_in_data_space(files):
    import gudlang
    model = gudlang.load(files / "cond.gud")
    given = np.load(files / "images.npy")
    x = model.sample(given=given, steps=10)
    assert x.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(x.numpy()[..., :4], given[..., :4], atol=1e-5)
    done = model.complete(given, steps=10)
    assert done.method == "trained" and done.mask.sum() == 32
    replaced = gudlang.load(files / "uncond.gud").sample(given=given, mask="col(i) < 0.5", steps=10)
    np.testing.assert_allclose(replaced.numpy()[..., :4], given[..., :4], atol=1e-5)


def test_conditional_nll_of_the_oracle_is_the_analytic_conditional_nll(capsys, files):
    """gud nll on a conditional oracle spec: bits/dim of the generated pixels given the others,
    against the closed-form Gaussian conditional density of the t = 0 marginal (gamma(0) noise on
    the generated pixels, the given ones held clean), computed with NumPy / SciPy."""
    from scipy.stats import multivariate_normal

    import gudlang
    model = gudlang.load(files / "cond.gud")
    data = model.model.data
    x = np.asarray(data.test[:16], dtype=np.float64)
    result = model.nll(x)
    assert result.conditional and result.dims == 32
    # closed form, in pixel space (pixel basis, white prior: whitened = data - mean)
    mean = np.asarray(data.mean, dtype=np.float64).reshape(-1)
    cov = np.asarray(data.cov)
    gamma0 = model.model.schedule(torch.zeros(1, dtype=torch.float64))[0][0].numpy()
    alpha2 = 1.0 / (1.0 + np.exp(gamma0))
    g, k = ~model.model.given, model.model.given
    centred = x.reshape(len(x), -1) - np.asarray(model.model.stats.mean).reshape(-1)
    m = (mean - np.asarray(model.model.stats.mean).reshape(-1))
    # the t = 0 marginal of the generated pixels: alpha x0 + sigma eps; the given ones are x0 itself
    a = np.sqrt(alpha2)
    cov0 = (a[:, None] * cov * a[None, :])
    cov0[np.diag_indices(64)] += 1 - alpha2
    cov0[np.ix_(k, k)] = cov[np.ix_(k, k)]
    cov0[np.ix_(g, k)] = (a[g][:, None] * cov[np.ix_(g, k)])
    cov0[np.ix_(k, g)] = cov0[np.ix_(g, k)].T
    m0 = np.where(g, a * m, m)
    gain = cov0[np.ix_(g, k)] @ np.linalg.inv(cov0[np.ix_(k, k)])
    bits = []
    for row in centred:
        mu = m0[g] + gain @ (row[k] - m0[k])
        sigma = cov0[np.ix_(g, g)] - gain @ cov0[np.ix_(k, g)]
        logp = multivariate_normal(mu, sigma).logpdf(row[g])
        lo, hi = data.value_range
        bits.append(-(logp + 32 * np.log(hi - lo)) / (32 * np.log(2)))
    assert abs(result.mean - np.mean(bits)) < 0.01, (result.mean, np.mean(bits))


def test_nll_of_images_not_at_the_models_size_is_E681(capsys, files):
    code, _, err = run(capsys, "nll", files / "cond.gud", "--given", files / "small.npy")
    assert code == 2 and "error[E681]" in err and "the likelihood is of the model's images, (1, 8, 8)" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "nll", files / "cond.gud", "--given", files / "garbage.npz")
    assert code == 2 and "error[E681]" in err and "cannot read" in err


def test_default_names_keep_completions_of_other_images_and_masks_apart(capsys, files, monkeypatch):
    # they shared one default name, and each run overwrote the last one's results
    monkeypatch.chdir(files)
    np.save(files / "other.npy", np.load(files / "images.npy")[::-1].copy())
    written = []
    for argv in (("sample", "cond.gud", "--given", "images.npy"), ("sample", "cond.gud", "--given", "other.npy"),
                 ("sample", "uncond.gud", "--given", "images.npy", "--mask", "col(i) < 0.5"),
                 ("sample", "uncond.gud", "--given", "images.npy", "--mask", "col(i) < 0.25"),
                 ("extend", "cond.gud", "--image", "images.npy", "--columns", 2),
                 ("extend", "cond.gud", "--image", "other.npy", "--columns", 2),
                 # other sampling: the grid, a sample.* setting, the steps (extend named none of them)
                 ("sample", "cond.gud", "--given", "images.npy", "--grid", "uniform"),
                 ("sample", "cond.gud", "--given", "images.npy", "-s", "sample.denoise=false"),
                 ("extend", "cond.gud", "--image", "images.npy", "--columns", 2, "--steps", 5),
                 ("extend", "cond.gud", "--image", "images.npy", "--columns", 2, "-s", "sample.grid=uniform")):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        written.append(out.split(" and ")[0].removeprefix("wrote "))
    assert len(set(written)) == len(written), written
    assert all((files / w).is_file() for w in written)
    code, out, _ = run(capsys, "sample", "cond.gud")  # the spec's own test images: no digest
    assert code == 0 and out.split(" and ")[0].endswith("-given.png")


def test_an_extension_too_large_for_memory_is_refused_before_any_window(capsys, files):
    code, out, err = run(capsys, "extend", files / "cond.gud", "--image", files / "images.npy",
                         "--columns", 10 ** 12)
    assert code != 0 and "E651" in err and "more than half of this machine's" in err and out == ""


def test_extend_reports_its_windows(files):
    import gudlang

    model = gudlang.load(files / "cond.gud")
    seen = []
    x, _, k = model.extend(np.load(files / "images.npy"), columns=10, progress=lambda d, t: seen.append((d, t)))
    assert k == 4 and x.shape[-1] == 18
    assert seen == [(1, 3), (2, 3), (3, 3)]  # 10 columns, 4 new per window of 8 with 4 given


def test_an_extension_of_a_share_of_the_images_is_that_of_the_whole_set(files):
    # a torchrun rank extended its images 2 and 3 from the noise of images 0 and 1
    import gudlang

    model = gudlang.load(files / "cond.gud")
    images = np.load(files / "images.npy")
    whole = model.extend(images, columns=10, seed=3).x
    np.testing.assert_allclose(model.extend(images[1:], columns=10, seed=3, first=1).x, whole[1:], atol=1e-5)
    assert not np.allclose(model.extend(images[1:], columns=10, seed=3).x, whole[1:], atol=1e-3)


TRAINED = """gud 1
data = npz("d.npz", test_fraction = {fraction})
basis = pixel()
network = mlp(hidden = 16, depth = 1)
given_i = col(i) < 0.5
gamma_i(t) = linear(t, lo = -8, hi = 8)
train {{ steps = 2; batch = 4; sample_every = 0 }}
sample {{ sampler = ddim; steps = 3; n = 2 }}
"""


@pytest.mark.parametrize("fraction", [0.2, 0.0])
def test_the_images_a_trained_conditional_model_completes_are_its_own_data_or_an_error(capsys, tmp_path,
                                                                                     monkeypatch, fraction):
    # `gud sample RUN` and `gud plot RUN --reverse` completed whatever the data file held now, and
    # with no test split named train images "test images"; `gud nll` said E641.
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("d.npz", x=rng.uniform(-1, 1, size=(10, 1, 8, 8)))
    (tmp_path / "c.gud").write_text(TRAINED.format(fraction=fraction))
    assert run(capsys, "train", "--quiet", "c.gud", "--out", "runs", "--name", "r")[0] == 0
    code, out, err = run(capsys, "sample", "runs/r", "-n", "2", "-o", "s")
    assert code == 0 and f"2 completions of the first 2 {'test' if fraction else 'train'} images" in out, err
    np.savez("d.npz", x=rng.uniform(-1, 1, size=(10, 1, 8, 8)))
    for args in (("sample", "runs/r", "-o", "t"), ("plot", "runs/r", "--reverse", "-o", "rev.png")):
        code, _, err = run(capsys, *args)
        assert code == 1 and "error[E641]: the data changed since training" in err, err
    assert not (tmp_path / "t.npz").exists() and not (tmp_path / "rev.png").exists()


def test_completions_go_in_batches_of_batch_size_and_equal_those_made_at_once(capsys, files, monkeypatch):
    # --batch-size was ignored for completions: every image went through the sampler at once
    import gudlang.api
    sizes = []
    complete = gudlang.api.GudModel.complete
    monkeypatch.setattr(gudlang.api.GudModel, "complete",
                        lambda self, images, **k: sizes.append(len(images)) or complete(self, images, **k))
    for name, extra in (("whole", ()), ("batched", ("--batch-size", 2))):
        code, _, err = run(capsys, "sample", files / "cond.gud", "--given", files / "images.npy", *extra,
                           "-o", files / name)
        assert code == 0, err
    assert sizes == [3, 2, 1]
    whole, batched = np.load(files / "whole.npz"), np.load(files / "batched.npz")
    np.testing.assert_allclose(batched["x"], whole["x"], atol=1e-5)
    np.testing.assert_array_equal(batched["known"], whole["known"])


def test_more_completions_than_the_test_split_holds_is_an_error(capsys, files, monkeypatch):
    # -n 1000 made 20 completions without a word (with --given the same was E651)
    monkeypatch.chdir(files)
    code, _, err = run(capsys, "sample", "cond.gud", "-n", 100000)
    assert code == 1 and "E651" in err and "test split holds" in err
