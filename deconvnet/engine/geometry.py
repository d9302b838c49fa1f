"""Receptive fields of graphs from the geometry of the ops that the forward calls (one traced forward).

The model's own forward runs once, on a zero image of the real input size, under a ``TorchFunctionMode`` that
gives every tensor computed from the input its field: per axis of the last two dimensions ``(r, j, P)``, the
size, the jump and the padding (as ``receptive``'s recurrence). A convolution or a pool applies the
recurrence with its kernel, stride, padding and dilation; ``pad`` shifts the grid; an op that keeps the map's
size (ReLU, BatchNorm, add, cat along channels, ...) takes the union of its inputs' fields (paths of one jump:
the largest padding, the farthest end). What the recurrence cannot say is a reason instead of a field:
adaptive pools whose windows are not one size at this input, upsampling, ops that move or resize the map in
other ways (flips, rolls, spatial slices, transposes of the map's axes); the reason travels to the layer.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..models import Net
from ..models.lock import exclusive, own_call, owns
from . import ops
from .where import where_tracker

Axis = tuple[int, int, int]  # (size r, jump j, padding P)
#: (rows, cols, note), the note naming an adaptive pool on the way ("" if none: then the field holds at any
#: input size); or the reason why there is no field
Field = tuple[Axis, Axis, str] | str

_POOLS = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_ADAPTIVE = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "_adaptive_avg_pool2d"}
_MOVES = {"flip", "fliplr", "flipud", "roll", "rot90", "grid_sample", "affine_grid", "pixel_shuffle",
          "pixel_unshuffle", "conv_transpose2d", "conv_transpose1d", "conv_transpose3d", "conv1d", "conv3d",
          "unfold", "fold", "lp_pool2d", "fractional_max_pool2d", "max_unpool2d"}
_AXES = {"transpose", "transpose_", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "mT", "T"}


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return (int(v), int(v))


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _step(f: tuple, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int],
          note: str = "") -> Field:
    axes = tuple((r + d[a] * (k[a] - 1) * j, j * s[a], pp + p[a] * j) for a, (r, j, pp) in enumerate(f[:2]))
    return (*axes, f[2] or note)


def _union(fields: list[tuple]) -> Field:
    out: list[Any] = []
    for a in range(2):
        jumps = {f[a][1] for f in fields}
        if len(jumps) > 1:
            return f"paths of different strides ({sorted(jumps)}) meet"
        pad = max(f[a][2] for f in fields)
        out.append((max(f[a][0] - f[a][2] for f in fields) + pad, jumps.pop(), pad))
    return (*out, next((f[2] for f in fields if f[2]), ""))


def _moves_axes(name: str, args: tuple, out: torch.Tensor) -> bool:
    """Whether a transpose-like op moves one of the map's two axes."""
    if not args or not isinstance(args[0], torch.Tensor):
        return True
    n = args[0].dim()
    rest = [a for a in args[1:] if isinstance(a, int)] if name != "permute" else (
        list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:]))
    if name == "permute":
        dims = [d % n for d in rest]
        return dims[-2:] != [n - 2, n - 1]
    if name in ("t", "mT", "T") or len(rest) < 2:
        return True
    return any(d % n in (n - 2, n - 1) for d in rest[:2])


class _GeometryMode(TorchFunctionMode):
    def __init__(self, where) -> None:
        super().__init__()
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in ops.CONSTANTS or func in ops.QUERIES:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and hasattr(t, "_rf")]
        if not inputs:
            return out
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:
            return out
        field = self.field(func, args, kwargs, inputs, outs[0])
        for t in outs:
            t._rf = field
        return out

    def field(self, func, args, kwargs, inputs, y) -> Field:
        name = getattr(func, "__name__", "")
        reasons = [t._rf for t in inputs if isinstance(t._rf, str)]
        if reasons:
            return reasons[0]
        here = f"{name} in {self.where()}"
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "conv2d" and x is not None and hasattr(x, "_rf") and len(inputs) == 1:
            w = _arg(args, kwargs, 1, "weight", None)
            k, d = tuple(w.shape[-2:]), _pair(_arg(args, kwargs, 5, "dilation", 1))
            p = _arg(args, kwargs, 4, "padding", 0)
            if isinstance(p, str):
                p = (0, 0) if p == "valid" else tuple(dd * (kk - 1) // 2 for dd, kk in zip(d, k, strict=True))
            return _step(x._rf, k, _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(p), d)
        if name in _POOLS and x is not None and len(inputs) == 1:
            k = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
            s = _arg(args, kwargs, 2, "stride", None)
            s = k if s is None or s == [] or s == () else _pair(s)
            d = (1, 1) if name == "avg_pool2d" else _pair(_arg(args, kwargs, 4, "dilation", 1))
            return _step(x._rf, k, s, _pair(_arg(args, kwargs, 3, "padding", 0)), d)
        if name in _ADAPTIVE and x is not None:
            (h, w), (oh, ow) = x.shape[-2:], y.shape[-2:]
            if h % oh or w % ow:
                return f"{here} pools {h}x{w} to {oh}x{ow}, in windows of more than one size"
            return _step(x._rf, (h // oh, w // ow), (h // oh, w // ow), (0, 0), (1, 1),
                         note=f"{here} pools {h}x{w} to {oh}x{ow}")
        if name.startswith(("interpolate", "upsample")):
            return f"{here} upsamples the map: its units lie on no grid of whole pixels"
        if name == "pad" and x is not None and len(inputs) == 1:
            pad = list(_arg(args, kwargs, 1, "pad", ())) + [0, 0, 0, 0]
            (r0, j0, p0), (r1, j1, p1), note = x._rf
            return (r0, j0, p0 + pad[2] * j0), (r1, j1, p1 + pad[0] * j1), note
        if name in _MOVES or (name in _AXES and _moves_axes(name, args, y)):
            return f"{here} moves or reshapes the map"
        if y.dim() < 2 or any(t.dim() < 2 or t.shape[-2:] != y.shape[-2:] for t in inputs):
            return f"{here} changes the map's size"
        return _union([t._rf for t in inputs])


class _Reached(Exception):
    """Raised by the hook once the layer has given its output: nothing later is needed."""


def traced_field(net: Net, module: nn.Module, hw: tuple[int, int]) -> tuple[Field, tuple[int, int]]:
    """The field of ``module``'s output from one forward of a zero image of size ``hw`` (batch 1, stopped at
    the module): ``(field or reason, (h, w) of its map)``."""
    got: dict[str, torch.Tensor] = {}

    def hook(m, inputs, output):
        if owns(token) and "y" not in got:
            got["y"] = output
            raise _Reached

    x = torch.zeros(1, net.in_channels or 3, *hw, device=net.device, dtype=net.dtype)
    x._rf = ((1, 1, 0), (1, 1, 0), "")
    # the model's eval-mode view (``models.lock.exclusive``): the user's modules stay as they are (a BatchNorm
    # in training mode would update its statistics); hooks on the user's modules fire for the view
    with exclusive(net.model) as model, ExitStack() as stack:
        token = stack.enter_context(own_call())
        where = stack.enter_context(where_tracker(model, token))
        stack.callback(module.register_forward_hook(hook).remove)
        stack.enter_context(torch.no_grad())
        try:
            with _GeometryMode(where):
                model(x)
        except _Reached:
            pass
    y = got.get("y")
    if not isinstance(y, torch.Tensor) or y.dim() < 2:
        return "its output is not a map", (0, 0)
    return getattr(y, "_rf", "its output does not depend on the input"), tuple(y.shape[-2:])
