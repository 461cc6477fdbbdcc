"""How gamma enters the U-Net: `unet(state = "linear")` (the default: a learned map of all
2 D per-component features into the embedding) against `unet(state = "channels")` (the
features as 2 C input channels in the basis' layout, only their component means in the
embedding), each trained from the same spec, seed and steps in this run.

Rows: specs/digits.gud (PCA basis, soft a = 1, the default model) and
specs/sequential_columns.gud (pixel basis, column by column: neighbouring pixels differ in
noise level). Columns: trainable parameters, seconds per training step, the mean training
loss over the last tenth of the steps, and the test-split NLL in bits/dim (exact divergence,
EMA weights) with its standard error; then channels / linear. The parameter counts at
3x256x256 (no training) show why "channels" exists. No target: the table says what the cheaper
input costs or gains where both fit.

    python benchmarks/state_inputs.py [--steps 2500] [--nll 64]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import tempfile
import time
from pathlib import Path

import gudlang
from gudlang.networks import count_parameters, make_network

ROOT = Path(__file__).resolve().parent.parent
SPECS = ("digits.gud", "sequential_columns.gud")
STATES = ("linear", "channels")


def late_loss(run: Path) -> float:
    """Mean training loss over the last tenth of the logged steps."""
    with open(run / "metrics.csv", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def with_state(spec: str, state: str, folder: Path) -> Path:
    """A copy of specs/SPEC whose unet has `state` (its network line, or the default unet)."""
    text = (ROOT / "specs" / spec).read_text()
    if "network = unet(" in text:
        text = text.replace("network = unet(", f'network = unet(state = "{state}", ', 1)
    else:
        text += f'network = unet(state = "{state}")\n'
    path = folder / f"{Path(spec).stem}-{state}.gud"
    path.write_text(text)
    return path


def measure(spec: str, state: str, steps: int, n: int, out: Path) -> dict:
    begin = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # the table only
        result = gudlang.train_run(with_state(spec, state, out), {"train.steps": str(steps)}, out=out, quiet=True)
    seconds = (time.perf_counter() - begin) / steps
    model = gudlang.load(result.run)
    nll = model.nll(split="test", n=n, divergence="exact")
    return {"params": count_parameters(model.eps_model), "step": seconds, "loss": late_loss(result.run),
            "nll": nll.mean, "stderr": nll.stderr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500, help="training steps (the default model's 2500)")
    parser.add_argument("--nll", type=int, default=64, help="test images the NLL is measured on")
    args = parser.parse_args(argv)
    print(f"{'spec':<24} {'state':<9} {'params':>9} {'s/step':>7} {'late loss':>10} {'NLL bits/dim':>16}")
    with tempfile.TemporaryDirectory() as folder:
        for spec in SPECS:
            rows = {state: measure(spec, state, args.steps, args.nll, Path(folder)) for state in STATES}
            for state, r in rows.items():
                print(f"{spec:<24} {state:<9} {r['params']:>9,d} {r['step']:>7.3f} {r['loss']:>10.4f} "
                      f"{r['nll']:>8.3f} +- {r['stderr']:.3f}", flush=True)
            a, b = rows["channels"], rows["linear"]
            print(f"{spec:<24} {'ratio':<9} {a['params'] / b['params']:>9.2f} {a['step'] / b['step']:>7.2f} "
                  f"{a['loss'] / b['loss']:>10.3f} {a['nll'] - b['nll']:>+8.3f} (difference)")
    print("\nparameters of the default unet(channels = 32, channel_mult = [1, 2]) by image size:")
    for shape in ((1, 8, 8), (3, 32, 32), (3, 64, 64), (3, 256, 256)):
        counts = [count_parameters(make_network("unet", shape, channel_mult=(1, 2), state=s)) for s in STATES]
        print(f"  {'x'.join(map(str, shape)):<10} linear {counts[0]:>12,d}   channels {counts[1]:>9,d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
