"""The masked unpooling of disjoint pools (one copy per window position) equals the scatter-add, in float64.

The reference is the scatter-add through int64 indices (``unpool_scatter_add``, ``_unpool_window_scatter``),
which sums where overlapping windows share a maximum; overlapping pools keep it.
"""

import pytest
import torch
from torch import nn

import deconvnet as dn
import deconvnet.engine.chain as chain
import deconvnet.engine.cropped as cropped
import deconvnet.engine.steps as steps
from deconvnet.engine.switches import PoolSwitches, disjoint, unpool_disjoint

from conftest import images

POOLS = {  # name -> (pool, disjoint windows)
    "2x2 s2": (nn.MaxPool2d(2), True),
    "2x2 s3 (gaps)": (nn.MaxPool2d(2, 3), True),
    "3x3 s2 (overlapping)": (nn.MaxPool2d(3, 2), False),
    "3x3 s2 p1 ceil": (nn.MaxPool2d(3, 2, 1, ceil_mode=True), False),
    "2x2 s2 ceil": (nn.MaxPool2d(2, 2, ceil_mode=True), True),
    "3x3 s3 p1 ceil": (nn.MaxPool2d(3, 3, 1, ceil_mode=True), True),
    "2x2 s3 dilation 2": (nn.MaxPool2d(2, 3, dilation=2), True),
    "2x2 s2 dilation 2 (interleaved)": (nn.MaxPool2d(2, 2, dilation=2), False),
    "(2, 3) s(2, 3)": (nn.MaxPool2d((2, 3), (2, 3)), True),
}


def chain_of(pool: nn.Module) -> dn.Net:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), pool, nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.ReLU())
    return dn.wrap(model.double(), preprocessing=None)


def switches_of(pool: nn.MaxPool2d, x: torch.Tensor) -> PoolSwitches:
    _, idx = nn.functional.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                                      return_indices=True)
    return PoolSwitches.from_indices(idx, x.shape[-2:], pool)


@pytest.mark.parametrize("name", list(POOLS))
def test_whole_map_unpool_equals_the_scatter_add(name):
    pool, is_disjoint = POOLS[name]
    torch.manual_seed(1)
    x = torch.randn(2, 3, 23, 26, dtype=torch.float64)
    sw = switches_of(pool, x)
    assert disjoint(sw) == is_disjoint
    r = torch.randn(3 * 2, 3, *sw.offsets.shape[-2:], dtype=torch.float64)  # three targets of a batch of two
    ref = chain.unpool_scatter_add(r, sw.flat().repeat(3, 1, 1, 1), x.shape[-2:])
    out = chain.deconv_step(pool, r, x.shape, sw, name="pool")
    assert torch.equal(out, ref)
    # and the reference is the transpose of max-pooling: autograd's gradient
    xg = x.repeat(3, 1, 1, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(pool(xg), xg, r)
    assert torch.equal(g, ref) if is_disjoint else (g - ref).abs().max() <= 1e-12


def test_disjoint_unpool_puts_each_value_at_its_switch_only():
    torch.manual_seed(2)
    sw = PoolSwitches(torch.randint(0, 4, (1, 1, 3, 3), dtype=torch.uint8), (6, 6), (2, 2), (2, 2), (0, 0), (1, 1))
    r = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    out = unpool_disjoint(r, sw.offsets, sw)
    assert out.shape == (1, 1, 6, 6) and out.count_nonzero() == 9
    assert torch.equal(out.flatten()[sw.flat().flatten()], r.flatten())


@pytest.mark.parametrize("name", list(POOLS))
def test_cropped_walk_equals_todays_scatter_add_walk(name, monkeypatch):
    pool, _ = POOLS[name]
    net = chain_of(pool)
    x = images((2, 3, 37, 41), seed=3, dtype=torch.float64)
    d = dn.Deconvnet(net, crop=True)
    layer = list(net.layers)[-2]  # the last conv: signed units, none silenced by the ReLU
    h, w = d.record(x, [layer]).activations[layer].shape[-2:]
    units = [(0, 0), (h - 1, w - 1), (h // 2, w // 3), (0, w - 1)]  # windows leaving the map on every side
    targets = [dn.Target(layer, c, u) for c in range(3) for u in units]
    new = d.project_many(x, targets)
    monkeypatch.setattr(cropped, "_unpool_window", cropped._unpool_window_scatter)
    old = d.project_many(x, targets)
    monkeypatch.setattr(steps, "disjoint", lambda sw: False)  # the whole-map walk by today's scatter-add
    full = dn.Deconvnet(net, crop=False).project_many(x, targets)
    assert all(a.projection.abs().max() > 0 for a in new)
    for a, b, c in zip(new, old, full, strict=False):
        assert torch.equal(a.projection, b.projection)
        assert (a.projection - c.projection).abs().max() <= 1e-12 * c.projection.abs().max()


def test_vgg_walks_unpool_without_index_tensors(vgg16, monkeypatch):
    """VGG's pools are disjoint: neither walk builds a flat index or scatters."""
    def refuse(*a, **k):
        raise AssertionError("an index was built")

    x = images((1, 3, 64, 64), seed=4)
    ref = dn.Deconvnet(vgg16, crop=True).project(x, "relu4_3", 3, (2, 3)).projection
    full = dn.Deconvnet(vgg16, crop=False).project(x, "relu4_3", 3, (2, 3)).projection
    monkeypatch.setattr(PoolSwitches, "flat", refuse)
    monkeypatch.setattr(cropped, "_unpool_window_scatter", refuse)
    assert torch.equal(dn.Deconvnet(vgg16, crop=True).project(x, "relu4_3", 3, (2, 3)).projection, ref)
    assert torch.equal(dn.Deconvnet(vgg16, crop=False).project(x, "relu4_3", 3, (2, 3)).projection, full)


@pytest.mark.parametrize("name", [n for n, (_, is_disjoint) in POOLS.items() if is_disjoint])
def test_window_unpool_equals_the_scatter_add_at_every_origin(name):
    """The masked unpooling of target windows (some leaving the map on every side; where the windows
    tile their cells no zero fill precedes the passes) equals the scatter-add exactly, in float64."""
    pool, _ = POOLS[name]
    torch.manual_seed(5)
    x = torch.randn(3, 4, 23, 26, dtype=torch.float64)
    sw = switches_of(pool, x)
    h, w = sw.offsets.shape[-2:]
    origin = torch.stack([torch.randint(-4, h, (12,)), torch.randint(-4, w, (12,))], 1)
    image = torch.randint(0, 3, (12,))
    for _ in range(2):  # the second time in memory the first one freed
        r = torch.randn(12, 4, 5, 6, dtype=torch.float64)
        ref = cropped._unpool_window_scatter(r, origin, image, sw)
        assert torch.equal(cropped._unpool_window(r, origin, image, sw), ref)
