"""One cache of finished dataset scans, shared by the notebooks, the figure script and the atlas.

A scan is found again by what fixes its result, whoever asks for it: the model's weights (a digest of the
tensors themselves, so a model changed in place is another model), its dtype, the dataset as it describes
itself (images, transform, size), the number of items and their groups, the per-group limit, and the
layer. Each layer of a scan is an entry of its own, and an entry of k entries per channel also serves any
smaller k (the top-k' is the first k' of the top-k: ``deconvnet.scan`` keeps its order exact). So a
notebook that scans ``conv3_3`` finds what the figure script scanned for ``conv1_2 ... conv5_3``.

Where: ``$DECONVNET_CACHE`` when set, else ``$XDG_CACHE_HOME/deconvnet``, else ``~/.cache/deconvnet``;
scans lie under ``scans/`` there, with the checkpoints of scans under way. Every file is written
atomically (``deconvnet.io``); deleting the folder only costs the time to scan again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$DECONVNET_CACHE``, else ``$XDG_CACHE_HOME/deconvnet``, else ``~/.cache/deconvnet``."""
    if os.environ.get("DECONVNET_CACHE"):
        return Path(os.environ["DECONVNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "deconvnet"


def scan_cache_dir(cache: bool | str | os.PathLike | None) -> Optional[Path]:
    """Where scans are cached: None for ``False``/``None``; ``default_cache_dir()/scans`` for ``True``; a
    folder given as a path is used as it is."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir() / "scans"
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache).expanduser()
    raise TypeError(f"cache must be True, False or a folder, got {type(cache).__name__}")


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer of ``model`` (names, dtypes, shapes and bytes).

    About a second for VGG16 with its classifier (528 MB) on one CPU core: little beside a scan.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ScanCache:
    """The finished scans in one folder, one file per layer: ``topk-<key>.pt`` (a ``TopK`` of that layer).

    ``identity`` is what fixes a scan's result except its layers and k (``deconvnet.scan`` makes it); an
    entry's key is the identity and the layer.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def entry(self, identity: dict, layer: str) -> Path:
        """The file of one layer's scan."""
        return self.folder / f"topk-{_key([CACHE_FORMAT, identity, layer])}.pt"

    def checkpoint(self, identity: dict, layers: list[str], k: int) -> Path:
        """The checkpoint of a scan of ``layers`` under way (removed once its layers are stored)."""
        return self.folder / f"partial-{_key([CACHE_FORMAT, identity, layers, k])}.pt"
