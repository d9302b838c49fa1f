"""Exact or refused at the edges of the allow-list: spellings that look linear, code the engines cannot see,
modules that are not what their type says, a second user of the model, and what lies off the path."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

import deconvnet as dn
from deconvnet.engine import UnsupportedLayerError

from conftest import Calls, _small_net, images, no_forward_hooks


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.double().eval()


class Body(nn.Module):
    """conv -> (something) -> conv: ``middle`` is what each test puts between them."""

    def __init__(self, middle):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.middle = middle

    def forward(self, x):
        return self.conv2(self.middle(self.conv1(x)))


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _project(model, layer="conv2", hw=12, seed=3):
    return dn.Deconvnet(_seeded(model)).project(images((1, 3, hw, hw), seed=seed, dtype=torch.float64), layer, 1,
                                                (5, 6)).projection


def _reference(relu_seed_layer=True, model=None, hw=12, seed=3):
    """The deconvnet of conv1 -> ReLU -> conv2 by hand: conv_transpose, relu of the signal, conv_transpose."""
    x = images((1, 3, hw, hw), seed=seed, dtype=torch.float64)
    a = model.conv2(model.conv1(x).relu())
    s = torch.zeros_like(a)
    s[0, 1, 5, 6] = a[0, 1, 5, 6]
    r = F.conv_transpose2d(s, model.conv2.weight, padding=1).relu()
    return F.conv_transpose2d(r, model.conv1.weight, padding=1)


# --- item: spellings that look linear and are not -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["floor", "trunc"])
def test_rounding_division_is_refused(mode):
    with pytest.raises(UnsupportedLayerError, match=rf"divides with rounding_mode='{mode}', which rounds"):
        _project(Body(Lambda(lambda x: torch.div(x, 2, rounding_mode=mode))))
    plain = _project(Body(Lambda(lambda x: torch.div(x, 2, rounding_mode=None).relu() * 2)))
    m = _seeded(Body(nn.ReLU()))
    torch.testing.assert_close(plain, _reference(model=m), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
def test_copies_without_a_path_and_no_grad_branches_are_refused():
    with pytest.raises(UnsupportedLayerError, match=r"Tensor\.new_tensor.*a copy without their path"):
        _project(Body(Lambda(lambda x: x.relu() + x.new_tensor(x))))

    class NoGradBranch(nn.Module):
        def forward(self, x):
            with torch.no_grad():
                z = x * 0.5
            return x.relu() + z

    with pytest.raises(UnsupportedLayerError,
                       match=r"Tensor\.mul, called in module 'middle', runs under torch\.no_grad\(\)"):
        _project(Body(NoGradBranch()))


class StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g


def test_custom_autograd_function_is_refused_by_name():
    with pytest.raises(UnsupportedLayerError, match=r"custom autograd Function .*StraightThrough, whose backward"):
        _project(Body(Lambda(StraightThrough.apply)))


def test_reentrant_checkpoint_is_one_line():
    with pytest.raises(UnsupportedLayerError, match=r"checkpoint\(use_reentrant=True\).*Hint: use_reentrant=False"):
        _project(Body(Lambda(lambda x: checkpoint(torch.relu, x, use_reentrant=True))))


@torch.jit.script
def _scripted_gelu(x):
    return F.gelu(x)


@torch.jit.script
def _scripted_relu(x):
    return F.relu(x)


@pytest.mark.parametrize("fn", [_scripted_gelu, _scripted_relu])
def test_torchscript_functions_and_modules_are_refused(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedLayerError, match=r"code the allow-list cannot see \(a torch\.jit\.script"):
            _project(Body(Lambda(fn)))
        scripted = torch.jit.script(nn.Sequential(nn.ReLU()))
    model = Body(scripted)
    with pytest.raises(UnsupportedLayerError, match=r"module 'middle' is a TorchScript RecursiveScriptModule.*"
                                                    r"Hint: pass the original nn.Module"):
        dn.Deconvnet(model)


@pytest.mark.parametrize("fn", [lambda x: torch.stack([x, torch.zeros_like(x)]).amax(0),
                                lambda x: torch.stack([x - 0.3, 0.3 - x]).amax(0),
                                lambda x: torch.stack([x, -x], -1).max(-1).values,
                                lambda x: torch.cat([x, -x], 1).view(x.shape[0], 2, *x.shape[1:]).amax(1)])
def test_a_max_along_stacked_tensors_is_no_max_pool(fn):
    with pytest.raises(UnsupportedLayerError, match=r"a maximum along a dimension on which tensors were stacked"):
        _project(Body(Lambda(fn)))


def test_max_pools_over_maps_stay_exact():
    """A max over the positions of one map (also of a concatenation of maps) is still a max-pool, with the
    switches: the same as the chain's MaxPool2d."""
    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 5, 3, padding=1)

        def forward(self, x):
            y = self.conv1(x).relu()
            y = torch.cat([y, y * 0.5], 1)
            return self.conv2(F.max_pool2d(y, 2))

    model = _seeded(Pools())
    chain = nn.Sequential(model.conv1, nn.ReLU(), nn.MaxPool2d(2))
    x = images((1, 3, 12, 12), seed=4, dtype=torch.float64)
    got = dn.Deconvnet(model).project(x, "conv2", 1, (2, 3)).projection
    # the reference: the chain engine's unpooling of the two halves, then conv1's adjoint
    a = model.conv2(F.max_pool2d(torch.cat([chain[:2](x)] * 2, 1) * torch.tensor([1.0] * 4 + [0.5] * 4,
                                                                                    dtype=torch.float64).view(1, 8, 1,
                                                                                                              1), 2))
    s = torch.zeros_like(a)
    s[0, 1, 2, 3] = a[0, 1, 2, 3]
    r = F.conv_transpose2d(s, model.conv2.weight, padding=1)
    y = chain[:2](x)
    _, idx = F.max_pool2d(y, 2, return_indices=True)
    up = sum(F.max_unpool2d(part, idx, 2, output_size=y.shape[-2:]) * k for part, k in ((r[:, :4], 1.0), (r[:, 4:],
                                                                                                          0.5)))
    want = F.conv_transpose2d(up.relu(), model.conv1.weight, padding=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# --- item: the chain walk trusts only what it steps down ------------------------------------------------------

class SigmoidReLU(nn.ReLU):
    def forward(self, x):
        return torch.sigmoid(x)


class SquaredConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) ** 2


class SquaredConvInside(nn.Conv2d):
    def _conv_forward(self, x, w, b):
        return super()._conv_forward(x, w, b) ** 2


def _chain(first=None, relu=None):
    return _seeded(nn.Sequential(first or nn.Conv2d(3, 4, 3, padding=1), relu or nn.ReLU(),
                                 nn.Conv2d(4, 5, 3, padding=1)))


@pytest.mark.parametrize("model,match", [
    (lambda: _chain(relu=SigmoidReLU()), r"module '1' \(SigmoidReLU\) is a ReLU with its own forward"),
    (lambda: _chain(first=SquaredConv(3, 4, 3, padding=1)),
     r"module '0' \(SquaredConv\) is a Conv2d with its own forward"),
    (lambda: _chain(first=SquaredConvInside(3, 4, 3, padding=1)), r"is a Conv2d with its own _conv_forward"),
])
def test_chain_refuses_subclasses_with_another_forward(model, match):
    x = images((1, 3, 12, 12), seed=5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match + r".*Hint: Deconvnet\(model, engine='graph'\)"):
        dn.Deconvnet(model()).project(x, "2", 1, (5, 6))


def test_chain_refuses_subclasses_in_torchvision_vgg():
    model = torchvision.models.vgg11()
    model.features[1] = SigmoidReLU(inplace=True)
    with pytest.raises(ValueError, match=r"module 'features\.1' \(SigmoidReLU\) is a ReLU with its own forward"):
        dn.Deconvnet(model).project(images((1, 3, 32, 32)), "conv2_1")


def test_chain_accepts_plain_subclasses_exactly():
    class MyReLU(nn.ReLU):
        def extra_repr(self):
            return "mine"

    x = images((1, 3, 12, 12), seed=5, dtype=torch.float64)
    model = _chain(relu=MyReLU())
    got = dn.Deconvnet(model).project(x, "2", 1, (5, 6)).projection
    body = Body(nn.ReLU())
    body.conv1, body.conv2 = model[0], model[2]
    torch.testing.assert_close(got, _reference(model=body, seed=5), rtol=1e-10, atol=1e-12)


def test_chain_refuses_user_hooks_on_the_path_only():
    x = images((1, 3, 12, 12), seed=5, dtype=torch.float64)
    model = _chain()
    handle = model[0].register_forward_hook(lambda m, i, o: o.exp())
    with pytest.raises(ValueError, match=r"module '0' \(Conv2d\) has a forward hook \(.*<lambda>\): the chain walk "
                                         r"cannot see"):
        dn.Deconvnet(model).project(x, "2", 1, (5, 6))
    with pytest.raises(UnsupportedLayerError, match=r"torch\.exp|Tensor\.exp"):  # the graph engine judges the hook
        dn.Deconvnet(model, engine="graph").project(x, "2", 1, (5, 6))
    handle.remove()
    pre = model.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    with pytest.raises(ValueError, match=r"module 'Sequential' \(Sequential\) has a forward pre-hook"):
        dn.Deconvnet(model).project(x, "2", 1, (5, 6))
    pre.remove()
    glob = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        with pytest.raises(ValueError, match=r"a global forward hook is registered"):
            dn.Deconvnet(model).project(x, "2", 1, (5, 6))
    finally:
        glob.remove()
    later = model[2].register_forward_hook(lambda m, i, o: o.exp())  # a hook after the target: off the path
    try:
        body = Body(nn.ReLU())
        body.conv1, body.conv2 = model[0], model[2]
        got = dn.Deconvnet(model).project(x, "1", 1, (5, 6)).projection
        a = model[1](model[0](x))
        s = torch.zeros_like(a)
        s[0, 1, 5, 6] = a[0, 1, 5, 6]
        torch.testing.assert_close(got, F.conv_transpose2d(s.relu(), model[0].weight, padding=1), rtol=1e-10,
                                   atol=1e-12)
    finally:
        later.remove()
    assert no_forward_hooks(dn.wrap(model))


# --- item: a second user of the model ---------------------------------------------------------------------------

def test_the_users_modules_are_left_alone_during_a_call():
    """Inside the call (seen from the model's own forward) the user's modules keep their training flags and
    their parameters' requires_grad: a thread training the model meanwhile sees its model as it left it.
    The projection is that of the model in eval mode (running statistics)."""
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((model.training, model.bn.training, model.conv1.weight.requires_grad))
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn, self.spy = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), Spy()
            self.conv2 = nn.Conv2d(4, 5, 3, padding=1)

        def forward(self, x):
            return self.conv2(self.spy(F.relu(self.bn(self.conv1(x)))))

    model = _seeded(Net()).train()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 1.5)
    stats = model.bn.running_mean.clone(), int(model.bn.num_batches_tracked)
    x = images((2, 3, 12, 12), seed=6, dtype=torch.float64)
    got = dn.Deconvnet(model).project(x, "conv2", 1, (5, 6)).projection
    assert seen and all(s == (True, True, True) for s in seen), seen
    assert torch.equal(model.bn.running_mean, stats[0]) and int(model.bn.num_batches_tracked) == stats[1]
    # the reference: BatchNorm in eval mode is a per-channel scale, by hand
    scale = (model.bn.weight / (model.bn.running_var + model.bn.eps).sqrt()).detach().view(1, 4, 1, 1)
    with torch.no_grad():
        a = model.conv2(F.relu(F.batch_norm(model.conv1(x), model.bn.running_mean, model.bn.running_var,
                                            model.bn.weight, model.bn.bias)))
        s = torch.zeros_like(a)
        s[:, 1, 5, 6] = a[:, 1, 5, 6]
        r = F.conv_transpose2d(s, model.conv2.weight, padding=1).relu() * scale
        want = F.conv_transpose2d(r, model.conv1.weight, padding=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ["chain", "graph"])
def test_a_thread_training_the_model_meanwhile_is_not_disturbed(engine):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.0), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).train()
    x = images((4, 3, 48, 48), seed=7)
    deconv = dn.Deconvnet(model, engine=engine)
    done, errors, flags = threading.Event(), [], set()

    def train():  # forward and backward in training mode (no step: the weights stay those projected)
        try:
            while not done.is_set():
                flags.add((model[1].training, model[0].weight.requires_grad))
                model(x).square().mean().backward()
        except Exception as err:  # noqa: BLE001 (the test reports whatever the trainer met)
            errors.append(err)

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        for _ in range(4):
            deconv.project(x, "3", 2, "max")
    finally:
        done.set()
        trainer.join()
    assert not errors, errors
    assert flags == {(True, True)}, flags
    assert model[0].weight.grad is not None and model[1].training


def test_weights_changed_by_a_trainer_during_a_projection_is_one_line():
    class Step(nn.Module):  # the trainer's optimizer step, as it would land in the middle of a projection
        def forward(self, x):
            with torch.no_grad():
                model[0].weight.add_(0.0)
            return x

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), Step())
    deconv = dn.Deconvnet(model)
    with pytest.raises(ValueError, match=r"the model's weights changed during the projection .*Hint: project a copy"):
        deconv.project(images((1, 3, 12, 12)), "3", 1, "max")


# --- item: only the path to the target counts ---------------------------------------------------------------------

def test_a_head_off_the_path_is_no_obstacle_in_a_sequential():
    model = _seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                                  nn.Flatten(), nn.Linear(5 * 144, 3), nn.Sigmoid()))
    x = images((1, 3, 12, 12), seed=3, dtype=torch.float64)
    got = dn.Deconvnet(model).project(x, "2", 1, (5, 6)).projection
    body = Body(nn.ReLU())
    body.conv1, body.conv2 = model[0], model[2]
    torch.testing.assert_close(got, _reference(model=body), rtol=1e-10, atol=1e-12)
    with pytest.raises(UnsupportedLayerError, match=r"module '5' \(Sigmoid\) has no deconvnet rule"):
        dn.Deconvnet(model).project(x, "5", 1)


def test_a_head_off_the_path_is_no_obstacle_in_a_graph():
    class MultiLabel(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _seeded(Body(nn.ReLU()))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(5, 3)
            self.head = nn.Sigmoid()

        def forward(self, x):
            return self.head(self.fc(self.pool(self.body(x)).flatten(1)))

    model = _seeded(MultiLabel())
    x = images((1, 3, 12, 12), seed=3, dtype=torch.float64)
    got = dn.Deconvnet(model).project(x, "body.conv2", 1, (5, 6)).projection
    torch.testing.assert_close(got, _reference(model=model.body), rtol=1e-10, atol=1e-12)
    assert dn.Deconvnet(model).project(x, "fc", 2).projection.abs().max() > 0
    with pytest.raises(UnsupportedLayerError, match=r"module 'head' \(Sigmoid\) has no deconvnet rule"):
        dn.Deconvnet(model).project(x, "head", 1)


def test_a_sigmoid_head_after_vgg_is_no_obstacle():
    model = torchvision.models.vgg11()
    model.classifier.append(nn.Sigmoid())
    net = dn.wrap(model.eval())
    assert dn.Deconvnet(net).engine == "chain"
    p = dn.Deconvnet(net).project(images((1, 3, 32, 32)), "conv2_1").projection
    assert torch.isfinite(p).all() and p.abs().max() > 0




def test_a_model_on_the_meta_device_is_refused_in_one_sentence():
    with torch.device("meta"):
        model = Calls(F.relu).eval()
    with pytest.raises(ValueError, match=r"^Calls is on the meta device, which holds no weights.*Hint: .*to_empty"):
        dn.Deconvnet(model).project(images((1, 3, 12, 12)), "c2", 0)


def test_refusals_are_whole_sentences():
    with pytest.raises(UnsupportedLayerError) as err:  # refused on the path to the target (off it is no obstacle)
        dn.Deconvnet(torchvision.models.mobilenet_v3_small()).project(images((1, 3, 32, 32)), "features.1")
    # a Hardswish has a declared rule: the refusal names the opt-in (issue 23) in a whole sentence
    assert str(err.value).endswith(".") and "Hint: extend=True (--extend) projects it with the declared rules: " \
        "Hardswish as ReLU" in str(err.value)




# --- 13. seeds and channels the engine cannot take ------------------------------------------------------------------
def test_a_nan_seed_and_a_fractional_channel_are_refused():
    net = _small_net()
    deconv = dn.Deconvnet(net)
    x = torch.rand(1, 3, 16, 16)
    seed = torch.rand(1, 6, 8, 8)
    assert torch.isfinite(deconv.project_seed(x, "4", seed)).all()
    seed[0, 2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf; the first at \(0, 2, 3, 1\), nan\)"):
        deconv.project_seed(x, "4", seed)
    seed[0, 2, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="not finite"):
        deconv.project_seed(x, "4", seed)
    whole = deconv.project_units(x, "4", torch.tensor([0]), torch.tensor([1]), torch.tensor([[2, 3]]))
    same = deconv.project_units(x, "4", torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([[2.0, 3.0]]))
    assert all(torch.equal(getattr(whole, f), getattr(same, f))  # whole floats are whole numbers
               for f in ("windows", "origins", "activations"))
    for kwargs, message in [(dict(channel=torch.tensor([1.7])), "channel 1.7 is not a whole number"),
                            (dict(channel=[1.7]), "channel 1.7 is not a whole number"),
                            (dict(unit=torch.tensor([[2.0, float("nan")]])), "unit nan is not a whole number"),
                            (dict(image=torch.tensor([True])), "image must hold integers")]:
        args = {**dict(image=torch.tensor([0]), channel=torch.tensor([1]), unit=torch.tensor([[2, 3]])), **kwargs}
        with pytest.raises(ValueError, match=message):
            deconv.project_units(x, "4", args["image"], args["channel"], args["unit"])
