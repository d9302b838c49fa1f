"""The receptive-field-cropped walk of a chain (the deconvnet rule): point targets projected inside their
windows only, equal to the whole-map walk (``chain.walk_down``) cut to the windows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Net
from .steps import _pair, deconv_step
from .switches import PoolSwitches, disjoint, no_switch, unpool_disjoint
from .types import Record

CROPPABLE = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, nn.Dropout, nn.Identity)


def _inside(origin: torch.Tensor, size: Sequence[int], hw: Sequence[int]) -> torch.Tensor:
    """(N, 1, h, w) mask of the window positions that lie inside an (H, W) map."""
    dev = origin.device
    rows = origin[:, 0:1] + torch.arange(size[0], device=dev)
    cols = origin[:, 1:2] + torch.arange(size[1], device=dev)
    ok_r = (rows >= 0) & (rows < hw[0])
    ok_c = (cols >= 0) & (cols < hw[1])
    return (ok_r[:, None, :, None] & ok_c[:, None, None, :])


def _unpool_window(r: torch.Tensor, origin: torch.Tensor, image: torch.Tensor, sw: PoolSwitches) -> torch.Tensor:
    """Unpool a window (N, C, n_h, n_w) whose top-left unit is ``origin`` of image ``image``.

    The result is the window of the pool's input that those units cover,
    ((n - 1) s + d (k - 1) + 1 on each axis), its origin ``origin * s - p``. Disjoint windows take one
    masked copy per window position (the switches of each target's window sliced out of its image's, a
    "no switch" value outside the map); overlapping ones the scatter-add (``_unpool_window_scatter``).
    """
    if not disjoint(sw):
        return _unpool_window_scatter(r, origin, image, sw)
    n, c, nh, nw = r.shape
    h_out, w_out = sw.offsets.shape[-2:]
    off = sw.offsets.new_full((n, c, nh, nw), no_switch(sw))
    for k, (i, top, left) in enumerate(torch.cat([image.view(-1, 1), origin], 1).tolist()):
        t0, l0, t1, l1 = max(top, 0), max(left, 0), min(top + nh, h_out), min(left + nw, w_out)
        if t1 > t0 and l1 > l0:
            off[k, :, t0 - top : t1 - top, l0 - left : l1 - left] = sw.offsets[i, :, t0:t1, l0:l1]
    return unpool_disjoint(r, off, sw)


def _unpool_window_scatter(r: torch.Tensor, origin: torch.Tensor, image: torch.Tensor, sw: PoolSwitches
                           ) -> torch.Tensor:
    """``_unpool_window`` by a scatter-add through int64 indices: for any pool, overlapping windows summed."""
    n, c, nh, nw = r.shape
    dev = r.device
    h_out, w_out = sw.offsets.shape[-2:]
    rows = origin[:, 0:1] + torch.arange(nh, device=dev)  # (N, nh)
    cols = origin[:, 1:2] + torch.arange(nw, device=dev)
    off = sw.offsets[
        image.view(n, 1, 1, 1),
        torch.arange(c, device=dev).view(1, c, 1, 1),
        rows.clamp(0, h_out - 1).view(n, 1, nh, 1),
        cols.clamp(0, w_out - 1).view(n, 1, 1, nw),
    ].long()
    (s0, s1), (d0, d1), (k0, k1) = sw.stride, sw.dilation, sw.kernel
    mh, mw = (nh - 1) * s0 + d0 * (k0 - 1) + 1, (nw - 1) * s1 + d1 * (k1 - 1) + 1
    local_r = torch.arange(nh, device=dev).view(1, 1, nh, 1) * s0 + d0 * (off // k1)
    local_c = torch.arange(nw, device=dev).view(1, 1, 1, nw) * s1 + d1 * (off % k1)
    valid = _inside(origin, (nh, nw), (h_out, w_out))
    index = torch.where(valid, local_r * mw + local_c, torch.zeros_like(local_r))
    out = r.new_zeros(n, c, mh * mw)
    out.scatter_add_(2, index.reshape(n, c, -1), (r * valid).reshape(n, c, -1))
    return out.view(n, c, mh, mw)


def _grown(origin: torch.Tensor, stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """The top-left of a window one step down (a transposed convolution or an unpooling)."""
    return origin * torch.tensor(_pair(stride), device=origin.device) - torch.tensor(_pair(padding),
                                                                                   device=origin.device)


def _size(size: Sequence[int], stride: Sequence[int], dilation: Sequence[int], kernel: Sequence[int]
          ) -> tuple[int, int]:
    """The size of a window one step down: ``(n - 1) s + d (k - 1) + 1`` on each axis."""
    s, d, k = _pair(stride), _pair(dilation), _pair(kernel)
    return tuple((n - 1) * s[a] + d[a] * (k[a] - 1) + 1 for a, n in enumerate(size))


def _moved(r: torch.Tensor, origin: torch.Tensor, to: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Windows ``r`` (N, C, h, w) with top-left ``origin`` (N, 2) copied into zero windows of ``size`` with
    top-left ``to``: what the two have in common is kept, the rest of the new windows is zero."""
    n, c, h, w = r.shape
    out = r.new_zeros(n, c, size[0], size[1])
    for k, (top, left, new_top, new_left) in enumerate(torch.cat([origin, to], 1).tolist()):
        t0, l0 = max(top, new_top), max(left, new_left)
        t1, l1 = min(top + h, new_top + size[0]), min(left + w, new_left + size[1])
        if t1 > t0 and l1 > l0:
            out[k, :, t0 - new_top : t1 - new_top, l0 - new_left : l1 - new_left] = \
                r[k, :, t0 - top : t1 - top, l0 - left : l1 - left]
    return out


def _fit(r: torch.Tensor, origin: torch.Tensor, hw: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut windows larger than their map (H, W) on an axis to the map on that axis: outside the map they are
    zero (the zero padding), so the walk below computes no more than the whole-map walk does (a deep unit of
    a small image has a window many times the image)."""
    h, w = r.shape[-2:]
    if h <= hw[0] and w <= hw[1]:
        return r, origin
    to = origin.clone()
    size = [h, w]
    for axis, n in enumerate((h, w)):
        if n > hw[axis]:
            to[:, axis], size[axis] = 0, hw[axis]
    return _moved(r, origin, to, size), to


def walk_down_cropped(
    net: Net,
    rec: Record,
    depth: int,
    image: torch.Tensor,
    unit: torch.Tensor,
    seed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project point targets of one layer down inside their receptive-field windows only.

    A unit's projection is zero outside the cone of positions that can reach it, so each step computes
    the transposed convolution or the unpooling only inside that window, which grows on the way down.
    All targets of a layer share one window size, so they run as one batch; positions that fall
    outside a map (the zero padding) are cleared after each step, so image borders are exact.

    Args:
        depth: stack index of the targets' layer (its output holds the seeds).
        image: (N,) index into the recorded batch of each target's image.
        unit: (N, 2) row, col of each target's unit in the layer's map.
        seed: (N, C) the seeded values of the unit in every channel.

    Returns:
        (windows (N, 3, r_h, r_w), origins (N, 2)): each projection on its receptive-field box, whose
        top-left pixel is ``origin`` (it may be negative: the box is not clipped to the image).
    """
    r = seed.reshape(*seed.shape, 1, 1)
    origin = unit.clone()
    box, box_size = unit.clone(), (1, 1)  # the receptive-field window, which ``r`` is whenever it fits the map
    for i in range(depth, -1, -1):
        name, m = net.stack[i]
        in_hw = rec.shapes[i][0][-2:]
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"module '{name}': the cropped walk needs a zero-padded Conv2d with numeric padding")
            s, p, d = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            r = F.conv_transpose2d(r, m.weight, None, s, 0, 0, m.groups, d)
            origin, box, box_size = _grown(origin, s, p), _grown(box, s, p), _size(box_size, s, d, m.kernel_size)
            window = torch.tensor(r.shape[-2:], device=origin.device)
            if bool((origin < 0).any()) or bool((origin + window > torch.tensor(in_hw, device=origin.device)).any()):
                r.mul_(_inside(origin, r.shape[-2:], in_hw))  # clear the zero padding (windows at a border)
            r, origin = _fit(r, origin, in_hw)
        elif isinstance(m, nn.MaxPool2d):
            sw = rec.switches[i]
            r = _unpool_window(r, origin, image, sw)
            origin, box = _grown(origin, sw.stride, sw.padding), _grown(box, sw.stride, sw.padding)
            box_size = _size(box_size, sw.stride, sw.dilation, sw.kernel)
            r, origin = _fit(r, origin, in_hw)
        elif isinstance(m, nn.ReLU):
            r.clamp_(min=0)  # r is this walk's own tensor: rectify in place
        else:
            r = deconv_step(m, r, r.shape, None, name=name)
    if tuple(r.shape[-2:]) != box_size:  # a window was cut to its map on the way: give the whole box back
        r = _moved(r, origin, box, box_size)
    return r, box


def crop(images: torch.Tensor, origin: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Windows (N, C, size) of images (N, C, H, W) with top-left ``origin`` (N, 2); zero outside the images
    (``paste``'s inverse)."""
    n, c, hh, ww = images.shape
    out = images.new_zeros(n, c, size[0], size[1])
    for k in range(n):
        top, left = int(origin[k, 0]), int(origin[k, 1])
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + size[0], hh), min(left + size[1], ww)
        if t1 > t0 and l1 > l0:
            out[k, :, t0 - top : t1 - top, l0 - left : l1 - left] = images[k, :, t0:t1, l0:l1]
    return out


def paste(windows: torch.Tensor, origin: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Place windows (N, C, h, w) with top-left ``origin`` (N, 2) into zero images (N, C, H, W)."""
    n, c, h, w = windows.shape
    out = windows.new_zeros(n, c, hw[0], hw[1])
    for k in range(n):
        top, left = int(origin[k, 0]), int(origin[k, 1])
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + h, hw[0]), min(left + w, hw[1])
        if t1 > t0 and l1 > l0:
            out[k, :, t0:t1, l0:l1] = windows[k, :, t0 - top : t1 - top, l0 - left : l1 - left]
    return out


def croppable(net: Net, depth: int) -> bool:
    """Whether the cropped walk has a step for every module up to stack index ``depth``."""
    below = [m for _, m in net.stack[: depth + 1]]
    if not all(isinstance(m, CROPPABLE) for m in below):
        return False
    # the cropped walk needs numeric zero padding; the whole-map walk handles the others
    return not any(isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros")
                   for m in below)
