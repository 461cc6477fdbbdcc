"""Sampler benchmark on realistic spectra: exact Gaussian KL to the t = 0 marginal against model calls.

Data: two Gaussians whose whitened variances span orders of magnitude, as those of images do:
    digits  the covariance (and mean) of the train split of gudlang's `digits()` (8x8; its
            constant border pixels make it singular, as real image data are nearly)
    grf     `grf(size = 8, slope = 3)`, a steep power spectrum, with its exact covariance
in the bases pca, dct and wavelet (Haar, 2 levels), with the white and the matched prior, and
the schedules (label l = -log var for soft, the paper's PCA family):
    scalar      gamma(t) = linear(t, lo = -10, hi = 10)
    soft 0.5    gamma_i(t) = soft(t, -log(var(i)), a = 0.5)          weaker hierarchy than standard
    soft 2      gamma_i(t) = soft(t, -log(var(i)), a = 2)            stronger
    clipped 50  gamma_i(t) = soft(t, rank(i), a = 50, clipped = true) autoregressive (specs/autoregressive.gud)
    sequential  gamma_i(t) = sequential(t, col(i), b = 0.5)         column by column
The sequential rows exist only in the bases that offer `col` (PCA and DCT components have no
position): pixel, which appears in these rows only, and wavelet. That makes
2 data x (3 bases x 2 priors x 4 schedules + 2 bases x 2 priors) = 56 rows.
Each schedule is compiled from gud text by `build_model`, so the features (var, wvar, rank,
col) are those of the fitted basis; the eps model is the exact Gaussian oracle.

Every sampler starts from the exact t = 1 marginal p_1 and stops at t = 0 without the final
denoise, so the exact flow would give p_0 exactly and the KL is the discretisation error alone.
The oracle is affine, so each deterministic sampler is an affine map whose output moments come
from D + 1 runs (mu_1 and mu_1 + L_1 e_j, Cov_1 = L_1 L_1^T); Euler-Maruyama's output moments
follow its matrix recursion. No sampling noise enters the tables.

Tables, KL as a multiple of the KL of em at 1000 uniform steps (the reference; < 1 beats it):
    1. every method at 25 and at 50 model calls (heun 25 / 49, midpoint and dpm2 24 / 50) on the
       default grid, em on the uniform grid;
    2. the default sampler at 25 and 50 calls on each time grid;
    3. the targets: some sampler (table 1 or 2) within 25 calls, and the default sampler, steps
       and grid (gudlang.samplers.DEFAULT_*) within 50; and the fewest calls (of LADDER) with
       which the default sampler and grid reach the reference.
The script exits with status 1 when a target is missed. It does today, on the rows where no
method we tried gets there (orders 2 - 5, noise and data prediction and switches between them,
with and without corrector, other node gaps, x0 as a polynomial in t or in (lambda, t) with
exact weights, SNR-weighted, power-law, activity-weighted and kink-aligned grids, and an
exponential integrator whose linear part is the whole denoiser of independent N(0, v_i)
components, exact on the PCA rows but unstable on the digits in DCT, where a component's
variance given its neighbours is far below v_i; x0 as a polynomial in
phi_i = sqrt(sigmoid(log v_i - gamma_i)), in which it is linear along the exact flow of
N(0, v_i) data, integrated by Gauss-Legendre: at 25 calls 18 - 77 times the reference, better
than unipc on the DCT and digits-wavelet rows, worse on PCA; unipc's corrector solved
implicitly with the gain as x0's Jacobian: exact on PCA with the exact variances, 10^4 times
the reference on DCT, where the marginal gain overstates the conditional one; the stochastic
exponential multistep (DPM-Solver++ SDE per component, orders 1 - 3, with and without the
corrector, its exact KL from the affine map of the start and every injected noise): 4e4 - 2e5
times the reference on the digits DCT white row at 25 calls, where unipc without the gain
leaves 1.6e3): within 25
calls, all 12 clipped rows (the
best KL is 16 - 650 times the reference; unipc reaches it with 40 - 50). The default sampler
reaches the reference within 50 calls on every row. Each component of a clipped row moves
during a sixth of the time, about 4 of the 25 calls, in steps of 1.2 in its own lambda. Fed the
exact x0 at the 25 grid times on the exact flow, unipc's steps would come within 0.4 - 64 times
the reference and a polynomial in t through the same nodes within 0.6 - 3.4 times; what no
sampler has is that exactness, since each call is made at a predicted state (gudlang.samplers
explains the loss).

With `--run RUN` (a trained run directory or checkpoint) the script also measures each
deterministic sampler on that network: the RMS distance, in whitened components, of its output
from dopri5 at rtol = atol = 1e-6 started from the same 64 noise draws (t_end = 0, no denoise).
That table has no target; it shows whether the oracle's ranking holds for a real network.

    python benchmarks/samplers.py [--run runs/digits-XXXXXXXX] [--only TEXT]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gudlang.check import check_text
from gudlang.oracle import GaussianOracle, whitened_moments
from gudlang.oracle import gaussian_kl as kl
from gudlang.pipeline import build_model
from gudlang.samplers import DEFAULT_GRID, DEFAULT_SAMPLER, DEFAULT_STEPS, GRIDS, OPTIONS, SAMPLERS, time_grid

DATA = {"digits": "digits()", "grf": "grf(size = 8, slope = 3)"}
BASES = {"pca": "pca()", "dct": "dct()", "wavelet": 'wavelet("haar", levels = 2)', "pixel": "pixel()"}
PRIORS = ("white", "matched")
SCHEDULES = {
    "scalar": ("gamma(t) = linear(t, lo = -10, hi = 10)", ("pca", "dct", "wavelet")),
    "soft 0.5": ("gamma_i(t) = soft(t, -log(var(i)), a = 0.5)", ("pca", "dct", "wavelet")),
    "soft 2": ("gamma_i(t) = soft(t, -log(var(i)), a = 2)", ("pca", "dct", "wavelet")),
    "clipped 50": ("gamma_i(t) = soft(t, rank(i), a = 50, clipped = true)", ("pca", "dct", "wavelet")),
    "sequential": ("gamma_i(t) = sequential(t, col(i), b = 0.5)", ("pixel", "wavelet")),
}
METHODS = ("heun", "midpoint", "dpm2", "dpmpp2m", "dpmpp3m", "unipc")
CALLS = (25, 50)
REFERENCE_STEPS = 1000
# Calls at which the default sampler is tried, to find the fewest that reach the reference.
LADDER = (10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 100, 120, 150, 200)


def rows():
    for data in DATA:
        for name, (line, bases) in SCHEDULES.items():
            for basis in bases:
                for prior in PRIORS:
                    yield data, basis, prior, name, line


def build(data: str, basis: str, prior: str, gamma_line: str):
    """(schedule, exact oracle, options) of one row; the schedule compiled from gud text, the
    options those a run gives its sampler (the whitened variances of the data's stats, for unipc)."""
    text = f"gud 1\ndata = {DATA[data]}\nbasis = {BASES[basis]}\nprior = {prior}\n{gamma_line}\n"
    model = build_model(check_text(text, "<benchmark>"))
    d = model.data
    if d.cov is not None:
        mean, cov = np.asarray(d.mean, dtype=np.float64).reshape(-1), d.cov
    else:
        x = d.train.reshape(len(d.train), -1).astype(np.float64)
        mean, cov = x.mean(0), np.cov(x.T)
    eye = torch.eye(model.dim, dtype=torch.float64).reshape((model.dim,) + tuple(d.shape))
    with torch.no_grad():
        u = model.basis.to(torch.float64)(eye).T  # chi = U phi: column j of U is basis(e_j)
    mean = mean - np.asarray(model.stats.mean, dtype=np.float64).reshape(-1)
    oracle = GaussianOracle(*whitened_moments(mean, cov, u, model.prior.scales.double()))
    return model.schedule.to(torch.float64), oracle, {"variance": model.features["wvar"]}


def marginal(oracle, schedule, t: float):
    with torch.no_grad():
        gamma, _ = schedule(torch.full((1,), t, dtype=torch.float64))
    mean, cov = oracle.marginal(gamma)
    return mean[0], cov[0]


def steps_for(method: str, calls: int) -> int:
    """Steps that make at most `calls` model calls (heun: 2 steps - 1, midpoint and dpm2: 2 steps)."""
    return {"heun": (calls + 1) // 2, "midpoint": calls // 2, "dpm2": calls // 2}.get(method, calls)


def method_options(method: str, options: dict) -> dict:
    """The run's options that `method` takes (gudlang.samplers.OPTIONS)."""
    return {k: v for k, v in options.items() if k in OPTIONS[method]}


def deterministic(method, oracle, schedule, steps, grid, options):
    """(output mean, output covariance, NFE) of a deterministic sampler started from p_1."""
    mu1, cov1 = marginal(oracle, schedule, 1.0)
    start = torch.cat([mu1[None], mu1 + torch.linalg.cholesky(cov1).T])
    result = SAMPLERS[method](oracle, schedule, start, steps, denoise=False, grid=grid,
                              **method_options(method, options))
    lin = (result.x0[1:] - result.x0[0]).T
    return result.x0[0], lin @ lin.T, result.nfe


def em_moments(oracle, schedule, steps):
    """Euler-Maruyama's output moments from p_1 on the uniform grid: chi <- M chi + c + sqrt(beta dt) z,
    M = I + dt beta (I / 2 - Cov_t^-1), c = dt beta Cov_t^-1 A m."""
    mean, cov = marginal(oracle, schedule, 1.0)
    eye = torch.eye(len(mean), dtype=torch.float64)
    ts = time_grid("uniform", schedule, steps).tolist()
    for t, s in zip(ts[:-1], ts[1:]):
        dt = t - s
        with torch.no_grad():
            gamma, beta = schedule(torch.full((1,), t, dtype=torch.float64))
        mean_t, cov_t = oracle.marginal(gamma)
        prec = torch.linalg.inv(cov_t[0])
        m = eye + dt * beta[0][:, None] * (0.5 * eye - prec)
        mean = m @ mean + dt * beta[0] * (prec @ mean_t[0])
        cov = m @ cov @ m.T + torch.diag(beta[0] * dt)
    return mean, cov


def measure_row(oracle, schedule, options) -> dict:
    """KLs of one row: 'reference', ('em', calls), (method, grid, calls): (KL, NFE), 'default':
    (KL, NFE) with the default settings, 'reach': the fewest calls with which they reach the reference."""
    target = marginal(oracle, schedule, 0.0)
    out = {"reference": kl(*em_moments(oracle, schedule, REFERENCE_STEPS), *target)}
    for calls in CALLS:
        out["em", calls] = kl(*em_moments(oracle, schedule, calls), *target)
        for method in METHODS:
            mean, cov, nfe = deterministic(method, oracle, schedule, steps_for(method, calls), DEFAULT_GRID,
                                           options)
            out[method, DEFAULT_GRID, calls] = (kl(mean, cov, *target), nfe)
        for grid in GRIDS:
            if grid != DEFAULT_GRID:
                mean, cov, nfe = deterministic(DEFAULT_SAMPLER, oracle, schedule, calls, grid, options)
                out[DEFAULT_SAMPLER, grid, calls] = (kl(mean, cov, *target), nfe)
    mean, cov, nfe = deterministic(DEFAULT_SAMPLER, oracle, schedule, DEFAULT_STEPS, DEFAULT_GRID, options)
    out["default"] = (kl(mean, cov, *target), nfe)
    out["reach"] = None
    for calls in LADDER:
        mean, cov, nfe = deterministic(DEFAULT_SAMPLER, oracle, schedule, calls, DEFAULT_GRID, options)
        if kl(mean, cov, *target) <= out["reference"]:
            out["reach"] = nfe
            break
    return out


def trained_model_table(run: str) -> None:
    """RMS distance of each deterministic sampler from a tight dopri5 solution on a trained net."""
    from gudlang.runs import load_run

    model, eps_model, _ = load_run(run)
    schedule = model.schedule.to(dtype=torch.float32)
    options = {"variance": model.features["wvar"]}
    start = torch.randn(64, model.dim, generator=torch.Generator().manual_seed(0))
    begin = time.perf_counter()
    reference = SAMPLERS["adaptive"](eps_model, schedule, start, 10, rtol=1e-6, atol=1e-6, denoise=False)
    print(f"\ntrained network {run} (D = {model.dim}): RMS distance from dopri5 at tol 1e-6 "
          f"({reference.nfe} NFE), 64 samples, float32, grid {DEFAULT_GRID} unless named")
    print(f"{'sampler':<18} " + " ".join(f"{f'~{c} NFE':>12}" for c in (10, 25, 50)))
    variants = [(m, DEFAULT_GRID) for m in ("ddim", *METHODS)]
    variants += [(DEFAULT_SAMPLER, g) for g in GRIDS if g != DEFAULT_GRID]
    for method, grid in variants:
        cells = []
        for calls in (10, 25, 50):
            result = SAMPLERS[method](eps_model, schedule, start, steps_for(method, calls), denoise=False,
                                      grid=grid, **method_options(method, options))
            rms = float((result.x0 - reference.x0).pow(2).mean().sqrt())
            cells.append(f"{result.nfe:3d}: {rms:7.2e}")
        label = method if grid == DEFAULT_GRID else f"{method} ({grid})"
        print(f"{label:<18} " + " ".join(f"{c:>12}" for c in cells))
    print(f"({time.perf_counter() - begin:.1f} s)")


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:8.2g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="also compare the samplers on this trained run")
    parser.add_argument("--only", help="only rows whose label (words separated by single spaces) contains "
                                       "this text, e.g. 'digits dct white clipped'")
    args = parser.parse_args(argv)
    selected = [row for row in rows() if not args.only or args.only in " ".join(row[:4])]
    if not selected:
        parser.error(f"no row matches --only {args.only!r}")  # an empty table would pass every target
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # D = 64 matrices: threads only add overhead
    begin = time.perf_counter()
    results = {}
    for data, basis, prior, name, line in selected:
        label = f"{data:<6} {basis:<7} {prior:<7} {name:<10}"
        schedule, oracle, options = build(data, basis, prior, line)
        results[label] = measure_row(oracle, schedule, options)
        print(f"measured {label} ({time.perf_counter() - begin:.0f} s)", flush=True)

    print(f"\n1. KL / KL(em, {REFERENCE_STEPS} steps) at 25 | 50 model calls, grid {DEFAULT_GRID} "
          f"(em: uniform); reference KL in nats")
    print(f"{'row':<33} {'reference':>9}  " + " ".join(f"{m:>17}" for m in ("em",) + METHODS))
    for label, r in results.items():
        cells = [f"{ratio(r['em', 25], r['reference'])}|{ratio(r['em', 50], r['reference'])}"]
        cells += [f"{ratio(r[m, DEFAULT_GRID, 25][0], r['reference'])}|"
                  f"{ratio(r[m, DEFAULT_GRID, 50][0], r['reference'])}" for m in METHODS]
        print(f"{label:<33} {r['reference']:9.2e}  " + " ".join(f"{c:>17}" for c in cells))

    print(f"\n2. {DEFAULT_SAMPLER}: KL / KL(em, {REFERENCE_STEPS} steps) at 25 | 50 model calls per time grid")
    print(f"{'row':<33} " + " ".join(f"{g:>17}" for g in GRIDS))
    for label, r in results.items():
        print(f"{label:<33} " + " ".join(f"{ratio(r[DEFAULT_SAMPLER, g, 25][0], r['reference'])}|"
                                         f"{ratio(r[DEFAULT_SAMPLER, g, 50][0], r['reference'])}"
                                         for g in GRIDS))

    print(f"\n3. targets: some sampler within 25 calls; the default ({DEFAULT_SAMPLER}, {DEFAULT_STEPS} steps, "
          f"grid {DEFAULT_GRID}) within 50")
    print(f"{'row':<33} {'best at <= 25 calls':>28} {'default':>9} {'default reaches at':>19}")
    passed = True
    for label, r in results.items():
        # ties within 1% (a grid that equals another up to rounding) go to the default grid
        candidates = [(round(float(np.log10(value[0])), 2), key[1] != DEFAULT_GRID, value[0], f"{key[0]} ({key[1]})")
                      for key, value in r.items() if isinstance(key, tuple) and len(key) == 3 and key[2] == 25]
        _, _, best, best_name = min(candidates)
        fast = best <= r["reference"]
        default = r["default"][0] <= r["reference"] and r["default"][1] <= 50
        passed &= fast and default
        reach = f"{r['reach']} calls" if r["reach"] is not None else f"> {LADDER[-1]} calls"
        print(f"{label:<33} {best_name:>19} {ratio(best, r['reference'])} {ratio(r['default'][0], r['reference'])} "
              f"{reach:>19}  {'PASS' if fast and default else 'FAIL'}"
              f"{'' if fast else ' (25)'}{'' if default else ' (default)'}")
    print(f"\n{'all targets met' if passed else 'some targets missed'} ({time.perf_counter() - begin:.0f} s)")
    if args.run:
        torch.set_num_threads(threads)  # a network's convolutions do use them
        trained_model_table(args.run)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
