"""Figure 2 at dataset scale: top-k against brute force, resumable scans, receptive fields, the script."""

import json
import os
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import deconvnet as dn
from deconvnet.cli import main
from deconvnet.data import ImageFolder
from deconvnet.engine import receptive_field
from deconvnet.figure2 import feature_tiles, select_features, write_layer_figure
from deconvnet.scan import StaleScanWarning, Terminated, TopK, scan_top_k

from conftest import CallingBack, images, photo_folder


class Tensors(Dataset):
    """A small in-memory collection with the interface of deconvnet.data's collections."""

    def __init__(self, x, fail_at=None):
        self.x, self.fail_at = x, fail_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.fail_at is not None and i == self.fail_at:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C here
        return self.x[i], i

    def rgb(self, i):
        a = (self.x[i].clamp(-2, 2) / 4 + 0.5).permute(1, 2, 0).mul(255).byte().numpy()
        return Image.fromarray(a)

    def label(self, i):
        return f"image {i}"

    def describe(self):
        return {"kind": "tensors", "n_images": len(self.x)}


@pytest.fixture(scope="module")
def small():
    net = dn.load_vgg("vgg11", "random", seed=3)
    x = images((14, 3, 32, 32), seed=21)
    x[9] = x[2]  # an exact duplicate: ties in value, broken by the lower image index
    return net, Tensors(x)


def brute_force(net, ds, layer, k, per_group, group=lambda i: i):
    """Every activation of every image, one image at a time, sorted by (-value, image, position), then
    taken greedily: an entry whose group already has ``per_group`` stronger ones is passed over."""
    cands = {}
    for i in range(len(ds)):
        act = dn.Deconvnet(net).record(ds[i][0][None], [layer]).activations[layer][0].double()
        c, h, w = act.shape
        for ch in range(c):
            flat = act[ch].flatten()
            cands.setdefault(ch, []).extend((float(v), i, p) for p, v in enumerate(flat.tolist()))
    out = {}
    for ch, units in cands.items():
        units.sort(key=lambda u: (-u[0], u[1], u[2]))
        kept, count = [], {}
        for v, i, p in units:
            g = group(i)
            if per_group is None or count.get(g, 0) < per_group:
                kept.append((v, i, (p // w, p % w)))
                count[g] = count.get(g, 0) + 1
            if len(kept) == k:
                break
        out[ch] = kept
    return out


class Grouped(Tensors):
    """Items cut from a few sources, as the demo collection's crops are: item i comes from source i % 4."""

    def group(self, i):
        return f"photo {i % 4}"


def check_against_brute_force(net, ds, layers, k, per_group, **kwargs):
    # batch_size=1: the scan's forwards are then bitwise those of the brute force (batched convolutions
    # may differ in the last bit); batching itself is checked by test_result_is_independent_of_batch_size
    topk = scan_top_k(net, ds, layers, k=k, per_group=per_group, batch_size=1, progress=False, **kwargs)
    group = getattr(ds, "group", lambda i: i)
    for layer in layers:
        ref = brute_force(net, ds, layer, k, per_group, group)
        for ch in range(net.channels[layer]):
            got = topk.entries(layer, ch)
            assert [(i, p) for _, i, p in got] == [(i, p) for _, i, p in ref[ch]], (layer, ch)
            assert torch.allclose(torch.tensor([v for v, _, _ in got]), torch.tensor([v for v, _, _ in ref[ch]]),
                                  rtol=0, atol=0)
    return topk


@pytest.mark.parametrize("per_group", [1, 2, None])
def test_top_k_equals_brute_force(small, per_group):
    net, ds = small
    layers = ["conv2_1", "relu3_1", "pool2"]
    topk = check_against_brute_force(net, ds, layers, 5, per_group)
    if per_group == 1:  # at most one entry per image
        for layer in layers:
            for row in topk.images[layer]:
                assert len(set(row.tolist())) == len(row)


@pytest.mark.parametrize("per_group", [1, 2])
def test_per_group_limit_equals_brute_force(small, per_group):
    net, ds = small
    grouped = Grouped(ds.x)
    layers = ["conv2_1", "pool3"]
    topk = check_against_brute_force(net, grouped, layers, 4, per_group)
    sources_per_row = [[grouped.group(i) for i in row.tolist() if i >= 0] for row in topk.images["pool3"]]
    assert all(max(row.count(g) for g in row) <= per_group for row in sources_per_row)
    # the limit binds: without groups some channel would take two items of one source
    free = scan_top_k(net, ds, layers, k=4, per_group=per_group, batch_size=1, progress=False)
    assert any(max([grouped.group(i) for i in row.tolist()].count(g) for g in map(grouped.group,
                                                                                  row.tolist())) > per_group
               for row in free.images["pool3"])


def test_per_group_limit_survives_interruption(small, tmp_path):
    net, ds = small
    ckpt = tmp_path / "grouped.ckpt"
    full = scan_top_k(net, Grouped(ds.x), ["relu3_1"], k=3, batch_size=2, progress=False)

    class Failing(Grouped):
        def __getitem__(self, i):
            if i == 7 and not getattr(self, "failed", False):
                self.failed = True
                raise KeyboardInterrupt
            return self.x[i], i

    failing = Failing(ds.x)
    with pytest.raises(KeyboardInterrupt):
        scan_top_k(net, failing, ["relu3_1"], k=3, batch_size=2, checkpoint=ckpt, checkpoint_every=100, progress=False)
    resumed = scan_top_k(net, failing, ["relu3_1"], k=3, batch_size=2, checkpoint=ckpt, progress=False)
    assert torch.equal(resumed.images["relu3_1"], full.images["relu3_1"])
    assert torch.equal(resumed.positions["relu3_1"], full.positions["relu3_1"])


def test_ties_prefer_the_lower_image_index(small):
    net, ds = small
    topk = scan_top_k(net, ds, ["relu3_1"], k=14, progress=False)
    seen = 0
    for ch in range(net.channels["relu3_1"]):
        e = topk.entries("relu3_1", ch)
        for (v1, i1, _), (v2, i2, _) in zip(e, e[1:], strict=False):
            assert v1 > v2 or (v1 == v2 and i1 < i2)
            seen += v1 == v2
    assert seen > 0  # the duplicate image and dead ReLU maps make ties


def test_result_is_independent_of_batch_size(small):
    # float64, so that round-off differences between batched and single forwards cannot reorder near-ties
    net = dn.load_vgg("vgg11", "random", seed=3, dtype=torch.float64)
    ds = Tensors(small[1].x.double())
    a = scan_top_k(net, ds, ["conv3_1"], k=3, batch_size=1, progress=False)
    b = scan_top_k(net, ds, ["conv3_1"], k=3, batch_size=14, progress=False)
    assert torch.equal(a.images["conv3_1"], b.images["conv3_1"]) and torch.equal(a.positions["conv3_1"],
                                                                                 b.positions["conv3_1"])


def test_interrupted_scan_resumes_to_the_same_result(small, tmp_path):
    net, ds = small
    ckpt = tmp_path / "scan.ckpt"
    full = scan_top_k(net, ds, ["conv2_1", "pool3"], k=4, batch_size=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        scan_top_k(net, Tensors(ds.x, fail_at=8), ["conv2_1", "pool3"], k=4, batch_size=3, checkpoint=ckpt,
                   checkpoint_every=100, progress=False)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["next_index"] == 6  # two whole batches were done and kept
    resumed = scan_top_k(net, ds, ["conv2_1", "pool3"], k=4, batch_size=3, checkpoint=ckpt, progress=False)
    for layer in ("conv2_1", "pool3"):
        assert torch.equal(resumed.values[layer], full.values[layer])
        assert torch.equal(resumed.images[layer], full.images[layer])
        assert torch.equal(resumed.positions[layer], full.positions[layer])
    with pytest.raises(ValueError, match="belongs to a scan with other arguments"):
        scan_top_k(net, ds, ["conv2_1"], k=4, checkpoint=ckpt, progress=False)


def test_save_and_load(small, tmp_path):
    net, ds = small
    topk = scan_top_k(net, ds, ["conv2_1"], k=3, progress=False)
    topk.save(tmp_path / "r.pt")
    back = TopK.load(tmp_path / "r.pt")
    assert torch.equal(back.values["conv2_1"], topk.values["conv2_1"]) and back.k == 3
    assert back.provenance["weights"] == net.describe() and back.provenance["dataset"]["kind"] == "tensors"
    assert "date" in back.provenance
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="may be corrupt"):
        TopK.load(tmp_path / "bad.pt")


def test_scan_argument_errors(small):
    net, ds = small
    with pytest.raises(ValueError, match="k must be a positive integer"):
        scan_top_k(net, ds, ["conv2_1"], k=0)
    with pytest.raises(ValueError, match="unknown layer 'conv9_1'"):
        scan_top_k(net, ds, ["conv9_1"])
    with pytest.raises(ValueError, match="no spatial map"):
        scan_top_k(net, ds, ["fc6"])


# --- receptive fields and tiles -------------------------------------------------------------------------

# VGG16's case is slow (31 layers at 96 px); AlexNet's proves the same at every layer quickly, and VGG16's table
# and boxes are checked quickly by tests/models/test_models.py and tests/cli/test_cli.py
@pytest.mark.parametrize("arch", [pytest.param("vgg16", marks=pytest.mark.slow), "alexnet"])
def test_projection_support_lies_inside_the_receptive_field(arch):
    """For every layer, a unit's projection is zero outside its box: checks the table and the engine."""
    net = dn.load_model(arch, "random", seed=5)
    hw = (96, 96) if arch == "vgg16" else (131, 131)
    x = images((1, 3, *hw), seed=22)
    deconv = dn.Deconvnet(net)
    spatial = [n for n in net.layers if net.depth(n) < len(net.features)]
    for layer in spatial:
        rec = deconv.record(x, [layer])
        h, w = rec.activations[layer].shape[-2:]
        for r, c in {(0, 0), (h // 2, w // 2), (h - 1, w - 1)}:
            p = deconv.project(x, layer, "max", (r, c)).projection[0]
            support = p.abs().sum(0) > 0
            top, left, bottom, right = receptive_field(net, layer).box(r, c, hw)
            inside = torch.zeros_like(support)
            inside[top:bottom, left:right] = True
            assert not (support & ~inside).any(), (layer, r, c)
            if p.abs().max() > 0 and layer.startswith("conv"):
                # the box is tight: the support reaches its first row or column (for conv layers,
                # whose last op has the full kernel)
                rows, cols = support.nonzero()[:, 0], support.nonzero()[:, 1]
                assert rows.min() == top or cols.min() == left or rows.max() == bottom - 1 or cols.max() == right - 1


def test_alexnet_receptive_fields(alexnet):
    # conv1 11/4 p2; pool1 3/2; conv2 5/1 p2; pool2 3/2; conv3-5 3/1 p1; pool5 3/2
    expected = {"conv1": (11, 4, 2), "pool1": (19, 8, 2), "conv2": (51, 8, 18), "pool2": (67, 16, 18),
                "conv3": (99, 16, 34), "conv4": (131, 16, 50), "conv5": (163, 16, 66), "pool5": (195, 32, 66)}
    for layer, (r, j, p) in expected.items():
        rf = receptive_field(alexnet, layer)
        assert (rf.size[0], rf.jump[0], rf.padding[0]) == (r, j, p), layer


def test_feature_tiles_crop_the_full_projection(small, tmp_path):
    net, ds = small
    topk = scan_top_k(net, ds, ["conv3_1"], k=4, progress=False)
    channels = select_features(topk, "conv3_1", 3, "strongest")
    tiles = feature_tiles(net, ds, topk, "conv3_1", channels, batch_size=5, progress=False)
    rf = receptive_field(net, "conv3_1")
    for t in tiles:
        assert t.projections.shape[-2:] == rf.size and t.patches.shape[-2:] == rf.size
        for _v, i, pos, box, proj, patch in zip(t.values, t.images, t.positions, t.boxes, t.projections, t.patches,
                                                strict=False):
            full = dn.Deconvnet(net).project(ds[int(i)][0][None], "conv3_1", t.channel,
                                             tuple(pos.tolist())).projection[0]
            assert float(full.abs().sum()) == pytest.approx(float(proj.abs().sum()),
                                                            rel=1e-5)  # all of it inside the box
            top, left, bottom, right = box
            ct, cl = max(top, 0), max(left, 0)
            inner = proj[:, ct - top : min(bottom, 32) - top, cl - left : min(right, 32) - left]
            assert torch.allclose(inner, full[:, ct : min(bottom, 32), cl : min(right, 32)], atol=1e-6)
            rgb = torch.from_numpy(np.array(ds.rgb(int(i)))).permute(2, 0, 1).float() / 255
            assert torch.allclose(patch[:, ct - top : min(bottom, 32) - top, cl - left : min(right, 32) - left],
                                  rgb[:, ct : min(bottom, 32), cl : min(right, 32)])
    out, sidecar = write_layer_figure(tiles, topk, net, tmp_path / "grid.png", dataset_name="tensors")
    meta = json.loads(sidecar.read_text())
    assert [f["channel"] for f in meta["features"]] == channels
    assert meta["features"][0]["tiles"][0]["image"] == int(tiles[0].images[0])
    assert meta["provenance"]["weights"] == net.describe()
    assert Image.open(out).size[0] > 500


def test_select_features(small):
    net, ds = small
    topk = scan_top_k(net, ds, ["conv3_1"], k=4, progress=False)
    a = select_features(topk, "conv3_1", 5, "random", seed=1)
    assert a == select_features(topk, "conv3_1", 5, "random", seed=1) != select_features(topk, "conv3_1", 5, "random",
                                                                                         seed=2)
    s = select_features(topk, "conv3_1", 5, "strongest")
    top1 = topk.values["conv3_1"][:, 0]
    assert [float(top1[c]) for c in s] == sorted(top1.tolist(), reverse=True)[:5]
    with pytest.raises(ValueError, match="not understood"):
        select_features(topk, "conv3_1", 5, "best")


# --- the figure script ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_figures_script_on_the_demo_collection(tmp_path, capsys):
    code = main(["figures", "--weights", "random", "--layers", "conv2_2,relu4_1", "--features", "2", "--k", "4",
                 "--limit", "20", "--crop", "64", "--out", str(tmp_path), "--quiet", "--only", "top9"])
    out = capsys.readouterr().out
    assert code == 0, out
    for layer in ("conv2_2", "relu4_1"):
        png = tmp_path / f"top4_vgg16_{layer}.png"
        meta = json.loads(png.with_name(png.name + ".json").read_text())
        assert Image.open(png).size[0] > 400 and len(meta["features"]) == 2
        assert all(len(f["tiles"]) == 4 for f in meta["features"])
        # the 20 items are crops of 16 scenes: every feature's tiles come from different ones
        for f in meta["features"]:
            sources = [t["source"] for t in f["tiles"]]
            assert len(set(sources)) == 4 and all(t["label"].startswith(t["source"]) for t in f["tiles"])
    assert "timings:" in out and "scan" in out and "wrote" in out
    # a rerun reuses the finished scan
    code = main(["figures", "--weights", "random", "--layers", "conv2_2,relu4_1", "--features", "2", "--k", "4",
                 "--limit", "20", "--crop", "64", "--out", str(tmp_path), "--quiet", "--only", "top9"])
    out = capsys.readouterr().out
    assert code == 0 and "conv2_2, relu4_1 read from the scan cache" in out, out


@pytest.mark.parametrize("args, message", [
    (["--layers", "conv9_9"], "unknown layer 'conv9_9'"),
    (["--k", "0"], "--k 0 must be at least 1"),
    (["--data", "/nonexistent/folder"], "--data '/nonexistent/folder' is not a folder"),
    (["--only", "top10"], "unknown figure kind top10"),
])
def test_figures_script_errors(args, message, tmp_path, capsys):
    code = main(["figures", "--weights", "random", "--out", str(tmp_path), "--quiet"] + args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_figures_script_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code = main(["figures", "--weights", "random", "--data", str(tmp_path / "empty"), "--out", str(tmp_path),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no" in err and "images" in err and str(tmp_path / "empty") in err


def test_rerun_after_undecodable_images_resumes(tmp_path):
    """Images found undecodable during a scan change the dataset's counts, not the scan's identity."""
    import numpy as np

    from deconvnet.data import ImageFolder

    net = dn.load_vgg("vgg11", "random", seed=3)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    good = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(good[: len(good) // 2])  # header fine, pixels truncated
    ds = ImageFolder(tmp_path, preprocessing=net.preprocessing, resize=32, crop=32)
    ckpt = tmp_path / "scan.ckpt"
    with pytest.warns(UserWarning, match="1"):
        first = scan_top_k(net, ds, ["conv2_1"], k=2, batch_size=2, checkpoint=ckpt, progress=False)
    again = scan_top_k(net, ds, ["conv2_1"], k=2, batch_size=2, checkpoint=ckpt, progress=False)
    assert torch.equal(first.images["conv2_1"], again.images["conv2_1"])
    assert 1 not in first.images["conv2_1"].unique().tolist()


def test_checkpoint_every_must_be_positive(small):
    net, ds = small
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        scan_top_k(net, ds, ["conv2_1"], checkpoint_every=0)


def test_numpy_integer_channel(vgg16):
    import numpy as np

    x = images((1, 3, 32, 32), seed=40)
    a = dn.Deconvnet(vgg16).project(x, "conv3_1", np.int64(5))
    b = dn.Deconvnet(vgg16).project(x, "conv3_1", 5)
    assert torch.equal(a.projection, b.projection) and int(a.channel[0]) == 5


@pytest.mark.parametrize("device, message", [("cud", "is not a device"), ("cuda:0", "CUDA is not available")])
def test_figures_script_bad_device(device, message, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code = main(["figures", "--weights", "random", "--device", device, "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


# --- the shared scan cache --------------------------------------------------------------------------------

class Described(Tensors):
    """Tensors that describe themselves by their content (as deconvnet.data's collections do by their files and
    transform), so that the scan cache can tell one collection from another."""

    def describe(self):
        import hashlib

        return {"kind": "tensors", "n_images": len(self.x),
                "digest": hashlib.sha256(self.x.numpy().tobytes()).hexdigest()}


def assert_same_scan(a: TopK, b: TopK) -> None:
    assert a.layers == b.layers and a.k == b.k and a.per_group == b.per_group and a.map_size == b.map_size
    for layer in a.layers:
        for part in ("values", "images", "positions"):
            assert torch.equal(getattr(a, part)[layer], getattr(b, part)[layer]), (layer, part)


@pytest.mark.slow
def test_scan_cache_serves_the_same_scan_and_misses_any_other(small, tmp_path):
    import copy

    net, ds = small
    ds = Described(ds.x)
    unread = Described(ds.x,
                       fail_at=0)  # reading any item is a KeyboardInterrupt: a scan served from the cache reads none
    cache = tmp_path / "cache"
    layers = ["conv2_1", "pool3"]
    first = scan_top_k(net, ds, layers, k=4, batch_size=5, progress=False, cache=cache)
    assert first.provenance["cache"] == {"found": [], "scanned": layers}
    assert len(list(cache.glob("topk-*.pt"))) == 2 and not list(cache.glob("partial-*.pt"))  # one entry per layer
    plain = scan_top_k(net, ds, layers, k=4, batch_size=5, progress=False)
    assert_same_scan(first, plain)

    again = scan_top_k(net, unread, layers, k=4, batch_size=3, progress=False, cache=cache)
    assert again.provenance["cache"]["found"] == layers and again.provenance["cache"]["scanned"] == []
    assert_same_scan(again, plain)
    # some of the layers, and a smaller k: the same entries serve them, equal to scanning anew
    sub = scan_top_k(net, unread, ["pool3"], k=2, progress=False, cache=cache)
    assert_same_scan(sub, scan_top_k(net, ds, ["pool3"], k=2, progress=False))
    # a layer more: only that one is scanned
    more = scan_top_k(net, ds, ["conv2_1", "conv3_1"], k=4, progress=False, cache=cache)
    assert more.provenance["cache"]["found"] == ["conv2_1"] and more.provenance["cache"]["scanned"] == ["conv3_1"]
    assert_same_scan(more, scan_top_k(net, ds, ["conv2_1", "conv3_1"], k=4, progress=False))

    # anything else is another scan: a larger k, another per-group limit, other images, other weights (the same
    # provenance, a weight changed in place)
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed.layers["conv1_1"].weight[0, 0, 0, 0] += 1.0
    misses = [dict(net=net, data=unread, k=5, per_group=1), dict(net=net, data=unread, k=4, per_group=None),
              dict(net=net, data=Described(ds.x.flip(0), fail_at=0), k=4, per_group=1),
              dict(net=changed, data=unread, k=4, per_group=1)]
    assert changed.provenance == net.provenance
    for miss in misses:
        with pytest.raises(KeyboardInterrupt):
            scan_top_k(miss["net"], miss["data"], ["pool3"], k=miss["k"], per_group=miss["per_group"], progress=False,
                       cache=cache)
    # a larger k replaces the entry, which then serves both
    scan_top_k(net, ds, ["pool3"], k=6, progress=False, cache=cache)
    assert_same_scan(scan_top_k(net, unread, ["pool3"], k=4, progress=False, cache=cache), plain.select(["pool3"]))


def test_scan_cache_folder_and_unidentifiable_datasets(small, tmp_path, monkeypatch):
    from deconvnet.cache import default_cache_dir, scan_cache_dir

    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path / "shared"))
    assert scan_cache_dir(True) == tmp_path / "shared" / "scans" and scan_cache_dir(False) is None
    monkeypatch.delenv("DECONVNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "deconvnet"
    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path / "shared"))

    net, ds = small

    class Anonymous(Dataset):  # no describe(): nothing tells its images from others of the same length
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    with pytest.warns(UserWarning, match="not cached"):
        topk = scan_top_k(net, Anonymous(), ["conv2_1"], k=2, progress=False, cache=True)
    assert "cache" not in topk.provenance and not (tmp_path / "shared").exists()
    scan_top_k(net, Described(ds.x), ["conv2_1"], k=2, progress=False, cache=True)
    assert len(list((tmp_path / "shared" / "scans").glob("topk-*.pt"))) == 1


@pytest.mark.slow
def test_the_figure_scripts_scan_serves_a_notebook(tmp_path, capsys):
    """The figure script and a notebook scanning the same collection with the same model: the second reads it."""
    from deconvnet.data import Head, demo_collection

    args = ["figures", "--weights", "random", "--layers", "conv2_2,relu4_1", "--features", "1", "--k", "3",
            "--limit", "12", "--crop", "48", "--out", str(tmp_path / "figs"), "--quiet", "--only", "top9"]
    assert main(args) == 0
    assert "conv2_2, relu4_1 stored in the scan cache" in capsys.readouterr().out
    net = dn.load_model("vgg16", "random", seed=0)  # what the script loaded, loaded again
    data = Head(demo_collection(preprocessing=net.preprocessing, size=48), 12)

    class Unread(Head):
        def __getitem__(self, i):
            raise AssertionError("an item was read: the scan was not served from the cache")

    served = scan_top_k(net, Unread(demo_collection(preprocessing=net.preprocessing, size=48), 12), ["relu4_1"], k=3,
                        progress=False, cache=True)
    assert served.provenance["cache"] == {"found": ["relu4_1"], "scanned": []}
    assert_same_scan(served, scan_top_k(net, data, ["relu4_1"], k=3, progress=False))


def test_changed_image_is_not_taken_for_the_finished_scan(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    root = photo_folder(tmp_path / "imgs")
    ckpt = tmp_path / "scan.ckpt"
    scan_top_k(net, ImageFolder(root, preprocessing=net.preprocessing, resize=32, crop=32), ["conv2_1"], k=2,
               checkpoint=ckpt, progress=False)
    Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(root / "2.png")  # same name, other content
    changed = ImageFolder(root, preprocessing=net.preprocessing, resize=32, crop=32)
    with pytest.raises(ValueError,
                       match=r"the images' files \(a file was added, removed or changed.*delete '.*scan\.ckpt'"):
        scan_top_k(net, changed, ["conv2_1"], k=2, checkpoint=ckpt, progress=False)
    with pytest.warns(StaleScanWarning, match="scanning again"):
        redone = scan_top_k(net, changed, ["conv2_1"], k=2, checkpoint=ckpt, progress=False, restart_stale=True)
    fresh = scan_top_k(net, changed, ["conv2_1"], k=2, progress=False)
    assert torch.equal(redone.images["conv2_1"], fresh.images["conv2_1"])
    assert torch.equal(redone.values["conv2_1"], fresh.values["conv2_1"])


def test_sigterm_during_a_scan_saves_the_checkpoint(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    x = images((10, 3, 32, 32), seed=8)
    full = scan_top_k(net, CallingBack(x), ["conv3_1"], k=3, batch_size=2, progress=False)
    sent = []

    def terminate_once(i):
        if i == 6 and not sent:
            sent.append(i)
            os.kill(os.getpid(), signal.SIGTERM)

    ckpt = tmp_path / "scan.ckpt"
    with pytest.raises(Terminated) as info:
        scan_top_k(net, CallingBack(x, terminate_once), ["conv3_1"], k=3, batch_size=2, checkpoint=ckpt,
                   checkpoint_every=100, progress=False)
    assert info.value.saved and ckpt.is_file()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is the caller's again
    saved = torch.load(ckpt, weights_only=True)
    assert saved["next_index"] == 6  # three whole batches
    resumed = scan_top_k(net, CallingBack(x), ["conv3_1"], k=3, batch_size=2, checkpoint=ckpt, progress=False)
    assert torch.equal(resumed.images["conv3_1"], full.images["conv3_1"])
    assert torch.equal(resumed.values["conv3_1"], full.values["conv3_1"])


def test_resumed_scan_counts_undecodable_images(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    root = photo_folder(tmp_path / "imgs", n=6)
    good = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(good[: len(good) // 2])  # header fine, pixels truncated

    class Interrupted(ImageFolder):
        fired = False

        def __getitem__(self, i):
            if i == 4 and not Interrupted.fired:
                Interrupted.fired = True
                raise KeyboardInterrupt
            return super().__getitem__(i)

    ckpt = tmp_path / "scan.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            scan_top_k(net, Interrupted(root, preprocessing=net.preprocessing, resize=32, crop=32), ["conv2_1"], k=2,
                       batch_size=2, checkpoint=ckpt, progress=False)
        resumed = scan_top_k(net, Interrupted(root, preprocessing=net.preprocessing, resize=32, crop=32), ["conv2_1"],
                             k=2, batch_size=2, checkpoint=ckpt, progress=False)
    final = resumed.provenance["dataset_final"]
    assert (final["n_images"], final["n_skipped"]) == (5, 1) and final["skipped"] == ["1.png"]


def test_malformed_checkpoint_is_one_clear_error(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    ds = CallingBack(images((4, 3, 32, 32), seed=10))
    ckpt = tmp_path / "scan.ckpt"
    scan_top_k(net, ds, ["conv2_1"], k=2, checkpoint=ckpt, progress=False)
    good = torch.load(ckpt, weights_only=True)
    for broken in ({**good, "state": {"values": {}}},
                   {**good, "next_index": 99},
                   {**good, "state": {**good["state"], "images": {"conv2_1": torch.zeros(3, 2, dtype=torch.long)}}}):
        torch.save(broken, ckpt)
        with pytest.raises(ValueError, match=r"scan checkpoint '.*' is malformed .* Hint: delete it"):
            scan_top_k(net, ds, ["conv2_1"], k=2, checkpoint=ckpt, progress=False)
