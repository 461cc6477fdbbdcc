"""The compiled pieces used on their own (a schedule, the space, `gudlang.sample`) in a user's
training loop: inputs of another kind are converted or refused with a GudError, never a raw
torch error or a silently wrong shape; a compiled schedule pickles."""

import io
import pickle

import numpy as np
import pytest
import torch

import gudlang
from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.pipeline import build_model

SPEC = """gud 1
data = digits()
basis = pca()
prior = white
param a ~ uniform(0.5, 1.5)
gamma_i(t) = soft(t, -log(var(i)), a = a)
"""


@pytest.fixture(scope="module")
def model():
    return build_model(check_text(SPEC, "m.gud"))


def code_of(call, *args) -> str:
    with pytest.raises(GudError) as err:
        call(*args)
    return err.value.diagnostics[0].code + ": " + err.value.diagnostics[0].message


def test_a_schedule_takes_numbers_and_arrays_as_float64_times(model):
    want, _ = model.schedule(torch.tensor([0.5], dtype=torch.float64))
    for t in (0.5, [0.5], np.array([0.5]), np.array([[0.5]])):
        gamma, beta = model.schedule(t)
        assert gamma.dtype == torch.float64 and gamma.shape == (1, 64)
        torch.testing.assert_close(gamma, want, rtol=0, atol=0)
    g, slope = model.schedule.gamma_and_slope(np.array([0.25, 0.75]))
    assert g.shape == slope.shape == (2, 64)
    assert "E003: a schedule takes times t of shape (B,), got a tensor of shape (3, 64)" \
        in code_of(model.schedule, torch.rand(3, 64))


def test_a_compiled_schedule_pickles_and_torch_saves(model):
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    params = {"a": torch.full((7,), 1.2, dtype=torch.float64)}
    again = pickle.loads(pickle.dumps(model.schedule))
    buf = io.BytesIO()
    torch.save(model.schedule, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (again, loaded):
        for a, b in zip(other(t, params), model.schedule(t, params)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_space_converts_arrays_and_integers_and_refuses_wrong_shapes(model):
    space = model.space
    x = np.asarray(model.data.test[:3], dtype=np.float64)
    np.testing.assert_allclose(space.encode(x).numpy(), space.encode(torch.as_tensor(x)).numpy(), rtol=0, atol=0)
    assert space.decode(torch.zeros(2, 64, dtype=torch.long)).is_floating_point()
    assert "E501: the space takes data (B, C, H, W) with 1, 8, 8 after the batch axis, got a tensor of shape (3, 64)" \
        in code_of(space.encode, torch.as_tensor(x).reshape(3, -1))
    assert "E501: the space takes whitened components (B, D) with 64" in code_of(space.decode, torch.zeros(2, 63))


def test_gudlang_sample_refuses_a_numpy_start_and_a_start_of_another_dtype(model):
    from gudlang.networks import make_network
    from gudlang.train import EpsModel
    eps = EpsModel(make_network("mlp", (1, 8, 8), hidden=8, depth=1), model.space)
    assert "E651: the start chi(1) must be a torch tensor (B, D), got a NumPy array" \
        in code_of(gudlang.sample, "ddim", eps, model.schedule, np.zeros((2, 64), np.float32), 2)
    assert "E651: the start chi(1) is float64 and the eps model's weights float32" \
        in code_of(gudlang.sample, "ddim", eps, model.schedule, torch.zeros(2, 64, dtype=torch.float64), 2)
    assert gudlang.sample("ddim", eps, model.schedule, torch.zeros(2, 64), 2).x0.shape == (2, 64)
