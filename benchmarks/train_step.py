"""Training-step overhead of the GUD pipeline.

Times one optimisation step of the full pipeline (basis, whitening, component-wise schedule,
loss) against the bare network forward + backward + AdamW step on the same batch with scalar
noise (x_t = alpha x + sigma eps, one gamma per example), in one run.
Target: overhead at most 10% on CPU, for the digits U-Net (PCA basis, 1x8x8, batch 128) and
for a 32x32x3 U-Net (wavelet basis, batch 32). The paper-size case (the U-Net of
specs/paper/, 41M parameters, PCA basis on 3x32x32, batch 128) gives the throughput of a real
CIFAR-10 run; it is meant for a GPU (`--device cuda`, run by .ci/gpu-check).

`--profile` adds, per case, where the extra time goes: for the bare and the gud step, the
wall time, the device's busy time (the sum of its kernels' times; CPU: the operators'), the
kernel launches and the host-device synchronisations and copies, and the operators whose
time grows most from bare to gud.

    python benchmarks/train_step.py [--repeat 10] [--device cuda] [--only paper] [--profile]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gudlang.check import check_text
from gudlang.networks import make_network
from gudlang.pipeline import build_model
from gudlang.train import Objective, make_batch, train_step

CASES = {
    "digits U-Net, pca, 1x8x8, batch 128": """gud 1
data = digits()
basis = pca()
network = unet(channels = 32, channel_mult = [1, 2])
l_i = -log(var(i))
gamma_i(t) = soft(t, l_i, a = 2)
train { batch = 128 }
""",
    "U-Net, wavelet, 3x32x32, batch 32": """gud 1
data = grf(size = 32, channels = 3, n = 256)
basis = wavelet("haar", levels = 3)
prior = matched
network = unet(channels = 32, channel_mult = [1, 2, 2])
gamma_i(t) = soft(t, level(i) / 3, a = 4)
train { batch = 32 }
""",
    "paper U-Net, pca, 3x32x32, batch 128": """gud 1
data = grf(size = 32, channels = 3, n = 512)
basis = pca()
network = unet(channels = 128, channel_mult = [1, 2, 2, 2], num_res_blocks = 2, attention_resolutions = [16], dropout = 0.1, groups = 32)
param a ~ uniform(0.4, 1.6)
gamma_i(t) = soft(t, -log(var(i)), a = a)
train { batch = 128 }
""",
}
PAPER = "paper U-Net, pca, 3x32x32, batch 128"


def bare_step(network, optimizer, x, gen):
    """The baseline: scalar noise on the raw images, network forward + backward + step."""
    batch = x.shape[0]
    t = torch.rand(batch, generator=gen, device=x.device)
    gamma = -13.3 + 18.3 * t
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    eps = torch.randn(x.shape, generator=gen, device=x.device)
    x_t = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps
    optimizer.zero_grad(set_to_none=True)
    loss = torch.mean((network(x_t, gamma[:, None].expand(batch, x[0].numel())) - eps) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    optimizer.step()


def timed(fn, repeat: int, device: torch.device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def profile_steps(label: str, fn, device: torch.device, steps: int = 5) -> dict:
    """Time and trace `steps` calls of `fn`: {wall, busy (s per step), launches, syncs, copies,
    ops: {operator: self time per step (device time on CUDA, CPU time else)}}."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        fn()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_time(e) -> float:  # microseconds
        return (getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0)) \
            if on_device else e.self_cpu_time_total

    ops = {e.key: self_time(e) / steps * 1e-6 for e in events if e.key.startswith("aten::")}
    runtime = {e.key: e.count / steps for e in events}
    launches = sum(c for k, c in runtime.items() if "LaunchKernel" in k or k == "cudaLaunchKernelExC")
    syncs = sum(c for k, c in runtime.items() if "Synchronize" in k)  # CUDA runtime calls: 0 on CPU
    copies = sum(c for k, c in runtime.items() if k.startswith("cudaMemcpy"))
    def kernel(e) -> bool:  # a device kernel (CUDA) or a CPU operator
        where = getattr(getattr(e, "device_type", None), "name", "CPU")
        return where == "CUDA" if on_device else e.key.startswith("aten::")

    busy = sum(self_time(e) for e in events if kernel(e))
    return {"label": label, "wall": wall, "busy": busy / steps * 1e-6, "launches": launches, "syncs": syncs,
            "copies": copies, "ops": ops}


def print_profile(bare: dict, gud: dict) -> None:
    """The two traces side by side and the operators whose time grows most from bare to gud."""
    for p in (bare, gud):
        counts = (f"  launches {p['launches']:6.0f}  syncs {p['syncs']:4.0f}  host-device copies {p['copies']:4.0f}"
                  if p["launches"] else "")
        print(f"    {p['label']:<5} wall {p['wall'] * 1e3:8.2f} ms  busy {p['busy'] * 1e3:8.2f} ms{counts}")
    grown = sorted(((t - bare["ops"].get(k, 0.0), k) for k, t in gud["ops"].items()), reverse=True)[:8]
    print("    grew most: " + ", ".join(f"{k} +{d * 1e3:.2f} ms" for d, k in grown if d > 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", help="only the cases whose name contains this text")
    parser.add_argument("--profile", action="store_true", help="also trace where the extra time goes")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step, median of {args.repeat}, {where}")
    print(f"{'case':<38} {'params':>7} {'bare (ms)':>10} {'gud (ms)':>10} {'overhead':>9} {'steps/s':>8} "
          f"{'images/s':>9}  target <= 10%")
    for name, text in CASES.items():
        if args.only and args.only not in name or (name == PAPER and device.type == "cpu" and not args.only):
            continue  # the paper-size case on CPU only when asked for
        model = build_model(check_text(text, name))
        settings = model.spec.train
        net = model.spec.network.model_dump()
        kind = net.pop("kind")
        torch.manual_seed(0)
        network = make_network(kind, model.data.shape, **net).to(device)
        bare_net = make_network(kind, model.data.shape, **net).to(device)
        bare_net.load_state_dict(network.state_dict())
        objective = Objective(model, network).to(device)
        opt = torch.optim.AdamW(network.parameters(), lr=1e-4)
        bare_opt = torch.optim.AdamW(bare_net.parameters(), lr=1e-4)
        data = torch.as_tensor(model.data.train)
        counter = {"step": 0}

        def gud_step():
            batch = make_batch(data, model.spec, model.checked.drawn, counter["step"], settings.batch, 0, 0, device)
            train_step(objective, opt, batch, settings, counter["step"] + settings.warmup)
            counter["step"] += 1

        gen = torch.Generator(device=device).manual_seed(0)
        x = data[: settings.batch].to(device)
        bare = timed(lambda: bare_step(bare_net, bare_opt, x, gen), args.repeat, device)
        full = timed(gud_step, args.repeat, device)
        over = full / bare - 1
        flag = "" if over <= 0.10 else "  <- over target"
        params = sum(p.numel() for p in network.parameters()) / 1e6
        print(f"{name:<38} {params:6.1f}M {bare * 1e3:10.1f} {full * 1e3:10.1f} {over * 100:8.1f}% "
              f"{1 / full:8.2f} {settings.batch / full:9.0f}{flag}")
        if args.profile:
            print_profile(profile_steps("bare", lambda: bare_step(bare_net, bare_opt, x, gen), device),
                          profile_steps("gud", gud_step, device))


if __name__ == "__main__":
    main()
