"""What the explorer computes and keeps, per image and layer: the model side, without widgets or drawing.

The images offered and their model inputs (one tensor per image, so that the engine's kept forward
recognises it), the kept forward of each (image, layer) (``Deconvnet(net, keep=N)``: a click only walks
down), the activation map, the unit's projection, the other backward rules' maps
(``analysis.methods.backward_maps``), the strongest channels and units away from the image border, the
layers a user can choose from (``Deconvnet.default_layers`` first, every layer with spatial maps, the
classifier's output where there is one, by class name), and the top-k tiles of a scan (``tiles``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..constants import DEFAULT_SIZE
from ..data import Items
from ..engine import Deconvnet, Projection, ReceptiveField, Target, select_target
from ..engine.rules import RULES
from ..engine.rules import find as find_rule
from ..images import BUNDLED_PHOTOS, ImageLike
from ..models import Net
from ..scan import TopK
from .tiles import Result, TileSource, TileWorker

#: the backward rules one toggle apart (``engine.rules``): label -> method name
METHODS = {r.title: r.key for r in RULES.values()}
#: most dataset items offered in the image list (any index can still be chosen with ``select(image=i)``)
MAX_LISTED_ITEMS = 500
#: a change of image, layer or channel shows this unit unless one is named: the strongest away from the border
STRONGEST = "strongest"

_threads_lock = threading.Lock()
_threads_state = {"users": 0, "before": 0}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block and restored when the last block using it
    ends (the app's main thread and its tile thread may overlap); None: unchanged."""
    if n is None:
        yield
        return
    with _threads_lock:
        if _threads_state["users"] == 0:
            _threads_state["before"] = torch.get_num_threads()
            torch.set_num_threads(n)
        _threads_state["users"] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_state["users"] -= 1
            if _threads_state["users"] == 0:
                torch.set_num_threads(_threads_state["before"])


def unit_at_pixel(rf: ReceptiveField, map_size: tuple[int, int], row: float, col: float) -> tuple[int, int]:
    """The unit whose receptive field is centred nearest to input pixel (row, col), inside the map.

    Unit i covers pixels ``[i j - P, i j - P + r - 1]``, centred at ``i j - P + (r - 1) / 2``.
    """
    out = []
    for v, r, j, p, n in zip((row, col), rf.size, rf.jump, rf.padding, map_size, strict=True):
        i = math.floor((v + p - (r - 1) / 2) / j + 0.5)
        out.append(min(max(i, 0), n - 1))
    return out[0], out[1]


def inside(rf: ReceptiveField, map_size: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool: the units whose receptive field lies inside the image (none of it on the zero padding)."""
    axes = []
    for r, j, p, n, size in zip(rf.size, rf.jump, rf.padding, map_size, hw, strict=True):
        start = torch.arange(n) * j - p
        axes.append((start >= 0) & (start + r <= size))
    return axes[0][:, None] & axes[1][None, :]


def _forward_seconds(deconv: Deconvnet) -> float:
    """Seconds the forwards of ``deconv`` took so far."""
    return deconv.forward_seconds


def _is_dataset(obj: Any) -> bool:
    """A scan's collection (``deconvnet.data``): indexable items ``(x, i)`` and ``rgb(i)``."""
    return (hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and hasattr(obj, "rgb")
            and not isinstance(obj, (str, list, tuple)))


def item_name(dataset: Any, i: int) -> str:
    """A dataset item's name in words, e.g. ``#17 astronaut: top-left crop, 75%, mirrored`` for an item of
    the demo collection (``view``), else ``#i`` and the dataset's label."""
    view = Items(dataset).view(i)
    if view is not None:
        photo, (scale, fx, fy), mirrored = view
        where = {0.0: "top", 0.5: "middle", 1.0: "bottom"}.get(fy, f"{fy:g} down")
        across = {0.0: "left", 0.5: "centre", 1.0: "right"}.get(fx, f"{fx:g} across")
        place = "centre" if (where, across) == ("middle", "centre") else f"{where}-{across}"
        crop = "whole photo" if scale >= 1 else f"{place} crop, {scale:.0%}"
        return f"#{i} {photo}: {crop}" + (", mirrored" if mirrored else "")
    return f"#{i} " + (dataset.label(i) if Items(dataset).offers("label") else "")


def class_layer(net: Net) -> str | None:
    """The classifier's output layer (the last ``nn.Linear`` the forward reaches in eval mode: not an
    auxiliary head), or None for a model without one (features-only weights)."""
    reached = net.reached_layers()
    linear = [n for n, m in net.layers.items() if isinstance(m, nn.Linear) and n in reached]
    if not linear:
        return None
    return max(linear, key=net.order)


class ExplorerState:
    """What is on show and what is kept for it; ``Explorer`` (``app``) lays it out and draws it.

    Attributes:
        net, deconv: the model and its ``Deconvnet`` keeping recorded forwards (``keep``).
        layer, channel, position, method, projection, image_key: what is on show.
        layers: the layers offered: ``default_layers`` first, then every other layer with spatial maps in
            forward order, then ``class_layer`` (the classifier's output, whose channels are classes).
        timings: seconds the last update spent: ``forward`` (0 when the kept forward was reused),
            ``project``, ``render``, ``total``; ``tiles``: the top-k tiles (after the main view).
        threads: torch's intra-op threads while computing (restored after); None: torch's setting.
    """

    def __init__(self, net: Net, image_or_dataset: Any = None, topk: TopK | None = None, *, size: int = DEFAULT_SIZE,
                 n_strongest: int = 12, threads: int | None = 1, keep: int = 16) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size!r}")
        self.net, self.topk, self.size, self.n_strongest, self.threads = net, topk, size, n_strongest, threads
        self.deconv = Deconvnet(net, keep=keep)
        self.spatial_layers = self.deconv.spatial_layers()
        spatial = set(self.spatial_layers)
        defaults = [n for n in self.deconv.default_layers() if n in spatial]
        self.class_layer = class_layer(net)
        self.layers = defaults + [n for n in self.spatial_layers if n not in set(defaults)]
        self.layers += [self.class_layer] if self.class_layer else []
        self.default_layers = defaults
        self.dataset = None
        self._images: OrderedDict[str, Callable[[], torch.Tensor]] = OrderedDict()
        self._inputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._acts: OrderedDict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        given = image_or_dataset if image_or_dataset is not None else "astronaut"
        if _is_dataset(given):
            self.dataset = given
        else:
            for k, img in enumerate(given if isinstance(given, (list, tuple)) else [given]):
                self._add_image(img,
                                None if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__") else f"image {k}")
        if self.dataset is None and topk is not None:
            self.dataset = _scanned_dataset(topk, net)
        if self.dataset is not None:
            for i in range(min(len(self.dataset), MAX_LISTED_ITEMS)):
                self._images[self._item_key(i)] = self._item_loader(i)
        for name in BUNDLED_PHOTOS:
            self._images.setdefault(name, self._file_loader(name))
        self.image_key = next(iter(self._images))
        self.layer: str = ""
        self.channel, self.position, self.method = 0, (0, 0), "deconvnet"
        self.projection: Projection | None = None
        self.timings: dict[str, float] = {}
        self.worker = (TileWorker(TileSource(net, self.dataset, topk), run=self._computing)
                       if topk is not None else None)

    def _computing(self, fn: Callable[[], Any]) -> Any:
        with torch_threads(self.threads):
            return fn()

    # --- images ----------------------------------------------------------------------------------------
    def _item_key(self, i: int) -> str:
        return item_name(self.dataset, i)

    def _item_loader(self, i: int) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            x = self.dataset[i][0]
            if x is None:
                raise ValueError(f"dataset item {i} cannot be read")
            return x.unsqueeze(0)

        return load

    def _file_loader(self, image: ImageLike) -> Callable[[], torch.Tensor]:
        return lambda: self.net.preprocess(image, size=self.size, crop=self.size)

    def _add_image(self, image: ImageLike, label: str | None = None) -> str:
        """Offer an image in the list (a path, a bundled name, PIL, array or tensor); returns its key."""
        key = label if label is not None else str(image)
        self._images[key] = self._file_loader(image)
        self._images.move_to_end(key, last=False)  # the user's own images first
        self._inputs.pop(key, None)
        return key

    def _input(self, key: str) -> torch.Tensor:
        """The model input of an image, made once: the kept forward keys on the tensor itself."""
        if key not in self._inputs:
            self._inputs[key] = self._images[key]().to(device=self.net.device, dtype=self.net.dtype)
            while len(self._inputs) > 8:
                self._inputs.popitem(last=False)
        return self._inputs[key]

    def _resolve_image(self, image: Any) -> str:
        if isinstance(image, str) and image in self._images:
            return image
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            if self.dataset is None:
                raise ValueError(f"image index {image} needs a dataset. Hint: explore(net, dataset, topk)")
            i = int(image)
            if not 0 <= i < len(self.dataset):
                raise ValueError(f"image index {i} is out of range for the dataset's {len(self.dataset)} items")
            key = self._item_key(i)
            self._images.setdefault(key, self._item_loader(i))
            return key
        from ..images import load_rgb

        load_rgb(image)  # reads it now: a missing or broken file is an error here, not later
        return self._add_image(image, None if isinstance(image, str) or hasattr(image, "__fspath__") else "your image")

    @property
    def x(self) -> torch.Tensor:
        """(1, 3, H, W) the model input on show."""
        return self._input(self.image_key)

    # --- layers and classes ------------------------------------------------------------------------------
    def layer_options(self, text: str = "") -> list[str]:
        """The layers offered whose name holds ``text`` (any case; all when empty), in ``layers`` order."""
        text = text.strip().lower()
        return [n for n in self.layers if text in n.lower()]

    def _check_layer(self, layer: Any) -> str:
        name = self.net.resolve(layer)
        if name not in self.layers:
            raise ValueError(f"layer '{name}' has no map to click on. Hint: one of {', '.join(self.layers[:12])}"
                             + (f", ... ({len(self.layers)} layers)" if len(self.layers) > 12 else ""))
        return name

    @property
    def is_class(self) -> bool:
        """Whether the layer on show is the classifier's output (its channels are classes)."""
        return self.layer == self.class_layer

    def class_name(self, c: int) -> str:
        cats = self.net.categories
        return cats[c] if cats is not None and c < len(cats) else f"class {c}"

    def _class_channel(self, channel: Any) -> Any:
        """A class given by name -> its index; other values unchanged."""
        if isinstance(channel, str) and channel not in ("max", STRONGEST):
            cats = self.net.categories or []
            if channel in cats:
                return cats.index(channel)
            if channel.startswith("class ") and channel[6:].isdigit():
                return int(channel[6:])
            raise ValueError(f"unknown class '{channel}' for {self.net.arch}. Hint: a class index"
                             + (", or a name such as " + ", ".join(repr(c) for c in cats[:3]) if cats else ""))
        return channel

    def top_classes(self, n: int = 10) -> list[tuple[int, str, float]]:
        """The classifier's ``n`` strongest outputs for the image on show: ``[(index, name, score), ...]``."""
        scores = self._act(self.x, self.class_layer)[0].double().cpu()
        order = torch.argsort(scores, descending=True, stable=True)[:n].tolist()
        return [(c, self.class_name(c), float(scores[c])) for c in order]

    # --- activations ---------------------------------------------------------------------------------
    def activation(self) -> torch.Tensor:
        """(C, h, w) the current layer's activations for the image on show (from the kept forward)."""
        return self._act(self.x, self.layer)[0]

    def _act(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """A layer's activations for one input, recorded once and kept (a chain's record is the one its
        projections walk down from; a graph's projections keep their own forward, with its autograd graph)."""
        k = (id(x), layer)
        hit = self._acts.get(k)
        if hit is not None and hit[0] is x:
            self._acts.move_to_end(k)
            return hit[1]
        act = self.deconv.record(x, [layer]).activations[layer]
        self._acts[k] = (x, act)  # holding x keeps its id from being reused by another tensor
        while len(self._acts) > 16:
            self._acts.popitem(last=False)
        return act

    def inside(self, layer: str | None = None) -> torch.Tensor | None:
        """(h, w) bool: units of ``layer`` whose receptive field lies inside the image on show; None when
        none does (every field reaches the padding, or is too wide to be measured)."""
        layer = layer or self.layer
        act = self._act(self.x, layer)
        try:
            rf = self.deconv.receptive_field(layer)
        except ValueError:
            return None
        mask = inside(rf, tuple(act.shape[-2:]), tuple(self.x.shape[-2:]))
        return mask if bool(mask.any()) else None

    def _peaks(self, act: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(C,) each channel's largest activation (inside ``mask`` when given)."""
        if mask is not None:
            act = act.masked_fill(~mask.to(act.device), -math.inf)
        return act.flatten(1).amax(1).double().cpu()

    def strongest_channels(self, n: int | None = None) -> list[tuple[int, float]]:
        """The ``n`` channels with the largest activation away from the border (units whose receptive field
        lies inside the image, where the layer has any; every unit otherwise): ``[(channel, max), ...]``,
        strongest first (ties: the lower channel). For the classifier's output: the strongest classes."""
        if self.layer == self.class_layer:
            return [(c, s) for c, _, s in self.top_classes(n or self.n_strongest)]
        act = self.activation()
        peak = self._peaks(act, self.inside())
        order = sorted(range(len(peak)), key=lambda c: (-float(peak[c]), c))
        return [(c, float(peak[c])) for c in order[: n or self.n_strongest]]

    def strongest_unit(self, channel: int, layer: str | None = None) -> tuple[int, int]:
        """The channel's strongest unit away from the border when one there is active, else its strongest."""
        layer = layer or self.layer
        a = self._act(self.x, layer)[0, channel]
        mask = self.inside(layer)
        if mask is not None and float(a[mask.to(a.device)].max()) > 0:
            a = a.masked_fill(~mask.to(a.device), -math.inf)
        k = int(torch.argmax(a.flatten()))  # the first (row-major) of equal maxima, as select_target
        return divmod(k, a.shape[1])

    def at_border(self) -> bool:
        """Whether the unit on show sees the zero padding (its receptive field leaves the image)."""
        p = self.projection
        if p is None or p.box is None:
            return False
        top, left, bottom, right = (int(v) for v in p.box[0])
        h, w = self.x.shape[-2:]
        return top < 0 or left < 0 or bottom > h or right > w

    # --- what is on show -------------------------------------------------------------------------------
    def compute(self, image: Any = None, layer: str | None = None, channel: int | str | None = None,
                position: tuple[int, int] | str | None = None, method: str | None = None) -> Projection:
        """Compute what ``select`` shows and make it the state on show (see ``Explorer.select``)."""
        with torch_threads(self.threads):
            return self._compute(image, layer, channel, position, method)

    def _compute(self, image: Any, layer: str | None, channel: int | str | None,
                 position: tuple[int, int] | str | None, method: str | None) -> Projection:
        t0 = time.perf_counter()
        key = self.image_key if image is None else self._resolve_image(image)
        new_layer = self.layer if layer is None else self._check_layer(layer)
        if method is not None:
            rule = find_rule(method)
            method = rule.key if rule is not None else method
            if method not in METHODS.values():
                raise ValueError(f"unknown method '{method}'. Hint: one of {', '.join(METHODS.values())}")
        is_class = new_layer == self.class_layer
        if channel is None:
            channel = (STRONGEST if not is_class else "max") if new_layer != self.layer else self.channel
        if is_class:
            channel = self._class_channel(channel)
        if position is None:
            changed = key != self.image_key or new_layer != self.layer or channel != self.channel
            position = STRONGEST if changed or self.projection is None else self.position
        x = self._input(key)
        picked = position == STRONGEST  # the unit is the app's choice, not a click's
        forward_before = _forward_seconds(self.deconv)
        t1 = time.perf_counter()
        if channel == STRONGEST or position == STRONGEST:  # resolved on this image's record, as the app shows it
            old = self.image_key, self.layer
            self.image_key, self.layer = key, new_layer
            try:
                if channel == STRONGEST:
                    channel = self.strongest_channels(1)[0][0]
                if position == STRONGEST and not is_class:
                    # the channel checked as the engine checks it, before its map is read
                    selected = select_target(self._act(x, new_layer), Target(new_layer, channel), self.net)
                    channel = int(selected.channels[0])
                    position = self.strongest_unit(channel)
            finally:
                self.image_key, self.layer = old
        if is_class:
            position = "max"
        p = self.deconv.project(x, new_layer, channel, position)  # validates channel and position
        forward_s = _forward_seconds(self.deconv) - forward_before
        method = method or self.method
        if method != "deconvnet":
            p = dataclasses.replace(p, projection=self._backward_map(x, p, method), rule=method)
        # only now, when everything is computed, does what is on show change
        self.image_key, self.layer, self.method, self.projection = key, new_layer, method, p
        self.channel = int(p.channel[0])
        self.position = tuple(int(v) for v in p.position[0])
        self.picked_strongest = picked and not is_class
        t2 = time.perf_counter()
        self.timings = {"forward": forward_s, "project": t2 - t1 - forward_s, "total": t2 - t0}
        return p

    def _backward_map(self, x: torch.Tensor, p: Projection, method: str) -> torch.Tensor:
        """Guided backprop or gradient for the deconvnet's seed of a unit (``p``'s)."""
        from ..analysis.methods import backward_maps

        act = self._act(x, p.layer)
        unit = tuple(int(v) for v in p.position[0]) if act.dim() == 4 else "max"
        seed = select_target(act, Target(p.layer, int(p.channel[0]), unit), self.net).seed()
        return backward_maps(self.net, x, p.layer, seed, (method,))[method]

    # --- top-k tiles ---------------------------------------------------------------------------------
    @property
    def tile_key(self) -> tuple[str, int]:
        return (self.layer, self.channel)

    def tiles_note(self) -> str | None:
        """Why the layer and channel on show have no tiles (None: they have, or no scan was given)."""
        if self.worker is None:
            return None
        if self.is_class:
            return "The classifier's output has no tiles: a scan keeps spatial maps."
        got = self.worker.cached(self.tile_key)
        if isinstance(got, str):
            return got
        return self.worker.source.note(*self.tile_key)

    @property
    def tiles(self):
        """The top-k tiles (``figure2.FeatureTiles``) of the channel on show, from the scan (computed now,
        or waited for when the app computes them in the background); None without a scan or with a note."""
        if self.worker is None or self.tiles_note() is not None:
            return None
        got = self.worker.wait(self.tile_key) or self.worker.compute(self.tile_key)
        return None if isinstance(got, str) else got

    def tiles_result(self) -> Result | None:
        """The tiles of what is on show if they are already kept (no computing), else None."""
        return None if self.worker is None else self.worker.cached(self.tile_key)


def _scanned_dataset(topk: TopK, net: Net) -> Any:
    """The offline demo collection a scan ran over, rebuilt from its provenance; None for other data."""
    described = topk.provenance.get("dataset", {})
    if described.get("kind") != "demo":
        return None
    from ..data import Head, demo_collection

    data = demo_collection(preprocessing=net.preprocessing, size=int(described.get("size", DEFAULT_SIZE)))
    n = int(topk.provenance.get("n", len(data)))
    return Head(data, n) if n < len(data) else data
