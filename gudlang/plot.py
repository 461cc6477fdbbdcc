"""`gud plot`: pictures of a schedule and of the forward process.

Input: a `Model`. Output: PNG files.
- `plot_schedule`: gamma_i(t), sigma_i(t), beta_i(t) and the true SNR_i(t) for every
  component, coloured by generation order (dark = generated first), like the paper's Fig. 2.
- `plot_forward`: one training image noised to several t, shown in data space (Fig. 4).
- `plot_reverse`: a trained model's samples coming about (`GudModel.trajectory`): the state x_t
  and the clean image predicted from it at several t, then the samples.
- `plot_metrics`: a run's loss (raw and smoothed), learning rate and gradient norm against step.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from gudlang.explain import training_range
from gudlang.schedules import columns_of
from gudlang.space import noise_levels


def _figure(figsize, pyplot: bool = False):
    """A new matplotlib Figure. Files are drawn on a bare Figure (saving picks the file's
    renderer); a figure handed to the caller (`pyplot`) is pyplot's when the caller uses pyplot,
    so that plt.show() shows it. The caller's backend is never changed."""
    if pyplot and "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt
        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure
    return Figure(figsize=figsize)


def plot_schedule(model, out: str, max_lines: int = 400, grid: int = 256) -> None:
    """`schedule_figure` saved to `out`."""
    schedule_figure(model, max_lines, grid, pyplot=False).savefig(out, dpi=110)


def schedule_figure(model, max_lines: int = 400, grid: int = 256, pyplot: bool = True):
    """gamma, sigma, beta and true SNR of every component against t on the sampling path (gamma
    itself unless the spec declares `path_i(t)`, whose training gamma is then dotted in red for
    the first, middle and last generated, or a red band over the drawn params' ranges when
    there are any), coloured by generation order; components a spec
    declares given (held clean, never generated) in grey. A matplotlib Figure (`pyplot`: pyplot's,
    when the caller uses pyplot, see `_figure`)."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    given = np.zeros(model.dim, bool) if model.given is None else model.given
    order = np.array([i for i in model.generation_order() if not given[i]])
    position = np.empty(model.dim, dtype=int)
    position[order] = np.arange(len(order))
    shown = order[np.linspace(0, len(order) - 1, min(max_lines, len(order))).round().astype(int)]
    held = np.flatnonzero(given)[:: max(1, given.sum() // 50)]
    drawn = np.unique(np.concatenate([shown, held]).astype(np.int64))  # the columns the panels draw
    gamma, beta = columns_of(model.sampling_schedule, model.dim, t, drawn)
    column = dict(zip(drawn.tolist(), range(len(drawn))))
    sigma = np.sqrt(1.0 / (1.0 + np.exp(-gamma)))
    snr = model.features["wvar"][drawn][None, :] * np.exp(-gamma)
    fig = _figure((10, 7), pyplot)
    axes = fig.subplots(2, 2, sharex=True)
    cmap = matplotlib.colormaps["viridis"]
    # (axis, values, title, log scale, draw the given components: beta = 0 has no log)
    along = " on the sampling path" if model.path is not None else ""
    panels = [(axes[0, 0], gamma, r"$\gamma_i(t)$" + along, False, True), (axes[0, 1], sigma, r"$\sigma_i(t)$", False, True),
              (axes[1, 0], beta, r"$\beta_i(t)$", True, False), (axes[1, 1], snr, r"true SNR$_i(t)$", True, True)]
    for ax, values, title, log, with_given in panels:
        for i in held if with_given else ():
            ax.plot(t.numpy(), values[:, column[i]], color="0.6", lw=0.8, ls="--")
        for i in shown[::-1]:
            ax.plot(t.numpy(), values[:, column[i]], color=cmap(position[i] / max(1, len(order) - 1)), lw=0.8)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if model.path is not None:  # the training distribution: gamma at t ~ U(0, 1), as its quantiles
        low, high = training_range(model, t)
        drawn = bool(model.checked.drawn_ranges)
        label = "training: t ~ U(0, 1)" + (", drawn params over their ranges" if drawn else "")
        picks = [int(order[0]), int(order[len(order) // 2]), int(order[-1])] if len(order) else []
        for k, i in enumerate(dict.fromkeys(picks)):
            if drawn:  # a band: what training shows the network at each t
                axes[0, 0].fill_between(t.numpy(), low[:, i], high[:, i], color="crimson", alpha=0.12, lw=0, zorder=0,
                                        label=label if k == 0 else None)
            else:
                axes[0, 0].plot(t.numpy(), low[:, i], color="crimson", lw=1.2, ls=":", label=label if k == 0 else None)
        if picks:
            axes[0, 0].legend(loc="lower right", fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("t (0 = data, 1 = noise)")
    sm = ScalarMappable(cmap=cmap, norm=Normalize(0, 1))
    fig.colorbar(sm, ax=axes, label="generation order (0 = first)", shrink=0.8)
    note = f", {int(given.sum())} given (grey, dashed: held clean)" if given.any() else ""
    fig.suptitle(f"{model.checked.source.path or 'spec'}: {model.spec.basis.kind} basis, "
                 f"{model.spec.prior.kind} prior, D = {model.dim}{note}")
    return fig


def forward_images(model, image: np.ndarray, ts, seed: int = 0) -> np.ndarray:
    """Noise one image (C, H, W) to each t along the sampling path, given components (a spec's
    `given_i`) held exactly as they are; returns (len(ts), C, H, W) in data space."""
    space = model.space
    chi_hat = space.encode(torch.as_tensor(image, dtype=torch.float64)[None])
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(chi_hat.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        gamma, _ = model.sampling_schedule(torch.as_tensor(np.asarray(ts, dtype=np.float64)))
        alpha, sigma = noise_levels(gamma)
        noised = alpha * chi_hat + sigma * eps
        if model.given is not None:
            noised = torch.where(torch.as_tensor(model.given).reshape(1, -1), chi_hat, noised)
        return space.decode(noised).numpy()


def plot_forward(model, out: str, index: int = 0, steps: int = 6) -> None:
    """`forward_images` of training image `index` at `steps` times from 0 to 1, as one PNG."""
    ts = np.linspace(0.0, 1.0, steps)
    from gudlang.images import viewable
    imgs = viewable(forward_images(model, model.data.train[index], ts))
    fig = _figure((2 * steps, 2.3))
    axes = fig.subplots(1, steps)
    for ax, img, t in zip(axes, imgs, ts):
        _show(ax, img, model.data.value_range)
        ax.set_title(f"t = {t:.2f}")
        ax.axis("off")
    fig.suptitle("forward process in data space")
    fig.savefig(out, dpi=110, bbox_inches="tight")


def _show(ax, image: np.ndarray, value_range) -> None:
    """One image (C, H, W) of `images.viewable` on `ax`, [lo, hi] as black to white."""
    lo, hi = value_range
    image = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reverse(trajectory, out: str, value_range, title: str = "reverse process") -> None:
    """A `Trajectory` as one PNG: a column per time and one for the samples; for each sample a
    row of states x_t and a row of the predictions x0_hat made from them."""
    from gudlang.images import viewable
    states, predictions = trajectory.states, trajectory.predictions
    k, n = states.shape[:2]
    fig = _figure((1.6 * (k + 1), 1.7 * 2 * n))
    axes = fig.subplots(2 * n, k + 1, squeeze=False)
    for j in range(k + 1):
        for i in range(n):
            for row, images in ((2 * i, states), (2 * i + 1, predictions)):
                image = trajectory.samples[i] if j == k else images[j, i]
                _show(axes[row, j], viewable(image[None])[0], value_range)
        axes[0, j].set_title("sample" if j == k else f"t = {trajectory.times[j]:.2f}", fontsize=9)
    for i in range(n):
        axes[2 * i, 0].set_ylabel("x_t", fontsize=8)
        axes[2 * i + 1, 0].set_ylabel("predicted x_0", fontsize=8)
    fig.suptitle(f"{title} ({trajectory.nfe} model calls)")
    fig.savefig(out, dpi=110, bbox_inches="tight")


def plot_metrics(metrics: dict, out: str, title: str = "") -> None:
    """Loss (raw and smoothed over about 2% of the run), learning rate and gradient norm against
    step, from `runs.read_metrics`, as one PNG."""
    step, loss = metrics["step"], metrics["loss"]
    width = max(1, len(step) // 50)
    smooth = np.convolve(loss, np.ones(width) / width, mode="valid") if len(loss) >= width else loss
    fig = _figure((13, 3.6))
    axes = fig.subplots(1, 3)
    axes[0].plot(step, loss, lw=0.5, alpha=0.4, label="loss")
    axes[0].plot(step[width - 1:] if len(loss) >= width else step, smooth, lw=1.5, label=f"mean of {width}")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[1].plot(step, metrics["lr"])
    axes[2].plot(step, metrics["grad_norm"], lw=0.6)
    axes[2].set_yscale("log")
    for ax, name in zip(axes, ("loss", "learning rate", "gradient norm (before clipping)")):
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
