"""Orthonormal bases: the map U from mean-subtracted images to components, chi = U phi.

Input: an image shape (C, H, W), a basis name and its options (`make_basis`); PCA also
needs training batches (`Basis.fit`).
Output: a `Basis` (an `nn.Module`): `forward` (B, C, H, W) -> (B, D) computes chi = U x,
`inverse` (B, D) -> (B, C, H, W) computes U^T chi. Batched, on CPU or CUDA; the dtype and
device of the result follow the input (constant tensors are float64 buffers, cast per call,
so a float64 input gets float64 accuracy unless the module itself was cast down).
`features()` gives the per-component feature vectors of docs/architecture.md (all but
`var`, which comes from `gudlang.stats`), `order()` the natural order.

Bases (no dense D x D matrix except PCA's):
    pixel                 identity; natural order raster (chan, row, col)
    pca(channels)         eigenvectors of the training covariance (mean removed, float64),
                          decreasing variance; "mix" one D x D basis, "separate" one
                          (H W) x (H W) basis per channel
    dct                   2D DCT-II per channel (small per-axis matrices); increasing frequency
    fourier               real orthonormal 2D Fourier basis from torch.fft.rfft2: sqrt(2) Re and
                          sqrt(2) Im of paired modes, Re only of self-conjugate (DC / Nyquist)
                          modes; any H, W; increasing frequency
    wavelet(family, levels)  multi-level 2D orthogonal wavelet (haar, dbN, coifN filters
                          from PyWavelets) with periodic extension, equal to
                          pywt.wavedec2(mode="periodization"); coarse level first

Component layout of chi: pixel, dct, fourier and pca(separate) are channel-major (component
c * H * W + j belongs to channel c). pca(mix) is sorted by decreasing variance. wavelet is
laid out in its natural order: approximation band, then the detail bands from the coarsest
level to the finest, each level in pywt's order (H, V, D), each band (C, h, w) row-major.

Wavelet `level`: 0 = approximation band, 1 = coarsest details ... `levels` = finest details.
`orient`: 0 approximation, 1 horizontal detail (high-pass along H, low-pass along W: it sees
horizontal edges, changes from row to row), 2 vertical detail (high-pass along W: vertical
edges), 3 diagonal (high-pass along both): pywt's cH, cV, cD. Wavelet `row` / `col` is
the centre of the coefficient's dyadic cell in pixel units, divided by (H - 1) / (W - 1).
DCT and Fourier `kx` / `ky`: the integer frequency index along W / H of the component's mode,
unscaled (DCT-II mode k has k / (2 n) cycles per pixel, 0 <= k < n; Fourier mode k has k / n,
kx in 0 .. W / 2 of the rfft2 half-plane and ky signed, -H / 2 < ky <= H / 2), so that e.g.
the heat equation's eigenvalues are pi^2 (kx^2 / W^2 + ky^2 / H^2) for the DCT.

Errors (GudError):
    E500 unknown basis, unknown option or invalid option value (e.g. a wavelet that is not
         orthogonal, or whose PyWavelets filter is not orthonormal to rounding: symN, dmey)
    E501 image shape the basis cannot handle (not (C, H, W) positive, wavelet sizes not
         divisible by 2**levels), or an input tensor of the wrong shape
    E502 basis too large for a dense matrix (PCA), with the basis to use instead
    E503 PCA not fitted, or fitted on too few samples / wrongly shaped batches
    E504 saved basis state that does not match the basis
"""

from __future__ import annotations

import difflib
import inspect
import os
from abc import ABC, abstractmethod
from typing import Iterable

import numpy as np
import pywt
import torch
from torch import nn

from .diagnostics import GudError

CODES: dict[str, str] = {
    "E500": "unknown basis, unknown option or invalid option value",
    "E501": "image shape the basis cannot handle, or an input of the wrong shape",
    "E502": "basis too large for a dense D x D matrix",
    "E503": "basis not fitted, or not enough / wrongly shaped data to fit it",
    "E504": "saved basis state does not match the basis",
}

PCA_MAX_DIM = 4096
# A dense basis may use at most this fraction of the available RAM (covariance, eigenvectors
# and the eigensolver's workspace: about three n x n float64 matrices).
PCA_RAM_FRACTION = 0.5
WAVELET_TOLERANCE = 1e-14


def _scaled(index: np.ndarray, count: int) -> np.ndarray:
    """Integer positions 0 .. count - 1 scaled to [0, 1] (0 when count == 1)."""
    return index / (count - 1) if count > 1 else np.zeros(len(index))


class Basis(nn.Module, ABC):
    """An orthonormal transform of (C, H, W) images; see the module docstring."""

    kind: str = ""
    needs_fit: bool = False

    def __init__(self, shape):
        super().__init__()
        self.shape = _check_shape(shape)
        self.dim = int(np.prod(self.shape))

    # -- the transform -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D): chi = U x."""
        if tuple(x.shape[1:]) != self.shape or x.dim() != 4:
            raise GudError.one("E501", f"{self.kind} basis expects images of shape (B, "
                               f"{', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return self._forward(x)

    def inverse(self, chi: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C, H, W): U^T chi."""
        if chi.dim() != 2 or chi.shape[1] != self.dim:
            raise GudError.one("E501", f"{self.kind} basis expects components of shape "
                               f"(B, {self.dim}), got {tuple(chi.shape)}")
        return self._inverse(chi)

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _inverse(self, chi: torch.Tensor) -> torch.Tensor: ...

    def logabsdet(self) -> float:
        """log |det U|: 0 for every basis here (all orthonormal)."""
        return 0.0

    # -- components ----------------------------------------------------------------------
    @abstractmethod
    def order(self) -> torch.Tensor:
        """LongTensor (D,): component indices in natural order, first generated first."""

    @abstractmethod
    def _features(self) -> dict[str, np.ndarray]: ...

    def features(self) -> dict[str, torch.Tensor]:
        """Per-component float64 vectors (D,): `index` (the position in the natural order),
        `rank` (the same scaled to [0, 1]) and the basis's own features."""
        order = self.order().cpu().numpy()
        index = np.empty(self.dim)
        index[order] = np.arange(self.dim)
        rank = np.empty(self.dim)
        rank[order] = _scaled(np.arange(self.dim), self.dim)
        feats = {"rank": rank, "index": index, **self._features()}
        return {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in feats.items()}

    def _chan(self) -> np.ndarray:
        """`chan` of a channel-major layout (component c * H * W + j is in channel c)."""
        c = self.shape[0]
        return _scaled(np.arange(self.dim) // (self.dim // c), c)

    # -- fitting and checkpoints ---------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return True

    def fit(self, batches: Iterable) -> "Basis":
        """Fit to training batches (B, C, H, W); a no-op for bases that need no data."""
        return self

    @property
    def options(self) -> dict:
        """The constructor options (JSON-able), as `make_basis` takes them."""
        return {}

    def config(self) -> dict:
        """{"kind", "shape", **options}: with `state_tensors`, all that rebuilds the basis."""
        return {"kind": self.kind, "shape": list(self.shape), **self.options}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to store in a checkpoint (empty for bases that need no data)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> "Basis":
        """Restore what `state_tensors` returned (E504 if it does not match)."""
        if tensors:
            raise GudError.one("E504", f"{self.kind} basis has no fitted state, got "
                               f"{sorted(tensors)}")
        return self


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) == 3 and all(d >= 1 and d == s for d, s in zip(dims, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GudError.one("E501", f"image shape must be three positive integers (C, H, W), "
                           f"got {shape!r}")
    return dims


def _cast(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return buffer.to(dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- pixel

class PixelBasis(Basis):
    """The identity: component c * H * W + r * W + k is pixel (c, r, k)."""

    kind = "pixel"

    def _forward(self, x):
        return x.reshape(x.shape[0], self.dim)

    def _inverse(self, chi):
        return chi.reshape(chi.shape[0], *self.shape)

    def order(self):
        return torch.arange(self.dim)

    def _features(self):
        c, h, w = self.shape
        chan, row, col = np.unravel_index(np.arange(self.dim), self.shape)
        return {"row": _scaled(row, h), "col": _scaled(col, w), "chan": _scaled(chan, c)}


# ----------------------------------------------------------------------------- pca

def _available_ram() -> float | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def as_float64(batch) -> torch.Tensor:
    """A batch (array or tensor) as a float64 tensor on its device (CPU for arrays)."""
    x = batch if torch.is_tensor(batch) else torch.as_tensor(np.asarray(batch))
    return x.detach().to(torch.float64)


class PcaBasis(Basis):
    """Eigenvectors of the training covariance, by decreasing variance.

    The D components form G groups of n: one group of D ("mix") or one per channel of H W
    ("separate"). Buffers: `components` (G, n, n), rows = eigenvectors; `variances` (D,),
    the eigenvalues (population covariance, ddof = 0). Sign convention: the largest-magnitude
    entry of each eigenvector is positive.
    """

    kind = "pca"
    needs_fit = True

    def __init__(self, shape, channels: str = "mix", max_dim: int = PCA_MAX_DIM):
        super().__init__(shape)
        if channels not in ("mix", "separate"):
            raise GudError.one("E500", f"pca: `channels` must be \"mix\" or \"separate\", "
                               f"got {channels!r}")
        if isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 1:
            raise GudError.one("E500", f"pca: `max_dim` must be a positive integer, "
                               f"got {max_dim!r}")
        self.channels, self.max_dim = channels, max_dim
        self.groups = 1 if channels == "mix" else self.shape[0]
        n = self.dim // self.groups
        help = ("use `dct()`, `fourier()` or `wavelet()`: they need no dense matrix, and "
                "`fourier()` is the exact PCA basis of stationary data")
        if n > max_dim:
            raise GudError.one("E502", f"pca on shape {self.shape} needs a dense {n} x {n} "
                               f"basis, more than the limit {max_dim}", help=help)
        need, ram = 3 * 8 * n * n * self.groups, _available_ram()
        if ram is not None and need > PCA_RAM_FRACTION * ram:
            raise GudError.one("E502", f"pca on shape {self.shape} needs about "
                               f"{need / 2**30:.1f} GiB, more than half the available "
                               f"{ram / 2**30:.1f} GiB of RAM", help=help)
        self.register_buffer("components", torch.zeros(self.groups, n, n, dtype=torch.float64))
        self.register_buffer("variances", torch.zeros(self.dim, dtype=torch.float64))
        self._fitted = False

    @property
    def options(self):
        opts = {"channels": self.channels}
        if self.max_dim != PCA_MAX_DIM:
            opts["max_dim"] = self.max_dim
        return opts

    @property
    def fitted(self):
        return self._fitted

    def _require_fit(self):
        if not self._fitted:
            raise GudError.one("E503", "pca basis used before it was fitted",
                               help="call `fit(batches)` (or gudlang.stats.fit_stats) first")

    def _forward(self, x):
        self._require_fit()
        rows = x.reshape(x.shape[0], self.groups, -1)
        return torch.einsum("bgp,gkp->bgk", rows, _cast(self.components, x)).reshape(x.shape[0], -1)

    def _inverse(self, chi):
        self._require_fit()
        comps = chi.reshape(chi.shape[0], self.groups, -1)
        return torch.einsum("bgk,gkp->bgp", comps, _cast(self.components, chi)) \
            .reshape(chi.shape[0], *self.shape)

    def fit(self, batches):
        """Streaming float64 covariance (Chan's pairwise update), then its eigenvectors."""
        n, mean, scatter = 0, None, None
        for batch in batches:
            x = as_float64(batch).cpu()
            if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
                raise GudError.one("E503", f"pca: training batches must have shape (B, "
                                   f"{', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
            b = len(x)
            if b == 0:
                continue
            rows = x.reshape(b, self.groups, -1).transpose(0, 1)  # (G, B, n)
            # Centre on the batch mean before the products, then merge (Chan et al.).
            b_mean = rows.mean(dim=1, keepdim=True)
            centred = rows - b_mean
            b_scatter = centred.transpose(1, 2) @ centred
            if n == 0:
                mean, scatter = b_mean, b_scatter
            else:
                delta = b_mean - mean
                scatter = scatter + b_scatter + delta.transpose(1, 2) @ delta * (n * b / (n + b))
                mean = mean + delta * (b / (n + b))
            n += b
        if n < 2:
            raise GudError.one("E503", f"pca needs at least 2 training images, got {n}")
        values, vectors = torch.linalg.eigh(scatter / n)
        values, vectors = values.flip(-1), vectors.flip(-1).transpose(1, 2)
        # Deterministic sign: the largest-magnitude entry of every eigenvector is positive.
        peak = vectors.gather(-1, vectors.abs().argmax(dim=-1, keepdim=True))
        self.components.copy_(vectors * torch.where(peak < 0, -1.0, 1.0))
        self.variances.copy_(values.clamp_min(0.0).reshape(-1))
        self._fitted = True
        return self

    def order(self):
        self._require_fit()
        # Decreasing variance; the stable sort keeps ties in index order.
        return torch.argsort(-self.variances.cpu(), stable=True)

    def _features(self):
        self._require_fit()
        return {} if self.channels == "mix" else {"chan": self._chan()}

    def state_tensors(self):
        self._require_fit()
        return {"components": self.components.clone(), "variances": self.variances.clone()}

    def load_state_tensors(self, tensors):
        expected = {"components": tuple(self.components.shape), "variances": (self.dim,)}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != expected:
            raise GudError.one("E504", f"saved pca state {got} does not match the basis "
                               f"(expected {expected})")
        self.components.copy_(tensors["components"].to(torch.float64))
        self.variances.copy_(tensors["variances"].to(torch.float64))
        self._fitted = True
        return self


# ----------------------------------------------------------------------------- frequency bases

def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n): row k is sqrt(2/n) c_k cos(pi (2m + 1) k / (2n))."""
    k, m = np.arange(n)[:, None], np.arange(n)[None, :]
    mat = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * k / (2 * n))
    mat[0] /= np.sqrt(2.0)
    return torch.as_tensor(mat)


def _frequency_order(key: np.ndarray) -> torch.Tensor:
    """Increasing frequency; a stable sort keeps ties in index order, i.e. by channel, then
    by index (the layout is channel-major)."""
    return torch.as_tensor(np.argsort(key, kind="stable"))


def _radial(key: np.ndarray) -> np.ndarray:
    """Radial frequency from its exact integer square `key`, scaled to [0, 1] (max = 1)."""
    top = key.max()
    return np.sqrt(key / top) if top > 0 else np.zeros(len(key))


class DctBasis(Basis):
    """2D orthonormal DCT-II per channel: chi = C_H x C_W^T, component (c, ky, kx)."""

    kind = "dct"

    def __init__(self, shape):
        super().__init__(shape)
        self.register_buffer("rows", _dct_matrix(self.shape[1]), persistent=False)
        self.register_buffer("cols", _dct_matrix(self.shape[2]), persistent=False)

    def _forward(self, x):
        return (_cast(self.rows, x) @ x @ _cast(self.cols, x).T).reshape(x.shape[0], self.dim)

    def _inverse(self, chi):
        y = chi.reshape(chi.shape[0], *self.shape)
        return _cast(self.rows, chi).T @ y @ _cast(self.cols, chi)

    def _sq_frequency(self) -> np.ndarray:
        # DCT-II mode k has k / (2n) cycles per pixel; freq^2 * (2 H W)^2 is an exact integer.
        _, h, w = self.shape
        _, ky, kx = np.unravel_index(np.arange(self.dim), self.shape)
        return (ky * w) ** 2 + (kx * h) ** 2

    def order(self):
        return _frequency_order(self._sq_frequency())

    def _features(self):
        _, ky, kx = np.unravel_index(np.arange(self.dim), self.shape)
        return {"freq": _radial(self._sq_frequency()), "kx": kx, "ky": ky, "chan": self._chan()}


class FourierBasis(Basis):
    """Real orthonormal 2D Fourier basis, via torch.fft.rfft2(norm="ortho").

    Mode k and -k hold conjugate coefficients, so each pair gives two real components,
    sqrt(2) Re X_k and sqrt(2) Im X_k; self-conjugate modes (ky in {0, H/2}, kx in
    {0, W/2}, halves only for even sizes) are real and give X_k itself. Per channel the
    components are the kept entries of the rfft2 array in (ky, kx, re / im) order.

    Buffers: `gather` / `scale` pick and scale the kept real entries of rfft2's output;
    `scatter` / `coef` rebuild the full half-spectrum (including the mirrored entries of the
    kx = 0 and kx = W/2 columns) from the components for irfft2.
    """

    kind = "fourier"

    def __init__(self, shape):
        super().__init__(shape)
        _, h, w = self.shape
        wr = w // 2 + 1
        ky, kx, part = np.unravel_index(np.arange(h * wr * 2), (h, wr, 2))
        edge = (kx == 0) | (2 * kx == w)  # columns whose conjugates are in the same column
        mirror = (-ky) % h
        self_conj = edge & (mirror == ky)
        # Keep: every interior entry, and in edge columns the first of each conjugate pair
        # (ky < H - ky); real parts only for self-conjugate modes.
        keep = (~edge | (ky < mirror) | self_conj) & ~(self_conj & (part == 1))
        gather = np.flatnonzero(keep)
        scale = np.where(self_conj[gather], 1.0, np.sqrt(2.0))
        # Inverse: entry p of the half-spectrum = coef[p] * chi[scatter[p]].
        component = np.full(h * wr * 2, -1)
        component[gather] = np.arange(h * w)
        scatter = component.copy()
        coef = np.zeros(h * wr * 2)
        coef[gather] = 1.0 / scale
        twin = edge & ~self_conj & (ky > mirror)
        src = np.ravel_multi_index((mirror[twin], kx[twin], part[twin]), (h, wr, 2))
        scatter[twin] = component[src]
        coef[twin] = np.where(part[twin] == 1, -1.0, 1.0) / np.sqrt(2.0)
        scatter[scatter < 0] = 0  # imaginary parts of self-conjugate modes: coef 0
        self.register_buffer("gather", torch.as_tensor(gather), persistent=False)
        self.register_buffer("scale", torch.as_tensor(scale), persistent=False)
        self.register_buffer("scatter", torch.as_tensor(scatter), persistent=False)
        self.register_buffer("coef", torch.as_tensor(coef), persistent=False)
        signed_ky = np.where(ky > h // 2, ky - h, ky)[gather]
        self._kx, self._ky = np.tile(kx[gather], self.shape[0]), np.tile(signed_ky, self.shape[0])
        self._key = (self._ky * w) ** 2 + (self._kx * h) ** 2

    def _forward(self, x):
        z = torch.view_as_real(torch.fft.rfft2(x, norm="ortho")).flatten(2)
        return (z[..., self.gather] * _cast(self.scale, x)).reshape(x.shape[0], self.dim)

    def _inverse(self, chi):
        c, h, w = self.shape
        comps = chi.reshape(chi.shape[0], c, h * w)
        z = (comps[..., self.scatter] * _cast(self.coef, chi)).reshape(chi.shape[0], c, h, -1, 2)
        return torch.fft.irfft2(torch.view_as_complex(z.contiguous()), s=(h, w), norm="ortho")

    def order(self):
        return _frequency_order(self._key)

    def _features(self):
        return {"freq": _radial(self._key), "kx": self._kx, "ky": self._ky, "chan": self._chan()}


# ----------------------------------------------------------------------------- wavelets

def _wavelet_filters(family) -> pywt.Wavelet:
    try:
        wav = pywt.Wavelet(family)
    except (ValueError, TypeError):
        known = pywt.wavelist(kind="discrete")
        close = difflib.get_close_matches(str(family), known, n=3)
        raise GudError.one("E500", f"unknown wavelet family {family!r}",
                           help=f"did you mean {', '.join(close)}?" if close else
                           "use an orthogonal wavelet: haar, db1 .. db38 or coif1 .. coif17"
                           ) from None
    if not wav.orthogonal:
        raise GudError.one("E500", f"wavelet {family!r} is not orthogonal",
                           help="use an orthogonal wavelet: haar, dbN or coifN")
    # PyWavelets tabulates some orthogonal filters (symN, dmey) only to ~1e-12 or worse, and
    # the basis must be orthonormal to rounding.
    h = np.asarray(wav.rec_lo)
    error = max(abs(h[: len(h) - 2 * k] @ h[2 * k:] - (k == 0)) for k in range(len(h) // 2))
    if error > WAVELET_TOLERANCE:
        raise GudError.one("E500", f"PyWavelets' {family!r} filter is orthonormal only to "
                           f"{error:.0e}, not to rounding", help="use haar, dbN or coifN")
    return wav


class WaveletBasis(Basis):
    """Multi-level 2D orthogonal wavelet transform with periodic extension.

    One level along an axis of length n computes, for the PyWavelets filters f = rec_lo
    (approximation) and rec_hi (detail) of length L and shift s = 1 - L / 2,
        c[m] = sum_i f[i] x[(2 m + s + i) mod n],
    which is pywt's "periodization" mode: one gather of the L periodic taps of every output
    and one (n/2, L) x (L, 2) matmul. Its transpose gathers the L / 2 lags of both bands for
    each pair of outputs (2 m, 2 m + 1) and multiplies by the same filters: O(D L) per level.
    """

    kind = "wavelet"

    def __init__(self, shape, family: str = "haar", levels: int = 1):
        super().__init__(shape)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise GudError.one("E500", f"wavelet: `levels` must be an integer >= 1, got {levels!r}")
        wav = _wavelet_filters(family)
        _, h, w = self.shape
        if h % 2 ** levels or w % 2 ** levels:
            raise GudError.one("E501", f"wavelet with {levels} level(s) needs H and W divisible "
                               f"by 2**{levels} = {2 ** levels}, got H = {h}, W = {w}",
                               help=f"use fewer levels, or crop / resize the images to a "
                                    f"multiple of {2 ** levels}")
        self.family, self.levels = family, levels
        self.register_buffer("filters", torch.tensor([wav.rec_lo, wav.rec_hi], dtype=torch.float64),
                             persistent=False)  # (2, L)
        length = self.filters.shape[1]
        self.shift = 1 - length // 2
        # Per axis length n: `taps_n` (n/2 * L) indexes x[(2 m + s + i) mod n] for (m, i);
        # `lags_n` indexes the bands (2, n/2) flattened at (o, (m - j) mod n/2) for (m, o, j).
        for n in {h >> k for k in range(levels)} | {w >> k for k in range(levels)}:
            m, i = np.arange(n // 2)[:, None], np.arange(length)[None, :]
            taps = (2 * m + self.shift + i) % n
            o, j = np.divmod(np.arange(length), length // 2)
            lags = o * (n // 2) + (m - j) % (n // 2)
            self.register_buffer(f"taps_{n}", torch.as_tensor(taps.reshape(-1)), persistent=False)
            self.register_buffer(f"lags_{n}", torch.as_tensor(lags.reshape(-1)), persistent=False)

    def _analyse(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., 2, n/2): approximation and detail along the last axis."""
        n = x.shape[-1]
        taps = x[..., getattr(self, f"taps_{n}")].reshape(*x.shape[:-1], n // 2, -1)
        return (taps @ _cast(self.filters, x).T).transpose(-1, -2)

    def _synthesise(self, c: torch.Tensor) -> torch.Tensor:
        """(..., 2, n/2) -> (..., n): the transpose of `_analyse`."""
        lead, n = c.shape[:-2], 2 * c.shape[-1]
        lags = c.reshape(*lead, n)[..., getattr(self, f"lags_{n}")].reshape(*lead, n // 2, -1)
        # Row (o, j) of the filters reshaped (L, 2) is f_o[2 j + p], p = output parity.
        shifted = (lags @ _cast(self.filters, c).reshape(-1, 2)).reshape(*lead, n)
        return torch.roll(shifted, self.shift, -1)  # shifted[q] = x[(q + s) mod n]

    def _forward(self, x):
        b = x.shape[0]
        approx, bands = x, []
        for _ in range(self.levels):
            y = self._analyse(approx)                            # (B, C, h, bw, w/2)
            y = self._analyse(y.permute(0, 1, 3, 4, 2))          # (B, C, bw, w/2, bh, h/2)
            y = y.permute(0, 1, 4, 2, 5, 3)                      # (B, C, bh, bw, h/2, w/2)
            approx = y[:, :, 0, 0]
            details = torch.stack([y[:, :, 1, 0], y[:, :, 0, 1], y[:, :, 1, 1]], dim=1)
            bands.append(details.reshape(b, -1))                 # (H, V, D) x (C, h, w)
        bands.append(approx.reshape(b, -1))
        return torch.cat(bands[::-1], dim=1)

    def _inverse(self, chi):
        b = chi.shape[0]
        c, h, w = self.shape
        h, w = h >> self.levels, w >> self.levels
        approx = chi[:, : c * h * w].reshape(b, c, h, w)
        start = c * h * w
        for _ in range(self.levels):
            det = chi[:, start: start + 3 * c * h * w].reshape(b, 3, c, h, w)
            start += 3 * c * h * w
            y = torch.stack([torch.stack([approx, det[:, 1]], 2),
                             torch.stack([det[:, 0], det[:, 2]], 2)], 2)  # (B, C, bh, bw, h, w)
            y = self._synthesise(y.permute(0, 1, 3, 5, 2, 4))           # (B, C, bw, w, 2h)
            approx = self._synthesise(y.permute(0, 1, 4, 2, 3))          # (B, C, 2h, 2w)
            h, w = 2 * h, 2 * w
        return approx

    @property
    def options(self):
        return {"family": self.family, "levels": self.levels}

    def order(self):
        return torch.arange(self.dim)

    def _features(self):
        c, h, w = self.shape
        parts = []
        for level in range(self.levels + 1):
            step = 2 ** self.levels if level == 0 else 2 ** (self.levels + 1 - level)
            orients = (0,) if level == 0 else (1, 2, 3)
            hh, ww = h // step, w // step
            o, ch, r, k = np.unravel_index(np.arange(len(orients) * c * hh * ww),
                                           (len(orients), c, hh, ww))
            parts.append(np.stack([np.full(len(o), level), np.asarray(orients)[o], ch,
                                   (r + 0.5) * step - 0.5, (k + 0.5) * step - 0.5]))
        level, orient, chan, row, col = np.concatenate(parts, axis=1)
        return {"level": level, "orient": orient, "row": row / (h - 1),
                "col": col / (w - 1), "chan": _scaled(chan, c)}


# ----------------------------------------------------------------------------- factory

BASES: dict[str, type[Basis]] = {
    cls.kind: cls for cls in (PixelBasis, PcaBasis, DctBasis, FourierBasis, WaveletBasis)
}


def make_basis(name: str, shape, /, **options) -> Basis:
    """The basis `name` for images of `shape` (C, H, W); E500 / E501 / E502 on bad input."""
    if not isinstance(name, str) or name not in BASES:
        close = difflib.get_close_matches(str(name), BASES, n=1)
        raise GudError.one("E500", f"unknown basis {name!r}",
                           help=(f"did you mean {close[0]!r}? " if close else "")
                           + f"bases: {', '.join(BASES)}")
    cls = BASES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "shape")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise GudError.one("E500", f"{name}() has no option {', '.join(map(repr, unknown))}",
                           help=f"{name}() takes {', '.join(accepted) or 'no options'}")
    return cls(shape, **options)


def load_basis(config: dict, tensors: dict[str, torch.Tensor]) -> Basis:
    """Rebuild a basis from `Basis.config()` and `Basis.state_tensors()`."""
    options = dict(config)
    basis = make_basis(options.pop("kind"), options.pop("shape"), **options)
    return basis.load_state_tensors(tensors)


__all__ = ["as_float64", "Basis", "PixelBasis", "PcaBasis", "DctBasis", "FourierBasis",
           "WaveletBasis", "BASES", "CODES", "PCA_MAX_DIM", "make_basis", "load_basis"]
