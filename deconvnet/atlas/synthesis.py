"""The atlas's synthesised images (``atlas --synthesize``): per channel, the image that excites it most
(``deconvnet.synthesis``), kept beside the tiles so that a rebuild does not redo it.

Files: ``OUT/<layer>/synth/<c>.png`` and ``<c>.json`` (the activation the image reaches, its settings and the
weights). A channel is synthesised again only when its record is missing or was made with other settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_path, write_json
from ..models import Net
from ..synthesis import synthesize
from ..synthesis.files import to_uint8
from .folders import layer_folder

#: what ``atlas --synthesize`` uses unless told otherwise (lucid's render_vis: 512 steps at 128 px)
DEFAULT_SETTINGS = {"steps": 512, "size": 128, "seed": 0, "lr": 0.05, "objective": "channel", "transforms": "standard"}
#: channels optimised together
BATCH = 8


def synth_paths(layer: str, channel: int) -> tuple[str, str]:
    """The image and record of a channel, relative to the atlas folder."""
    return f"{layer_folder(layer)}/synth/{channel}.png", f"{layer_folder(layer)}/synth/{channel}.json"


def _wanted(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in DEFAULT_SETTINGS}


def _read(out: Path, layer: str, channel: int, key: dict[str, Any], weights: str) -> dict[str, Any] | None:
    image, record = (out / p for p in synth_paths(layer, channel))
    if not image.is_file() or not record.is_file():
        return None
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key") != key or rec.get("weights") != weights or rec.get("settings", {}).get("interrupted"):
        return None
    return rec


def synthesize_atlas(net: Net, out: Path, channels: dict[str, list[int]], settings: dict[str, Any] | None = None,
                     *, progress: bool = True) -> tuple[dict[str, dict[int, dict[str, Any]]], int]:
    """Synthesise the images the atlas lacks; returns (layer -> channel -> record, images made now).

    Raises:
        KeyboardInterrupt: interrupted; what was finished is kept (a rerun goes on from there).
    """
    key = _wanted({**DEFAULT_SETTINGS, **(settings or {})})
    weights = net.describe()
    records: dict[str, dict[int, dict[str, Any]]] = {}
    todo: list[tuple[str, int]] = []
    for layer, chans in channels.items():
        records[layer] = {}
        for c in chans:
            rec = _read(out, layer, c, key, weights)
            if rec is None:
                todo.append((layer, c))
            else:
                records[layer][c] = rec
    bar = tqdm(total=len(todo), desc="synthesize", unit="channel", disable=not progress)
    made = 0
    try:
        for layer in channels:
            mine = [c for name, c in todo if name == layer]
            for start in range(0, len(mine), BATCH):
                s = synthesize(net, layer, mine[start : start + BATCH], progress=False, **key)
                if s.interrupted:
                    raise KeyboardInterrupt
                for i, c in enumerate(s.channels):
                    image, record = (out / p for p in synth_paths(layer, c))
                    image.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(image) as tmp:
                        Image.fromarray(to_uint8(s.images[i])).save(tmp, format="PNG")
                    rec = s.record(i) | {"key": key, "settings": s.settings, "recipe": s.recipe(), "weights": weights,
                                         "image": Path(synth_paths(layer, c)[0]).name}
                    write_json(rec, record)
                    records[layer][c] = rec
                    made += 1
                bar.update(len(s.channels))
    finally:
        bar.close()
    return records, made
