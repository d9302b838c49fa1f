"""The part boxes of the correspondence experiment (``correspondence``): reading them from a JSON file, the
bundled faces' boxes, mapping a box through the resize and centre crop, and the random control's boxes.

Boxes are ``(top, left, bottom, right)``, bottom and right exclusive, in the pixels of the images as given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..images import resized_size

Box = tuple[int, int, int, int]
PARTS_FILE = Path(__file__).with_name("parts.json")
OBJECT = "object"  # the key of a JSON of boxes that gives the region of the random control, not a part


@dataclass
class PartBoxes:
    """Images and their part boxes, as read from a JSON file (``load_parts``).

    Attributes:
        images: image names (bundled photographs) or file paths.
        parts: part name -> one box per image, in the image's own pixels.
        objects: per image, the region of the random control (None: the whole image).
    """

    images: list[str]
    parts: dict[str, list[Box]]
    objects: list[Box | None]


#: the largest coordinate a box may have (pixels): beyond any image, and far from what overflows a float
MAX_COORDINATE = 2**31 - 1
_BOX_FORMAT = "[top, left, bottom, right] in pixels, four integers"


def _check_box(box: Any, what: str) -> Box:
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)):
        shown = repr(box) if len(repr(box)) <= 60 else repr(box)[:57] + "..."
        raise ValueError(f"{what}: {shown} is not a box. Hint: {_BOX_FORMAT}")
    if any(abs(int(v)) > MAX_COORDINATE for v in box):
        raise ValueError(f"{what}: a coordinate is larger than {MAX_COORDINATE}. Hint: {_BOX_FORMAT}, inside the "
                         "image")
    top, left, bottom, right = (int(v) for v in box)
    if not (0 <= top < bottom and 0 <= left < right):
        raise ValueError(f"{what}: box {[top, left, bottom, right]} is empty or negative. Hint: [top, left, bottom, "
                         "right] with top < bottom and left < right (bottom and right exclusive)")
    return top, left, bottom, right


def _check_entry(entry: Any, name: str, path: Any) -> dict:
    """An image's entry of a boxes file: an object of part name -> box."""
    if not isinstance(entry, dict):
        raise ValueError(f"boxes file '{path}': the entry of image '{name}' is a {type(entry).__name__}, not an "
                         f"object. Hint: \"{name}\": {{\"left_eye\": [top, left, bottom, right], ...}}")
    return entry


def load_parts(path: str | os.PathLike | None = None, folder: str | os.PathLike | None = None) -> PartBoxes:
    """Read a JSON of part boxes: ``{"images": {name: {part: [top, left, bottom, right], ..., "object": [...]}}}``.

    Args:
        path: the JSON file (default: ``parts.json``, the bundled faces).
        folder: where the images named in the file are (a name is then a path relative to it); None: names are
            bundled photographs or paths.

    Every image must have the same parts; ``object`` (optional) is the region of the random control.
    """
    path = PARTS_FILE if path is None else Path(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"boxes file not found: '{path}'. Hint: a JSON file like {PARTS_FILE.name} of the "
                                "package")
    try:
        spec = json.loads(Path(path).read_text())
    except ValueError as err:
        raise ValueError(f"boxes file '{path}' is not valid JSON ({err}). Hint: see {PARTS_FILE} for the "
                         "format") from None
    entries = spec.get("images") if isinstance(spec, dict) else None
    if not isinstance(entries, dict) or len(entries) < 2:
        raise ValueError(f"boxes file '{path}' needs an 'images' object with at least 2 images, each "
                         "{{part: [top, left, bottom, right]}}. Hint: see the package's parts.json")
    names = list(entries)
    for name in names:
        _check_entry(entries[name], name, path)
    part_names = [p for p in entries[names[0]] if p != OBJECT]
    if not part_names:
        raise ValueError(f"boxes file '{path}': image '{names[0]}' has no part boxes")
    parts: dict[str, list[Box]] = {p: [] for p in part_names}
    objects: list[Box | None] = []
    for name in names:
        boxes = entries[name]
        have = [p for p in boxes if p != OBJECT]
        if sorted(have) != sorted(part_names):
            raise ValueError(f"boxes file '{path}': image '{name}' has parts {sorted(have)}, but '{names[0]}' has "
                             f"{sorted(part_names)}. Hint: every image needs the same parts")
        for p in part_names:
            parts[p].append(_check_box(boxes[p], f"'{name}' {p}"))
        objects.append(_check_box(boxes[OBJECT], f"'{name}' {OBJECT}") if OBJECT in boxes else None)
    if folder is not None:
        missing = [n for n in names if not (Path(folder) / n).is_file()]
        if missing:
            raise FileNotFoundError(f"boxes file '{path}' names image(s) not in '{folder}': {', '.join(missing[:5])}. "
                                    "Hint: names are file paths relative to the folder")
        names = [str(Path(folder) / n) for n in names]
    return PartBoxes(names, parts, objects)


def bundled_parts() -> PartBoxes:
    """The offline set: astronaut, grace_hopper (human faces) and chelsea (a cat), with hand-set boxes of the
    left eye, right eye (the subject's own) and nose, and the face as the region of the random control."""
    return load_parts(PARTS_FILE)


def map_box(box: Box, wh: tuple[int, int], size: int | None) -> Box:
    """A box in an image of ``wh`` (width, height) pixels, after resizing the shorter side to ``size`` and a
    centre crop of ``size`` x ``size`` (``net.preprocess(image, size=size, crop=size)``); clipped to the crop."""
    if size is None:
        return box
    w, h = wh
    nw, nh = resized_size(wh, size)
    sx, sy = nw / w, nh / h
    left0, top0 = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    top, left, bottom, right = box
    top, bottom = (min(max(int(round(v * sy)) - top0, 0), size) for v in (top, bottom))
    left, right = (min(max(int(round(v * sx)) - left0, 0), size) for v in (left, right))
    return top, left, bottom, right


def _random_box(hw: tuple[int, int], region: Box, image_hw: tuple[int, int], g: torch.Generator) -> Box:
    """A box of ``hw`` at a uniformly random position inside ``region`` (the whole image if it does not fit)."""
    h, w = hw
    t0, l0, b0, r0 = region
    if b0 - t0 < h or r0 - l0 < w:
        t0, l0, b0, r0 = 0, 0, *image_hw
    top = t0 + int(torch.randint(b0 - t0 - h + 1, (1,), generator=g))
    left = l0 + int(torch.randint(r0 - l0 - w + 1, (1,), generator=g))
    return top, left, top + h, left + w
