"""The declared rules of ``Deconvnet(net, extend=True)`` against an independent float64 reference.

The reference is written here and shares none of the engine's code: a copy of the model whose activations
are modules with a custom autograd Function (the forward the activation's own, the backward the rule's at a
ReLU of the same input), whose gates (sigmoid, hardsigmoid) return detached outputs and whose LayerNorms
divide by a detached standard deviation; the projection is then plain autograd of the target unit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import deconvnet as dn
from deconvnet.engine import UnsupportedLayerError

ACTIVATIONS = ("ReLU", "SiLU", "GELU", "Hardswish")
GATES = ("Sigmoid", "Hardsigmoid")


class _RefRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, act, guided):
        ctx.save_for_backward(x)
        ctx.guided = guided
        return act(x)

    @staticmethod
    def backward(ctx, r):
        (x,) = ctx.saved_tensors
        out = r.clamp(min=0)
        return (out * (x > 0).to(r.dtype) if ctx.guided else out), None, None


class _RefActivation(nn.Module):
    def __init__(self, act: nn.Module, guided: bool) -> None:
        super().__init__()
        self.act, self.guided = copy.deepcopy(act), guided
        if hasattr(self.act, "inplace"):
            self.act.inplace = False

    def forward(self, x):
        return _RefRule.apply(x, self.act, self.guided)


class _RefGate(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x).detach()


class _RefLayerNorm(nn.Module):
    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.ln, self.first = ln, type(ln).__name__ == "LayerNorm2d"

    def forward(self, x):
        if self.first:
            x = x.permute(0, 2, 3, 1)
        dims = tuple(range(-len(self.ln.normalized_shape), 0))
        mean = x.mean(dims, keepdim=True)
        sd = ((x - mean).pow(2).mean(dims, keepdim=True) + self.ln.eps).sqrt().detach()
        y = (x - mean) / sd * self.ln.weight + self.ln.bias
        return y.permute(0, 3, 1, 2) if self.first else y


def reference(model: nn.Module, guided: bool) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    for name, m in list(ref.named_modules()):
        kind = type(m).__name__
        if kind in ACTIVATIONS:
            new = _RefActivation(m, guided)
        elif kind in GATES:
            new = _RefGate(m)
        elif isinstance(m, nn.LayerNorm):
            new = _RefLayerNorm(m)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, leaf, new)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def reference_projection(model: nn.Module, x: torch.Tensor, layer: str, channel: int, unit, guided: bool):
    """The unit's projection: autograd of the reference copy, seeded with the unit's activation."""
    ref = reference(model, guided)
    kept = {}
    handle = ref.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.setdefault("y", o))
    x = x.clone().requires_grad_(True)
    try:
        ref(x)
    finally:
        handle.remove()
    y = kept["y"]
    if unit == "max":
        w = y.shape[-1]
        flat = int(y[0, channel].detach().flatten().argmax())
        unit = (flat // w, flat % w)
    seed = torch.zeros_like(y)
    seed[0, channel, unit[0], unit[1]] = y[0, channel, unit[0], unit[1]].detach()
    (g,) = torch.autograd.grad(y, x, seed)
    return g, unit


MODELS = [  # (arch, layer, channel, the refusal names this)
    ("convnext_tiny", "features.3", 5, "LayerNorm"),
    ("efficientnet_b0", "features.4", 7, "SiLU"),
    ("mobilenet_v3_small", "features.6", 3, "Hardswish"),
    ("regnet_y_400mf", "trunk_output.block2", 11, "Sigmoid"),
]


@pytest.mark.parametrize("arch,layer,channel,named", MODELS)
def test_declared_rules_equal_an_independent_float64_reference(arch, layer, channel, named):
    net = dn.load_model(arch, "random", dtype=torch.float64)
    x = torch.randn(1, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedLayerError, match=rf"{named}.*Hint: extend=True \(--extend\)"):
        dn.Deconvnet(net).project(x, layer, channel)
    for rule, guided in (("deconvnet", False), ("guided", True)):
        deconv = dn.Deconvnet(net, rule=rule, extend=True)
        for position in ("max", (0, 0)):  # the strongest unit, and a unit at the border
            p = deconv.project(x, layer, channel, position)
            want, unit = reference_projection(net.model, x, layer, channel, position, guided)
            assert tuple(p.position[0].tolist()) == unit
            scale = want.abs().max()
            assert scale > 0
            assert (p.projection - want).abs().max() <= 1e-10 * scale, (arch, rule, position)
            assert p.declared and all(v > 0 for v in p.declared.values())
    assert "declared rules: " in net.describe()


def test_resnet18_is_bit_identical_with_and_without_extend():
    net = dn.load_model("resnet18", "random")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for rule in ("deconvnet", "guided"):
        a = dn.Deconvnet(net, rule=rule).project(x, "layer3", 4)
        b = dn.Deconvnet(net, rule=rule, extend=True).project(x, "layer3", 4)
        assert torch.equal(a.projection, b.projection)
        assert a.declared == b.declared == {}
    assert "declared rules" not in net.describe()


def test_what_has_no_declared_rule_stays_refused_with_extend():
    # the call with no rule lies on the path to the target ("out"); only the path counts, so the conv before
    # it still projects
    class Exp(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 4, 3), nn.Identity()

        def forward(self, x):
            return self.out(self.conv(x).exp())

    class Square(nn.Module):  # a product of two input-dependent tensors, neither a gate
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 4, 3), nn.Identity()

        def forward(self, x):
            y = self.conv(x)
            return self.out(y * y)

    class GateAdded(nn.Module):  # a sigmoid used other than as a factor of a product
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 4, 3), nn.Identity()

        def forward(self, x):
            y = self.conv(x)
            return self.out(y + torch.sigmoid(y))

    x = torch.randn(1, 3, 16, 16)
    for model, what in ((Exp(), "exp"), (Square(), "multiplies two tensors"), (GateAdded(), "gate")):
        with pytest.raises(UnsupportedLayerError, match=what):
            dn.Deconvnet(model, extend=True).project(x, "out", 0)
        p = dn.Deconvnet(model, extend=True).project(x, "conv", 0)
        assert p.projection.abs().sum() > 0


def test_functional_spellings_and_gate_products_are_declared():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.out = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 1), nn.Identity()

        def forward(self, x):
            y = torch.nn.functional.gelu(self.c1(x), approximate="tanh")
            y = torch.nn.functional.silu(y) * torch.sigmoid(self.c2(y).mean((2, 3), keepdim=True))
            return self.out(torch.nn.functional.layer_norm(y.permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2))

    p = dn.Deconvnet(Net(), extend=True).project(torch.randn(1, 3, 12, 12), "out", 2)
    assert p.declared == {"GELU as ReLU": 1, "SiLU as ReLU": 1, "sigmoid gate held constant": 1,
                          "LayerNorm divisor held constant": 1}


def test_the_gradient_rule_is_plain_autograd_without_the_opt_in():
    model = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model = model.double()
    p = dn.Deconvnet(model, rule="gradient").project(x, "features.3", 2, (1, 1))
    xx = x.clone().requires_grad_(True)
    kept = {}
    h = model.features[3].register_forward_hook(lambda m, i, o: kept.setdefault("y", o))
    try:
        model(xx)
    finally:
        h.remove()
    seed = torch.zeros_like(kept["y"])
    seed[0, 2, 1, 1] = kept["y"][0, 2, 1, 1].detach()
    (g,) = torch.autograd.grad(kept["y"], xx, seed)
    assert (p.projection - g).abs().max() <= 1e-10 * g.abs().max()


def test_old_rule_spellings_are_accepted():
    assert dn.Deconvnet(dn.load_model("resnet18", "random"), rule="guided_backprop").rule == "guided"


@pytest.mark.parametrize("arch,layer", [("timm:convnext_nano", "stages.1"), ("timm:efficientnet_b0", "blocks.2")])
def test_timm_models_project_with_extend(arch, layer):
    pytest.importorskip("timm")
    net = dn.load_model(arch, "random", dtype=torch.float64)
    deconv = dn.Deconvnet(net, extend=True)
    assert layer in deconv.default_layers()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    p = deconv.project(x, layer, 3)
    want, _ = reference_projection(net.model, x, layer, 3, tuple(p.position[0].tolist()), False)
    assert (p.projection - want).abs().max() <= 1e-10 * want.abs().max()
    assert p.declared


def test_timm_memory_efficient_activations_are_refused_by_name():
    timm = pytest.importorskip("timm")
    from timm.layers.activations_me import SwishMe

    model = nn.Sequential(nn.Conv2d(3, 4, 3), SwishMe(), nn.Conv2d(4, 4, 3))
    with pytest.raises(UnsupportedLayerError, match="memory-efficient SiLU"):
        dn.Deconvnet(model, extend=True).project(torch.randn(1, 3, 12, 12), "2", 0)
    assert timm


def test_vision_transformers_stay_refused_naming_attention_and_token_maps():
    class Attend(nn.Module):  # the smallest attention over a conv's token map
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 4, stride=4), nn.Identity()
            self.attention = nn.MultiheadAttention(8, 2)

        def forward(self, x):
            t = self.conv(x).flatten(2).permute(2, 0, 1)  # (tokens, batch, channels)
            return self.out(self.attention(t, t, t)[0].permute(1, 2, 0).reshape(x.shape[0], 8, 4, 4))

    x = torch.randn(1, 3, 16, 16)
    for extend in (False, True):
        with pytest.raises(UnsupportedLayerError, match="attention is refused with and without extend=True.*token"):
            dn.Deconvnet(Attend(), extend=extend).project(x, "out", 0)
