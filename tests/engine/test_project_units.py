"""The one engine interface on chains and graphs: project_units, project_seed, receptive fields of every
projection, default layers of graphs, and the atlas on ResNet-18 and GoogLeNet."""

import pytest
import torch

import deconvnet as dn
from deconvnet.engine import receptive_field


@pytest.fixture(scope="module")
def resnet18(resnet18_net):
    return resnet18_net


@pytest.fixture(scope="module")
def googlenet(googlenet_net):
    return googlenet_net


def _double(net):
    """A float64 copy of a net (the same weights)."""
    import copy

    return dn.wrap(copy.deepcopy(net.model).double(), preprocessing=net.preprocessing, name=net.arch)


@pytest.mark.parametrize("name, layer", [("vgg16", "conv4_2"), ("resnet18", "layer2"), ("googlenet", "inception3b")])
def test_project_units_equal_project_one_by_one(name, layer, vgg16, resnet18, googlenet):
    """Many units over a batch (several per image, in any order) equal one projection each, cut to its box."""
    net = _double({"vgg16": vgg16, "resnet18": resnet18, "googlenet": googlenet}[name])
    deconv = dn.Deconvnet(net)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    h, w = deconv.record(x, [layer]).activations[layer].shape[-2:]
    image = torch.tensor([1, 0, 1, 1, 0])
    channel = torch.tensor([3, 0, 7, 3, 5])
    unit = torch.tensor([[0, 0], [h // 2, w // 2], [h - 1, 1], [2, w - 1], [1, 2]])
    units = deconv.project_units(x, layer, image, channel, unit)
    windows, origins, values = units.windows, units.origins, units.activations
    rf = deconv.receptive_field(layer)
    assert windows.shape[-2:] == rf.size
    for k in range(len(image)):
        i = int(image[k])
        p = deconv.project(x[i : i + 1], layer, int(channel[k]), tuple(unit[k].tolist()))
        assert float(values[k]) == pytest.approx(float(p.activation[0]), rel=1e-12, abs=1e-12)
        top, left = (int(v) for v in origins[k])
        assert (top, left) == tuple(rf.box(*unit[k].tolist())[:2])
        full = torch.zeros(3, 96 + 2 * rf.size[0], 96 + 2 * rf.size[1], dtype=torch.float64)
        full[:, rf.size[0] : rf.size[0] + 96, rf.size[1] : rf.size[1] + 96] = p.projection[0]
        want = full[:, rf.size[0] + top : rf.size[0] + top + rf.size[0],
                    rf.size[1] + left : rf.size[1] + left + rf.size[1]]
        torch.testing.assert_close(windows[k], want, rtol=1e-10, atol=1e-12)
        # nothing of the projection lies outside the box (the box is the unit's whole cone)
        assert float(p.projection.abs().sum()) == pytest.approx(float(want.abs().sum()), rel=1e-10, abs=1e-12)


def test_project_seed_is_project_for_a_targets_seed(resnet18):
    net = _double(resnet18)
    deconv = dn.Deconvnet(net)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    act = deconv.record(x, ["layer3"]).activations["layer3"]
    seed = torch.zeros_like(act)
    seed[0, 4] = act[0, 4]
    torch.testing.assert_close(deconv.project_seed(x, "layer3", seed), deconv.project(x, "layer3", 4, "all").projection)
    with pytest.raises(ValueError, match="does not fit layer 'layer3'"):
        deconv.project_seed(x, "layer3", seed[:, :3])


def test_every_graph_projection_has_its_box_the_first_one_included():
    net = dn.load_model("resnet18", "random", seed=9)  # fresh: nothing measured yet
    assert not net._receptive
    x = torch.randn(1, 3, 112, 112)
    p = dn.Deconvnet(net).project(x, "layer2.1.conv1", 2, "max")
    rf = receptive_field(net, "layer2.1.conv1")
    r, c = p.position[0].tolist()
    assert p.box is not None and p.box[0].tolist() == list(rf.box(r, c))
    assert p.projection[0].abs().sum(0)[: max(rf.box(r, c)[0], 0)].sum() == 0  # nothing above the box


@pytest.mark.parametrize("name, layer", [("vgg16", "conv3_1"), ("resnet18", "layer2")])
def test_units_and_seeds_out_of_range_are_one_clear_error(name, layer, vgg16, resnet18):
    deconv = dn.Deconvnet({"vgg16": vgg16, "resnet18": resnet18}[name])
    x = torch.randn(1, 3, 64, 64)
    c, h, w = deconv.record(x, [layer]).activations[layer].shape[1:]
    for args, message in [(([0], [c], [[0, 0]]), f"channel {c} is out of range for layer '{layer}'.*0..{c - 1}"),
                          (([1], [0], [[0, 0]]), "image 1 is out of range.*images run 0..0"),
                          (([0], [0], [[h, 0]]), f"row {h} is out of range.*rows run 0..{h - 1}"),
                          (([0], [0], [[0, -1]]), "column -1 is out of range"),
                          (([0, 0], [0], [[0, 0]]), r"must be \(N,\), \(N,\) and \(N, 2\)")]:
        with pytest.raises(ValueError, match=message):
            deconv.project_units(x, layer, *args)
    with pytest.raises(ValueError, match=rf"a seed of shape \(1, 2, 3, 3\) does not fit layer '{layer}', whose output "
                                         rf"for this input is \(1, {c}, {h}, {w}\)"):
        deconv.project_seed(x, layer, torch.zeros(1, 2, 3, 3))


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + x.mean(1, keepdim=True))


def test_both_engines_keep_one_contract():
    """Chain and graph engines are one ``Engine``; each answer is a dataclass; ``engine`` names the one in use
    and cannot be set beside it."""
    from deconvnet.engine import Engine, Selection, UnitWindows

    torch.manual_seed(0)
    chain = dn.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)).double())
    graph = dn.wrap(_Residual().double())
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for net, kind, layer in ((chain, "chain", "2"), (graph, "graph", "conv")):
        deconv = dn.Deconvnet(net)
        assert isinstance(deconv._engine, Engine) and deconv.engine == kind == deconv._engine.name
        assert deconv.can_show_stages == (kind == "chain") == net.can_show_stages
        with pytest.raises(AttributeError):
            deconv.engine = "graph"
        done = deconv._engine.project(x, [dn.Target(layer)])
        assert isinstance(done.selections[0], Selection) and done.selections[0].seed().shape == \
            done.record.activations[layer].shape
        units = deconv.project_units(x, layer, torch.tensor([0, 1]), torch.tensor([1, 2]),
                                     torch.tensor([[1, 1], [2, 3]]))
        assert isinstance(units, UnitWindows) and units.windows.shape[:2] == (2, 3) and units.origins.shape == (2, 2)
    # the chain engine's own fallback (another rule: no cropped walk) answers in the same type, equal to the graph's
    guided = dn.Deconvnet(chain, rule="guided").project_units(x, "2", torch.tensor([1]), torch.tensor([3]),
                                                             torch.tensor([[2, 2]]))
    graphed = dn.Deconvnet(chain, rule="guided", engine="graph").project_units(x, "2", torch.tensor([1]),
                                                                              torch.tensor([3]), torch.tensor([[2, 2]]))
    assert isinstance(guided, UnitWindows) and torch.equal(guided.windows, graphed.windows)
