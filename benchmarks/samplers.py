"""Sampler benchmark: Gaussian KL to the exact t = 0 marginal against model calls (NFE).

Data: an 8x8 stationary periodic Gaussian field (power spectrum (1 + |k|^2)^-1, unit pixel
variance), pixel basis, white prior, so the whitened covariance is the field's correlation
matrix (D = 64, non-diagonal: the score couples components). The eps model is the exact
Gaussian oracle. Schedules are compiled from the language:
    scalar      gamma(t) = linear(t)                          (VDM, -13.3 .. 5)
    soft a=2    gamma_i(t) = soft(t, 7 * col(i), a = 2)       (label = column index)
    sequential  gamma_i(t) = sequential(t, col(i), b = 0.5)   (clipped: components stand still)

Every sampler starts from the exact t = 1 marginal p_1 and stops at t = 0 without the final
denoise, so the exact PF-ODE / reverse SDE would reproduce p_0 exactly and the KL is the
discretisation error alone. The oracle is affine, so each deterministic sampler is an affine
map whose output moments come from D + 1 runs (mu_1 and mu_1 + L_1 e_j); Euler-Maruyama's
output moments follow its matrix recursion. No sampling noise enters the table.

Target: dpm2 or heun reaches the KL of em at 1000 steps with at most 50 NFE, for every
schedule; the script exits with status 1 when one is missed.

    python benchmarks/samplers.py
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from gudlang.check import check_text
from gudlang.oracle import GaussianOracle
from gudlang.oracle import gaussian_kl as kl
from gudlang.samplers import SAMPLERS
from gudlang.schedules import compile_schedule

SIDE = 8
D = SIDE * SIDE
SCHEDULES = {
    "scalar": "gamma(t) = linear(t)",
    "soft a=2": "gamma_i(t) = soft(t, 7 * col(i), a = 2)",
    "sequential": "gamma_i(t) = sequential(t, col(i), b = 0.5)",
}
STEPS = {"em": [10, 20, 50, 100, 200, 500, 1000], "ddim": [10, 20, 50, 100, 200, 500],
         "heun": [5, 10, 15, 20, 25, 30, 50, 100], "dpm2": [5, 10, 15, 20, 25, 30, 50, 100]}
TOLERANCES = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
TARGET_NFE = 50


def field_covariance() -> torch.Tensor:
    """Correlation matrix of a stationary periodic SIDE x SIDE field, float64 (D, D)."""
    k = np.fft.fftfreq(SIDE) * SIDE
    power = 1.0 / (1.0 + k[:, None] ** 2 + k[None, :] ** 2)
    corr = np.real(np.fft.ifft2(power))
    corr /= corr[0, 0]
    rows, cols = np.divmod(np.arange(D), SIDE)
    cov = corr[(rows[:, None] - rows[None]) % SIDE, (cols[:, None] - cols[None]) % SIDE]
    return torch.as_tensor(cov)


def compiled(gamma_line: str):
    text = f"gud 1\ndata = grf(size = {SIDE})\nbasis = pixel()\nprior = white\n{gamma_line}\n"
    checked = check_text(text, "<benchmark>")
    rows, cols = np.divmod(np.arange(D), SIDE)
    feats = {"var": np.ones(D), "wvar": np.ones(D), "rank": np.arange(D) / (D - 1),
             "row": rows / (SIDE - 1), "col": cols / (SIDE - 1), "chan": np.zeros(D)}
    drawn = {n: checked.spec.params[n].mean for n in checked.drawn}
    return compile_schedule(checked.gamma, feats, checked.fixed_params, drawn, D).double()


def marginal(oracle, schedule, t: float):
    with torch.no_grad():
        gamma, _ = schedule(torch.full((1,), t, dtype=torch.float64))
    mean, cov = oracle.marginal(gamma)
    return mean[0], cov[0]


def deterministic(method, oracle, schedule, steps, **options):
    """(output mean, output covariance, NFE) of a deterministic sampler started from p_1."""
    mu1, cov1 = marginal(oracle, schedule, 1.0)
    start = torch.cat([mu1[None], mu1 + torch.linalg.cholesky(cov1).T])
    result = SAMPLERS[method](oracle, schedule, start, steps, denoise=False, **options)
    lin = (result.x0[1:] - result.x0[0]).T
    return result.x0[0], lin @ lin.T, result.nfe


def em_moments(oracle, schedule, steps):
    """Euler-Maruyama's output moments from p_1: chi <- M chi + c + sqrt(beta dt) z,
    M = I + dt beta (I / 2 - Cov_t^-1), c = dt beta Cov_t^-1 A m."""
    mean, cov = marginal(oracle, schedule, 1.0)
    eye = torch.eye(D, dtype=torch.float64)
    dt = 1.0 / steps
    for k in range(steps):
        with torch.no_grad():
            gamma, beta = schedule(torch.full((1,), 1.0 - k * dt, dtype=torch.float64))
        mean_t, cov_t = oracle.marginal(gamma)
        prec = torch.linalg.inv(cov_t[0])
        m = eye + dt * beta[0][:, None] * (0.5 * eye - prec)
        mean = m @ mean + dt * beta[0] * (prec @ mean_t[0])
        cov = m @ cov @ m.T + torch.diag(beta[0] * dt)
    return mean, cov, steps


def run(oracle, schedule) -> list[tuple[str, str, int, float]]:
    target = marginal(oracle, schedule, 0.0)
    rows = []
    for method, steps in STEPS.items():
        for n in steps:
            mean, cov, nfe = (em_moments(oracle, schedule, n) if method == "em"
                              else deterministic(method, oracle, schedule, n))
            rows.append((method, f"{n} steps", nfe, kl(mean, cov, *target)))
    for tol in TOLERANCES:
        mean, cov, nfe = deterministic("adaptive", oracle, schedule, 10, rtol=tol, atol=tol)
        rows.append(("adaptive", f"tol {tol:.0e}", nfe, kl(mean, cov, *target)))
    return rows


def main() -> int:
    torch.set_num_threads(1)  # D = 64 matrices: threads only add overhead
    oracle = GaussianOracle(torch.zeros(D, dtype=torch.float64), field_covariance())
    passed = True
    for name, line in SCHEDULES.items():
        start = time.perf_counter()
        rows = run(oracle, compiled(line))
        em_1000 = next(k for m, s, _, k in rows if m == "em" and s == "1000 steps")
        print(f"\n{name}: {line}   (D = {D}, KL(output || p_0) in nats, float64, "
              f"{time.perf_counter() - start:.1f} s)")
        print(f"{'sampler':<9} {'setting':>12} {'NFE':>6} {'KL':>10}")
        for method, setting, nfe, value in rows:
            print(f"{method:<9} {setting:>12} {nfe:6d} {value:10.2e}")
        reach = [nfe for m, _, nfe, k in rows if m in ("heun", "dpm2") and k <= em_1000]
        best = min(reach) if reach else math.inf
        ok = best <= TARGET_NFE
        passed &= ok
        print(f"target: heun/dpm2 reach em@1000 (KL {em_1000:.2e}) within {TARGET_NFE} NFE: "
              f"{'PASS' if ok else 'FAIL'} (first at {best} NFE)")
    print("\nall targets met" if passed else "\nsome targets missed")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
