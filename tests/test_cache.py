"""The scan cache (deconvnet.cache): its key, the memoised file hashes, and a cache that cannot be written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import deconvnet as dn

from conftest import _photo, _small_net


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

    from deconvnet import passes as passes_module
    from deconvnet import scan as scan_module
    from deconvnet.cache import CacheWriteWarning, ScanCache
    from deconvnet.cli import main
    from deconvnet.data import demo_collection
    from deconvnet.scan import scan_top_k

    net = _small_net()
    data = demo_collection(preprocessing=net.preprocessing, size=32, n=6)
    forwards = []
    record = passes_module.record  # the scan's forwards run in its pass
    monkeypatch.setattr(passes_module, "record", lambda *a, **k: forwards.append(1) or record(*a, **k))
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
    monkeypatch.setattr(scan_module.TopK, "save", lambda self,
                        path: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.warns(CacheWriteWarning, match="the scan is returned, not cached"):
        topk = scan_top_k(net, data, ["1"], k=2, cache=tmp_path / "ok", progress=False)
    assert torch.equal(topk.values["1"], scan_top_k(net, data, ["1"], k=2, cache=False, progress=False).values["1"])
    # the command line: one line, exit 2, before the scan; --no-cache runs without it
    monkeypatch.undo()
    monkeypatch.setenv("DECONVNET_CACHE", str(a_file))
    args = ["figures", "--weights", "random", "--arch", "vgg11", "--only", "top9", "--layers", "conv1_1", "--limit",
            "4",
            "--k", "2", "--features", "1", "--crop", "32", "--quiet", "--out", str(tmp_path / "figs")]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file, not a folder" in err[0] and "--no-cache" in err[0]
    assert main(args + ["--no-cache"]) == 0
    assert "scan cache" not in capsys.readouterr().out
