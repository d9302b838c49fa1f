"""Compact switches (engine/switches.py): they round-trip, and the recorded ones are compact and exact."""

import pytest
import torch
import torch.nn.functional as F

import deconvnet as dn
from deconvnet.engine.switches import PoolSwitches

from conftest import images


@pytest.mark.parametrize("k, s, p, d, ceil", [(2, 2, 0, 1, False), (3, 2, 0, 1, False), (3, 2, 1, 1, True),
                                              (2, 2, 0, 1, True), (3, 1, 1, 2, False), (4, 3, 2, 1, True)])
def test_compact_switches_round_trip(k, s, p, d, ceil):
    x = torch.randn(2, 5, 23, 18)
    pool = torch.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    _, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    sw = PoolSwitches.from_indices(idx, (23, 18), pool)
    assert sw.offsets.dtype == torch.uint8
    assert torch.equal(sw.flat(), idx)
    assert sw.nbytes * 8 == idx.numel() * idx.element_size()


def test_recorded_switches_are_compact_and_exact(vgg16):
    x = images((1, 3, 224, 224), seed=34)
    rec = dn.Deconvnet(vgg16).record(x, ["pool5"])
    total_compact = total_int64 = 0
    h = x
    for i, (_, m) in enumerate(vgg16.stack[: vgg16.depth("pool5") + 1]):
        if isinstance(m, torch.nn.MaxPool2d):
            _, idx = F.max_pool2d(h, m.kernel_size, m.stride, return_indices=True)
            assert torch.equal(rec.switches[i].flat(), idx)
            total_compact += rec.switches[i].nbytes
            total_int64 += idx.numel() * 8
        h = m(h.clone())
    assert total_int64 == 8 * 1_530_368 and total_compact * 8 == total_int64  # 12.2 MB -> 1.5 MB
