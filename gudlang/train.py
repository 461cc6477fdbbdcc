"""The generic trainer: epsilon prediction in whitened components for any compiled spec.

Input: a `Model` (`gudlang.pipeline`), a network with the call `net(x, gamma)` (image-shaped
data_white in, predicted noise in the same space out), the spec's `train` settings.
Output: trained weights and their EMA, one loss per step, checkpoints in a run directory.

Maths (see ../shared/notes/gud-method.md): chi_0 = S^-1 U (x - mean); t is stratified over
the batch, t_k = (k + u) / B permuted; params drawn per example for `param x ~ uniform`;
chi_t = alpha(t) chi_0 + sigma(t) eps with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma);
the network sees U^T chi_t and predicts U^T eps; the loss is the unweighted MSE, which equals
the MSE in whitened components because U is orthonormal, or with `weight_i(t)` the mean of
weight_i * (eps_hat_i - eps_i)^2 over whitened components (EDM's lambda(sigma) sigma^2 is
1 + e^gamma / sigma_data^2 in this form). A param named `x_i` is drawn per component: one
uniform draw per group of components (`Model.groups`). With a given mask (`given_i = ...`)
the given components stay clean (gamma pinned, chi_t = chi_0 there) and the MSE is taken
over the generated components only (`gudlang.conditioning`).

Reproducibility: every step draws its randomness from generators seeded by (seed, step,
rank), so a resumed run repeats an uninterrupted one step for step, and two ranks of a DDP
run see different batches.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from gudlang.conditioning import GivenSchedule
from gudlang.diagnostics import GudError
from gudlang.space import Space, noise_levels


class EpsModel(nn.Module):
    """A data_white network as an epsilon model in whitened components:
    eps_model(chi (B, D), t (B,), gamma (B, D)) -> eps (B, D), the samplers' interface.
    `space` is the model's `Space` (only its to_network / from_network maps are used)."""

    def __init__(self, network: nn.Module, space: Space):
        super().__init__()
        self.network, self.space = network, space

    def forward(self, chi: torch.Tensor, t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        x = self.space.to_network(chi)
        return self.space.from_network(checked_output(self.network(x, gamma.to(x.dtype)), x))


def checked_output(pred, x: torch.Tensor) -> torch.Tensor:
    """A network's prediction, which must be a tensor shaped like its input x (E613)."""
    if not torch.is_tensor(pred) or pred.shape != x.shape:
        got = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
        raise GudError.one("E613", f"the network returned {got} for an input of shape {tuple(x.shape)}",
                           help="a network maps (x (B, C, H, W), gamma (B, D)) to eps shaped like x")
    return pred


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2 ** 63 - 1)


def step_generator(seed: int, step: int, rank: int = 0, device="cpu") -> torch.Generator:
    """The random stream of one training step (independent of everything before it)."""
    g = torch.Generator(device=device)
    g.manual_seed(_step_seed(seed, step, rank))
    return g


def seed_network_randomness(seed: int, step: int, rank: int = 0) -> None:
    """Seed torch's global stream (what dropout draws from) for one training step, apart from
    the batch's: a resumed run draws the masks an uninterrupted one does."""
    torch.manual_seed((_step_seed(seed, step, rank) * 6_364_136_223_846_793 + 1) % (2 ** 63 - 1))


def draw_params(spec, drawn, batch: int, gen: torch.Generator, device, dtype,
                groups: dict | None = None) -> dict[str, torch.Tensor]:
    """The drawn params of a batch: (B,) each, or (B, D) for a param drawn per component
    (`groups[name]`: (D,) group ids; components of one group share a draw)."""
    out = {}
    for name in drawn:
        p = spec.params[name]
        if groups and name in groups:
            ids = torch.as_tensor(groups[name], dtype=torch.long)
            u = torch.rand(batch, int(ids.max()) + 1, generator=gen, device=gen.device, dtype=torch.float64)[:, ids]
        else:
            u = torch.rand(batch, generator=gen, device=gen.device, dtype=torch.float64)
        out[name] = (p.lo + (p.hi - p.lo) * u).to(device=device, dtype=dtype, non_blocking=True)
    return out


def stratified_times(batch: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(batch, generator=gen, device=gen.device, dtype=torch.float64)
    t = (torch.arange(batch, device=gen.device, dtype=torch.float64) + u) / batch
    return t[torch.randperm(batch, generator=gen, device=gen.device)]


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, H, W) data
    t: torch.Tensor  # (B,)
    eps: torch.Tensor  # (B, C, H, W), standard normal (= U^T of whitened-component noise)
    params: dict


class Objective(nn.Module):
    """loss(batch) for a model: its space and schedule as modules on one device. A spec with a
    given mask holds the given components clean (`GivenSchedule`, the state is chi_0 itself)
    and averages the squared error over the generated components only."""

    def __init__(self, model, network: nn.Module):
        super().__init__()
        self.space, self.schedule = model.space, model.schedule
        self.weight = getattr(model, "weight", None)
        self.network = network
        given = getattr(model, "given", None)
        self.register_buffer("given", None if given is None else torch.as_tensor(given).reshape(1, -1))
        self.register_buffer("generated", None if given is None else
                             torch.nonzero(~self.given[0]).reshape(-1))  # the components trained on
        if given is not None:
            self.schedule = GivenSchedule(model.schedule, given)

    def forward(self, batch: Batch, autocast_dtype=None) -> torch.Tensor:
        weight = next(self.network.parameters(), None)  # the data follow the network's dtype
        dtype = weight.dtype if weight is not None and weight.is_floating_point() else batch.x.dtype
        chi0 = self.space.encode(batch.x.to(dtype))
        gamma, _ = self.schedule(batch.t, batch.params)
        gamma = gamma.to(chi0.dtype)
        alpha, sigma = noise_levels(gamma)
        chi_t = alpha * chi0 + sigma * self.space.from_network(batch.eps.to(dtype))
        if self.given is not None:
            chi_t = torch.where(self.given, chi0, chi_t)
        x_t = self.space.to_network(chi_t)
        if autocast_dtype is not None:
            with torch.autocast(device_type=x_t.device.type, dtype=autocast_dtype):
                pred = self.network(x_t, gamma)
        else:
            pred = self.network(x_t, gamma)
        pred = checked_output(pred, x_t)
        error = pred.to(torch.promote_types(pred.dtype, torch.float32)) - batch.eps  # bfloat16 up, float64 kept
        if self.given is None and self.weight is None:
            return torch.mean(error ** 2)  # = the mean over whitened components (U orthonormal)
        squared = self.space.from_network(error) ** 2
        if self.weight is not None:
            squared = squared * self.weight.value(batch.t, batch.params).to(squared.dtype)
        if self.given is None:
            return torch.mean(squared)
        return torch.mean(squared.index_select(1, self.generated))  # an index: a mask would sync


def make_batch(data: torch.Tensor, spec, drawn, step: int, batch: int, seed: int, rank: int, device,
               groups: dict | None = None) -> Batch:
    """The batch of one step: indices, times, noise, params and (train.flip) horizontal flips,
    all from the step's generator (`groups`: see `draw_params`)."""
    gen = step_generator(seed, step, rank)
    idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
    t = stratified_times(batch, gen)
    eps = torch.randn((batch,) + tuple(data.shape[1:]), generator=gen)
    params = draw_params(spec, drawn, batch, gen, device, torch.float64, groups)
    x = data[idx]
    if spec.train.flip:
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    # Asynchronous copies: a blocking one waits for the device to finish the previous step.
    return Batch(x.to(device, non_blocking=True), t.to(device, non_blocking=True),
                 eps.to(device, non_blocking=True), params)


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """`parts` equal micro-batches of a batch (gradient accumulation)."""
    if parts == 1:
        return [batch]
    size = len(batch.t) // parts
    pieces = []
    for k in range(parts):
        cut = slice(k * size, (k + 1) * size)
        pieces.append(Batch(batch.x[cut], batch.t[cut], batch.eps[cut], {n: v[cut] for n, v in batch.params.items()}))
    return pieces


def learning_rate(step: int, settings) -> float:
    """Linear warm-up to lr over `warmup` steps, then constant, or a cosine decay to 0 at
    train.steps (lr_schedule = cosine)."""
    if settings.warmup and step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    if settings.lr_schedule == "cosine":
        span = max(1, settings.steps - settings.warmup)
        progress = min(1.0, (step - settings.warmup) / span)
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.lr


def make_optimizer(parameters, settings) -> torch.optim.Optimizer:
    """AdamW with the train block's lr, betas, eps and weight decay."""
    return torch.optim.AdamW(parameters, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                             weight_decay=settings.weight_decay)


class EMA:
    """Exponential moving average of a module's parameters (buffers copied). With warm-up the
    decay at step k is min(decay, (1 + k) / (10 + k)): early averages forget the random
    initial weights (after 1000 steps at decay 0.999 a plain EMA still holds 37% of them)."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Average in `module`'s weights after training step `step` (0-based)."""
        decay = self.decay_at(step)
        averages = list(self.module.parameters())
        if averages:  # one fused kernel on a GPU rather than one per tensor
            torch._foreach_lerp_(averages, [p.detach() for p in module.parameters()], 1.0 - decay)
        for e, b in zip(self.module.buffers(), module.buffers()):
            e.copy_(b)


def train_step(objective: Objective, optimizer, batch: Batch, settings, step: int, autocast_dtype=None,
               parameters=None) -> tuple[float, float]:
    """One optimisation step over `settings.accumulate` micro-batches (`step` 0-based); returns
    (loss, gradient norm). Raises GudError E630 on a non-finite loss, before the weights are
    touched, naming the step 1-based as metrics.csv and the progress bar count."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, settings)
    optimizer.zero_grad(set_to_none=True)
    pieces = split_batch(batch, settings.accumulate)
    total = None
    for piece in pieces:
        loss = objective(piece, autocast_dtype) / len(pieces)
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    params = parameters if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    # The one wait for the device in a step: loss and norm read together, before the weights move,
    # in the wider of the two dtypes (a float64 run logs float64 values).
    wide = torch.promote_types(torch.promote_types(total.dtype, norm.dtype), torch.float32)
    value, norm = torch.stack([total.to(wide), norm.to(wide)]).tolist()
    if not math.isfinite(value):
        # the step 1-based, as metrics.csv and the progress bar count
        raise GudError.one("E630", f"the loss is {value} at step {step + 1}",
                           help="lower train.lr, raise train.warmup, or check the data and the schedule (gud check)")
    optimizer.step()
    return value, norm
