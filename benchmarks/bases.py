"""Basis transform benchmark.

For a batch of B = 256 images of 3 x 32 x 32 (D = 3072), float32: the time of one forward +
inverse transform of every basis (pixel, dct, fourier, wavelet haar L=3, wavelet db2 L=2,
pca), against two baselines timed in the same run: torch.fft.rfft2 + irfft2 of the batch and
a dense D x D matmul and its transpose (what any dense basis costs). When
`gudlang.networks.UNet` exists, each basis is also shown as a percentage of one UNet forward
(default options) on the same batch. The scaling column times 64 x 64 images (4x D): about 4x
for O(D) / O(D log D), 8x for the per-axis DCT matrices (O(D (H + W))), 16x for dense.

Targets: fourier and wavelet O(D log D) / O(D), dct O(D (H + W)) (no D x D matrix), each
under 10% of one UNet forward. PCA is a dense D x D basis by design (its cost is the matmul
baseline); it is loaded with an identity basis here, since fitting it is not what is timed.

    python benchmarks/bases.py [--batch 256] [--repeat 20] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gudlang.bases import make_basis

SHAPE = (3, 32, 32)
LARGE = (3, 64, 64)
BASES = [("pixel", {}), ("dct", {}), ("fourier", {}), ("wavelet", {"family": "haar", "levels": 3}),
         ("wavelet", {"family": "db2", "levels": 2}), ("pca", {})]


def timed(fn, repeat: int, device: str) -> float:
    """Median seconds of `fn()` over `repeat` runs, after warm-up."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeat):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name: str, options: dict, shape, device: str):
    basis = make_basis(name, shape, **options)
    if basis.needs_fit:
        d = basis.dim
        basis.load_state_tensors({"components": torch.eye(d, dtype=torch.float64)[None],
                                  "variances": torch.ones(d, dtype=torch.float64)})
    return basis.to(device=device, dtype=torch.float32)


def round_trip(basis, x):
    return lambda: basis.inverse(basis(x))


def unet_forward(x: torch.Tensor, device: str):
    """A callable timing one UNet forward, or the reason there is none."""
    try:
        from gudlang.networks import UNet
        net = UNet(tuple(x.shape[1:])).to(device).eval()
        gamma = torch.zeros(x.shape[0], x[0].numel(), device=device)
        net(x[:2], gamma[:2])
    except Exception as e:  # any failure only drops the column
        return f"UNet column skipped ({type(e).__name__}: {e})"
    return lambda: net(x, gamma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, *SHAPE, device=args.device)
    x_large = torch.randn(args.batch, *LARGE, device=args.device)
    d = x[0].numel()

    dense = torch.linalg.qr(torch.randn(d, d, device=args.device))[0]
    baselines = {
        "rfft2 + irfft2": lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=SHAPE[1:]),
        "dense matmul": lambda: (x.reshape(args.batch, d) @ dense.T) @ dense,
    }
    base_t = {k: timed(fn, args.repeat, args.device) for k, fn in baselines.items()}
    unet = unet_forward(x, args.device)
    unet_t = timed(unet, max(3, args.repeat // 4), args.device) if callable(unet) else None

    print(f"B = {args.batch}, shape {SHAPE} (D = {d}), float32, {args.device}, "
          f"{torch.get_num_threads()} threads; median of {args.repeat}")
    header = (f"{'transform':<22}{'fwd+inv ms':>12}{'/ rfft2':>10}{'/ dense':>10}"
              f"{'64x64 / 32x32':>15}")
    header += f"{'% UNet':>9}" if unet_t else ""
    print(header)
    print("-" * len(header))
    for name, t in base_t.items():
        row = f"{name:<22}{t * 1e3:>12.3f}{t / base_t['rfft2 + irfft2']:>10.2f}" \
              f"{t / base_t['dense matmul']:>10.2f}{'':>15}"
        print(row + (f"{100 * t / unet_t:>8.1f}%" if unet_t else ""))
    for name, options in BASES:
        label = name + (f" {options['family']} L={options['levels']}" if name == "wavelet" else "")
        t = timed(round_trip(build(name, options, SHAPE, args.device), x), args.repeat, args.device)
        if name == "pca":
            scaling = "(dense)"  # a 12288 x 12288 basis would exceed PCA's limit
        else:
            big = timed(round_trip(build(name, options, LARGE, args.device), x_large),
                        max(3, args.repeat // 4), args.device)
            scaling = f"{big / t:.1f}x"
        row = f"{label:<22}{t * 1e3:>12.3f}{t / base_t['rfft2 + irfft2']:>10.2f}" \
              f"{t / base_t['dense matmul']:>10.2f}{scaling:>15}"
        print(row + (f"{100 * t / unet_t:>8.1f}%" if unet_t else ""))
    if unet_t:
        print(f"one UNet forward (default options): {unet_t * 1e3:.1f} ms")
    else:
        print(unet)
    print("targets: fourier, wavelet O(D log D) / O(D) and dct O(D (H + W)) (scaling near 4x, "
          "8x for dct; dense is 16x); each under 10% of one UNet forward")


if __name__ == "__main__":
    main()
