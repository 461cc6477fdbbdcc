"""Training-step overhead of the GUD pipeline.

Times one optimisation step of the full pipeline (basis, whitening, component-wise schedule,
loss) against the bare network forward + backward + AdamW step on the same batch with scalar
noise (x_t = alpha x + sigma eps, one gamma per example), in one run.
Target: overhead at most 10% on CPU, for the digits U-Net (PCA basis, 1x8x8, batch 128) and
for a 32x32x3 U-Net (wavelet basis, batch 32).

    python benchmarks/train_step.py [--repeat 10]
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
}


def bare_step(network, optimizer, x, gen):
    """The baseline: scalar noise on the raw images, network forward + backward + step."""
    batch = x.shape[0]
    t = torch.rand(batch, generator=gen)
    gamma = -13.3 + 18.3 * t
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    eps = torch.randn(x.shape, generator=gen)
    x_t = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps
    optimizer.zero_grad(set_to_none=True)
    loss = torch.mean((network(x_t, gamma[:, None].expand(batch, x[0].numel())) - eps) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    optimizer.step()


def timed(fn, repeat: int) -> float:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"training step, median of {args.repeat}, {torch.get_num_threads()} threads, CPU")
    print(f"{'case':<38} {'bare (ms)':>10} {'gud (ms)':>10} {'overhead':>9}  target <= 10%")
    for name, text in CASES.items():
        model = build_model(check_text(text, name))
        settings = model.spec.train
        net = model.spec.network.model_dump()
        kind = net.pop("kind")
        torch.manual_seed(0)
        network = make_network(kind, model.data.shape, **net)
        bare_net = make_network(kind, model.data.shape, **net)
        bare_net.load_state_dict(network.state_dict())
        objective = Objective(model, network)
        opt = torch.optim.AdamW(network.parameters(), lr=1e-4)
        bare_opt = torch.optim.AdamW(bare_net.parameters(), lr=1e-4)
        data = torch.as_tensor(model.data.train)
        counter = {"step": 0}

        def gud_step():
            batch = make_batch(data, model.spec, model.checked.drawn, counter["step"], settings.batch, 0, 0, "cpu")
            train_step(objective, opt, batch, settings, counter["step"] + settings.warmup)
            counter["step"] += 1

        gen = torch.Generator().manual_seed(0)
        x = data[: settings.batch]
        bare = timed(lambda: bare_step(bare_net, bare_opt, x, gen), args.repeat)
        full = timed(gud_step, args.repeat)
        over = full / bare - 1
        flag = "" if over <= 0.10 else "  <- over target"
        print(f"{name:<38} {bare * 1e3:10.1f} {full * 1e3:10.1f} {over * 100:8.1f}%{flag}")


if __name__ == "__main__":
    main()
