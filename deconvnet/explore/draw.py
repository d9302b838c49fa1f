"""How the explorer's panels are drawn: PIL pictures (H, W, 3) uint8 from what the model side computed.

Nothing here runs the model or knows about widgets: each function takes arrays or a ``Projection`` and
returns pictures, or maps a display pixel back to what is drawn there.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..engine import Projection
from ..figure2 import mosaic
from ..plot import crop_box, scale_for_display
from ..tiles import PATCH_PAD

#: pixels between tiles of a mosaic
TILE_GAP = 2
#: colours: the receptive field on the image, the chosen cell of the map, the chosen class's bar
FIELD, CELL, CHOSEN = (255, 212, 0), (0, 255, 255), (255, 212, 0)


def png(a: np.ndarray) -> bytes:
    """(H, W, 3) float in [0, 1] or uint8 -> PNG bytes (fast compression: speed matters more than size)."""
    from PIL import Image

    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def resize(a: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (h, w, 3) uint8, resized with PIL."""
    from PIL import Image

    u8 = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    im = Image.fromarray(u8).resize((hw[1], hw[0]), Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(im)


def outline(a: np.ndarray, box: Sequence[float], color: tuple[int, int, int] = FIELD, width: int = 2) -> np.ndarray:
    """Draw a box ``(top, left, bottom, right)`` (display pixels, bottom/right exclusive) on a uint8
    image: black under colour, so that it shows on light and dark images alike; clipped to the image."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(a)
    draw = ImageDraw.Draw(im)
    top, left, bottom, right = box
    draw.rectangle([left - 1, top - 1, right, bottom], outline=(0, 0, 0), width=width + 2)
    draw.rectangle([left, top, right - 1, bottom - 1], outline=color, width=width)
    return np.asarray(im)


def activation_colors(a: np.ndarray) -> np.ndarray:
    """An activation map (h, w) -> (h, w, 3) in [0, 1]: ``magma`` from 0 to the map's maximum when it has
    no negative values (after a ReLU or a pool), else ``RdBu_r`` symmetric about 0 (zero is white)."""
    import matplotlib

    a = np.asarray(a, dtype=np.float64)
    if (a < 0).any():
        m = np.abs(a).max()
        return matplotlib.colormaps["RdBu_r"](0.5 + a / (2 * m))[..., :3]
    m = a.max()
    return matplotlib.colormaps["magma"](a / m if m > 0 else np.zeros_like(a))[..., :3]


def zoom(panel: int, hw: Sequence[int]) -> float:
    """Display pixels per input pixel of the image panels."""
    return panel / max(hw)


def cell(panel: int, map_size: Sequence[int]) -> int:
    """Display pixels per map unit of the activation panel (an integer: every unit the same size)."""
    return max(1, panel // max(map_size))


def panels(p: Projection, activation: np.ndarray, position: tuple[int, int], *, scaling: str,
           panel: int) -> dict[str, np.ndarray]:
    """The main panels of a unit: ``image`` and ``projection`` (its receptive field outlined), ``activation``
    (the channel's map, the unit outlined) and, where the unit has a box, ``patch`` (the image inside the
    box) and ``zoom`` (the projection inside it), enlarged by whole pixels."""
    image = p.image_rgb()[0].detach().cpu()
    proj = p.preprocessing.to_rgb_order(p.projection)[0].detach().cpu()
    hw = tuple(image.shape[-2:])
    z = zoom(panel, hw)
    shown = (round(hw[0] * z), round(hw[1] * z))
    img = resize(image.permute(1, 2, 0).double().numpy(), shown, nearest=False)
    prj = resize(scale_for_display(proj, scaling), shown, nearest=True)
    if p.box is None:
        return {"image": img, "projection": prj}
    box = [int(v) for v in p.box[0]]
    dbox = [v * z for v in box]
    out = {"image": outline(img, dbox), "projection": outline(prj, dbox)}
    c = cell(panel, activation.shape)
    h, w = activation.shape
    amap = resize(activation_colors(activation), (h * c, w * c), nearest=True)
    r, col = position
    out["activation"] = outline(amap, [r * c, col * c, (r + 1) * c, (col + 1) * c], color=CELL,
                                width=max(1, min(2, c // 3)))
    side = max(box[2] - box[0], box[3] - box[1])
    big = max(1, panel // side) * side if side <= panel else panel  # whole pixels when enlarged
    patch = crop_box(image, box, PATCH_PAD).permute(1, 2, 0).double().numpy()
    out["patch"] = resize(patch, (big, big), nearest=big >= side)
    out["zoom"] = resize(scale_for_display(crop_box(proj, box, 0.0), scaling), (big, big), nearest=big >= side)
    return out


def class_bars(scores: Sequence[tuple[int, str, float]], chosen: int, *, width: int, row: int = 20) -> np.ndarray:
    """The classifier's strongest outputs as horizontal bars, one row each: ``scores`` are
    ``(class index, name, score)``, strongest first; the chosen class's bar in yellow, the others gray."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, max(1, len(scores)) * row), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    top = max((abs(s) for _, _, s in scores), default=1.0) or 1.0
    for k, (c, name, s) in enumerate(scores):
        y = k * row
        length = int((width - 2) * abs(s) / top)
        draw.rectangle([0, y + 2, max(1, length), y + row - 3], fill=CHOSEN if c == chosen else (200, 200, 200))
        draw.text((4, y + 4), f"{name}  {s:.3g}", fill=(0, 0, 0))
    return np.asarray(im)


def bar_at(y: float, n: int, row: int = 20) -> int | None:
    """Which row of ``class_bars`` display pixel row ``y`` falls on, or None."""
    k = int(y // row)
    return k if 0 <= k < n and y >= 0 else None


def tile_size(field: int, n: int, panel: int) -> int:
    """Display side of one tile of a mosaic of ``n`` tiles of ``field`` px: whole pixels per field pixel,
    never smaller than the field."""
    cols = math.ceil(math.sqrt(n))
    return field * max(1, (panel // cols) // field)


def tile_mosaics(projections: torch.Tensor, patches: torch.Tensor, *, scaling: str,
                 panel: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The top-k tiles as two mosaics, projections and their image patches, tile for tile at the same
    place: ``(projections, patches, tile side in display pixels)``."""
    n = len(projections)
    cols = math.ceil(math.sqrt(n))
    px = tile_size(projections.shape[-1], n, panel)
    projs = [resize(scale_for_display(q, scaling), (px, px), True) / 255.0 for q in projections]
    pats = [resize(q.permute(1, 2, 0).double().numpy(), (px, px), True) / 255.0 for q in patches]
    to8 = lambda m: (m * 255 + 0.5).astype(np.uint8)  # noqa: E731
    return to8(mosaic(projs, cols, TILE_GAP)), to8(mosaic(pats, cols, TILE_GAP)), px


def tile_at(x: float, y: float, n: int, px: int) -> int | None:
    """Which tile of a mosaic of ``n`` tiles of ``px`` display pixels (``tile_mosaics``) holds display
    pixel (x, y), or None (a gap counts with the tile before it)."""
    cols = math.ceil(math.sqrt(n))
    step = px + TILE_GAP
    r, c = int(y // step), int(x // step)
    k = r * cols + c
    return k if x >= 0 and y >= 0 and c < cols and 0 <= k < n else None
