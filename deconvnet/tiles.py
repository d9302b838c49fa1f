"""Top-k entries of a scan -> projection/patch pairs: the one tile builder of Figure 2, the atlas and the explorer.

A tile is one unit of a scan's top k (``TopK.entries``) projected on its own image with
``Deconvnet.project_units`` (each unit inside its receptive-field box), beside the patch of the image under
that box. Building it checks, once for all three consumers, that the scan was made with this model and data:
the projection's activation must be the one the scan recorded.

The consumers batch the forwards as their work asks (Figure 2: a batch of entries; the atlas: a batch of
images, every entry on them; the explorer: one image, its forward kept), and each hands its batch to
``project_entries``; the patches come from ``Patches``, one padded image sliced per box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .engine import Deconvnet
from .images import pil_to_tensor01
from .scan import TopK

#: value of image-patch pixels outside the image (light gray; the mosaic's separators are white)
PATCH_PAD = 0.88
#: how far a projection's activation may lie from the one the scan recorded (float32 round-off of another
#: batch, another device)
RTOL, ATOL = 1e-3, 1e-5


class Entry(NamedTuple):
    """One unit of a scan's top k: ``channel`` at ``(row, col)`` of image ``image``, where the scan recorded
    activation ``value``."""

    channel: int
    value: float
    image: int
    row: int
    col: int


def entries_of(topk: TopK, layer: str, channel: int) -> list[Entry]:
    """The top-k entries of ``(layer, channel)`` in a scan (``TopK``), strongest first."""
    return [Entry(channel, v, i, r, c) for v, i, (r, c) in topk.entries(layer, channel)]


@dataclass
class FeatureTiles:
    """The tiles of one feature.

    Attributes:
        layer, channel: the feature.
        values: (n,) activations, strongest first.
        images: (n,) dataset indices.
        positions: (n, 2) unit positions in the layer's map.
        boxes: n receptive-field boxes (top, left, bottom, right) in image pixels, unclipped.
        projections: (n, 3, r, r) projections cropped to the boxes, RGB channel order, model input scale.
        patches: (n, 3, r, r) image patches, RGB in [0, 1].
        labels: n short names of the images.
        sources: n source photographs or files of the images (``dataset.group``; the label without it).
    """

    layer: str
    channel: int
    values: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    projections: torch.Tensor
    patches: torch.Tensor
    labels: list[str]
    sources: list[str]


class ScanMismatch(ValueError):
    """A projection's activation is not the one the scan recorded: the scan was made with another model or
    other data."""


def check_scan(layer: str, entry: Entry, value: float) -> None:
    """Refuse a scan whose recorded activation ``entry.value`` the model does not give (``value``) again.

    Raises:
        ScanMismatch: one message naming the image, the unit and both activations.
    """
    if not (value == entry.value or abs(value - entry.value) <= ATOL + RTOL * abs(entry.value)):
        raise ScanMismatch(
            f"image {entry.image} gives activation {value:.6g} at {layer} channel {entry.channel} ({entry.row}, "
            f"{entry.col}), but the scan recorded {entry.value:.6g}: was the scan made with this model and dataset?")


def project_entries(deconv: Deconvnet, x: torch.Tensor, layer: str, slots: Sequence[int],
                    entries: Sequence[Entry]) -> torch.Tensor:
    """Project top-k entries of one layer, each on its image of the batch ``x``, inside its receptive-field box.

    Args:
        deconv: the projector (its net is the scan's model).
        x: (B, C, H, W) model input.
        layer: the entries' layer.
        slots: for each entry, its image's index in ``x``.
        entries: the entries (one ``Deconvnet.project_units`` call for all of them).

    Returns:
        (N, C, r_h, r_w) projections on the boxes of ``receptive_field(layer)``, RGB channel order, model
        input scale, on the CPU.

    Raises:
        ScanMismatch: an entry's activation is not the scan's (``check_scan``).
    """
    image = torch.tensor(list(slots), dtype=torch.long)
    channel = torch.tensor([e.channel for e in entries], dtype=torch.long)
    unit = torch.tensor([[e.row, e.col] for e in entries], dtype=torch.long).reshape(-1, 2)
    done = deconv.project_units(x, layer, image, channel, unit)
    windows, value = done.windows, done.activations
    for entry, v in zip(entries, value.tolist(), strict=True):
        check_scan(layer, entry, v)
    size = deconv.receptive_field(layer).size
    if tuple(windows.shape[-2:]) != tuple(size):
        raise RuntimeError(f"{layer}: projection window {tuple(windows.shape[-2:])} is not the receptive field "
                           f"{size}")
    return deconv.net.preprocessing.to_rgb_order(windows).detach().cpu()


class Patches:
    """Receptive-field patches of one image: padded once with ``PATCH_PAD`` gray, then sliced (cheap).

    Args:
        rgb: the image as shown (``dataset.rgb(i)``).
        margin: how far boxes may reach beyond the image (the largest receptive field is enough).
    """

    def __init__(self, rgb: Image.Image, margin: int) -> None:
        image = pil_to_tensor01(rgb)
        self.margin = margin
        self.padded = torch.nn.functional.pad(image, (margin,) * 4, value=PATCH_PAD)

    def crop(self, box: Sequence[int]) -> torch.Tensor:
        """The (3, h, w) patch in [0, 1] of an unclipped box ``(top, left, bottom, right)``, equal to
        ``plot.crop_box(image, box, PATCH_PAD)``."""
        top, left, bottom, right = (int(v) + self.margin for v in box)
        if min(top, left) < 0 or bottom > self.padded.shape[1] or right > self.padded.shape[2]:
            raise ValueError(f"box {tuple(box)} reaches beyond the margin of {self.margin} px")
        return self.padded[:, top:bottom, left:right]

    def pixels(self, box: Sequence[int]) -> np.ndarray:
        """The patch of ``box`` as an (h, w, 3) uint8 image (the atlas's files)."""
        return to_uint8(self.crop(box).permute(1, 2, 0).numpy())


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
