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

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..memory import check_memory, is_out_of_memory, memory_error
from ..models import Net
from ..models.lock import eval_view, exclusive, original, own_call, owns
from . import declared as declared_rules
from . import ops, rules
from .ops import ALL, REFUSED_MODULES
from .record import Kept, check_finite, check_input
from .targets import select_target
from .types import Record, Target, UnsupportedLayerError
from .where import where_tracker as _where_tracker

_HINT = ("Hint: the deconvnet projects models built of convolutions, linear layers, BatchNorm, ReLUs and max- or "
         "average-pooling (VGG, AlexNet, ResNet, DenseNet, GoogLeNet); a target before this point can be projected "
         "where the model's forward reaches it first.")
#: the hint of a refusal inside attention (vision transformers, Swin, MaxViT's attention blocks)
_ATTENTION_HINT = ("Hint: attention is refused with and without extend=True: it mixes the token maps through a "
                   "product of two input-dependent tensors (queries and keys), for which no declared rule is "
                   "defined, and its tokens are not a convolutional feature map; project a CNN (ConvNeXt, "
                   "EfficientNet, RegNetY, ResNet, VGG), or a layer before the first attention block.")


def check_modules(model: nn.Module, *, extend: bool = False, rule: str = "deconvnet") -> None:
    """Refuse, before any work, a model holding TorchScript (its forward is out of the allow-list's sight, and
    its modules take no hooks) and timm's memory-efficient activations (``ops.opaque_module``: custom autograd
    Functions whose backward no rule can replace; refused by name with and without ``extend``). Any other
    module is judged on the path to the target by the functions its forward calls (``_DeconvMode``); a module
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


def _tag(t: torch.Tensor, name: str, token: object) -> Any:
    """A value this forward attached to tensor ``t`` (``_DeconvMode``), or None."""
    tagged = getattr(t, name, None)
    return tagged[1] if tagged is not None and tagged[0] is token else None


class _DeconvMode(TorchFunctionMode):
    """Swaps every rectifier for the rule's and judges, by the allow-list of ``ops``, every other call on the
    input: one that is not linear or a max-pool taints its result with the reason (``refused``).

    Which tensors depend on the input is tracked call by call: the input is marked with this forward's
    token, and so is every result of a call that had a marked argument (and the first argument of an
    in-place call). A taint travels the same way; a target whose output carries one is refused with it
    (``forward``), so that only calls on the path from the input to the target count. Under ``grad`` a
    tensor that requires grad and is not marked came from code the mode did not see (TorchScript), and a
    call made with gradients off (``no_grad``, a custom autograd Function's forward) would drop its path:
    both taint. The dimensions along which input-dependent tensors were joined are tracked (``joined``):
    a max along one is no max-pool. Calls made by this forward's own hooks run while ``paused``.
    """

    def __init__(self, where: Callable[[], str], rule: str = "deconvnet", grad: bool = False,
                 extend: bool = False) -> None:
        super().__init__()
        self.where = where
        self.rule = rules.get(rule)
        self.grad = grad
        self.extend = extend
        self.token = object()
        self.paused = False
        #: declared rule -> how many calls it took so far in this forward (``rules.DECLARED``)
        self.counts: dict[str, int] = {}

    def mark(self, value: Any, refused: str | None = None, joined: Any = None) -> None:
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor):
                t._deconvnet_input = self.token
                if refused is not None:
                    t._deconvnet_refused = (self.token, refused)
                t._deconvnet_joined = (self.token, joined)

    def marked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and getattr(t, "_deconvnet_input", None) is self.token

    def dependent(self, value: Any) -> bool:
        return any(self.marked(t) or (self.grad and isinstance(t, torch.Tensor) and t.requires_grad)
                   for t in tree_flatten(value)[0])

    def gates(self, value: Any) -> list[str]:
        """The gates (held-constant outputs of a sigmoid, hardsigmoid or softmax) among ``value``'s tensors."""
        return [t._deconvnet_gate[1] for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)
                and getattr(t, "_deconvnet_gate", (None,))[0] is self.token]

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def refused(self, value: Any) -> str | None:
        """The reason a value (a tensor, or a structure of some) is refused, if it carries one."""
        for t in tree_flatten(value)[0]:
            if (isinstance(t, torch.Tensor) and self.marked(t)
                    and _tag(t, "_deconvnet_refused", self.token) is not None):
                return _tag(t, "_deconvnet_refused", self.token)
        return None

    def joined(self, t: Any) -> Any:
        return _tag(t, "_deconvnet_joined", self.token) if isinstance(t, torch.Tensor) else None

    def refuse(self, func: Callable, why: str, args: tuple = (), kwargs: dict | None = None) -> str:
        """The refusal of a call, as the taint its results carry: the call, where it ran, why, and a hint
        (the opt-in of the declared rules where one applies)."""
        module = getattr(self.where, "module", lambda: None)()
        declared = None if self.extend else ops.has_declared_rule(func, args, kwargs or {})
        if declared is None and not self.extend and isinstance(module, ops.EXTENDED_MODULES):
            declared = ops.extended_rule(module)
        hint = f"Hint: extend=True (--extend) projects it with the declared rules: {declared}." if declared else _HINT
        if "Attention" in type(module).__name__ or "attention" in getattr(func, "__name__", ""):
            hint = _ATTENTION_HINT
        if isinstance(module, REFUSED_MODULES):
            return (f"module '{self.where.name()}' ({type(module).__name__}) has no deconvnet rule: "
                    f"{ops.describe(func)}, called in module '{self.where.name()}', {why}; the deconvnet has a rule "
                    "for linear maps, rectifiers (ReLU) and max-pooling only. " + hint)
        return (f"{ops.describe(func)}, called in {self.where()}, {why}: the deconvnet has a rule for linear maps, "
                "rectifiers (ReLU) and max-pooling only. " + hint)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused or self.rule.autograd:  # the gradient is plain autograd: any differentiable forward
            return func(*args, **kwargs)
        gates = self.gates((args, kwargs)) if self.extend else []
        if not gates and not self.dependent((args, kwargs)):
            return func(*args, **kwargs)
        leaves = tree_flatten((args, kwargs))[0]
        refused = self.refused(leaves)
        hidden = [t for t in leaves if isinstance(t, torch.Tensor) and not self.marked(t)
                  and self.grad and t.requires_grad]
        if refused is None and hidden:
            refused = self.refuse(func, ops.unseen(hidden[0]))
        if refused is None and self.grad and not torch.is_grad_enabled():
            refused = self.refuse(func, ops.outside_backward(func))
        if gates and refused is None:
            return declared_rules.gated_call(self, func, args, kwargs, gates)
        rect = ops.rectifier(func, args, kwargs)
        declared = (declared_rules.declared_call(self, func, args, kwargs)
                    if rect is None and self.extend and refused is None else None)
        if declared is not None and getattr(declared, "_deconvnet_gate", None) is not None:
            return declared  # a gate: a constant, not the signal
        if refused is None and rect is None and declared is None:
            why = (ops.check(func, args, kwargs, self.dependent)
                   or ops.check_spelling(func, args, kwargs, self.dependent)
                   or ops.max_over_joined(func, args, kwargs, self.joined))
            refused = self.refuse(func, why, args, kwargs) if why is not None else None
        if rect is not None and refused is None:
            x, inplace = rect
            out = rules.Rectify.apply(x, self.rule, torch.relu, inplace)
        elif declared is not None:
            out = declared
        else:
            try:
                out = func(*args, **kwargs)
            except Exception as err:
                if refused is None:
                    raise
                raise UnsupportedLayerError(refused) from err  # a call with no rule that fails: refused
        if not any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0]):
            if refused is not None and not ops.is_constant(func):  # a value leaves torch (item, bool): no taint
                raise UnsupportedLayerError(refused)
            if ops.is_in_place(func) and args:  # __setitem__: the written tensor depends on the input now
                self.mark(args[0], None, ALL if any(self.joined(t) is not None for t in leaves) else None)
            return out
        if refused is None and ops.is_constant(func):  # a shape, or a new tensor of the input's shape: not its values
            return out
        why = ops.check_cast(func, out) if refused is None else None
        refused = self.refuse(func, why) if why is not None else refused
        first = next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        joined = ops.joined_after(func, args, kwargs, first, self.joined)
        self.mark(out, refused, joined)
        if ops.is_in_place(func) and args:
            self.mark(args[0], refused, joined)
        if "out" in kwargs:
            self.mark(kwargs["out"], refused, joined)
        return out

    @contextmanager
    def pause(self) -> Iterator[None]:
        """The hooks' own work (copies, reductions of kept outputs) is not the model's forward."""
        paused, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = paused


class _Stop(Exception):
    """Raised once every target layer has given its output: nothing later is needed."""


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
    by_module: dict[nn.Module, list[str]] = {}
    for name, m in modules.items():
        by_module.setdefault(m, []).append(name)
    outputs: dict[str, Any] = {}
    x = x.detach().requires_grad_(grad)
    mode: _DeconvMode | None = None

    def make_hook(names: list[str], token: object) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            if not owns(token) or names[0] in outputs:
                return None  # another thread's forward of the model, or a later call: the target is the first
            if not isinstance(output, torch.Tensor):
                raise UnsupportedLayerError(f"module '{names[0]}' returns a {type(output).__name__}, not a tensor: "
                                            "name a module whose output is one tensor")
            why = mode.refused(output) or (ops.unseen(output) if grad and output.requires_grad and not
                                           mode.rule.autograd and not mode.marked(output) else None)
            if why is not None:
                raise UnsupportedLayerError(why if "Hint:" in why else f"layer '{names[0]}' {why}. " + _HINT)
            with mode.pause():
                for name in names:
                    outputs[name] = (reduce(name, output.detach()) if reduce is not None
                                     else (output if grad else output.detach().clone()))
                    if declared is not None:
                        declared[name] = dict(mode.counts)
            if len(outputs) == len(modules):
                raise _Stop
            # later in-place operations (a residual ``out += identity``, an in-place ReLU) must change a copy,
            # not the kept output, whose value and graph node are the target's
            if not grad:
                return None
            with mode.pause():
                copy = output.clone()
            mode.mark(copy, None, mode.joined(output))
            return copy

        return hook

    model = eval_view(model)
    with ExitStack() as stack:
        token = stack.enter_context(own_call())
        where = stack.enter_context(_where_tracker(model, token))
        for m, names in by_module.items():
            stack.callback(m.register_forward_hook(make_hook(names, token)).remove)
        stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        mode = _DeconvMode(where, rule, grad, extend)
        mode.mark(x)
        try:
            with mode:
                model(x)
        except _Stop:
            pass
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
    key = (net._tree, extend and not autograd, autograd)
    checked = _CHECKED.get(net.model)
    if (checked is None or checked[0] != key) and net.device.type != "meta":  # meta: check_input refuses it
        checked = _probe(net, hw, key, rule)
    refused = [checked[1][n] for n in layers if checked is not None and checked[1].get(n)]
    if refused:
        raise UnsupportedLayerError(refused[0])


def _probe(net: Net, hw: Sequence[int], key: tuple, rule: str) -> tuple | None:
    """One forward of a zero input under the mode: (``key``, layer -> why its output is refused)."""
    for size in dict.fromkeys([(224, 224), tuple(int(v) for v in hw)]):
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

    def hook(m, inputs, output):
        name = names[original(m)]
        if owns(token) and isinstance(output, torch.Tensor) and name not in shapes:
            shapes[name] = tuple(output.shape)
            why = mode.refused(output) or (ops.unseen(output) if output.requires_grad and not
                                           mode.rule.autograd and not mode.marked(output) else None)
            if why is not None:
                refused[name] = why if "Hint:" in why else f"layer '{name}' {why}. " + _HINT

    x = torch.zeros(1, net.in_channels or 3, *size, device=net.device, dtype=net.dtype, requires_grad=True)
    try:
        with exclusive(net.model) as model, ExitStack() as stack:
            token = stack.enter_context(own_call())
            where = stack.enter_context(_where_tracker(model, token))
            for m in names:
                stack.callback(m.register_forward_hook(hook).remove)
            mode = _DeconvMode(where, rule, grad=True, extend=key[1])
            mode.mark(x)
            with torch.enable_grad(), mode:
                model(x)
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

    def project(self, x: torch.Tensor, targets: list[Target]) -> tuple[list[torch.Tensor], list[tuple], Record]:
        """Projections of resolved targets, their ``select_target`` results and the record of the layers."""
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
                results.append(project(leaf, act, sel[0]()).detach())
                selected.append(sel)
        return results, selected, Record(activations={n: outputs[n].detach() for n in layers},
                                         declared={n: declared.get(n, {}) for n in layers})

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


# --- receptive fields of graphs, measured ------------------------------------------------------------------

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
    out: dict[str, torch.Tensor] = {}

    def hook(m, inputs, output):
        if "y" not in out and owns(token):
            out["y"] = output
            raise _Stop

    x = torch.randn(1, channels, *hw, device=device, dtype=dtype).expand(2, -1, -1, -1).clone().requires_grad_(True)
    handle = module.register_forward_hook(hook)
    try:
        with own_call() as token, torch.enable_grad(), _LinearSurrogate(), contextlib.suppress(_Stop):
            eval_view(model)(x)  # the weights detached, the user's modules untouched (``models.lock``)
    finally:
        handle.remove()
    y = out["y"]
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
