"""Small helpers shared by the analyses: captured forwards, class names, print layout, progress bars."""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..models import Net
from ..models.lock import own_call, owns


class _Stop(Exception):
    """Raised by a forward hook once everything a computation needs has been produced."""


def forward_capture(
    net: Net, x: torch.Tensor, layers: Sequence[str], *, logits: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward of ``net.model`` that keeps copies of the outputs of ``layers``.

    Args:
        net: the model.
        x: (B, 3, H, W) model input.
        layers: paper layer names whose outputs to keep (cloned: torchvision's ReLUs work in place).
        logits: run the whole model and return its output too (needs a classifier); otherwise the forward
            stops after the deepest layer asked for.

    Returns:
        ``({layer: output}, logits or None)``.
    """
    if logits and net.classifier is None:
        raise ValueError(f"{net.describe()} has no classifier, so there are no class scores. "
                         "Hint: load weights with a classifier (weights='imagenet' or 'random')")
    modules = {layer: net.check_layer(layer) for layer in layers}
    deepest = max((net.depth(layer) for layer in layers), default=-1)
    out: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(layer: str, stop: bool):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not owns(token):  # another thread's forward of the model
                return
            out[layer] = output.detach().clone()
            if stop:
                raise _Stop

        return hook

    result = None
    with own_call() as token:
        try:
            for layer, m in modules.items():
                stop = not logits and net.depth(layer) == deepest
                handles.append(m.register_forward_hook(make_hook(layer, stop)))
            with torch.no_grad():
                result = net.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
    return out, (result.detach() if logits else None)


def class_names(net: Net) -> list[str] | None:
    """ImageNet class names when the classifier's weights are ImageNet's, else None (classes unknown)."""
    if net.classifier is None or net.provenance.get("categories") != "ImageNet-1k":
        return None
    from torchvision.models import VGG16_Weights

    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def label(net: Net, k: int) -> str:
    """A class index as a readable label: its ImageNet name, or ``class k`` when names are unknown."""
    names = class_names(net)
    return names[k] if names is not None else f"class {k}"


def classifier_line(net: Net) -> str:
    """What the class panels of a figure rest on, in words."""
    if net.classifier is None:
        return "no classifier in these weights (features only)"
    if class_names(net) is None:
        return "classifier weights are not ImageNet's (class indices have no names)"
    return "ImageNet-1k classifier"


def fill_rgb(net: Net) -> tuple[float, float, float]:
    """The displayed colour of zero in the model's input space: what occluders and uncovered pixels are."""
    rgb = net.deprocess(torch.zeros(1, 3, 1, 1))[0, :, 0, 0].clamp(0, 1)
    return tuple(float(v) for v in rgb)


def fill_words(net: Net) -> str:
    """Zero in the model's input space, in words: the preprocessing's mean colour, or black where the
    preprocessing subtracts no mean."""
    if all(m == 0 for m in net.preprocessing.mean):
        return "zero in the model's input space (black: this preprocessing subtracts no mean)"
    return "zero in the model's input space (the preprocessing's mean colour)"


# --- print layout ---------------------------------------------------------------------------------------
# The figures are drawn at the size they are printed (a page's text width, about 7 inches, or less), so
# that a font size set here is the size on paper: nothing below 7 pt.

PRINT_WIDTH = 7.0  # inches: a page's text width
DPI = 200  # saved resolution: a 224 px map drawn 1.1 inches wide keeps its pixels
TEXT_PT = 7.5  # panel titles, labels, legends, annotations
TICK_PT = 7.0  # tick labels, colorbars, footers: the smallest text of any figure
TITLE_PT = 9.0  # the figure's title


def wrap_to_width(text: str, width_in: float, fontsize: float) -> str:
    """Wrap each line of ``text`` so that it fits ``width_in`` inches at ``fontsize`` points (an average
    character of DejaVu Sans is about 0.55 em wide); a formula (``R_in = R_out·[x > 0]``) is not broken."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    glue = "\x00"

    def protect(line: str) -> str:  # spaces inside [...] and around "=" do not break
        line = re.sub(r"\[[^\]]*\]", lambda m: m.group().replace(" ", glue), line)
        return line.replace(" = ", f"{glue}={glue}")

    return "\n".join(textwrap.fill(protect(line), chars).replace(glue, " ") for line in text.splitlines())


def footer(fig, text: str, *, fontsize: float = TICK_PT) -> None:
    """The figure's caption at its bottom edge, wrapped to the figure's width (as ``supxlabel``, so that
    constrained layout makes room for it)."""
    fig.supxlabel(wrap_to_width(text, fig.get_figwidth() - 0.2, fontsize), fontsize=fontsize, color="0.25")


def title(fig, text: str, *, fontsize: float = TITLE_PT, legend: tuple[list, list] | None = None, ncol: int = 3) -> None:
    """The figure's title, wrapped to its width, and under it a legend of the whole figure.

    For a constrained layout both are put in a band at the top that the layout leaves free (matplotlib
    stacks an "outside" legend on top of a suptitle otherwise).
    """
    text = wrap_to_width(text, fig.get_figwidth() - 0.2, fontsize)
    if legend is None:
        fig.suptitle(text, fontsize=fontsize)
        return
    height = fig.get_figheight()
    head = text_height(text, fontsize) + 0.05
    rows = math.ceil(len(legend[1]) / ncol)
    band = head + rows * TEXT_PT * 1.5 / 72 + 0.08
    fig.text(0.5, 1 - 0.05 / height, text, ha="center", va="top", fontsize=fontsize)
    fig.legend(*legend, loc="upper center", bbox_to_anchor=(0.5, 1 - head / height), ncol=ncol, fontsize=TEXT_PT,
               frameon=False, borderaxespad=0.2, columnspacing=1.5)
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set"):
        engine.set(rect=(0, 0, 1, 1 - band / height))


def text_height(text: str, fontsize: float) -> float:
    """Inches taken by ``text`` (its lines at matplotlib's default line spacing, with a little air)."""
    return (text.count("\n") + 1) * fontsize * 1.25 / 72 + 0.06


def tile_figure(
    nrows: int,
    ncols: int,
    tile: float,
    *,
    suptitle: str,
    caption: str,
    left: float = 0.3,
    right: float = 0.05,
    header: float = 0.0,
    row_gaps: Sequence[float] | None = None,
    wgap: float = 0.04,
    hgap: float = 0.04,
):
    """A figure of square image tiles laid out in inches, with a wrapped title above and caption below.

    Args:
        nrows, ncols: the grid.
        tile: the side of a tile in inches (the figure is as large as its tiles make it).
        suptitle, caption: the figure's title and caption (wrapped to the figure's width).
        left, right: margins in inches (``left`` holds the row labels).
        header: room above the first row (column titles).
        row_gaps: the gap after each row but the last (default ``hgap``); a larger one starts a new block.
        wgap, hgap: the gaps between tiles.

    Returns:
        ``(fig, axes)``, axes a (nrows, ncols) object array, every axis without ticks.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    gaps = list(row_gaps) if row_gaps is not None else [hgap] * (nrows - 1)
    width = left + ncols * tile + (ncols - 1) * wgap + right
    head = wrap_to_width(suptitle, width - 0.2, TITLE_PT)
    foot = wrap_to_width(caption, width - 0.2, TICK_PT)
    top = text_height(head, TITLE_PT) + 0.06 + header
    bottom = text_height(foot, TICK_PT) + 0.06
    height = top + nrows * tile + sum(gaps) + bottom
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((nrows, ncols), dtype=object)
    y = height - top
    for i in range(nrows):
        y -= tile
        for j in range(ncols):
            ax = fig.add_axes([(left + j * (tile + wgap)) / width, y / height, tile / width, tile / height])
            ax.set_xticks([])
            ax.set_yticks([])
            axes[i, j] = ax
        if i < nrows - 1:
            y -= gaps[i]
    fig.text(0.5, 1 - 0.05 / height, head, ha="center", va="top", fontsize=TITLE_PT)
    fig.text(0.5, 0.04 / height, foot, ha="center", va="bottom", fontsize=TICK_PT, color="0.25")
    return fig, axes


def blank(ax) -> None:
    """No ticks, no frame: for image panels."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def progress(iterable: Iterable, *, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    """A ``tqdm.auto`` bar over ``iterable`` (or the iterable itself when disabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def jsonable(v: Any) -> Any:
    """Numbers, tensors and arrays as plain JSON values; NaN becomes None (JSON has no NaN)."""
    import numpy as np

    if isinstance(v, dict):
        return {str(k): jsonable(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(w) for w in v]
    if isinstance(v, torch.Tensor):
        return jsonable(v.detach().cpu().tolist())
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def last_relu(net: Net, block_prefix: str = "relu") -> str:
    """The deepest ReLU of the convolutional part (the paper's "layer 5" output): relu5_3, relu5, ..."""
    spatial = len(net.features)
    names = [n for n in net.layers if n.startswith(block_prefix) and net.depth(n) < spatial]
    if not names:
        raise ValueError(f"{net.arch} has no ReLU in its convolutional part")
    return max(names, key=net.depth)


def deep_layer(net: Net) -> str:
    """The paper's "layer 7": fc7 where a classifier exists, else the last pooling layer."""
    if "fc7" in net.layers:
        return "fc7"
    pools = [n for n in net.layers if n.startswith("pool")]
    return max(pools, key=net.depth)

