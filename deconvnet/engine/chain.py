"""The chain engine: the deconvnet walked down a stack of modules, step by step (Zeiler & Fergus 2014).

After ``record_chain`` has run the forward, ``walk_down`` applies, from the target's layer to the pixels, the
step of each module:

======================  ==========================================================================
forward module          step down (the deconvnet rule; docs/explanation/deconvnet.md)
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

Point targets can take ``walk_down_cropped``: each step only inside the unit's receptive-field window,
equal to the whole-map walk. ``ChainEngine`` puts both behind the engine interface of ``Deconvnet``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CHAIN_MODULES, Net
from ..models.lock import model_lock
from . import rules
from .receptive import receptive_field
from .record import Kept, check_input, record_chain
from .switches import PoolSwitches, disjoint, no_switch, unpool_disjoint
from .targets import is_point, select_target
from .types import Record, Target

SUPPORTED = (
    "Conv2d, ReLU, MaxPool2d, BatchNorm2d (eval mode), Linear, AdaptiveAvgPool2d, AvgPool2d, "
    "Dropout, Identity, Flatten"
)
UNPOOL_MODES = ("scatter_add", "max_unpool")


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


#: the module types the chain walk has a rule for (``deconv_step``); ``wrap`` makes chains of these only
CHAIN_RULES = CHAIN_MODULES


def check_supported(net: Net, depth: int) -> None:
    """Raise before any work if a module below ``depth`` has no deconvnet rule, or the walk cannot trust it
    (``check_faithful``)."""
    for name, m in net.stack[: depth + 1]:
        if not isinstance(m, CHAIN_RULES):
            raise ValueError(f"module '{name}' ({type(m).__name__}) has no deconvnet rule. Supported: {SUPPORTED}")
    check_faithful(net, depth)


_GRAPH_HINT = "Hint: Deconvnet(model, engine='graph') follows the forward call by call, and refuses what has no rule"


#: methods a subclass may redefine without changing what its forward computes
_HARMLESS = {"__init__", "__repr__", "extra_repr", "reset_parameters", "__setstate__", "_load_from_state_dict"}


def check_faithful(net: Net, depth: int) -> None:
    """Refuse, before any work, a chain whose forward up to stack index ``depth`` is not what the walk steps
    down by module type: a module of a subclass with its own ``forward`` (an ``nn.ReLU`` whose forward is a
    sigmoid), or a user's forward hook or pre-hook (on a module of the walk, on a container holding one, or
    a global one), which may change what flows. The check runs under the model's lock, so the hooks of
    another call of the engine (which holds it while they exist) are not taken for the user's."""
    from torch.nn.modules import module as module_globals

    with model_lock(net.model):
        for kind, hooks in (("forward hook", module_globals._global_forward_hooks),
                            ("forward pre-hook", module_globals._global_forward_pre_hooks)):
            if hooks:
                register = f"register_module_{kind.replace(' ', '_').replace('-', '_')}"
                raise ValueError(f"a global {kind} is registered (torch.nn.modules.module.{register}): "
                                 f"the chain walk cannot see what it changes. {_GRAPH_HINT}")
        walked = {id(m) for _, m in net.stack[: depth + 1]}
        holds: dict[int, bool] = {}

        def on_walk(m: nn.Module) -> bool:  # the module is walked, or holds one that is
            if id(m) not in holds:
                holds[id(m)] = id(m) in walked or any(on_walk(c) for c in m.children())
            return holds[id(m)]

        for name, m in net.model.named_modules():
            if not on_walk(m):
                continue
            for kind, hooks in (("forward hook", m._forward_hooks), ("forward pre-hook", m._forward_pre_hooks)):
                if hooks:
                    hook = next(iter(hooks.values()))
                    raise ValueError(f"module '{name or type(net.model).__name__}' ({type(m).__name__}) has a {kind} "
                                     f"({getattr(hook, '__qualname__', type(hook).__name__)}): the chain walk cannot "
                                     f"see what it changes. Hint: remove it (handle.remove()), or "
                                     f"{_GRAPH_HINT[6:]}")
        for name, m in net.stack[: depth + 1]:
            base = next(b for b in CHAIN_RULES if isinstance(m, b))
            own = [k for cls in type(m).__mro__[: type(m).__mro__.index(base)] for k, v in vars(cls).items()
                   if callable(v) and hasattr(base, k) and k not in _HARMLESS]
            if own:
                raise ValueError(f"module '{name}' ({type(m).__name__}) is a {base.__name__} with its own {own[0]}: "
                                 f"the chain walk steps down as for {base.__name__}, which may not mirror it. "
                                 f"{_GRAPH_HINT}")


def walk_down(
    net: Net,
    rec: Record,
    seeds: dict[int, torch.Tensor],
    *,
    unpool: str = "scatter_add",
    rule: str = "deconvnet",
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
        r = deconv_step(m, r, in_shape, rec.switches.get(i), name=name, unpool=unpool, rule=rule,
                        mask=rec.masks.get(i))
        if trace is not None:
            trace(i, name, r)
    return r


# --- the receptive-field-cropped walk (the deconvnet rule) ------------------------------------------------

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
            window = torch.tensor(r.shape[-2:], device=origin.device)
            if bool((origin < 0).any()) or bool((origin + window > torch.tensor(in_hw, device=origin.device)).any()):
                r.mul_(_inside(origin, r.shape[-2:], in_hw))  # clear the zero padding (windows at a border)
        elif isinstance(m, nn.MaxPool2d):
            sw = rec.switches[i]
            r = _unpool_window(r, origin, image, sw)
            origin = (origin * torch.tensor(sw.stride, device=origin.device)
                      - torch.tensor(sw.padding, device=origin.device))
        elif isinstance(m, nn.ReLU):
            r.clamp_(min=0)  # r is this walk's own tensor: rectify in place
        else:
            r = deconv_step(m, r, r.shape, None, name=name)
    return r, origin


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


class ChainEngine:
    """The engine for chains: one recorded forward, then walks down the stack (cropped where it can).

    Args:
        net: a chain (``net.is_chain``).
        rule, unpool, max_batch, crop: as ``Deconvnet``.
    """

    def __init__(self, net: Net, *, rule: str, unpool: str, max_batch: int, crop: str | bool,
                 keep: int = 0) -> None:
        self.net, self.rule, self.unpool, self.max_batch, self.crop = net, rule, unpool, max_batch, crop
        self.kept = Kept(keep)

    def record(self, x: torch.Tensor, layers: Sequence[str], *, switches: bool = True,
               reduce: Callable | None = None, masks: bool = False) -> Record:
        if reduce is not None:  # a scan's reduced record: nothing to keep
            return record_chain(self.net, x, layers, switches=switches, reduce=reduce)
        return self.kept.get(x, (tuple(layers), switches, masks),
                             lambda: record_chain(self.net, x, layers, switches=switches, masks=masks))

    def project(self, x: torch.Tensor, targets: list[Target]) -> tuple[list[torch.Tensor], list[tuple], Record]:
        """Projections (B, C, H, W) of resolved targets, their ``select_target`` results and the record."""
        depths = [self.net.depth(t.layer) for t in targets]
        check_supported(self.net, max(depths))
        x = check_input(x, self.net)
        rec = self.record(x, sorted({t.layer for t in targets}), masks=rules.get(self.rule).needs_mask)
        selected = [select_target(rec.activations[t.layer], t, self.net) for t in targets]
        b, hw = x.shape[0], x.shape[-2:]
        results: list[torch.Tensor | None] = [None] * len(targets)
        cropped = [k for k, t in enumerate(targets) if self.crops(t, depths[k], hw)]
        full = [k for k in range(len(targets)) if k not in set(cropped)]
        with torch.no_grad():
            self._project_cropped(rec, cropped, depths, selected, b, hw, results)
            self._project_full(rec, full, depths, selected, b, results)
        return results, selected, rec

    def project_seed(self, x: torch.Tensor, layer: str, seed: torch.Tensor) -> torch.Tensor:
        """Any signal (B, ...) placed on ``layer``'s output, walked down the whole maps with the rule."""
        depth = self.net.depth(layer)
        check_supported(self.net, depth)
        rec = self.record(x, [layer], masks=rules.get(self.rule).needs_mask)
        with torch.no_grad():
            return walk_down(self.net, rec, {depth: seed.to(rec.activations[layer]).reshape(rec.shapes[depth][1])},
                             unpool=self.unpool, rule=self.rule)

    def project_units(self, x: torch.Tensor, layer: str, image: torch.Tensor, channel: torch.Tensor,
                      unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Units of one layer over a batch, each inside its receptive-field window (``walk_down_cropped``):
        ``(windows, origins, activations)``; None where the cropped walk does not apply (the caller then
        takes the graph engine, which agrees with this one)."""
        depth = self.net.depth(layer)
        check_supported(self.net, depth)
        if self.rule != "deconvnet" or not croppable(self.net, depth):
            return None
        rec = self.record(x, [layer])
        act = rec.activations[layer]
        image, channel, unit = (t.to(act.device) for t in (image, channel, unit))
        value = act[image, channel, unit[:, 0], unit[:, 1]]
        seed = value.new_zeros(len(value), act.shape[1])  # each unit's activation in its channel, zero elsewhere
        seed[torch.arange(len(value), device=act.device), channel] = value
        windows, origins = [], []
        with torch.no_grad():
            for s in range(0, len(value), self.max_batch):
                sl = slice(s, s + self.max_batch)
                w, o = walk_down_cropped(self.net, rec, depth, image[sl], unit[sl], seed[sl])
                windows.append(w)
                origins.append(o)
        if not windows:
            return act.new_zeros(0, x.shape[1], 0, 0), unit.new_zeros(0, 2), value
        return torch.cat(windows), torch.cat(origins), value

    def crops(self, target: Target, depth: int, hw: Sequence[int]) -> bool:
        """Whether a target takes the cropped path (see ``crop`` in ``Deconvnet``)."""
        if self.crop is False or self.unpool != "scatter_add" or self.rule != "deconvnet":
            return False
        if not is_point(target.position) or not self.net.is_spatial(target.layer):
            return False
        if not croppable(self.net, depth):
            return False
        if self.crop is True:
            return True
        size = receptive_field(self.net, target.layer).size
        return size[0] * size[1] < hw[0] * hw[1]  # "auto": only when the window is smaller than the image

    def layer_at(self, depth: int) -> str:
        """The name of the layer at stack index ``depth``."""
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
            seed = activation.new_zeros(len(unit), self.net.channels[self.layer_at(depth)])
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
            out = walk_down(self.net, rec, {d: torch.cat(s) for d, s in seeds.items()}, unpool=self.unpool,
                            rule=self.rule)
            for j, k in enumerate(chunk):  # chunk is deepest-first, stable: walk_down's order
                results[k] = out[j * b : (j + 1) * b]

    def stages(self, x: torch.Tensor, target: Target) -> list[tuple[str, torch.Tensor]]:
        """The signal after every step down for one target: ``[(module name, tensor), ...]``."""
        depth = self.net.depth(target.layer)
        check_supported(self.net, depth)
        rec = self.record(x, [target.layer], masks=rules.get(self.rule).needs_mask)
        seed = select_target(rec.activations[target.layer], target, self.net)[0]()
        out = [(target.layer, seed)]
        with torch.no_grad():
            walk_down(self.net, rec, {depth: seed}, unpool=self.unpool, rule=self.rule,
                      trace=lambda i, name, r: out.append((name, r.clone())))
        return out


def croppable(net: Net, depth: int) -> bool:
    """Whether the cropped walk has a step for every module up to stack index ``depth``."""
    below = [m for _, m in net.stack[: depth + 1]]
    if not all(isinstance(m, CROPPABLE) for m in below):
        return False
    # the cropped walk needs numeric zero padding; the whole-map walk handles the others
    return not any(isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros")
                   for m in below)
