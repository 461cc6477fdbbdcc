"""Loss-weighting benchmark: soft-conditioning models trained with the paper's unweighted loss and
with `weight_i(t) = snr_weight(gamma_i(t))`, on the 8x8 digits.

Why: the eps-loss of a component that is already clean (true SNR >> 1) is noise the network
cannot predict (for Gaussian data its floor is SNR / (1 + SNR) of the eps variance). With a
strong hierarchy (a > 1) few components are in motion (|log SNR| < 3) at any t, 18% of the
(t, component) pairs at a = 2 against 28% at a = 1, while about half are clean at any a: that
noise swamps the gradient of the few in motion, and such models sample a share of noise-like
images. snr_weight is sigmoid(b + gamma_i - log wvar_i) = 1 / (1 + SNR_i) at b = 0,
the sigmoid weighting of Kingma & Gao 2023 per component.

Rows (each spec's own network and training; every variant from the same seed, one after the
other in this process):
    soft_a2         specs/soft_a2.gud: a = 2 (the model of specs/digits.gud with -s a=2)
    digits a=1      specs/digits.gud: a = 1 (standard diffusion's hierarchy; = specs/soft_a1.gud)
    autoregressive  specs/autoregressive.gud: a = 640 clipped, matched prior; also at b = 4

Measures, none of them the model's own numbers:
    outliers  the share of 256 samples (the spec's sampler, seed 1) whose distance to the nearest
              training image is above the 99th percentile of the test images' distances to theirs
              (noise-like samples; about 1% for a model that samples the data)
    nn        median distance of a sample to its nearest training image over the same for the
              test images (1 for a model that samples the data)
    var       the samples' total variance (summed over pixels) over the training images' (1 for
              a model that samples the data): the outlier and nn columns favour samples that
              are too smooth (a blurred digit is near many), which this one shows
    nll       bits/dim of the first N test images (exact divergence; `--nll 0` skips it)
and, per row, each weighted variant over the unweighted one.

Measured here (2 cores, one seed each, N = 60; the autoregressive rows in a later run; the
soft_a2 rows as specs/digits.gud with -s a=2, the same model by its hash, before soft_a2.gud
took digits.gud's training):

    row              loss          outliers     nn     var             nll
    soft_a2          unweighted       20.3%  1.310    1.07   2.527 +- 0.023
    soft_a2          weighted          8.2%  1.227   0.827   2.455 +- 0.021
    digits a=1       unweighted        8.6%  1.201   0.951   2.492 +- 0.026
    digits a=1       weighted          6.2%  1.157   0.912   2.547 +- 0.024
    autoregressive   unweighted       93.4%  1.917    1.74   4.496 +- 0.040
    autoregressive   weighted         18.8%  1.388   0.456   4.708 +- 0.033
    autoregressive   weighted b=4     28.1%  1.426   0.905   4.526 +- 0.039

At a = 2 the weight wins on outliers and NLL but leaves the samples 17% short of the data's
variance. It wins more where training is weaker: soft_a2 with the default training (-s
train.lr=2e-4 -s train.ema=0.999 -s train.steps=3000, as the spec shipped until its train block
was added) gave 37.9% -> 13.3% outliers, variance 74.4 -> 1.03 (a share of the unweighted
samples were checkerboards of huge amplitude), NLL 2.548 -> 2.488; with -s train.seed=1 too
40.6% -> 17.2%, 82.6 -> 0.97. At a = 1 the NLL is worse; in the
autoregressive spec at b = 0 it swaps too much variance (saturated pixels) for far too little
(smooth, low-contrast digits) and costs NLL. The bias trades the two there (single runs of the
spec with `snr_weight(gamma_i(t), b = B)`, not repeated by this script): b = 2: 19.1% outliers,
0.60x the variance; b = 3: 23.0%, 0.73x; b = 6: 64.5%, 1.25x; b = 4 with -s train.seed=1: 30.5%,
0.89x. Hence soft_a2.gud ships with b = 0, autoregressive.gud with b = 4, and digits.gud
unweighted. About 35 minutes (7 trainings of 2.5-3.5 minutes, and the NLLs; the autoregressive
spec's take 100 s each).

With --spec FILE the script trains that spec as it is (no weight variants; -s KEY=VALUE as for
gud train) and prints the same measures. The README's numbers for the soft family's training
come from it: `--spec specs/soft_a0.gud --nll 0`, and the same with -s train.lr=2e-4 -s
train.ema=0.999 -s train.steps=3000 for the default training they replaced (soft_a0 44.1% ->
30.1% outliers, soft_a05 31.6% -> 16.8%, soft_a1 24.6% -> 8.6%; the default-training rows
measured in an earlier session; specs/family.gud, sampled at a = 0.5, 1, 1.5 by `gudlang.load(run,
params = {"a": A})`: 15.2%, 15.2%, 25.4%). Likewise before the other digits specs took that
training: specs/standard_linear.gud 21.9% -> 7.0%, specs/sequential_columns.gud 21.5% -> 5.9%;
the design card's one-liner as written (`linear(a*t - b*rank(i))`, the largest-variance
component generated last) 62.5% -> 73.4%, and turned round as specs/design_card.gud now has it,
33.2% (with the train block).

    python benchmarks/weighting.py [--only TEXT] [--nll N] [--out DIR]
    python benchmarks/weighting.py --spec FILE [-s KEY=VALUE ...] [--nll N] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import gudlang
from gudlang.pipeline import load_spec_data

SPECS = Path(__file__).resolve().parents[1] / "specs"
ROWS = {  # name: (shipped spec, overrides, the biases b of the weighted variants)
    "soft_a2": ("soft_a2.gud", {}, (0,)),
    "digits a=1": ("digits.gud", {}, (0,)),
    "autoregressive": ("autoregressive.gud", {}, (0, 4)),
}
SAMPLES = 256


def variants(spec: str, biases) -> dict[str, str]:
    """The spec's text without the weight ("unweighted"), and with `snr_weight` at each bias b
    ("weighted" at b = 0, "weighted b=B" otherwise): a shipped spec may carry a weight already.
    Comments and blank lines are dropped (runs kept with --out stay those of the text after a
    comment is edited)."""
    text = (SPECS / spec).read_text()
    plain = "".join(line for line in text.splitlines(keepends=True)
                    if line.strip() and not line.startswith(("weight", "#")))
    out = {"unweighted": plain}
    for b in biases:
        out["weighted" + (f" b={b}" if b else "")] = plain + \
            f"weight_i(t) = snr_weight(gamma_i(t){f', b = {b}' if b else ''})\n"
    return out


def nearest_distances(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of x (N, D) to its nearest row of reference (M, D)."""
    squared = (x ** 2).sum(1)[:, None] - 2 * x @ reference.T + (reference ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(1), 0.0))


def measure(run: Path, nll_images: int) -> dict:
    """outliers, nn and (when nll_images > 0) nll, nll_se of a trained run."""
    model = gudlang.load(run)
    data = load_spec_data(model.model.checked)
    train = np.asarray(data.train, dtype=np.float64).reshape(len(data.train), -1)
    test = np.asarray(data.test, dtype=np.float64).reshape(len(data.test), -1)
    reference = nearest_distances(test, train)
    samples = model.sample(SAMPLES, seed=1).double().numpy().reshape(SAMPLES, -1)
    distances = nearest_distances(samples, train)
    out = {"outliers": float((distances > np.quantile(reference, 0.99)).mean()),
           "nn": float(np.median(distances) / np.median(reference)),
           "var": float(samples.var(0).sum() / train.var(0).sum())}
    if nll_images:
        result = model.nll(split="test", n=nll_images)
        out.update(nll=float(result.mean), nll_se=float(result.stderr))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="rows whose name contains this text")
    parser.add_argument("--nll", type=int, default=60, help="test images for the NLL (0: skip it)")
    parser.add_argument("--out", default=None, help="keep the runs in this folder (default: a temporary one); "
                                                    "runs already there are measured, not retrained")
    parser.add_argument("--spec", help="measure this spec as it is, instead of the rows")
    parser.add_argument("-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --spec: an override, as for gud train")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        if args.spec:
            overrides = dict(item.split("=", 1) for item in args.overrides)
            name = Path(args.spec).stem + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
            run = gudlang.train_run(args.spec, overrides, out=out, quiet=True, name=name).run
            r = measure(run, args.nll)
            nll = f"{r['nll']:.3f} +- {r['nll_se']:.3f}" if "nll" in r else "-"
            print(f"{args.spec}: outliers {r['outliers']:.1%}, nn {r['nn']:.3f}, var {r['var']:.3g}, nll {nll}")
            return
        print(f"{'row':16s} {'loss':12s} {'outliers':>9s} {'nn':>6s} {'var':>7s} {'nll':>15s} {'train s':>8s}")
        for row, (spec, overrides, biases) in ROWS.items():
            if args.only not in row:
                continue
            results = {}
            for variant, text in variants(spec, biases).items():
                begin = time.perf_counter()
                name = f"{row.replace(' ', '_').replace('=', '')}-{variant.replace(' ', '_').replace('=', '')}"
                run = gudlang.train_run(text, overrides, out=out, quiet=True, name=name).run
                seconds = time.perf_counter() - begin
                results[variant] = r = measure(run, args.nll)
                nll = f"{r['nll']:.3f} +- {r['nll_se']:.3f}" if "nll" in r else "-"
                print(f"{row:16s} {variant:12s} {r['outliers']:9.1%} {r['nn']:6.3f} {r['var']:7.3g} {nll:>15s} "
                      f"{seconds:8.0f}", flush=True)
            u = results.pop("unweighted")
            for variant, w in results.items():
                ratio = f"{w['nll'] - u['nll']:+.3f}" if "nll" in w else "-"
                print(f"{row:16s} {variant.replace('weighted', 'w') + ' / u':12s} "
                      f"{w['outliers'] / max(u['outliers'], 1 / SAMPLES):9.2f}x "
                      f"{w['nn'] / u['nn']:5.2f}x {w['var'] / u['var']:6.3g}x {ratio:>15s}", flush=True)

if __name__ == "__main__":
    main()
