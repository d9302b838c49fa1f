"""The deconvnet on any model's own autograd graph: residual additions, concatenations, functional calls.

The chain engine (``engine.chain``) mirrors a stack of modules step by step. A ResNet, GoogLeNet or DenseNet
is no stack: its forward adds, concatenates and calls ``F.relu`` directly. Here the model's own forward
runs under a ``TorchFunctionMode`` that sees every call, module or functional, and swaps each rectifier
for one whose backward is the deconvnet rule (Springenberg et al. 2015; docs/explanation/deconvnet.md):

======================================  =====================================================================
forward                                 backward (the signal R coming down)
======================================  =====================================================================
``relu`` in any spelling: ``nn.ReLU``,  ``relu(R)``: the rule imposes the ReLU on the reconstruction and
``F.relu``, ``torch.relu``,             ignores the forward input (Captum's ``Deconvolution`` sees
``Tensor.relu_``, ``clamp(min=0)``,     ``nn.ReLU`` modules only and misses the functional ones);
``clamp_min(0)``, ``threshold(0, 0)``   ``rule="guided"``: ``relu(R) [x > 0]``; ``rule="gradient"``:
                                        ``R [x > 0]``, autograd's own
max-pooling (also adaptive, and a max  its own gradient: the signal goes to the switch, summed where
along dimensions)                       windows share one (the exact transpose, as the chain's unpooling)
conv, BatchNorm (eval), linear,         their adjoints (autograd's backward of a linear map; biases drop out)
pooling by averages, add, cat, ...
anything else: SiLU, GELU, sigmoid,     refused before any projection, naming the function and the module
exp, abs, softmax, LayerNorm, a         it is called in: there is no deconvnet rule for it. ``engine.ops``
product of two input-dependent          holds the allow-list: every call on the input must be on it
tensors, ...
======================================  =====================================================================

A projection of targets at one layer costs one forward (shared by every target of the batch; it stops
after the deepest target) and one backward per target, with the graph kept between them. A target is a
module's output at its first call in the forward (a module called twice, such as the ``relu`` of a
torchvision ``BasicBlock``, is seen at its first call; name the block itself for its output).

The hooks of a forward act only for it (``models.lock.own_call``): a plain forward of the same model in
another thread runs untouched.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from ..constants import DEFAULT_SIZE
from ..memory import check_memory, is_out_of_memory, memory_error
from ..models import Net
from ..models.hooks import SKIP, capture
from ..models.lock import eval_view, exclusive, own_call
from . import ops, rules
from .cropped import crop
from .mode import HINT, DeconvMode
from .receptive import receptive_field
from .record import Kept, check_finite, check_input
from .targets import select_target
from .types import Projected, Record, Target, UnitWindows, UnsupportedLayerError
from .where import where_tracker as _where_tracker


def check_modules(model: nn.Module, *, extend: bool = False, rule: str = "deconvnet") -> None:
    """Refuse, before any work, a model holding TorchScript (its forward is out of the allow-list's sight, and
    its modules take no hooks) and timm's memory-efficient activations (``ops.opaque_module``: custom autograd
    Functions whose backward no rule can replace; refused by name with and without ``extend``). Any other
    module is judged on the path to the target by the functions its forward calls (``mode.DeconvMode``); a module
    with no rule off that path (a multi-label head's Sigmoid after the target) is no obstacle. The gradient
    rule is plain autograd and takes any module but TorchScript."""
    autograd = rules.get(rule).autograd
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            raise UnsupportedLayerError(
                f"module '{name or type(model).__name__}' is a TorchScript {type(m).__name__}, whose forward the "
                "deconvnet cannot follow call by call (it runs outside Python, takes no hooks and has no rule "
                "checked). Hint: pass the original nn.Module, before torch.jit.script or torch.jit.trace.")
        opaque = None if autograd else ops.opaque_module(m)
        if opaque is not None:
            raise UnsupportedLayerError(f"module '{name}' ({type(m).__name__}) {opaque}")


def forward(
    model: nn.Module,
    x: torch.Tensor,
    modules: dict[str, nn.Module],
    *,
    grad: bool,
    reduce: Callable[[str, torch.Tensor], Any] | None = None,
    rule: str = "deconvnet",
    extend: bool = False,
    declared: dict[str, dict[str, int]] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Run ``model`` on ``x`` under the deconvnet mode, keeping the first output of each target module.

    The caller holds ``models.lock.exclusive(model)`` (the model's lock); the forward runs the model's eval-mode
    view (``models.lock.eval_view``), which leaves the user's modules as they are. A target whose output
    depends on a call with no rule is refused with it; a call off the path to the targets does not matter.

    Args:
        modules: target name -> module.
        grad: build the autograd graph (projections); False for activations only (a scan).
        reduce: keep ``reduce(name, output)`` instead of the output (the scan's per-map maxima).
        rule, extend: as ``Deconvnet``.
        declared: filled with target name -> the declared rules (``engine.rules``) the forward applied
            before that target's output, with their counts.

    Returns:
        ``(x, outputs)``: the input as the graph's leaf, and name -> output (with its graph when ``grad``).
    """
    outputs: dict[str, Any] = {}
    x = x.detach().requires_grad_(grad)
    mode: DeconvMode | None = None

    def keep(names: list[str], module: nn.Module, inputs: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise UnsupportedLayerError(f"module '{names[0]}' returns a {type(output).__name__}, not a tensor: "
                                        "name a module whose output is one tensor")
        why = mode.refused(output) or (ops.unseen(output) if grad and output.requires_grad and not
                                       mode.rule.autograd and not mode.marked(output) else None)
        if why is not None:
            raise UnsupportedLayerError(why if "Hint:" in why else f"layer '{names[0]}' {why}. " + HINT)
        with mode.pause():
            for name in names:
                outputs[name] = (reduce(name, output.detach()) if reduce is not None
                                 else (output if grad else output.detach().clone()))
                if declared is not None:
                    declared[name] = dict(mode.counts)

    def replace(output: torch.Tensor) -> torch.Tensor | None:
        # later in-place operations (a residual ``out += identity``, an in-place ReLU) must change a copy,
        # not the kept output, whose value and graph node are the target's
        if not grad:
            return None
        with mode.pause():
            copy = output.clone()
        mode.mark(copy, None, mode.joined(output))
        return copy

    model = eval_view(model)
    with ExitStack() as stack:
        token = stack.enter_context(own_call())
        where = stack.enter_context(_where_tracker(model, token))
        stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        mode = DeconvMode(where, rule, grad, extend)
        mode.mark(x)
        try:
            with mode:  # stopped once every target has given its output
                capture(modules, lambda: model(x), keep=keep, replace=replace, token=token)
        except UnsupportedLayerError:
            raise
        except (RuntimeError, MemoryError) as err:
            if is_out_of_memory(err):
                raise memory_error(err, f"running {type(model).__name__} on an input of {tuple(x.shape)}") from err
            raise ValueError(f"the forward pass failed in {where()} for an input of {tuple(x.shape)}: "
                             f"{str(err).splitlines()[0]}. Hint: the input may be too small, or not have the "
                             "channels the model takes") from err
    missing = [n for n in modules if n not in outputs]
    if missing:
        raise ValueError(f"the forward pass of {type(model).__name__} never called {', '.join(missing)}: "
                         "name a module that its forward uses")
    return x, outputs


def project(x: torch.Tensor, output: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """One backward from a kept target output, seeded with ``seed``; the graph is kept for the next one."""
    try:
        (g,) = torch.autograd.grad(output, x, seed, retain_graph=True)
    except RuntimeError as err:
        if "modified by an inplace operation" not in str(err):
            raise
        raise ValueError("the model's weights changed during the projection (another thread trains the model?): "
                         "the projection would mix two models. Hint: project a copy, copy.deepcopy(model), or "
                         "between training steps") from err
    return g


_CHECKED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def check_graph(net: Net, hw: Sequence[int], layers: Sequence[str] = (), *, rule: str = "deconvnet",
                extend: bool = False) -> None:
    """Refuse, before any work, a target layer whose output depends on a call with no rule: TorchScript and
    timm's opaque activations by module type, the functions by one probe forward under the rule's mode, once
    per model, module tree and rule set (with gradients, so that no_grad branches, custom autograd Functions
    and TorchScript functions show). Calls off the path to ``layers`` do not matter. The probe runs at 224 px,
    or at the input's size ``hw`` for a model of a fixed input size that 224 px does not go through; its
    layers' output shapes fill ``Net.output_shapes``'s cache. With ``extend``, ``Net.declared`` is set to the
    declared rules the whole forward takes, with their counts (what figures and pages name)."""
    check_modules(net.model, extend=extend, rule=rule)
    net.refresh()
    autograd = rules.get(rule).autograd
    key = (net.tree, extend and not autograd, autograd)
    checked = _CHECKED.get(net.model)
    if (checked is None or checked[0] != key) and net.device.type != "meta":  # meta: check_input refuses it
        checked = _probe(net, hw, key, rule)
    refused = [checked[1][n] for n in layers if checked is not None and checked[1].get(n)]
    if refused:
        raise UnsupportedLayerError(refused[0])


def _probe(net: Net, hw: Sequence[int], key: tuple, rule: str) -> tuple | None:
    """One forward of a zero input under the mode: (``key``, layer -> why its output is refused)."""
    for size in dict.fromkeys([(DEFAULT_SIZE, DEFAULT_SIZE), tuple(int(v) for v in hw)]):
        found = _probe_size(net, size, key, rule)
        if found is None:
            continue  # this size does not go through the model
        shapes, refused, mode = found
        net.remember_shapes(size, shapes)
        if key[1]:
            net.declared = dict(mode.counts)
        _CHECKED[net.model] = (key, refused)
        return _CHECKED[net.model]
    return None  # neither size goes through: the forward of the call says why, in its own words


def _probe_size(net: Net, size: tuple[int, ...], key: tuple, rule: str) -> tuple | None:
    """The probe's forward at one input size: (layer -> output shape, layer -> why refused, the mode), or
    ``None`` where the size does not go through the model."""
    shapes: dict[str, tuple[int, ...]] = {}
    refused: dict[str, str] = {}
    names: dict[nn.Module, str] = {}
    for name, m in net.layers.items():
        names.setdefault(m, name)

    def keep(keys: list[str], m: nn.Module, inputs: tuple, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return SKIP
        name = keys[0]
        shapes[name] = tuple(output.shape)
        why = mode.refused(output) or (ops.unseen(output) if output.requires_grad and not
                                       mode.rule.autograd and not mode.marked(output) else None)
        if why is not None:
            refused[name] = why if "Hint:" in why else f"layer '{name}' {why}. " + HINT
        return None

    x = torch.zeros(1, net.in_channels or 3, *size, device=net.device, dtype=net.dtype, requires_grad=True)
    try:
        with exclusive(net.model) as model, ExitStack() as stack:
            token = stack.enter_context(own_call())
            where = stack.enter_context(_where_tracker(model, token))
            mode = DeconvMode(where, rule, grad=True, extend=key[1])
            mode.mark(x)
            with torch.enable_grad(), mode:
                capture({name: m for m, name in names.items()}, lambda: model(x), keep=keep, stop_after_last=False,
                        token=token)
    except UnsupportedLayerError:
        raise
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError):
        return None
    return shapes, refused, mode


def record_graph(net: Net, x: torch.Tensor, layers: Sequence[str], reduce: Callable | None = None, *,
                 rule: str = "deconvnet", extend: bool = False) -> Record:
    """The target layers' outputs (or ``reduce(name, output)`` of them, ``name`` the net's: ``net.resolve``)
    from one forward of a graph."""
    x = check_input(x, net)
    names = [net.resolve(layer) for layer in layers]
    check_graph(net, x.shape[-2:], names, rule=rule, extend=extend)
    declared: dict[str, dict[str, int]] = {}
    with exclusive(net.model):
        _, outputs = forward(net.model, x, {n: net.layers[n] for n in names}, grad=False, reduce=reduce, rule=rule,
                             extend=extend, declared=declared)
    rec = Record(activations={layer: outputs[n] for layer, n in zip(layers, names, strict=True)},
                 declared={layer: declared.get(n, {}) for layer, n in zip(layers, names, strict=True)})
    if reduce is None:
        check_finite(net, rec.activations)
    return rec


class GraphEngine:
    """The engine for any model: the rule at every rectifier of the model's own autograd graph.

    Targets at any layers share one forward (it stops after the deepest); each has its backward.
    """

    name = "graph"
    can_show_stages = False

    def __init__(self, net: Net, *, rule: str, keep: int = 0, extend: bool = False) -> None:
        self.net, self.rule, self.extend = net, rule, extend
        self.kept = Kept(keep)

    def _forward(self, x: torch.Tensor, layers: Sequence[str]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, dict[str, int]]]:
        """The forward with its autograd graph, kept per input (``keep``): a backward keeps the graph. Also
        the declared rules taken before each layer's output (``forward``)."""
        def run():
            declared: dict[str, dict[str, int]] = {}
            leaf, outputs = forward(self.net.model, x, {n: self.net.layers[n] for n in layers}, grad=True,
                                    rule=self.rule, extend=self.extend, declared=declared)
            check_finite(self.net, {n: outputs[n].detach() for n in layers})
            return leaf, outputs, declared

        return self.kept.get(x, (tuple(layers),), run)

    def _check(self, x: torch.Tensor, layers: Sequence[str]) -> torch.Tensor:
        x = check_input(x, self.net)
        check_graph(self.net, x.shape[-2:], layers, rule=self.rule, extend=self.extend)
        return x

    def record(self, x: torch.Tensor, layers: Sequence[str], *, switches: bool = True,
               reduce: Callable | None = None) -> Record:
        if self.kept.size and reduce is None:  # the kept forward (with its graph) answers, if there is one
            x = self._check(x, layers)
            with exclusive(self.net.model):
                _, outputs, declared = self._forward(x, list(layers))
            return Record(activations={n: outputs[n].detach() for n in layers},
                          declared={n: declared.get(n, {}) for n in layers})
        return record_graph(self.net, x, layers, reduce, rule=self.rule, extend=self.extend)

    def project(self, x: torch.Tensor, targets: list[Target]) -> Projected:
        """Projections of resolved targets, their selections and the record of the layers."""
        x = check_input(x, self.net)
        layers = list(dict.fromkeys(t.layer for t in targets))
        check_graph(self.net, x.shape[-2:], layers, rule=self.rule, extend=self.extend)
        check_memory(self.net, x.shape[0], x.shape[-2:])
        results, selected = [], []
        with exclusive(self.net.model):
            leaf, outputs, declared = self._forward(x, layers)
            for t in targets:
                act = outputs[t.layer]
                sel = select_target(act.detach(), t, self.net)
                results.append(project(leaf, act, sel.seed()).detach())
                selected.append(sel)
        return Projected(projections=results, selections=selected,
                         record=Record(activations={n: outputs[n].detach() for n in layers},
                                       declared={n: declared.get(n, {}) for n in layers}))

    def project_seed(self, x: torch.Tensor, layer: str, seed: torch.Tensor) -> torch.Tensor:
        """Any signal (B, ...) placed on ``layer``'s output, carried down the graph with the rule."""
        x = self._check(x, [layer])
        check_memory(self.net, x.shape[0], x.shape[-2:])
        with exclusive(self.net.model):
            leaf, outputs, _ = self._forward(x, [layer])
            act = outputs[layer]
            if seed.shape != act.shape:
                raise ValueError(f"a seed of shape {tuple(seed.shape)} does not fit layer '{layer}', whose output is "
                                 f"{tuple(act.shape)}")
            return project(leaf, act, seed.to(act)).detach()

    def project_units(self, x: torch.Tensor, layer: str, image: torch.Tensor, channel: torch.Tensor,
                      unit: torch.Tensor) -> UnitWindows:
        """Many single units of one layer over a batch, each projected on its receptive-field box.

        Each unit is computed on the crop of its image that it sees, a batch of crops at a time
        (``project_windows``), or, where the field covers most of the image, whole inputs are projected, one
        unit per image in each backward (``project_whole``), and the boxes cut out.
        """
        rf = receptive_field(self.net, layer)
        origins = torch.stack([unit[:, 0] * rf.jump[0] - rf.padding[0], unit[:, 1] * rf.jump[1] - rf.padding[1]], 1)
        if 2 * rf.size[0] * rf.size[1] <= x.shape[-2] * x.shape[-1]:  # each unit from the crop it sees
            windows, value = self.project_windows(x, layer, image, channel, unit, rf.size, rf.jump, rf.padding)
            return UnitWindows(windows, origins, value)
        full, value = self.project_whole(x, layer, image, channel, unit)  # fields near the image's size
        return UnitWindows(crop(full, origins, rf.size), origins, value)

    def stages(self, x: torch.Tensor, target: Target) -> list[tuple[str, torch.Tensor]]:
        """A graph has no steps to show one by one: refused, with the hint."""
        raise ValueError(f"{self.net.arch} is projected through its autograd graph, which has no steps to "
                         "show one by one. Hint: stages are for chains (VGG, AlexNet, nn.Sequential)")

    def project_whole(self, x: torch.Tensor, layer: str, image: torch.Tensor, channel: torch.Tensor,
                      unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Units of one layer over a batch (unit k at ``image[k]``, ``channel[k]``, ``unit[k]``): their
        projections (N, C, H, W) on the whole input and their activations (N,).

        One forward for the batch. Images do not mix in a forward in eval mode, so one backward projects one
        unit in each image at once: the units go down in rounds, as many as the most units of one image.
        """
        x = self._check(x, [layer])
        check_memory(self.net, x.shape[0], x.shape[-2:])
        out = x.new_zeros(len(image), *x.shape[1:])
        with exclusive(self.net.model):
            leaf, outputs, _ = self._forward(x, [layer])
            act = outputs[layer]
            image, channel, unit = (t.to(act.device) for t in (image, channel, unit))
            value = act.detach()[image, channel, unit[:, 0], unit[:, 1]]
            rounds: list[list[int]] = []
            seen: dict[int, int] = {}
            for k, i in enumerate(image.tolist()):
                r = seen.get(i, 0)
                seen[i] = r + 1
                if r == len(rounds):
                    rounds.append([])
                rounds[r].append(k)
            for ks in rounds:
                idx = torch.tensor(ks, device=act.device)
                seed = torch.zeros_like(act)
                seed[image[idx], channel[idx], unit[idx, 0], unit[idx, 1]] = value[idx]
                out[idx] = project(leaf, act, seed).detach()[image[idx]]
        return out, value

    def project_windows(self, x: torch.Tensor, layer: str, image: torch.Tensor, channel: torch.Tensor,
                        unit: torch.Tensor, size: Sequence[int], jump: Sequence[int], padding: Sequence[int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Units of one layer, each projected from the part of its image that it can see: ``(windows (N, C,
        size), activations (N,))``, each window on the unit's receptive-field box (``size``, ``jump``,
        ``padding``: the layer's receptive field), zero outside the image.

        A unit (in eval mode) is a function of the pixels of its receptive field only, and so is every unit
        of its cone. So each unit is computed, and projected, on a crop of its image that holds its box
        (clipped to the image, where the model's own padding then applies as in the whole image) and starts
        at a multiple of the layer's jump (so every layer's grid falls as in the whole image). The crops
        have one size (the box and its alignment slack; moved inwards at the far border), so they go as
        batches, each crop seeded at its own unit: a forward and a backward per batch of crops. Equal to
        ``project_units`` cut to the boxes (tested in float64).
        """
        x = self._check(x, [layer])
        hw = x.shape[-2:]
        image, channel, unit = (t.to(x.device) for t in (image, channel, unit))
        n = len(image)
        windows = x.new_zeros(n, x.shape[1], size[0], size[1])
        value = x.new_zeros(n)
        starts, sizes, crop_at = [], [], []
        for a in range(2):
            top = unit[:, a] * jump[a] - padding[a]  # the boxes, unclipped
            # one crop size for all (a batch): the box and the slack of aligning its start, in whole jumps
            span = min(-(-(size[a] + jump[a] - 1) // jump[a]) * jump[a], hw[a])
            start = torch.where(top <= 0, torch.zeros_like(top), top - top % jump[a])
            end = torch.minimum(top + size[a], torch.full_like(top, hw[a]))  # the box, clipped to the image
            if (hw[a] - span) % jump[a] == 0:  # a crop at the far border can start on the grid: same size
                start = torch.minimum(start, torch.full_like(start, hw[a] - span))
                length = torch.full_like(start, span)
            else:  # else a crop that reaches the far border ends there, and is shorter
                length = torch.where(start + span > hw[a], end - start, torch.full_like(start, span))
            starts.append(start)
            sizes.append(length)
            crop_at.append(start - top)  # where the crop lies in the window
        groups: dict[tuple[int, int], list[int]] = {}
        for k in range(n):
            groups.setdefault((int(sizes[0][k]), int(sizes[1][k])), []).append(k)
        module = {layer: self.net.layers[layer]}
        with exclusive(self.net.model):
            for (h, w), ks in groups.items():
                check_memory(self.net, min(len(ks), 64), (h, w))  # the largest batch of these crops
                for c in range(0, len(ks), 64):  # bounded batches of crops
                    kk = torch.tensor(ks[c : c + 64], device=x.device)
                    crops = torch.stack([x[int(image[k]), :, int(starts[0][k]) : int(starts[0][k]) + h,
                                           int(starts[1][k]) : int(starts[1][k]) + w] for k in kk.tolist()])
                    leaf, outputs = forward(self.net.model, crops, module, grad=True, rule=self.rule,
                                            extend=self.extend)
                    act = outputs[layer]
                    check_finite(self.net, {layer: act.detach()})
                    local = unit[kk] - torch.stack([starts[0][kk] // jump[0], starts[1][kk] // jump[1]], 1)
                    rows = torch.arange(len(kk), device=x.device)
                    v = act.detach()[rows, channel[kk], local[:, 0], local[:, 1]]
                    seed = torch.zeros_like(act)
                    seed[rows, channel[kk], local[:, 0], local[:, 1]] = v
                    g = project(leaf, act, seed).detach()
                    value[kk] = v
                    for j, k in enumerate(kk.tolist()):  # the crop may start up to a jump above the box
                        t0, l0 = int(crop_at[0][k]), int(crop_at[1][k])
                        a0, b0 = max(t0, 0), max(l0, 0)
                        a1, b1 = min(t0 + h, size[0]), min(l0 + w, size[1])
                        windows[k, :, a0:a1, b0:b1] = g[j, :, a0 - t0 : a1 - t0, b0 - l0 : b1 - l0]
                    del leaf, outputs, act, g
        return windows, value
