"""The explorer's app: ipywidgets controls and pictures laid out in a notebook cell, and their events.

What is computed and kept is ``state.ExplorerState``; how each panel is drawn is ``draw``. ipywidgets (and
ipyevents, for clicks) are imported only when an app is made, so ``import deconvnet`` does not need them.
"""

from __future__ import annotations

import contextlib
import html
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..constants import DEFAULT_SIZE
from ..engine import Projection
from ..html import escape
from ..images import to_rgb_pil
from ..models import Net
from ..plot import DEFAULT_SCALING, SCALINGS, where
from ..scan import TopK
from . import draw
from .state import METHODS, ExplorerState, unit_at_pixel
from .tiles import Result, TileWorker
from .wants import WantsSource

#: classes listed on the class-score panel
N_CLASSES = 10


class Explorer(ExplorerState):
    """The explorer app (see ``deconvnet.explore``); make it with ``explore``.

    Attributes (besides ``ExplorerState``'s):
        scaling, panel: display scaling of projections and side of each picture in screen pixels.
        background: whether the top-k tiles of a channel not seen before are computed on a background
            thread after the main view is drawn (the app answers the next click meanwhile); False: before
            ``select`` returns.
        widget: the ipywidgets root (a notebook shows the app itself, as the last expression of a cell).
    """

    def __init__(self, net: Net, image_or_dataset: Any = None, topk: TopK | None = None, *, size: int = DEFAULT_SIZE,
                 layer: str | None = None, scaling: str = DEFAULT_SCALING, panel: int = 224, n_strongest: int = 12,
                 threads: int | None = 1, background: bool = True,
                 wants: bool | dict[str, Any] = False) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")
        super().__init__(net, image_or_dataset, topk, size=size, n_strongest=n_strongest, threads=threads)
        self.scaling, self.panel, self.background = scaling, panel, background
        if layer is None:
            # a middle-deep layer, whose units see a part of the image (VGG's relu4_3; ResNet's layer3)
            stages = self.default_layers or self.spatial_layers
            layer = "relu4_3" if "relu4_3" in self.layers else stages[len(stages) // 2]
        layer = self._check_layer(layer)
        self.message = ""
        self.tiles_message = ""
        self._shown_tiles = None  # the tiles drawn now (what a click on them opens)
        self._tile_px = 0
        self._syncing = False
        self._draw_lock = threading.RLock()
        # "what this unit wants": the channel's synthesised image, on its own background thread like the tiles
        self.wants_worker = (TileWorker(WantsSource(net, wants if isinstance(wants, dict) else None),
                                        run=self._computing) if wants else None)
        self._build_widgets()
        self.select(image=self.image_key, layer=layer)

    # --- what a control or a click does ---------------------------------------------------------------
    def select(self, *, image: Any = None, layer: str | None = None, channel: int | str | None = None,
               position: tuple[int, int] | str | None = None, method: str | None = None) -> Projection:
        """Show another image, layer, channel, unit or method: what the controls and a click do.

        Args:
            image: a key of the image list, a dataset index, a path, a bundled photograph's name, a PIL
                image, an array or a tensor.
            layer: a layer with spatial maps (its name or module path), or the classifier's output
                (``class_layer``), whose channels are the classes.
            channel: an index; ``"max"``: the channel with the map's largest activation; ``"strongest"``:
                the strongest away from the image border (what a new layer shows unless ``channel`` is
                given); on the classifier's output, a class name too.
            position: ``(row, col)`` in the layer's map; ``"max"``: the channel's largest activation;
                ``"strongest"``: its strongest unit away from the border when one there is active (what a
                new image, layer or channel shows unless ``position`` is given).
            method: ``"deconvnet"``, ``"guided_backprop"`` or ``"gradient"`` (labels of ``METHODS`` too).

        Returns:
            The ``Projection`` now on show (also ``self.projection``); with ``"max"`` or explicit values it
            equals ``Deconvnet(net).project(app.x, layer, channel, position)``.

        Raises:
            ValueError: an unknown image, layer, class or method, or a channel or position out of range;
                nothing on show changes then.
        """
        with contextlib.ExitStack() as stack:
            for worker in (self.worker, self.wants_worker):
                if worker is not None:
                    stack.enter_context(worker.busy())
            p = self.compute(image, layer, channel, position, method)
            t = time.perf_counter()
            self._render()
            self.timings["render"] = time.perf_counter() - t
            self.timings["total"] += self.timings["render"]
        self._update_tiles()
        self._update_wants()
        self._show_status()
        return p

    def click_image(self, x: float, y: float) -> Projection | None:
        """A click on the image panel at display pixel (x, y): the unit centred nearest to it."""
        if self.is_class:
            return None
        rf = self.deconv.receptive_field(self.layer)
        z = draw.zoom(self.panel, self.x.shape[-2:])
        return self.select(position=unit_at_pixel(rf, self.projection.map_size, y / z, x / z))

    def click_map(self, x: float, y: float) -> Projection | None:
        """A click on the activation-map panel at display pixel (x, y): that cell (on the classifier's
        output: the class of that bar)."""
        if self.is_class:
            k = draw.bar_at(y, len(self._bars))
            return None if k is None else self.select(channel=self._bars[k][0])
        c = self._cell()
        h, w = self.projection.map_size
        return self.select(position=(min(max(int(y // c), 0), h - 1), min(max(int(x // c), 0), w - 1)))

    def click_tile(self, x: float, y: float) -> Projection | None:
        """A click on a top-k tile, its projection or its patch (both mosaics have the same layout), at
        display pixel (x, y): that tile's image, at its unit."""
        t = self._shown_tiles
        if t is None:
            return None
        k = draw.tile_at(x, y, len(t.values), self._tile_px)
        if k is None:
            return None
        return self.select(image=int(t.images[k]), layer=t.layer, channel=int(t.channel),
                           position=tuple(int(v) for v in t.positions[k]))

    def _zoom(self) -> float:
        return draw.zoom(self.panel, self.x.shape[-2:])

    def _cell(self) -> int:
        return draw.cell(self.panel, self.projection.map_size)

    # --- pictures --------------------------------------------------------------------------------------
    def pictures(self) -> dict[str, np.ndarray]:
        """What the panels show, as (H, W, 3) uint8 arrays: ``image``, ``activation`` (on the classifier's
        output: the class scores), ``projection``, and for a unit ``patch`` and ``zoom`` (the projection
        inside the receptive field)."""
        p = self.projection
        if self.is_class:
            out = draw.panels(p, np.zeros((1, 1)), (0, 0), scaling=self.scaling, panel=self.panel)
            bars = self.top_classes(N_CLASSES)
            if self.channel not in [c for c, _, _ in bars]:
                score = float(self._act(self.x, self.layer)[0, self.channel])
                bars.append((self.channel, self.class_name(self.channel), score))
            self._bars = bars
            out["activation"] = draw.class_bars(bars, self.channel, width=self.panel)
            return out
        act = self.activation()[self.channel].double().cpu().numpy()
        return draw.panels(p, act, self.position, scaling=self.scaling, panel=self.panel)

    def _render(self) -> None:
        pics = self.pictures()
        w = self._w
        with self._draw_lock:
            self._syncing = True
            try:
                for name, pic in pics.items():
                    w[name].value = draw.png(pic)
                w["unit_row"].layout.display = None if "patch" in pics else "none"
                w["titles"]["activation"].value = ("<b>class scores (click one)</b>" if self.is_class
                                                   else "<b>activation map (click a unit)</b>")
                w["titles"]["image"].value = "<b>image</b>" if self.is_class else "<b>image (click a unit)</b>"
                self._sync_controls()
            finally:
                self._syncing = False

    # --- top-k tiles, after the main view ------------------------------------------------------------------
    def _update_tiles(self) -> None:
        w = self._w
        if self.worker is None:
            return
        key = self.tile_key
        note = self.tiles_note()
        got: Result | None = note if note is not None else self.worker.cached(key)
        if got is None and not self.background:
            t = time.perf_counter()
            got = self.worker.compute(key)
            self.timings["tiles"] = time.perf_counter() - t
        if got is not None:
            if note is None and "tiles" not in self.timings:
                self.timings["tiles"] = 0.0  # kept
            self._draw_tiles(key, got)
            return
        with self._draw_lock:
            self._shown_tiles = None
            self.tiles_message = f"top-{self.topk.k} tiles of {key[0]} channel {key[1]}: computing ..."
            w["tiles_box"].layout.display = "none"
            w["tiles_note"].value = f"<i>{escape(self.tiles_message)}</i>"
        self._requested = time.perf_counter()
        self.worker.request(key, self._tiles_done)

    def _tiles_done(self, key: tuple[str, int], result: Result) -> None:
        """On the tile thread: draw the tiles if they are still those of what is on show."""
        if key == self.tile_key:
            self.timings["tiles"] = self.worker.seconds.get(key, 0.0)
            self._draw_tiles(key, result)

    def _draw_tiles(self, key: tuple[str, int], result: Result) -> None:
        w = self._w
        with self._draw_lock:
            if key != self.tile_key:
                return
            if isinstance(result, str):
                self._shown_tiles, self.tiles_message = None, result
                w["tiles_box"].layout.display = "none"
                w["tiles_note"].value = f"<i>{escape(result)}</i>"
                return
            projections, patches, self._tile_px = draw.tile_mosaics(result.projections, result.patches,
                                                                   scaling=self.scaling, panel=self.panel)
            w["tiles"].value, w["tile_patches"].value = draw.png(projections), draw.png(patches)
            w["tiles_title"].value = (f"<b>top {len(result.values)} of {escape(key[0])} channel {escape(key[1])}</b> "
                                      "in the scan: "
                                      "projections and their image patches (click either to open that image)")
            self._shown_tiles, self.tiles_message = result, ""
            w["tiles_note"].value = ""
            w["tiles_box"].layout.display = None

    def wait_tiles(self, timeout: float | None = 120) -> None:
        """Block until the tiles of what is on show are drawn (those computing in the background)."""
        if self.worker is not None:
            self.worker.wait(self.tile_key, timeout)

    # --- what this unit wants (a synthesised image), after the main view ------------------------------------
    def _update_wants(self) -> None:
        if self.wants_worker is None:
            return
        key = self.tile_key
        w = self._w
        if self.is_class and not self.net.channels.get(self.layer):
            return
        got = self.wants_worker.cached(key)
        if got is None and not self.background:
            got = self.wants_worker.compute(key)
        if got is not None:
            self._draw_wants(key, got)
            return
        with self._draw_lock:
            steps = self.wants_worker.source.settings["steps"]
            w["wants_title"].value = (f"<b>what {html.escape(key[0])} channel {key[1]} wants</b>: "
                                      f"<i>synthesising ({steps} steps) ...</i>")
            w["wants"].layout.display = "none"
        self.wants_worker.request(key, self._draw_wants)

    def _draw_wants(self, key: tuple[str, int], result: Any) -> None:
        w = self._w
        with self._draw_lock:
            if key != self.tile_key:
                return
            if isinstance(result, str):
                w["wants_title"].value = f"<i>{html.escape(result)}</i>"
                w["wants"].layout.display = "none"
                return
            w["wants"].value = draw.png(draw.resize(result.images[0].permute(1, 2, 0).double().numpy(),
                                                    (self.panel, self.panel), nearest=False))
            w["wants"].layout.display = None
            dataset_max = None
            if self.topk is not None and key[0] in self.topk.layers and self.topk.entries(*key):
                dataset_max = self.topk.entries(*key)[0][0]
            beside = f", the strongest in the scan {dataset_max:.4g}" if dataset_max is not None else ""
            w["wants_title"].value = (
                f"<b>what {html.escape(key[0])} channel {key[1]} wants</b>: the image synthesised to excite it most; "
                f"its strongest unit {float(result.peaks[0]):.4g} (mean {float(result.activations[0]):.4g}){beside}"
                f"<br><span style='color:#666'>{html.escape(result.recipe())}</span>")

    @property
    def wants(self) -> Any:
        """The ``Synthesis`` of the channel on show (waited for when it is computing), or None without
        ``wants``."""
        if self.wants_worker is None:
            return None
        got = self.wants_worker.wait(self.tile_key) or self.wants_worker.compute(self.tile_key)
        return None if isinstance(got, str) else got

    # --- controls and status ---------------------------------------------------------------------------
    def _layer_options(self) -> list[tuple[str, str]]:
        names = self.layer_options(self._w["layer_filter"].value)
        if self.layer and self.layer not in names:
            names = [self.layer] + names  # what is on show stays listed
        return [(f"{n} (class scores)" if n == self.class_layer else n, n) for n in names]

    def _sync_controls(self) -> None:
        w = self._w
        listed = tuple(self._images)
        if tuple(w["images"].options) != listed:  # only when it changed: hundreds of options are slow to resend
            w["images"].options = listed
        w["images"].value = self.image_key
        options = self._layer_options()
        if list(w["layer"].options) != options:
            w["layer"].options = options
        w["layer"].value = self.layer
        strongest = self.strongest_channels()
        if self.is_class:
            opts = [(f"{self.class_name(c)}  ({v:.3g})", c) for c, v in strongest]
        else:
            opts = [(f"{c}  (max {v:.3g})", c) for c, v in strongest]
        if self.channel not in [c for c, _ in strongest]:  # the channel on show stays listed (a tile's image)
            a = float(self.projection.activation[0])
            opts.append((f"{self.class_name(self.channel) if self.is_class else self.channel}  (here {a:.3g})",
                         self.channel))
        w["strongest"].options = opts
        w["strongest"].value = self.channel
        w["channel"].max = self.net.channels[self.layer] - 1
        w["channel"].value = self.channel
        w["class"].layout.display = None if self.is_class and self.net.categories else "none"
        if self.is_class and self.net.categories:
            w["class"].value = self.class_name(self.channel)
        w["method"].value = self.method
        w["titles"]["projection"].value = f"<b>{escape(dict((v, k) for k, v in METHODS.items())[self.method])}</b>"

    def _show_status(self) -> None:
        p = self.projection
        t = self.timings
        forward = f"forward {t['forward'] * 1e3:.0f} ms, " if t.get("forward") else "recorded forward reused, "
        a = float(p.activation[0])
        if self.is_class:
            rank = 1 + int((self._act(self.x, self.layer)[0] > self._act(self.x, self.layer)[0, self.channel]).sum())
            what = (f"<b>{escape(self.class_name(self.channel))}</b> (output {self.channel} of {escape(self.layer)}): "
                    f"score {a:.4g}, "
                    f"rank {rank} of {self.net.channels[self.layer]}")
        else:
            idle = ""
            if a == 0:  # the deconvnet projects the unit's activation: a unit that is not active has nothing to show
                silent = not bool(self.activation()[self.channel].any())
                idle = (" (the whole channel is silent on this image: choose one of the strongest)" if silent
                        else " (not active: nothing to project; click a bright cell)")
            what = (f"<b>{escape(self.layer)} channel {self.channel}</b>: activation {a:.4g}{escape(idle)} "
                    f"at {escape(where(p))}")
            what += self._border_note()
        tiles = f"top-k tiles {t['tiles'] * 1e3:.0f} ms (after the view), " if t.get("tiles", 0) > 0.001 else ""
        self._w["status"].value = (
            f"{what}<br><span style='color:#666'>{escape(self.net.describe())} &middot; {forward}"
            f"project {t['project'] * 1e3:.0f} ms, draw {t.get('render', 0) * 1e3:.0f} ms, {tiles}"
            f"total {t['total'] * 1e3:.0f} ms</span>"
            + (f"<br><span style='color:#b00'>{escape(self.message)}</span>" if self.message else "")
        )

    def _border_note(self) -> str:
        """Words on the image border: whether the unit on show sees the zero padding, and where the
        channel's largest activation is when that is a border unit the app passed over."""
        act = self.activation()[self.channel]
        mask = self.inside()
        if self.at_border():
            note = "<br>At the image border: this unit's receptive field reaches into the zero padding"
            if mask is not None and float(act[mask.to(act.device)].max()) > 0:
                r, c = self.strongest_unit(self.channel)
                note += f" (the strongest unit away from the border is ({r}, {c}), {float(act[r, c]):.4g})"
            return note + "."
        k = int(act.flatten().argmax())
        r, c = divmod(k, act.shape[1])
        # said of the app's own choice only: after a click the unit on show is the user's (no stale line)
        if (getattr(self, "picked_strongest", False) and (r, c) != self.position and mask is not None
                and not bool(mask[r, c]) and float(act[r, c]) > float(act[self.position])):
            return (f"<br>The strongest unit away from the border; the map's maximum, {float(act[r, c]):.4g} at "
                    f"({r}, {c}), is a border unit whose receptive field reaches into the zero padding.")
        return ""

    # --- widgets -----------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as W

        w: dict[str, Any] = {}
        w["images"] = W.Dropdown(options=list(self._images), description="image", layout=W.Layout(width="340px"))
        # value changes on Enter or leaving the box, not on every key: each change opens the file
        w["path"] = W.Text(placeholder="or a file path", continuous_update=False, layout=W.Layout(width="220px"))
        w["open"] = W.Button(description="open", layout=W.Layout(width="60px"))
        w["upload"] = W.FileUpload(accept="image/*", multiple=False, description="upload")
        w["layer_filter"] = W.Text(placeholder="filter layers", layout=W.Layout(width="120px"))
        w["layer"] = W.Dropdown(options=[(n, n) for n in self.layers], description="layer",
                                layout=W.Layout(width="260px"))
        w["strongest"] = W.Dropdown(options=[], description="strongest", layout=W.Layout(width="240px"),
                                    tooltip="channels by their strongest unit away from the image border")
        w["channel"] = W.BoundedIntText(min=0, max=max(self.net.channels.values()) - 1, description="channel",
                                        layout=W.Layout(width="160px"))
        w["class"] = W.Combobox(options=list(self.net.categories or []), placeholder="class name", ensure_option=True,
                                layout=W.Layout(width="200px", display="none"))
        w["method"] = W.ToggleButtons(options=[(k, v) for k, v in METHODS.items()], value="deconvnet",
                                      style={"button_width": "140px"})
        for name in ("image", "activation", "projection", "patch", "zoom", "tiles", "tile_patches"):
            w[name] = W.Image(format="png", layout=W.Layout(object_fit="contain", margin="2px"))
        captions = {"image": "image (click a unit)", "activation": "activation map (click a unit)",
                    "projection": "deconvnet", "patch": "receptive field", "zoom": "projection, zoomed"}
        w["titles"] = {k: W.HTML(f"<b>{escape(v)}</b>") for k, v in captions.items()}
        # two rows, so that a notebook of ordinary width never wraps them by accident: where the unit is
        # (image, map, projection), then what it sees (the patch beside the projection, both enlarged)
        w["unit_row"] = W.HBox([W.VBox([w["titles"][k], w[k]]) for k in ("patch", "zoom")])
        panels = W.VBox([W.HBox([W.VBox([w["titles"][k], w[k]]) for k in ("image", "activation", "projection")]),
                         w["unit_row"]])
        w["status"] = W.HTML()
        w["tiles_title"] = W.HTML()
        w["tiles_note"] = W.HTML()
        w["tiles_box"] = W.VBox([w["tiles_title"], W.HBox([w["tiles"], w["tile_patches"]])],
                                layout=W.Layout(display="none"))  # shown when there are tiles to show
        w["wants"] = W.Image(format="png", layout=W.Layout(object_fit="contain", margin="2px", display="none"))
        w["wants_title"] = W.HTML()
        w["wants_box"] = W.VBox([w["wants_title"], w["wants"]],
                                layout=W.Layout(display=None if self.wants_worker is not None else "none"))
        self._w = w
        self.widget = W.VBox([
            W.HBox([w["images"], w["path"], w["open"], w["upload"]]),
            W.HBox([w["layer_filter"], w["layer"], w["strongest"], w["channel"], w["class"]]),
            # the label sizes itself to its words (a fixed width clipped them)
            W.HBox([W.HTML("backward rule&nbsp;", layout=W.Layout(margin="0 8px 0 0")), w["method"]]),
            panels, w["status"], w["tiles_box"], w["tiles_note"], w["wants_box"],
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

        def filtered(_: Any) -> None:
            self._syncing = True  # new options reset the dropdown's value: not a choice of the user's
            try:
                w["layer"].options = self._layer_options()
                w["layer"].value = self.layer
            finally:
                self._syncing = False

        w["images"].observe(guarded(lambda ch: self.select(image=ch["new"])), names="value")
        w["layer_filter"].observe(filtered, names="value")
        w["layer"].observe(guarded(lambda ch: ch["new"] is not None and self.select(layer=ch["new"])), names="value")
        w["strongest"].observe(guarded(lambda ch: ch["new"] is not None and self.select(channel=ch["new"])),
                               names="value")
        w["channel"].observe(guarded(lambda ch: self.select(channel=ch["new"])), names="value")
        w["class"].observe(guarded(lambda ch: ch["new"] and self.select(channel=ch["new"])), names="value")
        w["method"].observe(guarded(lambda ch: self.select(method=ch["new"])), names="value")
        w["open"].on_click(guarded(lambda _: self.select(image=w["path"].value.strip())))
        w["path"].observe(guarded(lambda ch: ch["new"].strip() and self.select(image=ch["new"].strip())), names="value")
        w["upload"].observe(guarded(lambda ch: self._uploaded(ch["new"])), names="value")
        try:
            from ipyevents import Event
        except ImportError:  # clicks need ipyevents; the dropdowns and select() work without it
            self._events = []
            return
        clicks = {"image": self.click_image, "activation": self.click_map, "tiles": self.click_tile,
                  "tile_patches": self.click_tile}
        self._events = [Event(source=w[name], watched_events=["click"]) for name in clicks]
        for event, click in zip(self._events, clicks.values(), strict=True):
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
