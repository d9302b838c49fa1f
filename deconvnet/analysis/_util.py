"""Small helpers shared by the analyses: captured forwards, class names, notes, progress bars."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..models import Net


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
            out[layer] = output.detach().clone()
            if stop:
                raise _Stop

        return hook

    result = None
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
        return "no classifier in these weights (features only), so no class panels"
    if class_names(net) is None:
        return "classifier weights are not ImageNet's (class indices have no names)"
    return "ImageNet-1k classifier"


def note_axis(ax, text: str) -> None:
    """Turn an axis into a visible note (used where a panel cannot be computed, instead of faking it)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("0.95")
    for s in ax.spines.values():
        s.set_color("0.6")
        s.set_linestyle("--")
    import textwrap

    wrapped = "\n".join(textwrap.fill(line, 30) for line in text.splitlines())
    ax.text(0.5, 0.5, wrapped, ha="center", va="center", fontsize=8, color="0.25", transform=ax.transAxes)


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
