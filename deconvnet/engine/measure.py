"""Receptive fields of graphs, measured: which input pixels two units of a layer can see, from one forward
and one backward of a linear surrogate of the model (``receptive.measured_receptive_field`` uses it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models.hooks import capture
from ..models.lock import eval_view, own_call
from . import ops, rules
from .types import UnsupportedLayerError


class _LinearSurrogate(TorchFunctionMode):
    """For measuring which pixels a unit can see: ReLUs pass everything, max-pools average their window.

    The cone of a unit is then the support of its gradient, whatever the input (a max-pool's gradient
    reaches one pixel per window, the average reaches the whole window, as the receptive field means).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if ops.rectifier(func, args, kwargs) is not None or rules.activation(func, args, kwargs) is not None:
            return args[0]
        if rules.gate(func) is not None:  # held constant: the cone does not run through a gate
            return func(*args, **kwargs).detach()
        norm = rules.norm(func, args, kwargs)
        if norm is not None:  # nor through a normaliser's divisor
            return norm[1]
        if func in (F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices):
            return _avg_like_max(*args, **kwargs)
        return func(*args, **kwargs)


def _avg_like_max(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if dilation not in (1, (1, 1)):
        raise UnsupportedLayerError("a dilated max-pool: its receptive field is not measured here")
    out = F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad=True)
    return (out, torch.zeros_like(out, dtype=torch.long)) if return_indices else out


def measure_boxes(model: nn.Module, module: nn.Module, hw: Sequence[int], channels: int = 3,
                  device: torch.device | None = None, dtype: torch.dtype | None = None
                  ) -> tuple[list[tuple[int, int, int, int]], tuple[int, int]]:
    """The input boxes that two units of ``module``'s output see on an (H, W) input, the map's centre unit
    ``((h - 1) // 2, (w - 1) // 2)`` and its diagonal neighbour: ``([(top, left, bottom, right)] * 2, (h, w)
    of the map)``. One forward and one backward of two copies of one random input, each seeded at one unit
    (images do not mix). The caller holds ``exclusive(model)``.
    """
    x = torch.randn(1, channels, *hw, device=device, dtype=dtype).expand(2, -1, -1, -1).clone().requires_grad_(True)
    with own_call() as token, torch.enable_grad(), _LinearSurrogate():
        # the weights detached, the user's modules untouched (``models.lock``); stopped at the module
        y = capture({"y": module}, lambda: eval_view(model)(x), token=token)["y"]
    h, w = y.shape[-2:]
    r, c = (h - 1) // 2, (w - 1) // 2
    seed = torch.zeros_like(y)
    seed[0, :, r, c] = 1.0
    if h > 1 and w > 1:
        seed[1, :, r + 1, c + 1] = 1.0
    (g,) = torch.autograd.grad(y, x, seed)
    boxes = []
    for k in range(2):
        support = g[k].abs().sum(0) > 0
        rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
        boxes.append((0, 0, 0, 0) if len(rows) == 0 else
                     (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes, (h, w)
