"""Bad arguments to the Python API (`gudlang.load`, `GudModel.sample / complete / nll / ...`)
are a GudError that says what is wrong, never a raw Python exception or a silently wrong
result; arguments the CLI accepts (numpy integers, (C, H, W) images, a file path) work."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import gudlang
from gudlang.conditioning import check_value_range
from gudlang.cli import main

from expect_util import refused

PLAIN = """gud 1
data = digits()
basis = pixel()
prior = white
network = mlp(hidden = 16, depth = 1)
param a = 1.0
gamma_i(t) = soft(t, -log(var(i)), a = a)
train { steps = 4; batch = 16; warmup = 1; checkpoint_every = 4; sample_every = 0; log_every = 2 }
sample { sampler = ddim; steps = 3; n = 4 }
"""
# the same with the first four columns given: completion without a mask, and extension
GIVEN = PLAIN.replace("param a = 1.0\n", "given_i = col(i) < 0.5\n").replace(", a = a)", ")")


def _train(root, name, text):
    (root / f"{name}.gud").write_text(text)
    assert main(["train", "--quiet", str(root / f"{name}.gud"), "--out", str(root / name)]) == 0
    (run,) = [p for p in (root / name).iterdir() if p.is_dir()]
    return gudlang.load(run), run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    plain, run = _train(root, "plain", PLAIN)
    given, _ = _train(root, "given", GIVEN)
    from gudlang.pipeline import load_spec_data
    images = np.asarray(load_spec_data(plain.model.checked).test[:2], dtype=np.float64)
    return SimpleNamespace(plain=plain, given=given, run=run, images=images, root=root)




# --------------------------------------------------------------------------- load
@pytest.mark.parametrize("device, phrase", [("foo", "unknown device 'foo'"), ("meta", "is not supported"),
                                            (["cpu"], "unknown device")])
def test_a_device_that_does_not_exist_is_E640(trained, device, phrase):
    refused("E640", phrase, gudlang.load, trained.run, device=device)


def test_cuda_without_a_cuda_device_is_E640(trained, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused("E640", "no CUDA device is available", gudlang.load, trained.run, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    refused("E640", "no CUDA device 3 (1 available)", gudlang.load, trained.run, device="cuda:3")


def test_cpu_and_auto_devices_load(trained, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gudlang.load(trained.run, device="auto").device == torch.device("cpu")
    assert gudlang.load(trained.run, device=torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.parametrize("target", [None, 5, ""])
def test_load_needs_a_path(target):
    refused("E003", "gudlang.load needs the path", gudlang.load, target)


def test_a_path_must_be_a_formula_string(trained):
    refused("E003", "the path must be a formula", trained.plain.with_path, None)
    refused("E003", "got 3", gudlang.load, trained.run, path=3)


@pytest.mark.parametrize("params, phrase", [
    (None, "params must be a dict"), ("a=1", "params must be a dict of param name -> number, got 'a=1'"),
    ({1: 2}, "param names must be non-empty strings, got 1"), ({"a": [1]}, "param `a` must be a number"),
    ({"a": True}, "param `a` must be a number"),
])
def test_params_must_be_a_dict_of_names_to_numbers(trained, params, phrase):
    refused("E003", phrase, trained.plain.with_params, params)


def test_params_take_numpy_numbers_and_load_checks_them_too(trained):
    assert trained.plain.with_params({"a": np.float64(1.0)}).sample(1).shape == (1, 1, 8, 8)
    refused("E003", "params must be a dict", gudlang.load, trained.run, params="a=1")


# --------------------------------------------------------------------------- sample
@pytest.mark.parametrize("kwargs, phrase", [
    ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"seed": "x"}, "the seed must be an integer, got 'x'"),
    ({"seed": 1.5}, "the seed must be an integer"),
    ({"start": -1}, "start must be an integer >= 0, got -1"),
])
def test_bad_sampling_arguments_are_E651(trained, kwargs, phrase):
    refused("E651", phrase, trained.plain.sample, 2, **kwargs)


@pytest.mark.parametrize("kwargs, phrase", [
    ({"frames": 1}, "frames must be an integer >= 2, got 1"),
    ({"frames": "8"}, "frames must be an integer >= 2, got '8'"),
    ({"steps": 0}, "steps must be a positive integer, got 0"),
])
def test_bad_trajectory_arguments_are_E651(trained, kwargs, phrase):
    refused("E651", phrase, trained.plain.trajectory, 2, **kwargs)
    refused("E651", "the number of samples must be a positive integer, got 0", trained.plain.trajectory, 0)


def test_the_number_of_samples_is_any_integer_but_not_a_bool(trained):
    assert trained.plain.sample(np.int64(2)).shape == (2, 1, 8, 8)
    refused("E651", "the number of samples must be a positive integer, got True", trained.plain.sample, True)


def test_a_huge_seed_samples_reproducibly(trained):
    x = trained.plain.sample(2, seed=2 ** 70)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(trained.plain.sample(2, seed=2 ** 70), x)
    assert not torch.equal(trained.plain.sample(2, seed=2 ** 70 + 1), x)
    assert trained.plain.sample(1, seed=-3).shape == (1, 1, 8, 8)  # negative seeds, as torch takes them


# --------------------------------------------------------------------------- complete
def test_images_of_one_image_are_completed_as_the_cli_reads_them(trained):
    image = trained.images[0]  # (1, 8, 8)
    full = trained.given.complete(image[None], seed=1).x
    np.testing.assert_array_equal(trained.given.complete(image, seed=1).x, full)
    np.testing.assert_array_equal(trained.given.complete(image[0], seed=1).x, full)
    np.testing.assert_array_equal(trained.given.complete(torch.as_tensor(image), seed=1).x, full)


def test_a_stack_of_grey_images_without_a_channel_axis_is_read_as_one_channel(trained):
    # (N, H, W) cannot be channels first (N channels) nor channels last (W channels) for a grey model
    stack = trained.images[:, 0]  # (2, 8, 8)
    np.testing.assert_array_equal(trained.given.complete(stack, seed=1).x,
                                  trained.given.complete(trained.images, seed=1).x)
    refused("E681", "images of 8 channel(s) if channels first, 4 if channels last; the model's images have 1",
            trained.given.complete, np.zeros((2, 8, 4, 4)))


@pytest.mark.parametrize("images, phrase", [
    (None, "the images must be an array of numbers, got None"),
    (["a", "b"], "must be an array of numbers"),
    (np.zeros((0, 1, 8, 8)), "the array of images holds no images"),
    (np.zeros((2, 3, 8, 8)), "1 channel(s)"),
])
def test_unusable_images_are_E681(trained, images, phrase):
    refused("E681", phrase, trained.given.complete, images)


def test_a_file_path_is_read_like_gud_sample_given(trained):
    np.save(trained.root / "given.npy", trained.images)
    done = trained.given.complete(str(trained.root / "given.npy"), seed=1)
    np.testing.assert_array_equal(done.x, trained.given.complete(trained.images, seed=1).x)
    refused("E681", "no such file", trained.given.complete, trained.root / "missing.npy")


def test_pixel_values_and_nan_images_are_refused_before_sampling(trained):
    refused("E681", "outside the data range [-1, 1]", trained.given.complete, trained.images * 255)
    nan = trained.images.copy()
    nan[0, 0, 3, 3] = np.nan
    refused("E681", "the array of images holds NaN or infinite values", trained.given.complete, nan)
    refused("E681", "outside the data range", trained.given.sample, given=trained.images * 255)


@pytest.mark.parametrize("mask, phrase", [
    (5, "the mask must be a condition written as in a spec or a bool array of the model's 64 components, got 5"),
    (np.ones(63, dtype=bool), "got an array of shape (63,) and dtype bool"),
    (np.ones(64, dtype=int), "dtype int"),
])
def test_a_mask_is_a_condition_or_a_bool_array_of_the_components(trained, mask, phrase):
    refused("E680", phrase, trained.plain.complete, trained.images, mask=mask)


def test_a_bool_mask_conditions_like_the_condition_that_gave_it(trained):
    by_text = trained.plain.complete(trained.images, mask="col(i) < 0.5", seed=2)
    by_array = trained.plain.complete(trained.images, mask=by_text.mask, seed=2)
    assert by_array.method == "replacement" and by_array.mask.sum() == 32
    np.testing.assert_array_equal(by_array.x, by_text.x)
    assert trained.given.complete(trained.images, mask=trained.given.model.given, seed=2).method == "trained"


def test_bad_completion_arguments_are_E651(trained):
    refused("E651", "steps must be a positive integer, got 0", trained.given.complete, trained.images, steps=0)
    refused("E651", "the seed must be an integer", trained.given.complete, trained.images, seed="x")


def test_extension_checks_its_count_and_images(trained):
    refused("E003", "columns must be a positive integer, got -3", trained.given.extend, trained.images, columns=-3)
    refused("E681", "outside the data range", trained.given.extend, trained.images * 255, columns=2)
    done = trained.given.extend(trained.images[0], columns=2, steps=2)  # one (C, H, W) image
    x, nfe, k = done  # unpacks as before
    assert x.shape == (1, 1, 8, 10) and k == 4 and done.band == 4 and done.nfe == nfe > 0 and done.x is x


# --------------------------------------------------------------------------- nll
@pytest.mark.parametrize("split", ["foo", "TEST", None])
def test_only_the_train_and_test_splits_exist(trained, split):
    refused("E660", 'split must be "train" or "test"', trained.plain.nll, split=split, n=1)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_n_is_a_positive_integer(trained, n):
    refused("E660", "n must be a positive integer", trained.plain.nll, n=n)


def test_nll_takes_numpy_counts(trained):
    result = trained.plain.nll(trained.images, n=np.int64(1), batch_size=np.int64(1))
    assert result.bits.shape == (1,) and np.isfinite(result.mean)


def test_nll_images_must_be_full_size_and_in_range(trained):
    refused("E681", "the images are 4 x 4, the model's 8 x 8", trained.plain.nll, np.zeros((2, 1, 4, 4)))
    refused("E681", "outside the data range", trained.plain.nll, trained.images * 255)
    refused("E660", "the seed must be an integer", trained.plain.nll, trained.images, seed="x")


def test_the_range_check_is_loose_for_continuous_data_only():
    images = np.full((1, 1, 2, 2), 1.2)
    refused("E681", "outside the data range", check_value_range, images,
            SimpleNamespace(value_range=(-1.0, 1.0), levels=256))
    check_value_range(images, SimpleNamespace(value_range=(-1.0, 1.0), levels=None))
    # a Gaussian field's range is a +-4 std display window: a 5-sigma value is data, 255 is not
    grf = SimpleNamespace(value_range=(-4.0, 4.0), levels=None)
    check_value_range(images * 5 / 1.2, grf)
    refused("E681", "outside the data range [-4, 4]", check_value_range, images * 255, grf)


def test_arrays_in_memory_read_as_files_do_channels_last_and_uint8_pixels(trained):
    # the same reading as --given FILE (conditioning.images_from_array)
    from gudlang.api import given_images

    data = trained.given.model.data
    images = trained.images[:2]
    np.testing.assert_array_equal(given_images(images.transpose(0, 2, 3, 1), data), images)
    pixels = np.round((images + 1) / 2 * 255).astype(np.uint8)
    np.testing.assert_allclose(given_images(pixels, data), pixels / 255.0 * 2 - 1)


# --------------------------------------------------------------------------- state the API must leave alone
def test_nll_runs_the_network_in_its_own_dtype_and_leaves_it_so(trained):
    model = gudlang.load(trained.run)
    model.eps_model.double()  # a float64 network: measured in float64, not cast to float32 in place
    result = model.nll(trained.images[:1])
    assert model.dtype == torch.float64 and np.isfinite(result.mean)
    assert next(model.eps_model.parameters()).dtype == torch.float64


def test_an_export_has_no_raw_weights_to_load(trained):
    folder = trained.plain.export(trained.root / "exported")
    refused("E640", "holds only the EMA weights (an export)", gudlang.load, folder, weights="raw")


def test_train_run_gives_back_the_callers_random_states(trained):
    import random
    spec = trained.root / "plain.gud"
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        gudlang.train_run(spec, {"train.steps": "1"}, out=trained.root / "rng", quiet=True)
        draws.append((torch.rand(2), np.random.rand(2), random.random()))
    for seed, (t, n, p) in zip((1, 2), draws):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        assert torch.equal(t, torch.rand(2)) and np.array_equal(n, np.random.rand(2)) and p == random.random()


class _NoWeights(torch.nn.Module):
    def forward(self, x, gamma):
        return torch.zeros_like(x)


@pytest.mark.parametrize("kwargs, code, phrase", [
    ({"network": lambda x, g: x}, "E003", "network must be an instance of torch.nn.Module, got function"),
    ({"network": _NoWeights}, "E003", "got the class _NoWeights"),
    ({"network": _NoWeights()}, "E613", "the network (_NoWeights) has no parameters to train"),
    ({"overrides": ["train.steps=5"]}, "E003", "overrides must be a dict"),
    ({"overrides": {"train.steps": None}}, "E003", "override `train.steps` must be a number, true / false"),
    ({"overrides": {3: "1"}}, "E003", "override names must be non-empty strings, got 3"),
    ({"until": 0}, "E003", "until must be a positive integer (the step to stop at), got 0"),
    ({"until": "2"}, "E003", "until must be a positive integer"),
    ({"quiet": "no"}, "E003", "quiet must be True or False, got 'no'"),
])
def test_train_run_refuses_arguments_of_the_wrong_kind_and_leaves_no_run(trained, kwargs, code, phrase):
    out = trained.root / "refused"
    refused(code, phrase, gudlang.train_run, trained.root / "plain.gud", out=out, name="r", **kwargs)
    assert not (out / "r").exists()


def test_train_run_and_load_take_spec_text(trained, capsys):
    out = trained.root / "text"
    result = gudlang.train_run(PLAIN, out=out, quiet=True)
    assert result.run.parent == out and result.run.name.startswith("spec-")
    assert (result.run / "spec.gud").read_text() == PLAIN
    assert json.loads((result.run / "run.json").read_text())["command"] == ["train_run(<spec text>)"]
    # the same weights as the run trained from the file with the same text
    from_text, from_file = gudlang.load(result.run), trained.plain
    assert from_text.hash == from_file.hash
    assert torch.equal(from_text.sample(2, seed=3), from_file.sample(2, seed=3))
    # a different text beside the run is refused; its own text resumes it
    refused("E641", "<spec text> differs from the spec", gudlang.train_run, PLAIN.replace("a = 1.0", "a = 2.0"),
            resume=result.run)
    assert gudlang.train_run(PLAIN, resume=result.run, quiet=True).run == result.run
    # an error in the text points into it
    err = refused("E105", "unexpected", gudlang.train_run, PLAIN.replace("digits()", "digits(n = )"), out=out)
    assert "<spec text>:2" in str(err), str(err)
    # load: an oracle spec's text gives the exact model; a trainable one says to train it
    exact = gudlang.load("gud 1\ndata = grf(size = 8, slope = 3, n = 64)\nbasis = pixel()\nnetwork = oracle()\n"
                         "gamma(t) = linear(t)\n")
    assert exact.sample(2).shape == (2, 1, 8, 8) and "<spec text>" in repr(exact)
    refused("E640", "train it with gudlang.train_run(text)", gudlang.load, PLAIN)


def test_a_float64_run_loads_in_float64(trained):
    spec = trained.root / "double.gud"
    spec.write_text(PLAIN + "runtime { dtype = float64 }\n")
    result = gudlang.train_run(spec, out=trained.root / "double", quiet=True)
    model = gudlang.load(result.run)
    assert model.dtype == torch.float64 and model.sample(2).shape == (2, 1, 8, 8)


def test_more_completions_than_given_images_and_a_grid_for_the_adaptive_sampler_are_refused(trained, tmp_path,
                                                                                          capsys):
    refused("E651", "5 completions asked of 2 given image(s)", trained.given.sample, 5, given=trained.images)
    refused("E651", "a time grid (logsnr) is for the fixed-step samplers", trained.plain.sample, 2,
            sampler="adaptive", grid="logsnr")
    np.save(tmp_path / "two.npy", trained.images)
    assert main(["sample", str(trained.run), "--given", str(tmp_path / "two.npy"), "-n", "3",
                 "--mask", "col(i) < 0.5", "-o", str(tmp_path / "c")]) == 1
    assert "-n 3 asks for more completions than" in capsys.readouterr().err


def test_a_model_says_what_it_is(trained):
    text = repr(trained.plain)
    assert text.startswith(f"GudModel({trained.run}: digits 1x8x8, pixel basis, white prior, mlp network, step 4")
    assert trained.plain.hash[:20] in text and "conditional" in repr(trained.given)


def test_a_fixed_param_moved_on_a_trained_model_says_it_was_fixed(trained):
    # PLAIN's `param a = 1.0` is fixed: the network saw a = 1 only
    err = refused("E303", "with a = 0.5:", gudlang.load, trained.run, params={"a": 0.5})
    assert err.diagnostics[0].help.startswith("the network was trained at `a` = 1 only (a fixed param)")


def test_train_run_takes_overrides_as_python_values(trained):
    result = gudlang.train_run(trained.root / "plain.gud", {"train.betas": [0.9, 0.99], "train.steps": 1,
                                                            "train.flip": False}, out=trained.root / "values",
                               quiet=True)
    spec = gudlang.load(result.run).spec
    assert spec.train.betas == (0.9, 0.99) and spec.train.steps == 1 and spec.train.flip is False
    refused("E003", "out must be a folder name", gudlang.train_run, trained.root / "plain.gud", out=5)
    refused("E003", "name must be a folder name (a str or path), got int", gudlang.train_run,
            trained.root / "plain.gud", out=trained.root / "values", name=5)


@pytest.mark.parametrize("network, phrase", [(torch.nn.Linear, "got the class Linear"), (5, "got int")])
def test_load_refuses_a_network_that_is_not_a_module(trained, network, phrase):
    refused("E003", phrase, gudlang.load, trained.run, network=network)


# --------------------------------------------------------------------------- arguments once ignored
def test_a_mask_without_images_is_refused_not_ignored(trained):
    refused("E651", "a mask names the known components of given images, and none were given",
            trained.plain.sample, 2, mask="col(i) < 0.5")


def test_completions_through_sample_honour_start_and_batch_size(trained):
    images = np.concatenate([trained.images, trained.images[::-1]])
    whole = trained.given.complete(images, seed=3).x
    np.testing.assert_allclose(trained.given.sample(given=images, seed=3, batch_size=1).numpy(), whole, atol=1e-6)
    shifted = trained.given.complete(images, seed=3, first=5).x
    np.testing.assert_allclose(trained.given.sample(given=images, seed=3, start=5).numpy(), shifted, atol=1e-6)
    assert not np.allclose(shifted, whole)
    seen = []
    trained.given.sample(given=images, seed=3, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 4), (4, 4)]
    refused("E651", "batch_size must be a positive integer, got 0", trained.given.sample, given=images, batch_size=0)


@pytest.mark.parametrize("call", ["sample", "nll", "extend"])
def test_a_progress_that_is_not_a_function_is_refused_before_any_work(trained, call):
    code, run = {"sample": ("E651", lambda: trained.plain.sample(2, progress=5)),
                 "nll": ("E660", lambda: trained.plain.nll(trained.images, progress=5)),
                 "extend": ("E651", lambda: trained.given.extend(trained.images, columns=2, progress=5))}[call]
    refused(code, "progress must be a function progress(done, total), got 5", run)


def test_hutchinson_probes_with_the_exact_divergence_are_refused_not_ignored(trained):
    refused("E660", "hutchinson_samples sets the probes of Hutchinson's estimate", trained.plain.nll,
            trained.images[:1], hutchinson_samples=5)
    result = trained.plain.nll(trained.images[:1], divergence="hutchinson", hutchinson_samples=2)
    assert result.divergence == "hutchinson(2)" and np.isfinite(result.mean)


@pytest.mark.parametrize("dtype", [np.complex128, bool])
def test_complex_and_bool_images_are_refused_by_the_api_and_the_cli(trained, capsys, dtype):
    images = trained.images.astype(dtype)
    refused("E681", "must be an array of numbers", trained.given.complete, images)
    np.save(trained.root / "odd.npy", images)
    code = main(["sample", str(trained.root / "given" / next(p.name for p in (trained.root / "given").iterdir())),
                 "--given", str(trained.root / "odd.npy"), "-o", str(trained.root / "odd")])
    err = capsys.readouterr().err
    assert code != 0 and "error[E681]" in err and "not real numbers" in err and "Traceback" not in err


# --------------------------------------------------------------------------- exports
def test_an_oracle_or_a_model_on_another_path_or_params_is_not_exported(trained, tmp_path):
    from pathlib import Path
    oracle = gudlang.load(Path(__file__).resolve().parents[1] / "specs" / "grf_oracle.gud")
    refused("E644", "network = oracle(): there are no weights to export", oracle.export, tmp_path / "oracle")
    along = trained.plain.with_path("soft(t^2, -log(var(i)), a = 1)")
    refused("E644", "not one with the path soft(t^2, -log(var(i)), a = 1)", along.export, tmp_path / "path")
    assert not (tmp_path / "oracle").exists() and not (tmp_path / "path").exists()


# --------------------------------------------------------------------------- the samplers themselves
@pytest.mark.parametrize("change, phrase", [
    ({"start": torch.zeros(0, 64)}, "with B, D >= 1, got shape (0, 64)"),
    ({"schedule": None}, "schedule must be callable"),
    ({"eps_model": None}, "eps_model must be callable"),
    ({"generator": 5}, "generator must be a torch.Generator or None, got int"),
    ({"steps": 0}, "steps must be an integer from 1 to 1,000,000, got 0"),
    ({"steps": 10 ** 9}, "steps must be an integer from 1 to 1,000,000"),
])
def test_gudlang_sample_refuses_bad_arguments(trained, change, phrase):
    model = trained.plain
    args = {"eps_model": model.eps_model, "schedule": model.model.sampling_path, "start": torch.zeros(2, 64),
            "steps": 2, "generator": None, **change}
    refused("E651", phrase, gudlang.sample, "ddim", args["eps_model"], args["schedule"], args["start"],
            args["steps"], generator=args["generator"])
