"""Training, resuming, sampling and checkpoints end to end, on tiny settings."""

import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from gudlang import checkpoint as ckpt
from gudlang.cli import main
from gudlang.diagnostics import GudError
from gudlang.spec import SamplerName
from gudlang.train import Objective

TINY = """gud 1
data = digits()
basis = pca()
prior = white
network = mlp(hidden = 32, depth = 1)
param a = 1.0
l_i = -log(var(i))
gamma_i(t) = soft(t, l_i, a = a)
train { steps = 12; batch = 16; warmup = 2; checkpoint_every = 4; sample_every = 0 }
sample { sampler = ddim; steps = 4; n = 4 }
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.gud"
    path.write_text(TINY)
    return path


def train(capsys, *argv):
    code = main(["train", "--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def losses(run: Path) -> list[str]:
    lines = (run / "metrics.csv").read_text().splitlines()[1:]
    return [line.split(",")[1] for line in lines]


def only_run(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


def test_train_writes_a_complete_run_directory(capsys, spec, tmp_path):
    code, out, err = train(capsys, spec, "--out", tmp_path / "runs")
    assert code == 0, err
    run = only_run(tmp_path / "runs")
    for name in ("spec.gud", "resolved.gud", "run.json", "metrics.csv", "checkpoint.safetensors",
                 "training_state.pt", "samples/final.png"):
        assert (run / name).is_file(), name
    assert (run / "spec.gud").read_text() == TINY
    info = json.loads((run / "run.json").read_text())
    assert info["model_hash"] in out
    assert len(losses(run)) == 12
    tensors, meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
    assert meta["gudlang_step"] == "12" and meta["gudlang_hash"] == info["model_hash"]
    assert any(k.startswith("ema.") for k in tensors) and "stats.var" in tensors
    state = torch.load(run / "training_state.pt", weights_only=True)
    assert state["step"] == 12


@pytest.mark.parametrize("dtype, network", [("float32", None), ("float64", None), ("float32", "dropout")])
def test_resume_repeats_an_uninterrupted_run_step_for_step(capsys, spec, tmp_path, dtype, network):
    # float64: the checkpoint's weights were loaded into the float32 network, then cast (rounded);
    # dropout: its masks came from torch's global stream, seeded once per start (a resumed run
    # drew other masks than the uninterrupted one)
    if network == "dropout":
        spec.write_text(TINY.replace("mlp(hidden = 32, depth = 1)", "unet(channels = 8, channel_mult = [1], dropout = 0.5)"))
    given = ("-s", f"runtime.dtype={dtype}")
    assert train(capsys, spec, "--out", tmp_path / "a", *given)[0] == 0
    assert train(capsys, spec, "--out", tmp_path / "b", "--until", "6", *given)[0] == 0
    run_b = only_run(tmp_path / "b")
    assert len(losses(run_b)) == 6
    code, out, err = train(capsys, "--resume", run_b)
    assert code == 0, err
    assert losses(run_b) == losses(only_run(tmp_path / "a"))
    weights_a = ckpt.load_checkpoint(only_run(tmp_path / "a") / "checkpoint.safetensors")[0]
    weights_b = ckpt.load_checkpoint(run_b / "checkpoint.safetensors")[0]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # and a loaded model holds the checkpoint's weights exactly, in its dtype
    import gudlang
    network = gudlang.load(run_b).eps_model.network
    assert all(torch.equal(v, weights_b[f"ema.{k}"]) for k, v in network.state_dict().items())
    assert next(network.parameters()).dtype == getattr(torch, dtype)


def test_a_run_hashed_before_redundant_formulas_were_left_out_loads_and_resumes(capsys, tmp_path):
    # `weight(t) = 1` and `prior = scale(1)` say what leaving them out says: they hash (and train)
    # as the plain spec. A checkpoint made before carries the hash of the literal spec: it must
    # still verify, sample and train on, as the plain spec's run would.
    from gudlang.check import check_text
    from gudlang.hashing import model_hash

    spelled = TINY.replace("prior = white", "prior = scale(2 - 1)") + "weight(t) = 1\n"
    (tmp_path / "plain.gud").write_text(TINY)
    (tmp_path / "spelled.gud").write_text(spelled)
    assert train(capsys, tmp_path / "plain.gud", "--out", tmp_path / "a")[0] == 0
    assert train(capsys, tmp_path / "spelled.gud", "--out", tmp_path / "b", "--until", "6")[0] == 0
    run_a, run_b = only_run(tmp_path / "a"), only_run(tmp_path / "b")
    assert run_a.name.split("-")[-1] == run_b.name.split("-")[-1]  # one model, one hash
    tensors, meta = ckpt.load_checkpoint(run_b / "checkpoint.safetensors")
    fingerprint = json.loads(meta["gudlang_data"])["fingerprint"]
    literal = model_hash(check_text(spelled, "spelled.gud"), fingerprint, literal=True)
    assert literal != meta["gudlang_hash"]
    ckpt.save_checkpoint(run_b / "checkpoint.safetensors", tensors, {**meta, "gudlang_hash": literal})
    assert main(["sample", str(run_b), "-n", "2", "--steps", "2", "-o", str(tmp_path / "s.npz")]) == 0
    code, _, err = train(capsys, "--resume", run_b)
    assert code == 0, err
    assert losses(run_b) == losses(run_a)
    tampered = spelled.replace("weight(t) = 1", "weight(t) = 2")
    ckpt.save_checkpoint(run_b / "checkpoint.safetensors", tensors, {**meta, "gudlang_spec": tampered})
    assert main(["sample", str(run_b), "-n", "2", "-o", str(tmp_path / "t.npz")]) == 1
    assert "E624" in capsys.readouterr().err


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(capsys, spec, tmp_path, monkeypatch):
    real = Objective.forward
    calls = {"n": 0}

    def exploding(self, batch, autocast_dtype=None):
        calls["n"] += 1
        loss = real(self, batch, autocast_dtype)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(Objective, "forward", exploding)
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs")
    assert code == 1 and "E630" in err and "the loss is nan at step 7;" in err  # 1-based, as metrics.csv
    run = only_run(tmp_path / "runs")
    _, meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
    assert meta["gudlang_step"] == "4"
    assert len(losses(run)) == 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    parent = tmp_path_factory.mktemp("trained")
    spec = parent / "tiny.gud"
    spec.write_text(TINY)
    assert main(["train", "--quiet", str(spec), "--out", str(parent / "runs")]) == 0
    return only_run(parent / "runs")


@pytest.mark.parametrize("sampler", typing.get_args(SamplerName))
def test_sample_with_every_sampler(capsys, trained, tmp_path, sampler):
    out = tmp_path / f"s-{sampler}"
    code = main(["sample", str(trained), "-n", "3", "--sampler", sampler, "--steps", "3", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    with np.load(out.with_suffix(".npz")) as f:
        x = f["x"]
        assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all()
        assert str(f["sampler"]) == sampler and int(f["nfe"]) > 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_a_copied_checkpoint_alone_samples_identically(capsys, trained, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "model.safetensors"
    elsewhere.parent.mkdir()
    shutil.copy(trained / "checkpoint.safetensors", elsewhere)
    assert main(["sample", str(trained), "-n", "4", "--seed", "3", "-o", str(tmp_path / "a")]) == 0
    assert main(["sample", str(elsewhere), "-n", "4", "--seed", "3", "-o", str(tmp_path / "b")]) == 0
    a = np.load(tmp_path / "a.npz")["x"]
    b = np.load(tmp_path / "b.npz")["x"]
    assert np.array_equal(a, b)


def test_a_tampered_checkpoint_is_refused(capsys, trained, tmp_path):
    tensors, meta = ckpt.load_checkpoint(trained / "checkpoint.safetensors")
    meta = dict(meta, gudlang_spec=meta["gudlang_spec"].replace("param a = 1.0", "param a = 2.0"))
    bad = tmp_path / "bad.safetensors"
    ckpt.save_checkpoint(bad, tensors, meta)
    code = main(["sample", str(bad), "-n", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "E624" in err


def test_sample_overrides_are_recorded_and_kept_inside_the_training_support(capsys, trained, tmp_path):
    code = main(["sample", str(trained), "-n", "2", "-s", "a=1.0", "-o", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "o.npz") as f:
        assert "1.0" in str(f["overrides"])
    # a is fixed at 1 in training (not a family): the network never saw a = 0.5's noise states
    code = main(["sample", str(trained), "-n", "2", "-s", "a=0.5", "-o", str(tmp_path / "p")])
    assert code == 1 and "error[E303]" in capsys.readouterr().err


def test_resume_of_a_missing_run_is_a_clear_error(capsys, tmp_path):
    code, _, err = train(capsys, "--resume", tmp_path / "nothing")
    assert code == 2 and "error[E001]" in err and "nothing not found" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = train(capsys, "--resume", tmp_path / "empty")
    assert code == 1 and "error[E640]" in err and "not a run directory" in err


def test_a_spec_beside_resume_must_be_the_runs_own(capsys, trained, tmp_path):
    other = tmp_path / "other.gud"
    other.write_text(TINY.replace("steps = ", "steps = 1 + "))
    code, _, err = train(capsys, other, "--resume", trained)
    assert code == 1 and "error[E641]" in err and "differs from the spec" in err and "Traceback" not in err
    code, _, err = train(capsys, trained / "spec.gud", "--resume", trained)  # the run's own: trains on
    assert code == 0, err


class FailingNet(torch.nn.Module):
    """A user's network that does not fit the data (it expects 10 features)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(10, 10)

    def forward(self, x, gamma):
        return self.lin(x.flatten(1))


def test_a_custom_network_that_raises_is_E613_before_the_run_starts(spec, tmp_path):
    import gudlang
    with pytest.raises(GudError) as info:
        gudlang.train_run(spec, {"train.steps": "2"}, out=tmp_path / "runs", quiet=True, network=FailingNet())
    d = info.value.diagnostics[0]
    assert d.code == "E613" and "raised RuntimeError" in d.message and "(2, 1, 8, 8)" in d.message
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    spec = tmp_path / "tiny.gud"
    spec.write_text(TINY.replace("steps = 12", "steps = 6"))
    import socket
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "gudlang", "train",
                           "--quiet", str(spec),
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "DDP: 2 ranks, weights identical on every rank: True" in proc.stdout
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "checkpoint.safetensors").is_file()
    assert len(losses(runs[0])) == 6


class TinyNet(torch.nn.Module):
    """A user's own network: the same call signature, nothing from gudlang."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64 + 64, 64)

    def forward(self, x, gamma):
        flat = torch.cat([x.flatten(1), torch.sigmoid(gamma)], dim=1)
        return self.lin(flat).reshape(x.shape)


def test_a_custom_network_from_python(capsys, spec, tmp_path):
    import gudlang
    result = gudlang.train_run(spec, {"train.steps": "3"}, out=tmp_path / "runs", quiet=True, network=TinyNet())
    assert result.step == 3 and not result.interrupted
    with pytest.raises(GudError) as info:
        gudlang.load_run(result.run)
    assert info.value.diagnostics[0].code == "E643"
    model, eps_model, meta = gudlang.load_run(result.run, network=TinyNet())
    assert meta["gudlang_custom_network"] == "TinyNet"
    out = gudlang.sample("ddim", eps_model, model.schedule.to(torch.float32), (2, 64), 3)
    assert out.x0.shape == (2, 64) and torch.isfinite(out.x0).all()
    assert "W644" not in capsys.readouterr().err

    class OtherNet(TinyNet):  # another class whose weights have the same names and shapes
        pass

    gudlang.load_run(result.run, network=OtherNet())
    err = capsys.readouterr().err
    assert "warning[W644]" in err and "custom network TinyNet" in err and "OtherNet" in err


class CroppingNet(torch.nn.Module):
    """A user's network with a bug: it returns half the image."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, gamma):
        return x[..., :4] * self.w


def test_a_custom_network_returning_the_wrong_shape_is_E613(spec, tmp_path):
    import gudlang
    from gudlang.train import EpsModel
    with pytest.raises(GudError) as info:
        gudlang.train_run(spec, {"train.steps": "2"}, out=tmp_path / "runs", quiet=True, network=CroppingNet())
    d = info.value.diagnostics[0]
    assert d.code == "E613" and "(2, 1, 8, 4)" in d.message and "(2, 1, 8, 8)" in d.message
    assert not (tmp_path / "runs").exists()  # found before a run directory was made for it
    model, _, _ = gudlang.load_run(gudlang.train_run(spec, {"train.steps": "2"}, out=tmp_path / "ok",
                                                     quiet=True, network=TinyNet()).run, network=TinyNet())
    eps_model = EpsModel(CroppingNet(), model.space)
    with pytest.raises(GudError) as info:
        gudlang.sample("ddim", eps_model, model.schedule.to(torch.float32), (2, 64), 3)
    assert info.value.diagnostics[0].code == "E613"


@pytest.mark.slow
@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, signame, code):
    import signal
    import time
    spec = tmp_path / "long.gud"
    spec.write_text(TINY.replace("steps = 12", "steps = 100000").replace("checkpoint_every = 4",
                                                                          "checkpoint_every = 100000; log_every = 5"))
    proc = subprocess.Popen([sys.executable, "-m", "gudlang", "train", "--quiet", str(spec), "--out",
                             str(tmp_path / "runs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.time() + 120, 0
    while time.time() < deadline and seen < 10:
        runs = list((tmp_path / "runs").glob("*/metrics.csv")) if (tmp_path / "runs").exists() else []
        seen = len(runs[0].read_text().splitlines()) - 1 if runs else 0
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert f"interrupted by {signame}" in err and "checkpoint saved" in err and "Traceback" not in err
    run = only_run(tmp_path / "runs")
    _, meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
    # No periodic checkpoint is due before step 100000: this one was written at the interrupt,
    # after every step already logged when the signal was sent.
    assert int(meta["gudlang_step"]) >= seen >= 10
    assert len(losses(run)) == int(meta["gudlang_step"])


def test_runtime_dtype_changes_neither_hash_nor_results_beyond_float_tolerance(capsys, spec, tmp_path):
    assert train(capsys, spec, "--out", tmp_path / "f32", "-s", "train.steps=4")[0] == 0
    assert train(capsys, spec, "--out", tmp_path / "f64", "-s", "train.steps=4",
                 "-s", "runtime.dtype=float64")[0] == 0
    a, b = only_run(tmp_path / "f32"), only_run(tmp_path / "f64")
    assert json.loads((a / "run.json").read_text())["model_hash"] == \
        json.loads((b / "run.json").read_text())["model_hash"]
    np.testing.assert_allclose([float(x) for x in losses(a)], [float(x) for x in losses(b)], rtol=1e-4)


def test_bfloat16_on_cpu_warns_and_trains_exactly_as_float32(capsys, spec, tmp_path):
    assert train(capsys, spec, "--out", tmp_path / "f32", "-s", "train.steps=4")[0] == 0
    code, _, err = train(capsys, spec, "--out", tmp_path / "bf16", "-s", "train.steps=4",
                         "-s", "runtime.dtype=bfloat16")
    assert code == 0 and "warning[W630]" in err and "float32" in err
    assert losses(only_run(tmp_path / "f32")) == losses(only_run(tmp_path / "bf16"))


def test_objective_under_bfloat16_autocast_is_close_to_float32():
    # The autocast branch the CUDA path takes, run on CPU (CPU autocast supports bf16 matmuls).
    from gudlang.check import check_text
    from gudlang.pipeline import build_model
    from gudlang.runs import make_spec_network as _network
    from gudlang.train import make_batch

    model = build_model(check_text(TINY, "<tiny>"))
    torch.manual_seed(0)
    objective = Objective(model, _network(model))
    torch.nn.init.normal_(objective.network.out.weight, std=0.1)  # zero-initialised: eps = 0 else
    batch = make_batch(torch.as_tensor(model.data.train), model.spec, model.checked.drawn, 0, 64, 0, 0, "cpu")
    full = objective(batch).item()
    half = objective(batch, torch.bfloat16)
    assert half.dtype == torch.float32 and half.item() != full
    assert half.item() == pytest.approx(full, rel=1e-3)
    half.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in objective.network.parameters())


@pytest.mark.slow
def test_torch_compile_trains_like_eager_with_the_same_hash(capsys, spec, tmp_path):
    assert train(capsys, spec, "--out", tmp_path / "eager", "-s", "train.steps=6")[0] == 0
    code, _, err = train(capsys, spec, "--out", tmp_path / "compiled", "-s", "train.steps=6",
                         "-s", "runtime.compile=true")
    assert code == 0, err
    a, b = only_run(tmp_path / "eager"), only_run(tmp_path / "compiled")
    assert a.name == b.name  # the directory name carries the model hash
    np.testing.assert_allclose([float(x) for x in losses(a)], [float(x) for x in losses(b)], rtol=1e-4)
    # The checkpoint holds the plain module's weights: it samples without torch.compile.
    assert main(["sample", str(b), "-n", "2", "-o", str(tmp_path / "s")]) == 0


def test_train_run_works_from_a_worker_thread(spec, tmp_path):
    # Signal handlers can only be set in the main thread; training elsewhere must still run.
    import threading

    from gudlang.trainer import train_run
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        r=train_run(spec, {"train.steps": "3"}, out=tmp_path / "runs", quiet=True)))
    worker.start()
    worker.join(timeout=120)
    assert result["r"].step == 3 and not result["r"].interrupted


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_a_run_name_must_stay_inside_out(capsys, spec, tmp_path, name):
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", name)
    assert code == 2 and "error[E003]" in err and "--name must be a folder name" in err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


class Killed(BaseException):
    """Stands in for a SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("where", ["before the checkpoint", "before the state is renamed"])
def test_a_save_cut_short_anywhere_leaves_a_run_that_resumes(spec, tmp_path, monkeypatch, where):
    # checkpoint_every = 4 over 12 steps: the save at step 8 is cut short. Either the old pair
    # (step 4) or the new one (step 8) must survive whole, and --resume must go on from it.
    import gudlang.runs as runs
    calls = {"n": 0}
    target = (runs.ckpt, "save_checkpoint") if where == "before the checkpoint" else (runs.os, "replace")
    real = getattr(*target)

    def cut(*args, **kwargs):
        # os.replace also finishes every atomic write: count only the state's rename
        if target[1] == "save_checkpoint" or str(args[1]).endswith(runs.STATE):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(*target, cut)
    with pytest.raises(Killed):
        train(None, spec, "--out", tmp_path / "runs", "--name", "r")
    monkeypatch.setattr(*target, real)
    run = tmp_path / "runs" / "r"
    assert (run / runs.STATE_NEXT).is_file()  # the half-done save
    code = main(["train", "--quiet", "--resume", str(run)])
    assert code == 0
    assert not (run / runs.STATE_NEXT).exists()
    steps = [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 12
