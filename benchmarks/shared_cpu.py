"""Training speed on a CPU shared with another busy process.

Times `gud train` of the default digits spec for a few hundred steps (a subprocess, so that the
OpenMP settings apply before torch loads), alone and next to a busy neighbour (a second process
doing torch matrix products with all cores), with OpenMP's idle threads spinning
(OMP_WAIT_POLICY=ACTIVE) and sleeping (PASSIVE, what `gud` sets by default). Target: with the
default, training next to the neighbour stays within 2x of training alone.

Measure on an otherwise idle machine: the script itself makes the only load.

    python benchmarks/shared_cpu.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEIGHBOUR = """
import torch
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a / 512)
"""


def train_seconds(steps: int, policy: str, out: Path) -> float:
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    env.pop("OMP_NUM_THREADS", None)  # the default thread count, as a user gets it
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gudlang", "train", str(ROOT / "specs" / "digits.gud"), "--quiet",
                    "--out", str(out), "-s", f"train.steps={steps}", "-s", "train.sample_every=0"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - begin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("ACTIVE", "PASSIVE"):
            alone = train_seconds(args.steps, policy, Path(tmp) / f"{policy}-alone")
            env = dict(os.environ, OMP_WAIT_POLICY=policy)
            env.pop("OMP_NUM_THREADS", None)
            neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env)
            try:
                time.sleep(2)
                shared = train_seconds(args.steps, policy, Path(tmp) / f"{policy}-shared")
            finally:
                neighbour.kill()
                neighbour.wait()
            rows.append((policy, alone, shared))
    print(f"gud train specs/digits.gud, {args.steps} steps, {os.cpu_count()} cores, default thread count")
    print(f"{'OMP_WAIT_POLICY':<16} {'alone (s)':>10} {'shared (s)':>11} {'slowdown':>9}")
    for policy, alone, shared in rows:
        flag = ""
        if policy == "PASSIVE":
            ok = shared / alone <= 2.0
            flag = "  (gud's default)" + ("" if ok else "  <- over the 2x target")
        print(f"{policy:<16} {alone:10.1f} {shared:11.1f} {shared / alone:8.1f}x{flag}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
