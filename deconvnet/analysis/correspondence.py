"""Correspondence analysis (Zeiler & Fergus 2014, Fig. 8 and Table 1).

The same object part (left eye, right eye, nose) is occluded in several images of one kind of object, and
at each layer l the change of the feature vector, eps_i = x_i - x~_i (original minus occluded), is compared
between images by the sign of each feature:

    Delta_l = sum over i != j of H(sign(eps_i), sign(eps_j)),   H the Hamming distance.

Lower means that occluding the part changes the representation more consistently across images: the
layer puts the parts of different images in correspondence. Random occluder positions are the control.

Choices (the paper leaves them open):

* Normalisation. The paper's Table 1 gives values near 0.07 under the heading "mean feature sign change",
  so its H is read here as a fraction: H = (number of features whose signs differ) / D, D the length of the
  feature vector, averaged over the pairs (the paper's sum divided by n(n-1)). That makes layers of
  different sizes comparable. ``sign`` is three-valued (-1, 0, +1): a ReLU feature that is zero with and
  without the occluder has eps = 0, and two such zeros agree. The un-normalised sum of the formula is
  reported too (``delta``).
* Spread. The table's "±" is the standard deviation over the n(n-1)/2 image pairs for a part, and over
  the random draws for the control (each draw is one score over all pairs).
* The control: in each image, an occluder of the same size as the part's box, at a uniformly random
  position inside the object's region ("random parts of the object"; the whole image when no region is
  given), seeded, in ``draws`` draws.
* The occluder is zero in the model's input space (the preprocessing's mean colour), as in Fig. 7 here.
* Layers: the paper's layers 5 and 7 are taken as ``relu5_3`` and ``relu7`` for VGG16 (``relu5`` and
  ``relu7`` for AlexNet). Weights without a classifier have no layer 7: then the last ReLUs of the last
  three conv blocks (``relu3_3``, ``relu4_3``, ``relu5_3``), so that the trend with depth is still seen.

Boxes are ``(top, left, bottom, right)``, bottom and right exclusive, in the pixels of the images as given
(a file or bundled photograph as it loads); ``correspondence`` maps them through the same resize and centre
crop as the images. The hand-set boxes of the bundled faces are in ``parts.json`` (``bundled_parts``).
Reading and mapping the boxes: ``part_boxes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import DEFAULT_SIZE
from ..engine import check_input, record
from ..images import ImageLike, load_rgb
from ..models import Net
from ..plot import image_array
from ._util import (
    PRINT_WIDTH,
    TEXT_PT,
    TICK_PT,
    TITLE_PT,
    blank,
    fill_words,
    jsonable,
    last_relu,
    renamed_show_progress,
    text_height,
    wrap_to_width,
)
from ._util import progress as progress_bar
from .part_boxes import (
    OBJECT,
    PARTS_FILE,
    Box,
    PartBoxes,
    _check_box,
    _random_box,
    bundled_parts,
    load_parts,
    map_box,
)

__all__ = [
    "OBJECT",
    "PARTS_FILE",
    "PART_COLOURS",
    "CorrespondenceResult",
    "PartBoxes",
    "bundled_parts",
    "correspondence",
    "default_layers",
    "delta",
    "load_parts",
    "map_box",
    "mean_sign_change",
    "pairwise_sign_distance",
    "plot_correspondence",
    "write_correspondence",
]



# --- the score ---------------------------------------------------------------------------------------------

def pairwise_sign_distance(eps: torch.Tensor) -> torch.Tensor:
    """(n, D) differences -> (n, n) float64: the fraction of the D features whose signs (-1, 0, +1) differ."""
    if eps.dim() != 2 or eps.shape[0] < 2 or eps.shape[1] < 1:
        raise ValueError(f"expected (n >= 2 images, D >= 1 features) differences, got shape {tuple(eps.shape)}")
    s = torch.sign(eps)
    return (s[:, None, :] != s[None, :, :]).double().mean(2)


def delta(eps: torch.Tensor) -> float:
    """The paper's Delta_l: the sum over i != j of the Hamming distance of sign(eps_i) and sign(eps_j) (counts)."""
    d = pairwise_sign_distance(eps) * eps.shape[1]
    return float(d.sum() - d.diagonal().sum())


def mean_sign_change(eps: torch.Tensor) -> tuple[float, float]:
    """The normalised score: mean over the image pairs of H / D (= ``delta / (n (n - 1) D)``) and its standard
    deviation over the n(n-1)/2 unordered pairs."""
    d = pairwise_sign_distance(eps)
    i, j = torch.triu_indices(d.shape[0], d.shape[0], 1)
    v = d[i, j]
    return float(v.mean()), float(v.std(unbiased=False))


# --- the experiment ---------------------------------------------------------------------------------------

def default_layers(net: Net) -> list[str]:
    """The paper's layers 5 and 7 (``relu5_3``/``relu5`` and ``relu7``) where a classifier exists; without one,
    the last ReLU of each of the last three conv blocks. Graphs: the last two top-level modules with maps."""
    if not net.can_show_stages:  # a graph: its layers go by module paths, not the paper's names
        shapes = net.output_shapes()
        top = [n for n in net.layers if "." not in n and len(shapes.get(n, ())) == 4]
        return top[-2:]
    five = last_relu(net)
    if net.classifier is not None and "relu7" in net.layers:
        return [five, "relu7"]
    relus = [n for n in net.layers if n.startswith("relu") and net.depth(n) < len(net.features)]
    last_of_block: dict[str, str] = {}
    for n in relus:
        last_of_block[n.split("_")[0]] = n
    return list(last_of_block.values())[-3:]


@dataclass
class CorrespondenceResult:
    """Table 1 and Fig. 8's data.

    Attributes:
        names, parts, layers: the images, parts and layers.
        boxes: part -> one box per image, in model-input pixels.
        random_boxes: part -> one list per draw of a box per image.
        score: part -> layer -> (mean sign change over pairs, its std over pairs).
        random: part -> layer -> (mean over draws of the draws' scores, std over draws).
        delta: part -> layer -> the paper's un-normalised sum (counts).
        random_delta: part -> layer -> mean over draws of the un-normalised sum.
        dims: layer -> D, the length of its feature vector.
        input: (n, 3, H, W) the unoccluded model input; weights: ``net.describe()``; fill: the occluder in words.
    """

    names: list[str]
    parts: list[str]
    layers: list[str]
    boxes: dict[str, list[Box]]
    random_boxes: dict[str, list[list[Box]]]
    score: dict[str, dict[str, tuple[float, float]]]
    random: dict[str, dict[str, tuple[float, float]]]
    delta: dict[str, dict[str, float]]
    random_delta: dict[str, dict[str, float]]
    dims: dict[str, int]
    input: torch.Tensor
    weights: str
    fill: str
    draws: int
    seed: int
    size: int | None
    preprocessing: Any = field(repr=False, default=None)

    def table(self) -> str:
        """Table 1 as text: a row per part, per layer the mean sign change ± std and its random control."""
        head = f"{'part':10s}" + "".join(f"  {layer + ' part':>17s}  {layer + ' random':>17s}" for layer in self.layers)
        rows = [head]
        for p in self.parts:
            cells = "".join(f"  {self.score[p][layer][0]:9.4f} ± {self.score[p][layer][1]:.4f}"
                            f"  {self.random[p][layer][0]:9.4f} ± {self.random[p][layer][1]:.4f}"
                            for layer in self.layers)
            rows.append(f"{p:10s}{cells}")
        return "\n".join(rows)

    def summary(self) -> dict:
        """Every number, JSON-ready."""
        return jsonable({
            "what": "Zeiler & Fergus Table 1: mean feature sign change (normalised Hamming distance of sign(eps_i), "
                    "sign(eps_j), eps = features(original) - features(occluded), averaged over image pairs i != j); "
                    "lower = more consistent",
            "normalisation": "H / D per pair (D = feature-vector length), mean over the n(n-1) ordered pairs; std over "
                             "the n(n-1)/2 unordered pairs (parts) or over the draws (random)",
            "images": self.names, "n_images": len(self.names), "parts": self.parts, "layers": self.layers,
            "dims": self.dims, "size": self.size, "draws": self.draws, "seed": self.seed, "occluder": self.fill,
            "weights": self.weights,
            "boxes_model_input": self.boxes, "random_boxes_model_input": self.random_boxes,
            "table": {p: {layer: {"mean": self.score[p][layer][0], "std": self.score[p][layer][1],
                                  "random_mean": self.random[p][layer][0], "random_std": self.random[p][layer][1],
                                  "delta_sum": self.delta[p][layer], "random_delta_sum": self.random_delta[p][layer]}
                          for layer in self.layers} for p in self.parts},
        })


def _inputs(net: Net, images: Sequence[ImageLike] | torch.Tensor,
            size: int | None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Model inputs of the images, and each image's original (width, height)."""
    if isinstance(images, torch.Tensor):
        x = check_input(images, net)
        return x, [(x.shape[-1], x.shape[-2])] * x.shape[0]
    pils = [load_rgb(img) for img in images]
    xs = [net.preprocess(p, size=size, crop=size) for p in pils]
    shapes = {tuple(x.shape[-2:]) for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"the images have different sizes {sorted(shapes)} after preprocessing. Hint: give size=224")
    return torch.cat(xs), [p.size for p in pils]


@renamed_show_progress
def correspondence(
    net: Net,
    images: Sequence[ImageLike] | torch.Tensor,
    parts: Mapping[str, Sequence[Box]],
    layers: Sequence[str] | None = None,
    *,
    objects: Sequence[Box | None] | None = None,
    size: int | None = DEFAULT_SIZE,
    draws: int = 10,
    seed: int = 0,
    names: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> CorrespondenceResult:
    """Occlude the same part in every image and score, per layer, how consistently the features change.

    Args:
        net: the model (chain or graph).
        images: image-likes (files, bundled photograph names, PIL images, arrays), resized and centre-cropped to
            ``size`` (None: as they are), or a (n, 3, H, W) model-input tensor.
        parts: part name -> one box ``(top, left, bottom, right)`` per image, in the pixels of the images as
            given (mapped through the resize and crop).
        layers: default ``default_layers(net)``.
        objects: per image, the region of the random control in the same pixels (None: the whole image).
        size: resize the shorter side and centre-crop to this side.
        draws: random-position draws of the control.
        seed: of the random positions.
        names: a name per image (default: the image names when they are strings).
        batch_size: occluded images per forward.
        progress: a tqdm bar over the forwards.

    Returns:
        A ``CorrespondenceResult``; ``table()`` prints Table 1, ``plot_correspondence`` draws Fig. 8's panels.
    """
    n = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    _check_arguments(n, parts, draws, objects)
    layers = list(dict.fromkeys(net.resolve(layer) for layer in (layers or default_layers(net))))
    x, wh = _inputs(net, images, size)
    hw = tuple(x.shape[-2:])
    side = None if isinstance(images, torch.Tensor) else size
    boxes = {p: [map_box(_check_box(b, f"image {i} {p}"), wh[i], side) for i, b in enumerate(bs)]
             for p, bs in parts.items()}
    for p, bs in boxes.items():
        for i, b in enumerate(bs):
            if b[0] >= b[2] or b[1] >= b[3]:
                raise ValueError(f"part '{p}' of image {i} lies outside the {hw[1]}x{hw[0]} input after the resize and "
                                 "crop. Hint: check the box, or give size=None")
    regions = [(0, 0, *hw) if objects is None or objects[i] is None
               else map_box(_check_box(objects[i], f"image {i} object"), wh[i], side) for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    random_boxes = {p: [[_random_box((b[2] - b[0], b[3] - b[1]), regions[i], hw, g) for i, b in enumerate(boxes[p])]
                        for _ in range(draws)] for p in boxes}
    # every occluded input: (key, image, box)
    jobs = [(("part", p), i, b) for p, bs in boxes.items() for i, b in enumerate(bs)]
    jobs += [(("random", p, d), i, b) for p, ds in random_boxes.items() for d, bs in enumerate(ds)
             for i, b in enumerate(bs)]
    clean = {layer: a.flatten(1).double().cpu()
             for layer, a in record(net, x, layers, switches=False).activations.items()}
    feats = _occluded_features(net, x, jobs, layers, n, batch_size=batch_size, progress=progress)

    def eps(key, layer) -> torch.Tensor:
        return clean[layer] - torch.stack(feats[key][layer])

    score = {p: {layer: mean_sign_change(eps(("part", p), layer)) for layer in layers} for p in boxes}
    dl = {p: {layer: delta(eps(("part", p), layer)) for layer in layers} for p in boxes}
    random, random_delta = {}, {}
    for p in boxes:
        random[p], random_delta[p] = {}, {}
        for layer in layers:
            per_draw = np.array([mean_sign_change(eps(("random", p, d), layer))[0] for d in range(draws)])
            random[p][layer] = (float(per_draw.mean()), float(per_draw.std()))
            random_delta[p][layer] = float(np.mean([delta(eps(("random", p, d), layer)) for d in range(draws)]))
    if names is None:
        names = ([Path(str(i)).stem for i in images] if not isinstance(images, torch.Tensor)
                 and all(isinstance(i, (str, os.PathLike)) for i in images) else [f"image {i}" for i in range(n)])
    return CorrespondenceResult(list(names), list(boxes), layers, boxes, random_boxes, score, random, dl, random_delta,
                                {layer: int(clean[layer].shape[1]) for layer in layers}, x.detach().cpu(),
                                net.describe(), fill_words(net), draws, seed, side, net.preprocessing)


def _check_arguments(n: int, parts: Mapping[str, Sequence[Box]], draws: int,
                     objects: Sequence[Box | None] | None) -> None:
    """The refusals of ``correspondence`` before any work: ``n`` images, a box per image for each part."""
    if n < 2:
        raise ValueError(f"correspondence compares images: {n} given. Hint: at least 2 images of one kind of object")
    if not parts:
        raise ValueError("no parts. Hint: parts={'left_eye': [box per image], ...}")
    if draws < 1:
        raise ValueError(f"draws={draws}: the random control needs at least 1 draw")
    for p, boxes in parts.items():
        if len(boxes) != n:
            raise ValueError(f"part '{p}' has {len(boxes)} boxes for {n} images. Hint: one box per image, in order")
    if objects is not None and len(objects) != n:
        raise ValueError(f"{len(objects)} object regions for {n} images. Hint: one per image, or None")


def _occluded_features(net: Net, x: torch.Tensor, jobs: Sequence[tuple], layers: Sequence[str], n: int, *,
                       batch_size: int, progress: bool) -> dict[tuple, dict[str, list]]:
    """The features of every occluded input, ``batch_size`` at a time: key -> layer -> one flat float64 vector
    per image (``jobs``: ``(key, image, (top, left, bottom, right))``)."""
    feats: dict[tuple, dict[str, list]] = {}
    chunks = [jobs[s : s + batch_size] for s in range(0, len(jobs), batch_size)]
    for chunk in progress_bar(chunks, enabled=progress, desc="correspondence"):
        xs = x[[i for _, i, _ in chunk]].clone()
        for k, (_, _, (top, left, bottom, right)) in enumerate(chunk):
            xs[k, :, top:bottom, left:right] = 0.0  # zero in the model's input space: the preprocessing's mean colour
        acts = record(net, xs, layers, switches=False).activations
        for k, (key, i, _) in enumerate(chunk):
            feats.setdefault(key, {layer: [None] * n for layer in layers})
            for layer in layers:
                feats[key][layer][i] = acts[layer][k].flatten().double().cpu()
    return feats


# --- drawing ----------------------------------------------------------------------------------------------

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
