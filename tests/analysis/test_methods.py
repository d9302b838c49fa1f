"""The attribution methods (deconvnet.analysis.methods): a float64 re-implementation of the three ReLU
rules, Captum, and the core's own ``Deconvnet.project``."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconvnet as dn
from deconvnet.analysis import methods as meth
from deconvnet.analysis.methods import functional_relus
from deconvnet.plot import scale_for_display

from conftest import image_axes, images, no_forward_hooks, words

# --- methods: the three backward rules ------------------------------------------------------------------

def reference_rule_maps(net, x, layer, seed, rule):
    """float64, from scratch: forward through the stack keeping each ReLU's input; backward with the rule's
    ReLU step, every other module by the vector-Jacobian product of its own float64 functional form."""
    mods = [m for _, m in net.stack[: net.depth(layer) + 1]]

    def fn(m, h):
        if isinstance(m, nn.Conv2d):
            return F.conv2d(h, m.weight.double(), m.bias.double(), m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, nn.MaxPool2d):
            return F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return F.adaptive_avg_pool2d(h, m.output_size)
        if isinstance(m, nn.Linear):
            return F.linear(h.flatten(1), m.weight.double(), m.bias.double())
        if isinstance(m, nn.ReLU):
            return F.relu(h)
        return h  # dropout (eval)

    h, trail = x.double(), []
    for m in mods:
        trail.append((m, h))
        h = fn(m, h)
    r = seed.double().reshape(h.shape)
    for m, inp in reversed(trail):
        if isinstance(m, nn.ReLU):
            if rule == "gradient":
                r = r * (inp > 0)
            elif rule == "deconvnet":
                r = r * (r > 0)
            else:  # guided backprop
                r = r * (inp > 0) * (r > 0)
        else:
            inp = inp.detach().requires_grad_(True)
            (r,) = torch.autograd.grad(fn(m, inp), inp, r)
    return r


CASES = [
    ("relu2_1", "max", "max"),
    ("pool2", 3, "all"),
    ("conv2_1", "max", (2, 3)),
    ("fc8", "max", "max"),  # the top class score
    ("relu7", 5, "max"),
]


@pytest.mark.parametrize("layer,channel,position", CASES)
def test_every_method_equals_a_float64_reimplementation_of_its_rule(tiny, layer, channel, position):
    x = images((2, 3, 16, 16), seed=6)
    r = meth.compare_methods(tiny, x, dn.Target(layer, channel, position))
    seed, *_ = meth.deconvnet_seed(tiny, x, dn.Target(layer, channel, position))
    for method, rule in (("deconvnet", "deconvnet"), ("deconvolution", "deconvnet"),
                         ("guided_backprop", "guided"), ("gradient", "gradient")):
        ref = reference_rule_maps(tiny, x, layer, seed, rule).float()
        scale = ref.abs().max()
        assert scale > 0
        assert (r.maps[method] - ref).abs().max() <= 1e-5 * scale, method
    assert max(r.deconvolution_error) <= 1e-5
    assert no_forward_hooks(tiny)


@pytest.mark.parametrize("target", [
    dn.Target("relu3_2", "max", "max"),
    dn.Target("pool4", 7, "all"),
    dn.Target("conv4_3", "max", (1, 2)),
    dn.Target("fc7", "max", "max"),
], ids=lambda t: f"{t.layer}-{t.channel}-{t.position}")
def test_the_deconvnet_column_is_what_project_returns_and_captum_agrees(vgg16, target):
    x = images((2, 3, 32, 32), seed=7)
    r = meth.compare_methods(vgg16, x, target)
    p = dn.Deconvnet(vgg16).project(x, target.layer, target.channel, target.position)
    scale = p.projection.abs().max()
    assert (r.maps["deconvnet"] - p.projection).abs().max() <= 1e-5 * scale
    assert torch.equal(r.channel, p.channel) and torch.equal(r.position, p.position)
    assert torch.allclose(r.activation, p.activation)
    assert max(r.deconvolution_error) <= 1e-4  # the live cross-check with Captum's Deconvolution
    # the rules really differ: guided backprop and the gradient are not the deconvnet
    assert (r.maps["guided_backprop"] - r.maps["deconvnet"]).abs().max() > 1e-3 * scale
    assert (r.maps["gradient"] - r.maps["deconvnet"]).abs().max() > 1e-3 * scale
    assert no_forward_hooks(vgg16)


def test_a_mask_target_seeds_the_masked_map(tiny):
    x = images((1, 3, 16, 16), seed=8)
    mask = torch.zeros(8, 8)
    mask[1:3, 0:2] = torch.tensor([[1.0, 0.5], [0.25, 2.0]])
    r = meth.compare_methods(tiny, x, dn.Target("relu2_1", 2, mask))
    p = dn.Deconvnet(tiny).project(x, "relu2_1", 2, mask)
    assert torch.allclose(r.maps["deconvnet"], p.projection, atol=1e-6 * float(p.projection.abs().max()))


def test_hooks_are_removed_when_an_attribution_fails(tiny):
    x = images((1, 3, 16, 16), seed=9)
    with pytest.raises(RuntimeError):  # a seed that does not fit the layer fails inside Captum's call
        meth.captum_maps(tiny, x, "relu2_1", torch.ones(1, 3, 2, 2), methods=("guided_backprop",))
    assert no_forward_hooks(tiny)
    # the engine refuses it before any hook is placed, in one line
    with pytest.raises(ValueError, match="a seed of shape \\(1, 3, 2, 2\\) does not fit layer 'relu2_1'"):
        meth.backward_maps(tiny, x, "relu2_1", torch.ones(1, 3, 2, 2), methods=("guided_backprop",))
    assert no_forward_hooks(tiny)


def test_unknown_method_is_refused_with_a_hint(tiny):
    with pytest.raises(ValueError, match="Hint"):
        meth.backward_maps(tiny, images((1, 3, 16, 16)), "relu2_1", torch.zeros(1, 8, 8, 8), methods=("lrp",))


def test_method_figure_states_the_rules_and_the_weights(tiny):
    import matplotlib.pyplot as plt

    x = images((1, 3, 16, 16), seed=10)
    results = [meth.compare_methods(tiny, x, t) for t in (dn.Target("relu2_1"), dn.Target("fc8"))]
    fig, axes = plt.subplots(2, 4)
    assert meth.plot_method_comparison(results, tiny, axes=axes) is fig
    text = words(fig)
    assert "R_in = R_out·[R_out > 0]" in text and "[x > 0]·[R_out > 0]" in text and tiny.describe() in text
    plt.close(fig)


def test_method_figure_leaves_the_captum_column_out_and_crops_a_unit_to_its_receptive_field(tiny):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from deconvnet.engine import receptive_field

    x = images((1, 3, 16, 16), seed=10)
    unit, whole = (meth.compare_methods(tiny, x, t) for t in (dn.Target("relu2_1", "max", (0, 1)),
                                                              dn.Target("pool2", "max", "all")))
    assert "deconvolution" in unit.maps and max(unit.deconvolution_error) <= 1e-5  # computed, checked...
    fig = meth.plot_method_comparison([unit, whole], tiny)
    assert "Captum" not in words(fig)  # ...and not drawn
    assert [" ".join(a.get_title().split()) for a in fig.axes[:4]] == ["input", "deconvnet (ours)", "guided backprop",
                                                                       "gradient (saliency)"]
    assert len(image_axes(fig)) == 2 * 4
    # the unit's row: its receptive field is marked on the input and the maps are cropped to it, losing nothing
    top, left, bottom, right = receptive_field(tiny, "relu2_1").box(0, 1, (16, 16))
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 1 and (boxes[0].get_x(), boxes[0].get_y()) == (left - 0.5, top - 0.5)
    assert (boxes[0].get_width(), boxes[0].get_height()) == (right - left, bottom - top)
    for j, m in enumerate(("deconvnet", "guided_backprop", "gradient"), start=1):
        rgb = tiny.preprocessing.to_rgb_order(unit.maps[m])[0]
        outside = rgb.clone()
        outside[:, top:bottom, left:right] = 0
        assert torch.all(outside == 0), m  # a unit's map is zero outside its receptive field
        shown = fig.axes[j].images[0].get_array()
        np.testing.assert_allclose(shown, scale_for_display(rgb[:, top:bottom, left:right], "percentile"))
        assert fig.axes[4 + j].images[0].get_array().shape == (16, 16, 3)  # the whole map is not cropped
    assert not [p for p in fig.axes[4].patches if isinstance(p, Rectangle)]
    plt.close(fig)

class _Spellings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))  # a module: Captum sees it
        y = torch.relu(y) + y.clamp(min=0) + torch.clamp_min(y, 0) + nn.functional.threshold(y, 0.0, 0.0)
        return y.clamp(min=-1)  # not a rectifier


def test_functional_relus_counts_every_spelling():
    net = dn.wrap(_Spellings())
    assert functional_relus(net, torch.randn(1, 3, 8, 8)) == 4
