"""The analyses (deconvnet.analysis) against hand-checked cases and independent references.

Metrics: hand-worked values. Methods: a float64 re-implementation of the three ReLU rules, Captum, and the
core's own ``Deconvnet.project``. Randomisation: the parameters themselves. Occlusion: a direct loop over
occluder positions, and Captum's ``Occlusion``. Invariance: the transforms against torch's own ops and
the features against a hand-written forward.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import NeuronDeconvolution
from torch import nn

import deconvnet as dn
from deconvnet.analysis import filters as filt
from deconvnet.analysis import invariance as inv
from deconvnet.analysis import methods as meth
from deconvnet.analysis import occlusion as occ
from deconvnet.analysis import sanity as san
from deconvnet.analysis import similarity as sim
from deconvnet.models import vgg as vgg_table
from deconvnet.models._api import Net
from deconvnet.plot import scale_for_display
from deconvnet.preprocessing import CAFFE, TORCHVISION

from conftest import images, no_forward_hooks

# --- a tiny VGG-shaped model -----------------------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, 10),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_net(classifier: bool = True, seed: int = 0) -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Tiny().eval()  # the hand-written references below call it directly: no dropout
        for m in model.modules():  # non-zero biases, so that re-initialisation visibly changes them
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.bias, 0.0, 0.1)
    names = dict(vgg_table.feature_names(model.features))
    if classifier:
        names.update(vgg_table.classifier_names(model.classifier))
    net = Net(model if classifier else model.features, arch="tiny", features=model.features,
              classifier=model.classifier if classifier else None, names=names, preprocessing=TORCHVISION,
              provenance={"weights": "random", "source": "test", "seed": seed, "sha256": None})
    if classifier:
        net.provenance["categories"] = "unknown"
    return net


@pytest.fixture(scope="module")
def tiny():
    return tiny_net(True)


@pytest.fixture(scope="module")
def tiny_features():
    return tiny_net(False)


def state(net):
    return {k: v.detach().clone() for k, v in net.model.state_dict().items()}


def features_only(net: Net) -> Net:
    """The conv part of a VGG as a features-only net (the offline weights have no classifier)."""
    return Net(net.features, arch=net.arch, features=net.features, classifier=None,
               names=dict(vgg_table.feature_names(net.features)), preprocessing=net.preprocessing,
               provenance={**net.provenance, "categories": None})


def words(fig) -> str:
    """Every text of a figure, whitespace collapsed (captions are wrapped to the figure's width)."""
    from matplotlib.text import Text

    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(Text) if t.get_text().strip())


def image_axes(fig):
    """The axes that show an image (not colorbars)."""
    return [a for a in fig.axes if a.images and not hasattr(a, "_colorbar")]


# --- similarity measures: hand-checked cases -------------------------------------------------------------

def test_identical_maps_give_one_for_every_measure():
    m = images((1, 3, 32, 32), seed=3)[0]
    assert sim.compare_maps(m, m) == pytest.approx({k: 1.0 for k in sim.METRICS}, abs=1e-12)


def test_negated_map_behaves_as_each_measure_defines():
    m = images((1, 3, 32, 32), seed=4)[0]
    s = sim.compare_maps(m, -m)
    assert s["spearman"] == pytest.approx(-1.0, abs=1e-12)  # ranks reversed
    assert s["spearman_abs"] == pytest.approx(1.0, abs=1e-12)  # the absolute values are the same
    assert s["ssim"] == pytest.approx(1.0, abs=1e-12)  # computed on |map|
    assert s["hog_pearson"] == pytest.approx(1.0, abs=1e-12)  # computed on |map|


def test_spearman_hand_example():
    # ranks 1,2,3,4 vs 1,3,2,4: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[10.0, 30.0], [20.0, 40.0]])
    assert sim.spearman(a, b) == pytest.approx(0.8, abs=1e-12)
    # with absolute values: |-3| ranks last: ranks of |a'| = 1,2,4,3 vs 1,3,2,4: d = 0,1,2,1 -> 1 - 36/60
    a2 = np.array([[1.0, 2.0], [-4.0, 3.0]])
    assert sim.spearman(a2, b, absolute=True) == pytest.approx(1 - 6 * 6 / 60, abs=1e-12)


def test_channels_are_summed_before_comparing():
    rgb = torch.zeros(3, 4, 4)
    rgb[0, 0, 0], rgb[1, 0, 0], rgb[2, 3, 3] = 1.0, 2.0, -5.0
    np.testing.assert_array_equal(sim.to_2d(rgb), rgb.sum(0).double().numpy())


def test_ssim_of_a_single_window_matches_the_formula():
    # a 7x7 image has one 7x7 window: SSIM is the textbook formula with sample (co)variances
    g = np.random.default_rng(0)
    a, b = g.random((7, 7)), g.random((7, 7))
    a, b = a / a.max(), b / b.max()  # already what ssim() normalises to
    mx, my = a.mean(), b.mean()
    vx, vy = a.var(ddof=1), b.var(ddof=1)
    cxy = ((a - mx) * (b - my)).sum() / 48
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert sim.ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_hog_of_vertical_vs_horizontal_stripes():
    # vertical stripes, period = cell size: every cell puts all of its energy in one orientation bin, the
    # transposed image in another. Two vectors, each with k equal non-zero entries out of N, never in the
    # same place, have Pearson correlation -k / (N - k); here k = N / 9 (one bin of 9): -1/8.
    x = np.zeros((32, 32))
    x[:, ::8] = 1
    x[:, 1::8] = 1
    assert sim.hog_pearson(x, x.T) == pytest.approx(-1 / 8, abs=1e-12)


def test_an_all_zero_map_has_no_similarity():
    m = images((1, 3, 16, 16), seed=5)[0]
    s = sim.compare_maps(m, torch.zeros_like(m))
    assert all(math.isnan(v) for v in s.values())


def test_maps_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="Hint"):
        sim.compare_maps(torch.zeros(3, 8, 8), torch.zeros(3, 9, 9))


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


# --- sanity checks: randomisation ------------------------------------------------------------------------

def test_randomising_a_layer_changes_its_weights_and_nothing_else(tiny):
    before = state(tiny)
    new = san.randomized(tiny, ["conv2_1"], seed=3)
    assert state(tiny).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in state(tiny).items())  # the caller's model is untouched
    after = state(new)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"features.3.weight", "features.3.bias"}
    assert torch.all(after["features.3.bias"] == 0)
    w = after["features.3.weight"]
    assert abs(float(w.std()) - math.sqrt(2 / (6 * 9))) < 0.25 * math.sqrt(2 / (6 * 9))  # He normal
    assert new.model is not tiny.model and new.layers["conv2_1"] is not tiny.layers["conv2_1"]
    assert new.layers["conv2_1"] is new.model.features[3]  # the copy's names point into the copy
    # the same layer gets the same draw whatever else is randomised
    both = san.randomized(tiny, ["fc8", "conv2_1"], seed=3)
    assert torch.equal(both.layers["conv2_1"].weight, new.layers["conv2_1"].weight)


def test_randomising_a_layer_without_parameters_is_refused(tiny):
    with pytest.raises(ValueError, match="Hint"):
        san.randomized(tiny, ["relu2_1"])


def test_randomisation_steps(tiny):
    casc = san.randomisation_steps(tiny, "fc8", "cascading")
    assert casc == [("original", []), ("fc8", ["fc8"]), ("fc7", ["fc8", "fc7"]), ("fc6", ["fc8", "fc7", "fc6"]),
                    ("conv2_1", ["fc8", "fc7", "fc6", "conv2_1"]), ("conv1_1", ["fc8", "fc7", "fc6", "conv2_1",
                                                                                "conv1_1"])]
    ind = san.randomisation_steps(tiny, "pool2", "independent", layers=["conv1_1", "conv2_1"])
    assert ind == [("original", []), ("conv2_1", ["conv2_1"]), ("conv1_1", ["conv1_1"])]
    with pytest.raises(ValueError, match="Hint"):  # fc6 is above pool2: it cannot change its maps
        san.randomisation_steps(tiny, "pool2", "cascading", layers=["fc6"])
    with pytest.raises(ValueError, match="Hint"):
        san.randomisation_steps(tiny, "pool2", "sideways")


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_sanity_check_maps_are_those_of_the_randomised_models(tiny, mode):
    x = images((2, 3, 16, 16), seed=11)
    before = state(tiny)
    r = san.sanity_check(tiny, x, mode=mode, seed=1, show_progress=False)
    assert all(torch.equal(v, before[k]) for k, v in state(tiny).items())
    assert no_forward_hooks(tiny)
    assert r.steps == [s for s, _ in san.randomisation_steps(tiny, "fc8", mode)]
    seed, channel, _ = san.unit_seed(tiny, x, dn.Target("fc8"))
    assert torch.equal(r.channel, channel)  # the top class of the unchanged model, kept at every step
    for i, layers in enumerate(r.randomised):  # recompute each step from scratch on a fresh copy
        ref = meth.backward_maps(san.randomized(tiny, layers, seed=1), x, "fc8", seed, san.SANITY_METHODS)
        for m in san.SANITY_METHODS:
            assert torch.allclose(r.maps[m][i], ref[m], atol=1e-6 * float(ref[m].abs().max()) + 1e-30), (i, m)
    for m in san.SANITY_METHODS:
        for k in sim.METRICS:
            np.testing.assert_allclose(r.scores[m][k][0], 1.0, atol=1e-9)  # step 0: the original itself


def test_unit_seed_map_is_the_projection_divided_by_the_activation(vgg16):
    x = images((2, 3, 40, 40), seed=12)
    seed, channel, position = san.unit_seed(vgg16, x, dn.Target("pool4"))
    maps = meth.backward_maps(vgg16, x, "pool4", seed, ("deconvnet",))
    p = dn.Deconvnet(vgg16).project(x, "pool4")
    assert (p.activation > 0).all()
    expected = p.projection / p.activation.view(-1, 1, 1, 1)
    assert torch.allclose(maps["deconvnet"], expected, atol=1e-5 * float(expected.abs().max()))


def test_sanity_curves_figure(tiny):
    import matplotlib.pyplot as plt

    x = images((1, 3, 16, 16), seed=13)
    results = [san.sanity_check(tiny, x, mode=m, layers=["fc8", "conv1_1"], show_progress=False) for m in san.MODES]
    fig = san.plot_sanity_curves(results)
    assert len(fig.axes) == 2 * len(sim.METRICS)
    assert tiny.describe() in words(fig) and "class score (logit) fc8" in words(fig)
    plt.close(fig)
    fig = san.plot_sanity_maps(results[0], tiny)
    assert [a.get_title() for a in fig.axes[:3]] == ["input", "original", "fc8"]
    assert "all zero" not in words(fig)
    plt.close(fig)


def test_sanity_maps_wrap_into_blocks_that_fit_a_page(tiny):
    import matplotlib.pyplot as plt

    x = images((1, 3, 16, 16), seed=13)
    r = san.sanity_check(tiny, x, mode="cascading", show_progress=False)  # fc8 .. conv1_1: 6 steps
    fig = san.plot_sanity_maps(r, tiny, max_cols=4)
    assert fig.get_figwidth() <= 7.0 + 1e-9
    # the input and 6 steps in blocks of 4 columns: 2 blocks of 3 method rows, the input once, top left
    shown = [a for a in fig.axes if a.images]
    assert len(shown) == 1 + len(r.steps) * len(san.SANITY_METHODS)
    assert [a.get_title() for a in fig.axes[:4]] == ["input", *r.steps[:3]]
    assert [a.get_title() for a in fig.axes[12:16]] == r.steps[3:] + [""]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array().max(), 1.0)  # clipped at the 99.5th percentile
    with pytest.raises(ValueError, match="Hint"):
        san.plot_sanity_maps(r, tiny, axes=np.array(plt.subplots(3, 4)[1]))
    plt.close("all")


def test_default_sanity_target_is_a_pre_activation():
    assert san.default_target(tiny_net(True)) == dn.Target("fc8", "max", "max")  # the class score (a logit)
    assert san.default_target(tiny_net(False)) == dn.Target("conv2_1", "max", "max")  # the last conv, before its ReLU


@pytest.mark.slow
def test_default_sanity_target_stays_alive_at_every_step_on_random_weights(vgg16):
    # The strongest unit of pool5 dies when conv5_2 and conv5_3 are re-initialised (see the next test); the
    # default target, conv5_3 before its ReLU, is linear in relu5_2: its derivative there is a row of its
    # weights whatever they are, so gradient and guided backprop keep a signal at every step.
    net = features_only(vgg16)
    target = san.default_target(net)
    assert target == dn.Target("conv5_3", "max", "max")
    x = net.preprocess("astronaut", size=32, crop=32)
    for mode in san.MODES:
        r = san.sanity_check(net, x, target, mode=mode, methods=("guided_backprop", "gradient"), show_progress=False)
        assert len(r.steps) == 1 + 13 and r.definition.startswith("conv5_3 before its ReLU")
        for m, zero in r.zero.items():
            assert not zero.any(), (mode, m, [s for s, z in zip(r.steps, zero[:, 0], strict=False) if z])
    assert no_forward_hooks(net)


def test_a_target_that_dies_under_randomisation_is_marked_and_explained(vgg16):
    import matplotlib.pyplot as plt

    net = features_only(vgg16)
    x = net.preprocess("astronaut", size=32, crop=32)
    r = san.sanity_check(net, x, dn.Target("pool5"), layers=["conv5_3", "conv5_2", "conv5_1"], show_progress=False)
    # the premise: once conv5_2 and conv5_3 are re-initialised, the pool5 unit is off, and the methods that
    # follow the forward ReLUs lose the whole signal (the deconvnet's rule ignores them)
    ch, (row, col) = int(r.channel[0]), r.position[0].tolist()
    dead = san.randomized(net, ["conv5_3", "conv5_2"])
    assert dn.Deconvnet(dead).record(x, ["pool5"]).activations["pool5"][0, ch, row, col] == 0
    for m in ("gradient", "guided_backprop"):
        assert r.zero[m][:, 0].tolist() == [False, False, True, False], m
    assert not r.zero["deconvnet"].any()
    fig = san.plot_sanity_maps(r, net)
    marked = [a for a in fig.axes if any(t.get_text() == "all zero" for t in a.texts)]
    assert len(marked) == 2 and all(not a.images[0].get_array().any() for a in marked)
    assert " ".join(san.ZERO_WHY.split()) in words(fig)
    plt.close(fig)
    fig = san.plot_sanity_curves([r])
    assert " ".join(san.ZERO_WHY.split()) in words(fig) and "map all zero" in words(fig)
    plt.close(fig)


# --- neuron selectivity -----------------------------------------------------------------------------------

def test_selectivity_maps_equal_captum_neuron_deconvolution(vgg16):
    x = images((1, 3, 48, 48), seed=14)
    r = san.neuron_selectivity(vgg16, x, "pool4", methods=("deconvnet",), n_random=2, seed=3)
    act = dn.Deconvnet(vgg16).record(x, ["pool4"]).activations["pool4"]
    row, col = (int(v) for v in r.position[0])
    assert int(r.channel_max[0]) == int(act[0, :, row, col].argmax())
    assert torch.equal(r.position[0], dn.Deconvnet(vgg16).project(x, "pool4").position[0])  # the layer's strongest unit
    assert (r.channels_random != r.channel_max).all()
    nd = NeuronDeconvolution(vgg16.model, vgg16.layers["pool4"])
    for kind, ch in (("max channel", r.channel_max[0]), ("random channel", r.channels_random[0, 0])):
        ref = nd.attribute(x.clone(), neuron_selector=(int(ch), row, col)).detach()
        got = r.maps["deconvnet"][kind][0]
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max(), kind
    # the random vector: the same positive weights over all channels at that location
    g = torch.Generator().manual_seed(3)
    torch.randint(1, act.shape[1], (2, 1), generator=g)
    v = torch.randn(2, 1, act.shape[1], generator=g, dtype=torch.float64).abs().float()[0, 0]
    ref = nd.attribute(x.clone(), neuron_selector=lambda out: (out[:, :, row, col] * v).sum(1)).detach()
    assert (r.maps["deconvnet"]["random vector"][0] - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert set(r.scores["deconvnet"]) == {"max channel vs random channel", "max channel vs random vector",
                                          "random channel vs random vector"}
    assert no_forward_hooks(vgg16)


# --- invariance -------------------------------------------------------------------------------------------

def test_transforms_against_torch_ops():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    down = inv.vertical_shift(x, 2)
    assert torch.equal(down[..., 2:, :], x[..., :4, :]) and torch.all(down[..., :2, :] == 0)
    up = inv.vertical_shift(x, -1)
    assert torch.equal(up[..., :5, :], x[..., 1:, :]) and torch.all(up[..., 5, :] == 0)
    assert torch.equal(inv.vertical_shift(x, 0), x) and torch.all(inv.vertical_shift(x, 6) == 0)
    assert torch.equal(inv.rotate(x, 90), torch.rot90(x, 1, (2, 3)))  # counter-clockwise
    assert torch.equal(inv.rotate(x, 180), torch.rot90(x, 2, (2, 3)))
    assert torch.equal(inv.rotate(x, 360), x) and torch.equal(inv.rescale(x, 1.0), x)
    # zooming in by 2 about the centre: the central pixels spread over the image, the border is gone
    big = inv.rescale(torch.ones(1, 1, 8, 8), 0.5)
    assert big[0, 0, 4, 4] == 1 and big[0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="Hint"):
        inv.apply_transform(x, "shear", 1)


def test_translation_curve_is_zero_at_no_shift_and_grows_with_the_shift(vgg16):
    x = vgg16.preprocess("chelsea", size=64, crop=64)
    shifts = [0, 1, 2, 4, 8, 16, 24]
    r = inv.invariance_curves(vgg16, x, ranges={"translation": shifts, "rotation": [0, 360]}, show_progress=False)
    d = r.distance["translation"]["pool1"][:, 0]
    assert d[0] == 0 and np.all(np.diff(d) > 0), d
    assert np.all(r.distance["rotation"]["pool1"] == 0)
    # the identity's features are the original's; recomputed they agree to float round-off
    feats = dn.Deconvnet(vgg16).record(inv.vertical_shift(x, 0), ["pool1"]).activations["pool1"]
    base = dn.Deconvnet(vgg16).record(x, ["pool1"]).activations["pool1"]
    assert torch.equal(feats, base)


def test_deep_distance_and_probability_against_a_hand_forward(tiny):
    x = images((2, 3, 16, 16), seed=15)
    r = inv.invariance_curves(tiny, x, ranges={"scale": [0.5, 1.0, 1.5], "translation": [-3, 0, 3]},
                              batch_size=4, show_progress=False)
    assert r.layers == ("pool1", "fc7")
    m = tiny.model

    def fc7_and_probs(z):  # features, avgpool, flatten, fc6, relu, dropout(eval), fc7
        h = torch.flatten(m.avgpool(m.features(z)), 1)
        f7 = m.classifier[3](F.relu(m.classifier[0](h)))
        return f7, torch.softmax(m(z).double(), 1)

    with torch.no_grad():
        f0, p0 = fc7_and_probs(x)
        top = p0.argmax(1)
        assert r.classes == top.tolist() and r.class_source == "top"
        for kind, vals in r.values.items():
            for i, v in enumerate(vals):
                f, p = fc7_and_probs(inv.apply_transform(x, kind, v))
                np.testing.assert_allclose(r.distance[kind]["fc7"][i], (f - f0).double().norm(dim=1).numpy(), rtol=1e-4,
                                           atol=1e-6)
                np.testing.assert_allclose(r.probability[kind][i], p[torch.arange(2), top].numpy(), rtol=1e-4)


def test_invariance_without_classifier_has_no_probability_row_and_says_so_once(tiny_features):
    import matplotlib.pyplot as plt

    x = images((1, 3, 16, 16), seed=16)
    r = inv.invariance_curves(tiny_features, x, ranges={"rotation": [0, 90], "scale": [0.5, 1.0]}, show_progress=False)
    assert r.probability is None and r.layers == ("pool1", "pool2")
    fig = inv.plot_invariance(r, tiny_features)
    assert len(fig.axes) == 3 * 2  # examples, pool1, pool2: no placeholder row
    assert all(a.lines or a.images for a in fig.axes)
    assert words(fig).count("no classifier") == 1
    for c, kind in enumerate(r.values):
        np.testing.assert_array_equal(fig.axes[2 + c].lines[0].get_ydata(), r.distance[kind]["pool1"][:, 0])
        np.testing.assert_array_equal(fig.axes[4 + c].lines[0].get_ydata(), r.distance[kind]["pool2"][:, 0])
    plt.close(fig)


def test_invariance_with_a_classifier_draws_the_probability(tiny):
    import matplotlib.pyplot as plt

    x = images((2, 3, 16, 16), seed=16)
    r = inv.invariance_curves(tiny, x, ranges={"translation": [-2, 0, 2]}, show_progress=False)
    fig = inv.plot_invariance(r, tiny)
    assert len(fig.axes) == 4
    for j in range(2):
        np.testing.assert_array_equal(fig.axes[3].lines[j].get_ydata(), r.probability["translation"][:, j])
    assert "not shown" not in words(fig)
    plt.close(fig)


# --- occlusion --------------------------------------------------------------------------------------------

def test_occlusion_maps_equal_a_direct_loop_over_positions(tiny):
    x = images((2, 3, 16, 16), seed=17)
    r = occ.occlusion_maps(tiny, x, layer="relu2_1", size=5, stride=3, batch_size=6, captum=False, show_progress=False)
    m = tiny.model
    with torch.no_grad():
        a = m.features[:5](x.clone())
        # per image, the map the image raises most above its value on a blank input (the occluder's fill)
        ch = (a - m.features[:5](torch.zeros_like(x[:1]))).flatten(2).amax(2).argmax(1)
        assert r.channel.tolist() == ch.tolist() and r.channel_rule == "response"
        top = m(x).argmax(1)
        tops, lefts = list(range(0, 12, 3)), list(range(0, 12, 3))
        assert r.tops.tolist() == tops and r.lefts.tolist() == lefts
        for i, t in enumerate(tops):
            for j, left in enumerate(lefts):
                xo = x.clone()
                xo[:, :, t : t + 5, left : left + 5] = 0.0
                act = m.features[:5](xo.clone())
                probs = torch.softmax(m(xo).double(), 1)
                for b in range(2):
                    assert r.activation[b, i, j] == pytest.approx(float(act[b, ch[b]].double().sum()), rel=1e-5)
                    assert r.probability[b, i, j] == pytest.approx(float(probs[b, top[b]]), rel=1e-5)
                    assert r.top_label[b, i, j] == int(probs[b].argmax())
    assert r.projection.channel.tolist() == ch.tolist()


def test_occlusion_follows_the_map_the_image_drives_not_one_its_bias_keeps_high(tiny_features):
    """A map with zero weights and a large bias is the layer's raw maximum on every image, and no occluder can
    change it (the offline MRI weights' relu5_3 map 155 nearly is one: 9.5 everywhere on a blank input, under
    1% change). Fig. 7 wants the map strongest *on the image*."""
    import copy

    import matplotlib.pyplot as plt

    net = copy.deepcopy(tiny_features)
    conv = net.layers["conv2_1"]
    with torch.no_grad():
        conv.weight[7] = 0.0
        conv.bias[7] = 50.0
    x = images((2, 3, 16, 16), seed=21)
    raw = occ.occlusion_maps(net, x, channel="max", size=4, stride=2, show_progress=False)
    assert raw.channel.tolist() == [7, 7] and raw.channel_rule == "max"
    np.testing.assert_array_equal(raw.change(), 0.0)  # constant: nothing to see
    assert raw.activation_blank.tolist() == [50.0 * 8 * 8] * 2 == raw.activation_clean.tolist()  # relu2_1: 8x8
    r = occ.occlusion_maps(net, x, size=4, stride=2, show_progress=False)
    with torch.no_grad():
        rise = net.features[:5](x) - net.features[:5](torch.zeros_like(x[:1]))
    assert r.channel.tolist() == rise.flatten(2).amax(2).argmax(1).tolist() and 7 not in r.channel.tolist()
    assert r.projection.channel.tolist() == r.channel.tolist()  # (c) projects the map that (b) follows
    change = r.change()
    clean = r.activation_clean[:, None, None]
    np.testing.assert_allclose(change, 100 * (r.activation - clean) / clean)
    assert (change.min(axis=(1, 2)) < -10).all()  # a 4 px square of a 16 px random image takes 15-17% away
    assert r.summary()["change_percent"] == [[float(c.min()), float(c.max())] for c in change]
    fig = occ.plot_occlusion(r, net)
    for b in range(2):  # a diverging scale centred on zero that spans the observed change, with a colorbar
        im = image_axes(fig)[3 * b + 1].images[0]
        top = np.abs(change[b]).max()
        assert im.get_clim() == pytest.approx((-top, top)) and im.colorbar is not None
    assert "strongest response to the image" in words(fig)
    plt.close(fig)
    with pytest.raises(ValueError, match="Hint"):
        occ.occlusion_maps(net, x, channel="strongest", size=4, show_progress=False)


def test_occlusion_probability_agrees_with_captum_when_windows_do_not_overlap(tiny):
    x = images((1, 3, 16, 16), seed=18)
    r = occ.occlusion_maps(tiny, x, size=4, stride=4, true_classes=[3], show_progress=False)
    assert r.class_source == "true" and r.classes == [3]
    # Captum: per pixel, the probability drop of the one window covering it
    expected = np.kron(r.probability_clean[0] - r.probability[0], np.ones((4, 4)))
    np.testing.assert_allclose(r.captum[0], expected, atol=1e-6)


def test_occlusion_without_classifier_leaves_the_class_panels_out(tiny_features):
    import matplotlib.pyplot as plt

    x = images((2, 3, 16, 16), seed=19)
    r = occ.occlusion_maps(tiny_features, x, size=4, stride=4, show_progress=False)
    assert r.probability is None and r.top_label is None and r.captum is None
    fig = occ.plot_occlusion(r, tiny_features)
    assert len(image_axes(fig)) == 2 * 3  # (a), (b), (c) per image: nothing faked
    assert all(a.images for a in fig.axes if not hasattr(a, "_colorbar"))  # no placeholder panel
    text = words(fig)
    assert text.count("left out") == 1 and text.count("no classifier") == 1
    # (b): the change of the map's summed activation, in percent of the unoccluded value
    for b in range(2):
        change = 100 * (r.activation[b] - r.activation_clean[b]) / abs(r.activation_clean[b])
        np.testing.assert_allclose(image_axes(fig)[3 * b + 1].images[0].get_array(), change)
    plt.close(fig)


def test_occlusion_with_a_classifier_draws_the_class_panels(tiny):
    import matplotlib.pyplot as plt

    x = images((1, 3, 16, 16), seed=19)
    r = occ.occlusion_maps(tiny, x, size=4, stride=4, show_progress=False)
    fig = occ.plot_occlusion(r, tiny)
    panels = image_axes(fig)
    assert len(panels) == 5 and "left out" not in words(fig)
    np.testing.assert_allclose(panels[3].images[0].get_array(), r.probability[0])
    legend = [t.get_text() for t in panels[4].get_legend().get_texts()]
    assert legend[: len(np.unique(r.top_label))] == [f"class {v}" for v, _ in sorted(
        zip(*np.unique(r.top_label, return_counts=True), strict=False), key=lambda vc: -vc[1])][:5]
    plt.close(fig)
    fig = occ.plot_occlusion(r, tiny, show_captum=True)  # Captum's per-pixel occlusion only when asked
    assert len(image_axes(fig)) == 6
    plt.close(fig)


def test_occluder_that_does_not_fit_is_refused(tiny):
    with pytest.raises(ValueError, match="Hint"):
        occ.occlusion_maps(tiny, images((1, 3, 16, 16)), size=20, show_progress=False)


# --- first-layer filters ---------------------------------------------------------------------------------

def test_filter_grid_places_and_scales_each_filter():
    w = torch.zeros(3, 3, 2, 2)
    w[0, 0, 0, 0] = 2.0   # filter 0: +max in channel 0 (R)
    w[1, 2, 1, 1] = -4.0  # filter 1: -max in channel 2 (B)
    w[2] = 1.0            # filter 2: uniform
    g = filt.filter_grid(w, None, cols=2, pad=1)
    assert g.shape == (1 + 2 * 3, 1 + 2 * 3, 3)
    np.testing.assert_array_equal(g[0], 1.0)  # white border
    np.testing.assert_allclose(g[1, 1], [1.0, 0.5, 0.5])  # filter 0 at block (0, 0): 0.5 + 2 / (2 * 2)
    np.testing.assert_allclose(g[2, 5], [0.5, 0.5, 0.0])  # filter 1 at block (0, 1), pixel (1, 1)
    np.testing.assert_allclose(g[4:6, 1:3], 1.0)  # filter 2 at block (1, 0): 0.5 + 1 / 2
    np.testing.assert_array_equal(g[4:6, 4:6], 1.0)  # no filter 3: background
    # Caffe weights are BGR: the channel shown as red is the weight's last channel
    np.testing.assert_allclose(filt.filter_grid(w, CAFFE, cols=2)[1, 1], [0.5, 0.5, 1.0])
    # one maximum for the layer keeps the filters' relative strength
    np.testing.assert_allclose(filt.filter_grid(w, None, cols=2, normalise="layer")[1, 1], [0.75, 0.5, 0.5])


def test_first_layer_figure_names_the_weights(vgg16, alexnet):
    import matplotlib.pyplot as plt

    assert filt.first_conv(alexnet)[1].kernel_size == (11, 11)
    fig = filt.plot_first_layer_filters([vgg16, alexnet])
    titles = [a.get_title() for a in fig.axes]
    assert "conv1_1: 64 filters 3x3, stride 1" in titles[0] and "conv1: 64 filters 11x11, stride 4" in titles[1]
    assert "RANDOM" in titles[1]
    assert [" ".join(a.get_xlabel().split()) for a in fig.axes] == [vgg16.describe(), alexnet.describe()]
    grid = fig.axes[1].images[0].get_array()
    assert grid.shape == (1 + 8 * 12, 1 + 8 * 12, 3)
    plt.close(fig)


def test_filter_figure_leaves_out_random_weights_beside_trained_ones(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import deconvnet.analysis as analysis

    trained = tiny_net(False, seed=5)
    trained.provenance.update(weights="offline-test", source="a test standing in for trained weights")
    random_alexnet = tiny_net(False, seed=4)
    random_alexnet.arch = "alexnet"
    kept = []
    monkeypatch.setattr(analysis, "_save", lambda fig, path: kept.append(fig) or path)
    analysis.figure_filters(tmp_path, trained, random_alexnet)
    fig = kept.pop()
    titles = [" ".join(a.get_title().split()) for a in fig.axes]
    assert titles == ["tiny conv1_1: 6 filters 3x3, stride 1 scaled per filter",
                      "tiny conv1_1: 6 filters 3x3, stride 1 scaled per layer"]
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), filt.filter_grid(trained.layers["conv1_1"].weight,
                                                                                   trained.preprocessing))
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(),
                               filt.filter_grid(trained.layers["conv1_1"].weight, trained.preprocessing,
                                                normalise="layer"))
    text = words(fig)
    assert text.count("alexnet (the subject of Fig. 6) is left out") == 1 and random_alexnet.describe() not in text
    assert text.count(trained.describe()) == 1
    plt.close(fig)
    analysis.figure_filters(tmp_path, tiny_net(False, seed=6), random_alexnet)  # both random: both shown
    fig = kept.pop()
    assert len(fig.axes) == 2 and "left out" not in words(fig)
    plt.close(fig)


def _print_problems(fig) -> list[str]:
    """What would not print well at a page's width (7 inches): text under 7 pt there, text outside the figure,
    and overlapping titles, captions, legends and panel titles."""
    from matplotlib.text import Text

    problems = []
    shrink = min(1.0, 7.0 / fig.get_figwidth())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for t in texts:
        if t.get_fontsize() * shrink < 7.0 - 1e-9:
            problems.append(f"{t.get_fontsize() * shrink:.1f} pt at 7 in: {t.get_text()[:40]!r}")
    top_level = {id(t): t for t in [*fig.texts, fig._suptitle,
                                    fig._supxlabel] if t is not None and t.get_text().strip()}
    titled = [a.title for a in fig.axes if a.get_title().strip() and a.get_visible()]
    boxes = [(t.get_text()[:30], t.get_window_extent(renderer)) for t in [*top_level.values(), *titled]]
    boxes += [("legend", lg.get_window_extent(renderer)) for lg in fig.legends]
    page = fig.bbox
    for name, bb in boxes:
        if bb.x0 < page.x0 - 1 or bb.x1 > page.x1 + 1 or bb.y0 < page.y0 - 1 or bb.y1 > page.y1 + 1:
            problems.append(f"outside the figure: {name!r}")
    for i, (na, a) in enumerate(boxes):
        for nb, b in boxes[i + 1 :]:
            if a.overlaps(b) and min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                problems.append(f"overlap: {na!r} / {nb!r}")
    return problems


def _check_print_on_save(monkeypatch) -> dict:
    """Make ``make_figures`` check every figure for print (``_print_problems``) before it is saved."""
    import deconvnet.analysis as analysis

    checked = {}
    save = analysis._save

    def check_then_save(fig, path):
        checked[path.name] = (fig.get_figwidth(), _print_problems(fig))
        return save(fig, path)

    monkeypatch.setattr(analysis, "_save", check_then_save)
    return checked


def _assert_prints(checked: dict) -> None:
    assert set(checked) == {"methods.png", "sanity_curves.png", "sanity_maps.png", "selectivity.png", "invariance.png",
                            "occlusion.png", "filters.png"}
    for name, (width, problems) in checked.items():
        assert width <= 7.0 + 1e-9, name
        assert not problems, (name, problems)


def test_every_figure_of_features_only_weights_prints_at_a_page_width(tmp_path, monkeypatch):
    from deconvnet.analysis import make_figures

    checked = _check_print_on_save(monkeypatch)
    make_figures(tmp_path, tiny_net(False), quick=True, show_progress=False)
    _assert_prints(checked)
    assert "probability" not in json.loads((tmp_path / "occlusion.json").read_text())
    assert "probability" not in json.loads((tmp_path / "invariance.json").read_text())["rotation"]
    sanity = json.loads((tmp_path / "sanity.json").read_text())
    assert sanity["target"] == "conv2_1" and sanity["target_definition"].startswith("conv2_1 before its ReLU")


# --- the figure script's entry ---------------------------------------------------------------------------

def test_make_figures_writes_every_figure_and_its_numbers(tiny, tmp_path, monkeypatch):
    from deconvnet.analysis import make_figures

    checked = _check_print_on_save(monkeypatch)  # and each figure prints at a page's width, text >= 7 pt
    paths = make_figures(tmp_path, tiny, quick=True, alexnet=tiny_net(False, seed=4), show_progress=False)
    _assert_prints(checked)
    names = sorted(p.name for p in paths)
    assert names == sorted(["methods.png", "methods.json", "sanity_curves.png", "sanity_maps.png", "selectivity.png",
                            "sanity.json", "invariance.png", "invariance.json", "occlusion.png", "occlusion.json",
                            "filters.png"])
    for p in paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    methods = json.loads((tmp_path / "methods.json").read_text())
    assert methods["weights"] == tiny.describe()
    # Captum's Deconvolution is not a column of the figure, but its cross-check is in the numbers, per row
    assert "deconvolution" not in methods["shown"] and len(methods["rows"]) == 2 * 4  # 2 images x 4 targets
    assert all(row["deconvolution_vs_ours_relative_error"] <= 1e-5 for row in methods["rows"])
    assert methods["cross_check"]["max_relative_error"] == max(r["deconvolution_vs_ours_relative_error"]
                                                               for r in methods["rows"])
    sanity = json.loads((tmp_path / "sanity.json").read_text())
    assert sanity["cascading"]["steps"][0] == "original"
    assert sanity["target"] == "fc8" and sanity["target_definition"].startswith("the class score (logit) fc8")
    assert sanity["cascading"]["mean_similarity"]["deconvnet"]["ssim"]["original"] == pytest.approx(1.0)
    assert set(sanity["selectivity"]["mean_similarity"]) == {"deconvnet", "guided_backprop", "gradient"}
    assert "probability" in json.loads((tmp_path / "invariance.json").read_text())["translation"]
    with pytest.raises(ValueError, match="Hint"):
        make_figures(tmp_path, tiny, quick=True, only=["everything"])
    assert no_forward_hooks(tiny)


def test_every_resolution_figure_prints_at_a_page_width(vgg16, tmp_path, monkeypatch):
    """The 7-inch rule holds for every figure the figure script writes, the resolution study's too (its strips
    were 19 inches wide, their footers under 4 pt once printed)."""
    import deconvnet.resolution.figures as resfig

    checked = {}
    save = resfig.save_figure

    def check_then_save(fig, path, *args, **kwargs):
        checked[path.name] = (fig.get_figwidth(), _print_problems(fig))
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(resfig, "save_figure", check_then_save)
    resfig.make_figures(tmp_path, vgg16, quick=True)
    assert set(checked) == {"resolution_conv_matrix.png", "resolution_restore_photo.png",
                            "resolution_restore_relu1_2.png",
                            "resolution_restore_relu4_3.png", "resolution_scores.png", "resolution_checkerboard.png",
                            "resolution_deconvnet_stages.png"}
    for name, (width, problems) in checked.items():
        assert width <= 7.0 + 1e-9, (name, width)
        assert not problems, (name, problems)


@pytest.mark.slow
def test_every_figure_of_the_figure_script_prints_at_a_page_width(tmp_path, monkeypatch, capsys):
    """All of them, as the command writes them: Figure 2 grids, the resolution study and the analyses."""
    import deconvnet.analysis as analysis
    import deconvnet.figure2 as figure2
    import deconvnet.plot as plot
    import deconvnet.resolution.figures as resfig
    from deconvnet.cli import main

    checked = {}

    def checking(save):
        def check_then_save(fig, path, *args, **kwargs):
            checked[Path(path).name] = (fig.get_figwidth(), _print_problems(fig))
            return save(fig, path, *args, **kwargs)
        return check_then_save

    monkeypatch.setattr(analysis, "_save", checking(analysis._save))
    monkeypatch.setattr(resfig, "save_figure", checking(resfig.save_figure))
    monkeypatch.setattr(figure2, "save_figure", checking(figure2.save_figure))
    monkeypatch.setattr(plot, "save_figure", checking(plot.save_figure))  # evolution, correspondence: at call time
    code = main(["figures", "--weights", "random", "--quick", "--quiet", "--limit", "40", "--crop", "48", "--features",
                 "8",
                 "--layers", "conv2_2,conv5_3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    written = {p.name for p in tmp_path.glob("*.png")}
    assert written == set(checked) and {"top9_vgg16_conv2_2.png", "top9_vgg16_conv5_3.png", "occlusion.png",
                                        "resolution_restore_photo.png"} <= written
    for name, (width, problems) in checked.items():
        assert width <= 7.0 + 1e-9, (name, width)
        assert not problems, (name, problems)
