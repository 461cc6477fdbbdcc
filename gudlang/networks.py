"""Epsilon-prediction networks conditioned on the whole noising state.

Input: `net(x, gamma)` with x of shape (B, C, H, W), a noisy sample in data_white space
(U^T chi_hat, image-shaped), and gamma of shape (B, D), D = C * H * W, the negative log-SNR
of every component in the basis' component order.
Output: the predicted noise eps, shape (B, C, H, W), in the same data_white space.
Any `nn.Module` with this call signature can stand in for the networks here.

Conditioning (the "noise-state embedding", shared by every network):
    features  sigma^2 = sigmoid(gamma) and clip(gamma / 10, -3, 3), both (B, D)
    state     a learned linear map of the 2 D features to `emb` dimensions; it starts as
              mean pooling (each column block of its weight is a random Linear(2, emb)
              divided by D), so a scalar schedule is handled from the first step and
              training learns which components matter
    pooled    mean(gamma) through a sinusoidal embedding and a linear map to `emb`
    emb       SiLU(state + pooled) -> Linear
Every residual block modulates its activations with it (FiLM after normalisation:
h = norm(h) * (1 + scale) + shift with (scale, shift) a linear function of SiLU(emb)).
Conditioning on gamma rather than t lets one network learn a family of schedules.

The state map has 2 D x emb weights: half of a small U-Net's at 3x32x32, 200 million at
3x256x256. `unet(state = "channels")` replaces it by the component means (a Linear(2, emb),
what the full map starts as) and gives the U-Net the two features per component as 2 C more
input channels, the D components laid out as the image (C, H, W) in the basis' component order:
pixel for pixel in the pixel basis, the frequency or sub-band layout in dct / fourier / wavelet.
Its size then does not grow with D.

Networks (`make_network(name, shape, **options)`; options and defaults in NETWORK_OPTIONS):
    mlp    flattened x, residual MLP blocks with FiLM; for small D
    unet   convolutional U-Net: residual blocks (GroupNorm, SiLU, FiLM), optional
           self-attention at chosen feature-map sizes, skip connections, stride-2
           downsampling (sizes round up: 28 -> 14 -> 7, 7 -> 4) and upsampling back to the
           exact skip size; zero-initialised output convolution

Errors (GudError):
    E610 unknown network name
    E611 unknown network option
    E612 invalid option value, or options incompatible with the data shape
    E613 input of the wrong shape at call time
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .diagnostics import GudError

NETWORK_OPTIONS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": 256, "depth": 3},
    "unet": {"channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1,
             "attention_resolutions": (), "dropout": 0.0, "groups": 8, "state": "linear"},
}
# How a U-Net sees the per-component noise state (module docstring).
STATE_INPUTS = ("linear", "channels")

# gamma / 10 is clipped so that clipped (autoregressive-limit) schedules give bounded inputs.
GAMMA_SCALE = 10.0
GAMMA_CLIP = 3.0
# Frequencies of the sinusoidal embedding of mean(gamma): periods from about 1.5 to 200
# resolve both small changes near the data end and the whole range [-20, 20].
_SINUSOID_FREQS = torch.logspace(math.log10(1 / 32), math.log10(4.0), 16)
_ATTENTION_HEAD_DIM = 32


def _invalid(message: str, help: str | None = None) -> GudError:
    return GudError.one("E612", message, help=help)


def _positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1: a Python or NumPy integer, not a bool (E612 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _invalid(f"network option `{name}` must be a positive integer, got {value!r}")
    return int(value)


def _positive_ints(name: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (tuple, list)) or (not value and not allow_empty):
        raise _invalid(f"network option `{name}` must be a "
                       f"{'' if allow_empty else 'non-empty '}list of positive integers, "
                       f"got {value!r}")
    return tuple(_positive_int(name, v) for v in value)


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, np.ndarray) and shape.ndim == 1:
        shape = shape.tolist()
    if not isinstance(shape, (tuple, list)) or not shape:
        raise _invalid(f"data shape must be a non-empty tuple of positive integers, got {shape!r}")
    return tuple(_positive_int("shape", s) for s in shape)


# --------------------------------------------------------------------------- conditioning
def state_features(gamma: torch.Tensor) -> torch.Tensor:
    """gamma (B, D) -> (B, 2, D): sigmoid(gamma) and clip(gamma / 10, -3, 3) per component."""
    return torch.stack([torch.sigmoid(gamma), (gamma / GAMMA_SCALE).clamp(-GAMMA_CLIP, GAMMA_CLIP)], dim=1)


class NoiseStateEmbedding(nn.Module):
    """gamma (B, D) -> embedding (B, emb): a per-component (or, per_component = False, a
    component-mean) view of `state_features` and a sinusoidal view of mean(gamma), summed."""

    def __init__(self, dim: int, emb: int, per_component: bool = True):
        super().__init__()
        self.dim = dim
        self.per_component = per_component
        self.state = nn.Linear(2 * dim if per_component else 2, emb)
        self.pooled = nn.Linear(2 * len(_SINUSOID_FREQS), emb)
        self.out = nn.Linear(emb, emb)
        self.register_buffer("freqs", _SINUSOID_FREQS.clone(), persistent=False)
        if per_component:
            self._init_mean_pooling()

    @torch.no_grad()
    def _init_mean_pooling(self) -> None:
        # A random Linear(2, emb) applied to the component means of the two features.
        small = nn.Linear(2, self.state.out_features)
        weight = small.weight.repeat_interleave(self.dim, dim=1) / self.dim
        self.state.weight.copy_(weight)
        self.state.bias.copy_(small.bias)

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        features = state_features(gamma)
        angles = gamma.mean(dim=1, keepdim=True) * self.freqs
        sinusoid = torch.cat([angles.sin(), angles.cos()], dim=1)
        state = features.flatten(1) if self.per_component else features.mean(dim=2)
        h = self.state(state) + self.pooled(sinusoid)
        return self.out(F.silu(h))


class _FiLM(nn.Module):
    """(scale, shift) from the embedding; h -> norm(h) * (1 + scale) + shift."""

    def __init__(self, emb: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(emb, 2 * channels)

    def forward(self, h: torch.Tensor, normed: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(emb)).chunk(2, dim=1)
        extra = (1,) * (h.dim() - 2)
        return normed * (1 + scale.view(*scale.shape, *extra)) + shift.view(*shift.shape, *extra)


class _EpsNetwork(nn.Module):
    """Base of the networks here: the call-time shape check and the embedding."""

    shape: tuple[int, ...]

    def _check_inputs(self, x: torch.Tensor, gamma: torch.Tensor) -> None:
        dim = math.prod(self.shape)
        if tuple(x.shape[1:]) != self.shape:
            raise GudError.one("E613", f"network input x has shape {tuple(x.shape)}, "
                               f"expected (B, {', '.join(map(str, self.shape))})")
        if tuple(gamma.shape) != (x.shape[0], dim):
            raise GudError.one("E613", f"network input gamma has shape {tuple(gamma.shape)}, "
                               f"expected ({x.shape[0]}, {dim}): one value per component")


# --------------------------------------------------------------------------- MLP
class _MLPBlock(nn.Module):
    def __init__(self, hidden: int, emb: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.linear1 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.film = _FiLM(emb, hidden)
        self.linear2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.linear1(F.silu(self.norm1(h)))
        r = self.linear2(F.silu(self.film(r, self.norm2(r), emb)))
        return h + r


class MLP(_EpsNetwork):
    """Residual MLP on the flattened sample, every block FiLM-conditioned on gamma."""

    def __init__(self, shape, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.shape = _shape(shape)
        hidden = _positive_int("hidden", hidden)
        depth = _positive_int("depth", depth)
        dim = math.prod(self.shape)
        self.embed = NoiseStateEmbedding(dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden, hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x, gamma)
        emb = self.embed(gamma)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h))).view_as(x)


# --------------------------------------------------------------------------- U-Net
class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.film = _FiLM(emb, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = F.silu(self.film(h, self.norm2(h), emb))
        return self.skip(x) + self.conv2(self.dropout(h))


class _Attention(nn.Module):
    """Multi-head self-attention over the positions of a feature map, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        # Heads of width 32 where the width allows, else one head.
        self.heads = channels // _ATTENTION_HEAD_DIM if channels % _ATTENTION_HEAD_DIM == 0 else 1
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling to the exact size of the matching skip (odd sizes)."""

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=self.size, mode="nearest"))


class _Stage(nn.ModuleList):
    """Layers applied in turn; residual blocks also receive the embedding."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
        return h


def level_sizes(shape: tuple[int, ...], levels: int) -> list[tuple[int, int]]:
    """Feature-map (height, width) of each U-Net level; each stride-2 step rounds up.
    Raises E612 when a level would have to downsample a map of side 1."""
    h, w = shape[1], shape[2]
    sizes = [(h, w)]
    for level in range(1, levels):
        if h < 2 or w < 2:
            raise _invalid(
                f"a {shape[1]}x{shape[2]} image is too small for {levels} U-Net levels: "
                f"level {level - 1} is already {h}x{w}",
                help=f"use at most {level} entries in `channel_mult`")
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class UNet(_EpsNetwork):
    """Convolutional U-Net for (C, H, W) data, every residual block FiLM-conditioned on gamma.

    `attention_resolutions` lists feature-map heights (e.g. (8,) on 32x32 with
    channel_mult (1, 2, 2) puts attention at the third level)."""

    def __init__(self, shape, channels: int = 32, channel_mult=(1, 2), num_res_blocks: int = 1,
                 attention_resolutions=(), dropout: float = 0.0, groups: int = 8, state: str = "linear"):
        super().__init__()
        self.shape = _shape(shape)
        if len(self.shape) != 3:
            raise _invalid(f"unet needs image-shaped data (C, H, W), got shape {self.shape}",
                           help="use `mlp` for data that is not an image")
        channels = _positive_int("channels", channels)
        mult = _positive_ints("channel_mult", channel_mult, allow_empty=False)
        num_res_blocks = _positive_int("num_res_blocks", num_res_blocks)
        attention = set(_positive_ints("attention_resolutions", attention_resolutions,
                                       allow_empty=True))
        groups = _positive_int("groups", groups)
        if state not in STATE_INPUTS:
            close = difflib.get_close_matches(str(state), STATE_INPUTS, n=1)
            raise _invalid(f"network option `state` must be one of {', '.join(map(repr, STATE_INPUTS))}, "
                           f"got {state!r}", help=f"did you mean {close[0]!r}?" if close else None)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise _invalid(f"network option `dropout` must be in [0, 1), got {dropout!r}")
        dropout = float(dropout)
        widths = [channels * m for m in mult]
        bad = [w for w in widths if w % groups]
        if bad:
            raise _invalid(f"group norm with {groups} groups needs every width "
                           f"(channels * channel_mult = {widths}) to be divisible by {groups}",
                           help="change `groups`, `channels` or `channel_mult`")
        sizes = level_sizes(self.shape, len(mult))
        heights = [h for h, _ in sizes]
        unused = sorted(attention - set(heights))
        if unused:
            raise _invalid(f"attention resolution(s) {unused} are not feature-map sizes of "
                           f"this U-Net; its levels have sizes {heights}")

        emb = 4 * channels
        last = len(mult) - 1
        self.state_channels = state == "channels"
        self.embed = NoiseStateEmbedding(math.prod(self.shape), emb, per_component=not self.state_channels)
        self.inp = nn.Conv2d(self.shape[0] * (3 if self.state_channels else 1), widths[0], 3, padding=1)

        def res_stage(cin: int, cout: int, level: int) -> list[nn.Module]:
            layers: list[nn.Module] = [_ResBlock(cin, cout, emb, groups, dropout)]
            if heights[level] in attention:
                layers.append(_Attention(cout, groups))
            return layers

        ch, skips = widths[0], [widths[0]]
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(_Stage(res_stage(ch, width, level)))
                ch = width
                skips.append(ch)
            if level != last:
                # Stride 2 with padding 1 rounds odd sizes up (7 -> 4), as level_sizes says.
                self.down.append(_Stage([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = _Stage([*res_stage(ch, ch, last), _ResBlock(ch, ch, emb, groups, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(num_res_blocks + 1):
                layers = res_stage(ch + skips.pop(), widths[level], level)
                ch = widths[level]
                if level != 0 and i == num_res_blocks:
                    layers.append(_Upsample(ch, sizes[level - 1]))
                self.up.append(_Stage(layers))
        self.out_norm = nn.GroupNorm(groups, ch)
        self.out = nn.Conv2d(ch, self.shape[0], 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x, gamma)
        emb = self.embed(gamma)
        if self.state_channels:  # (B, 2, D) -> (B, 2 C, H, W): the components laid out as the image
            c, h, w = self.shape
            x = torch.cat([x, state_features(gamma).to(x.dtype).reshape(len(x), 2 * c, h, w)], dim=1)
        h = self.inp(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))


# --------------------------------------------------------------------------- registry
_NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}


def make_network(name: str, shape, **options: Any) -> nn.Module:
    """Build network `name` for data of `shape` (C, H, W); unset options take their defaults."""
    if name not in _NETWORKS:
        close = difflib.get_close_matches(name, list(_NETWORKS), n=1)
        raise GudError.one("E610", f"unknown network `{name}`; networks are "
                           f"{', '.join(f'`{n}`' for n in _NETWORKS)}",
                           help=f"did you mean `{close[0]}`?" if close else None)
    valid = NETWORK_OPTIONS[name]
    unknown = [k for k in options if k not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(valid), n=1)
        raise GudError.one("E611", f"unknown option `{unknown[0]}` for network `{name}`; "
                           f"valid options are {', '.join(f'`{k}`' for k in valid)}",
                           help=f"did you mean `{close[0]}`?" if close else None)
    return _NETWORKS[name](shape, **{**valid, **options})


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
