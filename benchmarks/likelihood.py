"""Likelihood benchmark: `gud nll` on the whole digits test split with the exact divergence.

Data: the test split of a trained run's data (180 images for the default digits model, 8x8,
D = 64, PCA basis, a small U-Net), dequantised once with seed 0, so both methods see the same
inputs. The run's sample tolerances (rtol, atol) are used, as `gud nll` does.

Methods, timed in the same process one after the other:
    before  the likelihood ODE as it was: dopri5 on the augmented state [chi, int div f], the
            exact divergence at every model call by one autograd.grad call with
            is_grads_batched over all D one-hot cotangents at once, steps past t = 1, 64 images
            per solve (a faithful copy below, `log_likelihood_before`)
    after   gudlang.likelihood.dataset_bits_per_dim: the trajectory alone by dopri5 (one model
            call per step), the divergence integral by adaptive Boole quadrature along it, the
            divergence from torch.func.vjp vmapped over chunks of one-hot cotangents

The table gives wall and CPU seconds, model calls of the ODE solves (NFE, summed over solves;
`before` evaluates the divergence at each of them), divergence evaluations per image, bits/dim
and the speed-up. Target: `after` takes at most 3 minutes on the whole test split; the script
exits with status 1 when it does not. Wall time depends on the machine's load (printed; CPU
seconds much less so) and on the threads torch uses (OMP_NUM_THREADS).

    python benchmarks/likelihood.py RUN [-n N] [--skip-before]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from gudlang.likelihood import (bits_per_dim, dataset_bits_per_dim, dequantise, mean_and_stderr,
                                standard_normal_logp)
from gudlang.pipeline import load_spec_data
from gudlang.runs import load_run
from gudlang.samplers import solve_dopri5

TARGET_SECONDS = 180.0
BATCH = 64


def log_likelihood_before(eps_model, schedule, x0: torch.Tensor, rtol: float, atol: float):
    """The exact-divergence likelihood ODE as it was: (log p_0 (B,), NFE)."""
    batch, dim = x0.shape
    probes = torch.eye(dim, dtype=x0.dtype, device=x0.device)[:, None, :].expand(dim, batch, dim)

    def dynamics(t, state):
        x = state[0]
        tt = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)
        gamma, beta = schedule(tt)
        weight = 0.5 * beta * torch.sigmoid(gamma).rsqrt()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            eps = eps_model(xg, tt, gamma)
            vjp = torch.autograd.grad(weight * eps, xg, probes, is_grads_batched=True)[0]
        trace = vjp.diagonal(dim1=0, dim2=2).sum(-1)
        velocity = weight * eps.detach() - 0.5 * beta * x
        return velocity, trace - 0.5 * beta.sum(-1)

    span = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    start = (x0.detach(), torch.zeros(batch, dtype=x0.dtype, device=x0.device))
    with torch.no_grad():
        (xs, integrals), nfe = solve_dopri5(dynamics, start, span, rtol, atol, "E661", "the likelihood ODE",
                                            help="loosen rtol and atol")
    return standard_normal_logp(xs[-1]) + integrals[-1], nfe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a trained run directory or checkpoint (the default digits model)")
    parser.add_argument("-n", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--skip-before", action="store_true", help="time only the new method")
    args = parser.parse_args()

    model, eps_model, _ = load_run(args.run)
    data = load_spec_data(model.checked)
    x = torch.as_tensor(data.test[: args.n], dtype=torch.float64)
    lo, hi = data.value_range
    scale = float(hi - lo)
    settings = model.spec.sample
    schedule = model.schedule.to(dtype=torch.float32)
    eps_model = eps_model.to(torch.float32)
    logabsdet = model.space.logabsdet()

    def encode(chunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.space.encode(chunk.to(torch.float64)).to(torch.float32)

    print(f"{len(x)} test images, D = {model.dim}, rtol = {settings.rtol:g}, atol = {settings.atol:g}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f} at the start")
    rows = []
    if not args.skip_before:
        start, cpu = time.perf_counter(), time.process_time()
        gen = torch.Generator().manual_seed(0)
        xq = x if data.levels is None else dequantise(x, data.levels, scale, generator=gen)
        bits, nfe, points = [], 0, 0
        for chunk in torch.split(xq, BATCH):
            logp, calls = log_likelihood_before(eps_model, schedule, encode(chunk), settings.rtol, settings.atol)
            bits.append(bits_per_dim(logp.double(), logabsdet, model.dim, scale, data.levels))
            nfe += calls
            points += calls * len(chunk)
        bpd, stderr = mean_and_stderr(torch.cat(bits))
        rows.append(("before", time.perf_counter() - start, time.process_time() - cpu, nfe, points / len(xq),
                     bpd, stderr))
    start, cpu = time.perf_counter(), time.process_time()
    result = dataset_bits_per_dim(eps_model, schedule, encode, x, levels=data.levels, data_scale=scale,
                                  logabsdet=logabsdet, divergence="exact", batch_size=BATCH,
                                  rtol=settings.rtol, atol=settings.atol,
                                  generator=torch.Generator().manual_seed(0))
    after_seconds = time.perf_counter() - start
    rows.append(("after", after_seconds, time.process_time() - cpu, result.nfe,
                 float(result.divergence_points.double().mean()), result.mean, result.stderr))

    print(f"\n{'method':8s} {'seconds':>8s} {'cpu s':>8s} {'ODE NFE':>8s} {'div/image':>10s} "
          f"{'bits/dim':>18s} {'speed-up':>9s}")
    for name, seconds, cpu_seconds, nfe, points, bpd, stderr in rows:
        print(f"{name:8s} {seconds:8.1f} {cpu_seconds:8.1f} {nfe:8d} {points:10.1f} {bpd:9.4f} +- {stderr:.4f} "
              f"{rows[0][1] / seconds:8.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    met = after_seconds <= TARGET_SECONDS
    print(f"target: the whole split in <= {TARGET_SECONDS:.0f} s with the exact divergence: "
          f"{'met' if met else 'MISSED'} ({after_seconds:.0f} s)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
