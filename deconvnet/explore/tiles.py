"""The top-k tiles of a channel from a scan (``TopK``): computed from the scan's entries, kept per
(layer, channel), and, in the app, computed on a background thread after the main view is drawn.

Each tile image's recorded forward is kept (``Deconvnet(net, keep=...)``, by the image's tensor), so
another channel whose tiles share images runs no forward for them; a tile image's units of one channel go
down in one ``Deconvnet.project_units`` call (the receptive-field-cropped walk for chains).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from ..data import Items
from ..engine import Deconvnet
from ..models import Net
from ..scan import TopK
from ..tiles import FeatureTiles, Patches, ScanMismatch, entries_of, project_entries

Result = FeatureTiles | str  # the tiles, or why there are none


class TileSource:
    """Computes the tiles of one channel of a scan over its dataset.

    Args:
        net: the model the scan was made with.
        dataset: the scanned collection (``deconvnet.data``); None: tiles cannot be made (a note says why).
        topk: the scan.
        keep: how many tile images' recorded forwards to keep (a graph keeps its autograd graph: fewer).
    """

    def __init__(self, net: Net, dataset: Any, topk: TopK, *, keep: int | None = None) -> None:
        self.net, self.dataset, self.topk = net, dataset, topk
        self.keep = keep if keep is not None else (32 if net.can_show_stages else 8)
        self.deconv = Deconvnet(net, keep=self.keep)
        self._inputs: OrderedDict[int, torch.Tensor] = OrderedDict()

    def note(self, layer: str, channel: int) -> str | None:
        """Why ``(layer, channel)`` has no tiles, or None when it has."""
        if layer not in self.topk.layers:
            return f"The scan has no {layer} (it has {', '.join(self.topk.layers)})."
        if self.dataset is None:
            return "The top-9 tiles need the scanned dataset: explore(net, dataset, topk)."
        if not self.topk.entries(layer, channel):
            return f"The scan kept no activation of {layer} channel {channel}."
        return None

    def _input(self, i: int) -> torch.Tensor:
        """Dataset item ``i`` as a (1, 3, H, W) model input, the same tensor each time (``keep`` keys on it)."""
        if i not in self._inputs:
            x = self.dataset[i][0]
            if x is None:
                raise ValueError(f"dataset item {i} cannot be read")
            self._inputs[i] = x.unsqueeze(0).to(device=self.net.device, dtype=self.net.dtype)
        self._inputs.move_to_end(i)
        while len(self._inputs) > max(self.keep, 1):
            self._inputs.popitem(last=False)
        return self._inputs[i]

    def compute(self, layer: str, channel: int, stop: Callable[[], bool] = lambda: False,
                pause: Callable[[], None] = lambda: None) -> Result | None:
        """The tiles of ``(layer, channel)`` (``FeatureTiles``, from ``deconvnet.tiles`` as Figure 2's), or
        a sentence saying why there are none; None when ``stop()`` became true on the way. Between images,
        ``pause()`` is called first (the app's worker waits there while the main view is computed)."""
        note = self.note(layer, channel)
        if note is not None:
            return note
        entries = entries_of(self.topk, layer, channel)
        rf = self.deconv.receptive_field(layer)
        by_image: dict[int, list[int]] = {}
        for k, e in enumerate(entries):
            by_image.setdefault(e.image, []).append(k)
        n = len(entries)
        projections: list[torch.Tensor | None] = [None] * n
        patches: list[torch.Tensor | None] = [None] * n
        for i, ks in by_image.items():
            pause()
            if stop():
                return None
            try:
                windows = project_entries(self.deconv, self._input(i), layer, [0] * len(ks), [entries[k] for k in ks])
            except ScanMismatch as err:  # the tiles' note
                return str(err)
            image = Patches(self.dataset.rgb(i), max(rf.size))
            for j, k in enumerate(ks):
                projections[k] = windows[j]
                patches[k] = image.crop(rf.box(entries[k].row, entries[k].col))
        items = Items(self.dataset)
        return FeatureTiles(
            layer=layer, channel=channel,
            values=torch.tensor([e.value for e in entries]),
            images=torch.tensor([e.image for e in entries]),
            positions=torch.tensor([[e.row, e.col] for e in entries]),
            boxes=[rf.box(e.row, e.col) for e in entries],
            projections=torch.stack(projections),  # type: ignore[arg-type]
            patches=torch.stack(patches),  # type: ignore[arg-type]
            labels=[items.label(e.image) for e in entries],
            sources=[items.source(e.image) for e in entries],
        )


class TileWorker:
    """Tiles computed one request at a time on a background thread, kept per (layer, channel).

    A request made while another is computing supersedes it: the older one stops at its next image (what
    its images recorded stays kept). ``done(key, result)`` is called on the worker thread when a request
    finishes; ``wait`` blocks until one has.
    """

    def __init__(self, source: TileSource, run: Callable[[Callable[[], Any]], Any] = lambda f: f()) -> None:
        self.source, self._run = source, run
        self.cache: dict[tuple[str, int], Result] = {}
        self.seconds: dict[tuple[str, int], float] = {}
        self._wanted: tuple[str, int] | None = None
        self._futures: dict[tuple[str, int], Future] = {}
        self._lock = threading.Lock()
        self._computing = threading.Lock()  # one computation at a time: the source's kept forwards are not shared
        self._executor: ThreadPoolExecutor | None = None
        self.idle = threading.Event()  # cleared while the main view is computed: the worker waits between images
        self.idle.set()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """The main view is being computed inside: the worker starts no image meanwhile (the two would share
        the cores and the model's lock; the view comes first)."""
        self.idle.clear()
        try:
            yield
        finally:
            self.idle.set()

    def cached(self, key: tuple[str, int]) -> Result | None:
        return self.cache.get(key)

    def compute(self, key: tuple[str, int]) -> Result:
        """The tiles of ``key`` now, on this thread (kept)."""
        if key not in self.cache:
            self._job(key, None, stoppable=False)
        return self.cache[key]

    def request(self, key: tuple[str, int], done: Callable[[tuple[str, int], Result], None]) -> Future:
        """Compute the tiles of ``key`` on the worker thread (the newest request wins)."""
        with self._lock:
            self._wanted = key
            future = self._futures.get(key)
            if future is not None and not future.done():
                return future
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deconvnet-tiles")
            future = self._executor.submit(self._job, key, done, True)
            self._futures[key] = future
            return future

    def wait(self, key: tuple[str, int], timeout: float | None = None) -> Result | None:
        """The tiles of ``key`` once its request finished (None if it was superseded or never made)."""
        future = self._futures.get(key)
        if future is not None:
            future.result(timeout)
        return self.cache.get(key)

    def _job(self, key: tuple[str, int], done: Callable | None, stoppable: bool) -> None:
        if key in self.cache:
            result: Result | None = self.cache[key]
        else:
            if stoppable and self._wanted != key:
                return
            t = time.perf_counter()
            try:
                with self._computing:
                    if key in self.cache:  # made meanwhile (a wait on this thread's work, or compute())
                        result = self.cache[key]
                    else:
                        result = self._run(lambda: self.source.compute(
                            *key, stop=lambda: stoppable and self._wanted != key,
                            pause=self.idle.wait if stoppable else lambda: None))
            except (ValueError, RuntimeError, OSError) as err:  # shown as the tiles' note: the thread has no caller
                result = f"The tiles of {key[0]} channel {key[1]} could not be made: {err}"
            if result is None:  # superseded on the way
                return
            self.cache[key] = result
            self.seconds[key] = time.perf_counter() - t
        if done is not None:
            done(key, result)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
