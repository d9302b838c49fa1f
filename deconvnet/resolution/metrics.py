"""The scores of a restoration: mean squared error, PSNR, correlation, and the maxima kept at their switches."""

from __future__ import annotations

import math

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference, in float64."""
    return float((a.double() - b.double()).pow(2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``; inf for identical inputs."""
    m = mse(a, b)
    return math.inf if m == 0 else 10 * math.log10(peak**2 / m)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of all entries (nan when either is constant)."""
    x, y = a.double().reshape(-1), b.double().reshape(-1)
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den > 0 else math.nan


#: how close a restored value must be to its maximum to count as kept, relative to the largest maximum
MAXIMA_TOLERANCE = 1e-4


def maxima_kept(restored: torch.Tensor, pooled: torch.Tensor, switches: torch.Tensor) -> float:
    """Fraction of the pooled maxima found at their switch positions in ``restored``.

    "Found" is to within ``MAXIMA_TOLERANCE`` of the largest |maximum|: float32 round-off (which changes
    with the number of threads a convolution uses) must not decide the count, and unpooling, which puts
    the maxima back bit for bit, scores 1 either way.
    """
    n, c = pooled.shape[:2]
    at = restored.reshape(n, c, -1).gather(2, switches.reshape(n, c, -1))
    target = pooled.reshape(n, c, -1)
    tol = MAXIMA_TOLERANCE * float(target.abs().max()) if target.numel() else 0.0
    return float(((at - target).abs() <= tol).double().mean())
