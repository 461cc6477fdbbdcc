"""Damaged run directories and checkpoints, and outputs that cannot be written: each is a clear
E6xx diagnostic naming the file and what to do, never a traceback, and nothing already written
is lost."""

import hashlib
import json
import shutil

import pytest
import torch

from gudlang import checkpoint as ckpt
from gudlang.cli import main
from gudlang.runs import DATA_DIGEST
from test_train import TINY, only_run


@pytest.fixture(scope="module")
def halfway(tmp_path_factory):
    """A run of TINY stopped with --until at step 4 of 12 (checkpoint and state at step 4)."""
    parent = tmp_path_factory.mktemp("halfway")
    (parent / "tiny.gud").write_text(TINY)
    assert main(["train", "--quiet", str(parent / "tiny.gud"), "--out", str(parent / "runs"), "--until", "4"]) == 0
    return only_run(parent / "runs")


@pytest.fixture
def run(halfway, tmp_path):
    """A private copy of the halfway run to damage."""
    return shutil.copytree(halfway, tmp_path / "run")


def resume(capsys, run):
    code = main(["train", "--quiet", "--resume", str(run)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def set_state_step(run, step):
    state = ckpt.load_training_state(run / "training_state.pt")
    ckpt.save_training_state(run / "training_state.pt", dict(state, step=step))


def test_the_undamaged_copy_resumes(capsys, run):
    assert resume(capsys, run)[0] == 0
    assert main(["train", "--resume", str(run)]) == 0
    assert "nothing to train" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "{bad", "[1, 2]", '{"overrides": {"train.steps": [1]}}'])
def test_a_missing_or_damaged_run_json_is_E640(capsys, run, content):
    if content is None:
        (run / "run.json").unlink()
    else:
        (run / "run.json").write_text(content)
    code, err = resume(capsys, run)
    assert code == 1 and "error[E640]" in err and "run.json" in err


def test_unreadable_metrics_is_E640_and_a_missing_one_starts_afresh(capsys, run):
    (run / "metrics.csv").write_bytes(b"garbage\x00\xff\n")
    code, err = resume(capsys, run)
    assert code == 1 and "error[E640]" in err and "metrics.csv" in err and "move it aside" in err
    (run / "metrics.csv").unlink()
    assert resume(capsys, run)[0] == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == [str(k) for k in range(5, 13)]


@pytest.mark.parametrize("step,phrase", [(2, "a save was cut short"), (-5, "a save was cut short"),
                                         ("abc", "does not record a step")])
def test_a_training_state_that_disagrees_with_the_checkpoint_is_E621(capsys, run, step, phrase):
    set_state_step(run, step)
    code, err = resume(capsys, run)
    assert code == 1 and "error[E621]" in err and phrase in err


def test_a_run_beyond_train_steps_cannot_shrink_E641(capsys, run):
    tensors, meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
    ckpt.save_checkpoint(run / "checkpoint.safetensors", tensors, dict(meta, gudlang_step="100"))
    set_state_step(run, 100)
    code, err = resume(capsys, run)
    assert code == 1 and "error[E641]" in err and "beyond train.steps = 12" in err


def test_an_optimizer_state_that_does_not_fit_is_E621(capsys, run):
    state = ckpt.load_training_state(run / "training_state.pt")
    ckpt.save_training_state(run / "training_state.pt", {"step": state["step"], "optimizer": {"state": {}}})
    code, err = resume(capsys, run)
    assert code == 1 and "error[E621]" in err and "optimizer state" in err


def rewrite_checkpoint(run, tmp_path, *, meta=None, tensors=None, drop=()):
    old_tensors, old_meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
    out = tmp_path / "edited.safetensors"
    new_meta = {k: v for k, v in dict(old_meta, **(meta or {})).items() if k not in drop}
    ckpt.save_checkpoint(out, tensors(old_tensors) if tensors else old_tensors, new_meta)
    return out


@pytest.mark.parametrize("data,phrase", [
    ("{not json", "is not JSON"),
    ('{"name": "digits"}', "lacks"),
    ("VALUE_RANGE", "invalid value_range"),
])
def test_checkpoint_data_metadata_is_validated_E622(capsys, run, tmp_path, data, phrase):
    if data == "VALUE_RANGE":
        _, meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
        data = json.dumps(dict(json.loads(meta["gudlang_data"]), value_range=[1]))
    # as in a checkpoint written before the data description had its digest
    edited = rewrite_checkpoint(run, tmp_path, meta={"gudlang_data": data}, drop=(DATA_DIGEST,))
    code = main(["sample", str(edited), "-n", "2", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 1 and "error[E622]" in err and phrase in err and "Traceback" not in err


@pytest.mark.parametrize("overrides", ["{not json", "[1, 2]", '{"a": [1]}'])
def test_checkpoint_overrides_metadata_is_validated_E622(capsys, run, tmp_path, overrides):
    # a JSONDecodeError / AttributeError traceback before
    edited = rewrite_checkpoint(run, tmp_path, meta={"gudlang_overrides": overrides})
    code = main(["sample", str(edited), "-n", "2", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 1 and "error[E622]" in err and "gudlang_overrides" in err and "Traceback" not in err


def test_a_changed_data_description_is_refused_E622_and_old_checkpoints_load(capsys, run, tmp_path):
    # value_range sets how samples are scaled back to data: a valid but edited one would
    # silently change every sample, so its digest must match.
    _, meta = ckpt.load_checkpoint(run / "checkpoint.safetensors")
    assert meta[DATA_DIGEST] == hashlib.sha256(meta["gudlang_data"].encode()).hexdigest()
    data = json.dumps(dict(json.loads(meta["gudlang_data"]), value_range=[0, 255]))
    edited = rewrite_checkpoint(run, tmp_path, meta={"gudlang_data": data})
    code = main(["sample", str(edited), "-n", "2", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 1 and "error[E622]" in err and "was changed after it was written" in err
    assert "Traceback" not in err
    unchanged = rewrite_checkpoint(run, tmp_path, drop=(DATA_DIGEST,))
    assert main(["sample", str(unchanged), "-n", "2", "-o", str(tmp_path / "old")]) == 0


def test_checkpoint_weights_that_do_not_fit_the_network_are_E621(capsys, run, tmp_path):
    def widen(tensors):
        key = next(k for k in tensors if k.startswith("ema") and k.endswith("inp.weight"))
        return dict(tensors, **{key: torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])})
    edited = rewrite_checkpoint(run, tmp_path, tensors=widen)
    code = main(["sample", str(edited), "-n", "2", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 1 and "error[E621]" in err and "do not fit" in err and "Traceback" not in err


@pytest.mark.parametrize("device", ["meta", "mps", "xla"])
def test_unsupported_runtime_devices_are_E640(capsys, tmp_path, device):
    (tmp_path / "tiny.gud").write_text(TINY)
    code = main(["train", "--quiet", str(tmp_path / "tiny.gud"), "--out", str(tmp_path / "runs"),
                 "-s", f"runtime.device={device}"])
    err = capsys.readouterr().err
    assert code == 1 and "error[E640]" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_outputs_that_cannot_be_made_are_E620(capsys, halfway, tmp_path):
    (tmp_path / "a_file").write_text("in the way")
    (tmp_path / "tiny.gud").write_text(TINY)
    code = main(["train", "--quiet", str(tmp_path / "tiny.gud"), "--out", str(tmp_path / "a_file")])
    assert code == 1 and "error[E620]" in capsys.readouterr().err
    code = main(["sample", str(halfway), "-n", "2", "-o", str(tmp_path / "a_file" / "x")])
    assert code == 1 and "error[E620]" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "in the way"
