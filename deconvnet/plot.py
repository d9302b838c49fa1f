"""Display of images and projections.

Display scaling (the paper gives none: "colour contrast is artificially enhanced") is this toolkit's
documented choice:

- ``"symmetric"`` (default): per projection, ``0.5 + v / (2 max|v|)`` over all three channels, so zero
  is mid-gray, the sign of every value is kept, and the colour balance between channels is preserved.
- ``"minmax"``: per projection, ``(v - min) / (max - min)``.
- ``"percentile"``: like symmetric but divided by the 99.5th percentile of ``|v|`` and clipped, which
  brightens projections dominated by a few strong pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SCALINGS = ("symmetric", "minmax", "percentile")


def scale_for_display(v: torch.Tensor | np.ndarray, scaling: str = "symmetric") -> np.ndarray:
    """A (3, H, W) or (H, W, 3) signed image -> (H, W, 3) float array in [0, 1] (see module docstring)."""
    a = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
        a = a.transpose(1, 2, 0)
    if scaling == "symmetric":
        m = np.abs(a).max()
        return 0.5 + a / (2 * m) if m > 0 else np.full_like(a, 0.5)
    if scaling == "percentile":
        m = np.percentile(np.abs(a), 99.5)
        return np.clip(0.5 + a / (2 * m), 0, 1) if m > 0 else np.full_like(a, 0.5)
    if scaling == "minmax":
        lo, hi = a.min(), a.max()
        return (a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5)
    raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")


def image_array(rgb01: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB tensor in [0, 1] -> (H, W, 3) array."""
    return rgb01.detach().cpu().double().clamp(0, 1).permute(1, 2, 0).numpy()


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def show(p, index: int = 0, axes: Sequence | None = None, scaling: str = "symmetric", title: bool = True):
    """Draw an image beside its projection.

    Args:
        p: a ``Projection``.
        index: which image of the batch.
        axes: two matplotlib axes to draw on; None creates a figure.
        scaling: display scaling of the projection (see module docstring).
        title: write layer, channel, activation and position above, and the weights below.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.4), constrained_layout=True)
    else:
        fig = axes[0].figure
    image = p.image_rgb()[index]
    proj = p.projection_rgb()[index]
    axes[0].imshow(image_array(image), interpolation="nearest")
    axes[1].imshow(scale_for_display(proj, scaling), interpolation="nearest")
    for ax in axes[:2]:
        _blank(ax)
    if title:
        row, col = (int(v) for v in p.position[index])
        axes[0].set_title("input", fontsize=10)
        axes[1].set_title(
            f"{p.layer} channel {int(p.channel[index])}: activation {float(p.activation[index]):.3g} at ({row}, {col})",
            fontsize=10,
        )
        fig.supxlabel(f"{p.weights}\nprojection scaling: {scaling} (zero = gray)", fontsize=7, color="0.3")
    return fig


def save_figure(fig, path, dpi: int = 150) -> None:
    """Save a figure atomically (format from the suffix: png, pdf, svg)."""
    from pathlib import Path

    from .io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
