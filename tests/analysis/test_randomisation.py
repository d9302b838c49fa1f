"""The sanity checks' randomisation (deconvnet.analysis.randomisation, sanity, sanity_plots): the parameters
themselves, the maps of the randomised models, and their figures."""

import math

import numpy as np
import pytest
import torch

import deconvnet as dn
from deconvnet.analysis import methods as meth
from deconvnet.analysis import sanity as san
from deconvnet.analysis import similarity as sim

from conftest import features_only, images, no_forward_hooks, state, tiny_net, words

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
    r = san.sanity_check(tiny, x, mode=mode, seed=1, progress=False)
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
    results = [san.sanity_check(tiny, x, mode=m, layers=["fc8", "conv1_1"], progress=False) for m in san.MODES]
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
    r = san.sanity_check(tiny, x, mode="cascading", progress=False)  # fc8 .. conv1_1: 6 steps
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
        r = san.sanity_check(net, x, target, mode=mode, methods=("guided_backprop", "gradient"), progress=False)
        assert len(r.steps) == 1 + 13 and r.definition.startswith("conv5_3 before its ReLU")
        for m, zero in r.zero.items():
            assert not zero.any(), (mode, m, [s for s, z in zip(r.steps, zero[:, 0], strict=False) if z])
    assert no_forward_hooks(net)


def test_a_target_that_dies_under_randomisation_is_marked_and_explained(vgg16):
    import matplotlib.pyplot as plt

    net = features_only(vgg16)
    x = net.preprocess("astronaut", size=32, crop=32)
    r = san.sanity_check(net, x, dn.Target("pool5"), layers=["conv5_3", "conv5_2", "conv5_1"], progress=False)
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
