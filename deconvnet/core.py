"""The deconvnet engine: record switches with forward hooks, then walk the module stack down.

One model-agnostic core. ``record`` runs the model's own forward (torchvision's in-place ReLUs included)
with hooks that keep, for every module up to the deepest requested layer, its input/output shapes and,
for max-pools, the switches (argmax positions). The forward stops right after the deepest requested
layer. ``walk_down`` then applies, from that layer to the pixels, the deconvnet rule of each module:

======================  ==========================================================================
forward module          deconvnet step (Zeiler & Fergus 2014; REFERENCE.md)
======================  ==========================================================================
Conv2d                  ``conv_transpose2d`` with the same weight tensor, no bias, output size = the
                        forward input size exactly
ReLU                    ReLU on the reconstruction (ignores the forward input: the deconvnet rule)
MaxPool2d               unpool at the switches by scatter-add (the exact transpose, also for
                        overlapping windows, padding and ceil_mode)
BatchNorm2d (eval)      multiply by gamma / sqrt(running_var + eps)
Linear                  multiply by the transposed weight, no bias
AdaptiveAvgPool2d,      the adjoint of the (linear) pooling
AvgPool2d
Dropout, Identity,      identity (a flatten is undone by reshaping to the recorded shape)
Flatten
======================  ==========================================================================
"""

from __future__ import annotations

import numbers
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .models import Net
from .preprocessing import Preprocessing
from .memory import check_memory, is_out_of_memory, memory_error
from .switches import PoolSwitches

Position = Union[str, tuple[int, int], torch.Tensor]
SUPPORTED = (
    "Conv2d, ReLU, MaxPool2d, BatchNorm2d (eval mode), Linear, AdaptiveAvgPool2d, AvgPool2d, "
    "Dropout, Identity, Flatten"
)
UNPOOL_MODES = ("scatter_add", "max_unpool")


@dataclass(frozen=True)
class Target:
    """What to project: a layer (paper name), a channel and a position in its map.

    Attributes:
        layer: ``"conv5_3"``, ``"relu4_3"``, ``"pool5"``, ...
        channel: a channel index, ``"max"`` (per image, the channel holding the layer's strongest
            activation), or a (B,) tensor of one channel per image.
        position: ``"max"`` (per image, the strongest unit of the channel's map), ``(row, col)``,
            a (B, 2) integer tensor of one unit per image, ``"all"`` (the whole map) or a mask of shape
            (h, w) or (B, h, w), bool or float, that weights the map.
    """

    layer: str
    channel: Union[int, str, torch.Tensor] = "max"
    position: Position = "max"


@dataclass
class Projection:
    """The result of projecting one target for a batch of images.

    Attributes:
        projection: (B, 3, H, W) in the model's input space (channel order of the model).
        activation: (B,) the value of the strongest projected unit (for a point target, the unit's).
        position: (B, 2) row, col of that unit in the layer's map.
        channel: (B,) the channel projected.
        layer: the layer's paper name.
        target: the ``Target`` asked for.
        input: (B, 3, H, W) the model input that was projected.
        preprocessing: the model's preprocessing, for display.
        weights: one line naming model and weights (``Net.describe()``).
        map_size: (h, w) of the layer's map ((1, 1) for a layer without one).
        box: for a point target of a spatial layer, (B, 4) int64 ``(top, left, bottom, right)``: the
            receptive field of the unit in input pixels (bottom/right exclusive, not clipped to the
            image); None for whole maps, masks and fc layers, whose units see more than one box.
    """

    projection: torch.Tensor
    activation: torch.Tensor
    position: torch.Tensor
    channel: torch.Tensor
    layer: str
    target: Target
    input: torch.Tensor
    preprocessing: Preprocessing
    weights: str
    map_size: tuple[int, int] = (1, 1)
    box: torch.Tensor | None = None
    label: list[str] | None = None

    def projection_rgb(self) -> torch.Tensor:
        """The projection with its channels in RGB order (what display functions want)."""
        return self.preprocessing.to_rgb_order(self.projection)

    def image_rgb(self) -> torch.Tensor:
        """The input image as RGB in [0, 1]."""
        return self.preprocessing.inverse(self.input)


@dataclass
class Record:
    """What one hooked forward pass recorded.

    Attributes:
        shapes: stack index -> (input shape, output shape) of every module up to the deepest layer.
        switches: stack index -> the pool's ``PoolSwitches`` (compact: the argmax as a one-byte offset
            inside its window; ``.flat()`` gives PyTorch's int64 flat indices).
        activations: layer name -> its output (B, C, h, w) or (B, F), a copy (in-place ReLUs overwrite).
        depth: stack index of the deepest recorded module.
    """

    shapes: dict[int, tuple[torch.Size, torch.Size]] = field(default_factory=dict)
    switches: dict[int, PoolSwitches] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    depth: int = -1


class _StopForward(Exception):
    """Raised by the hook of the deepest requested layer: nothing above it needs computing."""


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def hooked(model: nn.Module):
    """Exclusive use of ``model`` for a hooked forward, in eval mode.

    Hooks live on the model's modules, so two hooked forwards of one model at once (two threads, or two
    ``Deconvnet`` objects on one model) would see each other's hooks and stop signals: this lock, one per
    model, serialises them. Inside, every module is in eval mode (BatchNorm uses its running statistics
    and is not updated, Dropout is off: the deconvnet mirrors the trained network), and the modes are
    restored on the way out, also after an error.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(model, threading.RLock())
    with lock:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training


def check_input(x: torch.Tensor, net: Net) -> torch.Tensor:
    """Validate a model input batch and move it to the model's device and dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor (B, 3, H, W), got {type(x).__name__}. Hint: x = net.preprocess(image)")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"expected an input of shape (B, 3, H, W), got {tuple(x.shape)}. Hint: x = net.preprocess(image)"
            + (", or x.unsqueeze(0) for a single (3, H, W) image" if x.dim() == 3 else "")
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input, got {x.dtype}. Hint: x = net.preprocess(image)")
    if not torch.isfinite(x).all():
        raise ValueError("the input contains NaN or infinite values")
    return x.to(device=net.device, dtype=net.dtype)


def record(
    net: Net,
    x: torch.Tensor,
    layers: Sequence[str],
    *,
    switches: bool = True,
    reduce: Callable[[torch.Tensor], object] | None = None,
) -> Record:
    """Run the model's forward up to the deepest of ``layers``, recording shapes, switches, activations.

    Args:
        switches: record the max-pool switches (a scan that only needs activations passes False).
        reduce: if given, ``activations[layer]`` holds ``reduce(output)``, computed inside the forward
            before a following in-place ReLU overwrites the output, instead of a copy of the output
            (the dataset scan keeps only per-map maxima this way, with no copies of large maps).

    Hooks exist only inside this call: they are removed in ``finally``, also when the forward raised.
    """
    x = check_input(x, net)
    if not net.is_chain:
        return _record_graph(net, x, layers, reduce)
    depth_of = {layer: net.depth(layer) for layer in layers}
    deepest = max(depth_of.values())
    wanted = {}
    for layer, d in depth_of.items():
        wanted.setdefault(d, []).append(layer)
    rec = Record(depth=deepest)
    last = {"index": -1}

    def make_hook(i: int, m: nn.Module) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            inp = inputs[0]
            indices = None
            if isinstance(output, tuple):  # MaxPool2d(return_indices=True)
                output, indices = output
            elif switches and isinstance(module, nn.MaxPool2d):
                indices = F.max_pool2d(
                    inp, module.kernel_size, module.stride, module.padding, module.dilation,
                    ceil_mode=module.ceil_mode, return_indices=True,
                )[1]
            if indices is not None:
                rec.switches[i] = PoolSwitches.from_indices(indices, tuple(inp.shape[-2:]), module)
            rec.shapes[i] = (inp.shape, output.shape)
            for layer in wanted.get(i, ()):
                if reduce is not None:
                    rec.activations[layer] = reduce(output.detach())
                else:  # a copy, since a following in-place ReLU would overwrite it; none if we stop here
                    rec.activations[layer] = output.detach() if i == deepest else output.detach().clone()
            last["index"] = i
            if i == deepest:
                raise _StopForward

        return hook

    if reduce is None:  # a scan (reduce) checks its batch size itself, once
        check_memory(net, x.shape[0], x.shape[-2:], deepest)
    handles = []
    with hooked(net.model):
        try:
            for i, (_, m) in enumerate(net.stack[: deepest + 1]):
                handles.append(m.register_forward_hook(make_hook(i, m)))
            with torch.no_grad():
                net.model(x)
        except _StopForward:
            pass
        except (RuntimeError, MemoryError) as err:
            if is_out_of_memory(err):
                raise memory_error(err, f"running {net.arch} on an input of {tuple(x.shape)}") from err
            failed = net.stack[last["index"] + 1][0] if last["index"] + 1 < len(net.stack) else "?"
            raise ValueError(
                f"the forward pass failed at module '{failed}' for an input of {tuple(x.shape[-2:])}: "
                f"{str(err).splitlines()[0]}. Hint: the input may be too small to reach layer(s) {', '.join(layers)}"
            ) from err
        finally:
            for h in handles:
                h.remove()
    if rec.depth not in rec.shapes:
        raise RuntimeError(
            f"the forward pass of {net.arch} never reached '{net.stack[deepest][0]}': is net.stack the "
            "module order of net.model's forward?"
        )
    if reduce is None:
        for layer, a in rec.activations.items():
            if not torch.isfinite(a).all():
                raise ValueError(
                    f"layer '{layer}' of {net.describe()} computes NaN or infinite values on a finite input: "
                    "the weights are broken. Hint: check the weights file, or load another source"
                )
    return rec


def _record_graph(net: Net, x: torch.Tensor, layers: Sequence[str], reduce: Callable | None) -> Record:
    """``record`` for a graph: the target layers' outputs (or ``reduce`` of them) from one forward."""
    from . import graph

    graph.check_modules(net.model)
    names = [net.resolve(layer) for layer in layers]
    with hooked(net.model):
        _, outputs = graph.forward(net.model, x, {n: net.layers[n] for n in names}, grad=False, reduce=reduce)
    rec = Record(activations={layer: outputs[n] for layer, n in zip(layers, names)})
    if reduce is None:
        for layer, a in rec.activations.items():
            if not torch.isfinite(a).all():
                raise ValueError(f"layer '{layer}' of {net.describe()} computes NaN or infinite values on a finite "
                                 "input: the weights are broken. Hint: check the weights, or load others")
    return rec


# --- the deconvnet steps ----------------------------------------------------------------------------

def _pair(v: Union[int, tuple]) -> tuple[int, int]:
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
            totals = [d * (kk - 1) for d, kk in zip(dilation, k)]
            if any(t % 2 for t in totals):
                raise ValueError(f"Conv2d padding='same' with asymmetric padding {totals} is not supported")
            padding = tuple(t // 2 for t in totals)
    else:
        padding = _pair(m.padding)
    out_pad = []
    for n_in, n_out, s, p, d, kk in zip(in_hw, r.shape[-2:], stride, padding, dilation, k):
        base = (n_out - 1) * s - 2 * p + d * (kk - 1) + 1
        out_pad.append(n_in - base)
    return F.conv_transpose2d(r, m.weight, None, stride, padding, tuple(out_pad), m.groups, dilation)


def unpool_scatter_add(r: torch.Tensor, switches: torch.Tensor, in_hw: Sequence[int]) -> torch.Tensor:
    """Unpool at the switches, summing where windows share a maximum: the exact transpose of max-pooling."""
    n, c = r.shape[:2]
    out = r.new_zeros(n, c, in_hw[0] * in_hw[1])
    out.scatter_add_(2, switches.reshape(n, c, -1), r.reshape(n, c, -1))
    return out.view(n, c, in_hw[0], in_hw[1])


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
) -> torch.Tensor:
    """One deconvnet step down through module ``m`` (see the module docstring for the rules)."""
    n = r.shape[0]
    if isinstance(m, nn.Conv2d):
        return conv_transpose_like(m, r, in_shape[-2:])
    if isinstance(m, nn.ReLU):
        return F.relu(r)
    if isinstance(m, nn.MaxPool2d):
        flat = switches.flat()
        reps = n // flat.shape[0]
        sw = flat if reps == 1 else flat.repeat(reps, 1, 1, 1)
        if unpool == "max_unpool":
            return F.max_unpool2d(r, sw, m.kernel_size, m.stride, m.padding, output_size=in_shape[-2:])
        return unpool_scatter_add(r, sw, in_shape[-2:])
    if isinstance(m, nn.BatchNorm2d):  # the forward ran in eval mode (``hooked``): running statistics
        if m.running_var is None:
            raise ValueError(f"BatchNorm2d '{name}' has no running statistics (track_running_stats=False): no deconvnet rule")
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


#: the module types the chain walk has a rule for (``deconv_step``)
CHAIN_RULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, nn.Linear, nn.AdaptiveAvgPool2d,
               nn.AvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)


def check_supported(net: Net, depth: int) -> None:
    """Raise before any work if a module below ``depth`` has no deconvnet rule."""
    for name, m in net.stack[: depth + 1]:
        if not isinstance(m, CHAIN_RULES):
            raise ValueError(f"module '{name}' ({type(m).__name__}) has no deconvnet rule. Supported: {SUPPORTED}")


def walk_down(
    net: Net,
    rec: Record,
    seeds: dict[int, torch.Tensor],
    *,
    unpool: str = "scatter_add",
    trace: Callable[[int, str, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Project seeds down to pixel space in one pass.

    Args:
        seeds: stack index -> (G * B, ...) signals placed on that module's output; B is the recorded
            batch, G the number of targets at that layer (image-major inside each target group).
            Deeper groups go first in the result; a shallower group joins the running batch when the
            walk reaches its layer.
        trace: called as ``trace(index, name, r)`` after each step, ``r`` the signal on the input of
            module ``index``.

    Returns:
        (sum of G * B, 3, H, W), groups ordered from the deepest seed layer to the shallowest.
    """
    r = None
    for i in range(max(seeds), -1, -1):
        in_shape, out_shape = rec.shapes[i]
        if i in seeds:
            s = seeds[i].reshape(-1, *out_shape[1:])
            r = s if r is None else torch.cat([r.reshape(-1, *out_shape[1:]), s])
        else:
            r = r.reshape(-1, *out_shape[1:])
        name, m = net.stack[i]
        r = deconv_step(m, r, in_shape, rec.switches.get(i), name=name, unpool=unpool)
        if trace is not None:
            trace(i, name, r)
    return r


# --- the receptive-field-cropped walk ---------------------------------------------------------------------

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
    ((n - 1) s + d (k - 1) + 1 on each axis), its origin ``origin * s - p``.
    """
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
    for i in range(depth, -1, -1):
        name, m = net.stack[i]
        in_hw = rec.shapes[i][0][-2:]
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"module '{name}': the cropped walk needs a zero-padded Conv2d with numeric padding")
            s, p, d = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            r = F.conv_transpose2d(r, m.weight, None, s, 0, 0, m.groups, d)
            origin = origin * torch.tensor(s, device=origin.device) - torch.tensor(p, device=origin.device)
            if bool((origin < 0).any()) or bool((origin + torch.tensor(r.shape[-2:], device=origin.device) > torch.tensor(in_hw, device=origin.device)).any()):
                r.mul_(_inside(origin, r.shape[-2:], in_hw))  # clear the zero padding (windows at a border)
        elif isinstance(m, nn.MaxPool2d):
            sw = rec.switches[i]
            r = _unpool_window(r, origin, image, sw)
            origin = origin * torch.tensor(sw.stride, device=origin.device) - torch.tensor(sw.padding, device=origin.device)
        elif isinstance(m, nn.ReLU):
            r.clamp_(min=0)  # r is this walk's own tensor: rectify in place
        else:
            r = deconv_step(m, r, r.shape, None, name=name)
    return r, origin


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


# --- targets to seeds ----------------------------------------------------------------------------------

def select_target(act: torch.Tensor, target: Target, net: Net) -> tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A function building the seed (B, C, h, w) or (B, F), and per image: channel, activation, position."""
    b, c = act.shape[:2]
    spatial = act.dim() == 4
    a4 = act if spatial else act.view(b, c, 1, 1)
    h, w = a4.shape[-2:]
    ch = target.channel
    if isinstance(ch, torch.Tensor):  # one channel per image
        channels = ch.to(device=act.device, dtype=torch.long).reshape(-1)
        if channels.numel() != b or not ((channels >= 0) & (channels < c)).all():
            raise ValueError(f"per-image channels {ch.tolist()} must be {b} values in [0, {c}) for layer '{target.layer}'")
    elif isinstance(ch, str):
        if ch != "max":
            raise ValueError(f"channel '{ch}' is not understood. Hint: an integer in [0, {c}) or 'max'")
        channels = a4.flatten(2).amax(2).argmax(1)
    else:
        if isinstance(ch, numbers.Integral) and not isinstance(ch, bool):
            ch = int(ch)  # numpy integers too
        if isinstance(ch, bool) or not isinstance(ch, int) or not 0 <= ch < c:
            raise ValueError(f"channel {ch!r} is out of range for layer '{target.layer}' of {net.arch}, which has {c} channels. Hint: use 0..{c - 1} or 'max'")
        channels = torch.full((b,), ch, dtype=torch.long, device=act.device)
    maps = a4[torch.arange(b, device=act.device), channels]  # (B, h, w)
    pos = target.position
    if isinstance(pos, str):
        if pos not in ("max", "all"):
            raise ValueError(f"position '{pos}' is not understood. Hint: 'max', 'all', (row, col) or a mask")
        weight = None if pos == "max" else torch.ones_like(maps)
    elif isinstance(pos, torch.Tensor) and not pos.is_floating_point() and pos.dtype != torch.bool:
        units = pos.to(device=act.device, dtype=torch.long)  # (B, 2): one unit per image
        if units.shape != (b, 2):
            raise ValueError(f"per-image positions must be a ({b}, 2) integer tensor, got {tuple(pos.shape)}")
        if not ((units[:, 0] >= 0) & (units[:, 0] < h) & (units[:, 1] >= 0) & (units[:, 1] < w)).all():
            raise ValueError(f"per-image positions {units.tolist()} leave layer '{target.layer}''s {h}x{w} map")
        weight = torch.zeros_like(maps)
        weight[torch.arange(b, device=act.device), units[:, 0], units[:, 1]] = 1
    elif isinstance(pos, torch.Tensor):
        mask = pos.to(device=act.device, dtype=act.dtype)
        if mask.shape not in ((h, w), (b, h, w)):
            raise ValueError(f"mask of shape {tuple(pos.shape)} does not fit layer '{target.layer}': its map is {h}x{w}; give (h, w) or ({b}, {h}, {w})")
        weight = mask.expand(b, h, w)
    else:
        try:
            row, col = (int(v) for v in pos)
        except (TypeError, ValueError):
            raise ValueError(f"position {pos!r} is not understood. Hint: 'max', 'all', (row, col) or a mask") from None
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"position ({row}, {col}) is outside layer '{target.layer}''s {h}x{w} map for this input size")
        weight = torch.zeros_like(maps)
        weight[:, row, col] = 1
    if weight is None:  # "max": the strongest unit of each image's map
        flat = maps.flatten(1).argmax(1)
        weight = torch.zeros_like(maps).flatten(1).scatter_(1, flat[:, None], 1.0).view_as(maps)
    seeded = maps * weight
    # the strongest projected unit (ties: first in row-major order)
    score = torch.where(weight != 0, seeded, torch.full_like(seeded, float("-inf")))
    flat = score.flatten(1).argmax(1)
    position = torch.stack([flat // w, flat % w], 1)
    activation = seeded.flatten(1).gather(1, flat[:, None]).squeeze(1)

    def seed_map() -> torch.Tensor:  # built only by the full walk: the cropped one needs no maps
        seed = torch.zeros_like(a4)
        seed[torch.arange(b, device=act.device), channels] = seeded
        return seed.view_as(act)

    return seed_map, channels, activation, position


def _is_point(position: Position) -> bool:
    """Whether a target's position names one unit per image (``"max"``, ``(row, col)``, (B, 2) integers)."""
    if isinstance(position, torch.Tensor):
        return not position.is_floating_point() and position.dtype != torch.bool
    if isinstance(position, str):
        return position == "max"
    return True  # (row, col) in any sequence form; select_target has checked it


ENGINES = ("auto", "chain", "graph")


class Deconvnet:
    """Zeiler & Fergus's deconvnet mirrored on a model.

    Args:
        net: a ``Net`` (``load_vgg``, ``load_alexnet``, ``load_model``) or any ``nn.Module`` (wrapped by
            ``deconvnet.wrap``: VGG/AlexNet and ``nn.Sequential`` chains, other models as graphs).
        engine: ``"auto"`` (default): the module-by-module walk for chains, the autograd graph
            (``deconvnet.graph``) for the others; ``"chain"`` or ``"graph"`` to choose (they agree).
        unpool: ``"scatter_add"`` (default, the exact transpose of max-pooling) or ``"max_unpool"``
            (``F.max_unpool2d``, which overwrites where overlapping windows share a maximum).
        max_batch: most projections per deconv pass (bounds memory).
        crop: ``"auto"`` (default): point targets of spatial layers are projected inside their
            receptive-field windows only (``walk_down_cropped``; equal to the full projection) when the
            window is smaller than the image; ``True``: always; ``False``: always walk the whole maps.

    Example:
        >>> deconv = Deconvnet(net)
        >>> p = deconv.project(x, layer="conv5_3", channel=441, position="max")
    """

    def __init__(self, net: Net | nn.Module, *, engine: str = "auto", unpool: str = "scatter_add", max_batch: int = 32,
                 crop: Union[str, bool] = "auto") -> None:
        from .models import wrap

        net = wrap(net)
        if engine not in ENGINES:
            raise ValueError(f"engine '{engine}' is not understood. Hint: one of {', '.join(ENGINES)}")
        if engine == "chain" and not net.is_chain:
            raise ValueError(f"{net.arch} is not a chain of modules; engine='chain' cannot walk it. Hint: engine='auto'")
        self.engine = "chain" if engine == "auto" and net.is_chain else ("graph" if engine == "auto" else engine)
        if self.engine == "graph" and unpool != "scatter_add":
            raise ValueError("the graph engine unpools through the max-pool gradient (scatter_add) only")
        if unpool not in UNPOOL_MODES:
            raise ValueError(f"unpool '{unpool}' is not understood. Hint: one of {', '.join(UNPOOL_MODES)}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if crop not in ("auto", True, False):
            raise ValueError(f"crop {crop!r} is not understood. Hint: 'auto', True or False")
        self.net, self.unpool, self.max_batch, self.crop = net, unpool, max_batch, crop

    def record(self, x: torch.Tensor, layers: Sequence[str]) -> Record:
        """One hooked forward up to the deepest of ``layers`` (see ``deconvnet.core.record``)."""
        return record(self.net, x, layers)

    def project(
        self, x: torch.Tensor, layer: str, channel: Union[int, str] = "max", position: Position = "max"
    ) -> Projection:
        """Project one target for a batch of images: every other activation of the layer set to zero.

        Args:
            x: (B, 3, H, W) model input (``net.preprocess``).
            layer: paper layer name, e.g. ``"conv5_3"``.
            channel: channel index or ``"max"``.
            position: ``"max"``, ``(row, col)``, ``"all"`` or a mask; see ``Target``.

        Returns:
            A ``Projection``; ``projection`` is (B, 3, H, W) in the model's input space.
        """
        return self.project_many(x, [Target(layer, channel, position)])[0]

    def project_many(self, x: torch.Tensor, targets: Sequence[Target]) -> list[Projection]:
        """Project many targets: one forward for the batch, deconv passes batched over targets.

        Point targets (position ``"max"``, ``(row, col)`` or per-image units) of spatial layers take the
        receptive-field-cropped path when ``crop`` allows; the others walk the whole maps. Equal to
        projecting the targets one by one. Returns one ``Projection`` per target, in order.
        """
        targets = [t if isinstance(t, Target) else Target(*t) for t in targets]
        if not targets:
            return []
        targets = [Target(self.net.resolve(t.layer), t.channel, t.position) for t in targets]
        if self.engine == "graph":
            return self._project_graph(x, targets)
        depths = [self.net.depth(t.layer) for t in targets]
        check_supported(self.net, max(depths))
        x = check_input(x, self.net)
        rec = self.record(x, sorted({t.layer for t in targets}))
        selected = [select_target(rec.activations[t.layer], t, self.net) for t in targets]
        b, hw = x.shape[0], x.shape[-2:]
        results: list[torch.Tensor | None] = [None] * len(targets)
        cropped = [k for k, t in enumerate(targets) if self._crops(t, depths[k], hw)]
        full = [k for k in range(len(targets)) if k not in set(cropped)]
        with torch.no_grad():
            self._project_cropped(rec, cropped, depths, selected, b, hw, results)
            self._project_full(rec, full, depths, selected, b, results)
        return [
            Projection(
                projection=results[k],
                activation=selected[k][2],
                position=selected[k][3],
                channel=selected[k][1],
                layer=t.layer,
                target=t,
                input=x,
                preprocessing=self.net.preprocessing,
                weights=self.net.describe(),
                map_size=tuple(rec.activations[t.layer].shape[-2:]) if rec.activations[t.layer].dim() == 4 else (1, 1),
                box=self._boxes(t, depths[k], selected[k][3]),
                label=self._label(rec.activations[t.layer], selected[k][1]),
            )
            for k, t in enumerate(targets)
        ]

    def _project_graph(self, x: torch.Tensor, targets: list[Target]) -> list[Projection]:
        """Targets through the model's autograd graph: one forward, one backward per target."""
        from . import graph

        graph.check_modules(self.net.model)
        x = check_input(x, self.net)
        layers = list(dict.fromkeys(t.layer for t in targets))
        check_memory(self.net, x.shape[0], x.shape[-2:])
        out = []
        with hooked(self.net.model):
            leaf, outputs = graph.forward(self.net.model, x, {n: self.net.layers[n] for n in layers}, grad=True)
            for layer in layers:
                if not torch.isfinite(outputs[layer]).all():
                    raise ValueError(f"layer '{layer}' of {self.net.describe()} computes NaN or infinite values on a "
                                     "finite input: the weights are broken. Hint: check the weights, or load others")
            for t in targets:
                act = outputs[t.layer]
                seed_map, channels, activation, position = select_target(act.detach(), t, self.net)
                projection = graph.project(leaf, act, seed_map())
                spatial = act.dim() == 4
                out.append(Projection(
                    projection=projection.detach(), activation=activation, position=position, channel=channels,
                    layer=t.layer, target=t, input=x, preprocessing=self.net.preprocessing,
                    weights=self.net.describe(), map_size=tuple(act.shape[-2:]) if spatial else (1, 1),
                    box=self._boxes(t, None, position) if spatial else None,
                    label=self._label(act, channels),
                ))
        return out

    def _label(self, act: torch.Tensor, channels: torch.Tensor) -> list[str] | None:
        """Class names of the projected channels, when the layer is the model's output and the weights name them."""
        cats = self.net.categories
        if cats is None or act.dim() != 2 or act.shape[1] != len(cats):
            return None
        return [cats[int(c)] for c in channels]

    def _boxes(self, target: Target, depth: int | None, position: torch.Tensor) -> torch.Tensor | None:
        """(B, 4) receptive-field boxes of a point target's units; None where a target has no one box."""
        if not _is_point(target.position) or not self.net.is_spatial(target.layer):
            return None
        from .receptive import receptive_field

        if not self.net.is_chain and target.layer not in self.net._receptive:
            return None  # a graph's receptive field is measured (receptive_field), not computed on every call
        try:
            rf = receptive_field(self.net, target.layer)
        except ValueError:
            return None
        return torch.tensor([rf.box(int(r), int(c)) for r, c in position.tolist()], dtype=torch.long)

    def _crops(self, target: Target, depth: int, hw: Sequence[int]) -> bool:
        """Whether a target takes the cropped path (see ``crop`` in the class docstring)."""
        if self.crop is False or self.unpool != "scatter_add":
            return False
        if not _is_point(target.position) or not self.net.is_spatial(target.layer):
            return False
        below = [m for _, m in self.net.stack[: depth + 1]]
        if not all(isinstance(m, CROPPABLE) for m in below):
            return False
        if any(isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros") for m in below):
            return False  # the cropped walk needs numeric zero padding; the whole-map walk handles these
        if self.crop is True:
            return True
        from .receptive import receptive_field

        size = receptive_field(self.net, target.layer).size
        return size[0] * size[1] < hw[0] * hw[1]  # "auto": only when the window is smaller than the image

    def net_layer(self, depth: int) -> str:
        """The paper name of the layer at stack index ``depth``."""
        module = self.net.stack[depth][1]
        return next(name for name, m in self.net.layers.items() if m is module)

    def _project_cropped(self, rec, ks, depths, selected, b, hw, results) -> None:
        by_depth: dict[int, list[int]] = {}
        for k in ks:
            by_depth.setdefault(depths[k], []).append(k)
        dev = next(iter(rec.activations.values())).device
        for depth, group in by_depth.items():
            image = torch.arange(b, device=dev).repeat(len(group))
            unit = torch.cat([selected[k][3] for k in group])
            # a point target's seed: its activation in its channel, zero in every other
            channels = torch.cat([selected[k][1] for k in group])
            activation = torch.cat([selected[k][2] for k in group])
            seed = activation.new_zeros(len(unit), self.net.channels[self.net_layer(depth)])
            seed[torch.arange(len(unit), device=dev), channels] = activation
            out = []
            for s in range(0, len(unit), self.max_batch):
                sl = slice(s, s + self.max_batch)
                windows, origin = walk_down_cropped(self.net, rec, depth, image[sl], unit[sl], seed[sl])
                out.append(paste(windows, origin, hw))
            out = torch.cat(out)
            for j, k in enumerate(group):
                results[k] = out[j * b : (j + 1) * b]

    def _project_full(self, rec, ks, depths, selected, b, results) -> None:
        per_pass = max(1, self.max_batch // b)
        order = sorted(ks, key=lambda k: -depths[k])  # deepest first, as walk_down returns
        for start in range(0, len(order), per_pass):
            chunk = order[start : start + per_pass]
            seeds: dict[int, list[torch.Tensor]] = {}
            for k in chunk:
                seeds.setdefault(depths[k], []).append(selected[k][0]())
            out = walk_down(self.net, rec, {d: torch.cat(s) for d, s in seeds.items()}, unpool=self.unpool)
            for j, k in enumerate(chunk):  # chunk is deepest-first, stable: walk_down's order
                results[k] = out[j * b : (j + 1) * b]

    def stages(self, x: torch.Tensor, target: Target) -> list[tuple[str, torch.Tensor]]:
        """The signal after every step down for one target: ``[(module name, tensor), ...]``.

        The first entry is the seed on the layer's output; the last is the projection.
        """
        depth = self.net.depth(target.layer)
        check_supported(self.net, depth)
        rec = self.record(x, [target.layer])
        seed = select_target(rec.activations[target.layer], target, self.net)[0]()
        out = [(target.layer, seed)]
        with torch.no_grad():
            walk_down(self.net, rec, {depth: seed}, unpool=self.unpool,
                      trace=lambda i, name, r: out.append((name, r.clone())))
        return out
