"""The surfaces tried hard: hostile file names in the explorer and the atlas, the scan cache's key and
its folder, torchrun ranks that disagree, a huge-aspect image, atlas layer names that are paths, boxes
files of the wrong shape, and seeds or channels that are not numbers the engine can take."""

from __future__ import annotations

import datetime
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import deconvnet as dn

HOSTILE = "<img src=x onerror=alert(document.domain)>.png"


def _small_net(seed: int = 0) -> dn.Net:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                          nn.ReLU())
    return dn.wrap(model)


def _photo(seed: int = 0, hw=(40, 48)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8))


# --- 1. escaping ----------------------------------------------------------------------------------------------
def _all_html(app) -> str:
    import ipywidgets as W

    def walk(w):
        yield w
        for c in getattr(w, "children", ()):
            yield from walk(c)

    return "\n".join(w.value for w in walk(app.widget) if isinstance(w, W.HTML))


def test_a_hostile_file_name_reaches_the_explorer_escaped(tmp_path):
    net = _small_net()
    net.provenance["weights"] = HOSTILE  # a weights file of that name: describe() is on every status line
    app = dn.explore(net, _photo(), size=32, layer="4")
    # an upload that is not an image, named to run a script
    app._w["upload"].value = ({"name": HOSTILE, "type": "image/png", "size": 3, "content": memoryview(b"abc"),
                               "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    assert "cannot read the upload" in app.message
    page = _all_html(app)
    assert "<img" not in page and "&lt;img src=x onerror=alert(document.domain)&gt;.png" in page
    # a typed path of that name
    app._w["path"].value = str(tmp_path / HOSTILE)
    app._w["open"].click()
    assert "image file not found" in app.message
    page = _all_html(app)
    assert "<img" not in page and page.count("&lt;img src=x onerror") >= 2  # the weights and the message


def test_escape_is_the_one_rule():
    from deconvnet.html import escape

    assert escape(HOSTILE) == "&lt;img src=x onerror=alert(document.domain)&gt;.png"
    assert escape("a \"b\" & 'c'") == "a &quot;b&quot; &amp; &#x27;c&#x27;"
    assert escape(3) == "3"
