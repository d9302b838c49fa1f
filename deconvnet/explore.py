"""An interactive explorer for a notebook cell, in the spirit of Yosinski et al.'s DeepVis toolbox.

Pick an image, a layer, a channel and a unit (by clicking on the activation map or on the image) and see,
side by side, the image with the unit's receptive field, the channel's activation map, the unit's
projection, and the receptive-field patch beside the projection zoomed to it; guided backprop and the plain
gradient of the same seed are one toggle away, and with a saved scan (``TopK``) the channel's top-9 tiles
are shown below (click one to open its image at its unit)::

    app = dn.explore(net, "astronaut")               # an image, a list of images, or a dataset
    app = dn.explore(net, dataset, topk)             # with the scan of that dataset: top-9 tiles
    app                                              # the last expression of a cell shows it
    app.select(layer="relu4_3", channel=12, position=(10, 11))   # what a click does, from code
    app.projection                                   # the Projection on show

Speed: the hooked forward of each (image, layer) is recorded once and kept, so a click only walks down
(the receptive-field-cropped path of ``Deconvnet``). The pictures are drawn with PIL, not matplotlib.
``app.timings`` holds how long the last update took.

ipywidgets (and ipyevents, for clicks) are imported only when an explorer is made, so ``import deconvnet``
does not need them.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .engine import Deconvnet, Projection, ReceptiveField, Target, receptive_field, select_target
from .images import BUNDLED_PHOTOS, ImageLike, to_rgb_pil
from .models import Net
from .plot import DEFAULT_SCALING, SCALINGS, crop_box, scale_for_display, where
from .scan import TopK

#: the backward rules one toggle apart (``deconvnet.analysis.methods``): label -> method name
METHODS = {"deconvnet": "deconvnet", "guided backprop": "guided_backprop", "gradient": "gradient"}
#: value of receptive-field patch pixels outside the image (as ``deconvnet.figure2``)
PATCH_PAD = 0.88
#: most dataset items offered in the image list (any index can still be chosen with ``select(image=i)``)
MAX_LISTED_ITEMS = 500


class _CachedDeconvnet(Deconvnet):
    """A ``Deconvnet`` that keeps the recorded forward of each (input, layers) (``keep``): a click on the same
    image and layer runs no forward, and a projection equals ``Deconvnet(net).project`` exactly."""

    def __init__(self, net: Net, max_records: int = 16) -> None:
        super().__init__(net, keep=max_records)

    @property
    def forward_seconds(self) -> float:
        return self._engine.kept.seconds


@contextmanager
def _torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block and restored after it (None: unchanged)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _is_dataset(obj: Any) -> bool:
    """A scan's collection (``deconvnet.data``): indexable items ``(x, i)`` and ``rgb(i)``."""
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and hasattr(obj, "rgb") and not isinstance(obj, (str, list, tuple))


def _png(a: np.ndarray) -> bytes:
    """(H, W, 3) float in [0, 1] or uint8 -> PNG bytes (fast compression: speed matters more than size)."""
    from PIL import Image

    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def _resize(a: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (h, w, 3) uint8, resized with PIL."""
    from PIL import Image

    u8 = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    im = Image.fromarray(u8).resize((hw[1], hw[0]), Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(im)


def _outline(a: np.ndarray, box: Sequence[float], color: tuple[int, int, int] = (255, 212, 0), width: int = 2) -> np.ndarray:
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


def unit_at_pixel(rf: ReceptiveField, map_size: tuple[int, int], row: float, col: float) -> tuple[int, int]:
    """The unit whose receptive field is centred nearest to input pixel (row, col), inside the map.

    Unit i covers pixels ``[i j - P, i j - P + r - 1]``, centred at ``i j - P + (r - 1) / 2``.
    """
    out = []
    for v, r, j, p, n in zip((row, col), rf.size, rf.jump, rf.padding, map_size):
        i = math.floor((v + p - (r - 1) / 2) / j + 0.5)
        out.append(min(max(i, 0), n - 1))
    return out[0], out[1]


class Explorer:
    """The explorer app (see the module docstring); make it with ``explore``.

    Attributes:
        net: the model.
        layer, channel, position: what is on show (``position`` is the unit's (row, col) in the map).
        method: ``"deconvnet"``, ``"guided_backprop"`` or ``"gradient"``.
        projection: the ``Projection`` on show; for guided backprop and gradient, its ``projection`` holds
            that method's map for the deconvnet's seed (the unit's activation, all else zero).
        x: (1, 3, H, W) the model input on show.
        timings: seconds the last update spent: ``forward`` (0 when the recorded forward was reused),
            ``project`` (the walk down, or the other method's backward pass), ``tiles`` (top-k tiles of a
            new channel), ``render`` (drawing), ``total``.
        threads: torch's intra-op threads while the app computes (restored after each update); None:
            torch's own setting. One by default: a unit's walk down is made of small convolutions, and where
            other processes share the cores, more threads wait on each other (measured on 2 busy cores: a
            relu4_3 click took 0.10 s with one thread, 1.5 s with two).
        widget: the ipywidgets root (a notebook shows the app itself, as the last expression of a cell).
    """

    def __init__(
        self,
        net: Net,
        image_or_dataset: Any = None,
        topk: Optional[TopK] = None,
        *,
        size: int = 224,
        layer: Optional[str] = None,
        scaling: str = DEFAULT_SCALING,
        panel: int = 224,
        n_strongest: int = 12,
        threads: Optional[int] = 1,
    ) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size!r}")
        self.net, self.topk, self.size, self.scaling, self.panel = net, topk, size, scaling, panel
        self.n_strongest, self.threads = n_strongest, threads
        self.deconv = _CachedDeconvnet(net)
        self.spatial_layers = self.deconv.spatial_layers()
        self.dataset = None
        self._images: OrderedDict[str, Callable[[], torch.Tensor]] = OrderedDict()
        self._inputs: OrderedDict[str, torch.Tensor] = OrderedDict()  # key -> x (one tensor per image)
        given = image_or_dataset if image_or_dataset is not None else "astronaut"
        if _is_dataset(given):
            self.dataset = given
        else:
            for k, img in enumerate(given if isinstance(given, (list, tuple)) else [given]):
                self._add_image(img, None if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__") else f"image {k}")
        if self.dataset is None and topk is not None:
            self.dataset = _scanned_dataset(topk, net)
        if self.dataset is not None:
            for i in range(min(len(self.dataset), MAX_LISTED_ITEMS)):
                self._images[self._item_key(i)] = self._item_loader(i)
        for name in BUNDLED_PHOTOS:
            self._images.setdefault(name, self._file_loader(name))
        self.image_key = next(iter(self._images))
        if layer is None:
            layer = "relu4_3" if "relu4_3" in self.spatial_layers else self.spatial_layers[-1]
        self._check_layer(layer)
        self.layer, self.channel, self.position = layer, 0, (0, 0)
        self.method = "deconvnet"
        self.projection: Optional[Projection] = None
        self.timings: dict[str, float] = {}
        self.message = ""
        self._tiles_cache: dict[tuple[str, int], Any] = {}
        self.tiles = None
        self._syncing = False
        self._build_widgets()
        self.select(image=self.image_key, layer=layer, channel="max", position="max")

    # --- images ----------------------------------------------------------------------------------------
    def _item_key(self, i: int) -> str:
        label = self.dataset.label(i) if hasattr(self.dataset, "label") else str(i)
        return f"#{i} {label}"

    def _item_loader(self, i: int) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            x = self.dataset[i][0]
            if x is None:
                raise ValueError(f"dataset item {i} cannot be read")
            return x.unsqueeze(0)

        return load

    def _file_loader(self, image: ImageLike) -> Callable[[], torch.Tensor]:
        return lambda: self.net.preprocess(image, size=self.size, crop=self.size)

    def _add_image(self, image: ImageLike, label: Optional[str] = None) -> str:
        """Offer an image in the list (a path, a bundled name, PIL, array or tensor); returns its key."""
        key = label if label is not None else str(image)
        self._images[key] = self._file_loader(image)
        self._images.move_to_end(key, last=False)  # the user's own images first
        self._inputs.pop(key, None)
        return key

    def _input(self, key: str) -> torch.Tensor:
        """The model input of an image, made once: the record cache keys on the tensor itself."""
        if key not in self._inputs:
            x = self._images[key]().to(device=self.net.device, dtype=self.net.dtype)
            self._inputs[key] = x
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
        from .images import load_rgb

        load_rgb(image)  # reads it now: a missing or broken file is an error here, not later
        return self._add_image(image, None if isinstance(image, str) or hasattr(image, "__fspath__") else "your image")

    @property
    def x(self) -> torch.Tensor:
        """(1, 3, H, W) the model input on show."""
        return self._input(self.image_key)

    # --- what is on show ---------------------------------------------------------------------------------
    def _check_layer(self, layer: str) -> None:
        self.net.check_layer(layer)
        if layer not in self.spatial_layers:
            raise ValueError(f"layer '{layer}' has no map to click on. Hint: one of {', '.join(self.spatial_layers)}")

    def activation(self) -> torch.Tensor:
        """(C, h, w) the current layer's activations for the image on show (from the recorded forward)."""
        return self.deconv.record(self.x, [self.layer]).activations[self.layer][0]

    def strongest_channels(self, n: Optional[int] = None) -> list[tuple[int, float]]:
        """The ``n`` channels with the largest activation anywhere in the map: ``[(channel, max), ...]``,
        strongest first (ties: the lower channel)."""
        peak = self.activation().flatten(1).amax(1).double().cpu()
        order = sorted(range(len(peak)), key=lambda c: (-float(peak[c]), c))
        return [(c, float(peak[c])) for c in order[: n or self.n_strongest]]

    def select(
        self,
        *,
        image: Any = None,
        layer: Optional[str] = None,
        channel: Union[int, str, None] = None,
        position: Union[tuple[int, int], str, None] = None,
        method: Optional[str] = None,
    ) -> Projection:
        """Show another image, layer, channel, unit or method: what the controls and a click do.

        Args:
            image: a key of the image list, a dataset index, a path, a bundled photograph's name, a PIL
                image, an array or a tensor.
            layer: a spatial layer's paper name; a new layer shows its strongest channel unless
                ``channel`` is given.
            channel: an index, or ``"max"``: the strongest channel of this image at this layer.
            position: ``(row, col)`` in the layer's map, or ``"max"``: the channel's strongest unit. A new
                image, layer or channel shows the strongest unit unless ``position`` is given.
            method: ``"deconvnet"``, ``"guided_backprop"`` or ``"gradient"`` (labels of ``METHODS`` too).

        Returns:
            The ``Projection`` now on show (also ``self.projection``).

        Raises:
            ValueError: an unknown image, layer, method, or a channel or position out of range; nothing
                on show changes then.
        """
        with _torch_threads(self.threads):
            return self._select(image, layer, channel, position, method)

    def _select(self, image: Any, layer: Optional[str], channel: Union[int, str, None],
                position: Union[tuple[int, int], str, None], method: Optional[str]) -> Projection:
        t0 = time.perf_counter()
        key = self.image_key if image is None else self._resolve_image(image)
        new_layer = self.layer if layer is None else layer
        self._check_layer(new_layer)
        if method is not None:
            method = METHODS.get(method, method)
            if method not in METHODS.values():
                raise ValueError(f"unknown method '{method}'. Hint: one of {', '.join(METHODS.values())}")
        if channel is None:
            channel = "max" if new_layer != self.layer else self.channel
        if position is None:
            changed = key != self.image_key or new_layer != self.layer or channel != self.channel
            position = "max" if changed or self.projection is None else self.position
        x = self._input(key)
        forward_before = self.deconv.forward_seconds
        t1 = time.perf_counter()
        p = self.deconv.project(x, new_layer, channel, position)  # validates channel and position
        forward_s = self.deconv.forward_seconds - forward_before
        method = method or self.method
        if method != "deconvnet":
            p = dataclasses.replace(p, projection=self._backward_map(x, p, method))
        # only now, when everything is computed, does what is on show change
        self.image_key, self.layer, self.method, self.projection = key, new_layer, method, p
        self.channel = int(p.channel[0])
        self.position = tuple(int(v) for v in p.position[0])
        t2 = time.perf_counter()
        self._update_tiles()
        t3 = time.perf_counter()
        self._render()
        t4 = time.perf_counter()
        self.timings = {"forward": forward_s, "project": t2 - t1 - forward_s, "tiles": t3 - t2, "render": t4 - t3,
                        "total": t4 - t0}
        self._show_status()
        return p

    def _backward_map(self, x: torch.Tensor, p: Projection, method: str) -> torch.Tensor:
        """Guided backprop or gradient for the deconvnet's seed of a unit (``p``'s)."""
        from .analysis.methods import backward_maps

        act = self.deconv.record(x, [p.layer]).activations[p.layer]
        unit = tuple(int(v) for v in p.position[0])
        seed = select_target(act, Target(p.layer, int(p.channel[0]), unit), self.net)[0]()
        return backward_maps(self.net, x, p.layer, seed, (method,))[method]

    def click_image(self, x: float, y: float) -> Projection:
        """A click on the image panel at display pixel (x, y): the unit centred nearest to it."""
        rf = receptive_field(self.net, self.layer)
        zoom = self._zoom()
        return self.select(position=unit_at_pixel(rf, self.projection.map_size, y / zoom, x / zoom))

    def click_map(self, x: float, y: float) -> Projection:
        """A click on the activation-map panel at display pixel (x, y): that cell."""
        cell = self._cell()
        h, w = self.projection.map_size
        return self.select(position=(min(max(int(y // cell), 0), h - 1), min(max(int(x // cell), 0), w - 1)))

    def click_tile(self, x: float, y: float) -> Optional[Projection]:
        """A click on the top-k projections at display pixel (x, y): that tile's image, at its unit."""
        if self.tiles is None:
            return None
        n = len(self.tiles.values)
        cols = math.ceil(math.sqrt(n))
        step = self._tile_px + self._tile_gap
        r, c = int(y // step), int(x // step)
        k = r * cols + c
        if c >= cols or not 0 <= k < n:
            return None
        return self.select(image=int(self.tiles.images[k]), position=tuple(int(v) for v in self.tiles.positions[k]))

    # --- top-k tiles -------------------------------------------------------------------------------------
    def _update_tiles(self) -> None:
        self.tiles, self.tiles_message = None, ""
        if self.topk is None:
            return
        if self.layer not in self.topk.layers:
            self.tiles_message = f"The scan has no {self.layer} (it has {', '.join(self.topk.layers)})."
            return
        if self.dataset is None:
            self.tiles_message = "The top-9 tiles need the scanned dataset: explore(net, dataset, topk)."
            return
        key = (self.layer, self.channel)
        if key not in self._tiles_cache:
            from .figure2 import feature_tiles

            if not self.topk.entries(self.layer, self.channel):
                self._tiles_cache[key] = f"The scan kept no activation of {self.layer} channel {self.channel}."
            else:
                try:
                    self._tiles_cache[key] = feature_tiles(self.net, self.dataset, self.topk, self.layer, [self.channel],
                                                           deconv=Deconvnet(self.net), progress=False)[0]
                except ValueError as err:  # a scan of another model or dataset
                    self._tiles_cache[key] = str(err)
        got = self._tiles_cache[key]
        if isinstance(got, str):
            self.tiles_message = got
        else:
            self.tiles = got

    # --- drawing -----------------------------------------------------------------------------------------
    def _zoom(self) -> float:
        """Display pixels per input pixel of the image panels."""
        return self.panel / max(self.x.shape[-2:])

    def _cell(self) -> int:
        """Display pixels per map unit of the activation panel (an integer: every unit the same size)."""
        h, w = self.projection.map_size
        return max(1, self.panel // max(h, w))

    def pictures(self) -> dict[str, np.ndarray]:
        """What the panels show, as (H, W, 3) uint8 arrays: ``image``, ``activation``, ``projection``,
        ``patch``, ``zoom`` (the projection inside the receptive field) and, with a scan, ``tiles`` and
        ``tile_patches``."""
        p = self.projection
        image = p.image_rgb()[0].detach().cpu()
        proj = p.preprocessing.to_rgb_order(p.projection)[0].detach().cpu()
        box = [int(v) for v in p.box[0]]
        hw = tuple(image.shape[-2:])
        zoom = self._zoom()
        shown = (round(hw[0] * zoom), round(hw[1] * zoom))
        dbox = [v * zoom for v in box]
        out = {
            "image": _outline(_resize(image.permute(1, 2, 0).double().numpy(), shown, nearest=False), dbox),
            "projection": _outline(_resize(scale_for_display(proj, self.scaling), shown, nearest=True), dbox),
        }
        act = self.activation()[self.channel].double().cpu().numpy()
        cell = self._cell()
        h, w = act.shape
        amap = _resize(activation_colors(act), (h * cell, w * cell), nearest=True)
        r, c = self.position
        out["activation"] = _outline(amap, [r * cell, c * cell, (r + 1) * cell, (c + 1) * cell], color=(0, 255, 255),
                                     width=max(1, min(2, cell // 3)))
        side = max(box[2] - box[0], box[3] - box[1])
        big = max(1, self.panel // side) * side if side <= self.panel else self.panel  # whole pixels when enlarged
        patch = crop_box(image, box, PATCH_PAD).permute(1, 2, 0).double().numpy()
        out["patch"] = _resize(patch, (big, big), nearest=big >= side)
        out["zoom"] = _resize(scale_for_display(crop_box(proj, box, 0.0), self.scaling), (big, big), nearest=big >= side)
        if self.tiles is not None:
            from .figure2 import mosaic

            t = self.tiles
            n = len(t.values)
            cols = math.ceil(math.sqrt(n))
            r_px = t.projections.shape[-1]
            self._tile_px = r_px * max(1, (self.panel // cols) // r_px)  # whole pixels; never smaller than the field
            self._tile_gap = 2
            projs = [_resize(scale_for_display(q, self.scaling), (self._tile_px, self._tile_px), True) / 255.0 for q in t.projections]
            patches = [_resize(q.permute(1, 2, 0).double().numpy(), (self._tile_px, self._tile_px), True) / 255.0 for q in t.patches]
            out["tiles"] = (mosaic(projs, cols, self._tile_gap) * 255 + 0.5).astype(np.uint8)
            out["tile_patches"] = (mosaic(patches, cols, self._tile_gap) * 255 + 0.5).astype(np.uint8)
        return out

    def _render(self) -> None:
        pics = self.pictures()
        self._syncing = True
        try:
            for name in ("image", "activation", "projection", "patch", "zoom"):
                self._w[name].value = _png(pics[name])
            tiles = "tiles" in pics
            if tiles:
                self._w["tiles"].value = _png(pics["tiles"])
                self._w["tile_patches"].value = _png(pics["tile_patches"])
            self._w["tiles_box"].layout.display = None if tiles else "none"
            self._w["tiles_note"].value = f"<i>{self.tiles_message}</i>" if self.tiles_message else ""
            self._sync_controls()
        finally:
            self._syncing = False

    def _sync_controls(self) -> None:
        w = self._w
        listed = tuple(self._images)
        if tuple(w["images"].options) != listed:  # only when it changed: hundreds of options are slow to resend
            w["images"].options = listed
        w["images"].value = self.image_key
        w["layer"].value = self.layer
        strongest = self.strongest_channels()
        w["strongest"].options = [(f"{c}  (max {v:.3g})", c) for c, v in strongest]
        w["strongest"].value = self.channel if self.channel in [c for c, _ in strongest] else None
        w["channel"].max = self.net.channels[self.layer] - 1
        w["channel"].value = self.channel
        w["method"].value = self.method
        w["titles"]["projection"].value = f"<b>{dict((v, k) for k, v in METHODS.items())[self.method]}</b>"
        if self.tiles is not None:
            w["tiles_title"].value = (f"<b>top {len(self.tiles.values)} of {self.layer} channel {self.channel}</b> "
                                      "in the scan: projections (click one to open it) and their patches")

    def _show_status(self) -> None:
        p = self.projection
        t = self.timings
        forward = f"forward {t['forward'] * 1e3:.0f} ms, " if t.get("forward") else "recorded forward reused, "
        a = float(p.activation[0])
        # the deconvnet projects the unit's activation: a unit that is not active has nothing to show
        idle = ""
        if a == 0:
            silent = not bool(self.activation()[self.channel].any())
            idle = (" (the whole channel is silent on this image: choose one of the strongest)" if silent
                    else " (not active: nothing to project; click a bright cell)")
        tiles = f"top-k tiles {t['tiles'] * 1e3:.0f} ms, " if t.get("tiles", 0) > 0.001 else ""
        self._w["status"].value = (
            f"<b>{self.layer} channel {self.channel}</b>: activation {a:.4g}{idle} at {where(p)}"
            f"<br><span style='color:#666'>{self.net.describe()} &middot; {forward}"
            f"project {t['project'] * 1e3:.0f} ms, {tiles}draw {t['render'] * 1e3:.0f} ms</span>"
            + (f"<br><span style='color:#b00'>{self.message}</span>" if self.message else "")
        )

    # --- widgets -----------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as W

        w: dict[str, Any] = {}
        w["images"] = W.Dropdown(options=list(self._images), description="image", layout=W.Layout(width="300px"))
        # value changes on Enter or leaving the box, not on every key: each change opens the file
        w["path"] = W.Text(placeholder="or a file path", continuous_update=False, layout=W.Layout(width="220px"))
        w["open"] = W.Button(description="open", layout=W.Layout(width="60px"))
        w["upload"] = W.FileUpload(accept="image/*", multiple=False, description="upload")
        w["layer"] = W.Dropdown(options=self.spatial_layers, description="layer", layout=W.Layout(width="180px"))
        w["strongest"] = W.Dropdown(options=[], description="strongest", layout=W.Layout(width="220px"))
        w["channel"] = W.BoundedIntText(min=0, max=max(self.net.channels.values()) - 1, description="channel",
                                        layout=W.Layout(width="160px"))
        w["method"] = W.ToggleButtons(options=[(k, v) for k, v in METHODS.items()], value="deconvnet",
                                      style={"button_width": "140px"})
        for name in ("image", "activation", "projection", "patch", "zoom", "tiles", "tile_patches"):
            w[name] = W.Image(format="png", layout=W.Layout(object_fit="contain", margin="2px"))
        captions = {"image": "image (click a unit)", "activation": "activation map (click a unit)",
                    "projection": "deconvnet", "patch": "receptive field", "zoom": "projection, zoomed"}
        w["titles"] = {k: W.HTML(f"<b>{v}</b>") for k, v in captions.items()}
        # two rows, so that a notebook of ordinary width never wraps them by accident: where the unit is
        # (image, map, projection), then what it sees (the patch beside the projection, both enlarged)
        rows = [("image", "activation", "projection"), ("patch", "zoom")]
        panels = W.VBox([W.HBox([W.VBox([w["titles"][k], w[k]]) for k in row]) for row in rows])
        w["status"] = W.HTML()
        w["tiles_title"] = W.HTML()
        w["tiles_note"] = W.HTML()
        w["tiles_box"] = W.VBox([w["tiles_title"], W.HBox([w["tiles"], w["tile_patches"]])])
        self._w = w
        self.widget = W.VBox([
            W.HBox([w["images"], w["path"], w["open"], w["upload"]]),
            W.HBox([w["layer"], w["strongest"], w["channel"]]),
            W.HBox([W.Label("backward rule", layout=W.Layout(width="90px", margin="0 0 0 0")), w["method"]]),
            panels, w["status"], w["tiles_box"], w["tiles_note"],
        ])
        self.widget.add_class("deconvnet-explorer")

        def guarded(fn: Callable[..., Any]) -> Callable[..., None]:
            def handler(*args: Any) -> None:
                if self._syncing:
                    return
                try:
                    self.message = ""
                    fn(*args)
                except (ValueError, TypeError, OSError) as err:  # shown, not raised: a widget callback has no caller
                    self.message = str(err)
                    self._render()
                    self._show_status()

            return handler

        w["images"].observe(guarded(lambda ch: self.select(image=ch["new"])), names="value")
        w["layer"].observe(guarded(lambda ch: self.select(layer=ch["new"])), names="value")
        w["strongest"].observe(guarded(lambda ch: ch["new"] is not None and self.select(channel=ch["new"])), names="value")
        w["channel"].observe(guarded(lambda ch: self.select(channel=ch["new"])), names="value")
        w["method"].observe(guarded(lambda ch: self.select(method=ch["new"])), names="value")
        w["open"].on_click(guarded(lambda _: self.select(image=w["path"].value.strip())))
        w["path"].observe(guarded(lambda ch: ch["new"].strip() and self.select(image=ch["new"].strip())), names="value")
        w["upload"].observe(guarded(lambda ch: self._uploaded(ch["new"])), names="value")
        try:
            from ipyevents import Event
        except ImportError:  # clicks need ipyevents; the dropdowns and select() work without it
            self._events = []
            return
        self._events = [
            Event(source=w["image"], watched_events=["click"]),
            Event(source=w["activation"], watched_events=["click"]),
            Event(source=w["tiles"], watched_events=["click"]),
        ]
        for event, click in zip(self._events, (self.click_image, self.click_map, self.click_tile)):
            # dataX/dataY: the click in the picture's own pixels, whatever size the browser shows it at
            event.on_dom_event(guarded(lambda e, click=click: click(e["dataX"], e["dataY"])))

    def _uploaded(self, files: Any) -> None:
        if not files:
            return
        f = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(f["content"]))) as im:
                im.load()
                pil = to_rgb_pil(im)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read the upload '{f.get('name', '?')}' as an image: {err}") from err
        self.select(image=self._add_image(pil, f"upload: {f.get('name', 'image')}"))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _scanned_dataset(topk: TopK, net: Net) -> Any:
    """The offline demo collection a scan ran over, rebuilt from its provenance; None for other data."""
    described = topk.provenance.get("dataset", {})
    if described.get("kind") != "demo":
        return None
    from .data import Head, demo_collection

    data = demo_collection(preprocessing=net.preprocessing, size=int(described.get("size", 224)))
    n = int(topk.provenance.get("n", len(data)))
    return Head(data, n) if n < len(data) else data


def explore(
    net: Net,
    image_or_dataset: Any = None,
    topk: Optional[TopK] = None,
    *,
    size: int = 224,
    layer: Optional[str] = None,
    scaling: str = DEFAULT_SCALING,
    panel: int = 224,
    threads: Optional[int] = 1,
) -> Explorer:
    """An interactive explorer of ``net`` for a notebook cell (ipywidgets; clicks with ipyevents).

    Args:
        net: the model (``load_vgg``, ``load_alexnet``).
        image_or_dataset: an image (path, bundled photograph name such as ``"astronaut"``, PIL image, array,
            (3, H, W) tensor), a list of them, or a collection from ``deconvnet.data`` (its items are
            offered as images, as they were scanned). None: ``"astronaut"``. The bundled photographs
            are always offered, and a file path or an upload can be opened from the app.
        topk: a scan of that collection (``scan_top_k`` / ``TopK.load``): the channel's top-k tiles are
            shown. A scan of the offline demo collection finds its images by itself.
        size: images are resized (shorter side) and center-cropped to ``size`` (collection items keep
            their own size).
        layer: the layer shown first (default ``relu4_3``, else the deepest spatial layer).
        scaling: display scaling of projections (``deconvnet.plot``).
        panel: side of each picture, in screen pixels.
        threads: torch's intra-op threads while the app computes (see ``Explorer``); None: torch's setting.

    Returns:
        An ``Explorer``: show it as the last expression of a cell; drive it with ``select``.
    """
    return Explorer(net, image_or_dataset, topk, size=size, layer=layer, scaling=scaling, panel=panel, threads=threads)
