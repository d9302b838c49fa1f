"""The graph engine's mode: the model's own forward run under a ``TorchFunctionMode`` that sees every call,
swaps each rectifier for the rule's and judges every other call on the input by the allow-list of ``ops``
(the table of what is projected and what refused: ``engine.graph``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import declared as declared_rules
from . import ops, rules
from .ops import ALL, REFUSED_MODULES
from .types import UnsupportedLayerError

HINT = ("Hint: the deconvnet projects models built of convolutions, linear layers, BatchNorm, ReLUs and max- or "
         "average-pooling (VGG, AlexNet, ResNet, DenseNet, GoogLeNet); a target before this point can be projected "
         "where the model's forward reaches it first.")
#: the hint of a refusal inside attention (vision transformers, Swin, MaxViT's attention blocks)
ATTENTION_HINT = ("Hint: attention is refused with and without extend=True: it mixes the token maps through a "
                   "product of two input-dependent tensors (queries and keys), for which no declared rule is "
                   "defined, and its tokens are not a convolutional feature map; project a CNN (ConvNeXt, "
                   "EfficientNet, RegNetY, ResNet, VGG), or a layer before the first attention block.")


def _tag(t: torch.Tensor, name: str, token: object) -> Any:
    """A value this forward attached to tensor ``t`` (``DeconvMode``), or None."""
    tagged = getattr(t, name, None)
    return tagged[1] if tagged is not None and tagged[0] is token else None


class DeconvMode(TorchFunctionMode):
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
        hint = f"Hint: extend=True (--extend) projects it with the declared rules: {declared}." if declared else HINT
        if "Attention" in type(module).__name__ or "attention" in getattr(func, "__name__", ""):
            hint = ATTENTION_HINT
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
