"""Receptive fields of graphs from the geometry of the ops the forward calls, against the measurement.

The reference is ``measured_receptive_field`` (the support of a unit's gradient with ReLUs passing everything
and max-pools averaging, on strips long enough) and, at a given input size, the support measured there.
"""

import time

import pytest
import torch
from torch import nn

import deconvnet as dn
from deconvnet.engine import receptive_field
from deconvnet.engine.measure import measure_boxes
from deconvnet.engine.receptive import graph_receptive_field, measured_receptive_field

from conftest import images


class Inceptionish(nn.Module):
    """Branches of different kernels, paddings, dilations and strides meeting in cat and add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, (3, 5), stride=2, padding=(1, 2)), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, ceil_mode=True))
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Sequential(nn.Conv2d(6, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(6, 4, 1))
        self.d = nn.Conv2d(6, 12, (1, 7), padding=(0, 3))
        self.down = nn.Sequential(nn.Conv2d(12, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, dilation=1))
        self.skip = nn.Conv2d(12, 8, 1, stride=4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x), self.c(x)], 1) + self.d(x)
        return torch.relu(self.down(x)) + self.skip(x)[..., : (x.shape[-2] + 3) // 4, : (x.shape[-1] + 3) // 4]


def test_inception_like_graph_equals_the_measurement():
    torch.manual_seed(0)
    net = dn.wrap(Inceptionish())
    for layer in ("stem", "a", "b", "c", "d", "down"):
        assert graph_receptive_field(net, layer) == measured_receptive_field(net, layer), layer


@pytest.mark.slow
@pytest.mark.parametrize("arch, layers", [
    ("resnet18", ["layer1", "layer2", "layer3", "layer4", "layer2.0.conv1", "maxpool"]),
    ("resnet50", ["layer1", "layer2.0", "layer3"]),
    ("googlenet", ["inception3a", "maxpool3", "inception4b"]),
    ("densenet121", ["features.denseblock1", "features.transition2"]),
])
def test_graph_fields_equal_the_measurement(arch, layers):
    net = dn.load_model(arch, weights="random")
    for layer in layers:
        geo = graph_receptive_field(net, layer)
        assert geo == measured_receptive_field(net, layer), layer
        assert receptive_field(net, layer) == geo


def test_graph_field_costs_about_one_forward():
    net = dn.load_model("resnet18", weights="random")
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        net.model(x)
        t = time.perf_counter()
        net.model(x)
        plain = time.perf_counter() - t
    t = time.perf_counter()
    graph_receptive_field(net, "layer4")
    assert time.perf_counter() - t <= 3 * plain + 0.05  # the aim: the first box within 3 plain forwards


class MidAdaptive(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1), pool, nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.pool(torch.relu(self.conv1(x)))))


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(16), nn.AdaptiveMaxPool2d(16)])
def test_adaptive_pool_mid_network_is_refused_for_windows_and_exact_at_its_size(pool):
    torch.manual_seed(1)
    net = dn.wrap(MidAdaptive(pool))
    d = dn.Deconvnet(net)
    x = images((1, 3, 128, 128), seed=2)
    with pytest.raises(ValueError,
                       match=r"depends on the input.s size \(adaptive_\w+ in module .pool. pools \d+x\d+ "
                             r"to 16x16") as err:
        d.project_units(x, "conv2", torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([[5, 7], [8, 8]]))
    assert "\n" not in str(err.value)
    rf = receptive_field(net, "conv2", (128, 128))  # at the real size: the windows are 4x4
    (box, nxt), (h, w) = measure_boxes(net.model, net.layers["conv2"], (128, 128))
    r, c = (h - 1) // 2, (w - 1) // 2
    assert rf.box(r, c, (128, 128)) == box and rf.box(r + 1, c + 1, (128, 128)) == nxt
    with pytest.raises(ValueError, match="more than one size"):  # 40 px: 20x20 -> 16x16, windows of 1 and 2
        receptive_field(net, "conv2", (40, 40))


def test_upsampling_mid_network_is_refused_in_one_line():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(4, 2, 3))
    net = dn.wrap(nn.ModuleDict({"m": model}) and _Call(model))
    with pytest.raises(ValueError, match="upsamples the map") as err:
        receptive_field(net, "m.3")
    assert "\n" not in str(err.value)
    x = images((1, 3, 64, 64), seed=3)
    with pytest.raises(ValueError, match="upsamples the map"):
        dn.Deconvnet(net).project_units(x, "m.3", torch.tensor([0]), torch.tensor([0]), torch.tensor([[4, 4]]))


class _Call(nn.Module):
    """A graph (not a Sequential) around a Sequential."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)
