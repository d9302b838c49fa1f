"""What the graph engine lets a forward compute on the input: an allow-list, so that a projection is exact or refused.

The deconvnet (and guided backpropagation) is defined for networks built of three kinds of step: maps that are
linear in the signal (convolutions, fully connected layers, BatchNorm in eval mode, sums, concatenations,
reshapes, paddings, average pooling, ...), rectifiers (ReLU) and max-pooling. The graph engine runs a model's
own forward under a ``TorchFunctionMode`` (``engine.graph``) that sees every torch function call. A call whose
tensor arguments do not depend on the input (shapes, parameters, constants) passes as it is. A call on the
input, or on anything computed from it, must be one of:

=====================  ===================================================================================
kind                   functions (every spelling: ``F.x``, ``torch.x``, ``Tensor.x``, operators, in place)
=====================  ===================================================================================
linear                 add, sub, neg, sum, mean, cat, stack, views and reshapes, indexing, padding,
                       interpolation, clone, casts between floating types, ...: linear (affine) in all
                       their tensor arguments together
linear in one          conv, linear, BatchNorm in eval mode, average pooling, dropout in eval mode,
argument               division by a constant, ``where`` with a constant condition, ...: linear in the
                       input argument, the others (weights, divisor, index, mask) must not depend on it
product                mul, matmul, einsum, ...: linear when at most one factor depends on the input; the
                       product of two input-dependent tensors (a gate, an attention) is refused
rectifier              ``relu`` in every spelling, and ``clamp(min=0)``, ``clamp_min(0)``, ``clip(0)``,
                       ``threshold(0, 0)``: the rule's ReLU
max-pool               ``max_pool1d/2d/3d``, ``adaptive_max_pool1d/2d/3d``, and a max taken along
                       dimensions (``amax``, ``max(dim)``, ``max()``): the signal goes to the maximum
                       (the switch), autograd's own backward (``amax`` shares it among equal maxima)
query                  ``size``, ``dim``, ``shape``, ``numel``, ``len``, ...: no tensor comes out
=====================  ===================================================================================

Everything else (``exp``, ``sigmoid``, ``abs``, ``square``, ``softmax``, normalisations that divide by a
statistic of the input, an elementwise maximum of two tensors, comparisons, ``detach``, ``.item()``) is
refused, naming the function and the module it is called in. So are the spellings that look linear and are
not: a division that rounds (``rounding_mode="floor"`` or ``"trunc"``), a new tensor made of the input's
values (``x.new_tensor(x)``: a copy without its path), and a maximum taken along a dimension that stacks or
concatenates tensors (``stack([x, zeros_like(x)]).amax(0)`` is a ReLU, ``stack([x - a, a - x]).amax(0)``
an absolute value: neither is a max-pool). Only calls on the path from the input to the target count.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from . import rules

T = torch.Tensor


def _get(owner: Any, names: str) -> set:
    """The functions of ``owner`` with these names (those this torch version has)."""
    return {getattr(owner, n) for n in names.split() if hasattr(owner, n)}


def _everywhere(names: str) -> set:
    """A function under the same name in ``F``, ``torch`` and as a ``Tensor`` method."""
    return _get(F, names) | _get(torch, names) | _get(T, names)


def _properties(names: str) -> set:
    return {getattr(T, n).__get__ for n in names.split() if hasattr(T, n)}


#: no tensor of the input's values comes out (shapes, flags): always allowed
QUERIES = (
    _get(T, "size dim ndimension numel nelement stride is_contiguous is_floating_point is_complex element_size "
            "get_device data_ptr storage_offset __len__ __format__ __repr__ __hash__ is_nonzero")
    | _properties("shape ndim dtype device is_cuda layout requires_grad is_leaf grad_fn names is_sparse "
                  "is_quantized is_meta is_mkldnn itemsize nbytes is_cpu")
    | _get(torch, "_assert is_tensor is_floating_point numel")
)

#: new tensors that share the input's shape, not its values (their results do not depend on the input)
CONSTANTS = _get(T, "new_zeros new_ones new_empty new_full new_tensor") | _get(
    torch, "zeros_like ones_like empty_like full_like rand_like randn_like")

#: linear (affine) in all their tensor arguments together
LINEAR = (
    _everywhere("add add_ __add__ __radd__ __iadd__ sub sub_ subtract __sub__ __rsub__ __isub__ neg neg_ "
                "negative __neg__ positive __pos__ sum mean cumsum trace diagonal diag diag_embed tril triu "
                "view view_as reshape reshape_as flatten unflatten permute transpose transpose_ swapaxes swapdims "
                "movedim moveaxis t squeeze squeeze_ unsqueeze unsqueeze_ expand expand_as broadcast_to repeat "
                "tile narrow select split split_with_sizes chunk unbind tensor_split hsplit vsplit flip fliplr "
                "flipud roll rot90 contiguous clone cat concat concatenate stack hstack vstack dstack "
                "column_stack copy_ zero_ pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle")
    | _properties("T mT H mH")
)

#: linear in the first (input) argument; the others are weights, sizes, divisors, indices, masks
LINEAR_IN_INPUT = (
    _everywhere("conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear "
                "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
                "pad interpolate upsample upsample_nearest upsample_bilinear grid_sample fold unfold "
                "div div_ divide true_divide __truediv__ __itruediv__ __div__ index_select gather masked_fill "
                "masked_fill_ take_along_dim repeat_interleave")
    | {T.__getitem__}
)

#: functions linear in their input only in eval mode, checked call by call (``_mode_check``)
EVAL_ONLY = {F.batch_norm, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
             F.feature_alpha_dropout, torch.dropout, torch.alpha_dropout, torch.feature_dropout,
             torch.feature_alpha_dropout}

#: linear when at most one of their tensor arguments depends on the input
PRODUCTS = _everywhere("mul mul_ multiply __mul__ __rmul__ __imul__ matmul __matmul__ __rmatmul__ mm bmm mv "
                       "dot outer einsum tensordot kron inner")

#: ``__setitem__(self, index, value)``: linear in self and value, the index must not depend on the input
SETITEM = {T.__setitem__}
#: ``where(condition, x, y)``: linear in x and y when the condition does not depend on the input
WHERE = _get(torch, "where") | _get(T, "where")

#: conversions: linear between floating types (checked on the result)
CASTS = _get(T, "to float double half bfloat16 type type_as cpu cuda")

MAX_POOLS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.max_pool1d_with_indices, F.max_pool2d_with_indices,
    F.max_pool3d_with_indices, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices,
} | _get(torch, "max_pool1d max_pool2d max_pool3d adaptive_max_pool1d max_pool1d_with_indices")
#: a max along dimensions: a max-pool whose window is those dimensions (``max`` of two tensors is refused)
MAX_REDUCTIONS = _get(torch, "amax max") | _get(T, "amax max")

_RELU = {F.relu, torch.relu, T.relu}
_RELU_INPLACE = {F.relu_, torch.relu_, T.relu_}
_CLAMPS = _get(torch, "clamp clip") | _get(T, "clamp clip")
_CLAMPS_INPLACE = _get(torch, "clamp_ clip_") | _get(T, "clamp_ clip_")
_CLAMP_MIN = _get(torch, "clamp_min") | _get(T, "clamp_min")
_CLAMP_MIN_INPLACE = _get(torch, "clamp_min_") | _get(T, "clamp_min_")
_THRESHOLD = {F.threshold, torch.threshold}
_THRESHOLD_INPLACE = _get(F, "threshold_") | _get(torch, "threshold_")

#: functions known to have no deconvnet rule -> the name messages use (the allow-list refuses them anyway)
KNOWN_NONLINEAR: dict[Callable, str] = {
    F.silu: "SiLU (F.silu)", F.gelu: "GELU (F.gelu)", F.hardswish: "Hardswish (F.hardswish)",
    F.hardsigmoid: "Hardsigmoid (F.hardsigmoid)", F.elu: "ELU (F.elu)", F.selu: "SELU (F.selu)",
    F.celu: "CELU (F.celu)", F.leaky_relu: "LeakyReLU (F.leaky_relu)", F.prelu: "PReLU (F.prelu)",
    F.mish: "Mish (F.mish)", F.softplus: "Softplus (F.softplus)", F.relu6: "ReLU6 (F.relu6)",
    F.hardtanh: "Hardtanh/ReLU6 (F.hardtanh)", F.glu: "GLU (F.glu)", F.rrelu: "RReLU (F.rrelu)",
    F.softsign: "Softsign (F.softsign)", F.hardshrink: "Hardshrink (F.hardshrink)",
    F.softshrink: "Softshrink (F.softshrink)", F.tanhshrink: "Tanhshrink (F.tanhshrink)",
    F.softmax: "softmax (F.softmax)", F.log_softmax: "F.log_softmax", F.softmin: "F.softmin",
    torch.sigmoid: "sigmoid (torch.sigmoid)", T.sigmoid: "sigmoid (Tensor.sigmoid)", F.sigmoid: "sigmoid (F.sigmoid)",
    torch.tanh: "tanh (torch.tanh)", T.tanh: "tanh (Tensor.tanh)", F.tanh: "tanh (F.tanh)",
    F.local_response_norm: "local response normalisation (F.local_response_norm)",
    F.layer_norm: "LayerNorm (F.layer_norm)", F.group_norm: "GroupNorm (F.group_norm)",
    F.instance_norm: "InstanceNorm (F.instance_norm)", F.normalize: "F.normalize",
    F.scaled_dot_product_attention: "attention (F.scaled_dot_product_attention)",
    F.multi_head_attention_forward: "attention (F.multi_head_attention_forward)",
    **({F.rms_norm: "RMSNorm (F.rms_norm)"} if hasattr(F, "rms_norm") else {}),
}

#: modules with no deconvnet rule, refused before any forward (``check_modules``); the allow-list catches
#: any other module by the functions its forward calls
REFUSED_MODULES: tuple[type, ...] = tuple(
    getattr(nn, n) for n in ["SiLU", "GELU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
                             "Softmin", "Softmax2d", "ELU", "SELU", "CELU", "LeakyReLU", "PReLU", "RReLU", "Mish",
                             "Softplus", "Softsign", "Softshrink", "Hardshrink", "Tanhshrink", "ReLU6", "Hardtanh",
                             "GLU", "LogSigmoid", "LocalResponseNorm", "LayerNorm", "GroupNorm", "InstanceNorm1d",
                             "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "MultiheadAttention", "Transformer",
                             "TransformerEncoderLayer", "TransformerDecoderLayer"] if hasattr(nn, n)
)


def _is_zero(v: Any) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool) and v == 0


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def rectifier(func: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool] | None:
    """``(input, in_place)`` when the call is a ReLU in any spelling, else None.

    ``relu``; ``clamp``/``clip`` with min 0 and no max; ``clamp_min`` with 0; ``threshold`` with threshold
    and value 0 (``x if x > 0 else 0``): each is ``max(x, 0)``, and gets the rule's ReLU.
    """
    if func in _RELU:
        return args[0], bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
    if func in _RELU_INPLACE:
        return args[0], True
    if func in _CLAMPS or func in _CLAMPS_INPLACE:
        if _is_zero(_arg(args, kwargs, 1, "min")) and _arg(args, kwargs, 2, "max") is None:
            return args[0], func in _CLAMPS_INPLACE
        return None
    if func in _CLAMP_MIN or func in _CLAMP_MIN_INPLACE:
        if _is_zero(_arg(args, kwargs, 1, "min")):
            return args[0], func in _CLAMP_MIN_INPLACE
        return None
    if ((func in _THRESHOLD or func in _THRESHOLD_INPLACE)
            and _is_zero(_arg(args, kwargs, 1, "threshold")) and _is_zero(_arg(args, kwargs, 2, "value"))):
        inplace = func in _THRESHOLD_INPLACE or bool(_arg(args, kwargs, 3, "inplace", False))
        return args[0], inplace
    return None


def is_constant(func: Callable) -> bool:
    """Whether the call's result is no function of the input's values (a query, a new tensor of its shape)."""
    return func in QUERIES or func in CONSTANTS


def is_in_place(func: Callable) -> bool:
    """Whether a call changes its first argument (whose values then depend on what was written)."""
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name in (
        "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__")


_NAMES: dict[Any, str] = {}


def describe(func: Callable) -> str:
    """A function's name as a user spells it: ``F.softsign``, ``torch.exp``, ``Tensor.clamp``."""
    if func in KNOWN_NONLINEAR:
        return KNOWN_NONLINEAR[func]
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__" and hasattr(getattr(func, "__self__", None), "__name__"):
        return f"Tensor.{func.__self__.__name__}"
    if not _NAMES:
        for prefix, owner in (("torch.special", torch.special), ("torch", torch), ("F", F), ("Tensor", T)):
            for n in dir(owner):
                if n.startswith("_") and not n.startswith("__"):
                    continue
                with contextlib.suppress(TypeError):  # not hashable
                    _NAMES[getattr(owner, n)] = f"{prefix}.{n}"
    try:
        if func in _NAMES:
            return _NAMES[func]
    except TypeError:
        pass
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else name


def check(func: Callable, args: tuple, kwargs: dict, dependent: Callable[[Any], bool]) -> str | None:
    """Why a call on input-dependent tensors has no deconvnet rule, or None when it is allowed.

    ``dependent(value)`` says whether a value (a tensor, or a list or tuple holding some) depends on the
    input. Rectifiers are handled before (``rectifier``).
    """
    if func in QUERIES or func in CONSTANTS or func in LINEAR or func in CASTS:
        return None
    if func in LINEAR_IN_INPUT or func in EVAL_ONLY or func in MAX_POOLS:
        if any(dependent(a) for a in args[1:]) or any(dependent(v) for k, v in kwargs.items() if k != "input"):
            return ("is linear in its input only, and here another of its arguments (a weight, a divisor, an index, "
                    "a mask) depends on the input too")
        if func is F.batch_norm:
            if _arg(args, kwargs, 5, "training", False):
                return "runs in training mode (normalising by the batch's own statistics): it is not linear"
            if _arg(args, kwargs, 1, "running_mean") is None:
                return "keeps no running statistics: it normalises by the batch's own statistics, not linearly"
        elif func in EVAL_ONLY and _arg(args, kwargs, 2, "training" if func is not torch.dropout else "train",
                                        func in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)):
            return "runs in training mode (a random mask)"
        return None
    if func in PRODUCTS:
        tensors = [a for a in args if not isinstance(a, str)] + list(kwargs.values())
        if func is torch.einsum and len(args) == 2 and isinstance(args[1], (list, tuple)):
            tensors = list(args[1])
        if sum(dependent(a) for a in tensors) > 1:
            return ("multiplies two tensors that both depend on the input (a gate, an attention, a square): "
                    "a product is not linear")
        return None
    if func in SETITEM:
        return "writes at positions that depend on the input" if dependent(args[1]) else None
    if func in WHERE:
        if len(args) + len(kwargs) < 3:
            return "finds positions from the input's values"
        if dependent(_arg(args, kwargs, 0, "condition")):
            return "chooses between values by a condition on the input: it is not linear"
        return None
    if func in MAX_REDUCTIONS:
        if any(isinstance(a, torch.Tensor) for a in args[1:]) or isinstance(kwargs.get("other"), torch.Tensor):
            return ("takes the elementwise maximum of two tensors, which is not a max-pool (the deconvnet's "
                    "rectifier is relu, or clamp(min=0))")
        return None
    if func in _CLAMPS or func in _CLAMPS_INPLACE or func in _CLAMP_MIN or func in _CLAMP_MIN_INPLACE:
        return "clamps at bounds other than min=0 (which is a ReLU): it is not linear"
    if func in _THRESHOLD or func in _THRESHOLD_INPLACE:
        return "thresholds at values other than threshold=0, value=0 (which is a ReLU): it is not linear"
    if func in KNOWN_NONLINEAR:
        return "has no deconvnet rule"
    return "is not known to be linear, a rectifier or a max-pool"


def check_cast(func: Callable, out: Any) -> str | None:
    """A cast of the input to a non-floating type (bool, int) is not linear."""
    if func in CASTS and isinstance(out, torch.Tensor) and not (out.is_floating_point() or out.is_complex()):
        return f"converts the input to {out.dtype}, which is not linear"
    return None


# --- what extend=True adds (the declared rules of ``engine.rules``) -------------------------------------------

#: modules of ``REFUSED_MODULES`` that ``extend=True`` lets through (their functions get the declared rules),
#: each with the rule that a refusal without the opt-in names
EXTENDED_MODULES_RULE: dict[str, str] = {
    **{n: f"{n} as ReLU" for n in ["SiLU", "GELU", "Hardswish", "Mish", "ELU", "CELU", "SELU", "LeakyReLU", "PReLU",
                                   "Softplus", "ReLU6"]},
    "Hardtanh": "Hardtanh(min 0) as ReLU (only with min_val=0)",
    "Sigmoid": "sigmoid gate held constant (only as a factor of a product with the signal)",
    "Hardsigmoid": "hardsigmoid gate held constant (only as a factor of a product with the signal)",
    "Softmax": "softmax gate held constant (only as a factor of a product with the signal)",
    "LayerNorm": "LayerNorm divisor held constant", "GroupNorm": "GroupNorm divisor held constant",
    **{f"InstanceNorm{d}d": "InstanceNorm divisor held constant" for d in (1, 2, 3)},
}
EXTENDED_MODULES: tuple[type, ...] = tuple(getattr(nn, n) for n in EXTENDED_MODULES_RULE if hasattr(nn, n))

def extended_rule(m: nn.Module) -> str:
    """The declared rule of a module of ``EXTENDED_MODULES`` (a subclass, such as torchvision's LayerNorm2d,
    takes its base's)."""
    for k in type(m).__mro__:
        if k.__module__.startswith("torch.nn") and k.__name__ in EXTENDED_MODULES_RULE:
            return EXTENDED_MODULES_RULE[k.__name__]
    return "none"


#: timm's memory-efficient activations: custom autograd Functions whose forward the graph engine does not see
#: whole (``timm.layers.activations_me``), refused by name with the plain module to build instead
TIMM_OPAQUE = {"SwishMe": "SiLU", "MishMe": "Mish", "HardSigmoidMe": "Hardsigmoid", "HardSwishMe": "Hardswish",
               "HardMishMe": "HardMish", "SwishAuto": "SiLU", "MishAuto": "Mish"}


def opaque_module(m: nn.Module) -> str | None:
    """Why a module's forward cannot be projected by any rule (it hides its computation in a custom autograd
    Function whose backward is not the rule's), or None."""
    name = type(m).__name__
    if type(m).__module__.startswith("timm.") and name in TIMM_OPAQUE:
        return (f"is timm's memory-efficient {TIMM_OPAQUE[name]}, a custom autograd Function with its own backward, "
                "which no rule can replace. Hint: build the model with timm.layers.set_layer_config(exportable=True) "
                f"(or act_layer='{TIMM_OPAQUE[name].lower()}'), which uses the plain activation")
    return None


def has_declared_rule(func: Callable, args: tuple, kwargs: dict) -> str | None:
    """The declared rule ``extend=True`` would apply to this call (for the refusal's hint), or None."""
    act = rules.activation(func, args, kwargs)
    if act is not None:
        return act[0]
    if rules.gate(func):
        return f"{rules.gate(func)} (only as a factor of a product with the signal)"
    if func in rules.NORMS:
        return rules.NORMS[func][0]
    return None


# --- spellings that look linear and are not ----------------------------------------------------------------

_DIVS = _everywhere("div div_ divide")


def check_spelling(func: Callable, args: tuple, kwargs: dict, dependent: Callable[[Any], bool]) -> str | None:
    """Why a call on the list is not linear all the same (rounding division, a copy of the input's values)."""
    if func in _DIVS and _arg(args, kwargs, 2, "rounding_mode") is not None:
        return (f"divides with rounding_mode={_arg(args, kwargs, 2, 'rounding_mode')!r}, which rounds: it is not "
                "linear")
    if func in CONSTANTS and (any(dependent(a) for a in args[1:]) or any(dependent(v) for v in kwargs.values())):
        return ("makes a new tensor of the input's values, a copy without their path to the input (as detach "
                "does): the projection would lose that path")
    return None


# --- joins: a max along a stacked dimension is no max-pool ----------------------------------------------------

#: every dimension (a join whose dimensions are not followed any more)
ALL = "all"
_STACKS = _everywhere("stack")
_CATS = _everywhere("cat concat concatenate")
_JOINS = _everywhere("hstack vstack dstack column_stack")
_PADS = {F.pad} | _get(torch, "constant_pad_nd")
#: maps whose output mixes every input position (a new map: no join survives them), when not grouped
_FRESH = _everywhere("conv1d conv2d conv3d linear")
#: maps that keep the meaning of each dimension (rows stay rows, channels channels), whatever the sizes
_SAME_LAYOUT = _everywhere(
    "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
    "interpolate upsample upsample_nearest upsample_bilinear pad conv_transpose1d conv_transpose2d "
    "conv_transpose3d narrow") | MAX_POOLS | EVAL_ONLY | _PADS | _get(T, "__getitem__")

Joined = Any  # a frozenset of dimensions, ALL, or None


def _union(a: Joined, b: Joined) -> Joined:
    if a is None:
        return b
    if b is None:
        return a
    return ALL if ALL in (a, b) else a | b


def joined_after(func: Callable, args: tuple, kwargs: dict, out: torch.Tensor,
                 joined: Callable[[Any], Joined]) -> Joined:
    """The dimensions of ``out`` along which input-dependent tensors were joined (stacked, concatenated,
    padded with a constant), from those of the call's arguments (``joined(tensor)``)."""
    if func in _STACKS or func in _CATS:
        tensors = [t for t in _arg(args, kwargs, 0, "tensors", ()) if isinstance(t, torch.Tensor)]
        d = _arg(args, kwargs, 1, "dim", 0)
        if len([t for t in tensors if t.numel()]) < 2 or not isinstance(d, int):
            return ALL if any(joined(t) is not None for t in tensors) else None
        d %= out.dim()
        result: Joined = frozenset({d})
        for t in tensors:
            j = joined(t)
            if j is not None:
                result = _union(result, j if j == ALL or func in _CATS else frozenset(k + (k >= d) for k in j))
        return result
    if func in _JOINS:
        return ALL
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if func in _PADS and tensors:
        pad = _arg(args, kwargs, 1, "pad", ())
        mode = _arg(args, kwargs, 2, "mode", "constant")
        value = _arg(args, kwargs, 3, "value", 0.0)
        if mode == "constant" and not (isinstance(value, float) and value == float("-inf")):
            padded = frozenset(out.dim() - 1 - i // 2 for i, p in enumerate(pad) if p)
            return _union(joined(tensors[0]), padded or None)
    result = None
    for t in tensors:
        j = joined(t)
        if j is None:
            continue
        if func in _FRESH and _arg(args, kwargs, 6, "groups", 1) == 1:
            continue  # every output unit mixes every input channel: a new map
        if j != ALL and (tuple(t.shape) == tuple(out.shape) or (func in _SAME_LAYOUT and t.dim() == out.dim())):
            result = _union(result, j)
        else:
            result = ALL
    return result


def max_over_joined(func: Callable, args: tuple, kwargs: dict, joined: Callable[[Any], Joined]) -> str | None:
    """Why a max (a reduction or a max-pool) is no max-pool: it runs along a joined dimension."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    j = joined(args[0])
    if j is None:
        return None
    n = args[0].dim()
    if func in MAX_REDUCTIONS:
        dim = _arg(args, kwargs, 1, "dim", None)
        dims = range(n) if dim is None or dim == () or dim == [] else ([dim] if isinstance(dim, int) else dim)
    elif func in MAX_POOLS:
        name = getattr(func, "__name__", "")
        k = 3 if "3d" in name else 1 if "1d" in name else 2
        dims = range(n - k, n)
    else:
        return None
    if j == ALL or any(int(d) % max(n, 1) in j for d in dims):
        return ("takes a maximum along a dimension on which tensors were stacked, concatenated or padded "
                "(stack([x, zeros_like(x)]).amax(0) is a ReLU, stack([x - a, a - x]).amax(0) an absolute "
                "value): it is no max-pool of one map")
    return None


# --- what the mode cannot see: custom autograd Functions, TorchScript, no_grad ------------------------------

def autograd_function() -> type | None:
    """The custom ``torch.autograd.Function`` whose forward is running now (its ``ctx`` is on the call stack),
    or None."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "forward" and code.co_argcount:
            ctx = frame.f_locals.get(code.co_varnames[0])
            if isinstance(ctx, torch.autograd.function.FunctionCtx):
                return getattr(type(ctx), "_forward_cls", type(ctx))
        frame = frame.f_back
    return None


def outside_backward(func: Callable) -> str:
    """Why a call that depends on the input runs with gradients off in a forward that needs them."""
    fn = autograd_function()
    if fn is not None and fn.__name__ == "CheckpointFunction":
        return ("runs inside torch.utils.checkpoint(use_reentrant=True), whose backward runs the forward again "
                "outside the rule. Hint: use_reentrant=False, or no checkpoint (the deconvnet runs one forward)")
    if fn is not None:
        return (f"runs inside the custom autograd Function {fn.__module__}.{fn.__qualname__}, whose backward is "
                "its own, not the rule's: it has no deconvnet rule")
    return ("runs under torch.no_grad() (or inference_mode): its result leaves the backward, and with it a path "
            "from the input to the target")


def unseen(t: torch.Tensor) -> str:
    """Why a tensor that depends on the input (it requires grad) came from a computation the mode did not see."""
    node = type(t.grad_fn).__name__ if t.grad_fn is not None else "none"
    return ("takes a tensor computed by code the allow-list cannot see (a torch.jit.script function or ScriptModule, "
            "a C++ "
            f"extension; its autograd node is {node}): there is no telling whether it is linear")
