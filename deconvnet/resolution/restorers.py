"""The restorers: 2x2 max-pooling with its switches, and the seven ways of undoing it.

===========================  ========================================================================
method                       what it is
===========================  ========================================================================
``unpool``                   the maxima go back to their switch positions, zeros elsewhere (the
                             deconvnet's unpooling: the exact transpose of max-pooling)
``nearest``                  "upsampling by copying": each value to its 2x2 block, no positions
``bilinear``, ``bicubic``    ``F.interpolate`` (``align_corners=False``)
``tconv_bilinear``           a stride-2 transposed convolution with FCN's fixed bilinear 4x4 kernel
``tconv_trained``            the same layer (plus a bias) trained from that bilinear initialisation
``resize_conv_trained``      nearest resize then a 3x3 convolution (Odena et al. 2016), trained from
                             the identity kernel, i.e. from ``nearest``
===========================  ========================================================================

The two trained layers are depthwise (one kernel per channel): the question is how to restore the
positions within a map, and channel mixing would let a layer borrow from other channels. Their fixed
initialisations are rows of the same table (``init``), so "training helps" is a comparison within the
table. ``fit`` trains them; ``compare`` scores every method on one signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import positive_int
from ..engine.chain import unpool_scatter_add


@dataclass(frozen=True)
class Method:
    """One way of restoring the resolution.

    Attributes:
        key: short name used in tables (``"tconv_trained"``).
        label: name shown in figures.
        init: for a trained layer, the key of the fixed method it starts from; else None.
    """

    key: str
    label: str
    init: str | None = None


METHODS = (
    Method("unpool", "unpooling (switches)"),
    Method("nearest", "nearest (copying)"),
    Method("bilinear", "bilinear"),
    Method("bicubic", "bicubic"),
    Method("tconv_bilinear", "transposed conv,\nfixed bilinear kernel"),
    Method("tconv_trained", "transposed conv,\ntrained", init="tconv_bilinear"),
    Method("resize_conv_trained", "resize-conv,\ntrained", init="nearest"),
)
METHOD_KEYS = tuple(m.key for m in METHODS)


def _as_batch(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point (C, H, W) or (B, C, H, W) tensor, got {got}")
    x = x if x.dim() == 4 else x.unsqueeze(0)
    h, w = x.shape[-2:]
    if h < 2 or w < 2 or h % 2 or w % 2:
        raise ValueError(
            f"{name} has an odd or too small size {h}x{w}: 2x2 max-pooling and a 2x restoration need even "
            f"sizes. Hint: crop to {h - h % 2}x{w - w % 2}, e.g. x[..., :{h - h % 2}, :{w - w % 2}]"
        )
    return x


def max_pool_2x2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 stride-2 max-pooling with its switches.

    Args:
        x: (B, C, H, W) with even H and W.

    Returns:
        (pooled (B, C, H/2, W/2), switches): the argmax of every window as an index into the flattened
        H*W map, as ``F.max_pool2d(..., return_indices=True)`` gives them.
    """
    x = _as_batch(x)
    return F.max_pool2d(x, 2, 2, return_indices=True)


def unpool(pooled: torch.Tensor, switches: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Put each pooled value back at its switch, zeros elsewhere: the transpose of max-pooling.

    For non-overlapping windows this equals the gradient of max-pooling (tested), and
    ``F.max_unpool2d``.
    """
    return unpool_scatter_add(pooled, switches, tuple(size))


def bilinear_kernel(size: int) -> torch.Tensor:
    """FCN's bilinear upsampling kernel (``upsample_filt`` of Long et al. 2015), (size, size) float64.

    For size 4 (the kernel of a stride-2 transposed convolution with padding 1) it is the outer product
    of [0.25, 0.75, 0.75, 0.25] with itself: in the interior the layer equals bilinear interpolation with
    ``align_corners=False``; at the border it fades towards zero (zero padding, no renormalisation).
    """
    size = positive_int("size", size, hint="2 * factor - factor % 2, e.g. 4 for 2x")
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    f = 1 - (og - center).abs() / factor
    return f[:, None] * f[None, :]


def bilinear_transposed_conv(channels: int, *, bias: bool = False) -> nn.ConvTranspose2d:
    """A depthwise 2x transposed convolution (k=4, s=2, p=1) initialised with ``bilinear_kernel(4)``."""
    layer = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(4).to(layer.weight.dtype).expand_as(layer.weight))
        if bias:
            layer.bias.zero_()
    return layer


def resize_conv(channels: int, *, bias: bool = True) -> nn.Sequential:
    """Nearest 2x resize then a depthwise 3x3 convolution initialised to the identity (so = nearest)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=bias)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0
        if bias:
            conv.bias.zero_()
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)


def restore_fixed(method: str, pooled: torch.Tensor, switches: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Restore with one of the fixed methods (``unpool``, ``nearest``, ``bilinear``, ``bicubic``,
    ``tconv_bilinear``) to ``size`` (H, W)."""
    if method == "unpool":
        return unpool(pooled, switches, size)
    if method == "nearest":
        return F.interpolate(pooled, size=tuple(size), mode="nearest")
    if method in ("bilinear", "bicubic"):
        return F.interpolate(pooled, size=tuple(size), mode=method, align_corners=False)
    if method == "tconv_bilinear":
        with torch.no_grad():
            return bilinear_transposed_conv(pooled.shape[1]).to(pooled)(pooled)
    fixed = ("unpool", "nearest", "bilinear", "bicubic", "tconv_bilinear")
    raise ValueError(f"'{method}' is not a fixed method. Hint: one of {', '.join(fixed)}")
