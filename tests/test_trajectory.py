"""`GudModel.trajectory` and `gud plot RUN --reverse`: the states a sampler passes through and the
clean images the model predicts from them, checked against the Gaussian posterior mean."""

from pathlib import Path

import numpy as np
import pytest
import torch

import gudlang
from gudlang.cli import main

ROOT = Path(__file__).resolve().parent.parent
ORACLE = ROOT / "specs" / "grf_oracle.gud"


@pytest.fixture(scope="module")
def oracle():
    return gudlang.load(ORACLE)


def posterior_mean(model, state: np.ndarray, t: float) -> np.ndarray:
    """E[x_0 | chi_t] in data space for the Gaussian data N(mu, Sigma), in NumPy: chi_t = B x_0 + c
    + sigma eps with B = diag(alpha) (the encoding's linear part), so E[x_0 | chi_t] = mu +
    Sigma B^T (B Sigma B^T + diag(sigma^2))^-1 (chi_t - B mu - c)."""
    space, data = model.space.to(torch.float64), model.data
    d = model.dim
    with torch.no_grad():
        gamma, _ = model.sampling_schedule(torch.tensor([t], dtype=torch.float64))
        offset = space.encode(torch.zeros((1,) + data.shape, dtype=torch.float64)).numpy()[0]
        linear = space.encode(torch.eye(d, dtype=torch.float64).reshape((d,) + data.shape)).numpy() - offset
        chi_t = space.encode(torch.as_tensor(state, dtype=torch.float64)[None]).numpy()[0]
    gamma = gamma.numpy()[0]
    alpha, sigma2 = np.sqrt(1 / (1 + np.exp(gamma))), 1 / (1 + np.exp(-gamma))
    b = alpha[:, None] * linear.T  # chi-side rows: component j of alpha * encode(x) - its offset
    mu, cov = np.asarray(data.mean, dtype=np.float64).reshape(-1), np.asarray(data.cov, dtype=np.float64)
    gain = cov @ b.T @ np.linalg.inv(b @ cov @ b.T + np.diag(sigma2))
    return (mu + gain @ (chi_t - b @ mu - alpha * offset)).reshape(data.shape)


def test_predictions_are_the_gaussian_posterior_mean_of_the_states(oracle):
    traj = oracle.trajectory(3, frames=5, sampler="heun", steps=8)
    assert traj.states.shape == traj.predictions.shape == (4, 3, 1, 8, 8)
    for k, t in enumerate(traj.times):
        for i in range(3):
            want = posterior_mean(oracle.model, traj.states[k, i], float(t))
            np.testing.assert_allclose(traj.predictions[k, i], want, atol=2e-4 * np.abs(want).max() + 1e-5)
    # at t = 1 the state says little: the prediction is near the data mean, the samples are not
    mean = np.asarray(oracle.model.data.mean)
    assert np.std(traj.predictions[0] - mean) < 0.2 * np.std(traj.samples - mean)


def test_the_frames_are_the_calls_nearest_equally_spaced_times_and_end_in_the_samples(oracle):
    traj = oracle.trajectory(2, frames=5, sampler="heun", steps=8, seed=3)
    np.testing.assert_allclose(traj.times, [1.0, 0.75, 0.5, 0.25], atol=1 / 16)
    assert list(traj.times) == sorted(traj.times, reverse=True) and traj.times[0] == 1.0
    samples, nfe = oracle.sample(2, sampler="heun", steps=8, seed=3, with_nfe=True)
    np.testing.assert_array_equal(traj.samples, samples.numpy())  # the samples `sample` makes
    assert traj.nfe == nfe
    few = oracle.trajectory(1, frames=8, sampler="ddim", steps=2)  # 2 steps + denoise: 3 calls
    assert len(few.times) == len(set(few.times.tolist())) <= 3


def test_a_completion_holds_the_given_components_in_every_frame(tmp_path):
    spec = tmp_path / "cond.gud"
    spec.write_text("gud 1\ndata = grf(size = 8, slope = 2, n = 400)\nbasis = pixel()\nprior = white\n"
                    "network = oracle()\ngiven_i = col(i) < 0.5\ngamma(t) = linear(t, lo = -10, hi = 8)\n")
    model = gudlang.load(spec)
    images = model.split_images("test", 2)
    traj = model.trajectory(2, frames=4, sampler="heun", steps=6, given=images)
    np.testing.assert_array_equal(traj.states[..., :4], np.broadcast_to(images[..., :4], traj.states[..., :4].shape)
                                  .astype(np.float32))
    np.testing.assert_array_equal(traj.samples[..., :4], images[..., :4].astype(np.float32))
    assert main(["plot", str(spec), "--reverse", "-n", "2", "--frames", "3", "-o", str(tmp_path / "c.png")]) == 0


def test_gud_plot_reverse_writes_a_picture_and_its_options_need_it(tmp_path, capsys):
    from PIL import Image
    assert main(["plot", str(ORACLE), "--reverse", "-n", "2", "--frames", "4", "--sampler", "ddim",
                 "--steps", "5", "-o", str(tmp_path / "r")]) == 0
    assert Image.open(tmp_path / "r.png").size[0] > 200
    assert main(["plot", str(ORACLE), "--frames", "4", "-o", str(tmp_path / "s.png")]) == 2
    assert "error[E003]: --frames sets how --reverse samples" in capsys.readouterr().err
    trained_first = ROOT / "specs" / "digits.gud"
    assert main(["plot", str(trained_first), "--reverse", "-o", str(tmp_path / "d.png")]) == 1
    assert "E640" in capsys.readouterr().err and not (tmp_path / "d.png").exists()
