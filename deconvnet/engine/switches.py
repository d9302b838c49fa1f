"""Compact max-pool switches: the argmax as an offset inside its pooling window.

PyTorch's ``return_indices`` gives int64 flat indices into the pool's input plane (8 bytes a switch).
A switch only needs to say which of the window's ``kh * kw`` positions won: one byte for windows of up
to 256 positions (VGG's 2x2: 4, AlexNet's 3x3: 9), an eighth of the memory. The flat index is
recovered exactly: ``row = o_row * s - p + d * (offset // kw)`` (and the same for columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class PoolSwitches:
    """The switches of one max-pool for a batch.

    Attributes:
        offsets: (B, C, h, w) uint8 (int16 for windows over 256 positions): the winning position
            ``t_row * kw + t_col`` inside each window.
        in_hw: (H, W) of the pool's input.
        kernel, stride, padding, dilation: the pool's geometry, as pairs.
    """

    offsets: torch.Tensor
    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def from_indices(cls, indices: torch.Tensor, in_hw: tuple[int, int], pool: nn.MaxPool2d) -> PoolSwitches:
        """Compress PyTorch's flat argmax indices (B, C, h, w) of ``pool``."""
        k, s = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        p, d = _pair(pool.padding), _pair(pool.dilation)
        h, w = indices.shape[-2:]
        dev = indices.device
        row, col = indices // in_hw[1], indices % in_hw[1]
        start_r = (torch.arange(h, device=dev) * s[0] - p[0]).view(h, 1)
        start_c = (torch.arange(w, device=dev) * s[1] - p[1]).view(1, w)
        tr, tc = (row - start_r) // d[0], (col - start_c) // d[1]
        dtype = torch.uint8 if k[0] * k[1] <= 256 else torch.int16
        return cls((tr * k[1] + tc).to(dtype), tuple(in_hw), k, s, p, d)

    def window_rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_row, t_col) of each switch inside its window, int64."""
        off = self.offsets.long()
        return off // self.kernel[1], off % self.kernel[1]

    def flat(self) -> torch.Tensor:
        """The int64 flat indices into the (H * W) input plane, as ``return_indices`` gives them."""
        h, w = self.offsets.shape[-2:]
        dev = self.offsets.device
        tr, tc = self.window_rows_cols()
        row = (torch.arange(h, device=dev) * self.stride[0] - self.padding[0]).view(h, 1) + self.dilation[0] * tr
        col = (torch.arange(w, device=dev) * self.stride[1] - self.padding[1]).view(1, w) + self.dilation[1] * tc
        return row * self.in_hw[1] + col

    @property
    def nbytes(self) -> int:
        return self.offsets.numel() * self.offsets.element_size()


def disjoint(sw: PoolSwitches) -> bool:
    """Whether the pool's windows share no input position (stride at least the dilated kernel on each axis,
    VGG's 2x2 stride 2): then each input position has at most one window, and unpooling needs no sum."""
    sentinel_ok = sw.kernel[0] * sw.kernel[1] <= torch.iinfo(sw.offsets.dtype).max  # the "no switch" value fits
    return sentinel_ok and all(s >= d * (k - 1) + 1 for k, s, d in zip(sw.kernel, sw.stride, sw.dilation, strict=True))


def no_switch(sw: PoolSwitches) -> int:
    """An offset value that no window position has (windows outside the map): the dtype's maximum."""
    return torch.iinfo(sw.offsets.dtype).max


def unpool_disjoint(r: torch.Tensor, offsets: torch.Tensor, sw: PoolSwitches) -> torch.Tensor:
    """Unpool ``r`` (..., h, w) at its switches ``offsets`` (broadcastable to ``r``) for a pool whose windows
    are disjoint (``disjoint``): one masked copy per window position, no index tensor.

    Returns:
        (..., (h - 1) s + d (k - 1) + 1, ...) on each axis: the input positions that the windows cover, the
        first window's first position at 0; each value at its switch, zero elsewhere. An offset that is no
        window position (``no_switch``) puts nothing anywhere. Equal to the scatter-add: with disjoint
        windows no position receives two values.
    """
    *lead, h, w = r.shape
    (k0, k1), (s0, s1), (d0, d1) = sw.kernel, sw.stride, sw.dilation
    # s >= d (k - 1) + 1: each window inside its own s x s cell. Where the windows tile the cells (s = k,
    # d = 1: VGG's 2x2 stride 2) the passes below write every position, so no zero fill is needed first
    tiled = (d0, d1) == (1, 1) and (s0, s1) == (k0, k1)
    out = (r.new_empty if tiled else r.new_zeros)(*lead, h * s0, w * s1)
    cells = out.view(*lead, h, s0, w, s1)
    hit = torch.empty(offsets.shape, dtype=torch.bool, device=r.device)  # one mask buffer for every pass
    zero = r.new_zeros(())
    for tr in range(k0):
        for tc in range(k1):
            torch.eq(offsets, tr * k1 + tc, out=hit)
            torch.where(hit, r, zero, out=cells[..., :, d0 * tr, :, d1 * tc])
    return out[..., : (h - 1) * s0 + d0 * (k0 - 1) + 1, : (w - 1) * s1 + d1 * (k1 - 1) + 1]
