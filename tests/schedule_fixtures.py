"""Small hand-written schedules and Gaussian data for the sampler, oracle and likelihood tests.

A schedule is a callable `schedule(t (B,)) -> (gamma (B, D), beta (B, D))` with
beta = sigmoid(gamma) * dgamma/dt, t = 0 data, t = 1 noise (the samplers' interface).
All three families are written out by hand, independent of the schedule compiler:
    linear      gamma(t) = g_min + t (g_max - g_min), the same for every component
    soft        gamma_i(t) = g_den + a (l_i - l_max) + t Dg, Dg = g_noise - g_den + a (l_max - l_min)
    sequential  gamma_i(t) = clip(g_min + (t - tau_c) (g_max - g_min) / w, g_min, g_max), w = 1 - tau_max,
                component i in group c with offset tau_c = tau_max c / (groups - 1); beta = 0 where clipped
"""

from __future__ import annotations

import math

import pytest
import torch


class LinearSchedule:
    """Scalar linear-gamma schedule (standard diffusion in whitened components)."""

    def __init__(self, dim: int, g_min: float = -10.0, g_max: float = 8.0):
        self.dim, self.g_min, self.g_max = dim, g_min, g_max

    def __call__(self, t: torch.Tensor):
        slope = self.g_max - self.g_min
        gamma = (self.g_min + t[:, None] * slope).expand(len(t), self.dim)
        return gamma, torch.sigmoid(gamma) * slope


class SoftSchedule:
    """Soft-conditioning family: parallel lines in gamma, shifted by a * label."""

    def __init__(self, labels: torch.Tensor, a: float = 2.0, g_den: float = -10.0, g_noise: float = 8.0):
        self.labels = torch.as_tensor(labels, dtype=torch.float64)
        self.a, self.g_den = a, g_den
        lmax, lmin = float(self.labels.max()), float(self.labels.min())
        self.shift = a * (self.labels - lmax)
        self.slope = g_noise - g_den + a * (lmax - lmin)

    def __call__(self, t: torch.Tensor):
        shift = self.shift.to(t)
        gamma = self.g_den + shift[None] + t[:, None] * self.slope
        return gamma, torch.sigmoid(gamma) * self.slope


class SequentialSchedule:
    """Clipped sequential family: group c waits clean until tau_c, is noised over a window w,
    then stays pure noise. Components stand still (beta = 0) outside their window."""

    def __init__(self, groups: torch.Tensor, tau_max: float = 0.5, g_min: float = -8.0,
                 g_max: float = 8.0):
        groups = torch.as_tensor(groups, dtype=torch.float64)
        n = float(groups.max()) + 1
        self.tau = tau_max * groups / max(n - 1, 1)
        self.g_min, self.g_max = g_min, g_max
        self.slope = (g_max - g_min) / (1.0 - tau_max)

    def __call__(self, t: torch.Tensor):
        raw = self.g_min + (t[:, None] - self.tau.to(t)[None]) * self.slope
        gamma = raw.clamp(self.g_min, self.g_max)
        moving = (raw > self.g_min) & (raw < self.g_max)
        return gamma, torch.sigmoid(gamma) * self.slope * moving


def schedules(dim: int) -> dict:
    """The three test schedules for `dim` components (dim divisible by 4)."""
    labels = torch.arange(dim, dtype=torch.float64) / (dim - 1)
    groups = torch.arange(dim) // (dim // 4)
    return {"linear": LinearSchedule(dim), "soft": SoftSchedule(labels, a=2.0),
            "sequential": SequentialSchedule(groups)}


def gaussian_data(dim: int, seed: int = 0):
    """A whitened-component mean (dim,) and a non-diagonal covariance (dim, dim), float64,
    eigenvalues log-spaced over [0.05, 5] in a random orthonormal frame."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.logspace(math.log10(0.05), math.log10(5.0), dim, dtype=torch.float64)
    cov = (q * eig) @ q.T
    mean = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    return mean, 0.5 * (cov + cov.T)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small matrices: one thread avoids oversubscribing the cores (results do not change).
    Import it into a test module to apply it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
