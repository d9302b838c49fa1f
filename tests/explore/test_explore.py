"""The explorer: what a click shows equals the engine's projection, clicks map to the right unit, a click
reuses the recorded forward, the other methods and the top-k tiles equal the library's; and, in a real
browser, JupyterLab renders the app with its pictures and controls and answers a click.

Notebook 06's weights fallback (one plain 'Note:' line, nothing on stderr, both explorers shown) is checked in
tests/docs/test_notebooks.py, on its one execution of that notebook (test_notebook_executes[06_explore.ipynb])."""

from __future__ import annotations

import datetime
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import deconvnet as dn
from deconvnet.analysis.methods import backward_maps, deconvnet_seed
from deconvnet.engine import receptive_field, record
from deconvnet.explore import Explorer, activation_colors, unit_at_pixel
from deconvnet.explore.draw import TILE_GAP

from conftest import HOSTILE, _photo, _small_net, stop_server

SIZE = 112  # relu4_3's 92-px field is smaller than the image: the cropped path, as at 224


@pytest.fixture(scope="module")
def app(vgg16) -> Explorer:
    return dn.explore(vgg16, "chelsea", size=SIZE)


def _same(p: dn.Projection, q: dn.Projection) -> None:
    assert torch.equal(p.projection, q.projection)
    assert torch.equal(p.activation, q.activation)
    assert torch.equal(p.position, q.position) and torch.equal(p.channel, q.channel)
    assert torch.equal(p.box, q.box) and p.map_size == q.map_size


@pytest.mark.parametrize("layer, channel, position", [
    ("relu4_3", 5, (3, 4)),
    ("relu4_3", 200, (0, 13)),     # a border unit: its field leaves the image
    ("conv3_3", 17, (27, 0)),
    ("pool2", 3, "max"),
    ("relu5_1", "max", "max"),     # field larger than the image: the whole-map walk
])
def test_select_shows_exactly_what_project_returns(app, vgg16, layer, channel, position):
    p = app.select(layer=layer, channel=channel, position=position)
    assert app.projection is p
    assert torch.equal(app.x, vgg16.preprocess("chelsea", size=SIZE, crop=SIZE))
    ref = dn.Deconvnet(vgg16).project(app.x, layer, channel, position)
    _same(p, ref)
    assert (app.layer, app.channel, app.position) == (layer, int(ref.channel[0]), tuple(ref.position[0].tolist()))


def test_a_click_reuses_the_recorded_forward(app, vgg16):
    threads = torch.get_num_threads()
    app.select(layer="relu4_3", channel=7, position=(1, 1))
    assert torch.get_num_threads() == threads  # one thread while the app computes, then torch's own again
    forwards = app.deconv.forwards
    seen = {}
    for pos in [(2, 3), (13, 13), (0, 0), (2, 3)]:
        seen.setdefault(pos, []).append(app.select(position=pos))
        assert app.timings["forward"] == 0.0
    assert app.deconv.forwards == forwards  # no click ran a forward
    _same(seen[(2, 3)][0], seen[(2, 3)][1])  # the kept record is not changed by a walk down
    _same(seen[(2, 3)][1], dn.Deconvnet(vgg16).project(app.x, "relu4_3", 7, (2, 3)))
    app.select(layer="conv2_2")
    assert app.deconv.forwards == forwards + 1  # a new layer: one forward, then kept
    app.select(layer="relu4_3", channel=7)
    app.select(layer="conv2_2")
    assert app.deconv.forwards == forwards + 1


def test_unit_at_pixel_is_the_nearest_field_centre():
    """Brute force over every unit: the chosen one's centre is nearest the pixel."""
    net = dn.load_vgg("vgg11", "random")
    for layer, n in (("relu4_2", 14), ("pool2", 28), ("conv1_1", 112)):
        rf = receptive_field(net, layer)
        for row in np.linspace(-5, 116, 23):
            got = unit_at_pixel(rf, (n, n), row, row / 2)
            for axis, v in ((0, row), (1, row / 2)):
                centres = np.arange(n) * rf.jump[axis] - rf.padding[axis] + (rf.size[axis] - 1) / 2
                best = np.abs(centres - v).min()
                assert abs(centres[got[axis]] - v) == best


def test_clicks_on_the_map_and_on_the_image_pick_that_unit(app):
    app.select(layer="relu4_3", channel=11, position=(0, 0))
    cell, zoom = app._cell(), app._zoom()
    rf = receptive_field(app.net, "relu4_3")
    for r, c in [(0, 0), (5, 9), (13, 13), (7, 0)]:
        app.click_map((c + 0.5) * cell, (r + 0.5) * cell)
        assert app.position == (r, c)
        top, left, bottom, right = rf.box(r, c)
        app.click_image((left + right - 1) / 2 * zoom, (top + bottom - 1) / 2 * zoom)  # the field's centre
        assert app.position == (r, c)
    app.click_map(10_000, -3)  # outside the picture: the nearest cell
    assert app.position == (0, 13)


def _inside_brute_force(net, layer, map_size, hw):
    """Units whose receptive-field box lies inside the image, unit by unit."""
    rf = receptive_field(net, layer)
    ok = torch.zeros(map_size, dtype=torch.bool)
    for r in range(map_size[0]):
        for c in range(map_size[1]):
            top, left, bottom, right = rf.box(r, c)
            ok[r, c] = top >= 0 and left >= 0 and bottom <= hw[0] and right <= hw[1]
    return ok


def test_strongest_channels_and_units_are_away_from_the_border(app, vgg16):
    """The strongest list ranks channels by their largest activation among units whose receptive field lies
    inside the image (a padding-corner unit does not make a channel 'strongest'); a new layer shows the
    strongest such unit, and the status says where the map's maximum is when that is a border unit."""
    app.select(layer="conv3_3")
    act = record(vgg16, app.x, ["conv3_3"]).activations["conv3_3"][0]
    ok = _inside_brute_force(vgg16, "conv3_3", act.shape[-2:], app.x.shape[-2:])
    assert 0 < int(ok.sum()) < ok.numel()
    peak = torch.where(ok, act, torch.tensor(-float("inf"))).flatten(1).amax(1)
    got = app.strongest_channels(12)
    want = sorted(range(len(peak)), key=lambda c: (-float(peak[c]), c))[:12]
    assert [c for c, _ in got] == want
    assert [v for _, v in got] == [float(peak[c]) for c in want]
    assert app.channel == want[0]  # what a new layer shows
    r, c = app.position
    assert ok[r, c] and act[want[0], r, c] == act[want[0]][ok].max()
    # a unit at the corner: said to see the zero padding, with the strongest unit away from the border named
    app.select(position=(0, 0))
    assert app.at_border() and "At the image border" in app._w["status"].value
    assert f"the strongest unit away from the border is ({r}, {c})" in app._w["status"].value
    # "max" is the engine's: the map's maximum wherever it is
    p = app.select(channel="max", position="max")
    _same(p, dn.Deconvnet(vgg16).project(app.x, "conv3_3", "max", "max"))


def test_the_border_maximum_line_is_said_of_the_apps_choice_only(app):
    """"The strongest unit away from the border; the map's maximum ... is a border unit" explains why the app
    chose the unit on show; after a click on another unit it is not left standing."""
    line = "The strongest unit away from the border;"
    shown = []
    for layer in [n for n in app.net.layers if n.startswith(("conv", "relu"))]:
        app.select(layer=layer)
        if line in app._w["status"].value:
            shown.append(layer)
            break
    assert shown, "no layer of the test image has its maximum at the border: the line is never said"
    inside = app.inside()
    r, c = next((int(i), int(j)) for i, j in torch.nonzero(inside) if (int(i), int(j)) != app.position)
    app.select(position=(r, c))  # what a click does
    assert app.position == (r, c) and line not in app._w["status"].value
    app.select(position="strongest")  # the app's choice again: said again
    assert line in app._w["status"].value


def test_the_method_toggle_shows_that_methods_map_of_the_same_seed(app, vgg16):
    app.select(layer="relu4_3", channel=9, position=(4, 6), method="deconvnet")
    seed = deconvnet_seed(vgg16, app.x, dn.Target("relu4_3", 9, (4, 6)))[0]
    want = backward_maps(vgg16, app.x, "relu4_3", seed, ("guided_backprop", "gradient"))
    for method in ("guided_backprop", "gradient"):
        p = app.select(method=method)
        assert (app.channel, app.position, app.method) == (9, (4, 6), method)
        assert torch.equal(p.projection, want[method])
    _same(app.select(method="deconvnet"), dn.Deconvnet(vgg16).project(app.x, "relu4_3", 9, (4, 6)))


def test_pictures_show_the_map_the_box_and_the_projection(app, vgg16):
    p = app.select(layer="relu4_3", channel=3, position=(6, 5), method="deconvnet")
    pics = app.pictures()
    # the activation panel: each cell has the colour of its activation, the chosen one outlined in cyan
    act = record(vgg16, app.x, ["relu4_3"]).activations["relu4_3"][0, 3].double().numpy()
    colours = (activation_colors(act) * 255 + 0.5).astype(np.uint8)
    cell = app._cell()
    centres = pics["activation"][cell // 2 :: cell, cell // 2 :: cell]
    inside = np.ones(act.shape, bool)
    inside[6, 5] = False
    assert np.abs(centres[inside].astype(int) - colours[inside]).max() <= 1
    r, c = 6, 5
    assert (pics["activation"][r * cell + 1, c * cell + cell // 2] == (0, 255, 255)).all()
    # the receptive field box on the image: yellow on its (clipped) top edge
    zoom = app._zoom()
    top, left, bottom, right = (int(v) for v in p.box[0])
    mid = round((max(left, 0) + min(right, SIZE)) / 2 * zoom)
    assert (pics["image"][round(top * zoom) + 1, mid] == (255, 212, 0)).all()
    # the zoomed projection is the projection cropped to the box, scaled for display
    box_proj = dn.plot.crop_box(p.projection_rgb()[0], p.box[0], 0.0)
    want = (dn.plot.scale_for_display(box_proj) * 255 + 0.5).astype(np.uint8)
    side = bottom - top
    k = pics["zoom"].shape[0] // side
    assert k >= 1 and np.array_equal(pics["zoom"][::k, ::k][:side, :side], want)
    # what the widgets hold is what pictures() draws
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(app._w["image"].value))), pics["image"])


def test_bad_choices_raise_and_change_nothing(app):
    p = app.select(layer="relu4_3", channel=2, position=(1, 2))
    for kwargs, message in [
        ({"layer": "conv9_9"}, "unknown layer 'conv9_9'"),
        ({"layer": "fc6"}, "has no map to click on"),
        ({"channel": 512}, "out of range"),
        ({"position": (14, 0)}, "outside"),
        ({"method": "lrp"}, "unknown method 'lrp'"),
        ({"image": "/nonexistent/cat.jpg"}, "image file not found"),
        ({"image": 3}, "needs a dataset"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            app.select(**kwargs)
        assert app.projection is p and (app.layer, app.channel, app.position) == ("relu4_3", 2, (1, 2))
    # from the widgets, an error is shown in the app, not raised into the void
    app._w["path"].value = "/nonexistent/dog.png"
    app._w["open"].click()
    assert "image file not found" in app._w["status"].value and app.projection is p
    app.message = ""


def test_an_upload_and_a_path_become_the_image_on_show(app, vgg16, tmp_path):
    photo = Image.fromarray((np.random.default_rng(0).random((130, 150, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="png")
    app._w["upload"].value = ({"name": "noise.png", "type": "image/png", "size": len(buf.getvalue()),
                               "content": memoryview(buf.getvalue()),
                               "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    assert app.image_key == "upload: noise.png" and app.message == ""
    assert torch.equal(app.x, vgg16.preprocess(photo, size=SIZE, crop=SIZE))
    path = tmp_path / "noise.png"
    photo.save(path)
    app._w["path"].value = str(path)
    app._w["open"].click()
    assert app.image_key == str(path) and app._w["images"].value == str(path)
    _same(app.projection, dn.Deconvnet(vgg16).project(vgg16.preprocess(str(path), SIZE, SIZE), app.layer, app.channel,
                                                      app.position))


@pytest.fixture(scope="module")
def scanned(vgg16):
    from deconvnet.data import demo_collection
    from deconvnet.scan import scan_top_k

    data = demo_collection(preprocessing=vgg16.preprocessing, size=64, n=17)
    return data, scan_top_k(vgg16, data, ["conv3_3"], k=9, progress=False)


def test_top_k_tiles_of_a_scan(vgg16, scanned):
    """The tiles are each unit's projection on its own image cropped to its box (exactly what
    Deconvnet.project gives) and its image patch, as Figure 2's; a click on either mosaic opens the tile's
    image at its unit, and the strongest list keeps showing the channel."""
    from deconvnet.figure2 import feature_tiles

    data, topk = scanned
    app = dn.explore(vgg16, data, topk, layer="conv3_3", background=False)
    assert app.image_key == "#0 astronaut: whole photo"  # an item named in words
    channel = int(topk.values["conv3_3"][:, 0].argmax())
    app.select(channel=channel)
    got = app.tiles
    for k in range(len(got.values)):
        x = data[int(got.images[k])][0][None]
        p = dn.Deconvnet(vgg16).project(x, "conv3_3", channel, tuple(got.positions[k].tolist()))
        assert torch.equal(got.projections[k], dn.plot.crop_box(p.projection_rgb()[0], p.box[0], 0.0))
    want = feature_tiles(vgg16, data, topk, "conv3_3", [channel], progress=False)[0]
    assert torch.equal(got.images, want.images) and torch.equal(got.positions, want.positions)
    assert got.boxes == want.boxes and torch.equal(got.patches, want.patches)
    # feature_tiles forwards its nine images as one batch, the explorer each image alone: the rounding of
    # the convolutions differs with the batch, nothing else
    assert torch.allclose(got.projections, want.projections, rtol=0, atol=1e-6 * float(want.projections.abs().max()))
    # a click on the fifth tile, on its projection and then on its patch, opens its image at its unit
    k = 4
    cols = math.ceil(math.sqrt(len(want.values)))
    step = app._tile_px + TILE_GAP
    for mosaic in ("tiles", "tile_patches"):
        app.select(image="chelsea")
        event = app._events[["image", "activation", "tiles", "tile_patches"].index(mosaic)]
        assert event.source is app._w[mosaic] and "click" in event.watched_events
        p = app.click_tile((k % cols + 0.5) * step, (k // cols + 0.5) * step)
        assert app.image_key == app._item_key(int(want.images[k]))
        assert app.position == tuple(want.positions[k].tolist()) and app.channel == channel
        assert torch.isclose(p.activation[0].double(), want.values[k].double(), rtol=1e-5)
        assert app._w["strongest"].value == channel  # not blank: the channel on show stays listed
        assert dict((v, label) for label, v in app._w["strongest"].options)[channel].startswith(f"{channel} ")
    # a layer the scan does not have: a note instead of tiles
    app.select(layer="relu4_3")
    assert app.tiles is None and "has no relu4_3" in app.tiles_message


def test_the_tiles_come_after_the_main_view(vgg16, scanned):
    """With background=True (the default), select draws the view and returns while the tiles of a channel
    not seen before are computed on another thread; they are drawn when ready, and kept."""
    import threading

    data, topk = scanned
    app = dn.explore(vgg16, data, topk, layer="conv3_3")
    app.wait_tiles()
    release, started = threading.Event(), threading.Event()
    compute = app.worker.source.compute

    def slow(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return compute(*args, **kwargs)

    app.worker.source.compute = slow
    channel = next(c for c in range(topk.values["conv3_3"].shape[0]) if (app.layer, c) not in app.worker.cache)
    p = app.select(channel=channel)  # returns although the tiles cannot be made yet
    assert started.wait(60) and app.projection is p and app.channel == channel
    assert "computing" in app._w["tiles_note"].value and app._w["tiles_box"].layout.display == "none"
    release.set()
    app.wait_tiles()
    assert app._shown_tiles is app.worker.cache[(app.layer, channel)] and app._w["tiles_box"].layout.display is None
    assert app.timings["tiles"] > 0
    app.worker.source.compute = compute
    app.select(channel=channel, position=(1, 1))
    app.select(channel=(channel + 1) % 8)
    app.wait_tiles()
    app.select(channel=channel)  # seen before: drawn with the view, from what was kept
    assert app._shown_tiles is app.worker.cache[(app.layer, channel)] and app._w["tiles_note"].value == ""


def test_item_names_say_what_the_crop_is():
    from deconvnet.data import demo_collection
    from deconvnet.explore.state import item_name

    data = demo_collection(preprocessing=dn.load_vgg("vgg11", "random").preprocessing, size=32)
    names = [item_name(data, i) for i in range(len(data))]
    assert names[0] == "#0 astronaut: whole photo"
    assert names[17] == "#17 astronaut: top-left crop, 75%"
    assert names[-1].endswith(", mirrored") and "@" not in "".join(names)
    assert len(set(names)) == len(names)


# --- graphs (ResNet, GoogLeNet) ----------------------------------------------------------------------------

GRAPH_SIZE = 96


@pytest.fixture(scope="module", params=["resnet18", "googlenet"])
def graph_app(request):
    net = dn.load_model(request.param, "random")
    return dn.explore(net, "astronaut", size=GRAPH_SIZE)


def _one_thread(fn):
    """The reference computed with the app's one torch thread: a graph's backward sums in an order that
    depends on the number of threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_graph_layers_offered_default_layers_first(graph_app):
    app, deconv = graph_app, dn.Deconvnet(graph_app.net)
    defaults = deconv.default_layers()
    spatial = deconv.spatial_layers()
    assert app.layers[: len(defaults)] == defaults and len(defaults) >= 3
    assert set(app.layers) == set(spatial) | {"fc"} and app.layers[-1] == "fc" == app.class_layer  # not an aux head
    assert app.layer == defaults[len(defaults) // 2]  # a middle-deep stage first
    stage = defaults[1]
    got = app.layer_options(stage.upper())
    assert got[0] == stage and got == [n for n in app.layers if stage in n]
    # the dropdown follows the filter, and keeps the layer on show
    app._w["layer_filter"].value = stage
    assert [v for _, v in app._w["layer"].options] == [app.layer] + got and app._w["layer"].value == app.layer
    app._w["layer_filter"].value = ""
    assert len(app._w["layer"].options) == len(app.layers)


@pytest.mark.parametrize("which, channel, position", [(0, 3, (1, 2)), (1, 5, (0, 0)), (2, 2, "max"), (-1, 1, (1, 1))])
def test_graph_select_shows_exactly_what_project_returns(graph_app, which, channel, position):
    app = graph_app
    layer = app.default_layers[which]
    p = app.select(layer=layer, channel=channel, position=position, method="deconvnet")
    ref = _one_thread(lambda: dn.Deconvnet(app.net).project(app.x, layer, channel, position))
    _same(p, ref)
    assert app.pictures()["image"].shape[:2] == (224, 224)
    rf = receptive_field(app.net, layer)
    assert tuple(p.box[0].tolist()) == rf.box(*app.position)


def test_graph_class_scores_by_name(graph_app):
    app = graph_app
    app.net.categories = [f"thing {i}" for i in range(1000)]
    try:
        p = app.select(layer="fc", channel="thing 7")
        assert app.channel == 7 and app.is_class and p.label == ["thing 7"]
        ref = _one_thread(lambda: dn.Deconvnet(app.net).project(app.x, "fc", 7))
        assert torch.equal(p.projection, ref.projection) and torch.equal(p.activation, ref.activation)
        scores = record(app.net, app.x, ["fc"]).activations["fc"][0]
        top = torch.argsort(scores, descending=True)[:10].tolist()
        assert [c for c, _ in app.strongest_channels(10)] == top
        assert "<b>thing 7</b>" in app._w["status"].value and app._w["unit_row"].layout.display == "none"
        # a click on the second bar of the class-score panel picks the second strongest class
        app.click_map(5, 20 * 1 + 10)
        assert app.channel == top[1]
        with pytest.raises(ValueError, match="unknown class 'no such thing'"):
            app.select(channel="no such thing")
        app.select(layer=app.default_layers[-1])
        assert not app.is_class and app._w["unit_row"].layout.display is None
    finally:
        app.net.categories = None


# --- in a real browser ------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    import importlib.util

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        return (f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing). "
                "Hint: apt-get install -y chromium chromium-driver (.ci/run does)")
    for module in ("selenium", "jupyterlab", "ipyevents"):
        if importlib.util.find_spec(module) is None:
            return f"needs {module}. Hint: ./run.sh venv installs requirements.lock"
    return None


BROWSER_CASES = {
    # arch: (the notebook's model, layer shown first, map side, cell (row, col) clicked, listed first, listed,
    # not listed)
    "vgg16": ("dn.load_vgg('vgg16', 'random')", "relu4_3", 14, (9, 2), ["conv1_2", "conv2_2", "conv3_3", "conv4_3",
                                                                        "conv5_3"],
              {"relu4_3", "pool5", "fc8 (class scores)"}, {"fc6"}),
    "resnet18": ("dn.load_model('resnet18', 'random')", "layer3", 7, (2, 5), ["layer1", "layer2", "layer3", "layer4"],
                 {"layer3.1.conv2", "fc (class scores)"}, {"avgpool"}),
}


class _Lab:
    """A JupyterLab server on localhost and a headless Chromium showing one notebook."""

    def __init__(self, tmp_path, server, log_path):
        self.tmp_path, self.server, self.log_path, self.driver = tmp_path, server, log_path, None

    def wait(self, condition, timeout: float, what: str):
        import shutil
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.server.poll() is None, f"JupyterLab stopped: {self.log_path.read_text()[-2000:]}"
            try:
                got = condition()
            except Exception:  # the page is still being built
                got = None
            if got:
                return got
            time.sleep(0.3)
        shot = self.tmp_path / "timeout.png"
        if self.driver is not None:
            self.driver.save_screenshot(str(shot))
            if os.environ.get("DECONVNET_SCREENSHOTS"):
                shutil.copy(shot, os.environ["DECONVNET_SCREENSHOTS"])
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (screenshot {shot})")



@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """One JupyterLab server and one headless Chromium for every case of BROWSER_CASES: a notebook with one
    cell per case (its own model and explorer), run top to bottom in the browser; the fixture returns once
    every cell has run, and each case then checks its own cell's explorer."""
    import secrets
    import socket
    import subprocess
    import sys
    import urllib.request

    import nbformat
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "notebooks"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import deconvnet as dn\nnet_{arch} = {case[0]}\n"
                                          f"app_{arch} = dn.explore(net_{arch}, 'chelsea', size=112)\napp_{arch}")
                for arch, case in BROWSER_CASES.items()]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "explore.ipynb")
    # this test's own JupyterLab settings, config and data folders: nothing of the user's is read or written
    settings = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                    "checkForUpdates": False}}
    for rel, value in settings.items():
        (tmp_path / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "settings" / rel).write_text(json.dumps(value))
    # the kernel imports the package this test imported (a worktree's, not another installed copy)
    package_root = os.path.dirname(os.path.dirname(dn.__file__))
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([package_root] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               DECONVNET_OFFLINE="1", JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (stop_server closes it)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    lab = _Lab(tmp_path, server, tmp_path / "server.log")
    try:
        # the browser starts while the server does
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1150"):
            options.add_argument(arg)
        lab.driver = driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)

        def up() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                return r.status == 200

        lab.wait(up, 60, "the JupyterLab server")
        driver.get(f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}")
        kernel = ("const w = window.jupyterapp && jupyterapp.shell.currentWidget;"
                  "const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;")
        lab.wait(lambda: driver.execute_script(kernel + "return k && k.status === 'idle'"), 90,
                 "the notebook and its kernel")
        driver.execute_script("jupyterapp.commands.execute('notebook:run-all-cells')")
        # every cell run (a prompt number each) and the kernel idle again: no cell is still running, so
        # nothing moves the page under a case's clicks
        lab.wait(lambda: driver.execute_script(
            kernel + "return k && k.status === 'idle' && w.content.widgets.length === arguments[0]"
            " && w.content.widgets.every(c => c.model.executionCount)", len(BROWSER_CASES)),
            240, "every cell of the notebook to run")
        yield lab
    finally:
        if lab.driver is not None:
            lab.driver.quit()
        stop_server(server, log)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
@pytest.mark.parametrize("arch", list(BROWSER_CASES))
def test_jupyterlab_shows_the_explorer_and_a_click_answers(jupyterlab, arch):
    """JupyterLab on localhost, a notebook calling dn.explore run in headless Chromium, on a chain (VGG16) and
    a graph (ResNet-18): the app renders its pictures and controls, no label is clipped, and a click on the
    activation map shows that unit (through ipyevents and the kernel). One server, browser and notebook serve
    both cases (the ``jupyterlab`` fixture: a cell per arch, in one kernel); each case checks its own cell's
    explorer. The screenshots are kept in DECONVNET_SCREENSHOTS when it names a folder."""
    import shutil

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    first, side, (row, col), defaults, listed, unlisted = BROWSER_CASES[arch][1:]
    driver, wait, tmp_path = jupyterlab.driver, jupyterlab.wait, jupyterlab.tmp_path
    index = list(BROWSER_CASES).index(arch)

    def explorer():
        return driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")[index].find_element(
            By.CSS_SELECTOR, ".deconvnet-explorer")

    app = wait(explorer, 60, f"the explorer of the {arch} cell")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", app)  # as a reader scrolls to it

    def pictures():
        imgs = app.find_elements(By.CSS_SELECTOR, "img")
        drawn = [i for i in imgs
                 if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]
        return drawn if len(drawn) >= 5 else None

    imgs = wait(pictures, 120, "the explorer's pictures")
    selects = {s.find_element(By.XPATH, "preceding-sibling::label").text: s
               for s in app.find_elements(By.CSS_SELECTOR, "select")}
    assert {"image", "layer", "strongest"} <= set(selects)
    layers = [o.text for o in selects["layer"].find_elements(By.TAG_NAME, "option")]
    assert listed <= set(layers) and not unlisted & set(layers)
    assert layers[: len(defaults)] == defaults  # the default layers come first
    assert f"<b>{first} channel" in app.get_attribute("innerHTML")
    assert {"deconvnet", "guided backprop", "gradient"} <= {b.text for b in app.find_elements(By.TAG_NAME,
                                                                                              "button")}
    clipped = driver.execute_script(
        "return [...arguments[0].querySelectorAll('label, .widget-html-content, .widget-label')]"
        ".filter(e => e.offsetWidth > 0 && e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)", app)
    assert clipped == []  # every label shows all its words
    sizes = [driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                   i) for i in imgs]
    cell = 224 // side
    assert sizes[:3] == [[224, 224]] * 3  # image, activation map (whole cells), projection
    driver.save_screenshot(str(tmp_path / f"{arch}_explorer.png"))
    # a click at the centre of an activation map's cell: the picture's centre is (112, 112) px
    driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", imgs[1])
    ActionChains(driver).move_to_element_with_offset(imgs[1], col * cell + cell // 2 - 112,
                                                     row * cell + cell // 2 - 112).click().perform()
    wait(lambda: f"unit ({row}, {col}) of the {side}x{side} map" in app.text, 60, "the clicked unit to be shown")
    assert "recorded forward reused" in app.text  # the click ran no forward
    driver.save_screenshot(str(tmp_path / f"{arch}_explorer_clicked.png"))
    shots = os.environ.get("DECONVNET_SCREENSHOTS")
    if shots:
        for name in ("explorer.png", "explorer_clicked.png"):
            shutil.copy(tmp_path / f"{arch}_{name}", os.path.join(shots, f"{arch}_{name}"))


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
