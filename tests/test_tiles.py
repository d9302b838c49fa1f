"""The one tile builder: its projections against the full projection cropped, its patches against
``plot.crop_box``, the three consumers (Figure 2, the explorer, the atlas) getting equal tiles from it, and
its one scan check refusing a scan of other data with one message in all three."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import deconvnet as dn
from deconvnet.atlas import build_atlas
from deconvnet.data import demo_collection
from deconvnet.explore.tiles import TileSource
from deconvnet.figure2 import feature_tiles, select_features
from deconvnet.images import pil_to_tensor01
from deconvnet.plot import crop_box, scale_for_display
from deconvnet.scan import scan_top_k
from deconvnet.tiles import PATCH_PAD, Entry, Patches, ScanMismatch, entries_of, project_entries, to_uint8

LAYER = "conv3_1"


@pytest.fixture(scope="module")
def net():
    return dn.load_vgg("vgg11", "random", seed=3)


@pytest.fixture(scope="module")
def data(net):
    return demo_collection(preprocessing=net.preprocessing, size=64, n=8)


@pytest.fixture(scope="module")
def topk(net, data):
    return scan_top_k(net, data, [LAYER], k=3, progress=False, cache=False)


def test_patches_are_crop_box_of_the_image_padded_once():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    patches = Patches(rgb, margin=12)
    image = pil_to_tensor01(rgb)
    for box in ((0, 0, 8, 8), (-5, -7, 7, 5), (14, 24, 26, 36), (-12, -12, 32, 42)):
        assert torch.equal(patches.crop(box), crop_box(image, box, PATCH_PAD))
        want = np.clip(np.round(crop_box(image, box, PATCH_PAD).permute(1, 2, 0).double().numpy() * 255), 0, 255)
        assert patches.pixels(box).dtype == np.uint8 and np.array_equal(patches.pixels(box), want.astype(np.uint8))
    assert np.array_equal(to_uint8(np.array([0.0, PATCH_PAD, 1.0, 1.2])), [0, 224, 255, 255])
    with pytest.raises(ValueError, match="beyond the margin of 12 px"):
        patches.crop((-13, 0, 5, 5))


@pytest.mark.parametrize("arch, layer", [("vgg11", LAYER), ("resnet18", "layer2")])
def test_projections_are_the_full_projection_cropped_to_the_box(arch, layer, net, data):
    """The builder's ``project_units`` windows against ``Deconvnet.project`` (the other path through the engine)
    cropped to each unit's box: equal on a chain's cropped walk, to float32 round-off on a graph."""
    net = net if arch == "vgg11" else dn.load_model("resnet18", "random", seed=4)
    data = data if arch == "vgg11" else demo_collection(preprocessing=net.preprocessing, size=64, n=3)
    deconv = dn.Deconvnet(net)
    x = torch.stack([data[i][0] for i in range(3)])
    act = deconv.record(x, [layer]).activations[layer]
    entries = [Entry(c, float(act[i, c, r, col]), i, r, col) for i, c, r, col in ((0, 1, 3, 4), (2, 5, 0, 0),
                                                                                 (1, 1, 7, 2))]
    windows = project_entries(deconv, x, layer, [e.image for e in entries], entries)
    rf = deconv.receptive_field(layer)
    assert windows.shape == (3, 3, *rf.size) and windows.device.type == "cpu"
    for e, w in zip(entries, windows, strict=True):
        p = dn.Deconvnet(net).project(x[e.image][None], layer, e.channel, (e.row, e.col))
        want = crop_box(p.projection_rgb()[0].detach(), rf.box(e.row, e.col), 0.0)
        assert torch.allclose(w, want, rtol=0, atol=1e-5 * float(want.abs().max()))  # another batch: round-off
        if arch == "vgg11":  # the same forward (one image): the chain's cropped walk, bit for bit
            assert torch.equal(project_entries(deconv, x[e.image][None], layer, [0], [e])[0], want)


def test_the_three_consumers_get_equal_tiles(net, data, topk, tmp_path):
    """Figure 2, the explorer and the atlas batch their forwards differently and share the builder: the same
    boxes, labels and patches (exactly), and projections equal to float32 round-off (one gray level)."""
    channels = select_features(topk, LAYER, 2, "strongest")
    figure = feature_tiles(net, data, topk, LAYER, channels, batch_size=4, progress=False)
    source = TileSource(net, data, topk)
    atlas = build_atlas(net, data, [LAYER], tmp_path / "site", k=3, features=channels, image_format="png",
                        batch_size=3, topk=topk, progress=False)
    for tiles in figure:
        shown = source.compute(LAYER, tiles.channel)
        assert [(e.value, e.image, (e.row, e.col)) for e in entries_of(topk, LAYER, tiles.channel)] == \
            topk.entries(LAYER, tiles.channel)
        for key in ("values", "images", "positions", "patches"):
            assert torch.equal(getattr(shown, key), getattr(tiles, key)), key
        assert (shown.boxes, shown.labels, shown.sources) == (tiles.boxes, tiles.labels, tiles.sources)
        scale = float(tiles.projections.abs().max())
        assert torch.allclose(shown.projections, tiles.projections, rtol=0, atol=1e-6 * scale)
        r = tiles.projections.shape[-1]
        for rank, (proj, patch) in enumerate(zip(tiles.projections, tiles.patches, strict=True)):
            pair = np.asarray(Image.open(atlas.out / LAYER / "tiles" / f"{tiles.channel}_{rank}.png"))
            assert np.abs(pair[:, :r].astype(int) - to_uint8(scale_for_display(proj))).max() <= 1
            assert np.array_equal(pair[:, -r:], to_uint8(patch.permute(1, 2, 0).numpy()))


def test_a_scan_of_other_data_is_refused_once_with_one_message(net, data, topk, tmp_path):
    """One recorded activation the model does not give again: Figure 2 and the atlas refuse with the builder's
    message, and the explorer shows it as the tiles' note."""
    channel = select_features(topk, LAYER, 1, "strongest")[0]
    other = topk.select([LAYER])
    other.values = {LAYER: topk.values[LAYER].clone()}
    other.values[LAYER][channel, 0] *= 1.5
    v, i, (r, c) = other.entries(LAYER, channel)[0]
    got = float(topk.values[LAYER][channel, 0])
    message = (f"image {i} gives activation {got:.6g} at {LAYER} channel {channel} ({r}, {c}), but the scan recorded "
               f"{v:.6g}: was the scan made with this model and dataset?")
    with pytest.raises(ScanMismatch) as err:
        feature_tiles(net, data, other, LAYER, [channel], progress=False)
    assert str(err.value) == message
    with pytest.raises(ScanMismatch) as err:
        build_atlas(net, data, [LAYER], tmp_path / "site", k=3, features=[channel], topk=other, progress=False)
    assert str(err.value) == message
    assert TileSource(net, data, other).compute(LAYER, channel) == message
    # a recorded value within the tolerance (float32 round-off of another batch) passes
    other.values[LAYER][channel, 0] = got * (1 + 1e-4)
    assert feature_tiles(net, data, other, LAYER, [channel], progress=False)[0].channel == channel
