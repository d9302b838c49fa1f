"""The recorded forward of a chain: hooks keep shapes, max-pool switches and activations, then stop.

``record_chain`` runs the model's own forward (torchvision's in-place ReLUs included) with hooks that keep,
for every module up to the deepest requested layer, its input/output shapes and, for max-pools, the switches
(argmax positions). The forward stops right after the deepest requested layer. Hooks exist only inside the
call (removed in ``finally``), and the model is used exclusively, through an eval-mode view of it (``models.lock``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import check_memory, is_out_of_memory, memory_error
from ..models import Net
from ..models.hooks import capture
from ..models.lock import exclusive, own_call
from .switches import PoolSwitches
from .types import Record


def check_input(x: torch.Tensor, net: Net) -> torch.Tensor:
    """Validate a model input batch (B, C, H, W) and move it to the model's device and dtype.

    C is what the model takes: 3 for RGB models, 1 for grayscale ones, any other for others (a chain's
    first convolution says how many; a graph's forward says so if it does not fit).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor (B, C, H, W), got {type(x).__name__}. Hint: x = net.preprocess(image)")
    if net.device.type == "meta":
        raise ValueError(f"{net.arch} is on the meta device, which holds no weights to compute with. Hint: load its "
                         "weights first, e.g. model.to_empty(device='cpu') and then model.load_state_dict(state)")
    channels = net.in_channels
    if x.dim() != 4 or x.shape[1] < 1 or (net.is_chain and channels is not None and x.shape[1] != channels):
        c = channels if channels is not None else "C"
        raise ValueError(
            f"expected an input of shape (B, {c}, H, W), got {tuple(x.shape)}. Hint: x = net.preprocess(image)"
            + (f", or x.unsqueeze(0) for a single ({c}, H, W) image" if x.dim() == 3 else "")
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input, got {x.dtype}. Hint: x = net.preprocess(image)")
    if x.device.type == "meta":
        raise ValueError("the input is on the meta device, which holds no values. Hint: x = net.preprocess(image)")
    if not torch.isfinite(x).all():
        raise ValueError("the input contains NaN or infinite values")
    return x.to(device=net.device, dtype=net.dtype)


def record_chain(
    net: Net,
    x: torch.Tensor,
    layers: Sequence[str],
    *,
    switches: bool = True,
    reduce: Callable[[str, torch.Tensor], object] | None = None,
    masks: bool = False,
) -> Record:
    """Run a chain's forward up to the deepest of ``layers``, recording shapes, switches, activations.

    Args:
        switches: record the max-pool switches (a scan that only needs activations passes False).
        masks: record where each ReLU's input was positive (the guided and gradient rules need it).
        reduce: if given, ``activations[layer]`` holds ``reduce(layer, output)``, computed inside the forward
            before a following in-place ReLU overwrites the output, instead of a copy of the output
            (the dataset scan keeps only per-map maxima this way, with no copies of large maps).

    Hooks exist only inside this call: they are removed in ``finally``, also when the forward raised.
    """
    x = check_input(x, net)
    depth_of = {layer: net.depth(layer) for layer in layers}
    deepest = max(depth_of.values())
    wanted = {}
    for layer, d in depth_of.items():
        wanted.setdefault(d, []).append(layer)
    rec = Record(depth=deepest)
    last = {"index": -1}

    def keep(keys: list[int], module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        inp = inputs[0]
        indices = None
        if isinstance(output, tuple):  # MaxPool2d(return_indices=True)
            output, indices = output
        elif switches and isinstance(module, nn.MaxPool2d):
            indices = F.max_pool2d(
                inp, module.kernel_size, module.stride, module.padding, module.dilation,
                ceil_mode=module.ceil_mode, return_indices=True,
            )[1]
        for i in keys:
            if indices is not None:
                rec.switches[i] = PoolSwitches.from_indices(indices, tuple(inp.shape[-2:]), module)
            rec.shapes[i] = (inp.shape, output.shape)
            if masks and isinstance(module, nn.ReLU):  # output > 0 where the input was (in place or not)
                rec.masks[i] = output > 0
            for layer in wanted.get(i, ()):
                if reduce is not None:
                    rec.activations[layer] = reduce(layer, output.detach())
                else:  # a copy, since a following in-place ReLU would overwrite it; none if we stop here
                    rec.activations[layer] = output.detach() if i == deepest else output.detach().clone()
            last["index"] = i
        return None  # the record holds what is kept: no output is held beyond its module's call

    if reduce is None:  # a scan (reduce) checks its batch size itself, once
        check_memory(net, x.shape[0], x.shape[-2:], deepest)
    with exclusive(net.model) as model, own_call() as token:
        try:
            with torch.no_grad():  # the forward of the eval-mode view (``models.lock``), stopped after the deepest
                capture(dict(enumerate(m for _, m in net.stack[: deepest + 1])), lambda: model(x), keep=keep,
                        token=token)
        except (RuntimeError, MemoryError) as err:
            if is_out_of_memory(err):
                raise memory_error(err, f"running {net.arch} on an input of {tuple(x.shape)}") from err
            failed = net.stack[last["index"] + 1][0] if last["index"] + 1 < len(net.stack) else "?"
            raise ValueError(
                f"the forward pass failed at module '{failed}' for an input of {tuple(x.shape[-2:])}: "
                f"{str(err).splitlines()[0]}. Hint: the input may be too small to reach layer(s) {', '.join(layers)}"
            ) from err
    if rec.depth not in rec.shapes:
        raise RuntimeError(
            f"the forward pass of {net.arch} never reached '{net.stack[deepest][0]}': is net.stack the "
            "module order of net.model's forward?"
        )
    if reduce is None:
        check_finite(net, rec.activations)
    return rec


def check_finite(net: Net, activations: dict[str, torch.Tensor]) -> None:
    """Refuse NaN or infinite activations of a finite input: broken weights, named as such."""
    for layer, a in activations.items():
        if not torch.isfinite(a).all():
            raise ValueError(
                f"layer '{layer}' of {net.describe()} computes NaN or infinite values on a finite input: "
                "the weights are broken. Hint: check the weights file, or load another source"
            )


class Kept:
    """The last ``size`` recorded forwards, by input tensor (its identity) and what was recorded.

    A consumer that projects many targets of one image, one at a time (the explorer's clicks), keeps its
    input tensor and asks again: the forward is not run again. ``size=0`` keeps nothing.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[tuple, tuple[torch.Tensor, object]] = OrderedDict()
        self.forwards = 0  # how many forwards ran
        self.seconds = 0.0

    def get(self, x: torch.Tensor, key: tuple, run: Callable[[], object]):
        full = (id(x), key)
        hit = self.items.get(full)
        if hit is not None and hit[0] is x:
            self.items.move_to_end(full)
            return hit[1]
        t = time.perf_counter()
        value = run()
        self.forwards += 1
        self.seconds += time.perf_counter() - t
        if self.size:
            self.items[full] = (x, value)  # holding x keeps its id from being reused by another tensor
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value
