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
and the ranks' top-k states merge exactly (``TopKReducer.merge``): the result equals the one-process result,
values, images, positions and ties, on every rank. One process is the case of one rank.

The loop, its checkpoint (resumed, refused naming what changed, saved on Ctrl-C and SIGTERM) and the shares
are the one resumable pass of ``deconvnet.passes``; the top-k is its reducer (``TopKReducer``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from . import distributed
from .cache import ScanCache, files_digest, module_tree, preprocessing_values, scan_cache_dir, weights_digest
from .checks import digest_bytes, fingerprint, positive_int
from .data import Items
from .io import torch_save
from .models import Net
from .passes import Checkpoint, StaleScanWarning, Terminated, read_state, run_pass

__all__ = ["StaleScanWarning", "Terminated", "TopK", "TopKReducer", "scan_top_k"]

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
        state = read_state(path, "scan result")
        if state.get("format") != FORMAT_VERSION or "values" not in state:
            raise ValueError(f"'{path}' is not a deconvnet scan result (format {FORMAT_VERSION}). Hint: rerun the scan")
        state.pop("format")
        state.pop("next_index", None)
        state.pop("fingerprint", None)
        return cls(**state)


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


class TopKReducer:
    """The scan as a ``passes.Reducer``: each channel's running top k, under the per-group limit.

    The state holds, per layer, (C, n <= k) values, image indices and flat positions in the one total order,
    and each map's width and height. The ranks' states merge exactly: each rank's greedy top-k holds every
    entry of the global top-k that lies in its share (an entry has no more stronger entries of its group, nor
    in all, in a share than in the whole), so the greedy choice over the union of the shares, in the one
    total order, is the one-process result.
    """

    what, doing = "scan", "scanning"

    def __init__(self, channels: dict[str, int], k: int, group_of: torch.Tensor | None, per_group: int | None):
        self.channels, self.k, self.group_of, self.per_group = channels, k, group_of, per_group

    def empty(self) -> dict:
        channels = self.channels.items()
        return {
            "values": {layer: torch.full((c, 0), float("-inf"), dtype=torch.float64) for layer, c in channels},
            "images": {layer: torch.zeros((c, 0), dtype=torch.long) for layer, c in channels},
            "flat": {layer: torch.zeros((c, 0), dtype=torch.long) for layer, c in channels},
            "width": {}, "height": {},
        }

    def reduce(self, layer: str, t: torch.Tensor) -> tuple:
        return (*_candidates(t, self.per_group), tuple(t.shape[-2:]))

    def add(self, state: dict, parts: dict[str, Any], index: torch.Tensor) -> dict:
        merged = {key: dict(d) for key, d in state.items()}  # a copy: ``state`` stays whole for an interrupt
        for layer in self.channels:
            _merge(merged, layer, parts[layer], index, self.k, self.group_of, self.per_group)
        return merged

    def malformed(self, state: Any) -> str | None:
        if not isinstance(state, dict):
            return "no state or next_index"
        for key in ("values", "images", "flat"):
            part = state.get(key)
            if not isinstance(part, dict) or set(part) != set(self.channels):
                return f"'{key}' does not hold the layers {', '.join(self.channels)}"
            for layer, c in self.channels.items():
                t = part[layer]
                if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != c:
                    return f"'{key}' of {layer} is not a ({c}, n) tensor"
        if not all(isinstance(state.get(k), dict) for k in ("width", "height")):
            return "no map sizes"
        return None

    def merge(self, states: list[dict]) -> dict:
        merged: dict = {"values": {}, "images": {}, "flat": {}, "width": {}, "height": {}}
        for s in states:
            merged["width"].update(s["width"])
            merged["height"].update(s["height"])
        for layer in self.channels:
            _keep_top(merged, layer, *(torch.cat([s[key][layer] for s in states], 1) for key in ("values", "images",
                                                                                                  "flat")),
                      self.k, self.group_of, self.per_group)
        return merged


def _group_ids(items: Items) -> torch.Tensor | None:
    """(N,) int64 group id of every item (numbered by first appearance), or None: each item its own."""
    if not items.offers("group"):
        return None
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(items.group(i), len(ids)) for i in range(len(items))], dtype=torch.long)


def _rank_fingerprint(net: Net, items: Items, args: dict, batch_size: int, cache: Any) -> dict[str, str]:
    """What must be alike on every torchrun rank, in parts named for the message (``check_agree``)."""
    data = {key: args[key] for key in ("dataset", "n", "groups", "preprocessing")}
    if items.paths is not None and items.root is not None:  # same names, sizes and times, other bytes: another dataset
        folder = scan_cache_dir(cache)
        memo = folder / "files.json" if folder is not None and folder.is_dir() else None
        data["contents"] = files_digest(items.paths, items.root, memo)
    return {
        "the data (images, their contents or preprocessing)": fingerprint(data),
        "the weights": weights_digest(net.model),
        "the module tree": args["modules"],
        "the layers": ",".join(args["layers"]),
        "the options (k, per_group, batch_size, dtype)": fingerprint(
            {"k": args["k"], "per_group": args["per_group"], "batch_size": batch_size, "dtype": args["dtype"]}),
    }


def _checked_layers(net: Net, layers: Sequence[str]) -> list[str]:
    """The net's names of ``layers`` (module paths resolved), once each; each with a spatial map, or refused."""
    if not layers:
        raise ValueError("no layers to scan. Hint: e.g. layers=['conv5_3']")
    layers = list(dict.fromkeys(net.resolve(layer) for layer in layers))
    for layer in layers:
        if not net.is_spatial(layer):
            raise ValueError(f"layer '{layer}' has no spatial map to scan. Hint: use a conv, relu or pool layer")
    return layers


def _check_groups(items: Items, group_of: torch.Tensor | None, k: int, per_group: int | None) -> None:
    """Refuse a k that the per-group limit cannot fill."""
    if per_group is None:
        return
    n_groups = len(items) if group_of is None else int(group_of.max()) + 1
    if k > n_groups * per_group:
        what = "images" if n_groups == len(items) else "source photographs or files (dataset.group)"
        raise ValueError(
            f"k={k} entries per channel cannot come from {n_groups} {what} with at most {per_group} from each. "
            f"Hint: use k <= {n_groups * per_group}, or more images"
        )


def _scan_args(net: Net, items: Items, layers: list[str], k: int, per_group: int | None,
               group_of: torch.Tensor | None) -> dict[str, Any]:
    """What fixes a scan's result: its fingerprint's contents, named in a stale checkpoint's message."""
    return {
        "model": dict(net.provenance),
        # what fixes the data, not what a scan learns about it (images found undecodable change
        # n_images and n_skipped, and must not make a rerun look like another scan)
        "dataset": {k_: v for k_, v in items.describe().items() if k_ not in ("n_skipped", "skipped", "n_images")},
        "n": len(items), "layers": layers, "k": k, "per_group": per_group,
        "groups": None if group_of is None else digest_bytes(group_of.numpy().tobytes(), 16),
        "dtype": str(net.dtype),
        # surgery that keeps the state_dict, and a preprocessing of the same name with other values
        "modules": module_tree(net.model),
        "preprocessing": preprocessing_values(items.preprocessing),
    }


def scan_top_k(
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
    layers = _checked_layers(net, layers)
    k = positive_int("k", k)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every, hint="batches between checkpoints, e.g. 20")
    per_group = positive_int("per_group", per_group, allow_none=True)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    items = Items(dataset)
    group_of = _group_ids(items) if per_group is not None else None
    _check_groups(items, group_of, k, per_group)
    args = _scan_args(net, items, layers, k, per_group, group_of)
    key = fingerprint(args)
    rank, world = distributed.world()
    if world > 1:  # before any work: ranks that would scan different things must not be merged
        distributed.check_agree(_rank_fingerprint(net, items, args, batch_size, cache), "scan")
    folder = scan_cache_dir(cache)  # under torchrun rank 0's cache serves every rank (``_scan_with_cache``)
    if folder is not None and not items.offers("describe"):
        warnings.warn(f"a {type(dataset).__name__} has no describe(), so its scan cannot be found again: not cached. "
                      "Hint: deconvnet.data's collections describe themselves", stacklevel=2)
        folder = None
    if folder is not None:
        distributed.on_main(ScanCache(folder).check)  # a file, or read-only: said now, not after the scan
        return _scan_with_cache(ScanCache(folder), net, items, layers, k, args, key, dict(
            per_group=per_group, batch_size=batch_size, num_workers=num_workers, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, progress=progress, restart_stale=restart_stale))
    # this rank's checkpoint (one process: the checkpoint as given) is of its share
    ckpt_key = key if world == 1 else fingerprint(dict(args, shard=[rank, world, batch_size]))
    reducer = TopKReducer({layer: net.channels[layer] for layer in layers}, k, group_of, per_group)
    passed = run_pass(net, dataset, layers, reducer, Checkpoint(checkpoint, ckpt_key, args, checkpoint_every,
                                                                restart_stale),
                      batch_size=batch_size, num_workers=num_workers, progress=progress, note_unreadable=True)
    if len(set(passed.skipped)) == len(dataset):
        raise ValueError(f"none of the {len(dataset)} images could be decoded: there is nothing to show. "
                         "Hint: check the image files")
    provenance = dict(args, fingerprint=key,
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      weights=net.describe(), dataset_final=items.describe(), skipped=sorted(set(passed.skipped)),
                      **distributed.describe())
    return _top_k(passed.state, layers, k, per_group, provenance)


def _top_k(state: dict, layers: list[str], k: int, per_group: int | None, provenance: dict[str, Any]) -> TopK:
    """The merged state as a ``TopK``: padded to k entries, flat positions as (row, col), -1 where empty."""
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
    return TopK(
        layers=layers, k=k, per_group=per_group, values=values, images=images, positions=positions,
        map_size={layer: (state["height"].get(layer, 0), state["width"].get(layer, 0)) for layer in layers},
        provenance=provenance,
    )


def _scan_with_cache(cache: ScanCache, net: Net, items: Items, layers: list[str], k: int, args: dict,
                     key: str, scan_args: dict) -> TopK:
    """``scan_top_k`` through the cache: the layers found there are read, the others scanned and stored."""
    # what fixes the result, less the layers and k (an entry is one layer, and serves any smaller k); the
    # weights by their digest, not their file: the same weights anywhere, and a model changed in place is
    # another model
    identity = {key: v for key, v in json.loads(json.dumps(args, default=str)).items()
                if key not in ("model", "layers", "k")}
    identity["weights"] = weights_digest(net.model)
    if items.paths is not None and items.root is not None:  # the files' contents: what their stat cannot tell
        identity["contents"] = files_digest(items.paths, items.root, cache.files_memo)

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
        scanned = scan_top_k(net, items.dataset, missing, k, **dict(scan_args, checkpoint=checkpoint, cache=False,
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
        if skipped:
            items.note_unreadable(skipped)  # as a scan would
    first = found[layers[0]]
    # this run's processes; no folder: sidecars travel between machines
    provenance = dict(first.provenance, **args, **distributed.describe(), fingerprint=key,
                      weights=net.describe(), cache={"found": from_cache, "scanned": missing})
    return TopK(layers=layers, k=k, per_group=args["per_group"],
                values={layer: found[layer].values[layer] for layer in layers},
                images={layer: found[layer].images[layer] for layer in layers},
                positions={layer: found[layer].positions[layer] for layer in layers},
                map_size={layer: found[layer].map_size[layer] for layer in layers}, provenance=provenance)
