"""Measures of what a projection shows, to compare weights (``benchmarks/bench_offline_weights.py``).

A deconvnet projection on weights whose deep layers were retrained for another task can be a texture of
those weights rather than a picture of image structure: the HED edge weights give the same 2-px vertical
stripes for every unit. Three numbers catch this without looking:

- ``anisotropy``: the energy at high horizontal frequencies over that at high vertical frequencies,
  folded so that 1 is isotropic and a stripe texture is large (10-15 for HED's deep units).
- ``high_frequency_share``: the share of the energy above a quarter cycle per pixel (stripes 2 px apart
  sit at half a cycle per pixel).
- ``distinctness``: one minus the mean cosine similarity of the projections of different channels on the
  same image: 0 when every channel gives the same picture (Mahendran & Vedaldi's "bottleneck"
  finding), near 1 when each feature shows something of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: the band edge, in cycles per pixel, above which a frequency counts as high
HIGH = 0.25


def _power(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Power spectrum of a (C, H, W) or (H, W) projection summed over channels, and its frequencies."""
    p = p.detach().double()
    p = p if p.dim() == 3 else p.unsqueeze(0)
    power = torch.fft.fft2(p).abs().square().sum(0)
    fy = torch.fft.fftfreq(p.shape[-2], dtype=torch.float64).abs().view(-1, 1)
    fx = torch.fft.fftfreq(p.shape[-1], dtype=torch.float64).abs().view(1, -1)
    return power, fy.expand_as(power), fx.expand_as(power)


def anisotropy(p: torch.Tensor) -> float:
    """High horizontal over high vertical frequency energy of a projection, folded: >= 1, 1 = isotropic.

    Vertical stripes (changes along a row) put their energy at high horizontal frequencies. A projection
    with no high-frequency energy at all gives 1.

    Args:
        p: (C, H, W) or (H, W) projection.
    """
    power, fy, fx = _power(p)
    horizontal = float(power[fx >= HIGH].sum())
    vertical = float(power[fy >= HIGH].sum())
    if horizontal == 0.0 and vertical == 0.0:
        return 1.0
    if horizontal == 0.0 or vertical == 0.0:
        return float("inf")
    return max(horizontal / vertical, vertical / horizontal)


def high_frequency_share(p: torch.Tensor) -> float:
    """Share of a projection's energy (the mean removed) above ``HIGH`` cycles per pixel on either axis."""
    power, fy, fx = _power(p)
    power[0, 0] = 0.0
    total = float(power.sum())
    return float(power[(fx >= HIGH) | (fy >= HIGH)].sum()) / total if total > 0 else 0.0


def distinctness(projections: Sequence[torch.Tensor]) -> float:
    """One minus the mean pairwise cosine similarity of projections of different channels (same image).

    Args:
        projections: two or more projections of one shape, each of another channel or unit.
    """
    if len(projections) < 2:
        raise ValueError("distinctness needs at least two projections")
    v = torch.stack([p.detach().double().flatten() for p in projections])
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sim = v @ v.T
    n = len(projections)
    mean_off_diagonal = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - mean_off_diagonal)
