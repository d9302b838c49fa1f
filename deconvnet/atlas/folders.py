"""Where a layer's files live inside an atlas: one path component per layer, never outside ``--out``."""

from __future__ import annotations

import hashlib
import re

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def layer_folder(layer: str) -> str:
    """The folder (and file-name part) of a layer inside the atlas: one path component, never outside ``out``.

    A plain name (``conv5_3``, ``features.28``, ``layer3``) is kept as it is; any other module name (one with
    ``/``, ``..``, spaces, or an absolute path) becomes its plain characters and a digest of the name, so
    two layers never share a folder.
    """
    if _PLAIN_NAME.fullmatch(layer) and ".." not in layer:
        return layer
    plain = re.sub(r"[^A-Za-z0-9_-]+", "_", layer).strip("_")[:40] or "layer"
    return f"{plain}-{hashlib.sha256(layer.encode()).hexdigest()[:8]}"
