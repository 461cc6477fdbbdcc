"""The CUDA paths: training (float32, bf16 autocast, torch.compile), sampling and likelihood on
a GPU agree with the CPU. Skipped where torch sees no CUDA device; `.ci/gpu-check` runs them
(with the other CUDA tests) on a GPU machine."""

import json

import numpy as np
import pytest
import torch

from gudlang.cli import main
from gudlang.oracle import GaussianOracle
from gudlang.samplers import SAMPLERS
from schedule_fixtures import gaussian_data, schedules
from test_nll import ORACLE
from test_train import TINY, losses, only_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def train(tmp_path, name, *overrides):
    spec = tmp_path / "tiny.gud"
    spec.write_text(TINY)
    argv = ["train", "--quiet", str(spec), "--out", str(tmp_path / name), "-s", "train.steps=8"]
    for item in overrides:
        argv += ["-s", item]
    assert main(argv) == 0
    return only_run(tmp_path / name)


def as_floats(run):
    return np.array([float(x) for x in losses(run)])


def test_training_on_cuda_follows_the_cpu_run(tmp_path):
    cpu = train(tmp_path, "cpu", "runtime.device=cpu")
    gpu = train(tmp_path, "gpu", "runtime.device=cuda")
    assert json.loads((gpu / "run.json").read_text())["model_hash"] == \
        json.loads((cpu / "run.json").read_text())["model_hash"]
    np.testing.assert_allclose(as_floats(gpu), as_floats(cpu), rtol=1e-3)


def test_bfloat16_autocast_on_cuda_is_close_to_float32(tmp_path, capsys):
    full = train(tmp_path, "f32", "runtime.device=cuda")
    half = train(tmp_path, "bf16", "runtime.device=cuda", "runtime.dtype=bfloat16")
    assert "W630" not in capsys.readouterr().err  # autocast is really on
    assert half.name == full.name  # same model hash
    a, b = as_floats(full), as_floats(half)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, rtol=0.05)


@pytest.mark.slow
def test_torch_compile_on_cuda_trains_like_eager(tmp_path):
    eager = train(tmp_path, "eager", "runtime.device=cuda")
    compiled = train(tmp_path, "compiled", "runtime.device=cuda", "runtime.compile=true")
    np.testing.assert_allclose(as_floats(compiled), as_floats(eager), rtol=1e-3)


@pytest.mark.parametrize("schedule_name", ["soft", "sequential"])
@pytest.mark.parametrize("method", ["heun", "midpoint", "dpm2", "ddim", "dpmpp3m", "unipc", "adaptive"])
def test_samplers_on_cuda_match_the_cpu(method, schedule_name):
    # sequential has kinks, where adaptive restarts (its jump times on the device)
    dim = 16
    mean, cov = gaussian_data(dim)
    start = torch.randn(64, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"variance": torch.diagonal(cov).numpy()} if method == "unipc" else {}
    out = {}
    for device in ("cpu", "cuda"):
        oracle = GaussianOracle(mean.to(device), cov.to(device))
        schedule = schedules(dim)[schedule_name]  # follows the device of t
        out[device] = SAMPLERS[method](oracle, schedule, start.to(device), 16, denoise=False, **options).x0.cpu()
    # float64 throughout; dopri5 may choose other steps when its error estimate differs in the
    # last digits, so it agrees to its tolerance only.
    tol = 1e-4 if method == "adaptive" else 1e-8
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=tol, atol=tol)


@pytest.mark.parametrize("gamma", ["linear(t, lo = -12, hi = 10)", "linear(2 * t - 0.5, lo = -12, hi = 10)"],
                         ids=["smooth", "kinks"])
def test_oracle_nll_on_cuda_equals_the_cpu(tmp_path, monkeypatch, capsys, gamma):
    # the second schedule has kinks at t = 0.25 and 0.75, where the likelihood splits
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "oracle.gud"
    spec.write_text(ORACLE.format(basis="pca()", prior="matched", gamma=gamma))
    bits = {}
    for device in ("cpu", "cuda"):
        assert main(["nll", str(spec), "-n", "16", "-s", f"runtime.device={device}"]) == 0, capsys.readouterr().err
        bits[device] = json.loads((tmp_path / "samples" / "oracle" / "nll-test.json").read_text())["bits_per_dim"]
    assert bits["cuda"] == pytest.approx(bits["cpu"], abs=1e-6)


def test_sampling_a_cuda_run_writes_finite_samples(tmp_path):
    run = train(tmp_path, "gpu", "runtime.device=cuda")
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert np.isfinite(f["x"]).all()
