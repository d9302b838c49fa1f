"""The deconvnet engine against independent references: Captum, autograd adjoints, one-by-one runs."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import NeuronDeconvolution
from torch import nn

import deconvnet as dn
from deconvnet.engine.chain import conv_transpose_like, unpool_scatter_add

from conftest import images, layer_names, no_forward_hooks


def captum_projection(net, x, layer, channel, position):
    """Captum's NeuronDeconvolution times the unit's activation, image by image."""
    out = []
    for b in range(x.shape[0]):
        selector = (int(channel[b]),
                    ) + tuple(int(v) for v in position[b]) if position is not None else (int(channel[b]),)
        attr = NeuronDeconvolution(net.model, net.layers[layer]).attribute(x[b : b + 1].clone(),
                                                                           neuron_selector=selector)
        out.append(attr.detach())
    return torch.cat(out)


def assert_matches_captum(net, x, layer, channel="max"):
    p = dn.Deconvnet(net).project(x, layer, channel, "max")
    spatial = net.depth(layer) < len(net.features)
    ref = captum_projection(net, x, layer, p.channel, p.position if spatial else None)
    ref = ref * p.activation.view(-1, 1, 1, 1)
    scale = p.projection.abs().max()
    assert scale > 0, f"{layer}: the projection is all zero"
    err = (p.projection - ref).abs().max()
    assert err <= 1e-4 * scale, f"{layer}: max |ours - captum| = {err:.3g}, scale {scale:.3g}"


SPATIAL = ("conv", "relu", "pool", "bn")


@pytest.mark.parametrize("layer", layer_names(dn.load_vgg, "vgg16", "random"))
def test_vgg16_every_layer_equals_captum(vgg16, layer):
    x = images((2, 3, 67, 71), seed=1)
    assert_matches_captum(vgg16, x, layer)


@pytest.mark.parametrize("layer", [n for n in layer_names(dn.load_vgg, "vgg11_bn", "random") if n.startswith(SPATIAL)])
def test_vgg11_bn_every_layer_equals_captum(vgg11_bn, layer):
    x = images((1, 3, 64, 64), seed=2)
    assert_matches_captum(vgg11_bn, x, layer)


def reference_deconv(net, x, layer, channel, row, col):
    """A slow float64 re-implementation that follows the paper line by line, independent of the core:
    switches from a manual forward, unpooling by index_put(accumulate), the transposed filter as the
    autograd vector-Jacobian product of conv2d, BatchNorm by its explicit scale."""
    mods = [m for _, m in net.stack[: net.depth(layer) + 1]]
    h, trail = x.double(), []
    for m in mods:
        inp = h
        if isinstance(m, torch.nn.MaxPool2d):
            h, idx = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
            trail.append((m, inp.shape, idx))
            continue
        if isinstance(m, torch.nn.Conv2d):
            h = F.conv2d(h, m.weight.double(), m.bias.double(), m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, torch.nn.BatchNorm2d):
            h = F.batch_norm(h, m.running_mean.double(), m.running_var.double(), m.weight.double(), m.bias.double(),
                             False, 0.0, m.eps)
        elif isinstance(m, torch.nn.ReLU):
            h = F.relu(h)
        trail.append((m, inp.shape, None))
    r = torch.zeros_like(h)
    r[0, channel, row, col] = h[0, channel, row, col]  # every other activation of the layer set to zero
    for m, in_shape, idx in reversed(trail):
        if isinstance(m, torch.nn.MaxPool2d):  # unpool at the switches
            out = torch.zeros(in_shape, dtype=torch.float64).flatten(2)
            n, c = r.shape[:2]
            bi = torch.arange(n).view(n, 1, 1).expand_as(idx.flatten(2))
            ci = torch.arange(c).view(1, c, 1).expand_as(idx.flatten(2))
            out.index_put_((bi, ci, idx.flatten(2)), r.flatten(2), accumulate=True)
            r = out.view(in_shape)
        elif isinstance(m, torch.nn.ReLU):  # rectify the reconstruction
            r = F.relu(r)
        elif isinstance(m, torch.nn.Conv2d):  # filter with the transposed filters
            z = torch.zeros(in_shape, dtype=torch.float64, requires_grad=True)
            y = F.conv2d(z, m.weight.double(), None, m.stride, m.padding, m.dilation, m.groups)
            (r,) = torch.autograd.grad(y, z, r)
        elif isinstance(m, torch.nn.BatchNorm2d):
            r = r * (m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)).view(1, -1, 1, 1)
    return r


@pytest.mark.parametrize("layer", ["conv2_1", "bn3_2", "relu4_1", "conv4_2", "pool5"])
def test_fixed_channel_equals_line_by_line_reference(vgg11_bn, layer):
    """A fixed channel may have a negative strongest activation (a conv/BN output). Then Captum's
    gradient times the activation is not the projection (the ReLUs going down are not odd functions),
    so the reference is the float64 re-implementation of the paper's procedure."""
    x = images((1, 3, 64, 64), seed=2)
    p = dn.Deconvnet(vgg11_bn).project(x, layer, 3, "max")
    row, col = p.position[0].tolist()
    ref = reference_deconv(vgg11_bn, x, layer, 3, row, col)
    scale = ref.abs().max()
    assert scale > 0
    assert (p.projection.double() - ref).abs().max() <= 1e-4 * scale


def test_negative_activation_is_not_a_negated_captum_map(vgg11_bn):
    x = images((1, 3, 64, 64), seed=2)
    p = dn.Deconvnet(vgg11_bn).project(x, "conv4_2", 3, "max")
    assert p.activation[0] < 0  # this unit is the strongest of its map, and negative
    ref = captum_projection(vgg11_bn, x, "conv4_2", p.channel, p.position) * p.activation[0]
    assert (p.projection - ref).abs().max() > 0.1 * ref.abs().max()


@pytest.mark.parametrize("layer", layer_names(dn.load_alexnet, "random"))
def test_alexnet_every_layer_equals_captum(alexnet, layer):
    # 127x131: odd sizes through the stride-4 conv and three overlapping 3x3/2 pools
    x = images((2, 3, 127, 131), seed=3)
    assert_matches_captum(alexnet, x, layer)


def test_odd_size_and_ceil_mode_equal_captum():
    net = dn.load_vgg("vgg16", "random", seed=4)
    for m in net.features:
        if isinstance(m, torch.nn.MaxPool2d):
            m.ceil_mode = True
    x = images((1, 3, 225, 231), seed=4)
    rec = dn.Deconvnet(net).record(x, ["pool5"])
    assert rec.activations["pool5"].shape[-2:] == (8, 8)  # ceil: 225 -> 113 -> 57 -> 29 -> 15 -> 8
    for layer in ("pool2", "relu4_2", "pool5"):
        assert_matches_captum(net, x, layer)


def test_padded_overlapping_pool_unpools_exactly():
    """A 3x3/2 pool with padding 1 and ceil_mode: scatter-add equals the max-pool gradient (autograd)."""
    pool = torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
    x = torch.randn(2, 4, 13, 10, dtype=torch.float64, requires_grad=True)
    y, idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    g = torch.randn_like(y)
    (ref,) = torch.autograd.grad(pool(x), x, g)
    assert torch.equal(unpool_scatter_add(g, idx, x.shape[-2:]), ref)
    # and overlapping windows really share maxima here, so overwrite-unpooling would differ
    assert idx.flatten(2).unique(dim=None).numel() < idx.numel()


def test_batch_of_three_equals_one_by_one():
    # float64: in float32 a batched and a single forward differ by round-off (~1e-7), enough to flip a
    # switch where two values of a pooling window nearly tie; that is a different projection, not an error
    net = dn.load_vgg("vgg16", "random", seed=0, dtype=torch.float64)
    x = images((3, 3, 64, 80), seed=5, dtype=torch.float64)
    deconv = dn.Deconvnet(net)
    batch = deconv.project(x, "relu4_3", channel="max")
    for b in range(3):
        single = deconv.project(x[b : b + 1], "relu4_3", channel="max")
        assert torch.equal(single.channel, batch.channel[b : b + 1])
        assert torch.equal(single.position, batch.position[b : b + 1])
        torch.testing.assert_close(single.projection, batch.projection[b : b + 1], rtol=0,
                                   atol=1e-12 * batch.projection.abs().max())
    assert len({int(c) for c in batch.channel}) > 1 or len({tuple(p.tolist()) for p in batch.position}) > 1


def test_project_many_equals_one_by_one(vgg16):
    x = images((2, 3, 64, 64), seed=6)
    mask = torch.zeros(8, 8)
    mask[2:5, 3:6] = 1
    targets = [
        dn.Target("conv4_3", 12),
        dn.Target("relu3_3", 5, (10, 11)),
        dn.Target("pool5", 7, "all"),
        dn.Target("conv1_2", "max", "max"),
        dn.Target("relu4_3", "max", mask),
        dn.Target("conv4_3", 99, (1, 2)),
    ]
    deconv = dn.Deconvnet(vgg16, max_batch=4)  # forces several deconv passes
    many = deconv.project_many(x, targets)
    for t, p in zip(targets, many, strict=False):
        one = dn.Deconvnet(vgg16).project(x, t.layer, t.channel, t.position)
        assert p.layer == t.layer and p.target == t
        assert torch.equal(p.channel, one.channel) and torch.equal(p.position, one.position)
        scale = one.projection.abs().max()
        assert scale > 0
        assert (p.projection - one.projection).abs().max() <= 1e-6 * scale


def test_point_target_reports_its_unit(vgg16):
    x = images((2, 3, 64, 64), seed=7)
    deconv = dn.Deconvnet(vgg16)
    rec = deconv.record(x, ["relu3_3"])
    act = rec.activations["relu3_3"]
    p = deconv.project(x, "relu3_3", 5, (10, 11))
    assert torch.equal(p.activation, act[:, 5, 10, 11])
    assert p.position.tolist() == [[10, 11], [10, 11]]
    pmax = deconv.project(x, "relu3_3", "max", "max")
    for b in range(2):
        assert pmax.activation[b] == act[b].max()
        c, r, col = int(pmax.channel[b]), *pmax.position[b].tolist()
        assert act[b, c, r, col] == act[b].max()


def test_all_is_the_sum_of_its_units(vgg16):
    """Linearity of the walk given the switches: projecting a whole map = sum of its units' projections
    when no ReLU on the way down cuts (checked on the layer directly above the first conv)."""
    x = images((1, 3, 32, 32), seed=8)
    deconv = dn.Deconvnet(vgg16, crop=False)  # the same walk for mask and point targets: bitwise equal
    whole = deconv.project(x, "conv1_2", 4, "all").projection
    rec = deconv.record(x, ["conv1_2"])
    h, w = rec.activations["conv1_2"].shape[-2:]
    # conv1_2's walk: conv1_2^T, relu1_1, conv1_1^T: the ReLU is nonlinear, so compare with a mask
    # that selects a single unit instead, and the full map with the explicit seed.
    mask = torch.zeros(h, w)
    mask[7, 9] = 1
    point = deconv.project(x, "conv1_2", 4, mask).projection
    ref = deconv.project(x, "conv1_2", 4, (7, 9)).projection
    assert torch.equal(point, ref)
    seed = torch.zeros_like(rec.activations["conv1_2"])
    seed[:, 4] = rec.activations["conv1_2"][:, 4]
    w2 = vgg16.layers["conv1_2"].weight
    w1 = vgg16.layers["conv1_1"].weight
    manual = F.conv_transpose2d(F.relu(F.conv_transpose2d(seed, w2, padding=1)), w1, padding=1)
    torch.testing.assert_close(whole, manual, rtol=1e-5, atol=1e-5 * manual.abs().max().item())


def test_stages_end_in_the_projection(vgg16):
    x = images((1, 3, 64, 64), seed=9)
    deconv = dn.Deconvnet(vgg16, crop=False)  # stages walk the whole maps, as crop=False does
    t = dn.Target("pool3", 17, "max")
    stages = deconv.stages(x, t)
    assert stages[0][0] == "pool3"
    assert [name for name, _ in stages[1:]] == [name for name, _ in reversed(vgg16.stack[: vgg16.depth("pool3") + 1])]
    assert torch.equal(stages[-1][1], deconv.project(x, "pool3", 17).projection)


# --- adjoint identities in float64 --------------------------------------------------------------------

def test_conv_adjoints_float64(vgg16, alexnet):
    g = torch.Generator().manual_seed(0)
    convs = [m for m in vgg16.features if isinstance(m, torch.nn.Conv2d)][:4]
    convs += [m for m in alexnet.features if isinstance(m, torch.nn.Conv2d)][:2]
    convs += [torch.nn.Conv2d(3, 5, (4, 3), stride=(3, 2), padding=(2, 1), dilation=(1, 2), groups=1)]
    for m in convs:
        w = m.weight.detach().double()
        for hw in ((31, 29), (40, 40)):
            x = torch.randn(2, m.in_channels, *hw, generator=g, dtype=torch.float64)
            y_shape = F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups).shape
            y = torch.randn(y_shape, generator=g, dtype=torch.float64)
            lhs = (F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups) * y).sum()
            mm = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                 m.groups, bias=False).double()
            mm.weight.data.copy_(w)
            xt = conv_transpose_like(mm, y, hw)
            assert xt.shape == x.shape
            rhs = (x * xt).sum()
            assert abs(lhs - rhs) <= 1e-10 * abs(lhs).clamp(min=1)


@pytest.mark.parametrize("k,s,p,ceil", [(2, 2, 0, False), (3, 2, 0, False), (3, 2, 1, True), (2, 2, 0, True)])
def test_pool_adjoints_float64(k, s, p, ceil):
    g = torch.Generator().manual_seed(k * 10 + s)
    x = torch.randn(2, 3, 17, 22, generator=g, dtype=torch.float64)
    _, idx = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
    z = torch.randn(2, 3, 17, 22, generator=g, dtype=torch.float64)
    y = torch.randn(idx.shape, generator=g, dtype=torch.float64)
    pooled_z = z.flatten(2).gather(2, idx.flatten(2)).view_as(idx)  # the pool with these switches fixed
    lhs = (pooled_z * y).sum()
    rhs = (z * unpool_scatter_add(y, idx, (17, 22))).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs).clamp(min=1)


# --- device, dtype, hooks ----------------------------------------------------------------------------

def test_float64_model():
    net32 = dn.load_vgg("vgg11", "random", seed=3)
    net64 = dn.load_vgg("vgg11", "random", seed=3, dtype=torch.float64)
    x = images((1, 3, 48, 48), seed=10)
    p32 = dn.Deconvnet(net32).project(x, "conv4_2", 7)
    p64 = dn.Deconvnet(net64).project(x.double(), "conv4_2", 7)
    assert p64.projection.dtype == torch.float64
    assert torch.equal(p32.position, p64.position)
    err = (p64.projection - p32.projection.double()).abs().max()
    assert err <= 1e-4 * p64.projection.abs().max()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    cpu = dn.load_vgg("vgg16", "random", seed=0)
    gpu = dn.load_vgg("vgg16", "random", seed=0, device="cuda")
    x = images((2, 3, 64, 64), seed=11)
    a = dn.Deconvnet(cpu).project(x, "relu4_3", 9).projection
    b = dn.Deconvnet(gpu).project(x.cuda(), "relu4_3", 9).projection
    assert b.is_cuda
    assert (a - b.cpu()).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_engine_on_cuda_equals_cpu():
    """The graph engine and its units from crops (the atlas's step) on the GPU, against the CPU."""
    cpu = dn.load_model("resnet18", "random", seed=0)
    gpu = dn.load_model("resnet18", "random", seed=0, device="cuda")
    x = images((2, 3, 96, 96), seed=13)
    a = dn.Deconvnet(cpu).project(x, "layer2", 5).projection
    b = dn.Deconvnet(gpu).project(x.cuda(), "layer2", 5).projection
    assert b.is_cuda and (a - b.cpu()).abs().max() <= 1e-4 * a.abs().max()
    units = (torch.tensor([0, 1, 1]), torch.tensor([3, 5, 7]), torch.tensor([[0, 0], [5, 6], [11, 11]]))
    a = dn.Deconvnet(cpu).project_units(x, "layer1", *units)
    b = dn.Deconvnet(gpu).project_units(x.cuda(), "layer1", *units)
    assert torch.equal(a.origins, b.origins.cpu())
    assert (a.windows - b.windows.cpu()).abs().max() <= 1e-4 * a.windows.abs().max()


def test_no_hook_survives_success_or_error(vgg16):
    x = images((1, 3, 64, 64), seed=12)
    deconv = dn.Deconvnet(vgg16)
    deconv.project(x, "conv5_3", 1)
    assert no_forward_hooks(vgg16)
    with pytest.raises(ValueError):
        deconv.project(x[:, :, :8, :8], "pool5", 1)  # too small: the forward raises inside the hooks
    assert no_forward_hooks(vgg16)
    with pytest.raises(ValueError):
        deconv.project(x, "conv5_3", 100000)  # raises after the forward
    assert no_forward_hooks(vgg16)


def test_inplace_relus_are_kept(vgg16):
    """The model's own forward runs unchanged: torchvision's in-place ReLUs stay in-place."""
    assert all(m.inplace for m in vgg16.features if isinstance(m, torch.nn.ReLU))
    x = images((1, 3, 32, 32), seed=13)
    rec = dn.Deconvnet(vgg16).record(x, ["conv1_1", "relu1_1"])
    conv = F.conv2d(x, vgg16.layers["conv1_1"].weight, vgg16.layers["conv1_1"].bias, padding=1)
    assert torch.allclose(rec.activations["conv1_1"], conv, atol=1e-5)  # not overwritten by the ReLU
    assert (rec.activations["conv1_1"] < 0).any()
    assert torch.equal(rec.activations["relu1_1"], F.relu(rec.activations["conv1_1"]))


def test_max_unpool_mode_differs_only_for_overlapping_pools(vgg16, alexnet):
    x = images((1, 3, 64, 64), seed=14)
    a = dn.Deconvnet(vgg16, crop=False).project(x, "pool3", 2).projection  # max_unpool walks whole maps too
    b = dn.Deconvnet(vgg16, unpool="max_unpool").project(x, "pool3", 2).projection
    assert torch.equal(a, b)  # 2x2 stride 2: no shared maxima
    xa = images((1, 3, 127, 127), seed=15)
    pa = dn.Deconvnet(alexnet).project(xa, "pool5", "max", "all").projection
    pb = dn.Deconvnet(alexnet, unpool="max_unpool").project(xa, "pool5", "max", "all").projection
    assert not torch.allclose(pa, pb)


def test_one_model_from_many_threads():
    net = dn.load_vgg("vgg11", "random", seed=4)
    x = images((1, 3, 48, 48), seed=5)
    calls = [("relu3_1", c, "max") for c in range(25)] + [("pool4", c, "all") for c in range(25)]
    reference = {call: dn.Deconvnet(net).project(x, *call).projection for call in calls}
    results, errors = {}, []
    deconvs = [dn.Deconvnet(net), dn.Deconvnet(net, crop=False)]  # two Deconvnet objects on one model too

    def work(k, call):
        try:
            results[call] = deconvs[k % 2].project(x, *call).projection
        except Exception as err:  # noqa: BLE001 - any error is a failure of the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k, call)) for k, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    wrong = [call for call in calls if not torch.allclose(results[call], reference[call], rtol=1e-5,
                                                          atol=1e-6 * float(reference[call].abs().max()))]
    assert not wrong, wrong
    assert no_forward_hooks(net)


def test_train_mode_is_neither_used_nor_changed(vgg11_bn, alexnet):
    x = images((2, 3, 64, 64), seed=6)
    reference = dn.Deconvnet(vgg11_bn).project(x, "relu4_1", 3).projection
    stats = [m.running_mean.clone() for m in vgg11_bn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    vgg11_bn.model.train()
    try:
        p = dn.Deconvnet(vgg11_bn).project(x, "relu4_1", 3)
        after = [m.running_mean for m in vgg11_bn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=False))  # running statistics untouched
        assert torch.equal(p.projection, reference)
        assert all(m.training for m in vgg11_bn.model.modules())  # the caller's mode is restored
    finally:
        vgg11_bn.model.eval()
    xa = images((1, 3, 96, 96), seed=7)
    ref = dn.Deconvnet(alexnet).project(xa, "fc7", 5).projection
    alexnet.model.train()
    try:
        runs = [dn.Deconvnet(alexnet).project(xa, "fc7", 5).projection for _ in range(3)]
    finally:
        alexnet.model.eval()
    assert all(torch.equal(r, ref) for r in runs)  # no dropout


def test_numpy_positions_take_both_paths(vgg16):
    x = images((1, 3, 64, 64), seed=11)
    a = dn.Deconvnet(vgg16).project(x, "relu3_1", 5, np.array([3, 4]))
    b = dn.Deconvnet(vgg16, crop=False).project(x, "relu3_1", 5, np.array([3, 4]))
    c = dn.Deconvnet(vgg16).project(x, "relu3_1", 5, (3, 4))
    assert a.position.tolist() == [[3, 4]] and a.box is not None
    torch.testing.assert_close(a.projection, b.projection, rtol=1e-5, atol=1e-6 * float(b.projection.abs().max()))
    assert torch.equal(a.projection, c.projection)


@pytest.fixture
def resnet18_random():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18().eval()


class Pause(nn.Identity):
    """Identity (a module the chain walk knows); the projecting thread stops here until the other thread's
    plain forward has finished."""

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
        self.conv1, self.pause, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), Pause(), nn.Conv2d(8, 8,
                                                                                                3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(self.pause(F.relu(self.conv1(x))))))


def test_a_compiled_model_is_projected_through_its_original(resnet18_random):
    x = images((1, 3, 64, 64), seed=13)
    expected = dn.Deconvnet(resnet18_random).project(x, "layer2", 5).projection
    compiled = torch.compile(resnet18_random)  # lazy: nothing is compiled unless it is called
    deconv = dn.Deconvnet(compiled)
    assert deconv.net.model is resnet18_random
    assert torch.equal(deconv.project(x, "layer2", 5).projection, expected)
    assert torch.equal(deconv.project(x, "_orig_mod.layer2", 5).projection, expected)


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
