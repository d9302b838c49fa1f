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


# --- 1 and 11. the atlas: escaped pages, every file inside --out --------------------------------------------------
def test_atlas_pages_escape_names_and_layers_named_as_paths_stay_inside_out(tmp_path):
    from collections import OrderedDict

    from deconvnet.atlas import build_atlas
    from deconvnet.atlas.build import layer_folder
    from deconvnet.data import ImageFolder

    outside = tmp_path / "outside"
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("c1", nn.Conv2d(3, 3, 3, padding=1)), (str(outside), nn.ReLU()),
                                       ("a/b", nn.MaxPool2d(2))]))
    net = dn.wrap(model)
    net.provenance["weights"] = HOSTILE
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        _photo(i, (36, 36)).save(folder / (HOSTILE if i == 0 else f"{i}.png"))
    data = ImageFolder(folder, preprocessing=net.preprocessing, resize=32, crop=32)
    out = tmp_path / "atlas"
    build_atlas(net, data, [str(outside), "a/b"], out, k=2, progress=False)
    assert not outside.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "images"]
    written = [p.resolve() for p in out.rglob("*")]
    assert written and all(out.resolve() in p.parents for p in written)
    pages = [p.read_text() for p in out.rglob("*.html")]
    assert len(pages) == 1 + 3 + 3  # the index, a page per channel of both layers
    assert all("<img src=x" not in page for page in pages)
    assert any("&lt;img src=x onerror=alert(document.domain)&gt;.png" in page for page in pages)
    # the pages link what was written
    index = (out / "index.html").read_text()
    for layer in (str(outside), "a/b"):
        assert (out / layer_folder(layer) / "channels.json").is_file() and f'href="{layer_folder(layer)}/0.html"' in index


def test_layer_folders_are_one_plain_component():
    from deconvnet.atlas.build import layer_folder

    assert [layer_folder(n) for n in ("conv5_3", "features.28", "layer3")] == ["conv5_3", "features.28", "layer3"]
    names = ["/abs/path", "..", "../x", "a/b", "a b", ".hidden", "", "a\\b"]
    folders = [layer_folder(n) for n in names]
    assert len(set(folders)) == len(names)
    assert all("/" not in f and "\\" not in f and ".." not in f and not f.startswith(".") and f for f in folders)


# --- 10. a huge-aspect image --------------------------------------------------------------------------------------
def test_a_200000x1_png_is_not_resized_whole(tmp_path, monkeypatch):
    from deconvnet.data import ImageFolder
    from deconvnet.images import resize_center_crop

    folder = tmp_path / "images"
    folder.mkdir()
    strip = np.zeros((1, 200000, 3), np.uint8)
    strip[0, :, 0] = np.arange(200000) % 251
    Image.fromarray(strip).save(folder / "strip.png")
    _photo(1, (300, 280)).save(folder / "photo.png")
    asked: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        asked.append(tuple(size))
        if size[0] * size[1] > 10**8:
            raise MemoryError(f"asked PIL for a {size[0]}x{size[1]} resize")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    data = ImageFolder(folder, preprocessing=_small_net().preprocessing)
    x, i = data[data.paths.index(folder / "strip.png")]
    assert x is not None and x.shape == (3, 224, 224) and max(w * h for w, h in asked) <= 224 * 224 * 64
    # the window is the strip's centre, row 0 stretched over every row: the red channel is one row repeated
    red = data.rgb(data.paths.index(folder / "strip.png"))
    a = np.asarray(red)
    assert (a == a[:1]).all()
    centre = 200000 // 2  # the resized strip's centre crop covers about 0.875 source pixels around the middle
    assert abs(int(a[0, 112, 0]) - strip[0, centre, 0]) <= 2
    # an ordinary photo keeps the whole-resize path, byte for byte as before
    photo = _photo(1, (300, 280))
    full = photo.resize((256, int(256 * 300 / 280)), Image.BILINEAR)
    left, top = int(round((256 - 224) / 2)), int(round((full.height - 224) / 2))
    assert np.array_equal(np.asarray(resize_center_crop(photo, 256, 224)),
                          np.asarray(full.crop((left, top, left + 224, top + 224))))


def test_the_windowed_resize_is_the_whole_resize_within_rounding():
    from deconvnet.images import resize_center_crop

    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((9, 4000, 3)) * 255).astype(np.uint8))  # 4000:9, resized: 7111x16 > 64 crops
    windowed = np.asarray(resize_center_crop(img, 16, 8)).astype(int)
    full = img.resize((int(16 * 4000 / 9), 16), Image.BILINEAR)
    left = int(round((full.width - 8) / 2))
    whole = np.asarray(full.crop((left, 4, left + 8, 12))).astype(int)
    assert np.abs(windowed - whole).max() <= 2


# --- 12. boxes files of the wrong shape -----------------------------------------------------------------------------
_GOOD = [10, 10, 20, 20]


@pytest.mark.parametrize("second, names", [
    ([1, 2, 3, 4], "the entry of image 'b.png' is a list, not an object"),
    (None, "the entry of image 'b.png' is a NoneType, not an object"),
    ("nose", "the entry of image 'b.png' is a str, not an object"),
    ({"nose": [0, 0, int("9" * 400), 5]}, "'b.png' nose: a coordinate is larger than"),
    ({"nose": "10,10,20,20"}, "'b.png' nose: '10,10,20,20' is not a box"),
    ({"nose": None}, "'b.png' nose: None is not a box"),
    ({"nose": [[1, 2], 3, 4, 5]}, "'b.png' nose: [[1, 2], 3, 4, 5] is not a box"),
])
def test_a_boxes_file_of_the_wrong_shape_is_one_line(tmp_path, capsys, second, names):
    from deconvnet.analysis.correspondence import load_parts
    from deconvnet.cli import main

    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": {"a.png": {"nose": _GOOD}, "b.png": second}}))
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("(", r"\(")) as err:
        load_parts(path)
    assert "\n" not in str(err.value) and "Hint:" in str(err.value) and len(str(err.value)) < 300
    code = main(["correspondence", "--boxes", str(path), "--out", str(tmp_path / "c.png")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and names in lines[0]


# --- 13. seeds and channels the engine cannot take ------------------------------------------------------------------
def test_a_nan_seed_and_a_fractional_channel_are_refused():
    net = _small_net()
    deconv = dn.Deconvnet(net)
    x = torch.rand(1, 3, 16, 16)
    seed = torch.rand(1, 6, 8, 8)
    assert torch.isfinite(deconv.project_seed(x, "4", seed)).all()
    seed[0, 2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf; the first at \(0, 2, 3, 1\), nan\)"):
        deconv.project_seed(x, "4", seed)
    seed[0, 2, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="not finite"):
        deconv.project_seed(x, "4", seed)
    whole = deconv.project_units(x, "4", torch.tensor([0]), torch.tensor([1]), torch.tensor([[2, 3]]))
    same = deconv.project_units(x, "4", torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([[2.0, 3.0]]))
    assert all(torch.equal(a, b) for a, b in zip(whole, same))  # whole floats are whole numbers
    for kwargs, message in [(dict(channel=torch.tensor([1.7])), "channel 1.7 is not a whole number"),
                            (dict(channel=[1.7]), "channel 1.7 is not a whole number"),
                            (dict(unit=torch.tensor([[2.0, float("nan")]])), "unit nan is not a whole number"),
                            (dict(image=torch.tensor([True])), "image must hold integers")]:
        args = {**dict(image=torch.tensor([0]), channel=torch.tensor([1]), unit=torch.tensor([[2, 3]])), **kwargs}
        with pytest.raises(ValueError, match=message):
            deconv.project_units(x, "4", args["image"], args["channel"], args["unit"])


# --- 2. the scan cache's key ------------------------------------------------------------------------------------------
def _folder(root, seed=0, n=4):
    root.mkdir(parents=True)
    for i in range(n):
        _photo(seed + i, (36, 36)).save(root / f"{i}.png")
    return root


def test_the_cache_key_holds_the_module_tree_the_preprocessing_and_the_contents(tmp_path):
    import dataclasses
    import os

    from deconvnet.data import ImageFolder
    from deconvnet.scan import scan_top_k

    cache = tmp_path / "cache"
    net = _small_net()
    root = _folder(tmp_path / "a" / "images")
    data = ImageFolder(root, preprocessing=net.preprocessing, resize=32, crop=32)
    first = scan_top_k(net, data, ["1"], k=2, cache=cache, progress=False)
    assert first.map_size["1"] == (32, 32)
    again = scan_top_k(net, data, ["1"], k=2, cache=cache, progress=False)
    assert again.provenance["cache"]["found"] == ["1"]
    # surgery with the same state_dict: a conv's stride changed
    net.model[0].stride = (2, 2)
    net = dn.wrap(net.model)
    changed = scan_top_k(net, data, ["1"], k=2, cache=cache, progress=False)
    assert changed.provenance["cache"]["scanned"] == ["1"] and changed.map_size["1"] == (16, 16)
    net.model[0].stride = (1, 1)
    net = dn.wrap(net.model)
    # a preprocessing of the same name but another mean
    other = dataclasses.replace(net.preprocessing, mean=(0.0, 0.0, 0.0))
    assert other.name == net.preprocessing.name
    data_other = ImageFolder(root, preprocessing=other, resize=32, crop=32)
    assert scan_top_k(net, data_other, ["1"], k=2, cache=cache, progress=False).provenance["cache"]["scanned"] == ["1"]
    # an image edited in place, its size and modification time kept
    path = root / "0.png"
    st = path.stat()
    a = np.asarray(Image.open(path)).copy()
    a[..., 0] = 255 - a[..., 0]
    Image.fromarray(a).save(path)
    assert path.stat().st_size == st.st_size or True
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = ImageFolder(root, preprocessing=net.preprocessing, resize=32, crop=32)
    if path.stat().st_size == st.st_size:
        assert edited.describe()["files"] == data.describe()["files"]  # the stat cannot tell
    result = scan_top_k(net, edited, ["1"], k=2, cache=cache, progress=False)
    assert result.provenance["cache"]["scanned"] == ["1"]
    fresh = scan_top_k(net, edited, ["1"], k=2, cache=False, progress=False)
    assert torch.equal(result.values["1"], fresh.values["1"])


def test_hashing_the_files_is_memoised_by_their_stat(tmp_path, monkeypatch):
    from deconvnet import cache as cache_module

    root = _folder(tmp_path / "images")
    paths = sorted(root.iterdir())
    memo = tmp_path / "files.json"
    read = []
    digest = cache_module._file_digest
    monkeypatch.setattr(cache_module, "_file_digest", lambda p: read.append(p) or digest(p))
    one = cache_module.files_digest(paths, root, memo)
    assert len(read) == 4
    assert cache_module.files_digest(paths, root, memo) == one and len(read) == 4  # stat only
    other = _folder(tmp_path / "other" / "images", seed=10)  # same base name, same names: other bytes
    assert cache_module.files_digest(sorted(other.iterdir()), other, memo) != one


# --- 9. a cache folder that is a file or read-only; no cache --------------------------------------------------------
def test_a_cache_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    import os

    from deconvnet import scan as scan_module
    from deconvnet.cache import CacheWriteWarning, ScanCache
    from deconvnet.cli import main
    from deconvnet.data import demo_collection
    from deconvnet.scan import scan_top_k

    net = _small_net()
    data = demo_collection(preprocessing=net.preprocessing, size=32, n=6)
    forwards = []
    record = scan_module.record
    monkeypatch.setattr(scan_module, "record", lambda *a, **k: forwards.append(1) or record(*a, **k))
    a_file = tmp_path / "cache-file"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder. Hint: cache=False"):
        scan_top_k(net, data, ["1"], k=2, cache=a_file, progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="cannot be written"):
                scan_top_k(net, data, ["1"], k=2, cache=locked, progress=False)
        finally:
            locked.chmod(0o700)
    assert forwards == []  # refused before any forward
    # a write that fails after the work: a warning, and the result
    monkeypatch.setattr(ScanCache, "check", lambda self: None)
    monkeypatch.setattr(scan_module.TopK, "save", lambda self, path: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.warns(CacheWriteWarning, match="the scan is returned, not cached"):
        topk = scan_top_k(net, data, ["1"], k=2, cache=tmp_path / "ok", progress=False)
    assert torch.equal(topk.values["1"], scan_top_k(net, data, ["1"], k=2, cache=False, progress=False).values["1"])
    # the command line: one line, exit 2, before the scan; --no-cache runs without it
    monkeypatch.undo()
    monkeypatch.setenv("DECONVNET_CACHE", str(a_file))
    args = ["figures", "--weights", "random", "--arch", "vgg11", "--only", "top9", "--layers", "conv1_1", "--limit", "4",
            "--k", "2", "--features", "1", "--crop", "32", "--quiet", "--out", str(tmp_path / "figs")]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file, not a folder" in err[0] and "--no-cache" in err[0]
    assert main(args + ["--no-cache"]) == 0
    assert "scan cache" not in capsys.readouterr().out
