"""The chain walk's step down through each module (the deconvnet rule; docs/explanation/deconvnet.md).

======================  ==========================================================================
forward module          step down
======================  ==========================================================================
Conv2d                  ``conv_transpose2d`` with the same weight tensor, no bias, output size = the
                        forward input size exactly
ReLU                    ReLU on the reconstruction (ignores the forward input: the deconvnet rule);
                        guided backprop also keeps the forward mask, the gradient keeps only the mask
MaxPool2d               unpool at the switches: for disjoint windows (VGG's 2x2 stride 2) one masked
                        copy per window position (``switches.unpool_disjoint``); for overlapping
                        ones by scatter-add, summed where windows share a maximum (the exact
                        transpose, also with padding and ceil_mode)
BatchNorm2d (eval)      multiply by gamma / sqrt(running_var + eps)
Linear                  multiply by the transposed weight, no bias
AdaptiveAvgPool2d,      the adjoint of the (linear) pooling
AvgPool2d
Dropout, Identity,      identity (a flatten is undone by reshaping to the recorded shape)
Flatten
======================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import rules
from .switches import PoolSwitches, disjoint, unpool_disjoint

SUPPORTED = (
    "Conv2d, ReLU, MaxPool2d, BatchNorm2d (eval mode), Linear, AdaptiveAvgPool2d, AvgPool2d, "
    "Dropout, Identity, Flatten"
)


def _pair(v: int | tuple) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_transpose_like(m: nn.Conv2d, r: torch.Tensor, in_hw: Sequence[int]) -> torch.Tensor:
    """The adjoint of ``m`` (no bias) applied to ``r``, with output size exactly ``in_hw``."""
    if m.padding_mode != "zeros":
        raise ValueError(f"Conv2d with padding_mode='{m.padding_mode}' has no deconvnet rule here; only 'zeros'")
    stride, dilation, k = _pair(m.stride), _pair(m.dilation), _pair(m.kernel_size)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            padding = (0, 0)
        else:  # 'same' (stride 1): total padding d*(k-1), symmetric only when even
            totals = [d * (kk - 1) for d, kk in zip(dilation, k, strict=True)]
            if any(t % 2 for t in totals):
                raise ValueError(f"Conv2d padding='same' with asymmetric padding {totals} is not supported")
            padding = tuple(t // 2 for t in totals)
    else:
        padding = _pair(m.padding)
    out_pad = []
    for n_in, n_out, s, p, d, kk in zip(in_hw, r.shape[-2:], stride, padding, dilation, k, strict=True):
        base = (n_out - 1) * s - 2 * p + d * (kk - 1) + 1
        out_pad.append(n_in - base)
    return F.conv_transpose2d(r, m.weight, None, stride, padding, tuple(out_pad), m.groups, dilation)


def unpool_scatter_add(r: torch.Tensor, switches: torch.Tensor, in_hw: Sequence[int]) -> torch.Tensor:
    """Unpool at the switches, summing where windows share a maximum: the exact transpose of max-pooling."""
    n, c = r.shape[:2]
    out = r.new_zeros(n, c, in_hw[0] * in_hw[1])
    out.scatter_add_(2, switches.reshape(n, c, -1), r.reshape(n, c, -1))
    return out.view(n, c, in_hw[0], in_hw[1])


def unpool_full(r: torch.Tensor, sw: PoolSwitches) -> torch.Tensor:
    """Unpool whole maps (G * B, C, h, w), G targets of the recorded batch B, for a pool with disjoint windows:
    equal to ``unpool_scatter_add`` at ``sw.flat()`` repeated G times, without the index."""
    out = unpool_disjoint(r.reshape(-1, *sw.offsets.shape), sw.offsets, sw)  # (G, B, C, ...), from -padding
    out = out.reshape(r.shape[0], *out.shape[2:])
    (p0, p1), (hh, ww) = sw.padding, sw.in_hw
    if (p0, p1) == (0, 0) and tuple(out.shape[-2:]) == (hh, ww):
        return out
    full = r.new_zeros(r.shape[0], r.shape[1], hh, ww)  # ceil_mode and padding: crop to the input (no switch
    h, w = min(hh, out.shape[-2] - p0), min(ww, out.shape[-1] - p1)  # lies outside it)
    full[..., :h, :w] = out[..., p0 : p0 + h, p1 : p1 + w]
    return full


def _linear_adjoint(m: nn.Module, r: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    with torch.enable_grad():
        z = torch.zeros(in_shape, dtype=r.dtype, device=r.device, requires_grad=True)
        (g,) = torch.autograd.grad(m(z), z, r)
    return g


def deconv_step(
    m: nn.Module,
    r: torch.Tensor,
    in_shape: Sequence[int],
    switches: PoolSwitches | None,
    *,
    name: str,
    unpool: str = "scatter_add",
    rule: str = "deconvnet",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step down through module ``m`` (see the module docstring for the rules).

    ``rule`` chooses the step at a ReLU (``RULES``); the guided and gradient rules need ``mask``, where the
    ReLU's forward input was positive (``Record.masks``), repeated over the targets like the switches.
    """
    n = r.shape[0]
    if isinstance(m, nn.Conv2d):
        return conv_transpose_like(m, r, in_shape[-2:])
    if isinstance(m, nn.ReLU):
        at = rules.get(rule)
        if at.needs_mask:
            reps = n // mask.shape[0]
            mask = mask if reps == 1 else mask.repeat(reps, *([1] * (mask.dim() - 1)))
        return at.at_rectifier(r, mask)
    if isinstance(m, nn.MaxPool2d):
        if unpool == "scatter_add" and disjoint(switches):
            return unpool_full(r, switches)
        flat = switches.flat()
        reps = n // flat.shape[0]
        sw = flat if reps == 1 else flat.repeat(reps, 1, 1, 1)
        if unpool == "max_unpool":
            return F.max_unpool2d(r, sw, m.kernel_size, m.stride, m.padding, output_size=in_shape[-2:])
        return unpool_scatter_add(r, sw, in_shape[-2:])
    if isinstance(m, nn.BatchNorm2d):  # the forward ran in eval mode (``hooked``): running statistics
        if m.running_var is None:
            raise ValueError(f"BatchNorm2d '{name}' has no running statistics (track_running_stats=False): no "
                             "deconvnet rule")
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return r * scale.view(1, -1, 1, 1).to(r.dtype)
    if isinstance(m, nn.Linear):
        return r @ m.weight
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        return _linear_adjoint(m, r, (n, *in_shape[1:]))
    if isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten)):
        return r
    raise ValueError(f"module '{name}' ({type(m).__name__}) has no deconvnet rule. Supported: {SUPPORTED}")
