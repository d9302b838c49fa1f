"""A ``Synthesis`` on disk: one PNG per channel and a JSON sidecar of the settings, the activations (beside
the dataset's strongest, when known) and the weights' provenance. Every file is written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import atomic_path, write_json
from ..models.weights import sha256_file
from .optimise import Synthesis


def to_uint8(image: Any) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    a = image.detach().cpu().double().permute(1, 2, 0).numpy()
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def image_name(arch: str, layer: str, channel: int) -> str:
    return f"{arch}_{layer}_{channel}.png"


def write_synthesis(result: Synthesis, out: str | os.PathLike, *, arch: str,
                    dataset_max: Sequence[float] | None = None, dataset_name: str | None = None) -> list[Path]:
    """Write the images and the sidecar ``synthesis_<arch>_<layer>.json`` into ``out``; returns the paths.

    Args:
        dataset_max: per channel, the strongest activation of the channel over a dataset (a scan's top 1),
            recorded beside the image's peak so that a reader sees whether the image exceeds it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, records = [], []
    for i, c in enumerate(result.channels):
        path = out / image_name(arch, result.layer, c)
        with atomic_path(path) as tmp:
            Image.fromarray(to_uint8(result.images[i])).save(tmp, format="PNG")
        written.append(path)
        rec = result.record(i) | {"image": path.name, "image_sha256": sha256_file(path)}
        if dataset_max is not None:
            rec["dataset_max"] = float(dataset_max[i])
            rec["peak_over_dataset_max"] = (float(result.peaks[i]) / float(dataset_max[i]) if dataset_max[i] > 0
                                            else None)
        records.append(rec)
    sidecar = out / f"synthesis_{arch}_{result.layer}.json"
    meta = {
        "what": "images synthesised by gradient ascent: what each channel responds to most",
        "recipe": result.recipe(),
        "settings": result.settings,
        "layer": result.layer,
        "weights": result.weights,
        "provenance": result.provenance,
        "activation": ("the objective on the image itself: the channel's mean over the layer's map"
                       if result.settings["objective"] == "channel" else "the objective: the map's centre unit"),
        "peak": "the channel's strongest unit on the image (what a dataset scan's top activation measures)",
        "dataset": dataset_name,
        "images": records,
    }
    write_json(meta, sidecar)
    return written + [sidecar]
