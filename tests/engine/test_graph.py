"""Any CNN: the deconvnet on a model's own autograd graph, against Captum, an independent reference, the chain walk."""

import copy
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import NeuronDeconvolution
from torch import nn

import deconvnet as dn
from deconvnet.engine import UnsupportedLayerError, graph

from conftest import assert_exact, images, no_forward_hooks, reference


def random_model(builder, seed, **kwargs):
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return builder(weights=None, **kwargs).eval()


def captum_times_activation(model, module, x, p):
    """Captum's NeuronDeconvolution for each image's projected unit, times the unit's activation."""
    out = []
    for b in range(x.shape[0]):
        unit = (int(p.channel[b]),
                ) + (tuple(int(v) for v in p.position[b]) if p.projection.dim() == 4 and p.map_size != (1, 1) else ())
        attr = NeuronDeconvolution(model, module).attribute(x[b : b + 1].clone(), neuron_selector=unit)
        out.append(attr.detach() * p.activation[b])
    return torch.cat(out)


def assert_close_to(ours, ref, what):
    scale = ref.abs().max()
    assert scale > 0, f"{what}: the reference is all zero"
    err = (ours - ref).abs().max()
    assert err <= 1e-4 * scale, f"{what}: max |ours - reference| = {err:.3g}, scale {scale:.3g}"


@pytest.fixture(scope="module")
def resnet18():
    return random_model(torchvision.models.resnet18, 0)


@pytest.fixture(scope="module")
def resnet50():
    return random_model(torchvision.models.resnet50, 1)


@pytest.mark.parametrize("layer", ["layer1", "layer2.1", "layer3", "layer4", "maxpool", "relu", "layer3.0.conv2",
                                   "layer2.1.bn2", "layer2.0.downsample.0", "avgpool", "fc"])
def test_resnet18_equals_captum(resnet18, layer):
    x = images((2, 3, 64, 72), seed=1)
    p = dn.Deconvnet(resnet18).project(x, layer, "max")
    assert p.projection.shape == x.shape and (p.activation > 0).all()
    module = dict(resnet18.named_modules())[layer]
    assert_close_to(p.projection, captum_times_activation(resnet18, module, x, p), layer)


@pytest.mark.parametrize("layer", ["layer2", "layer3.2.conv3", "layer4.2", "layer1.0.bn3"])
def test_resnet50_equals_captum(resnet50, layer):
    x = images((1, 3, 64, 64), seed=2)
    p = dn.Deconvnet(resnet50).project(x, layer, 7)
    module = dict(resnet50.named_modules())[layer]
    assert_close_to(p.projection, captum_times_activation(resnet50, module, x, p), layer)


def modular_googlenet(model):
    """An independent reference: GoogLeNet with each functional ReLU of its BasicConv2d made an nn.ReLU
    module, which Captum's module hooks see."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if type(m).__name__ == "BasicConv2d":
            m.relu_module = nn.ReLU()
            m.forward = types.MethodType(lambda self, x: self.relu_module(self.bn(self.conv(x))), m)
    return ref


def modular_densenet(model):
    """The same for DenseNet, whose forward ends with a functional ReLU before pooling."""
    ref = copy.deepcopy(model)
    ref.final_relu = nn.ReLU()

    def forward(self, x):
        out = self.final_relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))

    ref.forward = types.MethodType(forward, ref)
    return ref


@pytest.fixture(scope="module")
def googlenet():
    return random_model(torchvision.models.googlenet, 2, aux_logits=False, init_weights=True)


@pytest.mark.parametrize("layer", ["inception3b", "inception4a.branch2.1", "maxpool3", "inception5b"])
def test_googlenet_functional_relus_are_honoured(googlenet, layer):
    x = images((1, 3, 96, 96), seed=3)
    p = dn.Deconvnet(googlenet).project(x, layer, "max")
    reference = modular_googlenet(googlenet)
    ref_module = dict(reference.named_modules())[layer]
    assert_close_to(p.projection, captum_times_activation(reference, ref_module, x, p), layer)
    # Captum on the model as torchvision writes it sees no ReLU at all (they are F.relu): another answer
    plain = captum_times_activation(googlenet, dict(googlenet.named_modules())[layer], x, p)
    assert (plain - p.projection).abs().max() > 0.05 * p.projection.abs().max()


def test_densenet121_final_functional_relu():
    model = random_model(torchvision.models.densenet121, 3)
    x = images((1, 3, 64, 64), seed=4)
    deconv = dn.Deconvnet(model)
    reference = modular_densenet(model)
    for layer, channel in (("features.denseblock3", "max"), ("classifier", 3)):
        p = deconv.project(x, layer, channel)
        module = dict(reference.named_modules())[layer]
        assert_close_to(p.projection, captum_times_activation(reference, module, x, p), layer)
    plain = captum_times_activation(model, model.classifier, x, p)
    assert (plain - p.projection).abs().max() > 0.05 * p.projection.abs().max()


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_chain_and_graph_agree_at_every_layer(arch, request):
    net = request.getfixturevalue(arch)
    # float32 is enough: both engines run the same forward, so switches and ReLU masks are the same
    x = images((1, 3, 67, 71) if arch == "vgg16" else (1, 3, 99, 101), seed=5)
    chain, graph = dn.Deconvnet(net), dn.Deconvnet(net, engine="graph")
    targets = [dn.Target(layer, "max", "max") for layer in net.layers]
    targets += [dn.Target(layer, 3, "all") for layer in net.layers if net.is_spatial(layer)][::6]
    for a, b in zip(chain.project_many(x, targets), graph.project_many(x, targets), strict=False):
        assert torch.equal(a.channel, b.channel) and torch.equal(a.position, b.position), a.layer
        assert_close_to(b.projection, a.projection, f"{a.layer} {a.target.position}")


def test_a_users_sequential_is_a_chain_and_agrees_with_the_graph():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).double()
    model[3][1].running_var.uniform_(0.5, 1.5)
    net = dn.wrap(model)
    assert net.is_chain and list(net.layers)[:4] == ["0", "1", "2", "3.0"]
    x = images((3, 3, 31, 29), seed=7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    chain, graph = dn.Deconvnet(net), dn.Deconvnet(net, engine="graph")
    for layer in ("1", "2", "3.2", "6"):
        a, b = chain.project(x, layer, "max"), graph.project(x, layer, "max")
        assert_close_to(b.projection, a.projection, layer)
    # a batch equals its images one by one
    one = torch.cat([graph.project(x[i : i + 1], "3.2", "max").projection for i in range(3)])
    assert_close_to(graph.project(x, "3.2", "max").projection, one, "batch")
    assert no_forward_hooks(net)


def test_many_targets_in_one_forward_equal_one_by_one(resnet18):
    x = images((2, 3, 64, 64), seed=8)
    deconv = dn.Deconvnet(resnet18)
    targets = [dn.Target("layer3", c) for c in range(0, 40, 5)] + [dn.Target("layer2.0.conv1", 3, (2, 3)),
                                                                  dn.Target("layer4", 1, "all")]
    deconv.project(x, "layer1", 0)  # the first call measures the model's map sizes once (a forward at 224 px)
    for layer in ("layer3", "layer2.0.conv1"):  # and each layer's receptive field, once (for the boxes)
        deconv.receptive_field(layer)
    calls = {"n": 0}
    handle = resnet18.conv1.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        together = deconv.project_many(x, targets)
    finally:
        handle.remove()
    assert calls["n"] == 1  # one forward for all targets
    for t, p in zip(targets, together, strict=False):
        alone = deconv.project(x, t.layer, t.channel, t.position)
        assert torch.equal(p.projection, alone.projection), t


def test_layers_by_path_module_or_paper_name(resnet18, vgg16):
    x = images((1, 3, 64, 64), seed=9)
    deconv = dn.Deconvnet(resnet18)
    a = deconv.project(x, "layer3.1.conv2", 5)
    b = deconv.project(x, resnet18.layer3[1].conv2, 5)
    assert torch.equal(a.projection, b.projection) and b.layer == "layer3.1.conv2"
    v = dn.Deconvnet(vgg16)
    assert torch.equal(v.project(x, "features.28", 5).projection, v.project(x, "conv5_3", 5).projection)
    assert torch.equal(v.project(x, vgg16.layers["conv5_3"], 5).projection, v.project(x, "conv5_3", 5).projection)
    with pytest.raises(ValueError, match=r"unknown layer 'layer3\.1\.conv9'.*nearest are layer3\.1\.conv2"):
        deconv.project(x, "layer3.1.conv9")
    with pytest.raises(ValueError, match="not a layer of"):
        deconv.project(x, nn.Conv2d(3, 3, 1))


def test_torchvision_models_wrap_directly():
    for model in (torchvision.models.vgg11(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())):
        d = dn.Deconvnet(model)  # no AttributeError: wrapped
        assert d.engine == "chain"
    assert dn.Deconvnet(torchvision.models.vgg11()).net.arch == "vgg11"
    assert dn.Deconvnet(torchvision.models.resnet18()).engine == "graph"


def test_unsupported_nonlinearities_are_refused_before_any_work():
    mobilenet = torchvision.models.mobilenet_v3_small()
    with pytest.raises(UnsupportedLayerError, match=r"module 'features\.0\.2' \(Hardswish\) has no deconvnet rule"):
        dn.Deconvnet(mobilenet).project(images((1, 3, 64, 64)), "features.1")

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Sequential(nn.Conv2d(4, 4, 1))

        def forward(self, x):
            return self.head(F.gelu(self.conv(x)))

    model = Gated()
    with pytest.raises(UnsupportedLayerError, match=r"GELU \(F\.gelu\), called in the forward of Gated itself"):
        dn.Deconvnet(model).project(images((1, 3, 16, 16)), "head.0")

    class Deeper(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Gated()

        def forward(self, x):
            return self.block(x)

    seen = []
    model = Deeper()
    model.block.head.register_forward_hook(lambda *a: seen.append(1))
    with pytest.raises(UnsupportedLayerError, match=r"GELU \(F\.gelu\), called in module 'block'"):
        dn.Deconvnet(model).project(images((1, 3, 16, 16)), "block.head.0")
    assert len(seen) == 1  # refused after the one probe forward (only the path counts), before any projection
    assert len(model.block.head._forward_hooks) == 1  # ours are gone, the user's stays


def test_no_hook_mode_or_grad_flag_survives(resnet18):
    x = images((1, 3, 64, 64), seed=10)
    flags = [p.requires_grad for p in resnet18.parameters()]
    resnet18.train()
    try:
        dn.Deconvnet(resnet18).project(x, "layer2", 3)
        with pytest.raises(ValueError):
            dn.Deconvnet(resnet18).project(x, "layer2", 10_000)
        assert all(m.training for m in resnet18.modules())
    finally:
        resnet18.eval()
    assert [p.requires_grad for p in resnet18.parameters()] == flags
    assert no_forward_hooks(dn.wrap(resnet18))
    assert not torch.overrides._get_current_function_mode_stack()


def test_class_scores_are_named_by_the_weights(resnet18):
    weights = torchvision.models.ResNet18_Weights.DEFAULT  # its metadata only: nothing is downloaded
    net = dn.wrap(resnet18, weights=weights)
    assert net.preprocessing.mean == tuple(weights.transforms().mean) and net.categories[0] == "tench"
    p = dn.Deconvnet(net).project(images((2, 3, 64, 64), seed=11), "fc", "max")
    assert p.label == [weights.meta["categories"][int(c)] for c in p.channel]
    assert "ResNet18_Weights.IMAGENET1K_V1" in net.describe()


@pytest.mark.slow
def test_weights_enum_names_are_accepted_offline(monkeypatch, vgg16_file):
    """load_vgg takes torchvision's enums and their names; the file comes from a stubbed cache."""
    from deconvnet.models import _api as api
    from deconvnet.models import weights as W

    cached = vgg16_file
    monkeypatch.setattr(W, "cached_checkpoint", lambda url: cached)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: torch.load(cached, weights_only=True))
    for weights in ("DEFAULT", "IMAGENET1K_V1", torchvision.models.VGG16_Weights.IMAGENET1K_V1):
        net = dn.load_vgg("vgg16", weights)
        assert net.provenance["weights"] == "imagenet" and net.categories[1] == "goldfish"
    with pytest.raises(ValueError, match="vgg16 has no torchvision weights 'IMAGENET9K'"):
        dn.load_vgg("vgg16", "IMAGENET9K")
    assert api.ARCH_NAMES


def test_load_model_builds_any_torchvision_classifier():
    net = dn.load_model("resnet18", "random", seed=3)
    assert not net.is_chain and net.provenance["weights"] == "random" and "layer4.1.conv2" in net.layers
    again = dn.load_model("resnet18", "random", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net.model.state_dict().values(), again.model.state_dict().values(),
                                                 strict=False))
    with pytest.raises(ValueError, match="unknown arch 'resnet51'.*resnet50"):
        dn.load_model("resnet51")


def test_graph_scan_and_figure2(tmp_path):
    from test_scan import Tensors, brute_force

    from deconvnet.engine import receptive_field
    from deconvnet.figure2 import feature_tiles, select_features, write_layer_figure
    from deconvnet.scan import scan_top_k

    net = dn.load_model("resnet18", "random", seed=4)
    ds = Tensors(images((6, 3, 64, 64), seed=12))
    topk = scan_top_k(net, ds, ["layer2", "layer3.0.conv1"], k=3, batch_size=1, progress=False)
    ref = brute_force(net, ds, "layer2", 3, 1)
    for ch in range(0, 128, 17):
        assert [(i, p) for _, i, p in topk.entries("layer2", ch)] == [(i, p) for _, i, p in ref[ch]]
    rf = receptive_field(net, "layer2")
    assert (rf.size, rf.jump) == ((99, 99), (8, 8))  # ResNet-18's known receptive field and stride
    channels = select_features(topk, "layer2", 2, "strongest")
    tiles = feature_tiles(net, ds, topk, "layer2", channels, progress=False)
    for t in tiles:  # every projection lies inside its measured receptive field
        assert t.projections.shape[-2:] == (99, 99) and t.projections.abs().amax() > 0
    out, sidecar = write_layer_figure(tiles, topk, net, tmp_path / "g.png", dataset_name="tensors")
    assert out.is_file() and sidecar.is_file()


def test_cli_on_a_graph(tmp_path, capsys):
    from deconvnet.cli import main

    assert main(["layers", "--arch", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:6] == ["layer1", "layer1", "64", "56x56", "43", "px"] for line in out.splitlines()), out
    assert main(["project", "astronaut", "--arch", "resnet18", "--weights", "random", "--layer", "layer2",
                 "--size", "64", "--out", str(tmp_path / "p.png")]) == 0
    assert "layer2 channel" in capsys.readouterr().out
    code = main(["figures", "--arch", "resnet18", "--weights", "random", "--only", "resolution", "--out",
                 str(tmp_path)])
    assert code == 2 and "need a VGG or AlexNet" in capsys.readouterr().err










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
    assert sum(v == "projected" for v in verdicts.values()) >= 40 \
        and sum(v == "refused" for v in verdicts.values()) >= 30


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
