"""The functions a forward may call (engine/ops.py): rectifiers in every spelling get the ReLU rule, linear and max
spellings are projected exactly, every other non-linear function is refused by name."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconvnet as dn
from deconvnet.engine import UnsupportedLayerError, graph

from conftest import Calls, assert_exact, images, no_forward_hooks, reference

SPELLINGS = {
    "F.relu": lambda x: F.relu(x),
    "clamp(min=0)": lambda x: x.clamp(min=0),
    "torch.clamp_min": lambda x: torch.clamp_min(x, 0),
    "torch.clip(0)": lambda x: torch.clip(x, 0),
    "F.threshold(0, 0)": lambda x: F.threshold(x, 0.0, 0.0),
    "nn.Threshold(0, 0)": nn.Threshold(0.0, 0.0),
    "clamp_(min=0)": lambda x: x.clone().clamp_(min=0),
}


class Spelled(nn.Module):
    def __init__(self, relu):
        super().__init__()
        self.relu = relu
        self.c1, self.c2 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3)

    def forward(self, x):
        return self.c2(self.relu(self.c1(x)))




NON_RECTIFIERS = {
    "torch.exp": (torch.exp, r"torch\.exp"),
    "expit": (torch.special.expit, r"torch\.special\.expit|sigmoid"),
    "nn.Softsign": (nn.Softsign(), r"Softsign"),
    "nn.RReLU": (nn.RReLU(), r"RReLU"),
    "nn.Hardshrink": (nn.Hardshrink(), r"Hardshrink"),
    "torch.abs": (torch.abs, r"torch\.abs"),
    "torch.square": (torch.square, r"torch\.square"),
    "nn.RMSNorm": (nn.RMSNorm(4), r"RMSNorm"),
    "F.rms_norm": (lambda y: F.rms_norm(y, (y.shape[-1],)), r"RMSNorm \(F\.rms_norm\)"),
    "x * x": (lambda y: y * y, r"Tensor\.mul.*two tensors that both depend on the input"),
    "a gate": (lambda y: y * y.mean((2, 3), keepdim=True), r"Tensor\.mul.*two tensors"),
    "maximum": (lambda y: torch.maximum(y, y.flip(2)), r"torch\.maximum"),
    "max of two": (lambda y: torch.max(y, y.flip(2)), r"elementwise maximum of two tensors"),
    "x / x.sum()": (lambda y: y / y.sum(), r"Tensor\.div.*another of its arguments"),
    "detach": (lambda y: y.detach() + y, r"Tensor\.detach"),
    "mask": (lambda y: y * (y > 0), r"Tensor\.gt"),
    "int cast": (lambda y: y.to(torch.int64).to(y.dtype), r"Tensor\.to.*torch\.int64"),
    "item": (lambda y: y * y.max().item(), r"Tensor\.item"),
    "clamp(0, 6)": (lambda y: y.clamp(0, 6), r"Tensor\.clamp.*bounds other than"),
    "threshold(0.1)": (lambda y: F.threshold(y, 0.1, 0.0), r"F\.threshold.*values other than"),
}


LINEAR_SPELLINGS = {
    "scale and shift": lambda y: 2 * y - 1 + y / 3,
    "cat of slices": lambda y: torch.cat([y[:, :2], y[:, 2:]], 1),
    "view and permute": lambda y: y.permute(0, 2, 3, 1).reshape(y.shape[0], -1,
                                                                y.shape[1]).transpose(1, 2).reshape(y.shape),
    "pad and crop": lambda y: F.pad(y, (1, 1, 1, 1))[..., 1:-1, 1:-1],
    "mean over channels": lambda y: y + y.mean(1, keepdim=True),
    "interpolate": lambda y: F.interpolate(F.avg_pool2d(y, 2), scale_factor=2, mode="bilinear"),
    "einsum with a constant": lambda y: torch.einsum("bchw,c->bchw", y, torch.arange(4.0, dtype=y.dtype)),
    "setitem": lambda y: _halves(y),
    "where, constant condition": lambda y: torch.where(torch.ones_like(y, dtype=torch.bool), y, 0.0),
    "amax (global max-pool)": lambda y: y + y.amax((2, 3), keepdim=True),
}


def _halves(y):
    z = y.new_zeros(y.shape)
    z[:, :2] = y[:, 2:]
    z[:, 2:] += 3 * y[:, :2]
    return z


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_rectifiers_in_every_spelling_get_the_relu_rule(rule):
    torch.manual_seed(5)
    base = Spelled(SPELLINGS["F.relu"]).eval()
    x = images((1, 3, 16, 16), seed=6)
    expected = dn.Deconvnet(base, rule=rule).project(x, "c2", 1).projection
    for name, relu in SPELLINGS.items():
        model = Spelled(relu).eval()
        model.load_state_dict(base.state_dict())
        got = dn.Deconvnet(model, rule=rule).project(x, "c2", 1).projection
        assert torch.equal(got, expected), name
    clamp6 = Spelled(lambda x: x.clamp(0, 6)).eval()
    with pytest.raises(UnsupportedLayerError,
                       match=r"Tensor\.clamp, called in the forward of Spelled itself, clamps at bounds"):
        dn.Deconvnet(clamp6).project(x, "c2", 1)


@pytest.mark.parametrize("name", list(NON_RECTIFIERS))
def test_every_non_linear_function_is_refused_by_name(name):
    fn, pattern = NON_RECTIFIERS[name]
    model = Calls(fn).eval()
    x = images((1, 3, 12, 12), seed=7)
    with pytest.raises(UnsupportedLayerError) as err:
        dn.Deconvnet(model).project(x, "c2", 0)
    assert err.match(pattern) and str(err.value).endswith(".")
    # the allow-list alone, without the module check that comes first: refused by the function
    with pytest.raises(UnsupportedLayerError, match=r"called in (module 'block'|the forward of Calls itself)"):
        graph.forward(model, x, {"c2": model.c2}, grad=True)
    with pytest.raises(UnsupportedLayerError):  # a record (no autograd graph) is refused as well
        graph.forward(model, x, {"c2": model.c2}, grad=False)
    assert no_forward_hooks(dn.wrap(model))


@pytest.mark.parametrize("name", list(LINEAR_SPELLINGS))
def test_linear_and_max_spellings_are_projected_exactly(name):
    fn = LINEAR_SPELLINGS[name]
    torch.manual_seed(8)
    model = Calls(fn).double().eval()
    x = images((1, 3, 12, 12), seed=9).double()
    seed = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ours = dn.Deconvnet(model).project_seed(x, "c2", seed)
    assert_exact(ours, reference(model, x, model.c2, seed), name)
