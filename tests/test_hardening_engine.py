"""Exact or refused: the engine tried as a hostile user would (issue #18).

Every model the engine accepts is projected exactly (checked against plain autograd with the test's own
ReLU rule, in float64); every other is refused by name. Nothing here downloads.
"""

import contextlib
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import deconvnet as dn
from deconvnet.engine import UnsupportedLayerError
from deconvnet.engine import graph
from deconvnet.models.weights import WeightsError

from conftest import images, no_forward_hooks


class RefDeconvReLU(torch.autograd.Function):
    """The test's own deconvnet ReLU: forward relu, backward relu of the signal."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, r):
        return torch.where(r > 0, r, torch.zeros_like(r))


class RefReLU(nn.Module):
    def forward(self, x):
        return RefDeconvReLU.apply(x)


def reference(model, x, layer_module, seed):
    """Plain autograd (no mode, no engine) through ``model`` with its ReLU modules swapped for ``RefReLU``:
    the deconvnet projection of ``seed`` placed on ``layer_module``'s output."""
    import copy

    ref = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    target = names[layer_module]
    for name, m in list(ref.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, child_name, RefReLU())
    out = {}
    handle = ref.get_submodule(target).register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    x = x.detach().clone().requires_grad_(True)
    try:
        ref(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out["y"], x, seed)
    return g


def assert_exact(ours, ref, what, tol=1e-12):
    scale = ref.abs().max()
    assert scale > 0, f"{what}: the reference is all zero"
    err = (ours - ref).abs().max() / scale
    assert err <= tol, f"{what}: max relative difference {err:.3g}"


# 1. a model of fixed input size ----------------------------------------------------------------------------

class CifarNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial network: 32x32 inputs only (``Linear(400, 120)`` after two pools)."""

    def __init__(self, relu=F.relu):
        super().__init__()
        self.relu = relu
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def test_a_fixed_size_model_is_projected_at_its_own_size():
    torch.manual_seed(0)
    model = CifarNet().double().eval()
    x = images((2, 3, 32, 32), seed=1).double()
    deconv = dn.Deconvnet(model)
    for layer in ("fc1", "conv2", "fc3"):
        p = deconv.project(x, layer, "max")
        act = dict(model.named_modules())[layer]
        out = {}
        h = act.register_forward_hook(lambda m, i, o: out.setdefault("y", o.detach()))
        model(x)
        h.remove()
        seed = torch.zeros_like(out["y"])
        for b in range(2):
            c = int(p.channel[b])
            if seed.dim() == 4:
                r, q = (int(v) for v in p.position[b])
                seed[b, c, r, q] = out["y"][b, c, r, q]
            else:
                seed[b, c] = out["y"][b, c]
        ref_model = CifarNet(relu=RefDeconvReLU.apply).double().eval()
        ref_model.load_state_dict(model.state_dict())
        assert_exact(p.projection, reference(ref_model, x, dict(ref_model.named_modules())[layer], seed), layer)
    assert deconv.spatial_layers() == ["conv1", "pool", "conv2"]  # probed at 32x32, which the model takes
    assert dn.wrap(model).output_shapes()["fc1"] == (1, 120)


# 2. inputs that are not RGB --------------------------------------------------------------------------------

def small_convnet(channels):
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                         nn.ReLU()).double().eval()


class Graphed(nn.Module):
    """The same layers called from a forward (a graph, not a chain)."""

    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq[4](self.seq[3](self.seq[2](F.relu(self.seq[0](x)))))


@pytest.mark.parametrize("channels", [1, 4])
def test_models_of_one_or_four_channels_are_projected_exactly(channels, tmp_path):
    import matplotlib.pyplot as plt

    seq = small_convnet(channels)
    x = images((2, channels, 24, 24), seed=4).double()
    chain, graphed = dn.Deconvnet(seq), dn.Deconvnet(Graphed(seq))
    assert chain.engine == "chain" and graphed.engine == "graph"
    p_chain, p_graph = chain.project(x, "3", 2), graphed.project(x, "seq.3", 2)
    seed = torch.zeros(2, 8, 10, 10, dtype=torch.float64)
    out = seq[:4](x).detach()
    for b in range(2):
        r, c = (int(v) for v in p_chain.position[b])
        seed[b, 2, r, c] = out[b, 2, r, c]
    ref = reference(seq, x, seq[3], seed)
    assert p_chain.projection.shape == (2, channels, 24, 24)
    assert_exact(p_chain.projection, ref, "chain")
    assert_exact(p_graph.projection, ref, "graph")
    fig = dn.show(p_graph)  # a 1-channel projection in gray; other channel counts summed, and said so
    footer = fig.get_supxlabel() if hasattr(fig, "get_supxlabel") else fig._supxlabel.get_text()
    assert ("grayscale model" in footer) if channels == 1 else ("4-channel model" in footer and "sum" in footer)
    fig.savefig(tmp_path / f"show_{channels}.png")
    plt.close(fig)


def test_grayscale_preprocessing_and_refusals():
    gray = dn.wrap(small_convnet(1).float())
    assert gray.preprocessing.channels == 1 and "grayscale" in gray.provenance["source"]
    x = gray.preprocess("astronaut")  # the default size, as the CLI's: 224
    rgb = dn.wrap(small_convnet(3).float()).preprocess("astronaut")  # torchvision mean/std
    assert x.shape == (1, 1, 224, 224) and rgb.shape == (1, 3, 224, 224)
    rgb01 = rgb * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    luma = (rgb01 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(x, luma, atol=1e-5, rtol=0)
    assert gray.deprocess(x).shape == (1, 3, 224, 224)
    four = dn.wrap(small_convnet(4).float())
    with pytest.raises(ValueError, match=r"takes 4-channel inputs.*Hint: build the \(B, 4, H, W\) input tensor yourself"):
        four.preprocess("astronaut")
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 1, H, W\), got \(1, 3, 16, 16\)"):
        dn.Deconvnet(gray).project(torch.zeros(1, 3, 16, 16), "0")


def test_one_default_size_everywhere(vgg16):
    resnet = dn.load_model("resnet18", "random")
    assert resnet.preprocess("chelsea").shape == vgg16.preprocess("chelsea").shape == (1, 3, 224, 224)
    assert vgg16.preprocess("chelsea", size=None).shape == (1, 3, 300, 451)  # None keeps the photograph


# 3. rectifiers spelled otherwise -----------------------------------------------------------------------------

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
    with pytest.raises(UnsupportedLayerError, match=r"Tensor\.clamp, called in the forward of Spelled itself, clamps at bounds"):
        dn.Deconvnet(clamp6).project(x, "c2", 1)


# 4. the allow-list ----------------------------------------------------------------------------------------

class Calls(nn.Module):
    """A conv, then ``fn`` (a function or a module), then a conv."""

    def __init__(self, fn):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.block = fn if isinstance(fn, nn.Module) else None
        self.fn = fn

    def forward(self, x):
        y = self.c1(x)
        return self.c2(self.block(y) if self.block is not None else self.fn(y))


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


LINEAR_SPELLINGS = {
    "scale and shift": lambda y: 2 * y - 1 + y / 3,
    "cat of slices": lambda y: torch.cat([y[:, :2], y[:, 2:]], 1),
    "view and permute": lambda y: y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, y.shape[1]).transpose(1, 2).reshape(y.shape),
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


@pytest.mark.parametrize("name", list(LINEAR_SPELLINGS))
def test_linear_and_max_spellings_are_projected_exactly(name):
    fn = LINEAR_SPELLINGS[name]
    torch.manual_seed(8)
    model = Calls(fn).double().eval()
    x = images((1, 3, 12, 12), seed=9).double()
    seed = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ours = dn.Deconvnet(model).project_seed(x, "c2", seed)
    assert_exact(ours, reference(model, x, model.c2, seed), name)


def torchvision_on_meta(arch):
    """A torchvision classifier whose parameters and buffers live on the meta device (nothing allocated)."""
    old_p, old_b = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(self, name, param):
        old_p(self, name, None if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

    def register_buffer(self, name, buf, persistent=True):
        old_b(self, name, None if buf is None else buf.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torchvision.models.get_model_builder(arch)(weights=None).eval()
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = old_p, old_b


#: the torchvision families built of convolutions, linear layers, BatchNorm, ReLUs, max- and average-pools
PROJECTABLE = ("alexnet", "vgg", "resnet", "resnext", "wide_resnet", "densenet", "googlenet", "inception_v3",
               "mnasnet", "shufflenet_v2", "squeezenet", "regnet_x")


@pytest.mark.slow
def test_every_torchvision_classifier_is_projected_or_refused_by_name():
    """Each classifier's whole forward under the mode, on the meta device: accepted exactly when its family
    is built of linear maps, ReLUs and max-pools; otherwise refused, by the module check and by the
    allow-list of functions alone, naming the function and where it is called."""
    verdicts, by_modules = {}, set()
    for arch in torchvision.models.list_models(module=torchvision.models):
        model = torchvision_on_meta(arch)
        side = 224 if arch.startswith(("vit", "swin", "maxvit")) else (80 if arch.startswith("inception") else 64)
        x = torch.zeros(1, 3, side, side, device="meta")
        try:
            graph.check_modules(model)
        except UnsupportedLayerError:
            by_modules.add(arch)
        try:
            graph.forward(model, x, {"output": model}, grad=True)  # the allow-list alone, the whole forward
            verdicts[arch] = "projected"
        except UnsupportedLayerError as err:
            assert "called in" in str(err) and str(err).endswith("."), (arch, str(err))
            verdicts[arch] = "refused"
        assert no_forward_hooks(dn.wrap(model, name=arch)), arch
    expected = {arch: "projected" if arch.startswith(PROJECTABLE) else "refused" for arch in verdicts}
    assert verdicts == expected, {a: v for a, v in verdicts.items() if expected[a] != v}
    assert not {a for a in by_modules if verdicts[a] == "projected"}  # the allow-list alone refuses them all
    assert sum(v == "projected" for v in verdicts.values()) >= 40 and sum(v == "refused" for v in verdicts.values()) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer", [("shufflenet_v2_x0_5", "stage3"), ("mnasnet0_5", "layers.12"),
                                        ("squeezenet1_1", "features.12"), ("regnet_x_400mf", "trunk_output.block3")])
def test_accepted_torchvision_families_are_exact(arch, layer):
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(11)
        model = torchvision.models.get_model_builder(arch)(weights=None).double().eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = images((1, 3, 64, 64), seed=12).double()
    module = model.get_submodule(layer)
    out = {}
    h = module.register_forward_hook(lambda m, i, o: out.setdefault("y", o.detach()))
    model(x)
    h.remove()
    seed = torch.rand_like(out["y"])
    ours = dn.Deconvnet(model).project_seed(x, layer, seed)
    assert_exact(ours, reference(model, x, module, seed), arch)


# 5. torch.compile ----------------------------------------------------------------------------------------

def test_a_compiled_model_is_projected_through_its_original(resnet18_random):
    x = images((1, 3, 64, 64), seed=13)
    expected = dn.Deconvnet(resnet18_random).project(x, "layer2", 5).projection
    compiled = torch.compile(resnet18_random)  # lazy: nothing is compiled unless it is called
    deconv = dn.Deconvnet(compiled)
    assert deconv.net.model is resnet18_random
    assert torch.equal(deconv.project(x, "layer2", 5).projection, expected)
    assert torch.equal(deconv.project(x, "_orig_mod.layer2", 5).projection, expected)


@pytest.fixture
def resnet18_random():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18().eval()


# 6. model surgery ------------------------------------------------------------------------------------------

def test_model_surgery_is_followed(resnet18_random, vgg16):
    x = images((1, 3, 64, 64), seed=14)
    dn.Deconvnet(resnet18_random).project(x, "fc")
    resnet18_random.fc = nn.Linear(512, 10)
    p = dn.Deconvnet(resnet18_random).project(x, "fc", "max")
    assert 0 <= int(p.channel[0]) < 10
    assert dn.Deconvnet(resnet18_random).project(x, resnet18_random.fc, 3).channel.tolist() == [3]
    net = dn.load_model("resnet18", "random")
    assert "layer4.0.conv1" in net.output_shapes()
    net.model.layer4, net.model.fc = nn.Identity(), nn.Linear(256, 4)  # a Net that was held on to follows too
    shapes = dn.Deconvnet(net).net.output_shapes()
    assert shapes["avgpool"] == (1, 256, 1, 1) and shapes["fc"] == (1, 4) and "layer4.0.conv1" not in shapes
    chain = dn.load_vgg("vgg11", "random")
    chain.model.classifier[6] = nn.Linear(4096, 7)
    assert dn.Deconvnet(chain).project(images((1, 3, 32, 32), seed=15), "fc8", "max").channel.item() < 7
    assert chain.channels["fc8"] == 7


# 7. threads ------------------------------------------------------------------------------------------------

class Pause(nn.Identity):
    """Identity (a module the chain walk knows); the projecting thread stops here until the other thread's plain forward has finished."""

    def __init__(self):
        super().__init__()
        self.inside, self.done, self.owner = threading.Event(), threading.Event(), None

    def forward(self, x):
        if threading.current_thread() is self.owner:
            self.inside.set()
            assert self.done.wait(60)
        return x


class Paused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.pause, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), Pause(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(self.pause(F.relu(self.conv1(x))))))


@pytest.mark.parametrize("sequential", [False, True])
def test_a_plain_forward_in_another_thread_is_untouched(sequential):
    torch.manual_seed(16)
    model = Paused().eval()
    pause = model.pause
    if sequential:  # the chain engine's hooks
        model = nn.Sequential(model.conv1, nn.ReLU(), model.pause, model.conv2, nn.ReLU(), model.conv3).eval()
    x, other = images((1, 3, 20, 20), seed=17), images((2, 3, 20, 20), seed=18)
    layer = "3" if sequential else "conv2"
    deconv = dn.Deconvnet(model)

    def run():  # the chain walk refuses a module with a forward of its own: the chain's recorded forward then
        return deconv.record(x, [layer]).activations[layer] if sequential else deconv.project(x, layer, 1).projection

    expected, plain = run(), model(other).detach()
    results, errors = {}, []

    def project():
        pause.owner = threading.current_thread()
        try:
            results["projection"] = run()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
            pause.inside.set()

    t = threading.Thread(target=project)
    t.start()
    assert pause.inside.wait(60) or errors  # the projection is inside the forward, its hooks on the modules
    try:
        with torch.no_grad():
            results["plain"] = model(other)
    finally:
        pause.done.set()
        t.join(60)
    assert not errors, errors
    assert torch.equal(results["plain"], plain)
    assert torch.equal(results["projection"], expected)
    assert no_forward_hooks(dn.wrap(model))


# 8. the meta device ----------------------------------------------------------------------------------------

def test_a_model_on_the_meta_device_is_refused_in_one_sentence():
    with torch.device("meta"):
        model = Calls(F.relu).eval()
    with pytest.raises(ValueError, match=r"^Calls is on the meta device, which holds no weights.*Hint: .*to_empty"):
        dn.Deconvnet(model).project(images((1, 3, 12, 12)), "c2", 0)


# 9. absurd sizes on the command line -----------------------------------------------------------------------

def run_cli(args, limit_kb=16_000_000):
    """The command in a fresh process under an address-space limit (``ulimit -v``)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_kb * 1024, limit_kb * 1024))

    env = dict(os.environ, DECONVNET_OFFLINE="1", PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "deconvnet", *args], capture_output=True, text=True, env=env,
                          preexec_fn=limit, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["layers", "--arch", "resnet18", "--size", "100000"],
    ["layers", "--arch", "vgg16", "--size", "30000"],
    ["figures", "--arch", "vgg11", "--weights", "random", "--resize", "30000", "--crop", "30000", "--only", "top9"],
    ["atlas", "--arch", "vgg11", "--weights", "random", "--resize", "30000", "--crop", "30000"],
])
def test_absurd_sizes_are_one_line_and_exit_2(args, tmp_path):
    if args[0] in ("figures", "atlas"):
        args = [*args, "--out", str(tmp_path / "out")]
    done = run_cli(args)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deconvnet: error: ") and "needs about" in lines[0], lines


# 10. small things ------------------------------------------------------------------------------------------

def test_refusals_are_whole_sentences():
    with pytest.raises(UnsupportedLayerError) as err:  # refused on the path to the target (off it is no obstacle)
        dn.Deconvnet(torchvision.models.mobilenet_v3_small()).project(images((1, 3, 32, 32)), "features.1")
    assert str(err.value).endswith(".") and "Hint: the deconvnet projects models built of" in str(err.value)


def test_torchvision_weights_by_name_are_not_downloaded_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("DECONVNET_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def no_download(*args, **kwargs):
        raise AssertionError("a download was tried")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    for arch in ("resnet18", "vgg11"):
        with pytest.raises(WeightsError, match=r"DECONVNET_OFFLINE is set and torchvision's ImageNet weights for .* are not cached"):
            dn.load_model(arch, "DEFAULT")
