"""The analyses on graphs (ResNet-18, GoogLeNet with random weights): every map through the engine, every
number against a reference computed here with plain forward hooks or the engine's own projection.

Random weights show little in the pictures; these tests check what the numbers are, not what they look like.
"""

import warnings

import numpy as np
import pytest
import torch

import deconvnet as dn
from deconvnet.analysis import _util, make_figures, method_targets
from deconvnet.analysis import filters as filt
from deconvnet.analysis import invariance as inv
from deconvnet.analysis import methods as meth
from deconvnet.analysis import occlusion as occ
from deconvnet.analysis import sanity as san
from deconvnet.engine.rules import RULES

from conftest import images, no_forward_hooks

#: each method of the analyses (its analysis name) -> the engine's rule: one entry each in ``engine.rules``
ENGINE_RULES = {r.key: r.name for r in RULES.values()}


@pytest.fixture(scope="module")
def resnet18():
    return dn.load_model("resnet18", "random")


@pytest.fixture(scope="module")
def googlenet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's note on GoogLeNet's initialisation
        return dn.load_model("googlenet", "random")


def hooked(model, module, x):
    """The first output of ``module`` in a plain forward, and the model's output (the reference)."""
    kept = []
    handle = module.register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()) if not kept else None)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        handle.remove()
    return kept[0], out


def close(a, b, rtol=1e-5):
    scale = b.abs().max()
    assert scale > 0
    return bool((a - b).abs().max() <= rtol * scale)


# --- layers of the analyses -----------------------------------------------------------------------------

def test_layers_are_chosen_from_the_engine_interface(resnet18, googlenet):
    assert _util.output_layer(resnet18) == "fc" and _util.output_layer(googlenet) == "fc"
    assert _util.low_layer(resnet18) == "maxpool" and _util.low_layer(googlenet) == "maxpool1"
    assert _util.deep_layer(resnet18) == "avgpool" and _util.deep_layer(googlenet) == "avgpool"
    assert _util.last_relu(resnet18) == "layer4" and _util.last_relu(googlenet) == "inception5b"
    assert [(t.layer, t.position) for t in method_targets(resnet18)] == [
        ("layer3", "max"), ("layer4", "max"), ("layer4", "all"), ("fc", "max")]
    assert san.default_target(resnet18) == dn.Target("fc", "max", "max")
    assert filt.first_conv(resnet18) == ("conv1", resnet18.model.conv1)
    assert filt.first_conv(googlenet) == ("conv1.conv", googlenet.model.conv1.conv)
    # parametrised layers in forward order: the block's convolutions, then its shortcut
    layers = san.parametrised_layers(resnet18, "fc")
    assert len(layers) == 21 and layers[0] == "conv1" and layers[-1] == "fc"
    assert layers.index("layer2.0.conv1") < layers.index("layer2.0.conv2") < layers.index("layer2.0.downsample.0")
    assert san.parametrised_layers(resnet18, "layer1")[-1] == "layer1.1.conv2"


# --- methods ---------------------------------------------------------------------------------------------

def test_method_maps_are_the_engines_projections_on_resnet18(resnet18):
    x = images((1, 3, 64, 64), seed=1)
    for target in method_targets(resnet18):
        r = meth.compare_methods(resnet18, x, target)
        for method, rule in ENGINE_RULES.items():
            p = dn.Deconvnet(resnet18, rule=rule).project(x, target.layer, target.channel, target.position)
            assert close(r.maps[method], p.projection), (target, method)
            assert torch.equal(r.channel, p.channel)
        assert max(r.deconvolution_error) <= 1e-4  # module ReLUs: Captum's Deconvolution is the cross-check
    assert meth.functional_relus(resnet18, x) == 0
    assert no_forward_hooks(resnet18)


def test_method_maps_honour_googlenets_functional_relus(googlenet):
    x = images((1, 3, 80, 80), seed=2)
    assert meth.functional_relus(googlenet, x) == 57  # every BasicConv2d calls F.relu
    r = meth.compare_methods(googlenet, x, dn.Target("inception4a", "max", "max"))
    for method, rule in ENGINE_RULES.items():
        p = dn.Deconvnet(googlenet, rule=rule).project(x, "inception4a", "max", "max")
        assert close(r.maps[method], p.projection), method
    assert max(r.deconvolution_error) > 0.05  # Captum's hooks miss them: not a cross-check here


# --- sanity checks ---------------------------------------------------------------------------------------

def test_sanity_check_on_resnet18(resnet18):
    x = images((1, 3, 48, 48), seed=3)
    before = {k: v.clone() for k, v in resnet18.model.state_dict().items()}
    r = san.sanity_check(resnet18, x, mode="cascading", layers=["fc", "layer3.0.conv1"], progress=False)
    assert r.steps == ["original", "fc", "layer3.0.conv1"] and r.definition.startswith("the class score (logit) fc")
    assert r.randomised[2][0] == "fc" and r.randomised[2][-1] == "layer3.0.conv1" and len(r.randomised[2]) == 11
    for m in san.SANITY_METHODS:  # the unrandomised model against itself: every measure is 1
        for k, v in r.scores[m].items():
            assert v[0, 0] == pytest.approx(1.0, abs=1e-9), (m, k)
    # the maps of the unchanged model are the engine's, for the unit seed of the top class
    seed = torch.zeros(1, 1000)
    seed[0, int(r.channel[0])] = 1
    for m, rule in ENGINE_RULES.items():
        assert close(r.maps[m][0], dn.Deconvnet(resnet18, rule=rule).project_seed(x, "fc", seed)), m
    # a new classifier changes the gradient of the class score; the caller's model is untouched
    assert r.scores["gradient"]["spearman_abs"][1, 0] < 0.9
    assert all(torch.equal(v, resnet18.model.state_dict()[k]) for k, v in before.items())
    assert no_forward_hooks(resnet18)


def test_sanity_maps_honour_googlenets_functional_relus(googlenet):
    x = images((1, 3, 80, 80), seed=4)
    r = san.sanity_check(googlenet, x, mode="independent", layers=["fc"], progress=False)
    seed = torch.zeros(1, 1000)
    seed[0, int(r.channel[0])] = 1
    guided = dn.Deconvnet(googlenet, rule="guided").project_seed(x, "fc", seed)
    assert close(r.maps["guided_backprop"][0], guided)
    captum = meth.captum_maps(googlenet, x, "fc", seed, ["guided_backprop"])["guided_backprop"]
    assert not close(captum, guided, rtol=0.05)  # not Captum's: it misses every F.relu
    assert all(r.scores[m]["ssim"][0, 0] == pytest.approx(1.0) for m in san.SANITY_METHODS)


def test_neuron_selectivity_on_resnet18(resnet18):
    x = images((2, 3, 64, 64), seed=5)
    sel = san.neuron_selectivity(resnet18, x, methods=("deconvnet", "guided_backprop"), n_random=1)
    assert sel.layer == "layer4"
    for m, rule in (("deconvnet", "deconvnet"), ("guided_backprop", "guided")):
        # the max-channel map is the projection of that unit divided by its activation (the rules are
        # positively homogeneous)
        p = dn.Deconvnet(resnet18, rule=rule).project(x, "layer4", sel.channel_max, sel.position)
        assert (p.activation > 0).all()
        assert close(sel.maps[m]["max channel"][0], p.projection / p.activation.view(-1, 1, 1, 1)), m


# --- invariance ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "googlenet"])
def test_invariance_distances_and_probabilities(arch, request):
    net = request.getfixturevalue(arch)
    x = images((2, 3, 64, 64), seed=6)
    r = inv.invariance_curves(net, x, ranges={"translation": [-8, 0, 8], "rotation": [0, 90]}, progress=False)
    low, high = r.layers
    assert (low, high) == ((_util.low_layer(net), "avgpool"))
    for layer in r.layers:  # the identity: distance exactly 0
        assert (r.distance["translation"][layer][1] == 0).all() and (r.distance["rotation"][layer][0] == 0).all()
    base_low, logits = hooked(net.model, net.layers[low], x)
    base_high, _ = hooked(net.model, net.layers[high], x)
    shifted = inv.vertical_shift(x, 8)
    feat_low, out = hooked(net.model, net.layers[low], shifted)
    feat_high, _ = hooked(net.model, net.layers[high], shifted)
    for layer, a, b in ((low, feat_low, base_low), (high, feat_high, base_high)):
        want = (a - b).flatten(1).double().norm(dim=1).numpy()
        np.testing.assert_allclose(r.distance["translation"][layer][2], want, rtol=1e-4)
    assert r.classes == logits.argmax(1).tolist()
    probs = torch.softmax(out.double(), 1)[torch.arange(2), torch.tensor(r.classes)].numpy()
    np.testing.assert_allclose(r.probability["translation"][2], probs, rtol=1e-5)


# --- occlusion -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,layer", [("resnet18", None), ("googlenet", "inception4a")])
def test_occlusion_maps_against_plain_forwards(arch, layer, request):
    net = request.getfixturevalue(arch)
    x = images((1, 3, 64, 64), seed=7)
    r = occ.occlusion_maps(net, x, layer=layer, size=24, stride=20, captum=False, progress=False)
    assert r.layer == (layer or "layer4") and r.activation.shape == (1, 3, 3)
    ch = int(r.channel[0])
    act, logits = hooked(net.model, net.layers[r.layer], x)
    assert r.activation_clean[0] == pytest.approx(float(act[0, ch].double().sum()), rel=1e-5)
    assert r.classes == [int(logits.argmax())]
    for i, j in ((0, 0), (1, 2), (2, 1)):
        xo = x.clone()
        xo[..., r.tops[i] : r.tops[i] + 24, r.lefts[j] : r.lefts[j] + 24] = 0
        a, out = hooked(net.model, net.layers[r.layer], xo)
        assert r.activation[0, i, j] == pytest.approx(float(a[0, ch].double().sum()), rel=1e-5)
        p = torch.softmax(out.double(), 1)[0]
        assert r.probability[0, i, j] == pytest.approx(float(p[r.classes[0]]), rel=1e-6)
        assert r.top_label[0, i, j] == int(p.argmax())
    # (c) is the engine's projection of the followed map's strongest unit
    p = dn.Deconvnet(net).project(x, r.layer, ch, "max")
    assert close(r.projection.projection, p.projection)


def test_occlusion_with_captum_on_resnet18(resnet18):
    """With the stride equal to the size, Captum's per-pixel Occlusion is the probability drop of (d)."""
    x = images((1, 3, 48, 48), seed=8)
    r = occ.occlusion_maps(resnet18, x, size=16, stride=16, progress=False)
    drop = r.probability_clean[0] - r.probability[0]
    np.testing.assert_allclose(r.captum[0, 16:32, 32:48], np.full((16, 16), drop[1, 2]), rtol=1e-4, atol=1e-9)


# --- the figures -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_figures_command_on_a_graph(tmp_path, capsys, monkeypatch):
    from deconvnet.analysis import FigureSettings
    from deconvnet.cli import main

    small = FigureSettings(("chelsea",), 1, 48, 48, 1, 2, 1, 3, (16, 16))
    monkeypatch.setattr(FigureSettings, "quick", classmethod(lambda cls: small))
    code = main(["figures", "--arch", "resnet18", "--weights", "random", "--only",
                 "methods,sanity,invariance,occlusion",
                 "--quick", "--quiet", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    for name in ("methods", "sanity_curves", "sanity_maps", "selectivity", "invariance", "occlusion"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name
    import json

    methods = json.loads((tmp_path / "methods.json").read_text())
    assert methods["cross_check"]["max_relative_error"] <= 1e-4  # Captum agrees on ResNet's module ReLUs
    sanity = json.loads((tmp_path / "sanity.json").read_text())
    assert sanity["target"] == "fc" and sanity["cascading"]["steps"] == ["original", "fc", "conv1"]
    assert sanity["cascading"]["mean_similarity"]["guided_backprop"]["ssim"]["original"] == pytest.approx(1.0)
    # the resolution study stays VGG's: asked for on a graph it is refused with a hint
    assert main(["figures", "--arch", "resnet18", "--weights", "random", "--only", "resolution,methods",
                 "--out", str(tmp_path)]) == 2
    assert "Hint: --only methods" in capsys.readouterr().err


def test_methods_figure_skips_captum_where_relus_are_functions(googlenet, tmp_path, monkeypatch):
    import json

    from deconvnet.analysis import FigureSettings

    small = FigureSettings(("chelsea",), 1, 64, 64, 1, 2, 1, 3, (16, 16))
    monkeypatch.setattr(FigureSettings, "quick", classmethod(lambda cls: small))
    monkeypatch.setattr("deconvnet.analysis.method_targets", lambda net: [dn.Target("inception4a"), dn.Target("fc")])
    make_figures(tmp_path, googlenet, quick=True, only=["methods"], progress=False)
    numbers = json.loads((tmp_path / "methods.json").read_text())
    assert "57 rectifier calls" in numbers["cross_check"]["skipped"]
    assert "max_relative_error" not in numbers["cross_check"]
    assert all(row["deconvolution_vs_ours_relative_error"] is None for row in numbers["rows"])
