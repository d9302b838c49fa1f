"""Occlusion (deconvnet.analysis.occlusion): a direct loop over occluder positions, and Captum's ``Occlusion``."""


import numpy as np
import pytest
import torch

from deconvnet.analysis import occlusion as occ

from conftest import image_axes, images, words

# --- occlusion --------------------------------------------------------------------------------------------

def test_occlusion_maps_equal_a_direct_loop_over_positions(tiny):
    x = images((2, 3, 16, 16), seed=17)
    r = occ.occlusion_maps(tiny, x, layer="relu2_1", size=5, stride=3, batch_size=6, captum=False, progress=False)
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
    raw = occ.occlusion_maps(net, x, channel="max", size=4, stride=2, progress=False)
    assert raw.channel.tolist() == [7, 7] and raw.channel_rule == "max"
    np.testing.assert_array_equal(raw.change(), 0.0)  # constant: nothing to see
    assert raw.activation_blank.tolist() == [50.0 * 8 * 8] * 2 == raw.activation_clean.tolist()  # relu2_1: 8x8
    r = occ.occlusion_maps(net, x, size=4, stride=2, progress=False)
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
        occ.occlusion_maps(net, x, channel="strongest", size=4, progress=False)


def test_occlusion_probability_agrees_with_captum_when_windows_do_not_overlap(tiny):
    x = images((1, 3, 16, 16), seed=18)
    r = occ.occlusion_maps(tiny, x, size=4, stride=4, true_classes=[3], progress=False)
    assert r.class_source == "true" and r.classes == [3]
    # Captum: per pixel, the probability drop of the one window covering it
    expected = np.kron(r.probability_clean[0] - r.probability[0], np.ones((4, 4)))
    np.testing.assert_allclose(r.captum[0], expected, atol=1e-6)


def test_occlusion_without_classifier_leaves_the_class_panels_out(tiny_features):
    import matplotlib.pyplot as plt

    x = images((2, 3, 16, 16), seed=19)
    r = occ.occlusion_maps(tiny_features, x, size=4, stride=4, progress=False)
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
    r = occ.occlusion_maps(tiny, x, size=4, stride=4, progress=False)
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
        occ.occlusion_maps(tiny, images((1, 3, 16, 16)), size=20, progress=False)
