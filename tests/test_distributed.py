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


def torchrun(*args, nproc: int = 1, nnodes: int = 1, node_rank: int = 0, port: int, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
               f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "gudlang",
               *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


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
    # the sharded samples are the ones one process draws
    assert main(["sample", str(run), "-n", "7", "--format", "npz", "-o", str(tmp_path / "one")]) == 0
    from PIL import Image
    one = np.load(tmp_path / "one.npz")["arr_0"]
    for k in range(7):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / f"{k:06d}.png")), one[k, :, :, 0])
    done = torchrun("nll", run, "-n", 6, nproc=2, port=free_port())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 6 test images" in done.stdout and done.stdout.count("NLL") == 1
