"""One resumable, sharded pass over a dataset, with a reducer: the loop the scan and the atlas's statistics share.

A pass runs one forward per batch (``engine.record``, stopping after the deepest layer) and hands each
layer's map to a ``Reducer`` inside the forward (``reduce(layer, map)``: no copies of large maps), which
folds the batch into its state. The pass owns everything around that: this rank's share of the dataset
(``deconvnet.distributed.batch_shard``: every ``world``-th batch of the one-process run), its checkpoint
(``deconvnet.distributed.rank_path``), written atomically every ``every`` batches, on Ctrl-C and on SIGTERM
(``Terminated``), refused with the arguments that differ when it was made with others, or with what is
wrong when it is malformed; the progress bar; the memory check; the items found undecodable; and, at the
end, the merge of the ranks' states (``Reducer.merge``), the same on every rank.

The state is swapped in together with the index of the next item, so an interrupt saves whole batches only:
a resumed pass folds the same batches in the same order as an uninterrupted one, and ends in the same state.
The scan's top-k (``deconvnet.scan``) and the atlas's histograms (``deconvnet.atlas.stats``) are reducers.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import distributed
from .cache import CacheWriteWarning
from .data import Batch, Items, collate
from .engine import record
from .io import torch_save
from .memory import check_memory
from .models import Net


class StaleScanWarning(UserWarning):
    """A checkpoint of a pass with other arguments (other images, weights, ...) was replaced by a new pass."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a pass: handled as Ctrl-C is (the checkpoint is saved), exit status 143."""


class Reducer(Protocol):
    """What a pass keeps of the batches: one state, folded batch by batch, merged over the ranks.

    Attributes:
        what: the pass's name in messages and on the progress bar (``"scan"``, ``"statistics"``).
        doing: its verb, for "... changed: scanning again".
    """

    what: str
    doing: str

    def empty(self) -> Any:
        """The state before any item."""

    def reduce(self, layer: str, t: torch.Tensor) -> Any:
        """What is kept of ``layer``'s (B, C, h, w) map of one batch, computed inside the forward."""

    def add(self, state: Any, parts: dict[str, Any], index: torch.Tensor) -> Any:
        """A new state: ``state`` with one batch's ``parts`` (layer -> ``reduce``'s) of items ``index``
        folded in; ``state`` itself is left as it is (an interrupt saves it)."""

    def malformed(self, state: Any) -> str | None:
        """Why a checkpoint's state is not a state of this reducer, in words; None when it is one."""

    def merge(self, states: list[Any]) -> Any:
        """The ranks' states (rank order) as one; of one state, a state equal to it."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a pass keeps its progress, and what it was made with.

    Attributes:
        path: the file (None: no checkpoint); under torch.distributed each rank keeps its own
            (``deconvnet.distributed.rank_path``).
        fingerprint: this rank's key (``deconvnet.checks.fingerprint``): a checkpoint of another is refused.
        args: what the fingerprint covers, JSON-able: named in the message when they differ.
        every: batches between writes (and at the end, and on an interrupt).
        restart_stale: a checkpoint with another fingerprint is replaced, with a ``StaleScanWarning``,
            instead of refused.
    """

    path: str | os.PathLike | None
    fingerprint: str
    args: dict[str, Any] = field(default_factory=dict)
    every: int = 20
    restart_stale: bool = False


@dataclass
class Passed:
    """What a pass found, merged over the ranks (the same on every rank).

    Attributes:
        state: the reducer's state of every item.
        skipped: the indices of the items that could not be read, sorted.
        n_images: how many items were read.
    """

    state: Any
    skipped: list[int]
    n_images: int


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` for the duration (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_state(path: str | os.PathLike, what: str) -> dict:
    """A saved dict (a scan, a checkpoint), or one ``ValueError`` saying it is missing, unreadable or not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file not found: '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {what} '{path}' ({type(err).__name__}); it may be corrupt. Hint: delete it and "
                         "rerun") from err
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' is not a deconvnet {what}. Hint: delete it and rerun")
    return state


def loader_options(net: Net, num_workers: int) -> dict[str, Any]:
    """``DataLoader`` options for ``net``'s device: pinned memory on CUDA, prefetching with workers."""
    cuda = net.device.type == "cuda"
    options: dict[str, Any] = {"pin_memory": cuda}
    if num_workers > 0:
        options.update(prefetch_factor=4 if cuda else 2, persistent_workers=False)
    return options


#: The arguments of a pass, as the message names them when a checkpoint was made with others.
_NAMES = {"model": "the model or its weights", "dataset": "the images", "n": "the number of images",
          "layers": "the layers", "k": "k", "per_group": "per_group", "groups": "the image groups",
          "dtype": "the dtype", "modules": "the model's modules (their types or arguments)",
          "preprocessing": "the preprocessing's values", "bins": "the bins", "batch_size": "the batch size",
          "tops": "the channels' maxima (the scan)", "shard": "the processes' shares",
          "format": "the checkpoint format"}


def what_differs(saved_args: str | None, args: dict) -> str:
    """Which of the arguments a checkpoint was made with differ from this call's, in words."""
    try:
        old = json.loads(saved_args) if saved_args else None
    except (TypeError, ValueError):
        old = None
    if not isinstance(old, dict):
        return "model, data, layers or options"
    new = json.loads(json.dumps(args, default=str))
    diff = [_NAMES.get(key, key) for key in new if old.get(key) != new[key]]
    if isinstance(old.get("dataset"), dict) and isinstance(new.get("dataset"), dict) \
            and old["dataset"].get("files") != new["dataset"].get("files"):
        diff = [d if d != "the images" else "the images' files (a file was added, removed or changed: "
                "its size or modification time)" for d in diff]
    return ", ".join(diff) or "model, data, layers or options"


class _Progress:
    """A pass's progress on this rank: the state of whole batches, and its checkpoint."""

    def __init__(self, reducer: Reducer, checkpoint: Checkpoint, n: int) -> None:
        self.reducer, self.args, self.fingerprint = reducer, checkpoint.args, checkpoint.fingerprint
        self.path: Path | None = None
        if checkpoint.path is not None:
            if distributed.world()[0] == 0 and (line := distributed.starting_over(checkpoint.path, reducer.what)):
                warnings.warn(line, StaleScanWarning, stacklevel=4)
            self.path = distributed.rank_path(checkpoint.path)
        self.state, self.next_index, self.skipped, self.n_images = reducer.empty(), 0, [], 0
        if self.path is not None and self.path.is_file():
            self._resume(checkpoint, n)
        self.start = self.next_index

    def _resume(self, checkpoint: Checkpoint, n: int) -> None:
        what = self.reducer.what
        saved = read_state(self.path, f"{what} checkpoint")
        if saved.get("fingerprint") != self.fingerprint:
            changed = what_differs(saved.get("args"), self.args)
            a_what = what if what.endswith("s") else f"a {what}"  # "statistics", "a scan"
            if not checkpoint.restart_stale:
                raise ValueError(
                    f"checkpoint '{self.path}' belongs to {a_what} with other arguments: {changed} changed since it "
                    f"was written. Hint: delete '{self.path}' to start over, or give another checkpoint path"
                )
            warnings.warn(f"{changed} changed since the {what} '{self.path}' was written: {self.reducer.doing} again",
                          StaleScanWarning, stacklevel=5)
            return
        why = self._malformed(saved, n)
        if why is not None:
            raise ValueError(f"{what} checkpoint '{self.path}' is malformed ({why}). Hint: delete it and rerun; the "
                             f"{what} starts over")
        self.state, self.next_index = saved["state"], saved["next_index"]
        self.skipped = [int(i) for i in saved.get("skipped", [])]  # found undecodable before the interruption
        self.n_images = int(saved.get("n_images", self.next_index - len(set(self.skipped))))

    def _malformed(self, saved: dict, n: int) -> str | None:
        if "state" not in saved or not isinstance(saved.get("next_index"), int):
            return "no state or next_index"
        if not 0 <= saved["next_index"] <= n:
            return f"next_index {saved['next_index']} is not in 0..{n}"
        why = self.reducer.malformed(saved["state"])
        if why is not None:
            return why
        if not isinstance(saved.get("skipped", []), list):
            return "'skipped' is not a list"
        if not isinstance(saved.get("n_images", 0), int):
            return "'n_images' is not an integer"
        return None

    def step(self, batch: Batch, parts: dict[str, Any] | None) -> int:
        """Swap in the state with ``batch`` folded in, the next index and the counts together."""
        state = self.state if parts is None else self.reducer.add(self.state, parts, batch.index)
        n_items = len(batch.index) + len(batch.skipped)
        self.state, self.next_index, self.skipped, self.n_images = (
            state, self.next_index + n_items, self.skipped + list(batch.skipped), self.n_images + len(batch.index))
        return n_items

    def save(self) -> bool:
        """Write the checkpoint; one that cannot be written is a ``CacheWriteWarning``, and the pass goes on
        without one."""
        if self.path is None:
            return False
        try:
            torch_save({"fingerprint": self.fingerprint, "next_index": self.next_index, "state": self.state,
                        "skipped": list(self.skipped), "n_images": self.n_images,
                        "args": json.dumps(self.args, default=str)}, self.path)
            return True
        except OSError as err:  # the pass itself is not lost: it goes on, without a checkpoint
            warnings.warn(f"could not write the {self.reducer.what} checkpoint '{self.path}' ({err.strerror or err}): "
                          f"the {self.reducer.what} goes on without one (an interruption now loses it)",
                          CacheWriteWarning, stacklevel=4)
            self.path = None
            return False


def run_pass(net: Net, dataset: Dataset, layers: Sequence[str], reducer: Reducer, checkpoint: Checkpoint, *,
             batch_size: int, num_workers: int = 0, progress: bool = True, note_unreadable: bool = False) -> Passed:
    """One pass over this rank's share of ``dataset``, resumable, then the ranks' states merged.

    Args:
        net: the model.
        dataset: items ``(x, index)`` (``deconvnet.data``).
        layers: the net's names of the layers whose maps ``reducer`` is given.
        reducer: what is kept (``Reducer``).
        checkpoint: where the progress is kept, and what the pass was made with (``Checkpoint``).
        batch_size, num_workers: of the ``DataLoader`` (on CUDA with workers: pinned memory, prefetching).
        progress: show a tqdm progress bar (rank 0).
        note_unreadable: tell the dataset of the items found undecodable (``Items.note_unreadable``), once
            this rank's share is done or interrupted (one process), or all ranks' after the merge.

    Returns:
        ``Passed``; the same on every rank.

    Raises:
        ValueError: a checkpoint made with other arguments (naming them), or malformed.
        KeyboardInterrupt: Ctrl-C, or SIGTERM (``Terminated``); the checkpoint is saved first, and the
            exception's ``saved`` says whether it was.
    """
    rank, world = distributed.world()
    indices = distributed.batch_shard(len(dataset), batch_size)
    run = _Progress(reducer, checkpoint, len(indices))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices[run.start:], num_workers=num_workers,
                        collate_fn=collate, **loader_options(net, num_workers))
    bar = tqdm(total=len(indices), initial=run.start, desc=f"{reducer.what} {','.join(layers)}", unit="img",
               disable=not progress or rank != 0)
    try:
        with sigterm_as_interrupt():
            _loop(net, loader, list(layers), reducer, run, checkpoint.every, bar)
    except BaseException as err:
        if run.path is not None and run.next_index > run.start:
            err.saved = run.save()  # an interrupted pass loses nothing; for the command line's message
        raise
    finally:
        bar.close()
        if note_unreadable and run.skipped and world == 1:
            Items(dataset).note_unreadable(run.skipped)
    run.save()  # before the merge: a rank killed while others wait loses nothing of its share
    shares = distributed.all_gather((run.state, run.skipped, run.n_images))  # one process: its own
    passed = Passed(state=reducer.merge([s for s, _, _ in shares]), skipped=sorted(i for _, part, _ in shares
                                                                                    for i in part),
                    n_images=sum(n for _, _, n in shares))
    if note_unreadable and world > 1 and passed.skipped:  # every rank's dataset learns of all
        with warnings.catch_warnings():
            if rank != 0:  # one warning, not one per process
                warnings.simplefilter("ignore")
            Items(dataset).note_unreadable(passed.skipped)
    return passed


def _loop(net: Net, loader: DataLoader, layers: list[str], reducer: Reducer, run: _Progress, every: int,
          bar: Any) -> None:
    """Fold every batch of ``loader`` into ``run``, writing its checkpoint every ``every`` batches."""
    deepest = net.deepest_index(layers)
    checked_memory = False
    for done, batch in enumerate(loader, 1):
        parts = None
        if len(batch.index):
            if not checked_memory:  # once: the batches are alike
                check_memory(net, len(batch.index), batch.x.shape[-2:], deepest)
                checked_memory = True
            # each map is reduced inside the forward: no copies of the large maps
            parts = record(net, batch.x, layers, switches=False, reduce=reducer.reduce).activations
        bar.update(run.step(batch, parts))
        if done % every == 0:
            run.save()
