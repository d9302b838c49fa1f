"""The chain engine: the deconvnet walked down a stack of modules, step by step (Zeiler & Fergus 2014).

After ``record_chain`` has run the forward, ``walk_down`` applies, from the target's layer to the pixels, the
step of each module (``engine.steps``: the table of the rules). Point targets can take ``walk_down_cropped``
(``engine.cropped``): each step only inside the unit's receptive-field window, equal to the whole-map walk.
``ChainEngine`` puts both behind the engine interface (``engine.protocol.Engine``) of ``Deconvnet``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..models import CHAIN_MODULES, Net
from ..models.lock import model_lock
from . import rules
from .cropped import croppable, paste, walk_down_cropped
from .graph import GraphEngine
from .receptive import receptive_field
from .record import Kept, check_input, record_chain
from .steps import SUPPORTED, conv_transpose_like, deconv_step, unpool_full, unpool_scatter_add
from .targets import is_point, select_target
from .types import Projected, Record, Selection, Target, UnitWindows

#: re-exported: the steps down are the chain walk's (the resolution lesson and the tests take them from here)
__all__ = ["SUPPORTED", "UNPOOL_MODES", "ChainEngine", "check_supported", "conv_transpose_like", "deconv_step",
           "unpool_full", "unpool_scatter_add", "walk_down"]

UNPOOL_MODES = ("scatter_add", "max_unpool")


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


class ChainEngine:
    """The engine for chains: one recorded forward, then walks down the stack (cropped where it can).

    Args:
        net: a chain (``net.can_show_stages``).
        rule, unpool, max_batch, crop, keep, extend: as ``Deconvnet`` (``extend`` for the graph engine that
            projects the units the cropped walk cannot, ``project_units``).
    """

    name = "chain"
    can_show_stages = True

    def __init__(self, net: Net, *, rule: str, unpool: str, max_batch: int, crop: str | bool,
                 keep: int = 0, extend: bool = False) -> None:
        self.net, self.rule, self.unpool, self.max_batch, self.crop = net, rule, unpool, max_batch, crop
        self.extend = extend
        self.kept = Kept(keep)
        self._fallback: GraphEngine | None = None

    def record(self, x: torch.Tensor, layers: Sequence[str], *, switches: bool = True,
               reduce: Callable | None = None, masks: bool = False) -> Record:
        if reduce is not None:  # a scan's reduced record: nothing to keep
            return record_chain(self.net, x, layers, switches=switches, reduce=reduce)
        return self.kept.get(x, (tuple(layers), switches, masks),
                             lambda: record_chain(self.net, x, layers, switches=switches, masks=masks))

    def project(self, x: torch.Tensor, targets: list[Target]) -> Projected:
        """Projections (B, C, H, W) of resolved targets, their selections and the record."""
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
        return Projected(projections=results, selections=selected, record=rec)

    def project_seed(self, x: torch.Tensor, layer: str, seed: torch.Tensor) -> torch.Tensor:
        """Any signal (B, ...) placed on ``layer``'s output, walked down the whole maps with the rule."""
        depth = self.net.depth(layer)
        check_supported(self.net, depth)
        rec = self.record(x, [layer], masks=rules.get(self.rule).needs_mask)
        with torch.no_grad():
            return walk_down(self.net, rec, {depth: seed.to(rec.activations[layer]).reshape(rec.shapes[depth][1])},
                             unpool=self.unpool, rule=self.rule)

    def project_units(self, x: torch.Tensor, layer: str, image: torch.Tensor, channel: torch.Tensor,
                      unit: torch.Tensor) -> UnitWindows:
        """Units of one layer over a batch, each inside its receptive-field window (``walk_down_cropped``).
        Where the cropped walk does not apply (another rule, a module it has no step for), the graph engine
        projects them: it agrees with this one (tested in float64)."""
        depth = self.net.depth(layer)
        check_supported(self.net, depth)
        if self.rule != "deconvnet" or not croppable(self.net, depth):
            if self._fallback is None:
                self._fallback = GraphEngine(self.net, rule=self.rule, extend=self.extend)
            return self._fallback.project_units(x, layer, image, channel, unit)
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
            return UnitWindows(act.new_zeros(0, x.shape[1], 0, 0), unit.new_zeros(0, 2), value)
        return UnitWindows(torch.cat(windows), torch.cat(origins), value)

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

    def _project_cropped(self, rec: Record, ks: list[int], depths: list[int], selected: list[Selection], b: int,
                         hw: Sequence[int], results: list) -> None:
        by_depth: dict[int, list[int]] = {}
        for k in ks:
            by_depth.setdefault(depths[k], []).append(k)
        dev = next(iter(rec.activations.values())).device
        for depth, group in by_depth.items():
            image = torch.arange(b, device=dev).repeat(len(group))
            unit = torch.cat([selected[k].position for k in group])
            # a point target's seed: its activation in its channel, zero in every other
            channels = torch.cat([selected[k].channels for k in group])
            activation = torch.cat([selected[k].activation for k in group])
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

    def _project_full(self, rec: Record, ks: list[int], depths: list[int], selected: list[Selection], b: int,
                      results: list) -> None:
        per_pass = max(1, self.max_batch // b)
        order = sorted(ks, key=lambda k: -depths[k])  # deepest first, as walk_down returns
        for start in range(0, len(order), per_pass):
            chunk = order[start : start + per_pass]
            seeds: dict[int, list[torch.Tensor]] = {}
            for k in chunk:
                seeds.setdefault(depths[k], []).append(selected[k].seed())
            out = walk_down(self.net, rec, {d: torch.cat(s) for d, s in seeds.items()}, unpool=self.unpool,
                            rule=self.rule)
            for j, k in enumerate(chunk):  # chunk is deepest-first, stable: walk_down's order
                results[k] = out[j * b : (j + 1) * b]

    def stages(self, x: torch.Tensor, target: Target) -> list[tuple[str, torch.Tensor]]:
        """The signal after every step down for one target: ``[(module name, tensor), ...]``."""
        depth = self.net.depth(target.layer)
        check_supported(self.net, depth)
        rec = self.record(x, [target.layer], masks=rules.get(self.rule).needs_mask)
        seed = select_target(rec.activations[target.layer], target, self.net).seed()
        out = [(target.layer, seed)]
        with torch.no_grad():
            walk_down(self.net, rec, {depth: seed}, unpool=self.unpool, rule=self.rule,
                      trace=lambda i, name, r: out.append((name, r.clone())))
        return out
