"""Dataset-scale scan: each feature map's strongest activations (the paper's Figure 2 selection).

``scan_top_k`` runs one forward per batch (stopping after the deepest requested layer) and keeps, for
every channel of every requested layer, the k strongest activations across the dataset: value, image
index and position, by default at most one per *group* (the paper's nine different images). A dataset
that has ``group(i)`` reports the group of item ``i``: the source photograph for the demo collection (whose
items are crops of a few photographs), the file for a folder; without it every item is its own group.

Order and ties (deterministic): higher value first; among equal values, the lower image index, then the
lower row-major position. So the result does not depend on batch size, workers or interruptions.

Inside an initialised ``torch.distributed`` process group (``torchrun``), each rank scans its share of
the dataset, every ``world``-th batch (``deconvnet.distributed.batch_shard``), with its own checkpoint,
and the ranks' top-k states merge exactly (``_merge_ranks``): the result equals the one-process result,
values, images, positions and ties, on every rank. One process is the case of one rank.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import signal
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import distributed
from .cache import (
    CacheWriteWarning,
    ScanCache,
    files_digest,
    module_tree,
    preprocessing_values,
    scan_cache_dir,
    weights_digest,
)
from .data import collate
from .engine import record
from .io import torch_save
from .memory import check_memory
from .models import Net

FORMAT_VERSION = 2  # 2: per_group (1 had per_image)
_EMPTY_IMAGE = torch.iinfo(torch.long).max  # sorts after every real image index


@dataclass
class TopK:
    """The k strongest activations of every channel of some layers.

    Attributes:
        layers: the layers scanned (paper names).
        k: entries kept per channel.
        per_group: most entries per channel from one group (an image, or the photograph the demo
            collection's crops come from; None: no limit).
        values: layer -> (C, k) float64, ``-inf`` where fewer than k entries exist.
        images: layer -> (C, k) int64 dataset indices, -1 where empty.
        positions: layer -> (C, k, 2) int64 row, col in the layer's map.
        map_size: layer -> (h, w) of the layer's map.
        provenance: model, weights, dataset, transform, k, date, ...
    """

    layers: list[str]
    k: int
    per_group: int | None
    values: dict[str, torch.Tensor]
    images: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor]
    map_size: dict[str, tuple[int, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def entries(self, layer: str, channel: int) -> list[tuple[float, int, tuple[int, int]]]:
        """The kept ``(value, image index, (row, col))`` of one channel, strongest first."""
        out = []
        for v, i, (r, c) in zip(self.values[layer][channel].tolist(), self.images[layer][channel].tolist(),
                                self.positions[layer][channel].tolist(), strict=True):
            if i >= 0:
                out.append((v, i, (r, c)))
        return out

    def select(self, layers: Sequence[str], k: int | None = None) -> TopK:
        """The scan of some of its layers, and of its first ``k`` entries per channel (the top-k' of a
        top-k, k' <= k: the order is exact, so the first k' are the top k')."""
        k = self.k if k is None else k
        if not 1 <= k <= self.k or not set(layers) <= set(self.layers):
            raise ValueError(f"this scan holds layers {', '.join(self.layers)} with k={self.k}; "
                             f"asked for {', '.join(layers)} with k={k}")
        layers = list(layers)
        return TopK(layers=layers, k=k, per_group=self.per_group,
                    values={layer: self.values[layer][:, :k] for layer in layers},
                    images={layer: self.images[layer][:, :k] for layer in layers},
                    positions={layer: self.positions[layer][:, :k] for layer in layers},
                    map_size={layer: self.map_size[layer] for layer in layers if layer in self.map_size},
                    provenance=dict(self.provenance, layers=layers, k=k))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file, then rename)."""
        torch_save(self._state(), path)

    def _state(self) -> dict:
        return {
            "format": FORMAT_VERSION, "layers": self.layers, "k": self.k, "per_group": self.per_group,
            "values": self.values, "images": self.images, "positions": self.positions,
            "map_size": self.map_size, "provenance": self.provenance,
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> TopK:
        """Load a saved scan.

        Raises:
            ValueError: the file is missing, unreadable or not a scan of this format.
        """
        state = _read_state(path, "scan result")
        if state.get("format") != FORMAT_VERSION or "values" not in state:
            raise ValueError(f"'{path}' is not a deconvnet scan result (format {FORMAT_VERSION}). Hint: rerun the scan")
        state.pop("format")
        state.pop("next_index", None)
        state.pop("fingerprint", None)
        return cls(**state)


class StaleScanWarning(UserWarning):
    """A checkpoint of a scan with other arguments (other images, weights, ...) was replaced by a new scan."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a scan: handled as Ctrl-C is (the checkpoint is saved), exit status 143."""


@contextmanager
def _sigterm_as_interrupt():
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


def _check_checkpoint(saved: dict, path, channels: dict[str, int], n: int) -> None:
    """Refuse a checkpoint that unpickles but is not a scan state of this shape (a clear line, not a traceback)."""
    def bad(why: str) -> ValueError:
        return ValueError(f"scan checkpoint '{path}' is malformed ({why}). Hint: delete it and rerun; the scan starts "
                          "over")

    state = saved.get("state")
    if not isinstance(state, dict) or not isinstance(saved.get("next_index"), int):
        raise bad("no state or next_index")
    if not 0 <= saved["next_index"] <= n:
        raise bad(f"next_index {saved['next_index']} is not in 0..{n}")
    for key in ("values", "images", "flat"):
        part = state.get(key)
        if not isinstance(part, dict) or set(part) != set(channels):
            raise bad(f"'{key}' does not hold the layers {', '.join(channels)}")
        for layer, c in channels.items():
            t = part[layer]
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != c:
                raise bad(f"'{key}' of {layer} is not a ({c}, n) tensor")
    if not all(isinstance(state.get(k), dict) for k in ("width", "height")):
        raise bad("no map sizes")
    if not isinstance(saved.get("skipped", []), list):
        raise bad("'skipped' is not a list")


def _what_differs(saved_args: str | None, args: dict) -> str:
    """Which of the scan's arguments a checkpoint was made with differ from this call's, in words."""
    try:
        old = json.loads(saved_args) if saved_args else None
    except (TypeError, ValueError):
        old = None
    if not isinstance(old, dict):
        return "model, data, layers or k"
    new = json.loads(json.dumps(args, default=str))
    names = {"model": "the model or its weights", "dataset": "the images", "n": "the number of images",
             "layers": "the layers", "k": "k", "per_group": "per_group", "groups": "the image groups",
             "dtype": "the dtype", "modules": "the model's modules (their types or arguments)",
             "preprocessing": "the preprocessing's values"}
    diff = [names.get(key, key) for key in new if old.get(key) != new[key]]
    if isinstance(old.get("dataset"), dict) and old["dataset"].get("files") != new["dataset"].get("files"):
        diff = [d if d != "the images" else "the images' files (a file was added, removed or changed: "
                "its size or modification time)" for d in diff]
    return ", ".join(diff) or "model, data, layers or k"


def _read_state(path: str | os.PathLike, what: str) -> dict:
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


def _lexsort_desc(values: torch.Tensor, images: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Per row, the order: value descending, then image ascending, then position ascending."""
    order = torch.argsort(flat, dim=1, stable=True)
    order = order.gather(1, torch.argsort(images.gather(1, order), dim=1, stable=True))
    return order.gather(1, torch.argsort(values.gather(1, order), dim=1, descending=True, stable=True))


def _candidates(act: torch.Tensor, per_group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, the strongest ``per_group`` units: values and flat positions (B, C, m).

    An image lies in one group, so no more of its units can be kept.
    """
    flat = act.flatten(2)
    if per_group == 1:
        v, i = flat.max(2)  # argmax: the first maximal position
        return v.unsqueeze(2).double(), i.unsqueeze(2)
    m = flat.shape[2] if per_group is None else min(per_group, flat.shape[2])
    # a stable descending sort keeps the lower position first among equal values
    v, i = torch.sort(flat, dim=2, descending=True, stable=True)
    return v[..., :m].double(), i[..., :m]


def _rank_in_group(groups: torch.Tensor) -> torch.Tensor:
    """Per row of (C, n) group ids in rank order, how many earlier entries of the row share the group."""
    n = groups.shape[1]
    by_group = torch.argsort(groups, dim=1, stable=True)  # grouped, rank order kept inside each group
    g = groups.gather(1, by_group)
    col = torch.arange(n).expand_as(g)
    starts = torch.ones_like(g, dtype=torch.bool)
    starts[:, 1:] = g[:, 1:] != g[:, :-1]
    run_start = torch.where(starts, col, torch.zeros_like(col)).cummax(1).values
    return torch.empty_like(col).scatter_(1, by_group, col - run_start)


def _merge(state: dict, layer: str, cand: tuple, index: torch.Tensor, k: int,
           group_of: torch.Tensor | None = None, per_group: int | None = None) -> None:
    """Merge one batch's candidates ``(values (B, C, m), flat positions, (h, w))`` into the running top-k.

    With ``group_of`` (item index -> group id) and ``per_group``, an entry is kept only while fewer than
    ``per_group`` stronger entries of its group are kept: the greedy choice, which is the exact top-k
    under the limit, and stays exact merge after merge (a dropped entry can never come back).
    """
    v, flat, (h, w) = cand
    b, c = v.shape[:2]
    v, flat = v.cpu(), flat.cpu()
    m = v.shape[2]
    v = v.permute(1, 0, 2).reshape(c, b * m)
    flat = flat.permute(1, 0, 2).reshape(c, b * m)
    img = index.view(1, b, 1).expand(c, b, m).reshape(c, b * m)
    keep = torch.isfinite(v)  # NaN/inf activations are never "strongest"
    v = torch.where(keep, v, torch.full_like(v, float("-inf")))
    img = torch.where(keep, img, torch.full_like(img, _EMPTY_IMAGE))
    old_v, old_img, old_flat = state["values"][layer], state["images"][layer], state["flat"][layer]
    _keep_top(state, layer, torch.cat([old_v, v], 1), torch.cat([old_img, img], 1), torch.cat([old_flat, flat], 1),
              k, group_of, per_group)
    state["width"][layer] = w
    state["height"][layer] = h


def _keep_top(state: dict, layer: str, all_v: torch.Tensor, all_img: torch.Tensor, all_flat: torch.Tensor, k: int,
              group_of: torch.Tensor | None, per_group: int | None) -> None:
    """Keep in ``state`` the top k of the (C, n) entries given, under the per-group limit (the greedy choice)."""
    order = _lexsort_desc(all_v, all_img, all_flat)
    if group_of is not None and per_group is not None:
        img_sorted = all_img.gather(1, order)
        empty = img_sorted == _EMPTY_IMAGE  # each empty slot its own group, after every real one
        groups = torch.where(empty, len(group_of) + torch.arange(img_sorted.shape[1]).expand_as(img_sorted),
                             group_of[img_sorted.clamp(max=len(group_of) - 1)])
        allowed = _rank_in_group(groups) < per_group
        first_allowed = torch.argsort((~allowed).to(torch.int8), dim=1, stable=True)
        order = order.gather(1, first_allowed)
    order = order[:, :k]
    state["values"][layer] = all_v.gather(1, order)
    state["images"][layer] = all_img.gather(1, order)
    state["flat"][layer] = all_flat.gather(1, order)


def _merge_ranks(state: dict, skipped: list[int], layers: Sequence[str], k: int,
                 group_of: torch.Tensor | None, per_group: int | None) -> tuple[dict, list[int]]:
    """Every rank's top-k state merged into one, the same on every rank (one process: the state itself).

    Exact: each rank's greedy top-k holds every entry of the global top-k that lies in its share (an entry
    has no more stronger entries of its group, nor in all, in a share than in the whole), so the greedy
    choice over the union of the shares, in the one total order, is the one-process result.
    """
    states = distributed.all_gather((state, skipped))
    merged: dict = {"values": {}, "images": {}, "flat": {}, "width": {}, "height": {}}
    for s, _ in states:
        merged["width"].update(s["width"])
        merged["height"].update(s["height"])
    for layer in layers:
        _keep_top(merged, layer,
                  *(torch.cat([s[key][layer] for s, _ in states], 1) for key in ("values", "images", "flat")),
                  k, group_of, per_group)
    return merged, sorted(i for _, part in states for i in part)


def _group_ids(dataset: Dataset) -> torch.Tensor | None:
    """(N,) int64 group id of every item (numbered by first appearance), or None: each item its own."""
    group = getattr(dataset, "group", None)
    if group is None:
        return None
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(group(i), len(ids)) for i in range(len(dataset))], dtype=torch.long)


def loader_options(net: Net, num_workers: int) -> dict[str, Any]:
    """``DataLoader`` options for ``net``'s device: pinned memory on CUDA, prefetching with workers."""
    cuda = net.device.type == "cuda"
    options: dict[str, Any] = {"pin_memory": cuda}
    if num_workers > 0:
        options.update(prefetch_factor=4 if cuda else 2, persistent_workers=False)
    return options


def _rank_fingerprint(net: Net, dataset: Dataset, args: dict, batch_size: int, cache: Any) -> dict[str, str]:
    """What must be alike on every torchrun rank, in parts named for the message (``check_agree``)."""
    data = {key: args[key] for key in ("dataset", "n", "groups", "preprocessing")}
    paths, root = getattr(dataset, "paths", None), getattr(dataset, "root", None)
    if paths is not None and root is not None:  # same names, sizes and times, other bytes: another dataset
        folder = scan_cache_dir(cache)
        memo = folder / "files.json" if folder is not None and folder.is_dir() else None
        data["contents"] = files_digest(paths, root, memo)
    return {
        "the data (images, their contents or preprocessing)": _fingerprint(data),
        "the weights": weights_digest(net.model),
        "the module tree": args["modules"],
        "the layers": ",".join(args["layers"]),
        "the options (k, per_group, batch_size, dtype)": _fingerprint(
            {"k": args["k"], "per_group": args["per_group"], "batch_size": batch_size, "dtype": args["dtype"]}),
    }


def _fingerprint(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:16]


def scan_top_k(  # noqa: C901 (34: its loop and its checkpoint go to the one resumable pass, issue 26)
    net: Net,
    dataset: Dataset,
    layers: Sequence[str],
    k: int = 9,
    *,
    per_group: int | None = 1,
    batch_size: int = 32,
    num_workers: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 20,
    progress: bool = True,
    restart_stale: bool = False,
    cache: bool | str | os.PathLike = False,
) -> TopK:
    """Find, for every channel of ``layers``, the k strongest activations across ``dataset``.

    Args:
        net: the model.
        dataset: items ``(x, index)`` (``deconvnet.data``); indices must be the dataset positions.
        layers: layers with spatial maps: the paper's names for VGG and AlexNet (``conv1_2``, ``relu3_3``,
            ``pool5``, ...), module paths for any model (``layer3``, ``features.denseblock2``,
            ``inception4a``; ``Deconvnet(net).spatial_layers()`` lists them).
        k: entries per channel (the paper shows 9).
        per_group: most entries per channel from one group (default 1; None: no limit). The group of
            item ``i`` is ``dataset.group(i)`` where the dataset has it (the demo collection: the source
            photograph; a folder: the file), else the item itself.
        batch_size, num_workers: of the ``DataLoader`` (on CUDA with workers: pinned memory, prefetching).
        checkpoint: file written atomically every ``checkpoint_every`` batches; a rerun with the same
            arguments resumes from it, and the result equals that of an uninterrupted run. Under
            torch.distributed each rank keeps its own (``deconvnet.distributed.rank_path``); a rerun with
            another number of processes starts over, saying so in a ``StaleScanWarning``.
        progress: show a tqdm progress bar.
        restart_stale: a checkpoint made with other arguments (say, after an image file changed) is an
            error naming what changed; with True it is replaced by a new scan, with a ``StaleScanWarning``.
        cache: True: look the scan up in the shared scan cache (``deconvnet.cache``: ``$DECONVNET_CACHE``,
            else ``~/.cache/deconvnet``) and store it there, so that the figure script, the atlas and the
            notebooks scan a dataset once; a folder: a cache there. Under torch.distributed rank
            0's cache serves every rank: rank 0 reads and stores, the ranks scan what it lacks. Found by the
            weights' digest, the dataset's description, the layer, per_group and k (an entry with more entries
            per channel serves a smaller k); layers not found are scanned (resumably: without ``checkpoint``, the
            checkpoint lies in the cache). A dataset without ``describe()`` cannot be identified and is
            scanned without the cache, with a warning.

    Returns:
        A ``TopK``; ``save``/``TopK.load`` keep it without rescanning. Under torch.distributed, every rank
        scans its share and returns the same merged ``TopK``.
    """
    if not layers:
        raise ValueError("no layers to scan. Hint: e.g. layers=['conv5_3']")
    layers = list(dict.fromkeys(net.resolve(layer) for layer in layers))  # module paths -> the net's names
    for layer in layers:
        if not net.is_spatial(layer):
            raise ValueError(f"layer '{layer}' has no spatial map to scan. Hint: use a conv, relu or pool layer")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of batches, got {checkpoint_every!r}")
    if per_group is not None and (isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1):
        raise ValueError(f"per_group must be None or a positive integer, got {per_group!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    group_of = _group_ids(dataset) if per_group is not None else None
    if per_group is not None:
        n_groups = len(dataset) if group_of is None else int(group_of.max()) + 1
        if k > n_groups * per_group:
            what = "images" if n_groups == len(dataset) else "source photographs or files (dataset.group)"
            raise ValueError(
                f"k={k} entries per channel cannot come from {n_groups} {what} with at most {per_group} from each. "
                f"Hint: use k <= {n_groups * per_group}, or more images"
            )
    describe = getattr(dataset, "describe", lambda: {"kind": type(dataset).__name__, "n_images": len(dataset)})
    args = {
        "model": {k_: v for k_, v in net.provenance.items()},
        # what fixes the data, not what a scan learns about it (images found undecodable change
        # n_images and n_skipped, and must not make a rerun look like another scan)
        "dataset": {k_: v for k_, v in describe().items() if k_ not in ("n_skipped", "skipped", "n_images")},
        "n": len(dataset), "layers": layers, "k": k, "per_group": per_group,
        "groups": None if group_of is None else hashlib.sha256(group_of.numpy().tobytes()).hexdigest()[:16],
        "dtype": str(net.dtype),
        # surgery that keeps the state_dict, and a preprocessing of the same name with other values
        "modules": module_tree(net.model),
        "preprocessing": preprocessing_values(getattr(dataset, "preprocessing", None)),
    }
    fingerprint = _fingerprint(args)
    rank, world = distributed.world()
    if world > 1:  # before any work: ranks that would scan different things must not be merged
        distributed.check_agree(_rank_fingerprint(net, dataset, args, batch_size, cache), "scan")
    folder = scan_cache_dir(cache)  # under torchrun rank 0's cache serves every rank (``_scan_with_cache``)
    if folder is not None and not hasattr(dataset, "describe"):
        warnings.warn(f"a {type(dataset).__name__} has no describe(), so its scan cannot be found again: not cached. "
                      "Hint: deconvnet.data's collections describe themselves", stacklevel=2)
        folder = None
    if folder is not None:
        distributed.on_main(ScanCache(folder).check)  # a file, or read-only: said now, not after the scan
        return _scan_with_cache(ScanCache(folder), net, dataset, layers, k, args, fingerprint, dict(
            per_group=per_group, batch_size=batch_size, num_workers=num_workers, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, progress=progress, restart_stale=restart_stale))
    # this rank's share and checkpoint (one process: every image, the checkpoint as given)
    indices = distributed.batch_shard(len(dataset), batch_size)
    ckpt_fingerprint = fingerprint if world == 1 else _fingerprint(dict(args, shard=[rank, world, batch_size]))
    if checkpoint is not None:
        if rank == 0 and (line := distributed.starting_over(checkpoint, "scan")):
            warnings.warn(line, StaleScanWarning, stacklevel=2)
        checkpoint = distributed.rank_path(checkpoint)
    channels = {layer: net.channels[layer] for layer in layers}
    state = {
        "values": {layer: torch.full((c, 0), float("-inf"), dtype=torch.float64) for layer, c in channels.items()},
        "images": {layer: torch.zeros((c, 0), dtype=torch.long) for layer, c in channels.items()},
        "flat": {layer: torch.zeros((c, 0), dtype=torch.long) for layer, c in channels.items()},
        "width": {}, "height": {},
    }
    start = 0
    skipped: list[int] = []
    if checkpoint is not None and Path(checkpoint).is_file():
        saved = _read_state(checkpoint, "scan checkpoint")
        if saved.get("fingerprint") != ckpt_fingerprint:
            changed = _what_differs(saved.get("args"), args)
            if not restart_stale:
                raise ValueError(
                    f"checkpoint '{checkpoint}' belongs to a scan with other arguments: {changed} changed since it "
                    f"was written. Hint: delete '{checkpoint}' to scan again, or give another checkpoint path"
                )
            warnings.warn(f"{changed} changed since the scan '{checkpoint}' was written: scanning again",
                          StaleScanWarning, stacklevel=2)
        else:
            _check_checkpoint(saved, checkpoint, channels, len(indices))
            state, start = saved["state"], saved["next_index"]
            skipped = [int(i) for i in saved.get("skipped", [])]  # found undecodable before the interruption
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices[start:], num_workers=num_workers,
                        collate_fn=collate, **loader_options(net, num_workers))
    bar = tqdm(total=len(indices), initial=start, desc=f"scan {','.join(layers)}", unit="img",
               disable=not progress or rank != 0)
    done_batches = 0
    next_index = start

    def save_checkpoint() -> bool:
        nonlocal checkpoint
        try:
            torch_save({"fingerprint": ckpt_fingerprint, "next_index": next_index, "state": state,
                        "skipped": list(skipped), "args": json.dumps(args, default=str)}, checkpoint)
            return True
        except OSError as err:  # the scan itself is not lost: it goes on, without a checkpoint
            warnings.warn(f"could not write the scan checkpoint '{checkpoint}' ({err.strerror or err}): the scan goes "
                          "on without one (an interruption now loses it)", CacheWriteWarning, stacklevel=3)
            checkpoint = None
            return False

    deepest = max(net.depth(layer) for layer in layers) if net.is_chain else None
    checked_memory = False
    try:
        with _sigterm_as_interrupt():
            for batch in loader:
                skipped.extend(batch.skipped)
                if len(batch.index):
                    if not checked_memory:  # once: the batches are alike
                        check_memory(net, len(batch.index), batch.x.shape[-2:], deepest)
                        checked_memory = True
                    # per-map candidates are computed inside the forward: no copies of the large maps
                    rec = record(net, batch.x, layers, switches=False,
                                 reduce=lambda t: (*_candidates(t, per_group), tuple(t.shape[-2:])))
                    # merge into a copy and swap it in with next_index together, so that an interrupt
                    # can only ever save a state of whole batches
                    merged = {key: dict(d) for key, d in state.items()}
                    for layer in layers:
                        _merge(merged, layer, rec.activations[layer], batch.index, k, group_of, per_group)
                else:
                    merged = state
                n_items = len(batch.index) + len(batch.skipped)
                state, next_index = merged, next_index + n_items
                bar.update(n_items)
                done_batches += 1
                if checkpoint is not None and done_batches % checkpoint_every == 0:
                    save_checkpoint()
    except BaseException as err:
        if checkpoint is not None and next_index > start:
            err.saved = save_checkpoint()  # an interrupted scan loses nothing; for the command line's message
        raise
    finally:
        bar.close()
        if skipped and hasattr(dataset, "note_unreadable") and world == 1:
            dataset.note_unreadable(skipped)
    if checkpoint is not None:
        save_checkpoint()  # before the merge: a rank killed while others wait loses nothing of its share
    state, skipped = _merge_ranks(state, skipped, layers, k, group_of, per_group)
    if world > 1 and skipped and hasattr(dataset, "note_unreadable"):  # every rank's dataset learns of all
        with warnings.catch_warnings():
            if rank != 0:  # one warning, not one per process
                warnings.simplefilter("ignore")
            dataset.note_unreadable(skipped)
    if len(set(skipped)) == len(dataset):
        raise ValueError(f"none of the {len(dataset)} images could be decoded: there is nothing to show. "
                         "Hint: check the image files")
    values, images, positions = {}, {}, {}
    for layer in layers:
        v, img, flat = state["values"][layer], state["images"][layer], state["flat"][layer]
        c = v.shape[0]
        pad = k - v.shape[1]
        if pad > 0:
            v = torch.cat([v, torch.full((c, pad), float("-inf"), dtype=v.dtype)], 1)
            img = torch.cat([img, torch.full((c, pad), _EMPTY_IMAGE, dtype=img.dtype)], 1)
            flat = torch.cat([flat, torch.zeros((c, pad), dtype=flat.dtype)], 1)
        empty = img == _EMPTY_IMAGE
        w = state["width"].get(layer, 1)
        pos = torch.stack([flat // w, flat % w], 2)
        values[layer] = v
        images[layer] = torch.where(empty, torch.full_like(img, -1), img)
        positions[layer] = torch.where(empty.unsqueeze(2), torch.full_like(pos, -1), pos)
    provenance = dict(args, fingerprint=fingerprint,
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      weights=net.describe(), dataset_final=describe(), skipped=sorted(set(skipped)),
                      **distributed.describe())
    return TopK(
        layers=layers, k=k, per_group=per_group, values=values, images=images, positions=positions,
        map_size={layer: (state["height"].get(layer, 0), state["width"].get(layer, 0)) for layer in layers},
        provenance=provenance,
    )


def _scan_with_cache(cache: ScanCache, net: Net, dataset: Dataset, layers: list[str], k: int, args: dict,
                     fingerprint: str, scan_args: dict) -> TopK:
    """``scan_top_k`` through the cache: the layers found there are read, the others scanned and stored."""
    # what fixes the result, less the layers and k (an entry is one layer, and serves any smaller k); the
    # weights by their digest, not their file: the same weights anywhere, and a model changed in place is
    # another model
    identity = {key: v for key, v in json.loads(json.dumps(args, default=str)).items()
                if key not in ("model", "layers", "k")}
    identity["weights"] = weights_digest(net.model)
    paths, root = getattr(dataset, "paths", None), getattr(dataset, "root", None)
    if paths is not None and root is not None:  # the files' contents: what their stat cannot tell
        identity["contents"] = files_digest(paths, root, cache.files_memo)

    def look() -> dict[str, TopK]:  # rank 0 reads its cache for every rank (ranks elsewhere have other caches)
        found: dict[str, TopK] = {}
        for layer in layers:
            path = cache.entry(identity, layer)
            try:
                entry = TopK.load(path) if path.is_file() else None
            except ValueError:
                entry = None  # unreadable: scanned again, and replaced
            if entry is not None and layer in entry.layers and entry.k >= k:
                found[layer] = entry.select([layer], k)
        return found

    found = distributed.on_main(look)
    from_cache = [layer for layer in layers if layer in found]
    missing = [layer for layer in layers if layer not in found]
    if missing:
        own = scan_args["checkpoint"] is None and distributed.world()[1] == 1  # ranks keep no checkpoint there
        checkpoint = cache.checkpoint(identity, missing, k) if own else scan_args["checkpoint"]
        scanned = scan_top_k(net, dataset, missing, k, **dict(scan_args, checkpoint=checkpoint, cache=False,
                                                             restart_stale=scan_args["restart_stale"] or own))
        for layer in missing:
            found[layer] = scanned.select([layer])
            if distributed.is_main():
                cache.store(found[layer].save, cache.entry(identity, layer))
        if own:
            with contextlib.suppress(OSError):
                Path(checkpoint).unlink(missing_ok=True)  # its layers are stored
    elif from_cache:
        skipped = found[layers[0]].provenance.get("skipped") or []
        if skipped and hasattr(dataset, "note_unreadable"):
            dataset.note_unreadable(skipped)  # as a scan would
    first = found[layers[0]]
    # this run's processes; no folder: sidecars travel between machines
    provenance = dict(first.provenance, **args, **distributed.describe(), fingerprint=fingerprint,
                      weights=net.describe(), cache={"found": from_cache, "scanned": missing})
    return TopK(layers=layers, k=k, per_group=args["per_group"],
                values={layer: found[layer].values[layer] for layer in layers},
                images={layer: found[layer].images[layer] for layer in layers},
                positions={layer: found[layer].positions[layer] for layer in layers},
                map_size={layer: found[layer].map_size[layer] for layer in layers}, provenance=provenance)
