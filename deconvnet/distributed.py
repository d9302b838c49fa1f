"""Scale-out on torch.distributed: each process scans its share of a dataset, the shares merge exactly.

Nothing here starts processes: ``torchrun`` does (``torchrun --nproc_per_node=N -m deconvnet figures ...``,
or ``--nnodes``/``--rdzv_endpoint`` across machines), or a script of one's own that calls
``torch.distributed.init_process_group``. Every function reads the rank and the number of processes from
the initialised default process group; without one, the process is rank 0 of 1 and every function is the
trivial case (a gather returns ``[obj]``, a barrier returns at once). So one process is the special case
of N, not a second code path.

The pieces:

* ``shard(seq)``: this rank's items, a strided slice ``seq[rank::world]``; ``batch_shard(n, batch_size)``:
  the same over batches, the one-process run's batches ``rank, rank + world, ...``, so that every forward
  sees the batch one process gives it (a convolution may round otherwise in a batch of another size).
  Unlike ``DistributedSampler``, neither pads the last share with repeated items: an image seen twice
  could enter a top-k twice.
* ``all_gather(obj)``: every rank's object, in rank order (``all_gather_object``), for the merges.
* ``on_main(fn)``: ``fn`` runs on rank 0 only (it reads or writes the output folder); its result, or the
  exception it raised, reaches every rank, so all ranks take the same branch and raise the same error.
* ``rank_path(path)``: a per-rank checkpoint's file name; ``other_world_files(path)``: checkpoints of a
  run with another number of processes (they cannot be resumed: this run starts over).
* ``init_from_env(device)``: what the command line does under torchrun: nccl with one GPU per
  ``LOCAL_RANK`` on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")

#: environment variables torchrun sets for every process it starts
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _group_ready() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, number of processes)`` of the default process group; ``(0, 1)`` without one."""
    if _group_ready():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes figures, pages and sidecars)."""
    return world()[0] == 0


def backend() -> str | None:
    """The process group's backend (``"gloo"``, ``"nccl"``), or None in a single process without one."""
    return str(tdist.get_backend()) if _group_ready() else None


def describe() -> dict[str, Any]:
    """For provenance: how many processes ran and over which backend."""
    return {"processes": world()[1], "backend": backend()}


def shard(seq: Sequence[T]) -> Sequence[T]:
    """This rank's share of ``seq``: ``seq[rank::world]`` (disjoint, no padding; a ``range`` stays a range)."""
    rank, size = world()
    return seq[rank::size]


class BatchShard(Sequence[int]):
    """This rank's dataset indices: batches ``rank, rank + world, ...`` of ``range(n)`` cut in batches of
    ``batch_size`` (lazy: no list of a million indices). ``shard[start:]`` resumes at a position."""

    def __init__(self, n: int, batch_size: int, rank: int, size: int, start: int = 0) -> None:
        self.n, self.batch_size, self.rank, self.size, self.start = n, batch_size, rank, size, start
        batches = -(-n // batch_size)
        mine = len(range(rank, batches, size))
        last = rank + (mine - 1) * size  # this rank's last batch, the only one that may be short
        self.total = 0 if mine == 0 else (mine - 1) * batch_size + min(batch_size, n - last * batch_size)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _index(self, p: int) -> int:
        return (self.rank + (p // self.batch_size) * self.size) * self.batch_size + p % self.batch_size

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            if i.step not in (None, 1) or i.stop is not None or (i.start or 0) < 0:
                raise ValueError("a shard is sliced as shard[start:] only")
            return BatchShard(self.n, self.batch_size, self.rank, self.size, self.start + (i.start or 0))
        if not 0 <= i < len(self):
            raise IndexError(f"position {i} out of range for a shard of {len(self)}")
        return self._index(self.start + i)

    def __iter__(self):
        return (self._index(p) for p in range(self.start, self.total))


def batch_shard(n: int, batch_size: int) -> BatchShard:
    """This rank's share of ``range(n)`` as whole batches of the one-process run (see ``BatchShard``)."""
    rank, size = world()
    return BatchShard(n, batch_size, rank, size)


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (picklable objects: small states such as a top-k)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world()[1] > 1:
        tdist.barrier()


class _Raised:
    """An exception raised on rank 0, carried to the other ranks (which raise it too)."""

    def __init__(self, err: BaseException) -> None:
        self.err = err


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result (or raises the exception it raised).

    For what must happen once and decide what all ranks do next: checking and writing the output
    folder, finding which files exist (on rank 0's disk: machines need not share one).
    """
    rank, size = world()
    if size == 1:
        return fn(*args, **kwargs)
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = fn(*args, **kwargs)
        except Exception as err:  # an interrupt ends this rank; torchrun ends the others
            box[0] = _Raised(err)
    tdist.broadcast_object_list(box, src=0)
    if isinstance(box[0], _Raised):
        raise box[0].err
    return box[0]


def rank_path(path: str | os.PathLike) -> Path:
    """This rank's checkpoint file: ``path`` itself in a single process, else ``stem.rank<r>-of-<n>.suffix``."""
    path = Path(path)
    rank, size = world()
    if size == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{size}{path.suffix}")


def other_world_files(path: str | os.PathLike) -> list[Path]:
    """Checkpoints of ``path`` written by a run with another number of processes than this one."""
    path = Path(path)
    size = world()[1]
    pattern = re.compile(re.escape(path.stem) + r"\.rank\d+-of-(\d+)" + re.escape(path.suffix) + "$")
    found = [path] if size > 1 and path.is_file() else []
    if path.parent.is_dir():
        for f in sorted(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}")):
            m = pattern.match(f.name)
            if m and int(m.group(1)) != size:
                found.append(f)
    return found


def starting_over(path: str | os.PathLike, what: str) -> str | None:
    """The one line to say when a checkpoint of another number of processes exists and this one does not."""
    others = other_world_files(path)
    if not others or rank_path(path).is_file():
        return None
    sizes = sorted({int(m.group(1)) for f in others if (m := re.search(r"-of-(\d+)", f.name))} or {1})
    return (f"{what} checkpoint '{others[0].name}' is from a run with {' or '.join(map(str, sizes))} process(es), "
            f"this run has {world()[1]}: the {what} starts over (rerun with as many processes to resume it)")


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment, if any; returns the device to use.

    Under torchrun (``WORLD_SIZE`` > 1): CUDA (``device`` ``auto`` where a GPU is, or ``cuda``) gets the
    nccl backend and GPU ``LOCAL_RANK``; the CPU gets gloo. A single process returns ``device`` as given.

    Raises:
        ValueError: an explicit ``cuda:N`` under torchrun (each process takes the GPU of its LOCAL_RANK).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not _group_ready():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda:"):
        raise ValueError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK. "
                         "Hint: --device cuda (or auto)")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} here). "
                             "Hint: --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local_rank)  # nccl's collectives and all_gather_object use the current device
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    if not _group_ready():
        tdist.init_process_group("nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (the command line calls it at the end of a run under torchrun)."""
    if _group_ready():
        tdist.destroy_process_group()


def check_agree(parts: dict[str, str], what: str) -> None:
    """Before any work: every rank's ``parts`` (name -> fingerprint) equal rank 0's, else one ``ValueError``
    on every rank naming what differs and on which ranks (all ranks gather the same, so all raise alike)."""
    rank, size = world()
    if size == 1:
        return
    everyone = all_gather(parts)
    differ: dict[str, list[int]] = {}
    for r, theirs in enumerate(everyone[1:], 1):
        for name in dict.fromkeys([*everyone[0], *theirs]):
            if theirs.get(name) != everyone[0].get(name):
                differ.setdefault(name, []).append(r)
    if differ:
        said = "; ".join(f"{name} on rank {', '.join(map(str, ranks))}" for name, ranks in differ.items())
        raise ValueError(f"the {size} processes disagree before the {what}, against rank 0: {said}. Hint: every "
                         "process "
                         "needs the same images (the same files on every machine), weights, model and options")


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks): what rank 0 alone writes."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] | None = [None] * size if rank == 0 else None
    tdist.gather_object(obj, out, dst=0)
    return out
