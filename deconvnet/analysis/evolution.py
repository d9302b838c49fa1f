"""Features across training (Zeiler & Fergus 2014, Fig. 4).

For a few feature maps per layer, the strongest activation over a dataset at each saved checkpoint,
projected to pixel space: one column per checkpoint. One dataset scan per checkpoint (``scan_top_k``,
cached and resumable), then the top-1 of each chosen feature projected on its own image and cropped to
its receptive field, beside the image patch (as in Figure 2).

How much a layer still changes is measured on the whole top-k, not only on the drawn top-1: for each
feature map, the Jaccard overlap |A ∩ B| / |A ∪ B| of its top-k sets of (image, row, col) at two
successive checkpoints, averaged over every channel of the layer (1: the same k units; 0: none in
common). The sidecar also has the overlap of the image sets alone (the same images, maybe at other
positions) and the overlap of the drawn features.

Offline demonstration: ``train_demo`` trains a small ReLU/max-pool CNN (``demo_cnn``) from scratch to
tell the bundled photographs apart, seeded, and saves state_dicts at a few epochs (module ``training``);
``demo_evolution`` follows its features. Checkpoint files are read by ``checkpoints``.
"""


from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..checks import positive_int
from ..engine import receptive_field
from ..figure2 import FeatureTiles, feature_tiles, select_features
from ..io import write_json
from ..models import Net
from ..plot import DEFAULT_SCALING, describe_scaling, scale_for_display
from ..preprocessing import TORCHVISION
from ..scan import TopK, scan_top_k
from ._util import PRINT_WIDTH, TEXT_PT, TICK_PT, TITLE_PT, jsonable, text_height, wrap_to_width
from .checkpoints import _as_net, load_checkpoint
from .training import DEMO_ARCH, DEMO_EPOCHS, DEMO_LAYERS, DEMO_SIZE, DemoTraining, demo_cnn, train_demo

__all__ = [
    "DEMO_ARCH",
    "DEMO_EPOCHS",
    "DEMO_LAYERS",
    "DEMO_SIZE",
    "PAPER_EPOCHS",
    "DemoTraining",
    "EvolutionResult",
    "demo_cnn",
    "demo_evolution",
    "evolution",
    "jaccard",
    "load_checkpoint",
    "plot_evolution",
    "train_demo",
    "write_evolution",
]

#: the paper's checkpoints (epochs of its ImageNet training)
PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
CheckpointLike = "Net | nn.Module | str | os.PathLike"


# --- the experiment ---------------------------------------------------------------------------------------

def jaccard(a: TopK, b: TopK, layer: str, channels: Sequence[int] | None = None, *,
            images_only: bool = False) -> np.ndarray:
    """Per channel, |A ∩ B| / |A ∪ B| of the top-k sets of two scans: (image, row, col) triples, or the
    images alone. Empty sets on both sides count as identical (1)."""
    channels = range(a.values[layer].shape[0]) if channels is None else channels
    out = []
    for c in channels:
        sets = []
        for t in (a, b):
            entries = t.entries(layer, c)
            sets.append({e[1] for e in entries} if images_only else {(e[1], *e[2]) for e in entries})
        union = sets[0] | sets[1]
        out.append(len(sets[0] & sets[1]) / len(union) if union else 1.0)
    return np.array(out, dtype=np.float64)


@dataclass
class EvolutionResult:
    """Fig. 4's data.

    Attributes:
        labels: a name per checkpoint (column titles).
        layers: the layers; channels: layer -> the feature maps shown.
        tiles: layer -> one list per checkpoint of ``FeatureTiles`` (k = 1: the strongest activation of
            each shown channel, projected, cropped to its receptive field; None where a channel has no
            positive activation at that checkpoint).
        topk: the scan of each checkpoint.
        overlap: layer -> (checkpoints - 1,) mean Jaccard overlap of successive top-k sets of (image,
            position), over every channel of the layer; ``overlap_images`` the same for image sets;
            ``overlap_shown`` over the shown channels only.
        weights: ``describe()`` of each checkpoint's net; digests: each checkpoint's weights sha256.
        dataset: what the scans ran over; timings: seconds per step.
    """

    labels: list[str]
    layers: list[str]
    channels: dict[str, list[int]]
    tiles: dict[str, list[list[FeatureTiles | None]]]
    topk: list[TopK]
    overlap: dict[str, np.ndarray]
    overlap_images: dict[str, np.ndarray]
    overlap_shown: dict[str, np.ndarray]
    weights: list[str]
    digests: list[str]
    arch: str
    receptive: dict[str, int]
    dataset: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    note: str = ""  # appended to the figure's caption

    def summary(self) -> dict:
        """Every value, JSON-ready (the sidecar)."""
        features = []
        for layer in self.layers:
            for j, c in enumerate(self.channels[layer]):
                cells = []
                for t, col in zip(self.topk, self.tiles[layer], strict=True):
                    tile = col[j]
                    entries = t.entries(layer, c)
                    cells.append({
                        "top1": None if tile is None else {
                            "activation": float(tile.values[0]), "image": int(tile.images[0]), "label": tile.labels[0],
                            "source": tile.sources[0], "position": [int(v) for v in tile.positions[0]],
                            "box": list(tile.boxes[0])},
                        "topk": [{"activation": v, "image": i, "position": list(p)} for v, i, p in entries],
                    })
                features.append({"layer": layer, "channel": c, "checkpoints": cells})
        return jsonable({
            "what": "Zeiler & Fergus Fig. 4: the strongest activation of each feature map over the dataset at each "
                    "checkpoint, projected to pixel space",
            "arch": self.arch, "checkpoints": self.labels, "weights": self.weights, "weights_sha256": self.digests,
            "layers": self.layers, "channels": self.channels, "k": self.topk[0].k, "dataset": self.dataset,
            "receptive_field": self.receptive,
            "overlap_definition": "per channel, Jaccard |A n B| / |A u B| of the top-k sets of (image, row, col) at "
                                  "two successive checkpoints, averaged over every channel of the layer; 1: unchanged",
            "overlap": self.overlap, "overlap_images": self.overlap_images, "overlap_shown": self.overlap_shown,
            "features": features, "note": self.note,  # no timings: the same run writes the same bytes
        })


def evolution(
    checkpoints: Sequence[Any],
    dataset: Any,
    layers: Sequence[str],
    features: int | Mapping[str, Sequence[int]] = 4,
    *,
    arch: str | Callable[[], nn.Module] | None = None,
    labels: Sequence[str] | None = None,
    k: int = 9,
    select: str = "random",
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = True,
) -> EvolutionResult:
    """Fig. 4: each checkpoint's strongest activation of a few feature maps per layer, projected.

    Args:
        checkpoints: in training order: ``Net`` objects, ``nn.Module`` objects, or state_dict files (then
            ``arch`` is needed). Chains and graphs alike.
        dataset: the images (``deconvnet.data``: ``load_dataset``, ``demo_collection``, ``Head``), made with
            the checkpoints' preprocessing.
        layers: layer names with spatial maps.
        features: feature maps per layer (chosen on the last checkpoint among the channels with a full
            positive top-k, by ``select``), or ``{layer: [channels]}``.
        arch: for files: ``"democnn"``, a torchvision architecture name, or a function returning the model.
        labels: a name per checkpoint (default: the file names without suffix, or ``checkpoint i``).
        k: the top-k of the scans (the overlap is measured on it; the figure shows the top 1).
        select: ``"random"`` (seeded, as the paper's "randomly chosen subset") or ``"strongest"``.
        cache: a folder for the scans (``scan-<label>-<weights sha256>.pt``): a finished scan is reused, an
            interrupted one resumes; None: no cache.
        batch_size: images per forward.
        device: for checkpoints given as files.
        progress: tqdm bars.

    Returns:
        An ``EvolutionResult`` (``plot_evolution`` draws it, ``write_evolution`` saves figure and sidecar).
    """
    if len(checkpoints) < 1:
        raise ValueError("no checkpoints. Hint: give the state_dict files saved during training, in order")
    if labels is not None and len(labels) != len(checkpoints):
        raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints. Hint: one label per checkpoint")
    if not layers:
        raise ValueError("no layers. Hint: e.g. layers=['relu1', 'relu3']")
    if isinstance(features, int):
        positive_int("features", features, hint="at least one feature map per layer")
    if labels is None:
        labels = [Path(c).stem if isinstance(c, (str, os.PathLike)) else f"checkpoint {i}"
                  for i, c in enumerate(checkpoints)]
    timings: dict[str, float] = {}
    nets, digests, topks = _scan_checkpoints(checkpoints, dataset, layers, labels, arch=arch, k=k, cache=cache,
                                             batch_size=batch_size, device=device, progress=progress, timings=timings)
    layers = list(topks[-1].layers)
    channels = _choose_channels(features, layers, nets[-1], topks[-1], k=k, select=select, seed=seed)
    tiles = _top1_tiles(nets, topks, dataset, layers, channels, labels, batch_size=batch_size, timings=timings)
    pairs = list(zip(topks[:-1], topks[1:], strict=True))
    overlap = {layer: np.array([jaccard(a, b, layer).mean() for a, b in pairs]) for layer in layers}
    overlap_images = {layer: np.array([jaccard(a, b, layer, images_only=True).mean() for a, b in pairs])
                      for layer in layers}
    overlap_shown = {layer: np.array([jaccard(a, b, layer, channels[layer]).mean() for a, b in pairs])
                     for layer in layers}
    receptive = {layer: receptive_field(nets[-1], layer).size[0] for layer in layers}
    return EvolutionResult(list(labels), layers, channels, tiles, topks, overlap, overlap_images, overlap_shown,
                           [n.describe() for n in nets], digests, nets[-1].arch, receptive,
                           dataset=jsonable(topks[-1].provenance.get("dataset_final", {})), timings=timings)


def _scan_checkpoints(checkpoints: Sequence[Any], dataset: Any, layers: Sequence[str], labels: Sequence[str], *,
                      arch: str | Callable[[], nn.Module] | None, k: int, cache: str | os.PathLike | None,
                      batch_size: int, device: str | None, progress: bool,
                      timings: dict[str, float]) -> tuple[list[Net], list[str], list[TopK]]:
    """Each checkpoint as a ``Net``, its weights digest and its scan (cached and resumable in ``cache``); the
    seconds of each scan go into ``timings``."""
    nets, digests, topks = [], [], []
    for i, item in enumerate(checkpoints):
        t = time.perf_counter()
        net, digest = _as_net(item, arch, device)
        names = [net.resolve(layer) for layer in layers]
        ckpt = None
        if cache is not None:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in labels[i])
            ckpt = Path(cache) / f"scan-{safe}-{digest[:12]}.pt"
        topk = scan_top_k(net, dataset, names, k=k, batch_size=batch_size, checkpoint=ckpt, progress=progress,
                          restart_stale=True)
        nets.append(net)
        digests.append(digest)
        topks.append(topk)
        timings[f"scan {labels[i]}"] = time.perf_counter() - t
    return nets, digests, topks


def _choose_channels(features: int | Mapping[str, Sequence[int]], layers: Sequence[str], net: Net, topk: TopK, *,
                     k: int, select: str, seed: int) -> dict[str, list[int]]:
    """The feature maps shown per layer: those given (checked against the layer's channels), or ``features``
    of them chosen by ``select`` on the last checkpoint's scan ``topk`` among those with a full positive top-k."""
    if isinstance(features, Mapping):
        channels = {net.resolve(layer): [int(c) for c in cs] for layer, cs in features.items()}
        missing = [layer for layer in layers if layer not in channels]
        if missing:
            raise ValueError(f"features gives no channels for {', '.join(missing)}. Hint: one list per layer")
        for layer, cs in channels.items():
            n = topk.values[layer].shape[0]
            bad = [c for c in cs if not 0 <= c < n]
            if bad:
                raise ValueError(f"channel(s) {bad} out of range for {layer}, which has {n}. Hint: 0..{n - 1}")
        return channels
    channels = {layer: select_features(topk, layer, features, select, seed) for layer in layers}
    for layer, cs in channels.items():
        if not cs:
            raise ValueError(f"{layer}: no feature map has {k} positive activations at the last checkpoint. "
                             "Hint: more images, a smaller k, or another layer")
    return channels


def _top1_tiles(nets: Sequence[Net], topks: Sequence[TopK], dataset: Any, layers: Sequence[str],
                channels: Mapping[str, Sequence[int]], labels: Sequence[str], *, batch_size: int,
                timings: dict[str, float]) -> dict[str, list[list[FeatureTiles | None]]]:
    """Per layer, one list per checkpoint of the top-1 ``FeatureTiles`` of each shown channel (None where the
    channel has no positive activation there); the seconds of each checkpoint go into ``timings``."""
    tiles: dict[str, list[list[FeatureTiles | None]]] = {layer: [] for layer in layers}
    for i, (net, topk) in enumerate(zip(nets, topks, strict=True)):
        t = time.perf_counter()
        top1 = dataclasses.replace(topk, k=1, values={name: v[:, :1] for name, v in topk.values.items()},
                                   images={name: v[:, :1] for name, v in topk.images.items()},
                                   positions={name: v[:, :1] for name, v in topk.positions.items()})
        for layer in layers:
            alive = [c for c in channels[layer] if top1.images[layer][c, 0] >= 0 and top1.values[layer][c, 0] > 0]
            made = {ft.channel: ft for ft in feature_tiles(net, dataset, top1, layer, alive, batch_size=batch_size,
                                                           progress=False)} if alive else {}
            tiles[layer].append([made.get(c) for c in channels[layer]])
        timings[f"project {labels[i]}"] = time.perf_counter() - t
    return tiles



# --- drawing ----------------------------------------------------------------------------------------------

def plot_evolution(result: EvolutionResult, *, scaling: str = DEFAULT_SCALING, title: str | None = None,
                   caption: str | None = None, width: float = PRINT_WIDTH):
    """The Fig. 4 grid: a row per feature map (grouped by layer), a column per checkpoint, each cell the
    strongest projection beside its image patch; above each layer's rows, the top-k overlap with the
    previous checkpoint.

    Returns:
        A new matplotlib figure, ``width`` inches wide.
    """
    import matplotlib.pyplot as plt

    n_cols = len(result.labels)
    rows = [(layer, j) for layer in result.layers for j in range(len(result.channels[layer]))]
    left, right, cell_gap, pair_gap = 0.62, 0.05, 0.08, 0.015
    tile = (width - left - right - (n_cols - 1) * cell_gap - n_cols * pair_gap) / (2 * n_cols)
    band = TEXT_PT * 1.45 / 72  # the overlap line above each layer's block
    k = result.topk[0].k
    title = title or (f"{result.arch}: the strongest activation of {sum(len(c) for c in result.channels.values())} "
                      f"feature maps across the dataset at each of {n_cols} checkpoints, projected (left) beside its "
                      f"receptive-field patch (right)")
    caption = caption or (
        f"Each row: one feature map; each column: one checkpoint. Above each layer: J, the mean top-{k} overlap with "
        f"the previous checkpoint over all the layer's channels (Jaccard of the (image, position) sets; 1 = "
        f"unchanged). Projections: {describe_scaling(scaling)}; an empty cell: no positive activation. "
        f"Weights: {result.weights[-1]} (last column). {result.note}").strip()
    head = wrap_to_width(title, width - 0.2, TITLE_PT)
    foot = wrap_to_width(caption, width - 0.2, TICK_PT)
    header = TEXT_PT * 1.5 / 72
    top = text_height(head, TITLE_PT) + 0.06 + header
    bottom = text_height(foot, TICK_PT) + 0.06
    height = top + len(rows) * (tile + 0.03) + len(result.layers) * (band + 0.06) + bottom
    fig = plt.figure(figsize=(width, height))
    fig.text(0.5, 1 - 0.05 / height, head, ha="center", va="top", fontsize=TITLE_PT)
    fig.text(0.5, 0.04 / height, foot, ha="center", va="bottom", fontsize=TICK_PT, color="0.25")

    def x_of(col: int, which: int) -> float:
        return left + col * (2 * tile + pair_gap + cell_gap) + which * (tile + pair_gap)

    y = height - top
    for col, label in enumerate(result.labels):
        fig.text((x_of(col, 1) - pair_gap / 2) / width, (y + 0.04) / height, label, ha="center", va="bottom",
                 fontsize=TEXT_PT)
    for layer in result.layers:
        y -= band + 0.06
        fig.text(0.05 / width, (y + 0.03) / height, f"{layer} ({result.receptive[layer]} px)", ha="left",
                 va="bottom", fontsize=TEXT_PT, weight="bold")
        for col in range(1, n_cols):
            fig.text((x_of(col, 1) - pair_gap / 2) / width, (y + 0.03) / height,
                     f"J={result.overlap[layer][col - 1]:.2f}", ha="center", va="bottom", fontsize=TEXT_PT,
                     color="0.2")
        for j, c in enumerate(result.channels[layer]):
            y -= tile
            fig.text((left - 0.04) / width, (y + tile / 2) / height, f"ch {c}", ha="right", va="center",
                     fontsize=TEXT_PT)
            for col in range(n_cols):
                ft = result.tiles[layer][col][j]
                for which in range(2):
                    ax = fig.add_axes([x_of(col, which) / width, y / height, tile / width, tile / height])
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if ft is None:
                        ax.set_facecolor("0.93")
                        continue
                    img = (scale_for_display(ft.projections[0], scaling) if which == 0
                           else ft.patches[0].permute(1, 2, 0).double().numpy())
                    # a few-pixel field is shown as pixels, not as a blur
                    interp = "nearest" if img.shape[0] * 3 < tile * 200 else "antialiased"
                    ax.imshow(img, interpolation=interp)
            y -= 0.03
    return fig


def write_evolution(result: EvolutionResult, out: str | os.PathLike, *, scaling: str = DEFAULT_SCALING,
                    extra: dict | None = None, dpi: int = 200) -> tuple[Path, Path]:
    """Draw and save the figure (PNG/PDF/SVG by suffix) and its sidecar ``<out>.json`` (every value)."""
    import matplotlib.pyplot as plt

    from ..models.weights import sha256_file
    from ..plot import save_figure

    out = Path(out)
    fig = plot_evolution(result, scaling=scaling)
    save_figure(fig, out, dpi=dpi)
    plt.close(fig)
    sidecar = out.with_name(out.name + ".json")
    write_json(dict(result.summary(), figure=out.name, figure_sha256=sha256_file(out), scaling=scaling,
                    **jsonable(extra or {})), sidecar)
    return out, sidecar


def demo_evolution(
    folder: str | os.PathLike,
    *,
    epochs: Sequence[int] = DEMO_EPOCHS,
    samples_per_epoch: int = 512,
    features: int = 4,
    k: int = 9,
    n_images: int | None = None,
    select: str = "random",
    seed: int = 0,
    progress: bool = True,
) -> tuple[EvolutionResult, DemoTraining]:
    """The offline demonstration: ``train_demo`` into ``folder``, then ``evolution`` of its checkpoints on
    the demo collection (at the training's input size; ``n_images``: its first n items), scans cached in
    ``folder / "scans"``."""
    from ..data import demo_collection

    training = train_demo(folder, epochs=epochs, samples_per_epoch=samples_per_epoch, seed=seed, progress=progress)
    size = training.config["size"]
    dataset = demo_collection(preprocessing=TORCHVISION, size=size, n=n_images)
    result = evolution(training.checkpoints, dataset, list(DEMO_LAYERS), features, arch=DEMO_ARCH,
                       labels=[f"epoch {e}" for e in training.epochs], k=k, select=select, seed=seed,
                       cache=Path(folder) / "scans", progress=progress)
    result.timings = {"train": training.seconds if not training.reused else 0.0, **result.timings}
    # the column titles carry the training accuracy: the plateau at chance, then the learning, are read off them
    result.labels = ["init" if e == 0 else f"epoch {e} · {100 * training.accuracy[e - 1]:.0f}%"
                     for e in training.epochs]
    result.note = (f"Demo: {training.config['model']} trained from scratch on crops of the 17 bundled photographs "
                   f"(16 scenes); '· N%': training accuracy in that epoch (chance 6%); init: N(0, 0.01²) weights.")
    return result, training
