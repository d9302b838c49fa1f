"""Memory: estimate what a forward pass and projection need before allocating, and name an allocator failure.

A 100000-px input would otherwise grow until the kernel kills the process, and the CPU allocator's error
("can't allocate memory") would read like any other failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is an allocator failure (CUDA's OutOfMemoryError, or the CPU allocator's)."""
    oom = getattr(torch, "OutOfMemoryError", ())
    text = str(err)
    return isinstance(err, (MemoryError, *((oom,) if oom else ()))) or "out of memory" in text \
        or "can't allocate memory" in text or "not enough memory" in text


def memory_error(err: BaseException, what: str) -> MemoryError:
    """One clear ``MemoryError`` for an allocation that failed while doing ``what``."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return MemoryError(f"out of memory while {what}: {first}. Hint: use a smaller input size or batch")


def forward_bytes(net: Any, batch: int, hw: Sequence[int], depth: int | None = None) -> int:
    """About how many bytes a hooked forward up to stack index ``depth`` and one projection need.

    The sum of the module outputs (in-place ReLUs excepted) plus the input, twice: once for the forward
    and the recorded switches and activations, once for the walk down. Shapes are found on the meta
    device, so nothing is allocated.
    """
    item = torch.empty((), dtype=net.dtype).element_size()
    if net.stack is None:  # a graph: its module outputs for this very input size (a probe forward, cached;
        # on fake tensors for large sizes, so nothing is allocated)
        try:
            shapes = net.output_shapes(tuple(hw))
        except ValueError:
            return 0  # the input does not go through the model: the forward says why in its own words
        total = sum(math.prod(shape) for shape in shapes.values()) + (net.in_channels or 3) * hw[0] * hw[1]
        return int(2 * batch * total * item)
    depth = len(net.stack) - 1 if depth is None else depth
    x = torch.empty((batch, net.in_channels or 3, *hw), device="meta", dtype=net.dtype)
    total = x.numel()
    try:
        for _, m in net.stack[: depth + 1]:
            # shapes only, and never through a module's __call__: another thread's hooks may be on it
            if isinstance(m, nn.Linear):
                x = x.new_empty(x.shape[0], m.out_features)
            elif isinstance(m, nn.Flatten):
                x = x.flatten(m.start_dim, m.end_dim)
            elif not isinstance(m, (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Identity)):
                x = m.forward(x)
            if not (isinstance(m, nn.ReLU) and m.inplace):
                total += x.numel()
    except (RuntimeError, ValueError, NotImplementedError):
        return 0  # too small to reach the layer (record() says so in its own words), or no meta kernel
    return 2 * total * item


def available_memory() -> int:
    """Bytes this process can still allocate on the CPU: the system's available memory, or less under an
    address-space limit (``ulimit -v``)."""
    import psutil

    have = psutil.virtual_memory().available
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            have = min(have, max(0, limit - psutil.Process().memory_info().vms))
    except (ImportError, OSError, ValueError):  # no such limit on this platform
        pass
    return have


def check_bytes(need: int, what: str) -> None:
    """Refuse, before allocating, ``need`` bytes on the CPU for ``what`` when they are not available."""
    have = available_memory()
    if need > have:
        raise MemoryError(f"{what} needs about {need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB available "
                          "on this machine. Hint: use a smaller size (e.g. --size 224) or fewer images per batch")


def check_memory(net: Any, batch: int, hw: Sequence[int], depth: int | None = None) -> None:
    """Refuse, before allocating anything, an input whose forward and projection cannot fit in memory.

    On a CUDA model the free device memory counts; on the CPU the available system memory.

    Raises:
        MemoryError: the estimate exceeds what is available (the message gives both and the fix).
    """
    need = forward_bytes(net, batch, hw, depth)
    if net.device.type == "cuda":
        have = torch.cuda.mem_get_info(net.device)[0]
        where = f"free on {net.device}"
    else:
        have, where = available_memory(), "available on this machine"
    if need > have:
        raise MemoryError(
            f"an input of {batch} x {hw[0]}x{hw[1]} px needs about {need / 2**30:.1f} GiB for {net.arch}'s forward "
            f"pass and projection, more than the {have / 2**30:.1f} GiB {where}. "
            "Hint: use a smaller size (e.g. --size 224) or fewer images per batch"
        )
