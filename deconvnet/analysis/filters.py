"""First-layer filters as an image grid (Zeiler & Fergus 2014, Fig. 6).

Each filter (3, k, k) is drawn as a small RGB image: its colour channels put in RGB order (Caffe-style
weights are BGR), then scaled as ``0.5 + w / (2 max|w|)`` so that zero is mid-gray, either per filter
(``"filter"``, default: each filter's pattern at full contrast) or with one maximum for the whole layer
(``"layer"``: filters keep their relative strength). The paper's point, that AlexNet's large-stride 11x11
first layer shows aliasing and dead filters, needs AlexNet's trained weights; offline there are none, and
the figure then says that it shows random weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models import Net
from ..preprocessing import Preprocessing

NORMALISATIONS = ("filter", "layer")


def first_conv(net: Net) -> tuple[str, nn.Conv2d]:
    """The paper name and module of the first convolution (``conv1_1`` for VGG, ``conv1`` for AlexNet)."""
    for name, m in net.layers.items():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError(f"{net.arch} has no Conv2d layer")


def filter_grid(
    weight: torch.Tensor,
    preprocessing: Preprocessing | None = None,
    *,
    normalise: str = "filter",
    cols: int | None = None,
    pad: int = 1,
) -> np.ndarray:
    """Filters (O, 3, k, k) as one (H, W, 3) image in [0, 1], row-major, separated by white lines.

    Args:
        weight: the first layer's weight, channels in the model's input order.
        preprocessing: the model's preprocessing, to put the channels in RGB order (None: already RGB).
        normalise: ``"filter"`` or ``"layer"`` (see the module docstring).
        cols: filters per row (default: about the square root of O).
        pad: white pixels between filters and around the grid.

    Returns:
        The grid; filter f occupies rows ``pad + (f // cols) (k + pad)`` and columns ``pad + (f % cols) (k + pad)``.
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected a first-layer weight (O, 3, k, k), got {tuple(weight.shape)}. Hint: first_conv(net)[1].weight")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise '{normalise}' is not understood. Hint: one of {', '.join(NORMALISATIONS)}")
    w = weight.detach().cpu().double()
    if preprocessing is not None:
        w = preprocessing.to_rgb_order(w)
    o, _, kh, kw = w.shape
    if normalise == "filter":
        m = w.abs().flatten(1).amax(1).view(o, 1, 1, 1)
    else:
        m = w.abs().max().expand(o, 1, 1, 1)
    shown = torch.where(m > 0, 0.5 + w / (2 * m.clamp_min(1e-300)), torch.full_like(w, 0.5))
    cols = cols if cols is not None else int(math.ceil(math.sqrt(o)))
    rows = int(math.ceil(o / cols))
    grid = np.ones((pad + rows * (kh + pad), pad + cols * (kw + pad), 3))
    for f in range(o):
        top, left = pad + (f // cols) * (kh + pad), pad + (f % cols) * (kw + pad)
        grid[top : top + kh, left : left + kw] = shown[f].permute(1, 2, 0).numpy()
    return grid


def plot_first_layer_filters(nets: Sequence[Net], *, axes=None, normalise: str = "filter"):
    """The first-layer filters of each net side by side, titled with the layer, its size and stride and
    the weights.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, len(nets), figsize=(5.2 * len(nets), 6.0), squeeze=False, constrained_layout=True)
        axes = axes[0]
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
    for ax, net in zip(axes, nets):
        name, conv = first_conv(net)
        ax.imshow(filter_grid(conv.weight, net.preprocessing, normalise=normalise), interpolation="nearest")
        k, s = conv.kernel_size, conv.stride
        warn = "\nRANDOM weights: no learned structure to see" if net.provenance.get("weights") == "random" else ""
        ax.set_title(f"{net.arch} {name}: {conv.out_channels} filters {k[0]}x{k[1]}, stride {s[0]}{warn}", fontsize=9)
        ax.set_xlabel(net.describe(), fontsize=6.5, color="0.3", wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"First-layer filters (Zeiler & Fergus 2014, Fig. 6); zero = gray, scaled per {normalise}", fontsize=10)
    return fig
