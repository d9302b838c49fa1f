"""Figure 2 of Zeiler & Fergus: a feature's top-k projections beside their receptive-field patches.

Each of a feature's top activations (from ``scan_top_k``) is projected on its own image, and both the
projection and the image are cropped to the unit's receptive-field box (padded where the box leaves the
image: projections with zero, shown mid-gray; patches with light gray), so all tiles of a layer have one size.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import positive_int
from .data import Items
from .engine import Deconvnet, receptive_field
from .io import write_json
from .models import Net
from .models.weights import sha256_file
from .plot import (
    DEFAULT_SCALING,
    PRINT_WIDTH,
    SCALINGS,
    TICK_PT,
    TITLE_PT,
    _blank,
    describe_scaling,
    save_figure,
    scale_for_display,
    text_height,
    wrap_to_width,
)
from .scan import TopK
from .tiles import FeatureTiles, Patches, entries_of, project_entries

SELECTIONS = ("random", "strongest")


def select_features(topk: TopK, layer: str, n: int, how: str = "random", seed: int = 0) -> list[int]:
    """Channels to show: a seeded random subset (as the paper) or the ``n`` strongest (by top-1 value).

    Only channels with a full top-k (k non-empty entries, top activation > 0) are eligible.
    """
    if how not in SELECTIONS:
        raise ValueError(f"feature selection '{how}' is not understood. Hint: one of {', '.join(SELECTIONS)}")
    n = positive_int("the number of features", n)
    full = ((topk.images[layer] >= 0).all(1) & (topk.values[layer][:, 0] > 0)).nonzero().flatten().tolist()
    if how == "strongest":
        top1 = topk.values[layer][:, 0]
        return sorted(full, key=lambda c: (-float(top1[c]), c))[:n]
    rng = random.Random(seed)
    return sorted(rng.sample(full, min(n, len(full))))


def feature_tiles(
    net: Net,
    dataset: Any,
    topk: TopK,
    layer: str,
    channels: Sequence[int],
    *,
    deconv: Deconvnet | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[FeatureTiles]:
    """Project each kept activation of ``channels`` on its own image and crop to its receptive field.

    The projections are batched: each batch holds up to ``batch_size`` (image, channel, unit) triples,
    one forward and one deconv pass for all of them.
    """
    deconv = deconv or Deconvnet(net)
    rf = receptive_field(net, layer)
    jobs = [e for c in channels for e in entries_of(topk, layer, c)]
    if not jobs:
        return []
    proj_tiles: list[torch.Tensor] = []
    patch_tiles: list[torch.Tensor] = []
    boxes: list[tuple[int, int, int, int]] = []
    bar = tqdm(total=len(jobs), desc=f"project {layer}", unit="proj", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        x = torch.stack([dataset[e.image][0] for e in chunk])  # one image per entry
        proj_tiles += project_entries(deconv, x, layer, range(len(chunk)), chunk)
        for e in chunk:
            box = rf.box(e.row, e.col)
            boxes.append(box)
            patch_tiles.append(Patches(dataset.rgb(e.image), max(rf.size)).crop(box))
        bar.update(len(chunk))
    bar.close()
    out, j = [], 0
    for c in channels:
        entries = topk.entries(layer, c)
        n = len(entries)
        out.append(FeatureTiles(
            layer=layer, channel=c,
            values=torch.tensor([e[0] for e in entries]),
            images=torch.tensor([e[1] for e in entries]),
            positions=torch.tensor([e[2] for e in entries]),
            boxes=boxes[j : j + n],
            projections=torch.stack(proj_tiles[j : j + n]),
            patches=torch.stack(patch_tiles[j : j + n]),
            labels=[Items(dataset).label(e[1]) for e in entries],
            sources=[Items(dataset).source(e[1]) for e in entries],
        ))
        j += n
    return out


def mosaic(tiles: Sequence[np.ndarray], cols: int, gap: int = 1, fill: float = 1.0) -> np.ndarray:
    """(H, W, 3) tiles -> one image of ``cols`` columns with ``gap``-pixel separators."""
    n = len(tiles)
    rows = math.ceil(n / cols)
    th, tw = tiles[0].shape[:2]
    out = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), fill)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = t
    return out


def plot_feature(tiles: FeatureTiles, axes: Sequence, scaling: str = DEFAULT_SCALING, title: bool = True):
    """Draw a feature's projections (3x3 for k = 9) on ``axes[0]`` and the patches on ``axes[1]``.

    Returns:
        The figure of the axes.
    """
    n = len(tiles.values)
    cols = math.ceil(math.sqrt(n))
    gap = max(1, tiles.patches.shape[-1] // 24)
    projs = [scale_for_display(p, scaling) for p in tiles.projections]
    patches = [p.permute(1, 2, 0).double().numpy() for p in tiles.patches]
    axes[0].imshow(mosaic(projs, cols, gap), interpolation="antialiased")
    axes[1].imshow(mosaic(patches, cols, gap), interpolation="antialiased")
    for ax in axes[:2]:
        _blank(ax)
    if title:
        axes[0].set_title(f"ch {tiles.channel}  (max {float(tiles.values[0]):.3g})", fontsize=TICK_PT, loc="left",
                          pad=2)
    return axes[0].figure


def plot_layer_grid(
    features: Sequence[FeatureTiles],
    *,
    title: str,
    footer: str,
    scaling: str = DEFAULT_SCALING,
    cols: int | None = None,
):
    """The paper's layout for one layer: per feature, the projections beside the image patches.

    Returns:
        A new matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")
    n = len(features)
    cols = cols or min(3, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    # printed at a page's width (7 in), text of at least 7 pt: each feature's two mosaics share 7/cols in
    width, margin, pair_gap, label = PRINT_WIDTH, 0.05, 0.12, 0.16
    side = (width - 2 * margin - (cols - 1) * pair_gap) / cols / 2 - 0.02
    head = wrap_to_width(title, width - 0.2, TITLE_PT)
    foot = wrap_to_width(footer, width - 0.2, TICK_PT)
    top, bottom = text_height(head, TITLE_PT) + 0.08, text_height(foot, TICK_PT) + 0.06
    height = top + rows * (side + label) + bottom
    fig = plt.figure(figsize=(width, height))
    for k, tiles in enumerate(features):
        r, c = divmod(k, cols)
        y = height - top - r * (side + label) - label - side
        x = margin + c * (2 * side + 0.04 + pair_gap)
        axes = [fig.add_axes([x / width, y / height, side / width, side / height]),
                fig.add_axes([(x + side + 0.04) / width, y / height, side / width, side / height])]
        plot_feature(tiles, axes, scaling)
    fig.text(0.5, 1 - 0.05 / height, head, ha="center", va="top", fontsize=TITLE_PT)
    fig.text(0.5, 0.04 / height, foot, ha="center", va="bottom", fontsize=TICK_PT, color="0.25")
    return fig


#: what a scan's provenance says about the run rather than the result: left out of the sidecars, so that the
#: same command on the same versions writes the same bytes (a rerun leaves a clone's figures/ unchanged)
RUN_SPECIFIC = ("date", "cache")


def reproducible(provenance: dict) -> dict:
    """A scan's provenance less ``RUN_SPECIFIC`` (when it ran, whether the scan cache answered)."""
    return {k: v for k, v in provenance.items() if k not in RUN_SPECIFIC}


def write_layer_figure(
    features: Sequence[FeatureTiles],
    topk: TopK,
    net: Net,
    out: str | os.PathLike,
    *,
    dataset_name: str,
    scaling: str = DEFAULT_SCALING,
    selection: str = "random",
) -> tuple[Path, Path]:
    """Draw and save one layer's grid (PNG/PDF/SVG by suffix) and its JSON sidecar, atomically."""
    import matplotlib.pyplot as plt

    out = Path(out)
    layer = features[0].layer
    k = topk.k
    n_images = topk.provenance.get("n", "?")
    title = (f"{net.arch} {layer}: top {k} activations of {len(features)} feature maps ({selection} selection) "
             f"across {n_images} images of {dataset_name}, each projected on its own image (left) beside its "
             f"receptive-field patch (right)")
    rf = receptive_field(net, layer)
    footer = (f"{net.describe()}.  Receptive field {rf.size[0]} px, stride {rf.jump[0]}.  "
              f"Projections: {describe_scaling(scaling)}; outside the image: mid-gray / light gray.")
    fig = plot_layer_grid(features, title=title, footer=footer, scaling=scaling)
    # a tile gets about as many pixels as the receptive field has (200 to 450 dpi), so that a 196-px
    # projection is not squeezed into 80 px: the structure of deep units is fine-grained
    mosaic_in = fig.axes[0].get_position().width * fig.get_figwidth()
    tile_in = mosaic_in / math.ceil(math.sqrt(len(features[0].values)))
    save_figure(fig, out, dpi=int(min(450, max(200, rf.size[0] / tile_in))))
    plt.close(fig)
    sidecar = out.with_name(out.name + ".json")  # named after the figure file: a PNG and an SVG keep their own
    meta = {
        "figure": out.name,
        "figure_sha256": sha256_file(out),  # pairs this sidecar with exactly the figure it describes
        "layer": layer,
        "k": k,
        "selection": selection,
        "scaling": scaling,
        "receptive_field": {"size": rf.size, "jump": rf.jump, "padding": rf.padding},
        "provenance": reproducible(topk.provenance),
        "features": [
            {
                "channel": t.channel,
                "tiles": [
                    {"image": int(i), "label": lab, "source": src, "activation": float(v),
                     "position": [int(a) for a in p], "box": list(b)}
                    for v, i, p, b, lab, src in zip(t.values, t.images, t.positions, t.boxes, t.labels, t.sources,
                                                    strict=True)
                ],
            }
            for t in features
        ],
    }
    write_json(meta, sidecar)
    return out, sidecar


def make_figure2(
    net: Net,
    layers: Sequence[str],
    out_dir: str | os.PathLike = "figures",
    *,
    dataset: Any = None,
    topk: TopK | None = None,
    k: int = 9,
    features: int = 8,
    select: str = "random",
    seed: int = 0,
    scaling: str = DEFAULT_SCALING,
    fmt: str = "png",
    dataset_name: str | None = None,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Figure 2 as the command line writes it (``deconvnet figures --only top9``): for each layer, the figure
    at full resolution, ``top{k}_{arch}_{layer}.{fmt}``, and its JSON sidecar, in ``out_dir``.

    Args:
        net: the model.
        layers: the layers, one figure each.
        out_dir: the folder (made if needed).
        dataset: the images (``deconvnet.data.load_dataset(folder, preprocessing=net.preprocessing)``);
            default: the offline demo collection.
        topk: a scan of ``dataset`` holding ``layers`` (default: scanned now, through the scan cache).
        k, features, select, seed, scaling: as the command's ``--k``, ``--features``, ``--select``,
            ``--seed``, ``--scaling``.
        fmt: ``png``, ``pdf`` or ``svg``.
        dataset_name: how the title names the images (default: the dataset's description).
        batch_size, cache, progress: of the scan and the projections.

    Returns:
        The paths written (figure, sidecar, ...); a layer none of whose maps has ``k`` positive
        activations is left out, with a warning.
    """
    import warnings

    from .data import load_dataset
    from .scan import scan_top_k

    if dataset is None:
        dataset = load_dataset(None, preprocessing=net.preprocessing)
        dataset_name = dataset_name or "the offline demo collection"
    if dataset_name is None:
        described = Items(dataset).describe()
        dataset_name = str(described.get("root") or described.get("kind") or type(dataset).__name__)
    if topk is None:
        topk = scan_top_k(net, dataset, list(layers), k=k, batch_size=batch_size, progress=progress, cache=cache)
    written: list[Path] = []
    for layer in layers:
        channels = select_features(topk, layer, features, select, seed)
        if not channels:
            warnings.warn(f"{layer}: no feature map has {k} positive activations; no figure", stacklevel=2)
            continue
        tiles = feature_tiles(net, dataset, topk, layer, channels, batch_size=batch_size, progress=progress)
        out = Path(out_dir) / f"top{k}_{net.arch}_{layer}.{fmt}"
        written += write_layer_figure(tiles, topk, net, out, dataset_name=dataset_name, scaling=scaling,
                                      selection=select)
    return written
