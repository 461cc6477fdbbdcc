"""Every shipped spec samples with every sampler and gives a likelihood.

The network is the exact denoiser of a Gaussian with the mean and covariance of the spec's own
training data (in its basis, prior and schedule), run in float32 as a trained network is: a
stand-in whose flows are as steep as real data's, so that a schedule evaluated outside [0, 1],
a gamma that overflows in float32 or a sampler that cannot follow a kink fails here (E652,
E661 or non-finite numbers) before a user trains for an hour. Conditional specs (`given_i`)
complete test images instead of sampling from scratch."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gudlang.api import GudModel
from gudlang.check import check_file
from gudlang.oracle import GaussianOracle
from gudlang.pipeline import build_model
from gudlang.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([*(ROOT / "specs").glob("*.gud"), *(ROOT / "specs" / "peers").glob("*.gud")])


def stand_in(path: Path) -> GudModel:
    """The spec's model with the exact denoiser of N(mean, cov) of its training data."""
    model = build_model(check_file(str(path)))
    data = model.data
    x = data.train.reshape(len(data.train), -1).astype(np.float64)
    oracle = GaussianOracle(*model.space.moments(x.mean(0), np.cov(x.T)))
    return GudModel(model, oracle, {"gudlang_hash": model.model_hash}, "cpu")


@pytest.fixture(scope="module", params=SHIPPED, ids=[p.relative_to(ROOT / "specs").as_posix() for p in SHIPPED])
def shipped(request) -> GudModel:
    return stand_in(request.param)


def generate(model: GudModel, sampler: str, steps: int) -> np.ndarray:
    if model.conditional:
        return model.complete(model.model.data.test[:2], sampler=sampler, steps=steps).x
    return model.sample(2, sampler=sampler, steps=steps).numpy()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_shipped_spec_samples_with_every_sampler(shipped, sampler):
    x = generate(shipped, sampler, 5)
    assert x.shape == (2,) + tuple(shipped.model.data.shape) and np.isfinite(x).all()


def test_every_shipped_spec_gives_a_likelihood(shipped):
    result = shipped.nll(n=2)
    assert np.isfinite(result.bits).all() and len(result.bits) == 2
    assert result.conditional == shipped.conditional


def test_the_stand_in_has_the_moments_of_the_encoded_training_data():
    model = stand_in(ROOT / "specs" / "digits.gud")
    with torch.no_grad():
        chi = model.model.space.encode(torch.as_tensor(model.model.data.train, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(model.eps_model.mean.numpy(), chi.mean(0), atol=1e-10)
    np.testing.assert_allclose(model.eps_model.cov.numpy(), np.cov(chi.T), rtol=1e-8, atol=1e-10)
