"""Checkpoints round-trip exactly, survive a crash mid-write, refuse corrupt or tampered
files with GudError, and training state restores optimizer and RNG exactly."""

import os
import random

import numpy as np
import pytest
import torch

from gudlang import checkpoint as ckpt
from gudlang.diagnostics import GudError

SPEC = "gud 1\ndata = digits()\n"


def fake_hash(text: str) -> str:
    return f"test-sha:{len(text)}"


METADATA = {"gudlang_spec": SPEC, "gudlang_hash": fake_hash(SPEC)}


def tensors():
    torch.manual_seed(0)
    weight = torch.randn(4, 6)
    return ckpt.pack_tensors(
        model={"w": weight, "b": torch.arange(4, dtype=torch.int64)},
        ema={"w": weight.T},  # a non-contiguous view of another tensor
        basis={"U": torch.eye(3, dtype=torch.float64)},
        stats={"mean": torch.zeros(1, 8, 8)},
        prior={"s": torch.ones(64, dtype=torch.float16)},
    )


def error_of(call):
    with pytest.raises(GudError) as info:
        call()
    return info.value.diagnostics[0]


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_round_trip_is_exact(tmp_path):
    path = tmp_path / "model.safetensors"
    ckpt.save_checkpoint(path, tensors(), {**METADATA, "note": "ünïcode"})
    loaded, metadata = ckpt.load_checkpoint(path)
    original = tensors()
    assert loaded.keys() == original.keys()
    for key, t in original.items():
        assert loaded[key].dtype == t.dtype and torch.equal(loaded[key], t)
    assert metadata == {**METADATA, "note": "ünïcode", "format_version": ckpt.FORMAT_VERSION}


def test_checkpoint_is_safetensors_not_pickle(tmp_path):
    path = tmp_path / "model.safetensors"
    ckpt.save_checkpoint(path, tensors(), METADATA)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8:9] == b"{" and header_len < path.stat().st_size


def test_unpack_tensors_inverts_pack_tensors():
    groups = ckpt.unpack_tensors(tensors())
    assert set(groups) == set(ckpt.NAMESPACES)
    assert torch.equal(groups["ema"]["w"], tensors()["ema.w"])
    assert error_of(lambda: ckpt.unpack_tensors({"optimizer.x": torch.zeros(1)})).code == "E621"
    with pytest.raises(ValueError):
        ckpt.pack_tensors(optimizer={"x": torch.zeros(1)})


@pytest.mark.parametrize("step", ["os.replace", "os.fsync"])
def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, step):
    path = tmp_path / "model.safetensors"
    ckpt.save_checkpoint(path, tensors(), METADATA)
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(step, crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"model.w": torch.ones(2)}, METADATA)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert torch.equal(ckpt.load_checkpoint(path)[0]["model.w"], tensors()["model.w"])


def test_failed_write_is_e620_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    ckpt.atomic_write_text(path, "old")

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    d = error_of(lambda: ckpt.atomic_write_text(path, "new"))
    monkeypatch.undo()
    assert d.code == "E620" and "No space left" in d.message
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_atomic_write_replaces_content_and_keeps_permissions(tmp_path):
    path = tmp_path / "resolved.gud"
    ckpt.atomic_write_text(path, "first")
    assert path.stat().st_mode & 0o777 == 0o644
    os.chmod(path, 0o600)
    ckpt.atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second" and path.stat().st_mode & 0o777 == 0o600


def test_writing_into_a_missing_folder_is_e620(tmp_path):
    assert error_of(lambda: ckpt.atomic_write_text(tmp_path / "no" / "x.txt", "")).code == "E620"


def test_missing_checkpoint_is_e620(tmp_path):
    d = error_of(lambda: ckpt.load_checkpoint(tmp_path / "absent.safetensors"))
    assert d.code == "E620" and "not found" in d.message
    assert error_of(lambda: ckpt.load_checkpoint(tmp_path)).code == "E620"


@pytest.mark.parametrize("cut", [0, 3, 8, 20, -1], ids=["empty", "3-bytes", "length-only",
                                                          "header-cut", "last-byte-cut"])
def test_truncated_checkpoint_is_e621(tmp_path, cut):
    path = tmp_path / "model.safetensors"
    ckpt.save_checkpoint(path, tensors(), METADATA)
    path.write_bytes(path.read_bytes()[:cut])
    d = error_of(lambda: ckpt.load_checkpoint(path))
    assert d.code == "E621" and "corrupt or truncated" in d.message


@pytest.mark.parametrize("content", [b"garbage" * 50, b"\xff" * 16, b"PK\x03\x04" + bytes(300)])
def test_garbage_checkpoint_is_e621(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    assert error_of(lambda: ckpt.load_checkpoint(path)).code == "E621"


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    path = tmp_path / "train.py"
    path.write_text("import gudlang\n" * 20)
    d = error_of(lambda: ckpt.load_checkpoint(path))
    assert d.code == "E621" and "is not a gudlang checkpoint (not a safetensors file)" in d.message
    assert "run directory" in d.help


def test_checkpoint_without_gudlang_metadata_is_e622(tmp_path):
    import safetensors.torch
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, path)
    d = error_of(lambda: ckpt.load_checkpoint(path))
    assert d.code == "E622" and "gudlang_spec" in d.message
    assert error_of(lambda: ckpt.save_checkpoint(path, {}, {"gudlang_spec": SPEC})).code == "E622"


def test_unknown_format_version_is_e623(tmp_path):
    import safetensors.torch
    path = tmp_path / "future.safetensors"
    safetensors.torch.save_file({"model.w": torch.zeros(2)}, path,
                                metadata={**METADATA, "format_version": "99"})
    d = error_of(lambda: ckpt.load_checkpoint(path))
    assert d.code == "E623" and "'99'" in d.message


def test_verify_checkpoint_accepts_the_matching_hash():
    ckpt.verify_checkpoint(METADATA, fake_hash)


def test_verify_checkpoint_refuses_a_tampered_hash():
    tampered = {**METADATA, "gudlang_hash": "test-sha:0"}
    d = error_of(lambda: ckpt.verify_checkpoint(tampered, fake_hash))
    assert d.code == "E624"
    assert "modified or produced by a different gudlang version" in d.message


def test_verify_checkpoint_refuses_a_spec_that_no_longer_checks():
    def failing(text):
        raise GudError.one("E201", "unknown function `foo`")

    d = error_of(lambda: ckpt.verify_checkpoint(METADATA, failing))
    assert d.code == "E624" and "E201" in d.message


def draws():
    return (torch.randn(5), torch.rand(3, dtype=torch.float64), np.random.rand(4),
            np.random.randn(2), [random.random() for _ in range(3)], random.gauss(0, 1))


def assert_same_draws(a, b):
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        else:
            np.testing.assert_array_equal(x, y)


def test_training_state_restores_rng_and_optimizer_exactly(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()

    path = tmp_path / "train_state.pt"
    ckpt.save_training_state(path, {"step": 17, "rng": ckpt.capture_rng_state(),
                                    "optimizer": opt.state_dict(),
                                    "losses": np.array([0.5, 0.25]), "lr": np.float32(0.5)})
    expected = draws()

    raw = torch.load(path, weights_only=True)  # the promise: no pickled code
    state = ckpt.load_training_state(path)
    assert raw.keys() == state.keys() and state["step"] == 17 and state["lr"] == 0.5
    assert torch.equal(state["losses"], torch.tensor([0.5, 0.25], dtype=torch.float64))
    ckpt.restore_rng_state(state["rng"])
    assert_same_draws(draws(), expected)

    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][k], v)


def test_training_state_refuses_arbitrary_objects(tmp_path):
    d = error_of(lambda: ckpt.save_training_state(tmp_path / "s.pt", {"f": {"g": object()}}))
    assert d.code == "E625" and "state['f']['g']" in d.message
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None], ids=["empty", "garbage",
                                                                     "truncated"])
def test_corrupt_training_state_is_e621(tmp_path, content):
    path = tmp_path / "train_state.pt"
    ckpt.save_training_state(path, {"w": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:50] if content is None else content)
    assert error_of(lambda: ckpt.load_training_state(path)).code == "E621"


def test_missing_training_state_is_e620(tmp_path):
    assert error_of(lambda: ckpt.load_training_state(tmp_path / "absent.pt")).code == "E620"
