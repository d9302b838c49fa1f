"""A user's own model by import path (``deconvnet.models.user``), from Python and from the command line, and a
user's own folder of images for every command."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import deconvnet as dn
from deconvnet.cli import main
from deconvnet.models import WeightsError, load_model, load_user_model

from conftest import RefDeconvReLU, assert_exact, images, reference, small_convnet

MODULE = '''
import torch
from torch import nn
import torch.nn.functional as F


class TinyResNet(nn.Module):
    """Functional ReLUs and a residual add, as a user writes them."""

    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.stage2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.pool(F.relu(self.block(x)) + x)
        x = F.relu(self.stage2(x))
        return self.head(x.mean((2, 3)))


def tiny(width=8):
    return TinyResNet(width=width)
'''


@pytest.fixture()
def user(tmp_path, monkeypatch):
    """A working directory with a package of the user's (mypkg/models.py), its state_dict, and 6 images."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delitem(__import__("sys").modules, "mypkg", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "mypkg.models", raising=False)
    net = load_user_model("mypkg.models:TinyResNet", seed=3)
    weights = tmp_path / "tinyresnet.pt"
    torch.save(net.model.state_dict(), weights)
    rng = np.random.default_rng(0)
    for i in range(6):
        folder = tmp_path / "photos" / ("a" if i < 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path, weights, net


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_import_path_with_its_state_dict_gives_those_weights_and_their_provenance(user):
    folder, weights, saved = user
    net = load_model("mypkg.models:TinyResNet", weights)
    for (name, a), b in zip(net.model.state_dict().items(), saved.model.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert net.provenance["sha256"] == digest and net.provenance["file"] == "tinyresnet.pt"
    assert "tinyresnet.pt" in net.describe() and digest[:12] in net.describe()
    assert dn.preprocessing.TORCHVISION.name in net.describe()  # the preprocessing in use, said
    # a factory with keyword arguments, and a preprocessing of one's own
    other = load_user_model("mypkg.models:tiny", kwargs={"width": 4}, preprocessing="RGB:0.5,0.5,0.5:0.25,0.25,0.25")
    assert other.model.stem.out_channels == 4 and other.preprocessing.mean == (0.5, 0.5, 0.5)
    assert "mean (0.5, 0.5, 0.5)" in other.describe()


def test_a_state_dict_that_does_not_fit_is_one_whole_line(user):
    folder, weights, _ = user
    with pytest.raises(WeightsError) as err:
        load_user_model("mypkg.models:TinyResNet", weights, kwargs={"width": 4})
    text = str(err.value)
    assert "\n" not in text and text.endswith("built with the same --arch-kwargs")
    assert "stem.weight (8, 3, 3, 3) vs (4, 3, 3, 3)" in text and "and " in text  # named, then counted
    torch.save({"stem.weight": torch.zeros(8, 3, 3, 3), "extra.bias": torch.zeros(2)}, folder / "partial.pt")
    with pytest.raises(WeightsError, match=r"missing key\(s\) \(stem.bias, block.weight, block.bias and 4 more\); "
                                           r"1 unexpected key\(s\) \(extra.bias\)"):
        load_user_model("mypkg.models:TinyResNet", folder / "partial.pt")


@pytest.mark.parametrize("spec, message", [
    ("mypkg.models:Nope",
     "'mypkg.models' has no attribute 'Nope' (for 'mypkg.models:Nope'). Hint: it defines TinyResNet, tiny"),
    ("nosuch.models:X", "cannot import 'nosuch.models' for 'nosuch.models:X': no module named 'nosuch'"),
    ("mypkg.models:torch", "is a module, not an nn.Module class"),
])
def test_an_import_path_that_does_not_resolve_says_why(user, spec, message):
    with pytest.raises(ValueError) as err:
        load_model(spec)
    assert message in str(err.value)


def test_an_unknown_arch_names_the_import_path_form(capsys):
    with pytest.raises(ValueError, match="your own model by import path, module.path:ClassName"):
        load_model("TinyResNet")
    code, _, err = run(["project", "astronaut", "--arch", "TinyResNet", "--out", "x.png"], capsys)
    assert code == 2 and "--arch module.path:ClassName" in err and "--weights FILE" in err


def test_cli_figures_atlas_and_project_on_a_user_module_keep_its_provenance(user, capsys):
    """The user's module by import path with its state_dict: project, the Figure 2 grid (its sidecar names
    the weights file and its sha256) and the atlas (its index page says the file and the digest)."""
    folder, weights, _ = user
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = ["--arch", "mypkg.models:TinyResNet", "--weights", str(weights)]
    code, out, err = run(["project", "chelsea", *model, "--layer", "stage2", "--size", "48", "--out", "p.png"], capsys)
    assert code == 0, err
    assert "tinyresnet.pt" in out and (folder / "p.png").is_file()
    small = ["--data", "photos", "--resize", "40", "--crop", "32", "--k", "2", "--features", "2", "--quiet"]
    code, out, err = run(["figures", *model, *small, "--only", "top9", "--layers", "block,stage2", "--out", "figs"],
                         capsys)
    assert code == 0, err
    sidecar = json.loads((folder / "figs" / "top2_TinyResNet_stage2.png.json").read_text())
    provenance = sidecar["provenance"]["model"]
    assert provenance["file"] == "tinyresnet.pt" and provenance["sha256"] == digest
    assert provenance["preprocessing"] == dn.preprocessing.TORCHVISION.name
    assert sidecar["provenance"]["weights"] == load_model("mypkg.models:TinyResNet", weights).describe()
    code, out, err = run(["atlas", *model, *small[:-3], "--k", "2", "--features", "2", "--layers", "stage2",
                          "--out", "atlas", "--quiet"], capsys)
    assert code == 0, err
    index = (folder / "atlas" / "index.html").read_text()
    assert "tinyresnet.pt" in index and digest in index and "none (built in code)" not in index


def test_cli_user_module_refusals_before_anything_loads(user, capsys):
    folder, weights, _ = user
    (folder / "empty").mkdir()
    cases = [
        (["figures", "--arch", "mypkg.models:TinyResNet", "--layers", "nope", "--out", "f"], "nope"),
        (["figures", "--arch", "vgg16", "--arch-kwargs", '{"width": 4}', "--weights", "random", "--out", "f"],
         "--arch-kwargs is for a model given by import path"),
        (["figures", "--arch", "mypkg.models:tiny", "--arch-kwargs", "[4]", "--out", "f"],
         "is a JSON list, not an object"),
        (["figures", "--arch", "mypkg.models:TinyResNet", "--weights", "imagenet", "--out", "f"],
         "weights 'imagenet' are for the built-in archs"),
        (["figures", "--weights", "random", "--data", "empty", "--out", "f"], "--data 'empty' holds no images"),
        (["project", "chelsea", "--layers", "conv5_3", "--out", "x.png"], "--layers: did you mean --layer?"),
    ]
    for args, message in cases:
        code, _, err = run(args, capsys)
        lines = [line for line in err.splitlines() if not line.startswith("warning:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)


def test_the_analyses_run_on_a_users_folder(user, capsys):
    """methods, sanity, invariance and occlusion on the user's own images (--data), and from Python; on a
    model of two stages the method comparison shows two different targets."""
    from deconvnet.analysis import FigureSettings, make_figures

    folder, weights, _ = user
    code, out, err = run(["figures", "--arch", "mypkg.models:TinyResNet", "--weights", str(weights), "--data", "photos",
                          "--only", "methods,invariance,occlusion", "--quick", "--quiet", "--out", "an"], capsys)
    assert code == 0, err
    methods = json.loads((folder / "an" / "methods.json").read_text())
    assert methods["images"] == ["a/0.png", "a/1.png"]  # the folder's first images, by path
    targets = [r["target"] for r in methods["rows"] if r["image"] == "a/0.png"]
    assert len(set(targets)) == len(targets), targets
    assert "a/0.png" in (folder / "an" / "occlusion.json").read_text()
    assert json.loads((folder / "an" / "invariance.json").read_text())["images"] == ["a/0.png", "a/1.png"]
    s = FigureSettings.quick().on_folder(folder / "photos")
    assert s.images == ("a/0.png", "a/1.png") and s.paths(s.images)[0] == str(folder / "photos" / "a" / "0.png")
    net = load_model("mypkg.models:TinyResNet", weights)
    paths = make_figures(folder / "py", net, quick=True, only=["methods"], progress=False, data=folder / "photos")
    assert json.loads(paths[1].read_text())["rows"] == methods["rows"]  # the same numbers as the command's










class CifarNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial network: 32x32 inputs only (``Linear(400, 120)`` after two pools)."""

    def __init__(self, relu=F.relu):
        super().__init__()
        self.relu = relu
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)




class Graphed(nn.Module):
    """The same layers called from a forward (a graph, not a chain)."""

    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq[4](self.seq[3](self.seq[2](F.relu(self.seq[0](x)))))


def test_a_fixed_size_model_is_projected_at_its_own_size():
    torch.manual_seed(0)
    model = CifarNet().double().eval()
    x = images((2, 3, 32, 32), seed=1).double()
    deconv = dn.Deconvnet(model)
    for layer in ("fc1", "conv2", "fc3"):
        p = deconv.project(x, layer, "max")
        act = dict(model.named_modules())[layer]
        out = {}
        h = act.register_forward_hook(lambda m, i,
                                      o: out.setdefault("y", o.detach()))  # noqa: B023 (used in this iteration)
        model(x)
        h.remove()
        seed = torch.zeros_like(out["y"])
        for b in range(2):
            c = int(p.channel[b])
            if seed.dim() == 4:
                r, q = (int(v) for v in p.position[b])
                seed[b, c, r, q] = out["y"][b, c, r, q]
            else:
                seed[b, c] = out["y"][b, c]
        ref_model = CifarNet(relu=RefDeconvReLU.apply).double().eval()
        ref_model.load_state_dict(model.state_dict())
        assert_exact(p.projection, reference(ref_model, x, dict(ref_model.named_modules())[layer], seed), layer)
    assert deconv.spatial_layers() == ["conv1", "pool", "conv2"]  # probed at 32x32, which the model takes
    assert dn.wrap(model).output_shapes()["fc1"] == (1, 120)


@pytest.mark.parametrize("channels", [1, 4])
def test_models_of_one_or_four_channels_are_projected_exactly(channels, tmp_path):
    import matplotlib.pyplot as plt

    seq = small_convnet(channels)
    x = images((2, channels, 24, 24), seed=4).double()
    chain, graphed = dn.Deconvnet(seq), dn.Deconvnet(Graphed(seq))
    assert chain.engine == "chain" and graphed.engine == "graph"
    p_chain, p_graph = chain.project(x, "3", 2), graphed.project(x, "seq.3", 2)
    seed = torch.zeros(2, 8, 10, 10, dtype=torch.float64)
    out = seq[:4](x).detach()
    for b in range(2):
        r, c = (int(v) for v in p_chain.position[b])
        seed[b, 2, r, c] = out[b, 2, r, c]
    ref = reference(seq, x, seq[3], seed)
    assert p_chain.projection.shape == (2, channels, 24, 24)
    assert_exact(p_chain.projection, ref, "chain")
    assert_exact(p_graph.projection, ref, "graph")
    fig = dn.show(p_graph)  # a 1-channel projection in gray; other channel counts summed, and said so
    footer = fig.get_supxlabel() if hasattr(fig, "get_supxlabel") else fig._supxlabel.get_text()
    assert ("grayscale model" in footer) if channels == 1 else ("4-channel model" in footer and "sum" in footer)
    fig.savefig(tmp_path / f"show_{channels}.png")
    plt.close(fig)
