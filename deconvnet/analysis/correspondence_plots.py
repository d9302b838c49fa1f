"""The figure of ``correspondence`` (Zeiler & Fergus 2014, Fig. 8 and Table 1): the occluded images and the
bar chart of the mean feature sign change per layer; ``write_correspondence`` saves it with its numbers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..plot import image_array
from ._util import (
    PRINT_WIDTH,
    TEXT_PT,
    TICK_PT,
    TITLE_PT,
    blank,
    text_height,
    wrap_to_width,
)

if TYPE_CHECKING:
    from .correspondence import CorrespondenceResult

PART_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def plot_correspondence(result: CorrespondenceResult, *, width: float = PRINT_WIDTH):
    """Fig. 8 and Table 1: the images with each part's occluder (and one draw of the random control), and a
    bar chart per layer of the mean feature sign change of each part beside its random control.

    Returns:
        A new matplotlib figure, ``width`` inches wide.
    """
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    n, parts = len(result.names), result.parts
    rows = parts + ["random"]
    label_w, grid_w = 0.62, min(3.0, 0.95 * n)
    tile = (grid_w - 0.04 * (n - 1)) / n
    chart_l = label_w + grid_w + 0.55
    chart_w = width - chart_l - 0.1
    title = (f"Correspondence (Zeiler & Fergus Table 1): occluding the same part in {n} images; lower = the features "
             f"change more consistently")
    caption = (f"Left: the images as the model sees them ({result.size or 'original'} px), each part occluded by "
               f"{result.fill}; the last row is one of {result.draws} draws of the control: the same box at a random "
               f"position in the face. Right: mean feature sign change, the normalised Hamming distance of "
               f"sign(x_i - x~_i) between images (fraction of the D features whose signs differ), averaged over the "
               f"{n * (n - 1)} ordered pairs; error bars: std over pairs (parts) or over draws (random). Only {n} "
               f"images: the spread is large. Weights: {result.weights}.")
    head = wrap_to_width(title, width - 0.2, TITLE_PT)
    foot = wrap_to_width(caption, width - 0.2, TICK_PT)
    top = text_height(head, TITLE_PT) + 0.06 + TEXT_PT * 1.5 / 72
    bottom = text_height(foot, TICK_PT) + 0.1
    body = len(rows) * tile + (len(rows) - 1) * 0.04
    height = top + max(body, 2.2) + bottom
    fig = plt.figure(figsize=(width, height))
    fig.text(0.5, 1 - 0.05 / height, head, ha="center", va="top", fontsize=TITLE_PT)
    fig.text(0.5, 0.04 / height, foot, ha="center", va="bottom", fontsize=TICK_PT, color="0.25")
    rgb = result.preprocessing.inverse(result.input).clamp(0, 1) if result.preprocessing is not None else result.input
    y = height - top
    for j, name in enumerate(result.names):
        fig.text((label_w + j * (tile + 0.04) + tile / 2) / width, (y + 0.03) / height, name, ha="center",
                 va="bottom", fontsize=TEXT_PT)
    for row in rows:
        y -= tile
        fig.text((label_w - 0.05) / width, (y + tile / 2) / height, row.replace("_", " "), ha="right", va="center",
                 fontsize=TEXT_PT)
        for j in range(n):
            box = result.random_boxes[parts[0]][0][j] if row == "random" else result.boxes[row][j]
            img = rgb[j].clone()
            fill = result.preprocessing.inverse(torch.zeros(1, 3, 1, 1))[0, :, 0, 0].clamp(0, 1) \
                if result.preprocessing is not None else torch.zeros(3)
            y0, x0, y1, x1 = box
            img[:, y0:y1, x0:x1] = fill.view(3, 1, 1)
            ax = fig.add_axes([(label_w + j * (tile + 0.04)) / width, y / height, tile / width, tile / height])
            ax.imshow(image_array(img), interpolation="antialiased")
            colour = "0.5" if row == "random" else PART_COLOURS[parts.index(row) % len(PART_COLOURS)]
            ax.add_patch(mpatches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                            lw=1.2))
            blank(ax)
        y -= 0.04
    ax = fig.add_axes([chart_l / width, (bottom + 0.35) / height, chart_w / width,
                       (height - top - bottom - 0.35) / height])
    layers = result.layers
    group = len(parts) * 2
    bw = 0.8 / group
    for k, p in enumerate(parts):
        colour = PART_COLOURS[k % len(PART_COLOURS)]
        for m, (values, hatch, alpha) in enumerate(((result.score[p], None, 1.0), (result.random[p], "///", 0.35))):
            xs = np.arange(len(layers)) - 0.4 + bw * (2 * k + m + 0.5)
            ax.bar(xs, [values[layer][0] for layer in layers], bw, yerr=[values[layer][1] for layer in layers],
                   color=colour, alpha=alpha, hatch=hatch, edgecolor=colour, lw=0.5,
                   error_kw={"lw": 0.6, "capsize": 1.5},
                   label=f"{p.replace('_', ' ')}" + (" (random)" if m else ""))
    ax.set_xticks(np.arange(len(layers)), [f"{layer}\nD={result.dims[layer]}" for layer in layers], fontsize=TICK_PT)
    ax.tick_params(axis="y", labelsize=TICK_PT)
    ax.set_ylabel("mean feature sign change", fontsize=TEXT_PT)
    ax.legend(fontsize=TICK_PT, ncol=2, frameon=False, loc="upper left", handlelength=1.2, columnspacing=0.8)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    return fig


def write_correspondence(result: CorrespondenceResult, out: str | os.PathLike, *, dpi: int = 200) -> tuple[Path, Path]:
    """Save the figure (PNG/PDF/SVG by suffix) and ``<stem>.json`` (every number) beside it."""
    import matplotlib.pyplot as plt

    from ..io import write_json
    from ..plot import save_figure

    out = Path(out)
    fig = plot_correspondence(result)
    save_figure(fig, out, dpi=dpi)
    plt.close(fig)
    return out, write_json(result.summary(), out.with_suffix(".json"))
