"""The backward rule as a parameter of both engines, proven against references that share none of our code.

``Deconvnet(net, rule=...)``: ``"deconvnet"``, ``"guided"`` (guided backprop), ``"gradient"`` (saliency). On
models whose ReLUs are modules, Captum computes the same rules (``Deconvolution``, ``GuidedBackprop``,
``Saliency``) with module hooks: our chain and graph engines must equal it, in float64. On GoogLeNet as
torchvision ships it every ReLU is functional (``F.relu`` inside ``BasicConv2d``): Captum's hooks see none
of them, so its GuidedBackprop and Deconvolution silently return the plain gradient there; our graph engine
must equal independent references (the same model with module ReLUs under Captum, and a hand-written
float64 rule inside a copy of the model, differentiated by plain autograd) and differ from Captum's answer.
"""

import copy
import types
import warnings

import pytest
import torch
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, NeuronGuidedBackprop, Saliency
from test_graph import modular_densenet, modular_googlenet
from torch import nn

import deconvnet as dn
from deconvnet.engine import RULES

from conftest import images, no_forward_hooks

CAPTUM = {"deconvnet": Deconvolution, "guided": GuidedBackprop, "gradient": Saliency}


class Score(nn.Module):
    """S(x) = <seed, output of ``module``> per image, from a full forward of ``model`` (written here, for
    Captum: the layer's output is kept at its first call, the rest of the forward runs on)."""

    def __init__(self, model: nn.Module, module: nn.Module, seed: torch.Tensor) -> None:
        super().__init__()
        self.model, self.seed = model, seed
        self._module = [module]  # not a submodule: Captum hooks the ReLUs of ``model`` once

    def forward(self, x):
        kept = []

        def hook(m, inputs, output):
            if not kept:
                kept.append(output)

        handle = self._module[0].register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        return (kept[0] * self.seed).flatten(1).sum(1)


def captum(rule, model, module, x, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's notes on hooking ReLUs and on requires_grad
        method = CAPTUM[rule](Score(model, module, seed))
        kwargs = {"abs": False} if rule == "gradient" else {}
        return method.attribute(x.clone(), **kwargs).detach()


def output_of(model, module, x):
    kept = []
    handle = module.register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()) if not kept else None)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return kept[0]


def signed_seed(model, module, x, seed=0):
    """A random signed signal over the whole layer output: every rectifier meets both signs coming down."""
    out = output_of(model, module, x)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)


def assert_equal_maps(ours, ref, what, rtol=1e-10):
    scale = ref.abs().max()
    assert scale > 0, f"{what}: the reference is all zero"
    err = (ours - ref).abs().max()
    assert err <= rtol * scale, f"{what}: max |ours - reference| = {err:.3g}, scale {scale:.3g}"


def assert_differ(a, b, what, at_least=0.05):
    scale = b.abs().max()
    assert (a - b).abs().max() > at_least * scale, f"{what}: the maps should differ"


def random_model(builder, seed, **kwargs):
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return builder(weights=None, **kwargs).eval().double()


# --- module ReLUs: our chain and graph engines equal Captum ---------------------------------------------

@pytest.fixture(scope="module")
def chain():
    """A VGG-shaped chain: in-place ReLUs, a 2x2 and an overlapping 3x3/2 max-pool, BatchNorm, a classifier."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 10),
        ).double().eval()
        model[6].running_var.uniform_(0.5, 1.5)
        model[6].running_mean.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.bias, 0.0, 0.1)
    net = dn.wrap(model)
    assert net.is_chain
    return net


@pytest.mark.parametrize("rule", ["guided", "gradient", "deconvnet"])
@pytest.mark.parametrize("engine", ["chain", "graph"])
@pytest.mark.parametrize("layer", ["3", "8", "10", "15"])
def test_chain_rules_equal_captum_in_float64(chain, engine, rule, layer):
    x = images((2, 3, 20, 18), seed=12, dtype=torch.float64)
    module = chain.layers[layer]
    seed = signed_seed(chain.model, module, x)
    ours = dn.Deconvnet(chain, engine=engine, rule=rule).project_seed(x, layer, seed)
    assert ours.dtype == torch.float64 and ours.shape == x.shape
    assert_equal_maps(ours, captum(rule, chain.model, module, x, seed), f"{engine} {rule} at {layer}")
    assert no_forward_hooks(chain)


def test_the_rules_really_differ(chain):
    x = images((2, 3, 20, 18), seed=13, dtype=torch.float64)
    seed = signed_seed(chain.model, chain.layers["10"], x)
    maps = {rule: dn.Deconvnet(chain, rule=rule).project_seed(x, "10", seed) for rule in RULES}
    assert_differ(maps["guided"], maps["deconvnet"], "guided vs deconvnet")
    assert_differ(maps["gradient"], maps["guided"], "gradient vs guided")
    assert_differ(maps["gradient"], maps["deconvnet"], "gradient vs deconvnet")


@pytest.mark.parametrize("engine", ["chain", "graph"])
def test_a_guided_projection_is_captums_neuron_guided_backprop_times_the_activation(chain, engine):
    """``project`` with a rule: the target's seed (its activation, the rest zero) carried down with it."""
    x = images((2, 3, 20, 18), seed=14, dtype=torch.float64)
    p = dn.Deconvnet(chain, engine=engine, rule="guided").project(x, "7", "max", "max")
    assert p.rule == "guided" and (p.activation > 0).all()
    for b in range(2):
        unit = (int(p.channel[b]), *(int(v) for v in p.position[b]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = NeuronGuidedBackprop(chain.model, chain.layers["7"]).attribute(x[b : b + 1].clone(),
                                                                                 neuron_selector=unit)
        assert_equal_maps(p.projection[b : b + 1], ref * p.activation[b], f"{engine} image {b}")


@pytest.fixture(scope="module")
def resnet18():
    return dn.wrap(random_model(torchvision.models.resnet18, 0))


@pytest.mark.parametrize("rule", ["guided", "gradient", "deconvnet"])
@pytest.mark.parametrize("layer", ["layer1.0", "layer2", "layer4", "fc"])
def test_resnet18_rules_equal_captum_in_float64(resnet18, rule, layer):
    x = images((2, 3, 64, 56), seed=15, dtype=torch.float64)
    module = resnet18.layers[layer]
    seed = signed_seed(resnet18.model, module, x)
    ours = dn.Deconvnet(resnet18, rule=rule).project_seed(x, layer, seed)
    assert_equal_maps(ours, captum(rule, resnet18.model, module, x, seed), f"{rule} at {layer}")
    assert no_forward_hooks(resnet18)


def test_resnet18_guided_class_score(resnet18):
    """The top class score, as the analyses seed it: guided backprop equals Captum's, and is not the gradient."""
    x = images((1, 3, 64, 64), seed=16, dtype=torch.float64)
    p = dn.Deconvnet(resnet18, rule="guided").project(x, "fc", "max")
    seed = torch.zeros(1, 1000, dtype=torch.float64)
    seed[0, int(p.channel[0])] = 1.0
    ref = captum("guided", resnet18.model, resnet18.layers["fc"], x, seed) * p.activation[0]
    assert_equal_maps(p.projection, ref, "guided class score")
    assert_differ(p.projection, dn.Deconvnet(resnet18, rule="gradient").project(x, "fc", "max").projection,
                  "guided vs gradient")


# --- functional ReLUs: GoogLeNet as torchvision ships it --------------------------------------------------

class _HandGuided(torch.autograd.Function):
    """Guided backprop at one rectifier, written out: forward relu(x); backward R [x > 0] [R > 0]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, r):
        (x,) = ctx.saved_tensors
        return r * (x > 0).to(r) * (r > 0).to(r)


class _HandDeconv(torch.autograd.Function):
    """The deconvnet at one rectifier, written out: forward relu(x); backward R [R > 0]."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, r):
        return r * (r > 0).to(r)


def hand_written_googlenet(model, rule):
    """A copy of GoogLeNet whose every ``BasicConv2d`` (the only place it rectifies) applies the rule by hand."""
    ref = copy.deepcopy(model)
    step = {"guided": _HandGuided.apply, "deconvnet": _HandDeconv.apply}[rule]
    for m in ref.modules():
        if type(m).__name__ == "BasicConv2d":
            m.forward = types.MethodType(lambda self, x: step(self.bn(self.conv(x))), m)
    return ref


def autograd_map(model, module, x, seed):
    """Plain autograd: d<seed, output of module>/dx."""
    x = x.clone().requires_grad_(True)
    kept = []
    handle = module.register_forward_hook(lambda m, i, o: kept.append(o) if not kept else None)
    try:
        model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(kept[0], x, seed)
    return g


@pytest.fixture(scope="module")
def googlenet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's note on GoogLeNet's initialisation
        net = dn.load_model("googlenet", "random")
    net.to(dtype=torch.float64)
    assert not any(isinstance(m, nn.ReLU) for m in net.model.modules())  # every ReLU is F.relu
    return net


@pytest.mark.parametrize("layer", ["inception3b", "inception4a.branch2.1", "inception5b", "fc"])
def test_googlenet_functional_relus_are_honoured_by_every_rule(googlenet, layer):
    x = images((1, 3, 96, 96), seed=17, dtype=torch.float64)
    model, module = googlenet.model, googlenet.layers[layer]
    seed = signed_seed(model, module, x, seed=3)
    ours = {rule: dn.Deconvnet(googlenet, rule=rule).project_seed(x, layer, seed) for rule in RULES}
    modular = modular_googlenet(model)
    modular_module = dict(modular.named_modules())[layer]
    for rule in ("guided", "deconvnet"):
        # two independent references: module ReLUs under Captum, and the rule written by hand under autograd
        assert_equal_maps(ours[rule], captum(rule, modular, modular_module, x, seed),
                          f"{rule} vs Captum (module ReLUs)")
        hand = hand_written_googlenet(model, rule)
        assert_equal_maps(ours[rule], autograd_map(hand, dict(hand.named_modules())[layer], x, seed),
                          f"{rule} vs by hand")
    # the gradient needs no hook: plain autograd on the model as shipped, and Captum's Saliency, agree with ours
    assert_equal_maps(ours["gradient"], autograd_map(model, module, x, seed), "gradient vs autograd")
    assert_equal_maps(ours["gradient"], captum("gradient", model, module, x, seed), "gradient vs Saliency")
    # Captum on the model as shipped sees no ReLU: its guided backprop and deconvolution are the plain gradient
    for rule in ("guided", "deconvnet"):
        shipped = captum(rule, model, module, x, seed)
        assert_differ(shipped, ours[rule], f"Captum {rule} on functional ReLUs")
        assert_equal_maps(shipped, ours["gradient"], f"Captum {rule} on functional ReLUs is the gradient")
    assert no_forward_hooks(googlenet)


def test_densenet121_final_functional_relu_under_guided_backprop():
    """DenseNet's ReLUs are modules except the last one (``F.relu`` before pooling); Captum misses that one."""
    model = random_model(torchvision.models.densenet121, 3)
    net = dn.wrap(model)
    x = images((1, 3, 48, 48), seed=18, dtype=torch.float64)
    seed = signed_seed(model, model.classifier, x)
    ours = dn.Deconvnet(net, rule="guided").project_seed(x, "classifier", seed)
    reference = modular_densenet(model)
    assert_equal_maps(ours, captum("guided", reference, reference.classifier, x, seed), "guided vs module ReLUs")
    assert_differ(captum("guided", model, model.classifier, x, seed), ours, "Captum on the shipped DenseNet")
