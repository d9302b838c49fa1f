"""Memory: sizes that cannot fit are refused before allocating, and running out is named with a hint."""

import pytest
import torch

import deconvnet as dn

from conftest import images


def test_absurd_sizes_are_refused_before_allocating(vgg16):
    with pytest.raises(MemoryError, match=r"100000x100000 px needs about \d+\.\d GiB .* Hint: use a smaller size"):
        vgg16.preprocess("astronaut", size=100000, crop=100000)
    with pytest.raises(MemoryError, match="needs"):
        vgg16.preprocess("astronaut", size=100000)  # the resize alone


def test_a_size_that_does_not_fit_in_available_memory(vgg16, monkeypatch):
    import psutil

    class Tiny:
        available = 50 * 2**20  # 50 MiB: a 224 px forward needs about 117 MiB

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    x = images((1, 3, 224, 224))
    with pytest.raises(MemoryError, match=r"about 0\.1 GiB .* more than the 0\.0 GiB available"):
        dn.Deconvnet(vgg16).project(x, "conv5_3")
    dn.Deconvnet(vgg16).project(images((1, 3, 32, 32)), "conv2_1")  # small inputs still work


def test_cpu_out_of_memory_is_named(vgg16, monkeypatch, capsys):
    # conv3_1 (the one 128 -> 256 conv) runs out of memory; patched in its class, since the chain engine refuses
    # a user's hook on a walked module
    conv_forward = torch.nn.Conv2d._conv_forward

    def exhausted(self, input, weight, bias):
        if tuple(weight.shape) == (256, 128, 3, 3):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1234567890 bytes.")
        return conv_forward(self, input, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", exhausted)
    with pytest.raises(MemoryError, match="out of memory while running vgg16.*Hint: use a smaller input size"):
        dn.Deconvnet(vgg16).project(images((1, 3, 32, 32)), "conv4_1")
