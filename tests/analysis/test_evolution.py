"""Feature evolution (Fig. 4): scans of checkpoints agree where the weights agree, differ where they differ, and
equal a brute-force maximum; the demo training is seeded and reused; the command line."""

import json

import pytest
import torch

from deconvnet.analysis.evolution import demo_cnn, evolution, jaccard, load_checkpoint, train_demo, write_evolution
from deconvnet.cli import main
from deconvnet.data import demo_collection
from deconvnet.preprocessing import TORCHVISION

SIZE = 32


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A, an identical copy of A, and B: A with conv2 (and above) changed, conv1 untouched."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    a = demo_cnn(classes=4, width=4, size=SIZE)
    torch.save(a.state_dict(), folder / "a.pt")
    torch.save(a.state_dict(), folder / "a_copy.pt")
    state = {k: v.clone() for k, v in a.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    state["conv2.weight"] = torch.randn(state["conv2.weight"].shape, generator=g) * 0.3
    torch.save(state, folder / "b.pt")
    return [folder / "a.pt", folder / "a_copy.pt", folder / "b.pt"]


@pytest.fixture(scope="module")
def dataset():
    return demo_collection(preprocessing=TORCHVISION, size=SIZE, n=34)


@pytest.fixture(scope="module")
def result(checkpoints, dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("scans")
    return evolution(checkpoints, dataset, ["relu1", "relu2"], 2, arch="democnn", k=3, cache=cache,
                     progress=False), cache


def test_identical_weights_give_identical_top_k_and_different_weights_different(result):
    r, _ = result
    a, a2, b = r.topk
    for layer in ("relu1", "relu2"):
        assert torch.equal(a.values[layer], a2.values[layer]) and torch.equal(a.images[layer], a2.images[layer])
        assert torch.equal(a.positions[layer], a2.positions[layer])
        assert r.overlap[layer][0] == 1.0 and jaccard(a, a2, layer).min() == 1.0
    # conv1 is the same in B: relu1 cannot change; conv2 is not: relu2's top-k sets change
    assert torch.equal(a.values["relu1"], b.values["relu1"]) and r.overlap["relu1"][1] == 1.0
    assert not torch.equal(a.values["relu2"], b.values["relu2"]) and r.overlap["relu2"][1] < 0.5
    for layer in ("relu1", "relu2"):
        for j in range(len(r.channels[layer])):
            t0, t1 = r.tiles[layer][0][j], r.tiles[layer][1][j]
            assert torch.equal(t0.projections, t1.projections) and torch.equal(t0.patches, t1.patches)
    assert r.digests[0] == r.digests[1] != r.digests[2]


def test_top1_is_the_brute_force_maximum_over_the_dataset(result, checkpoints, dataset):
    r, _ = result
    net = load_checkpoint(checkpoints[2], "democnn")
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        maps = net.model[:5](x)  # conv1 relu1 pool1 conv2 relu2
    best = maps.amax(dim=(2, 3))  # (N, C)
    for c in r.channels["relu2"]:
        value, image = best[:, c].max(0)
        assert r.topk[2].values["relu2"][c, 0].item() == pytest.approx(value.item(), rel=1e-6)
        tile = r.tiles["relu2"][2][r.channels["relu2"].index(c)]
        assert tile is not None and tile.values[0].item() == pytest.approx(value.item(), rel=1e-5)


def test_scans_are_cached_and_reused(result, checkpoints, dataset):
    r, cache = result
    files = sorted(cache.glob("scan-*.pt"))
    assert len(files) == 3  # one per checkpoint label (the copy has its own label)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = evolution(checkpoints, dataset, ["relu1", "relu2"], r.channels, arch="democnn", k=3, cache=cache,
                      progress=False)
    for t0, t1 in zip(r.topk, again.topk, strict=False):
        assert torch.equal(t0.values["relu2"], t1.values["relu2"])
    assert [f.stat().st_mtime_ns for f in files] == stamps or len(list(cache.glob("scan-*.pt"))) == 3


def test_sidecar_has_every_value(result, tmp_path):
    r, _ = result
    png, sidecar = write_evolution(r, tmp_path / "evo.png")
    meta = json.loads(sidecar.read_text())
    assert png.stat().st_size > 1000 and meta["checkpoints"] == ["a", "a_copy", "b"]
    assert meta["overlap"]["relu1"] == [1.0, 1.0]
    f = meta["features"][0]
    assert f["checkpoints"][0]["top1"]["activation"] == pytest.approx(float(r.tiles[f["layer"]][0][0].values[0]))
    assert len(f["checkpoints"][0]["topk"]) == 3


def test_bad_arguments_are_one_clear_error(checkpoints, dataset):
    with pytest.raises(ValueError, match="architecture is needed"):
        evolution(checkpoints, dataset, ["relu1"], 1)
    with pytest.raises(ValueError, match="2 labels for 3 checkpoints"):
        evolution(checkpoints, dataset, ["relu1"], 1, arch="democnn", labels=["x", "y"])
    with pytest.raises(ValueError, match="out of range for relu1"):
        evolution(checkpoints[:1], dataset, ["relu1"], {"relu1": [99]}, arch="democnn", progress=False)


def test_demo_training_is_seeded_and_reused(tmp_path):
    kw = dict(epochs=(0, 1), size=SIZE, width=4, samples_per_epoch=32, batch_size=16, progress=False)
    t = train_demo(tmp_path / "a", **kw)
    assert not t.reused and [p.name for p in t.checkpoints] == ["epoch000.pt", "epoch001.pt"]
    w0, w1 = (torch.load(p, weights_only=True)["conv1.weight"] for p in t.checkpoints)
    assert not torch.equal(w0, w1) and t.weight_change["1"]["conv1"] > 0
    assert abs(float(w0.std()) - 0.01) < 0.003  # the paper's initialisation
    again = train_demo(tmp_path / "a", **kw)
    assert again.reused and again.loss == t.loss
    other = train_demo(tmp_path / "b", **kw)  # the same seed, another folder: the same weights
    assert torch.equal(torch.load(other.checkpoints[1], weights_only=True)["conv1.weight"], w1)


def test_command_line(checkpoints, tmp_path, capsys):
    out = tmp_path / "evo.png"
    code = main(["evolution", "--arch", "democnn", "--checkpoints", ",".join(map(str, checkpoints[::2])),
                 "--layers", "relu1", "--crop", str(SIZE), "--limit", "34", "--k", "2", "--features", "1", "--quiet",
                 "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert out.is_file() and json.loads((tmp_path / "evo.png.json").read_text())["checkpoints"] == ["a", "b"]
    assert "relu1: top-2 overlap with the previous checkpoint a->b 1.00" in stdout
    for args, message in ((["--checkpoints", str(checkpoints[0])], "--checkpoints needs --arch"),
                          (["--arch", "democnn", "--checkpoints", "/nonexistent.pt"],
                           "file not found: '/nonexistent.pt'")):
        code = main(["evolution", *args, "--out", str(out)])
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and message in err, err
