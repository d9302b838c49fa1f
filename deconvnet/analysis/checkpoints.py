"""Checkpoints as ``Net`` objects for ``evolution``: a state_dict file of the demo CNN, of a torchvision
architecture or of one's own model, and a digest of the weights (the key of the scan cache)."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import Net, wrap
from ..preprocessing import TORCHVISION
from .training import DEMO_ARCH, demo_cnn


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
