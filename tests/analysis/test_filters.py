"""The first-layer filters (deconvnet.analysis.filters)."""


import numpy as np
import torch

from deconvnet.analysis import filters as filt
from deconvnet.preprocessing import CAFFE

from conftest import tiny_net, words

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
