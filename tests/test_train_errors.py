"""Training errors a user meets: a batch too large for memory, a diverging loss, an --until
the run is already past. Each says what happened and what is on disk, never a traceback."""

import pytest
import torch

from gudlang import checkpoint as ckpt
from gudlang import train as train_module
from gudlang.train import Objective
from test_train import TINY, losses, only_run, train

HUGE = 100_000_000_000


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.gud"
    path.write_text(TINY)
    return path


def refuse_to_allocate(monkeypatch):
    """make_batch fails as torch's CPU allocator does for a huge batch (at once, allocating nothing)."""
    def make_batch(data, spec, drawn, step, batch, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           f"memory: you tried to allocate {batch * 8} bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(train_module, "make_batch", make_batch)


def nan_at_call(monkeypatch, n: int):
    """The loss of the n-th forward pass (1-based) is NaN."""
    real = Objective.forward
    calls = {"n": 0}

    def exploding(self, batch, autocast_dtype=None):
        calls["n"] += 1
        loss = real(self, batch, autocast_dtype)
        return loss * float("nan") if calls["n"] == n else loss
    monkeypatch.setattr(Objective, "forward", exploding)


def run_files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_batch_too_large_for_memory_is_E640_and_leaves_no_stub_run(capsys, spec, tmp_path, monkeypatch):
    refuse_to_allocate(monkeypatch)
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "-s", f"train.batch={HUGE}")
    assert code == 1 and "E640" in err and "Traceback" not in err
    assert f"train.batch = {HUGE} does not fit in memory" in err and "745.1 GiB" in err
    assert "lower train.batch" in err
    assert not (tmp_path / "runs").exists()  # neither the run directory nor the --out this call made
    assert train(capsys, spec, "--out", tmp_path / "runs", "--name", "again", "-s", f"train.batch={HUGE}")[0] == 1
    assert not (tmp_path / "runs" / "again").exists()  # --name can be reused after a lower batch


def test_out_of_memory_in_a_resumed_run_keeps_every_file(capsys, spec, tmp_path, monkeypatch):
    assert train(capsys, spec, "--out", tmp_path / "runs", "--until", "6")[0] == 0
    run = only_run(tmp_path / "runs")
    before = run_files(run)

    def out_of_memory(self, batch, autocast_dtype=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                          "capacity of 79.10 GiB of which 1.02 GiB is free.")
    monkeypatch.setattr(Objective, "forward", out_of_memory)
    code, _, err = train(capsys, "--resume", run)
    assert code == 1 and "E640" in err and "2.00 GiB" in err and "step 7" in err
    assert "train.accumulate" in err and "the last checkpoint is of step 6" in err
    assert run_files(run) == before


def test_a_non_finite_loss_names_the_step_as_metrics_csv_does(capsys, spec, tmp_path, monkeypatch):
    nan_at_call(monkeypatch, 7)  # the 7th step: metrics.csv holds steps 1 to 6, a checkpoint of step 4
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    assert code == 1 and "E630" in err and "the loss is nan at step 7" in err
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]][-1] == "6"
    assert "metrics.csv ends at step 6" in err and "the last checkpoint is of step 4" in err
    assert ckpt.load_checkpoint(run / "checkpoint.safetensors")[1]["gudlang_step"] == "4"


def test_a_loss_diverging_before_any_checkpoint_says_there_is_none(capsys, spec, tmp_path, monkeypatch):
    nan_at_call(monkeypatch, 2)
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    assert code == 1 and "the loss is nan at step 2" in err
    assert "no checkpoint was written yet" in err and "checkpoint is kept" not in err
    assert not (run / "checkpoint.safetensors").exists() and len(losses(run)) == 1


def test_until_not_beyond_the_runs_step_says_so(capsys, spec, tmp_path):
    assert train(capsys, spec, "--out", tmp_path / "runs", "--until", "6")[0] == 0
    run = only_run(tmp_path / "runs")
    for until in ("4", "6"):
        code, out, _ = train(capsys, "--resume", run, "--until", until)
        assert code == 0 and f"--until {until} is not beyond" in out and "step 6" in out
        assert "from 7 to 12" in out and "train.steps=N" not in out
    assert train(capsys, "--resume", run)[0] == 0
    code, out, _ = train(capsys, "--resume", run, "--until", "8")  # at its last step: it must grow too
    assert code == 0 and "--until 8 is not beyond" in out and "-s train.steps=N" in out
    assert len(losses(run)) == 12


def _one_step_setup(device="cpu"):
    from gudlang.check import check_text
    from gudlang.networks import make_network
    from gudlang.pipeline import build_model
    from gudlang.train import make_batch, make_optimizer

    model = build_model(check_text(TINY, "tiny.gud"))
    net = model.spec.network.model_dump()
    network = make_network(net.pop("kind"), model.data.shape, **net).to(device)
    objective = Objective(model, network).to(device)
    optimizer = make_optimizer(network.parameters(), model.spec.train)
    batch = make_batch(torch.as_tensor(model.data.train), model.spec, model.checked.drawn, 0,
                       model.spec.train.batch, 0, 0, torch.device(device))
    return model, network, objective, optimizer, batch


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_non_finite_loss_leaves_weights_and_optimizer_untouched(monkeypatch, accumulate):
    # the loss is read once, after the backward pass: the weights must still not move
    from gudlang.diagnostics import GudError
    from gudlang.train import train_step

    model, network, objective, optimizer, batch = _one_step_setup()
    settings = model.spec.train.model_copy(update={"accumulate": accumulate})
    train_step(objective, optimizer, batch, settings, 0)  # the optimizer has state now
    before = {k: v.clone() for k, v in network.state_dict().items()}
    moments = [v.clone() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    nan_at_call(monkeypatch, accumulate)  # the last micro-batch of the step
    with pytest.raises(GudError) as info:
        train_step(objective, optimizer, batch, settings, 5)
    assert info.value.diagnostics[0].code == "E630" and "at step 6" in info.value.diagnostics[0].message
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    after = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert all(torch.equal(a, b) for a, b in zip(moments, after))


def test_a_float64_step_reports_its_loss_and_norm_in_float64():
    # they were read as float32: a float64 run logged rounded losses
    from gudlang.train import train_step

    model, _, _, _, batch = _one_step_setup()
    weight = torch.nn.Parameter(torch.tensor([1 / 3], dtype=torch.float64))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    loss, norm = train_step(lambda piece, autocast: (weight * weight).sum(), optimizer, batch,
                            model.spec.train.model_copy(update={"grad_clip": 10.0}), 0)
    assert loss == (1 / 3) ** 2 and norm == 2 / 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_training_step_waits_for_the_device_once():
    import warnings

    from gudlang.train import make_batch, train_step

    model, network, objective, optimizer, _ = _one_step_setup("cuda")
    data = torch.as_tensor(model.data.train)
    train_step(objective, optimizer, make_batch(data, model.spec, model.checked.drawn, 0, 16, 0, 0,
                                                torch.device("cuda")), model.spec.train, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = make_batch(data, model.spec, model.checked.drawn, 1, 16, 0, 0, torch.device("cuda"))
            train_step(objective, optimizer, batch, model.spec.train, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_a_run_another_gud_train_holds_is_refused(capsys, spec, tmp_path):
    # two `gud train --name X` at once both trained into X, interleaving metrics and checkpoints
    from gudlang.trainer import _lock_run

    held = _lock_run(tmp_path / "runs" / "shared")
    try:
        code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", "shared")
        assert code == 1 and "E640" in err and "being trained by another gud train" in err
    finally:
        held.close()
    (tmp_path / "runs" / "shared" / ".lock").unlink()  # an empty folder left by the other call
    (tmp_path / "runs" / "shared").rmdir()
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", "shared")
    assert code == 0, err
    held = _lock_run(tmp_path / "runs" / "shared")  # it has a checkpoint now: a resume is refused too
    try:
        code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", "shared", "-s", "train.steps=14")
        assert code == 1 and "being trained by another gud train" in err
    finally:
        held.close()


def test_out_with_resume_is_a_usage_error(capsys, spec, tmp_path):
    code, _, _ = train(capsys, spec, "--out", tmp_path / "runs")
    assert code == 0
    run = only_run(tmp_path / "runs")
    code, _, err = train(capsys, "--resume", run, "--out", tmp_path / "elsewhere")
    assert code == 2 and "E003" in err and "--resume trains RUN where it is" in err
    assert not (tmp_path / "elsewhere").exists()
    code, _, err = train(capsys, "--resume", run, "--name", "other")  # --name was ignored
    assert code == 2 and "E003" in err and "--resume names the run directory itself" in err


@pytest.mark.parametrize("batch, accumulate, world, fine", [(12, 1, 2, True), (12, 4, 2, False), (15, 1, 2, False),
                                                            (16, 4, 2, True), (12, 2, 4, False)])
def test_a_batch_that_does_not_split_over_the_ranks_is_refused(batch, accumulate, world, fine):
    from types import SimpleNamespace

    from gudlang.diagnostics import GudError
    from gudlang.trainer import _check_batch_split

    settings = SimpleNamespace(batch=batch, accumulate=accumulate)
    if fine:
        _check_batch_split(settings, world)
        return
    with pytest.raises(GudError) as info:
        _check_batch_split(settings, world)
    d = info.value.diagnostics[0]
    assert d.code == "E210" and "would drop" in d.message
    suggested = int(d.help.rsplit("=", 1)[1])
    assert suggested % (world * accumulate) == 0


def test_ranks_that_built_different_models_are_refused(monkeypatch):
    from types import SimpleNamespace

    from gudlang.diagnostics import GudError
    from gudlang.trainer import _check_ranks_agree

    def gather(out, value):  # rank 1 loaded other data: another model hash
        out[:] = [value, "gud2-sha256:" + "f" * 64]

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(GudError) as info:
        _check_ranks_agree(SimpleNamespace(model_hash="gud2-sha256:" + "0" * 64))
    assert info.value.diagnostics[0].code == "E641" and "rank 1 built another model" in str(info.value)


def test_a_resume_refused_for_another_model_names_what_changed(capsys, spec, tmp_path):
    code, _, _ = train(capsys, spec, "--out", tmp_path / "runs")
    assert code == 0
    run = only_run(tmp_path / "runs")
    code, _, err = train(capsys, "--resume", run, "-s", "train.lr=0.5", "-s", "train.steps=20")
    assert code == 1 and "E641" in err and "(train.lr changed)" in err
    cosine = tmp_path / "cosine.gud"
    cosine.write_text(TINY.replace("train { steps = 12;", "train { lr_schedule = cosine; steps = 12;"))
    code, _, _ = train(capsys, cosine, "--out", tmp_path / "cos")
    assert code == 0
    code, _, err = train(capsys, "--resume", only_run(tmp_path / "cos"), "-s", "train.steps=20")
    assert code == 1 and "(train.steps changed) (with lr_schedule = cosine" in err


def test_a_new_run_that_cannot_start_its_log_leaves_no_folder(capsys, spec, tmp_path, monkeypatch):
    # log = tensorboard without the package: E640, and (it was left) no run folder without a
    # checkpoint to block `--name` once the package is installed
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    spec.write_text(spec.read_text() + "runtime { log = tensorboard }\n")
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", "tb")
    assert code == 1 and "E640" in err and "tensorboard" in err
    assert not (tmp_path / "runs" / "tb").exists()


def test_a_named_run_killed_before_its_first_checkpoint_is_trained_again_by_the_same_command(capsys, spec, tmp_path):
    # SIGKILL (or OOM, or a lost node) before the first checkpoint leaves what init_run wrote and the
    # metrics logged so far; the requeued command found "exists but holds no checkpoint" forever.
    import json
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", "r")
    run = tmp_path / "runs" / "r"
    trained = losses(run)
    assert code == 0, err
    for name in ("checkpoint.safetensors", "training_state.pt"):
        (run / name).unlink()
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "segments": []}))
    code, _, err = train(capsys, spec, "--out", tmp_path / "runs", "--name", "r")
    assert code == 0 and "holds no checkpoint (a run of this spec stopped before its first)" in err, err
    assert (run / "checkpoint.safetensors").is_file() and losses(run) == trained  # the same run, from step 0
    # another spec or other overrides under that name are still refused, the folder left alone
    for name in ("checkpoint.safetensors", "training_state.pt"):
        (run / name).unlink()
    (run / "run.json").write_text(json.dumps({**record, "segments": []}))
    for extra in (["-s", "train.lr=0.01"], []):
        other = spec if extra else tmp_path / "other.gud"
        other.parent.joinpath("other.gud").write_text(spec.read_text() + "# another\nparam unused = 1\n")
        code, _, err = train(capsys, other, "--out", tmp_path / "runs", "--name", "r", *extra)
        assert code == 1 and "exists but holds no checkpoint to resume" in err
    assert not (run / "checkpoint.safetensors").exists() and (run / "metrics.csv").is_file()
