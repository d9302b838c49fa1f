"""Neuron selectivity (deconvnet.analysis.selectivity) against Captum."""


import torch
from captum.attr import NeuronDeconvolution

import deconvnet as dn
from deconvnet.analysis import sanity as san

from conftest import images, no_forward_hooks

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
