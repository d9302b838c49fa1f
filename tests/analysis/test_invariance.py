"""Invariance (deconvnet.analysis.invariance): the transforms against torch's own ops and the features
against a hand-written forward."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deconvnet as dn
from deconvnet.analysis import invariance as inv

from conftest import images, words

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
    r = inv.invariance_curves(vgg16, x, ranges={"translation": shifts, "rotation": [0, 360]}, progress=False)
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
                              batch_size=4, progress=False)
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
    r = inv.invariance_curves(tiny_features, x, ranges={"rotation": [0, 90], "scale": [0.5, 1.0]}, progress=False)
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
    r = inv.invariance_curves(tiny, x, ranges={"translation": [-2, 0, 2]}, progress=False)
    fig = inv.plot_invariance(r, tiny)
    assert len(fig.axes) == 4
    for j in range(2):
        np.testing.assert_array_equal(fig.axes[3].lines[j].get_ydata(), r.probability["translation"][:, j])
    assert "not shown" not in words(fig)
    plt.close(fig)
