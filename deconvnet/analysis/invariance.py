"""Invariance of the features to vertical translation, scaling and rotation (Zeiler & Fergus, Fig. 5).

Each image is transformed over a range; at a low and a deep layer, the Euclidean distance between the
feature vectors of the original and of the transformed image is measured, and where a classifier exists
the probability of the true (or, if not given, the top) class of the original.

The transforms act on the model input with its size kept. What they uncover is filled with zero in the
model's input space, which is the mean colour of the preprocessing (ImageNet's or Caffe's mean; black for
a preprocessing that subtracts no mean): a translation shifts whole rows (exact, no interpolation); scaling
and rotation use bilinear interpolation about the image centre. An identity transform (shift 0, scale 1,
rotation by a multiple of 360 degrees) leaves the input unchanged, so its features are the original's,
reused rather than recomputed (a recomputation in a batch of another size can differ in the last float
bits): every distance curve is exactly 0 there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..engine import check_input
from ..models import Net
from ..plot import image_array
from ._util import (
    PRINT_WIDTH,
    TEXT_PT,
    TICK_PT,
    classifier_line,
    deep_layer,
    fill_words,
    footer,
    forward_capture,
    label,
    output_layer,
    renamed_show_progress,
    title,
)
from ._util import low_layer as first_pool
from ._util import progress as progress_bar

TRANSFORMS = ("translation", "scale", "rotation")
AXIS_LABELS = {"translation": "vertical translation (pixels)", "scale": "scale (ratio)",
               "rotation": "rotation (degrees)"}


def vertical_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift (B, C, H, W) down by ``pixels`` rows (up if negative), filling the uncovered rows with 0."""
    pixels = int(pixels)
    out = torch.zeros_like(x)
    h = x.shape[-2]
    if abs(pixels) >= h:
        return out
    if pixels >= 0:
        out[..., pixels:, :] = x[..., : h - pixels, :]
    else:
        out[..., : h + pixels, :] = x[..., -pixels:, :]
    return out


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom (B, C, H, W) about its centre by ``factor`` (> 1 enlarges), size kept, uncovered pixels 0."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    if factor == 1:
        return x.clone()
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    return TF.affine(x, angle=0.0, translate=[0, 0], scale=float(factor), shear=[0.0, 0.0],
                     interpolation=InterpolationMode.BILINEAR, fill=0.0)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (B, C, H, W) counter-clockwise about its centre, size kept, uncovered pixels 0."""
    if float(degrees) % 360 == 0:
        return x.clone()
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    return TF.rotate(x, float(degrees), interpolation=InterpolationMode.BILINEAR, fill=0.0)


def is_identity(kind: str, value: float) -> bool:
    """Whether ``apply_transform(x, kind, value)`` returns ``x`` unchanged."""
    if kind == "translation":
        return int(round(value)) == 0
    if kind == "scale":
        return float(value) == 1.0
    return float(value) % 360 == 0


def apply_transform(x: torch.Tensor, kind: str, value: float) -> torch.Tensor:
    """``vertical_shift``, ``rescale`` or ``rotate`` by name (``TRANSFORMS``)."""
    if kind == "translation":
        return vertical_shift(x, int(round(value)))
    if kind == "scale":
        return rescale(x, value)
    if kind == "rotation":
        return rotate(x, value)
    raise ValueError(f"transform '{kind}' is not understood. Hint: one of {', '.join(TRANSFORMS)}")


def default_ranges(size: int, steps: int = 13) -> dict[str, np.ndarray]:
    """The paper's ranges, scaled to the image size: shifts of +-60 px at 224 px, scales 0.6 to 1.8,
    rotations 0 to 360 degrees. Every range contains the identity."""
    shift = max(1, int(round(60 * size / 224)))
    return {
        "translation": np.unique(np.round(np.linspace(-shift, shift, steps)).astype(int)),
        "scale": np.unique(np.append(np.round(np.linspace(0.6, 1.8, steps), 3), 1.0)),
        "rotation": np.linspace(0, 360, steps),
    }


@dataclass
class InvarianceResult:
    """Feature distances and class probabilities along each transform.

    Attributes:
        values: transform -> the values applied (n,).
        layers: (low layer, deep layer).
        distance: transform -> layer -> (n, B) Euclidean distance to the untransformed image's features.
        relative: the same divided by the norm of the untransformed image's features.
        probability: transform -> (n, B) probability of ``classes``; None without a classifier.
        classes: (B,) the class whose probability is followed (None without a classifier);
        class_source: ``"true"`` (given) or ``"top"`` (top class of the untransformed image).
        class_labels: readable names of ``classes``.
        examples: transform -> (n, 3, H, W) the transformed first image (model input).
        names: the images' names; weights: ``net.describe()``; classifier: what the class panels rest on.
    """

    values: dict[str, np.ndarray]
    layers: tuple[str, str]
    distance: dict[str, dict[str, np.ndarray]]
    relative: dict[str, dict[str, np.ndarray]]
    probability: dict[str, np.ndarray] | None
    classes: list[int] | None
    class_source: str | None
    class_labels: list[str] | None
    examples: dict[str, torch.Tensor]
    names: list[str]
    weights: str
    classifier: str

    def summary(self) -> dict:
        """Per transform: the values and, per image, the curves (JSON-ready lists)."""
        out = {}
        for kind, vals in self.values.items():
            out[kind] = {"values": vals.tolist(),
                         **{f"distance_{layer}": self.distance[kind][layer].T.tolist() for layer in self.layers},
                         **{f"relative_distance_{layer}": self.relative[kind][layer].T.tolist()
                            for layer in self.layers}}
            if self.probability is not None:
                out[kind]["probability"] = self.probability[kind].T.tolist()
        return out


@renamed_show_progress
def invariance_curves(
    net: Net,
    x: torch.Tensor,
    *,
    ranges: Mapping[str, Sequence[float]] | None = None,
    low_layer: str | None = None,
    high_layer: str | None = None,
    true_classes: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> InvarianceResult:
    """Measure how the features change along vertical translation, scaling and rotation.

    Args:
        net: the model.
        x: (B, 3, H, W) model input.
        ranges: transform -> values (default ``default_ranges`` for the image size); any subset of
            ``TRANSFORMS``.
        low_layer: the low layer (default: the paper's layer 1, the first max-pool: ``pool1``, ResNet ``maxpool``).
        high_layer: the deep layer (default fc7 where a VGG classifier exists, else the last pool; for a graph the
            feature vector its classifier reads, ResNet ``avgpool``).
        true_classes: the true class of each image; None follows the top class of the original.
        names: a name per image, for the legend.
        batch_size: transformed images per forward pass.
        progress: a tqdm bar over the forward passes.

    Returns:
        An ``InvarianceResult``.
    """
    x = check_input(x, net)
    b = x.shape[0]
    high_layer = high_layer if high_layer is not None else deep_layer(net)
    layers = (low_layer if low_layer is not None else first_pool(net), high_layer)
    for layer in layers:
        net.check_layer(layer)
    ranges = dict(ranges) if ranges is not None else default_ranges(x.shape[-1])
    unknown = [k for k in ranges if k not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {unknown}. Hint: use {', '.join(TRANSFORMS)}")
    if true_classes is not None and len(true_classes) != b:
        raise ValueError(f"{len(true_classes)} true classes for {b} images. Hint: one class index per image")
    with_probs = output_layer(net) is not None
    names = list(names) if names is not None else [f"image {i}" for i in range(b)]

    base, logits = forward_capture(net, x, layers, logits=with_probs)
    classes = None
    if with_probs:
        classes = list(true_classes) if true_classes is not None else logits.argmax(1).tolist()
    jobs = [(kind, i, v) for kind, vals in ranges.items() for i, v in enumerate(vals) if not is_identity(kind, v)]
    values = {k: np.asarray(v) for k, v in ranges.items()}
    distance = {k: {layer: np.zeros((len(v), b)) for layer in layers} for k, v in values.items()}
    relative = {k: {layer: np.zeros((len(v), b)) for layer in layers} for k, v in values.items()}
    probability = {k: np.zeros((len(v), b)) for k, v in values.items()} if with_probs else None
    examples = {k: torch.zeros(len(v), *x.shape[1:]) for k, v in values.items()}
    for kind, vals in values.items():  # identities: the original's features (distance 0), probability
        for i, v in enumerate(vals):
            if is_identity(kind, v):
                examples[kind][i] = x[0].cpu()
                if with_probs:
                    softmax = torch.softmax(logits.double(), 1)
                    probability[kind][i] = softmax[torch.arange(b), torch.tensor(classes)].cpu().numpy()
    per_pass = max(1, batch_size // b)
    chunks = [jobs[s : s + per_pass] for s in range(0, len(jobs), per_pass)]
    for chunk in progress_bar(chunks, enabled=progress, desc="invariance"):
        xs = torch.cat([apply_transform(x, kind, v) for kind, _, v in chunk])
        feats, out = forward_capture(net, xs, layers, logits=with_probs)
        probs = torch.softmax(out.double(), 1) if with_probs else None
        for j, (kind, i, _) in enumerate(chunk):
            rows = slice(j * b, (j + 1) * b)
            examples[kind][i] = xs[j * b].cpu()
            for layer in layers:
                d = (feats[layer][rows] - base[layer]).flatten(1).double().norm(dim=1)
                distance[kind][layer][i] = d.cpu().numpy()
                relative[kind][layer][i] = (d / base[layer].flatten(1).double().norm(dim=1)).cpu().numpy()
            if with_probs:
                probability[kind][i] = probs[rows][torch.arange(b), torch.tensor(classes)].cpu().numpy()
    labels = [label(net, c) for c in classes] if classes is not None else None
    source = None if classes is None else ("true" if true_classes is not None else "top")
    return InvarianceResult(values, layers, distance, relative, probability, classes, source, labels, examples,
                            names, net.describe(), classifier_line(net))


def plot_invariance(result: InvarianceResult, net: Net, *, axes=None, n_examples: int = 5):
    """The paper's Figure 5: one column per transform; rows: examples of the transformed first image, the
    low-layer distance, the deep-layer distance and, where a classifier exists, the probability of the
    class. Without a classifier there is no probability row; the caption says so once.

    Args:
        result: from ``invariance_curves``.
        net: the model (for display of the inputs).
        axes: a (rows, transforms) array of axes, rows 3 (no classifier) or 4; None creates a figure
            7 inches wide.
        n_examples: transformed examples shown in the first row.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    kinds = list(result.values)
    with_probs = result.probability is not None
    nrows = 4 if with_probs else 3
    if axes is None:
        fig, axes = plt.subplots(nrows, len(kinds), figsize=(PRINT_WIDTH, 0.75 + 1.55 * (nrows - 1) + 1.3),
                                 squeeze=False, gridspec_kw={"height_ratios": [0.5] + [1] * (nrows - 1)},
                                 layout="constrained")
    else:
        axes = np.asarray(axes).reshape(nrows, len(kinds))
        fig = axes[0, 0].figure
    low, high = result.layers
    for c, kind in enumerate(kinds):
        vals = result.values[kind]
        pick = np.linspace(0, len(vals) - 1, min(n_examples, len(vals))).round().astype(int)
        identity = [i for i, v in enumerate(vals) if is_identity(kind, v)]
        if identity and not any(is_identity(kind, vals[i]) for i in pick):  # show the untransformed image too
            pick[np.argmin(np.abs(pick - identity[0]))] = identity[0]
        pick = np.unique(pick)
        strip = [image_array(net.deprocess(result.examples[kind][i : i + 1])[0]) for i in pick]
        h = strip[0].shape[0]
        gap = np.ones((h, max(2, h // 12), 3))
        montage = np.concatenate(sum(([s, gap] for s in strip), [])[:-1], axis=1)
        ax = axes[0, c]
        ax.imshow(montage)
        ax.set_xticks([(i + 0.5) * (montage.shape[1] + gap.shape[1]) / len(pick) - gap.shape[1] / 2
                       for i in range(len(pick))])
        ax.set_xticklabels([f"{vals[i]:g}" for i in pick], fontsize=TICK_PT)
        ax.tick_params(length=0, pad=1.5)
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
        ax.set_title(AXIS_LABELS[kind].capitalize(), fontsize=TEXT_PT + 0.5)
        rows = [(1, low, result.distance[kind][low]), (2, high, result.distance[kind][high])]
        if with_probs:
            rows.append((3, None, result.probability[kind]))
        for row, layer, curves in rows:
            ax = axes[row, c]
            for j, name in enumerate(result.names):
                lab = name if layer is not None else f"{name}: {result.class_labels[j]}"
                ax.plot(vals, curves[:, j], "o-", ms=2.5, lw=1.1, color=f"C{j}", label=lab)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=TICK_PT, pad=1.5)
            if row < nrows - 1:
                ax.sharex(axes[nrows - 1, c])
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel(AXIS_LABELS[kind], fontsize=TEXT_PT)
            if c == 0:
                ax.set_ylabel(f"distance, {layer}" if layer is not None else f"P({result.class_source} class)",
                              fontsize=TEXT_PT)
            if layer is None:
                top = float(np.max(result.probability[kind]))
                # near-uniform probabilities (a random classifier): a 0..1 axis would show a flat line
                ax.set_ylim(*((-0.02, 1.02) if top > 0.2 else (0, top * 1.15)))
    handles, labels = axes[nrows - 1 if with_probs else 1, 0].get_legend_handles_labels()
    title(fig, "Invariance to vertical translation, scale and rotation (Zeiler & Fergus 2014, Fig. 5): Euclidean "
               "distance between the feature vectors of the transformed and the original image",
          legend=(handles, labels), ncol=min(len(labels), 3))
    zoomed = with_probs and any(float(np.max(p)) <= 0.2 for p in result.probability.values())
    probs = ("Probability of the top class not shown: " + result.classifier + "." if not with_probs else
             f"Class: {result.classifier}" + ("; probability axis zoomed where the classifier is near uniform." if
                                               zoomed else "."))
    footer(fig, f"Top: the first image transformed; uncovered pixels are {fill_words(net)}. {probs}"
                f"\n{result.weights}")
    return fig
