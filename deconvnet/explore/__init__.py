"""An interactive explorer for a notebook cell, in the spirit of Yosinski et al.'s DeepVis toolbox.

Pick an image, a layer, a channel and a unit (by clicking on the activation map or on the image) and see,
side by side, the image with the unit's receptive field, the channel's activation map, the unit's
projection, and the receptive-field patch beside the projection zoomed to it; guided backprop and the plain
gradient of the same seed are one toggle away. Any CNN: a chain (VGG, AlexNet) or a graph (ResNet,
GoogLeNet, ...); the layers offered are the model's default layers first, then every layer with spatial
maps (a text box filters them), and, where the model has a classifier, its output, whose classes are chosen
by name. With a saved scan (``TopK``) the channel's top-9 tiles are shown below, computed after the main
view on a background thread (click one to open its image at its unit)::

    app = dn.explore(net, "astronaut")               # an image, a list of images, or a dataset
    app = dn.explore(net, dataset, topk)             # with the scan of that dataset: top-9 tiles
    app                                              # the last expression of a cell shows it
    app.select(layer="relu4_3", channel=12, position=(10, 11))   # what a click does, from code
    app.projection                                   # the Projection on show

Speed: the forward of each (image, layer) is recorded once and kept (``Deconvnet(net, keep=N)``), so a click
only walks down. ``app.timings`` holds how long the last update took.

The package: ``state`` (what is computed and kept per image and layer), ``tiles`` (a scan's top-k tiles),
``draw`` (the PIL pictures), ``app`` (widgets, layout and events).
"""

from __future__ import annotations

from typing import Any

from ..constants import DEFAULT_SIZE
from ..models import Net
from ..plot import DEFAULT_SCALING
from ..scan import TopK
from .app import Explorer
from .draw import activation_colors
from .state import METHODS, ExplorerState, unit_at_pixel

__all__ = ["METHODS", "Explorer", "ExplorerState", "activation_colors", "explore", "unit_at_pixel"]


def explore(
    net: Net,
    image_or_dataset: Any = None,
    topk: TopK | None = None,
    *,
    size: int = DEFAULT_SIZE,
    layer: str | None = None,
    scaling: str = DEFAULT_SCALING,
    panel: int = 224,
    threads: int | None = 1,
    background: bool = True,
    wants: Any = False,
) -> Explorer:
    """An interactive explorer of ``net`` for a notebook cell (ipywidgets; clicks with ipyevents).

    Args:
        net: the model (``load_vgg``, ``load_model``, ``wrap``): a chain or a graph.
        image_or_dataset: an image (path, bundled photograph name such as ``"astronaut"``, PIL image, array,
            (3, H, W) tensor), a list of them, or a collection from ``deconvnet.data`` (its items are
            offered as images, as they were scanned). None: ``"astronaut"``. The bundled photographs
            are always offered, and a file path or an upload can be opened from the app.
        topk: a scan of that collection (``scan_top_k`` / ``TopK.load``): the channel's top-k tiles are
            shown. A scan of the offline demo collection finds its images by itself.
        size: images are resized (shorter side) and center-cropped to ``size`` (collection items keep
            their own size).
        layer: the layer shown first (default ``relu4_3``, else the middle one of the default layers: ResNet's
            ``layer3``).
        scaling: display scaling of projections (``deconvnet.plot``).
        panel: side of each picture, in screen pixels.
        threads: torch's intra-op threads while the app computes (one: a walk down is made of small
            convolutions, and on busy shared cores more threads wait on each other); None: torch's setting.
        background: compute a channel's top-k tiles on a background thread after the main view is drawn
            (False: before ``select`` returns).
        wants: True (or ``synthesize`` settings, e.g. ``{"steps": 256, "size": 128}``): a "what this unit
            wants" panel, the image synthesised to excite the channel on show (``deconvnet.synthesis``; default
            128 steps at 96 px), computed on a background thread like the tiles and kept per channel.

    Returns:
        An ``Explorer``: show it as the last expression of a cell; drive it with ``select``.
    """
    return Explorer(net, image_or_dataset, topk, size=size, layer=layer, scaling=scaling, panel=panel,
                    threads=threads, background=background, wants=wants)
