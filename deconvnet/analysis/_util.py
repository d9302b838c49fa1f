"""Small helpers shared by the analyses: captured forwards, class names, print layout, progress bars."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from ..engine import default_layers, record, spatial_layers
from ..models import Net


def output_layer(net: Net) -> str | None:
    """The layer whose output is the model's class scores (B, n_classes), or None (features only).

    A VGG or AlexNet: the last classifier layer (``fc8``) where the weights have one. Any other model: the last
    layer its forward finishes, when that output is (B, F) with F > 1 (ResNet ``fc``, GoogLeNet ``fc``,
    DenseNet ``classifier``); a model that ends on maps has none.
    """
    if net.feature_layers() is not None:  # a VGG or AlexNet: its classifier's last layer, if it has one
        return list(net.layers)[-1] if net.classifier is not None else None
    shapes = net.output_shapes()
    if not shapes:
        return None
    last, shape = list(shapes.items())[-1]
    return last if len(shape) == 2 and shape[1] > 1 else None


def forward_capture(
    net: Net, x: torch.Tensor, layers: Sequence[str], *, logits: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward (``engine.record``) that keeps the outputs of ``layers``, and the class scores if asked.

    Args:
        net: the model (a chain or a graph).
        x: (B, 3, H, W) model input.
        layers: layer names whose outputs to keep.
        logits: also return the class scores, the output of ``output_layer(net)`` (needs a classifier);
            the forward stops after the deepest layer needed.

    Returns:
        ``({layer: output}, logits or None)``.
    """
    scores = output_layer(net) if logits else None
    if logits and scores is None:
        raise ValueError(f"{net.describe()} has no classifier, so there are no class scores. "
                         "Hint: load weights with a classifier (weights='imagenet' or 'random')")
    wanted = list(dict.fromkeys([*layers, *([scores] if logits else [])]))
    acts = record(net, x, wanted, switches=False).activations
    return {layer: acts[layer] for layer in layers}, (acts[scores] if logits else None)


def class_names(net: Net) -> list[str] | None:
    """The class names of the outputs where the weights give them (``net.categories``; ImageNet's for a VGG
    whose classifier weights are ImageNet's), else None (classes unknown)."""
    if output_layer(net) is None:
        return None
    if net.categories is not None:
        return list(net.categories)
    if net.provenance.get("categories") != "ImageNet-1k":
        return None
    from torchvision.models import VGG16_Weights

    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def label(net: Net, k: int) -> str:
    """A class index as a readable label: its ImageNet name, or ``class k`` when names are unknown."""
    names = class_names(net)
    return names[k] if names is not None else f"class {k}"


def classifier_line(net: Net) -> str:
    """What the class panels of a figure rest on, in words."""
    if output_layer(net) is None:
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


# the print layout (``deconvnet.plot``): every figure at most a page's width, no text below 7 pt
from ..plot import DPI, PRINT_WIDTH, TEXT_PT, TICK_PT, TITLE_PT, footer, text_height, title, wrap_to_width  # noqa: E402,F401


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


F = TypeVar("F", bound=Callable[..., Any])


def renamed_show_progress(func: F) -> F:
    """``func`` takes ``progress=`` and, for one release, its old name ``show_progress=`` with a
    ``DeprecationWarning`` (the analyses called the package's ``progress`` option ``show_progress``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "show_progress" in kwargs:
            if "progress" in kwargs:
                raise TypeError(f"{func.__name__}() got progress= and show_progress=, its old name. Hint: "
                                "progress= only")
            warnings.warn(f"{func.__name__}(show_progress=...) is deprecated; use progress=...", DeprecationWarning,
                          stacklevel=2)
            kwargs["progress"] = kwargs.pop("show_progress")
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
    """The paper's "layer 5" output: the deepest ReLU of a chain's convolutional part (relu5_3, relu5, ...);
    for a graph, its last stage (``engine.default_layers``: ResNet ``layer4``, GoogLeNet ``inception5b``)."""
    features = net.feature_layers()
    if features is None:
        return default_layers(net)[-1]
    names = [n for n in features if n.startswith(block_prefix)]
    if not names:
        raise ValueError(f"{net.arch} has no ReLU in its convolutional part")
    return max(names, key=net.depth)


def low_layer(net: Net) -> str:
    """The paper's "layer 1": the first max-pool (VGG, AlexNet ``pool1``; ResNet ``maxpool``; GoogLeNet
    ``maxpool1``), else the first stage of ``engine.default_layers``."""
    pools = [n for n in spatial_layers(net) if isinstance(net.layers[n], nn.MaxPool2d)]
    return pools[0] if pools else default_layers(net)[0]


def deep_layer(net: Net) -> str:
    """The paper's "layer 7": fc7 where a VGG classifier exists, else the last pooling layer of a chain; for
    a graph, the feature vector its classifier reads (ResNet and GoogLeNet ``avgpool``), else its last stage."""
    if "fc7" in net.layers:
        return "fc7"
    if net.feature_layers() is not None:
        return max(net.pools(), key=net.depth)
    scores = output_layer(net)
    if scores is None:
        return default_layers(net)[-1]
    order = list(net.output_shapes())
    skip = (nn.Dropout, nn.Identity, nn.Flatten)
    before = [n for n in order[: order.index(scores)] if not isinstance(net.layers[n], skip)
              and not scores.startswith(n + ".")]
    return before[-1] if before else default_layers(net)[-1]
