"""Runs that grow and travel: extending finished runs, --name, lineage, EMA warm-up, the
learning-rate schedule, gradient accumulation, flips, metrics plots, the Python API, sample
formats, and exports (loaded anywhere, refused when tampered with)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import gudlang
from gudlang import checkpoint as ckpt
from gudlang.cli import main
from gudlang.spec import TrainSettings
from gudlang.train import EMA, learning_rate

TINY = """gud 1
data = digits()
basis = pca()
prior = white
network = mlp(hidden = 32, depth = 1)
gamma_i(t) = soft(t, -log(var(i)))
train { steps = 8; batch = 16; warmup = 2; checkpoint_every = 4; sample_every = 0; log_every = 2 }
sample { sampler = ddim; steps = 4; n = 4 }
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.gud"
    path.write_text(TINY)
    return path


def gud(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def losses(run: Path) -> list[str]:
    return [line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()[1:]]


def only_run(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


# --------------------------------------------------------------------------- growing runs
def test_a_finished_run_grows_like_one_trained_that_long(capsys, spec, tmp_path):
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "long", "-s", "train.steps=12")[0] == 0
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "grown")[0] == 0
    run = only_run(tmp_path / "grown")
    code, out, err = gud(capsys, "train", "--quiet", "--resume", run, "-s", "train.steps=12")
    assert code == 0, err
    assert "steps 8 -> 12" in out
    assert losses(run) == losses(only_run(tmp_path / "long"))  # same batches, same lr, same EMA
    info = json.loads((run / "run.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in info["segments"]] == [(0, 8), (8, 12)]
    assert info["overrides"] == {"train.steps": "12"} and info["gudlang"] == gudlang.__version__
    a, b = (ckpt.load_checkpoint(r / "checkpoint.safetensors")[0] for r in (run, only_run(tmp_path / "long")))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cosine_run_is_tied_to_its_length_and_cannot_grow(capsys, spec, tmp_path):
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "r", "-s", "train.lr_schedule=cosine")[0] == 0
    code, _, err = gud(capsys, "train", "--quiet", "--resume", only_run(tmp_path / "r"), "-s", "train.steps=12")
    assert code == 1 and "error[E641]" in err and "only train.steps" in err


def test_a_run_whose_spec_changed_cannot_be_resumed(capsys, spec, tmp_path):
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "r", "--until", "4")[0] == 0
    code, _, err = gud(capsys, "train", "--quiet", "--resume", only_run(tmp_path / "r"), "-s", "train.lr=0.1")
    assert code == 1 and "error[E641]" in err


def test_name_resumes_the_same_run_when_a_job_is_requeued(capsys, spec, tmp_path):
    out = tmp_path / "runs"
    assert gud(capsys, "train", "--quiet", spec, "--out", out, "--name", "job", "--until", "4")[0] == 0
    code, text, err = gud(capsys, "train", "--quiet", spec, "--out", out, "--name", "job")
    assert code == 0, err
    assert "steps 4 -> 8" in text and len(losses(out / "job")) == 8
    other = tmp_path / "other.gud"
    other.write_text(TINY.replace("ddim", "heun"))
    code, _, err = gud(capsys, "train", "--quiet", other, "--out", out, "--name", "job")
    assert code == 1 and "differs from the spec" in err


def test_metrics_are_appended_and_plotted(capsys, spec, tmp_path):
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "r")[0] == 0
    run = only_run(tmp_path / "r")
    assert (run / "metrics.csv").read_text().count("\n") == 9
    code, out, err = gud(capsys, "plot", run, "--metrics", "-o", tmp_path / "m.png")
    assert code == 0, err and (tmp_path / "m.png").stat().st_size > 1000
    code, _, err = gud(capsys, "plot", tmp_path, "--metrics", "-o", tmp_path / "n.png")
    assert code == 2 and "not a run directory" in err
    (run / "metrics.csv").write_text("step,loss,grad_norm,lr,seconds\n")  # a run that has not logged yet
    code, _, err = gud(capsys, "plot", run, "--metrics", "-o", tmp_path / "e.png")
    assert code == 1 and "holds no logged steps yet" in err and not (tmp_path / "e.png").exists()


# --------------------------------------------------------------------------- training settings
def test_ema_warmup_forgets_the_initial_weights():
    """Fraction of the initial weights left after k updates = prod_j decay_j; with warm-up
    decay_j = min(d, (1 + j) / (10 + j)), the product telescopes for j < the switch point."""
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    plain, warm = EMA(net, 0.999, warmup=False), EMA(net, 0.999, warmup=True)
    torch.nn.init.zeros_(net.weight)
    for step in range(1000):
        plain.update(net, step)
        warm.update(net, step)
    assert float(plain.module.weight) == pytest.approx(0.999 ** 1000)  # 37% of the initial weights
    expected = math.prod(min(0.999, (1 + j) / (10 + j)) for j in range(1000))
    assert float(warm.module.weight) == pytest.approx(expected) and expected < 1e-6


def test_learning_rate_warms_up_then_stays_or_follows_a_cosine():
    constant = TrainSettings(lr=1e-3, warmup=10, steps=110)
    cosine = constant.model_copy(update={"lr_schedule": "cosine"})
    assert learning_rate(4, constant) == pytest.approx(5e-4) and learning_rate(80, constant) == 1e-3
    for step in (10, 35, 60, 110):
        assert learning_rate(step, cosine) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100)))


def test_gradient_accumulation_takes_the_same_steps(capsys, spec, tmp_path):
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "a", "-s", "train.steps=4")[0] == 0
    assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "b", "-s", "train.steps=4",
               "-s", "train.accumulate=4")[0] == 0
    a, b = (np.array(losses(only_run(tmp_path / p)), dtype=float) for p in ("a", "b"))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    code, _, err = gud(capsys, "train", "--quiet", spec, "-s", "train.accumulate=3")
    assert code == 1 and "does not split" in err


def test_flips_mirror_about_half_of_the_images():
    from gudlang.check import check_text
    from gudlang.pipeline import build_model
    from gudlang.train import make_batch
    model = build_model(check_text(TINY.replace("log_every = 2", "log_every = 2; flip = true")))
    data = torch.as_tensor(model.data.train)
    plain = make_batch(data, model.spec.model_copy(update={"train": model.spec.train.model_copy(
        update={"flip": False})}), (), 3, 64, 0, 0, "cpu")
    flipped = make_batch(data, model.spec, (), 3, 64, 0, 0, "cpu")
    mirrored = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flipped.x, plain.x)]
    same = [torch.equal(f, p) for f, p in zip(flipped.x, plain.x)]
    assert all(m or s for m, s in zip(mirrored, same)) and 20 <= sum(mirrored) <= 44


# --------------------------------------------------------------------------- the API, samples, exports
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.gud").write_text(TINY)
    assert main(["train", "--quiet", str(root / "tiny.gud"), "--out", str(root / "runs")]) == 0
    return only_run(root / "runs")


def test_load_gives_a_model_that_samples_in_data_space(trained):
    model = gudlang.load(trained)
    x = model.sample(5, seed=3)
    assert x.shape == (5, 1, 8, 8) and x.dtype == torch.float32
    assert model.hash.startswith("gud2-sha256:") and model.spec.network.kind == "mlp"
    # sample k is the same whatever the batches (deterministic sampler)
    torch.testing.assert_close(model.sample(5, seed=3, batch_size=2), x)
    torch.testing.assert_close(model.sample(2, seed=3, start=3), x[3:])
    import matplotlib.figure
    assert isinstance(model.plot_schedule(), matplotlib.figure.Figure)
    raw = gudlang.load(trained, weights="raw").sample(5, seed=3)
    assert not torch.equal(raw, x)


def test_adaptive_sampling_in_batches_finds_the_kinks_once(trained, monkeypatch):
    import gudlang.samplers
    model = gudlang.load(trained).with_path("soft(clip(1.5 * t - 0.25, 0, 1), -log(var(i)))")
    scans = []
    real = gudlang.samplers.schedule_kinks
    monkeypatch.setattr(gudlang.samplers, "schedule_kinks", lambda s: scans.append(1) or real(s))
    x = model.sample(3, sampler="adaptive", batch_size=1, seed=1)
    assert len(scans) == 1 and real(model.model.sampling_path)  # one scan for three batches, and there are kinks
    # the batches are those of one adaptive solve each (restarted at the same kinks)
    torch.testing.assert_close(model.sample(1, sampler="adaptive", seed=1, start=2), x[2:])


@pytest.mark.parametrize("fmt", ["png-dir", "npz"])
def test_sample_writes_large_sets_in_the_formats_fid_tools_read(capsys, trained, tmp_path, fmt):
    code, out, err = gud(capsys, "sample", trained, "-n", 7, "--batch-size", 3, "--format", fmt, "-o", tmp_path / "s")
    assert code == 0, err
    if fmt == "npz":
        arr = np.load(tmp_path / "s.npz")["arr_0"]
        assert arr.dtype == np.uint8 and arr.shape == (7, 8, 8, 1)
    else:
        assert sorted(p.name for p in (tmp_path / "s").glob("*.png")) == [f"{k:06d}.png" for k in range(7)]
        (tmp_path / "s" / "cover.png").write_bytes(b"a file of the user's")
        # a smaller set into the same folder: the PNGs beyond it were left, two sets in one folder
        assert gud(capsys, "sample", trained, "-n", 3, "--format", fmt, "-o", tmp_path / "s")[0] == 0
        assert sorted(p.name for p in (tmp_path / "s").glob("*.png")) == ["000000.png", "000001.png", "000002.png",
                                                                        "cover.png"]
        record = json.loads((tmp_path / "s" / "samples.json").read_text())
        assert (record["n"], record["first"], record["count"]) == (3, 0, 3)


def test_the_uint8_npz_and_the_grids_float_npz_have_their_own_default_names(capsys, trained):
    # --format npz replaced the float samples of the grid format, its PNG still showing them
    assert gud(capsys, "sample", trained, "-n", 3)[0] == 0
    assert gud(capsys, "sample", trained, "-n", 2, "--format", "npz")[0] == 0
    folder = trained / "samples"
    assert np.load(folder / "ddim-4steps-seed0.npz")["x"].shape[0] == 3
    assert np.load(folder / "ddim-4steps-seed0-pixels.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_output_prefixes_keep_their_dots_and_folders_get_the_default_name(capsys, trained, tmp_path):
    # -o res.a and -o res.b are two prefixes (both used to write res.png); an existing folder, or
    # one named with a trailing slash, gets the default name inside it; a .png suffix is the prefix's.
    (tmp_path / "there").mkdir()
    for prefix in ("res.a", "res.b", "there", f"{tmp_path / 'new'}/", "x.png"):
        target = prefix if prefix.endswith("/") else tmp_path / prefix
        code, out, err = gud(capsys, "sample", trained, "-n", 2, "--steps", 2, "-o", target)
        assert code == 0, err
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert names == ["new/ddim-2steps-seed0.png", "res.a.png", "res.b.png", "there/ddim-2steps-seed0.png", "x.png"]
    # the default names of samples along another path or at other params differ from the model's own
    code, out, err = gud(capsys, "sample", trained, "-n", 2, "--steps", 2, "--path", "soft(t^1.1, -log(var(i)))")
    assert code == 0 and "ddim-2steps-seed0-" in out, err
    # completions are written one way only
    code, out, err = gud(capsys, "sample", trained, "--mask", "col(i) < 0.5", "--format", "npz", "-o", tmp_path / "c")
    assert code == 2 and "error[E003]" in err and "--format npz writes unconditional samples" in err


def test_an_unknown_format_is_a_usage_error(capsys, trained, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(trained), "--format", "gif"])
    assert exit_.value.code == 2 and "invalid choice: 'gif'" in capsys.readouterr().err


def test_an_export_travels_and_samples_like_its_run(capsys, trained, tmp_path):
    export = tmp_path / "export"
    code, out, err = gud(capsys, "export", trained, export)
    assert code == 0, err
    for name in ("model.safetensors", "spec.gud", "config.json", "README.md", "samples.png"):
        assert (export / name).is_file(), name
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(export, moved)
    torch.testing.assert_close(gudlang.load(moved).sample(3, seed=1), gudlang.load(trained).sample(3, seed=1))
    config = json.loads((moved / "config.json").read_text())
    assert config["model_hash"] == gudlang.load(trained).hash and config["trained_steps"] == 8
    assert "tiny.gud" in config["command"] and "model hash" in (moved / "README.md").read_text()
    assert gud(capsys, "sample", moved, "-n", 2, "-o", tmp_path / "from-export")[0] == 0
    code, _, err = gud(capsys, "export", trained, export)
    assert code == 2 and "E644" in err


@pytest.mark.parametrize("tamper, code", [("weights", "E626"), ("spec", "E624"), ("config", "E626"),
                                         ("spec file", "E626"), ("config data", "E626"),
                                         ("config resolved spec", "E626"), ("config overrides", "E626")])
def test_a_tampered_export_is_refused(capsys, trained, tmp_path, tamper, code):
    export = tmp_path / "export"
    assert gud(capsys, "export", trained, export)[0] == 0
    file = export / "model.safetensors"
    tensors, meta = ckpt.load_checkpoint(file)
    if tamper == "weights":
        name = next(k for k in tensors if k.startswith("ema."))
        tensors[name] = tensors[name] + 1e-3
        ckpt.save_checkpoint(file, tensors, meta)
    elif tamper == "spec":
        ckpt.save_checkpoint(file, tensors, dict(meta, gudlang_spec=meta["gudlang_spec"].replace("ddim", "heun")
                                                 .replace("steps = 8", "steps = 8; lr = 0.1")))
    elif tamper == "spec file":
        (export / "spec.gud").write_text((export / "spec.gud").read_text().replace("ddim", "heun"))
    else:
        config = json.loads((export / "config.json").read_text())
        edit = {"config": {"weights_sha256": "0" * 64}, "config data": {"data": dict(config["data"], shape=[1, 4, 4])},
                "config resolved spec": {"resolved_spec": config["resolved_spec"].replace("ddim", "heun")},
                "config overrides": {"overrides": {"a": "2"}}}[tamper]
        (export / "config.json").write_text(json.dumps(dict(config, **edit)))
    got, _, err = gud(capsys, "sample", export, "-n", 2, "-o", tmp_path / "s")
    assert got == 1 and f"error[{code}]" in err and not (tmp_path / "s.png").exists()


def test_the_weights_file_of_an_export_is_the_model(capsys, trained, tmp_path):
    export = tmp_path / "export"
    assert gud(capsys, "export", trained, export)[0] == 0
    x = gudlang.load(export).sample(2, seed=1)
    spec = (export / "spec.gud").read_text()
    (export / "spec.gud").write_bytes(spec.replace("\n", "\r\n").encode())  # git's autocrlf: E626 before
    torch.testing.assert_close(gudlang.load(export).sample(2, seed=1), x)
    (export / "config.json").unlink()
    (export / "spec.gud").unlink()
    torch.testing.assert_close(gudlang.load(export).sample(2, seed=1), x)


def test_an_export_stopped_by_sigterm_leaves_nothing_behind(trained, tmp_path):
    # a scheduler's kill left .DIR.partial-PID with the weights in it, hidden, forever
    import signal
    import subprocess
    import sys
    script = ("import time, gudlang\nfrom gudlang.api import GudModel\n"
              "GudModel.grid = lambda self, out, n=None: (print('drawing', flush=True), time.sleep(60))\n"
              f"gudlang.load({str(trained)!r}).export({str(tmp_path / 'export')!r})\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "drawing"  # the weights are written by now
    assert any(p.name.startswith(".export.partial-") for p in tmp_path.iterdir())
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_logging_writes_event_files(capsys, spec, tmp_path):
    code, _, err = gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "r", "-s", "runtime.log=tensorboard")
    assert code == 0, err
    run = only_run(tmp_path / "r")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 9))
    assert len(losses(run)) == 8  # metrics.csv as always


def test_a_run_whose_data_changed_cannot_grow(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.uniform(-1, 1, size=(64, 1, 4, 4)).astype(np.float32))
    spec = tmp_path / "npz.gud"
    spec.write_text(TINY.replace("data = digits()", 'data = npz("data.npz")'))
    monkey_cwd = Path.cwd()
    try:
        import os
        os.chdir(tmp_path)
        assert gud(capsys, "train", "--quiet", spec, "--out", tmp_path / "r")[0] == 0
        np.savez(tmp_path / "data.npz", x=rng.uniform(-1, 1, size=(64, 1, 4, 4)).astype(np.float32))
        code, _, err = gud(capsys, "train", "--quiet", "--resume", only_run(tmp_path / "r"), "-s", "train.steps=12")
    finally:
        os.chdir(monkey_cwd)
    assert code == 1 and "error[E641]" in err and "different model (the data changed)" in err


def test_an_exports_preview_draws_as_many_samples_as_trainings(capsys, tmp_path, monkeypatch):
    # it drew the whole sample.n (50000 for an FID spec: an hour for a thumbnail)
    from gudlang.api import PREVIEW_SAMPLES, GudModel
    (tmp_path / "tiny.gud").write_text(TINY)
    drawn = []
    sample = GudModel.sample
    monkeypatch.setattr(GudModel, "sample", lambda self, n, *a, **k: drawn.append(n) or sample(self, n, *a, **k))
    assert main(["train", "--quiet", str(tmp_path / "tiny.gud"), "--out", str(tmp_path / "runs"),
                 "-s", f"sample.n={PREVIEW_SAMPLES + 100}", "-s", "train.steps=2"]) == 0
    assert gud(capsys, "export", only_run(tmp_path / "runs"), tmp_path / "export")[0] == 0
    assert drawn == [PREVIEW_SAMPLES, PREVIEW_SAMPLES]  # the final grid of training, the export's


def test_an_exports_card_reproduces_the_run_with_its_overrides(capsys, tmp_path, monkeypatch):
    # the card showed the spec without the -s overrides, and only the original (absolute) command
    (tmp_path / "tiny.gud").write_text(TINY)
    assert main(["train", "--quiet", str(tmp_path / "tiny.gud"), "--out", str(tmp_path / "runs"),
                 "-s", "train.batch=4", "-s", "train.steps=2"]) == 0
    run = only_run(tmp_path / "runs")
    assert gud(capsys, "export", run, tmp_path / "export")[0] == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "`train.batch = 4`" in card
    line = next(x for x in card.splitlines() if x.startswith("gud train spec.gud"))
    assert line == "gud train spec.gud -s train.batch=4 -s train.steps=2"
    monkeypatch.chdir(tmp_path / "export")
    argv = line.split()[1:]
    assert main([argv[0], "--quiet", *argv[1:], "--out", str(tmp_path / "again")]) == 0
    assert gudlang.load(only_run(tmp_path / "again")).hash == gudlang.load(run).hash
