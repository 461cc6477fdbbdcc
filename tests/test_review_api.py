"""The Python API leaves the caller's state alone and takes what a researcher plausibly passes:
loading does not draw from torch's random stream or follow its default dtype, a network given
to `load` is not changed (two loads with one module keep their own weights), an oracle spec
refuses arguments it cannot use, and paths arrive as they are read from files."""

import shutil

import pytest
import torch

import gudlang
from gudlang import checkpoint as ckpt

from expect_util import refused

SPEC = """gud 1
data = digits()
basis = pixel()
prior = white
network = mlp(hidden = 16, depth = 1)
gamma_i(t) = soft(t, -log(var(i)))
train { steps = 4; batch = 16; warmup = 1; ema = 0.5; ema_warmup = false; checkpoint_every = 4; sample_every = 0 }
sample { sampler = ddim; steps = 3; n = 4 }
"""
ORACLE = "gud 1\ndata = grf(size = 8, slope = 3, n = 64)\nbasis = pixel()\nnetwork = oracle()\ngamma(t) = linear(t)\n"


class Linear(torch.nn.Module):
    """A custom network: eps from x and gamma by one linear map."""

    def __init__(self):
        super().__init__()
        self.map = torch.nn.Linear(128, 64)

    def forward(self, x, gamma):
        return self.map(torch.cat([x.flatten(1), gamma], dim=1)).view_as(x)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_api")
    spec = root / "tiny.gud"
    spec.write_text(SPEC)
    plain = gudlang.train_run(spec, out=root, name="plain", quiet=True).run
    custom = gudlang.train_run(spec, out=root, name="custom", quiet=True, network=Linear()).run
    return plain, custom




def test_load_leaves_torchs_random_stream_alone(runs):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    gudlang.load(runs[0])
    assert torch.equal(torch.rand(3), expected)


def test_a_float32_run_loads_in_float32_whatever_torchs_default_dtype(runs):
    reference = gudlang.load(runs[0]).sample(2, seed=0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = gudlang.load(runs[0])
    finally:
        torch.set_default_dtype(before)
    assert model.dtype == torch.float32
    assert torch.equal(model.sample(2, seed=0), reference)


def test_one_network_module_given_to_two_loads_keeps_each_models_weights(runs):
    net = Linear()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    raw = gudlang.load(runs[1], network=net, weights="raw")
    drawn = raw.sample(2, seed=0)
    ema = gudlang.load(runs[1], network=net)
    assert torch.equal(raw.sample(2, seed=0), drawn)  # still the raw weights
    assert not torch.equal(ema.sample(2, seed=0), drawn)  # ema = 0.5: other weights
    assert all(torch.equal(v, initial[k]) for k, v in net.state_dict().items())  # the caller's module untouched
    assert net.training


def test_an_oracle_spec_refuses_a_network_and_unknown_weights():
    refused("E003", "takes no network (Linear given)", gudlang.load, ORACLE, network=Linear())
    refused("E003", "network must be an instance of torch.nn.Module", gudlang.load, ORACLE, network="mlp")
    refused("E003", "unknown weights 'EMA'", gudlang.load, ORACLE, weights="EMA")
    assert gudlang.load(ORACLE).sample(1).shape == (1, 1, 8, 8)


def test_load_run_takes_numbers_as_overrides_and_refuses_what_is_no_dict(runs):
    model, _, _ = gudlang.load_run(runs[0], {"sample.steps": 5})
    assert model.spec.sample.steps == 5
    refused("E003", "must be a dict", gudlang.load_run, runs[0], "sample.steps=5")


def test_a_path_read_with_its_line_ending_loads(runs):
    assert gudlang.load(f"{runs[0]}\n").hash == gudlang.load(runs[0]).hash
    assert gudlang.load(f"{runs[0]}\r\n").hash == gudlang.load(runs[0]).hash


def test_a_run_folder_whose_name_ends_in_gud_loads(runs, tmp_path):
    folder = shutil.copytree(runs[0], tmp_path / "digits.gud")
    assert gudlang.load(folder).hash == gudlang.load(runs[0]).hash


def test_a_checkpoint_without_statistics_names_the_file(runs, tmp_path):
    tensors, meta = ckpt.load_checkpoint(runs[0] / "checkpoint.safetensors")
    file = tmp_path / "nostats.safetensors"
    ckpt.save_checkpoint(file, {k: v for k, v in tensors.items() if not k.startswith("stats.")}, meta)
    refused("E521", f"checkpoint {file}: saved statistics lack", gudlang.load, file)


def test_a_run_trained_on_cuda_loaded_without_one_says_how_to_load_it_from_python(runs, tmp_path, monkeypatch):
    tensors, meta = ckpt.load_checkpoint(runs[0] / "checkpoint.safetensors")
    file = tmp_path / "gpu.safetensors"  # runtime settings are not hashed: the checkpoint still verifies
    ckpt.save_checkpoint(file, tensors, dict(meta, gudlang_spec=meta["gudlang_spec"] + "runtime { device = cuda }\n"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused("E640", 'load it with device="cpu"', gudlang.load, file)
    assert gudlang.load(file, device="cpu").device == torch.device("cpu")


def test_network_options_take_numpy_numbers_and_arrays():
    import numpy as np
    from gudlang.networks import make_network
    net = make_network("unet", np.array([1, 8, 8]), channels=np.int64(8), channel_mult=np.array([1, 2]),
                       dropout=np.float32(0.1))
    assert net.shape == (1, 8, 8) and net(torch.zeros(2, 1, 8, 8), torch.zeros(2, 64)).shape == (2, 1, 8, 8)
    refused("E612", "must be a positive integer, got 8.0", make_network, "unet", (1, 8, 8), channels=8.0)


def test_a_bad_first_is_refused_before_the_data_are_read(runs, monkeypatch):
    model = gudlang.load(runs[0])

    def no_reading(*args, **kwargs):
        raise AssertionError("the data were read before the arguments were checked")
    monkeypatch.setattr(type(model), "split_images", no_reading)
    refused("E660", "first must be an integer >= 0, got -1", model.nll, first=-1)


def test_changing_a_completions_mask_leaves_the_models_given_mask_alone(tmp_path):
    spec = tmp_path / "given.gud"
    spec.write_text(SPEC.replace("gamma_i(t) = soft(t, -log(var(i)))", "given_i = col(i) < 0.5\ngamma_i(t) = linear(t)"))
    model = gudlang.load(gudlang.train_run(spec, out=tmp_path, name="given", quiet=True).run)
    images = model.split_images("test", 2)
    first = model.complete(images, seed=0)
    given = first.mask.copy()
    first.mask[:] = True  # e.g. to build another mask from it
    assert (model.model.given == given).all()
    again = model.complete(images, seed=0)
    assert again.method == "trained" and (again.mask == given).all() and (again.x == first.x).all()


def test_a_network_that_cannot_be_copied_is_loaded_in_place(runs):
    import threading
    net = Linear()
    net.lock = threading.Lock()  # deepcopy cannot copy it
    model = gudlang.load(runs[1], network=net)
    assert model.eps_model.network is net and model.sample(1, seed=0).shape == (1, 1, 8, 8)
