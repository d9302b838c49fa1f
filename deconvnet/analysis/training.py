"""The offline demonstration network of Fig. 4 (``evolution``) and its training.

``train_demo`` trains a small ReLU/max-pool CNN (``demo_cnn``) from scratch to tell the bundled photographs
apart, seeded, and saves state_dicts at a few epochs: the checkpoints whose features ``evolution`` follows.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import torch_save, write_json
from ..preprocessing import TORCHVISION

#: the demo's checkpoints: 0 is the initialisation
DEMO_EPOCHS = (0, 1, 2, 5, 10, 20, 40)
DEMO_LAYERS = ("relu1", "relu2", "relu3")
DEMO_SIZE = 64
DEMO_ARCH = "democnn"


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
    # epoch -> layer -> |W - W_previous checkpoint| / |W_previous checkpoint|
    weight_change: dict[str, dict[str, float]]
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
              "batch_size": batch_size, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "init_std": init_std,
              "seed": seed,
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
    write_json({"config": config, "loss": losses, "accuracy": accs, "weight_change": change, "seconds": seconds},
               log_path)
    return DemoTraining(folder, epochs, paths, losses, accs, change, config, seconds, False)


def _train(model, opt, loss_fn, images, classes, epochs, samples_per_epoch, batch_size, size, g, folder, losses,
           accs, change, progress) -> None:
    from ._util import progress as bar

    def weights() -> dict[str, torch.Tensor]:
        return {n.removesuffix(".weight"): p.detach().clone() for n, p in model.named_parameters()
                if n.endswith("weight")}

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
