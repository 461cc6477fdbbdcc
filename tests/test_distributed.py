"""torchrun beyond one process: two "nodes" of one gloo process each on this machine
(--nnodes 2, static rendezvous), and sampling / NLL sharded over ranks."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = """gud 1
data = digits()
basis = pca()
network = mlp(hidden = 32, depth = 1)
gamma_i(t) = soft(t, -log(var(i)))
train { steps = 6; batch = 16; warmup = 2; checkpoint_every = 3; sample_every = 0 }
sample { sampler = ddim; steps = 4; n = 4 }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args, nproc: int = 1, nnodes: int = 1, node_rank: int = 0, port: int, wait: bool = True, cwd=None):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
               f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "gudlang",
               *map(str, args)]
    tests = str(Path(__file__).parent)  # test modules (a stand-in feature network) importable by the ranks
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def gudlang_frames(stderr: str) -> list[str]:
    """Traceback lines in gudlang's code (torchrun's launcher prints its own when a rank fails)."""
    return [line for line in stderr.splitlines() if line.strip().startswith('File "') and "gudlang" in line]


def two_failing_nodes(command) -> list[tuple[str, str]]:
    """(stdout, stderr) of two one-process "nodes" running command(node_rank), which must both
    fail within two minutes (a node left waiting for the other is a failure)."""
    port = free_port()
    nodes = [torchrun(*command(r), nnodes=2, node_rank=r, port=port, wait=False) for r in (0, 1)]
    try:
        outputs = [node.communicate(timeout=120) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert all(node.returncode != 0 for node in nodes)
    return outputs


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "tiny.gud"
    path.write_text(TINY)
    return path


@pytest.mark.slow
def test_two_nodes_train_one_model(spec, tmp_path):
    port = free_port()
    nodes = [torchrun("train", "--quiet", spec, "--out", tmp_path / "runs", "--name", "two-nodes",
                      nnodes=2, node_rank=r, port=port, wait=False) for r in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[0][-1500:] + o[1][-2500:] for o in outputs)
    assert "DDP: 2 ranks, weights identical on every rank: True" in outputs[0][0]
    run = tmp_path / "runs" / "two-nodes"
    assert (run / "checkpoint.safetensors").is_file()
    assert len((run / "metrics.csv").read_text().splitlines()) == 7


@pytest.mark.slow
def test_sampling_and_nll_are_sharded_over_ranks(spec, tmp_path):
    from gudlang.cli import main
    assert main(["train", "--quiet", str(spec), "--out", str(tmp_path / "runs"), "--name", "r"]) == 0
    run = tmp_path / "runs" / "r"
    done = torchrun("sample", run, "-n", 7, "--format", "png-dir", "-o", tmp_path / "png", nproc=2, port=free_port())
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "png").glob("*.png")) == [f"{k:06d}.png" for k in range(7)]
    import json
    record = json.loads((tmp_path / "png" / "samples.json").read_text())
    assert (record["first"], record["count"], record["n"]) == (0, 7, 7)  # every rank's, not rank 0's
    # the sharded samples are the ones one process draws
    assert main(["sample", str(run), "-n", "7", "--format", "npz", "-o", str(tmp_path / "one")]) == 0
    from PIL import Image
    one = np.load(tmp_path / "one.npz")["arr_0"]
    for k in range(7):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / f"{k:06d}.png")), one[k, :, :, 0])
    done = torchrun("nll", run, "-n", 6, nproc=2, port=free_port())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 6 test images" in done.stdout and done.stdout.count("NLL") == 1


def test_a_node_whose_data_are_missing_stops_every_node_with_its_reason(tmp_path):
    """Each node reads its own files: node 1's data file is missing. Node 0 used to wait in its
    first collective until the 30-minute timeout; now both stop at once, node 0 with E645
    naming rank 1 and its error."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.uniform(-1, 1, size=(64, 8, 8)))
    specs = []
    for node, data in enumerate((tmp_path / "data.npz", tmp_path / "elsewhere" / "data.npz")):
        specs.append(tmp_path / f"node{node}.gud")
        specs[-1].write_text(TINY.replace("digits()", f'npz("{data}", range = none)'))
    outputs = two_failing_nodes(lambda r: ("train", "--quiet", specs[r], "--out", tmp_path / "runs", "--name", "r"))
    assert "E401" in outputs[1][1] and not gudlang_frames(outputs[1][1])
    said = outputs[0][1]
    assert "E645" in said and "rank 1 stopped while reading the spec and loading the data" in said, said[-2000:]
    assert "E401" in said and not gudlang_frames(said)
    assert not (tmp_path / "runs" / "r").exists()  # no stub run left to block a --name requeue


def test_every_rank_reraises_its_own_error_and_names_the_others(monkeypatch):
    """`every_rank` with two ranks faked by all_gather_object: the failing rank raises its own
    error, the others E645 with its code and message; nothing failed: nothing raised."""
    import torch

    from gudlang import distributed
    from gudlang.diagnostics import GudError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "join", lambda: None)
    other = {"said": None}

    def gather(out, value):
        out[:] = [value, other["said"]]

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    with distributed.every_rank("loading"):
        pass
    with pytest.raises(GudError) as info:
        with distributed.every_rank("loading"):
            raise GudError.one("E402", "corrupt file")
    assert info.value.diagnostics[0].code == "E402"
    other["said"] = "E401 data file not found: /x.npz"
    with pytest.raises(GudError) as info:
        with distributed.every_rank("loading the data"):
            pass
    d = info.value.diagnostics[0]
    assert d.code == "E645" and d.message == "rank 1 stopped while loading the data: rank 1: E401 data file not found: /x.npz"


@pytest.mark.slow
def test_a_node_without_the_run_stops_every_node_of_gud_nll(spec, tmp_path):
    from gudlang.cli import main
    assert main(["train", "--quiet", str(spec), "--out", str(tmp_path / "runs"), "--name", "r"]) == 0
    outputs = two_failing_nodes(lambda r: ("nll", tmp_path / "runs" / ("r", "gone")[r], "-n", 4))
    said = outputs[0][1]
    assert "E645" in said and "rank 1 stopped while loading the run: rank 1: E001" in said, said[-2000:]
    assert not gudlang_frames(said) and "SIGABRT" not in said + outputs[1][1]


@pytest.mark.slow
def test_completions_are_sharded_over_ranks_and_equal_those_of_one_process(tmp_path):
    from gudlang.cli import main
    spec = tmp_path / "given.gud"
    spec.write_text(TINY.replace("basis = pca()", "basis = pixel()\ngiven_i = col(i) < 0.5")
                    .replace("soft(t, -log(var(i)))", "linear(t)"))
    assert main(["train", "--quiet", str(spec), "--out", str(tmp_path / "runs"), "--name", "r"]) == 0
    run = tmp_path / "runs" / "r"
    done = torchrun("sample", run, "-n", 5, "-o", tmp_path / "c", nproc=2, port=free_port())
    assert done.returncode == 0, done.stderr[-3000:]
    shards = [np.load(tmp_path / f"c.shard{r}of2.npz") for r in (0, 1)]
    assert [len(s["x"]) for s in shards] == [2, 3]
    assert "images 2 to 4, shard 1 of 2" in done.stdout
    assert main(["sample", str(run), "-n", "5", "-o", str(tmp_path / "one")]) == 0
    one = np.load(tmp_path / "one.npz")
    # the same start noise per image; float32 matrix products of 2 or 3 rows and of 5 may differ in the last bit
    np.testing.assert_allclose(np.concatenate([s["x"] for s in shards]), one["x"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([s["known"] for s in shards]), one["known"])
    # image extension: each rank extends its share of the images
    np.save(tmp_path / "images.npy", one["known"][:3])
    done = torchrun("extend", run, "--image", tmp_path / "images.npy", "--columns", 3, "--steps", 4,
                    "-o", tmp_path / "wide", nproc=2, port=free_port())
    assert done.returncode == 0, done.stderr[-3000:]
    wide = [np.load(tmp_path / f"wide.shard{r}of2.npz") for r in (0, 1)]
    assert [s["x"].shape for s in wide] == [(1, 1, 8, 11), (2, 1, 8, 11)]
    np.testing.assert_array_equal(np.concatenate([s["given"] for s in wide]), one["known"][:3])
    assert main(["extend", str(run), "--image", str(tmp_path / "images.npy"), "--columns", "3", "--steps", "4",
                 "-o", str(tmp_path / "wide-one")]) == 0  # rank 1 drew images 0 and 1's noise before
    np.testing.assert_allclose(np.concatenate([s["x"] for s in wide]), np.load(tmp_path / "wide-one.npz")["x"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gud_fid_splits_the_sampling_over_ranks_and_scores_them_all_on_rank_0(tmp_path, monkeypatch):
    import json

    from test_fid import ORACLE, VALUE_RANGE, RandomConvFeatures  # noqa: F401 (the ranks import it by name)

    from gudlang.cli import main
    from gudlang.data import grf
    from gudlang.images import save_npz
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.gud").write_text(ORACLE)
    save_npz(grf(size=8, slope=2, n=1200).train[:300], tmp_path / "ref.npz", VALUE_RANGE)
    common = ("fid", "spec.gud", "--ref", "ref.npz", "-n", 40, "--features", "test_fid:RandomConvFeatures")
    done = torchrun(*common, nproc=2, port=free_port(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("FID ") == 1 and "40 samples of spec.gud" in done.stdout
    record = json.loads((tmp_path / "samples" / "spec" / "fid-ref.json").read_text())
    assert record["n"] == 40
    # one process scores the same samples (sample k does not depend on the ranks)
    assert main([str(a) for a in common]) == 0
    again = json.loads((tmp_path / "samples" / "spec" / "fid-ref.json").read_text())
    assert again["fid"] == pytest.approx(record["fid"], rel=1e-5)
    assert again["kid_mean"] == pytest.approx(record["kid_mean"], rel=1e-4, abs=1e-7)
    assert len(list((tmp_path / "samples" / "spec").glob("fid-*.json"))) == 1  # the same measurement


def test_a_world_size_without_torchrun_is_a_clear_error(capsys, monkeypatch):
    from gudlang.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["nll", str(Path(__file__).parents[1] / "specs" / "grf_oracle.gud"), "-n", "4"]) == 1
    err = capsys.readouterr().err
    assert "error[E645]: cannot start the process group of 2 ranks" in err and "MASTER_ADDR" in err


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the rank's process in /proc")
def test_a_rank_killed_during_training_stops_the_other_with_a_clear_error(spec, tmp_path):
    import signal
    import time
    port = free_port()
    nodes = [torchrun("train", "--quiet", spec, "--out", tmp_path / "runs", "--name", "r", "-s", "train.steps=100000",
                      "-s", "train.checkpoint_every=5", nnodes=2, node_rank=r, port=port, wait=False) for r in (0, 1)]
    metrics = tmp_path / "runs" / "r" / "metrics.csv"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) > 10):
            time.sleep(0.2)
        assert metrics.is_file(), "training did not start"
        for worker in _children(nodes[1].pid):  # the rank's own process, as an out-of-memory kill would
            os.kill(worker, signal.SIGKILL)
        out, err = nodes[0].communicate(timeout=120)
    finally:
        for node in nodes:
            node.kill()
    assert nodes[0].returncode != 0
    assert "error[E645]: another rank stopped while this one waited for it" in err, err[-3000:]
    assert not gudlang_frames(err)
    from gudlang.checkpoint import load_checkpoint
    load_checkpoint(tmp_path / "runs" / "r" / "checkpoint.safetensors")  # the last checkpoint is whole
