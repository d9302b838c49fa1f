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
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..models import Net
from ..preprocessing import Preprocessing

NORMALISATIONS = ("filter", "layer")


def first_conv(net: Net) -> tuple[str, nn.Conv2d]:
    """The name and module of the first convolution in forward order (``conv1_1`` for VGG, ``conv1`` for
    AlexNet and ResNet, ``conv1.conv`` for GoogLeNet)."""
    name = net.first_conv()
    return name, net.layers[name]


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
        raise ValueError(f"expected a first-layer weight (O, 3, k, k), got {tuple(weight.shape)}. "
                         "Hint: first_conv(net)[1].weight")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise '{normalise}' is not understood. Hint: one of {', '.join(NORMALISATIONS)}")
    w = weight.detach().cpu().double()
    if preprocessing is not None:
        w = preprocessing.to_rgb_order(w)
    o, _, kh, kw = w.shape
    m = w.abs().flatten(1).amax(1).view(o, 1, 1, 1) if normalise == "filter" else w.abs().max().expand(o, 1, 1, 1)
    shown = torch.where(m > 0, 0.5 + w / (2 * m.clamp_min(1e-300)), torch.full_like(w, 0.5))
    cols = cols if cols is not None else int(math.ceil(math.sqrt(o)))
    rows = int(math.ceil(o / cols))
    grid = np.ones((pad + rows * (kh + pad), pad + cols * (kw + pad), 3))
    for f in range(o):
        top, left = pad + (f // cols) * (kh + pad), pad + (f % cols) * (kw + pad)
        grid[top : top + kh, left : left + kw] = shown[f].permute(1, 2, 0).numpy()
    return grid


def plot_first_layer_filters(
    nets: Sequence[Net], *, axes=None, normalise: str | Sequence[str] = "filter", caption: str = ""
):
    """The first-layer filters of each net side by side (one panel per net and normalisation), titled with
    the layer, its size and stride; the weights are named under each panel (once, below, for one net).

    Args:
        nets: the models.
        axes: one axis per panel (nets x normalisations, net-major); None creates a figure at most 7 inches
            wide.
        normalise: ``"filter"``, ``"layer"`` or both (see the module docstring).
        caption: a note for the bottom of the figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    from ._util import PRINT_WIDTH, TEXT_PT, TICK_PT, footer, title, wrap_to_width

    norms = [normalise] if isinstance(normalise, str) else list(normalise)
    for n in norms:
        if n not in NORMALISATIONS:
            raise ValueError(f"normalise '{n}' is not understood. Hint: one of {', '.join(NORMALISATIONS)}")
    panels = [(net, n) for net in nets for n in norms]
    side = min(3.4, (PRINT_WIDTH - 0.1) / len(panels))
    if axes is None:
        # room for two-line panel titles and the title above, the weights (under each panel or once) below
        fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels) + 0.1, side + 1.25), squeeze=False,
                                 layout="constrained")
        fig.get_layout_engine().set(h_pad=0.06)
        axes = axes[0]
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
    for ax, (net, n) in zip(axes, panels, strict=False):  # a caller's axes may outnumber the panels
        name, conv = first_conv(net)
        ax.imshow(filter_grid(conv.weight, net.preprocessing, normalise=n), interpolation="nearest")
        k, s = conv.kernel_size, conv.stride
        warn = "\nRANDOM weights: no learned structure to see" if net.provenance.get("weights") == "random" else ""
        scaled = f"\nscaled per {n}" if len(norms) > 1 else ""
        ax.set_title(f"{net.arch} {name}: {conv.out_channels} filters {k[0]}x{k[1]}, stride {s[0]}{scaled}{warn}",
                     fontsize=TEXT_PT)
        if len(nets) > 1:
            ax.set_xlabel(wrap_to_width(net.describe(), side - 0.1, TICK_PT), fontsize=TICK_PT, color="0.3")
        ax.set_xticks([])
        ax.set_yticks([])
    how = " or ".join(f"per {n}" for n in norms)
    title(fig, f"First-layer filters (Zeiler & Fergus 2014, Fig. 6); zero = gray, scaled {how}")
    lines = [caption] if caption else []
    if len(nets) == 1:
        lines.append(nets[0].describe())
    if lines:
        footer(fig, "\n".join(lines))
    return fig
