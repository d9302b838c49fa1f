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
tell the bundled photographs apart, seeded, and saves state_dicts at a few epochs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..figure2 import FeatureTiles, feature_tiles, select_features
from ..io import torch_save, write_json
from ..models import Net, wrap
from ..plot import DEFAULT_SCALING, describe_scaling, scale_for_display
from ..preprocessing import TORCHVISION
from ..engine import receptive_field
from ..scan import TopK, scan_top_k
from ._util import PRINT_WIDTH, TEXT_PT, TICK_PT, TITLE_PT, jsonable, text_height, wrap_to_width

#: the paper's checkpoints (epochs of its ImageNet training)
PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
#: the demo's checkpoints: 0 is the initialisation
DEMO_EPOCHS = (0, 1, 2, 5, 10, 20, 40)
DEMO_LAYERS = ("relu1", "relu2", "relu3")
DEMO_SIZE = 64
DEMO_ARCH = "democnn"
CheckpointLike = "Net | nn.Module | str | os.PathLike"


# --- the demo network and its training ------------------------------------------------------------------

def demo_cnn(classes: int = 16, width: int = 16, size: int = DEMO_SIZE) -> nn.Sequential:
    """A small ReLU/max-pool CNN: three conv-ReLU-pool blocks (``conv1 ... pool3``) and a linear classifier.

    The layers have paper-like names (``relu2``, ``pool3``), so they read like the figures. ``size`` is
    the input side (a multiple of 8): the classifier sees the ``size / 8`` square map of ``pool3``.
    """
    if size % 8:
        raise ValueError(f"demo CNN input size {size} is not a multiple of 8. Hint: e.g. {DEMO_SIZE}")
    from collections import OrderedDict

    w = width
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, w, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(2 * w, 4 * w, 3, padding=1)), ("relu3", nn.ReLU()), ("pool3", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * w * (size // 8) ** 2, classes)),
    ]))


def _demo_classes() -> tuple[list[str], list[int]]:
    """The bundled photographs and their class: the scene (the stereo pair of motorcycles is one)."""
    from ..images import BUNDLED_PHOTOS

    photos = list(BUNDLED_PHOTOS)
    scenes = list(dict.fromkeys("motorcycle" if p.startswith("motorcycle_") else p for p in photos))
    return photos, [scenes.index("motorcycle" if p.startswith("motorcycle_") else p) for p in photos]


def _augmented_batch(photos: Sequence[torch.Tensor], classes: Sequence[int], n: int, size: int,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random square crops (a third to all of the shorter side), resized to ``size``, half mirrored."""
    import torch.nn.functional as F

    xs, ys = [], []
    for _ in range(n):
        k = int(torch.randint(len(photos), (1,), generator=g))
        img = photos[k]
        h, w = img.shape[-2:]
        side = int(min(h, w) * (1 / 3 + 2 / 3 * float(torch.rand(1, generator=g))))
        top = int(torch.randint(h - side + 1, (1,), generator=g))
        left = int(torch.randint(w - side + 1, (1,), generator=g))
        crop = img[:, top : top + side, left : left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        if float(torch.rand(1, generator=g)) < 0.5:
            crop = crop.flip(-1)
        xs.append(crop)
        ys.append(classes[k])
    return torch.stack(xs).clamp(0, 1), torch.tensor(ys)


@dataclass
class DemoTraining:
    """What ``train_demo`` wrote: the checkpoint files (one per epoch) and the training log."""

    folder: Path
    epochs: list[int]
    checkpoints: list[Path]
    loss: list[float]  # mean training loss of each epoch (index 0: epoch 1)
    accuracy: list[float]  # training accuracy of each epoch
    weight_change: dict[str, dict[str, float]]  # epoch -> layer -> |W - W_previous checkpoint| / |W_previous checkpoint|
    config: dict
    seconds: float
    reused: bool


def train_demo(
    folder: str | os.PathLike,
    *,
    epochs: Sequence[int] = DEMO_EPOCHS,
    size: int = DEMO_SIZE,
    width: int = 16,
    samples_per_epoch: int = 512,
    batch_size: int = 32,
    lr: float = 0.01,
    init_std: float | None = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> DemoTraining:
    """Train ``demo_cnn`` from scratch to tell the bundled photographs apart, saving state_dicts.

    The data: random square crops (a third to all of a photograph's shorter side, mirrored half the time,
    seeded) of the 17 bundled photographs, 16 classes (the two motorcycle photographs are one scene).
    SGD with momentum 0.9 and weight decay 5e-4, ``lr`` constant. An epoch is ``samples_per_epoch`` crops.
    Epoch 0 is the seeded initialisation: weights drawn from N(0, ``init_std``²) and zero biases, as
    the paper's (0.01); None keeps PyTorch's default (Kaiming-uniform). Measured: with PyTorch's
    default the first-layer filters moved only about a third of their initial norm in 6 epochs and their
    projections still looked like the random initialisation after 40; from the paper's small initialisation
    the learned part dominates (the filters grow to about twice the initial norm by epoch 12), after a
    plateau of a few epochs at chance level.

    Files: ``epoch{E:03d}.pt`` (a plain state_dict: ``torch.load`` it into ``demo_cnn``) and
    ``training.json`` (the settings, loss and accuracy per epoch). A folder that already holds the
    checkpoints of the same settings is reused without training.

    Returns:
        A ``DemoTraining``.
    """
    from ..images import bundled_photo, pil_to_tensor01

    epochs = sorted({int(e) for e in epochs})
    if not epochs or epochs[0] < 0:
        raise ValueError(f"epochs must be non-negative numbers, got {list(epochs)}. Hint: e.g. {DEMO_EPOCHS}")
    folder = Path(folder)
    photos, classes = _demo_classes()
    config = {"model": f"demo_cnn(classes={max(classes) + 1}, width={width}, size={size})", "photos": photos,
              "epochs": epochs, "size": size, "width": width, "samples_per_epoch": samples_per_epoch,
              "batch_size": batch_size, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "init_std": init_std, "seed": seed,
              "preprocessing": TORCHVISION.name, "torch": torch.__version__}
    log_path = folder / "training.json"
    paths = [folder / f"epoch{e:03d}.pt" for e in epochs]
    if log_path.is_file() and all(p.is_file() for p in paths):
        try:
            log = json.loads(log_path.read_text())
        except ValueError:
            log = {}
        if log.get("config") == config:
            return DemoTraining(folder, epochs, paths, log["loss"], log["accuracy"], log["weight_change"], config,
                                log["seconds"], True)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = demo_cnn(max(classes) + 1, width, size)
        if init_std is not None:
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, init_std)
                    nn.init.zeros_(m.bias)
    g = torch.Generator().manual_seed(seed)
    # the photographs once, shrunk so that a crop's resize is cheap (a crop is at most size / (1/3) px wide)
    images = []
    for name in photos:
        img = pil_to_tensor01(bundled_photo(name))
        scale = 3 * size / min(img.shape[-2:])
        if scale < 1:
            img = torch.nn.functional.interpolate(img[None], scale_factor=scale, mode="bilinear", antialias=True)[0]
        images.append(img)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    losses, accs, change = [], [], {}
    if 0 in epochs:
        torch_save(model.state_dict(), folder / "epoch000.pt")
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: convolutions this small run faster on one thread than on two
    try:
        _train(model, opt, loss_fn, images, classes, epochs, samples_per_epoch, batch_size, size, g, folder, losses,
               accs, change, progress)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    write_json({"config": config, "loss": losses, "accuracy": accs, "weight_change": change, "seconds": seconds}, log_path)
    return DemoTraining(folder, epochs, paths, losses, accs, change, config, seconds, False)


def _train(model, opt, loss_fn, images, classes, epochs, samples_per_epoch, batch_size, size, g, folder, losses,
           accs, change, progress) -> None:
    from ._util import progress as bar

    def weights() -> dict[str, torch.Tensor]:
        return {n.removesuffix(".weight"): p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}

    previous = weights()
    for epoch in bar(range(1, epochs[-1] + 1), enabled=progress, desc="train demo CNN"):
        total, correct, seen = 0.0, 0, 0
        for _ in range(math.ceil(samples_per_epoch / batch_size)):
            x, y = _augmented_batch(images, classes, batch_size, size, g)
            out = model(TORCHVISION.forward(x))
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        losses.append(total / seen)
        accs.append(correct / seen)
        if epoch in epochs:
            torch_save(model.state_dict(), folder / f"epoch{epoch:03d}.pt")
            now = weights()
            change[str(epoch)] = {n: float((now[n] - previous[n]).norm() / previous[n].norm()) for n in now}
            previous = now


# --- checkpoints as nets ----------------------------------------------------------------------------------

def _state_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, shapes and bytes): equal weights, equal digest."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, arch: str | Callable[[], nn.Module], *, device: str | None = None) -> Net:
    """A state_dict file as a ``Net``.

    Args:
        path: a state_dict saved with ``torch.save``.
        arch: ``"democnn"`` (``demo_cnn``; classes, width and size read from the weights), a torchvision
            architecture name (``vgg16``, ``resnet18``, ...: ``load_model(arch, path)``), or a function
            returning the ``nn.Module`` to load the state_dict into (wrapped with ``wrap``).
    """
    from ..models import load_model
    from ..models.weights import WeightsError, load_state_dict_file

    path = Path(path)
    if isinstance(arch, str) and arch != DEMO_ARCH:
        return load_model(arch, path, device=device)
    state, provenance = load_state_dict_file(path)
    if arch == DEMO_ARCH:
        try:
            width = state["conv1.weight"].shape[0]
            classes, features = state["fc.weight"].shape
        except KeyError:
            raise WeightsError(f"'{path}' is not a demo CNN state_dict (no conv1.weight / fc.weight). Hint: the "
                               "files of train_demo, or --arch with the checkpoints' own architecture") from None
        model = demo_cnn(classes, width, 8 * round(math.sqrt(features / (4 * width))))
        name = DEMO_ARCH
    else:
        model, name = arch(), None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"weights '{path}' do not fit the model: {' '.join(str(err).split())[:300]}") from err
    net = wrap(model.eval(), preprocessing=TORCHVISION, name=name)
    net.provenance.update(provenance)
    return net.to(device=device)


def _as_net(item: Any, arch: str | Callable | None, device: str | None) -> tuple[Net, str]:
    """A checkpoint (Net, module or file) as a Net, and its weights digest (the scan cache's key)."""
    if isinstance(item, (str, os.PathLike)):
        if arch is None:
            raise ValueError(f"checkpoint '{item}' is a file, so the architecture is needed. Hint: arch='vgg16', "
                             f"'{DEMO_ARCH}', a torchvision name or a function returning the model")
        net = load_checkpoint(item, arch, device=device)
    elif isinstance(item, (Net, nn.Module)):
        net = wrap(item) if isinstance(item, nn.Module) else item
    else:
        raise TypeError(f"a checkpoint is a Net, an nn.Module or a state_dict path, got {type(item).__name__}")
    # of the tensors, not of the file: torch.save writes the file's name into the archive, so two files of
    # the same weights differ
    return net, _state_digest(net.model)


# --- the experiment ---------------------------------------------------------------------------------------

def jaccard(a: TopK, b: TopK, layer: str, channels: Sequence[int] | None = None, *, images_only: bool = False) -> np.ndarray:
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
                for t, col in zip(self.topk, self.tiles[layer]):
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
            "overlap_definition": "per channel, Jaccard |A n B| / |A u B| of the top-k sets of (image, row, col) at two "
                                  "successive checkpoints, averaged over every channel of the layer; 1: unchanged",
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
    if isinstance(features, int) and features < 1:
        raise ValueError(f"features={features}: at least one feature map per layer")
    if labels is None:
        labels = [Path(c).stem if isinstance(c, (str, os.PathLike)) else f"checkpoint {i}" for i, c in enumerate(checkpoints)]
    timings: dict[str, float] = {}
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
    layers = list(topks[-1].layers)
    if isinstance(features, Mapping):
        channels = {nets[-1].resolve(layer): [int(c) for c in cs] for layer, cs in features.items()}
        missing = [layer for layer in layers if layer not in channels]
        if missing:
            raise ValueError(f"features gives no channels for {', '.join(missing)}. Hint: one list per layer")
        for layer, cs in channels.items():
            n = topks[-1].values[layer].shape[0]
            bad = [c for c in cs if not 0 <= c < n]
            if bad:
                raise ValueError(f"channel(s) {bad} out of range for {layer}, which has {n}. Hint: 0..{n - 1}")
    else:
        channels = {layer: select_features(topks[-1], layer, features, select, seed) for layer in layers}
        for layer, cs in channels.items():
            if not cs:
                raise ValueError(f"{layer}: no feature map has {k} positive activations at the last checkpoint. "
                                 "Hint: more images, a smaller k, or another layer")
    tiles: dict[str, list[list[FeatureTiles | None]]] = {layer: [] for layer in layers}
    for i, (net, topk) in enumerate(zip(nets, topks)):
        t = time.perf_counter()
        top1 = dataclasses.replace(topk, k=1, values={l: v[:, :1] for l, v in topk.values.items()},
                                   images={l: v[:, :1] for l, v in topk.images.items()},
                                   positions={l: v[:, :1] for l, v in topk.positions.items()})
        for layer in layers:
            alive = [c for c in channels[layer] if top1.images[layer][c, 0] >= 0 and top1.values[layer][c, 0] > 0]
            made = {ft.channel: ft for ft in feature_tiles(net, dataset, top1, layer, alive, batch_size=batch_size,
                                                           progress=False)} if alive else {}
            tiles[layer].append([made.get(c) for c in channels[layer]])
        timings[f"project {labels[i]}"] = time.perf_counter() - t
    pairs = list(zip(topks[:-1], topks[1:]))
    overlap = {l: np.array([jaccard(a, b, l).mean() for a, b in pairs]) for l in layers}
    overlap_images = {l: np.array([jaccard(a, b, l, images_only=True).mean() for a, b in pairs]) for l in layers}
    overlap_shown = {l: np.array([jaccard(a, b, l, channels[l]).mean() for a, b in pairs]) for l in layers}
    receptive = {l: receptive_field(nets[-1], l).size[0] for l in layers}
    return EvolutionResult(list(labels), layers, channels, tiles, topks, overlap, overlap_images, overlap_shown,
                           [n.describe() for n in nets], digests, nets[-1].arch, receptive,
                           dataset=jsonable(topks[-1].provenance.get("dataset_final", {})), timings=timings)


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
    result.labels = ["init" if e == 0 else f"epoch {e} · {100 * training.accuracy[e - 1]:.0f}%" for e in training.epochs]
    result.note = (f"Demo: {training.config['model']} trained from scratch on crops of the 17 bundled photographs "
                   f"(16 scenes); '· N%': training accuracy in that epoch (chance 6%); init: N(0, 0.01²) weights.")
    return result, training
