"""The rule registry: the backward rules at a rectifier, and the declared rules of ``extend=True``.

A backward rule (Springenberg et al. 2015) is one ``Rule`` entry: its name (``Deconvnet(net, rule=...)``),
the spellings users may pass for it, its title for figures, its colour in plots, what it does at a
rectifier and whether it needs the rectifier's forward mask. Both engines, the analyses, the explorer and
the plots read the entries here; a new rule is one more entry.

The declared rules (``docs/explanation/declared-rules.md``) say what ``extend=True`` does where the paper
has no rule: a ReLU-like activation is taken as a ReLU of the same input, a gate (the output of a sigmoid,
hardsigmoid or softmax that multiplies the signal) and a normaliser's divisor are held constant at their
forward values. Each has the name a projection records it under (``Projection.declared``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

T = torch.Tensor


@dataclass(frozen=True)
class Rule:
    """One backward rule at a rectifier; R is the signal coming down, x the rectifier's forward input.

    Attributes:
        name: what ``Deconvnet(net, rule=...)`` takes and ``Projection.rule`` says.
        title: the rule's name in figures and the explorer.
        formula: the rule at a rectifier, in words.
        needs_mask: whether it reads ``[x > 0]`` from the forward (the chain records masks for it).
        autograd: whether it is the plain gradient (the graph engine then runs autograd's own backward).
        method: the analyses' name for it (``analysis.methods``); the name if not given.
        aliases: other spellings accepted wherever a rule is named.
        color: its colour in plots (matplotlib's cycle).
    """

    name: str
    title: str
    formula: str
    needs_mask: bool
    autograd: bool = False
    method: str = ""
    aliases: tuple[str, ...] = ()
    color: str = "C7"

    def at_rectifier(self, r: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The signal below a rectifier: ``r`` coming down, ``mask`` where its forward input was positive."""
        if self.name == "deconvnet":
            return r.relu()
        if self.name == "guided":
            return r.relu() * mask
        return r * mask

    @property
    def key(self) -> str:
        return self.method or self.name


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("deconvnet", "deconvnet", "R_in = R_out [R_out > 0] (Zeiler & Fergus: the ReLU on the reconstruction)",
         needs_mask=False, color="C3"),
    Rule("guided", "guided backprop", "R_in = R_out [x > 0] [R_out > 0] (guided backpropagation)", needs_mask=True,
         method="guided_backprop", aliases=("guided_backprop", "guided backprop", "guided-backprop"), color="C0"),
    Rule("gradient", "gradient", "R_in = R_out [x > 0] (the gradient, saliency)", needs_mask=True, autograd=True,
         aliases=("saliency",), color="C2"),
)}


def find(name: str) -> Rule | None:
    """The rule named ``name`` in any of its spellings, or None."""
    if not isinstance(name, str):
        return None
    for r in RULES.values():
        if name == r.name or name == r.method or name in r.aliases:
            return r
    return None


def get(name: str) -> Rule:
    """The rule named ``name`` in any of its spellings.

    Raises:
        ValueError: no rule has that name (the message lists them).
    """
    rule = find(name)
    if rule is None:
        raise ValueError(f"backward rule {name!r} is not understood. Hint: one of {', '.join(RULES)}")
    return rule


# --- the declared rules of extend=True ------------------------------------------------------------------

def _get(owner: Any, names: str) -> set:
    return {getattr(owner, n) for n in names.split() if hasattr(owner, n)}


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


#: ReLU-like activations, taken as a ReLU of the same input: record name -> (out-of-place, in-place) spellings
ACTIVATIONS: dict[str, tuple[set, set]] = {
    "SiLU": (_get(F, "silu"), set()),
    "GELU": (_get(F, "gelu"), set()),
    "Hardswish": (_get(F, "hardswish"), set()),
    "Mish": (_get(F, "mish"), set()),
    "ELU": (_get(F, "elu") | _get(torch, "elu"), _get(F, "elu_") | _get(torch, "elu_")),
    "CELU": (_get(F, "celu") | _get(torch, "celu"), _get(F, "celu_") | _get(torch, "celu_")),
    "SELU": (_get(F, "selu") | _get(torch, "selu"), _get(F, "selu_") | _get(torch, "selu_")),
    "LeakyReLU": (_get(F, "leaky_relu"), _get(F, "leaky_relu_")),
    "PReLU": (_get(F, "prelu") | _get(torch, "prelu") | _get(T, "prelu"), set()),
    "Softplus": (_get(F, "softplus"), set()),
    "ReLU6": (_get(F, "relu6"), set()),
    "Hardtanh(min 0)": (_get(F, "hardtanh"), _get(F, "hardtanh_")),
}
_ACTIVATION_OF = {f: (name, False) for name, (fs, _) in ACTIVATIONS.items() for f in fs}
_ACTIVATION_OF.update({f: (name, True) for name, (_, fs) in ACTIVATIONS.items() for f in fs})

#: gates, held constant at their forward value when they multiply the signal: function -> record name
GATES: dict[Callable, str] = {
    **{f: "sigmoid gate" for f in _get(torch, "sigmoid") | _get(T, "sigmoid") | _get(F, "sigmoid")},
    **{f: "hardsigmoid gate" for f in _get(F, "hardsigmoid")},
    **{f: "softmax gate" for f in _get(torch, "softmax") | _get(T, "softmax") | _get(F, "softmax")},
}
GATES_INPLACE: dict[Callable, str] = {f: "sigmoid gate" for f in _get(torch, "sigmoid_") | _get(T, "sigmoid_")}
#: the products a gate may be a factor of (elementwise, and the matrix products of attention weights)
GATE_PRODUCTS = (_get(torch, "mul multiply matmul bmm einsum")
                 | _get(T, "mul mul_ multiply __mul__ __rmul__ __imul__ matmul __matmul__ __rmatmul__ bmm"))

#: record names, each with the rule stated as the docs and figure footers state it
DECLARED = {
    **{f"{a} as ReLU": f"{a} taken as a ReLU of the same input" for a in ACTIVATIONS},
    **{f"{g} held constant": f"the {g.split()[0]} output held constant at its forward value where it multiplies "
       "the signal" for g in set(GATES.values())},
    **{f"{n} divisor held constant": f"{n}'s divisor (the statistic of the input it divides by) held constant"
       for n in ("LayerNorm", "GroupNorm", "InstanceNorm", "F.normalize")},
}


def activation(func: Callable, args: tuple, kwargs: dict) -> tuple[str, torch.Tensor, bool] | None:
    """``(record name, input, in place)`` when the call is a ReLU-like activation, else None.

    Hardtanh counts only with ``min_val=0`` (ReLU6 is one): with a negative floor it is not rectifier-like.
    """
    found = _ACTIVATION_OF.get(func)
    if found is None:
        return None
    name, inplace = found
    if name == "Hardtanh(min 0)" and _arg(args, kwargs, 1, "min_val", -1.0) != 0:
        return None
    if not inplace and func in (F.silu, F.hardswish, F.mish, F.elu, F.celu, F.selu, F.relu6):
        inplace = bool(_arg(args, kwargs, 2 if func in (F.elu, F.celu) else 1, "inplace", False))
    elif not inplace and func in (F.leaky_relu, F.hardtanh):
        inplace = bool(_arg(args, kwargs, 2 if func is F.leaky_relu else 3, "inplace", False))
    if name == "Hardtanh(min 0)" and _arg(args, kwargs, 2, "max_val", 1.0) == 6:
        name = "ReLU6"
    return f"{name} as ReLU", args[0], inplace


def gate(func: Callable) -> str | None:
    """The record name of a gate function (``"sigmoid gate held constant"``), or None."""
    name = GATES.get(func) or GATES_INPLACE.get(func)
    return f"{name} held constant" if name else None


class Rectify(torch.autograd.Function):
    """A rectifier under a rule: the forward is the activation's own (``fn``: ReLU, or a ReLU-like
    activation), the backward is the rule's at a ReLU of the same input (``Rule.at_rectifier``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: Rule, fn: Callable[[torch.Tensor], torch.Tensor],
                inplace: bool) -> torch.Tensor:
        ctx.rule = rule
        mask = x > 0 if rule.needs_mask else None
        if mask is not None:
            ctx.save_for_backward(mask)
        if inplace:
            ctx.mark_dirty(x)
            return x.copy_(fn(x))
        return fn(x)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple:
        mask = ctx.saved_tensors[0] if ctx.rule.needs_mask else None
        return ctx.rule.at_rectifier(r, mask), None, None, None


def _held(exact: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``exact``'s values with ``linear``'s backward: the forward stays the model's own, bit for bit."""
    return exact.detach() + (linear - linear.detach())


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    sd = (x.var(dims, unbiased=False, keepdim=True) + eps).sqrt().detach()
    y = (x - x.mean(dims, keepdim=True)) / sd
    return y * weight if weight is not None else y


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    g = x.reshape(x.shape[0], num_groups, -1)
    sd = (g.var(-1, unbiased=False, keepdim=True) + eps).sqrt().detach()
    y = ((g - g.mean(-1, keepdim=True)) / sd).reshape(x.shape)
    return y * weight.view(1, -1, *([1] * (x.dim() - 2))) if weight is not None else y


def _instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    return _group_norm(x, x.shape[1], weight, None, eps)


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


#: normalisations that divide by a statistic of the input: function -> (record name, the linear map with the
#: divisor held constant, which arguments must not depend on the input)
NORMS: dict[Callable, tuple[str, Callable]] = {
    F.layer_norm: ("LayerNorm divisor held constant", _layer_norm),
    F.group_norm: ("GroupNorm divisor held constant", _group_norm),
    F.instance_norm: ("InstanceNorm divisor held constant", _instance_norm),
    F.normalize: ("F.normalize divisor held constant", _normalize),
}


def norm(func: Callable, args: tuple, kwargs: dict) -> tuple[str, torch.Tensor] | None:
    """``(record name, output)`` for a normalisation with its divisor held constant, or None.

    The output has the model's own forward values; its backward is the normalisation's with the divisor
    (the standard deviation, or the norm) a constant: the mean subtraction and the affine weight stay.
    ``instance_norm`` with running statistics is linear and is no declared rule (None).
    """
    if func not in NORMS:
        return None
    if func is F.instance_norm and not _arg(args, kwargs, 5, "use_input_stats", True):
        return None
    name, linear = NORMS[func]
    with torch.no_grad():
        exact = func(*args, **kwargs)
    return name, _held(exact, linear(*args, **kwargs))


def summary(declared: dict[str, int]) -> str:
    """``"declared rules: GELU as ReLU (18), LayerNorm divisor held constant (23)"``, or ``""`` for none."""
    if not declared:
        return ""
    return "declared rules: " + ", ".join(f"{k} ({v})" for k, v in sorted(declared.items()))
