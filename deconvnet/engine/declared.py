"""The declared rules of ``extend=True`` at one call, under the graph engine's mode (``mode.DeconvMode``):
an activation taken as a ReLU, a gate held constant, a normaliser's divisor held constant (``engine.rules``),
and the calls made on a gate. ``mode`` is the running mode: it marks, counts and words refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from . import ops, rules
from .types import UnsupportedLayerError


def declared_call(mode: Any, func: Callable, args: tuple, kwargs: dict) -> Any:
    """The call under its declared rule (``engine.rules``), counted; None when none applies. A gate's
    output is held constant (detached) and marked as a gate, not as dependent on the input."""
    act = rules.activation(func, args, kwargs)
    if act is not None:
        name, x, inplace = act
        if mode.dependent((args[1:], {k: v for k, v in kwargs.items() if k != "input"})):
            raise UnsupportedLayerError(mode.refuse(func, "takes a parameter that depends on the input"))
        mode.count(name)
        rest = {k: v for k, v in kwargs.items() if k != "inplace"}
        return rules.Rectify.apply(x, mode.rule, lambda t: func(t.clone(), *args[1:], **rest), inplace)
    gate = rules.gate(func)
    if gate is not None:
        if func in rules.GATES_INPLACE or kwargs.get("inplace") or (len(args) > 1 and args[1] is True):
            raise UnsupportedLayerError(mode.refuse(func, "computes a gate in place; the declared rule holds an "
                                                    "out-of-place gate constant"))
        out = func(*args, **kwargs).detach()
        out._deconvnet_gate = (mode.token, gate)
        return out
    norm = rules.norm(func, args, kwargs)
    if norm is not None:
        if mode.dependent((args[1:], {k: v for k, v in kwargs.items() if k != "input"})):
            raise UnsupportedLayerError(mode.refuse(func, "normalises with weights that depend on the input"))
        mode.count(norm[0])
        return norm[1]
    return None


def gated_call(mode: Any, func: Callable, args: tuple, kwargs: dict, gates: list[str]) -> Any:
    """A call on a gate: a product with the signal (the gate held constant, counted), or a view, cast or
    product of gates alone (still a gate); anything else is refused."""
    signal = mode.dependent((args, kwargs))
    if signal and func in rules.GATE_PRODUCTS and len(gates) == 1:
        out = func(*args, **kwargs)
        mode.count(gates[0])
        mode.mark(out)
        if ops.is_in_place(func) and args:
            mode.mark(args[0])
        return out
    if not signal and (func in rules.GATE_PRODUCTS or func in ops.LINEAR or func in ops.CASTS
                       or ops.is_constant(func)):
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and not ops.is_constant(func):
            out._deconvnet_gate = (mode.token, gates[0])
        return out
    refused = mode.refuse(func, "uses the output of a gate (a sigmoid, hardsigmoid or softmax) other than as "
                          "one factor of a product with the signal, which is where the declared rule holds it "
                          "constant", args, kwargs)
    out = func(*args, **kwargs)
    if not any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0]):
        raise UnsupportedLayerError(refused)
    mode.mark(out, refused)  # a taint: refused where a target's output depends on it (only the path counts)
    if ops.is_in_place(func) and args:
        mode.mark(args[0], refused)
    return out
