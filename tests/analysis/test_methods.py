"""The methods' cross-check counts the rectifiers Captum's module hooks miss, in every spelling the engine knows."""

from __future__ import annotations

import torch
from torch import nn

import deconvnet as dn
from deconvnet.analysis.methods import functional_relus


class _Spellings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))  # a module: Captum sees it
        y = torch.relu(y) + y.clamp(min=0) + torch.clamp_min(y, 0) + nn.functional.threshold(y, 0.0, 0.0)
        return y.clamp(min=-1)  # not a rectifier


def test_functional_relus_counts_every_spelling():
    net = dn.wrap(_Spellings())
    assert functional_relus(net, torch.randn(1, 3, 8, 8)) == 4
