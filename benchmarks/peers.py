"""Other papers' models in gud, trained on the same data for the same budget: specs/peers/*.gud
against the default spec (specs/digits.gud, the baseline), each trained for --steps steps
with its own settings, then measured by `gud nll` (exact divergence, bits/dim on the first
--n test digits) and timed. Realistic input: the 8x8 digits, whose component variances span
four orders of magnitude. What it shows is that every preset trains and samples end to end
and how far apart the methods land at a small budget, not which method is best at scale.

    python benchmarks/peers.py [--steps 600] [--n 180] [--only edm diffusion_forcing]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gud(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gudlang", *args], check=True, stdout=subprocess.DEVNULL)


def measure(spec: Path, steps: int, n: int, out: Path) -> tuple[float, float, float, float]:
    """(bits/dim, its standard error, training seconds, nll seconds) of one spec."""
    begin = time.perf_counter()
    gud("train", str(spec), "--quiet", "--out", str(out), "-s", f"train.steps={steps}", "-s", "train.sample_every=0")
    trained = time.perf_counter()
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    gud("nll", str(run), "-n", str(n))
    done = time.perf_counter()
    record = json.loads((run / "nll-test.json").read_text())
    return record["bits_per_dim"], record["stderr"], trained - begin, done - trained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n", type=int, default=180, help="test digits for the NLL (180 = all)")
    parser.add_argument("--only", nargs="*", help="peer spec names (default: all)")
    args = parser.parse_args()
    peers = sorted((ROOT / "specs" / "peers").glob("*.gud"))
    if args.only:
        peers = [p for p in peers if p.stem in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, spec in enumerate([ROOT / "specs" / "digits.gud"] + peers):
            out = Path(tmp) / f"{k}"
            out.mkdir()
            rows.append((spec.stem, *measure(spec, args.steps, args.n, out)))
            print(f"  {spec.stem}: {rows[-1][1]:.3f} bits/dim", file=sys.stderr, flush=True)
    base = rows[0][1]
    print(f"specs/peers on the 8x8 digits, {args.steps} training steps each, NLL on {args.n} test digits "
          "(exact divergence, dequantised)")
    print(f"{'spec':<20} {'bits/dim':>9} {'+-':>6} {'vs digits.gud':>14} {'train s':>8} {'nll s':>7}")
    for name, bits, err, train_s, nll_s in rows:
        print(f"{name:<20} {bits:9.3f} {err:6.3f} {bits / base:13.2f}x {train_s:8.0f} {nll_s:7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
