"""The atlas's projection step: every top-k entry of the pages' channels as a tile file (projection beside
patch, ``deconvnet.tiles``), the strongest as a thumbnail, and the images shown; resumable, shared between
ranks.

The entries are grouped by image, one forward per batch of images; the batches are fixed by the whole job
list, so an interrupted build resumes with the same batches and computes what an uninterrupted one did.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import distributed
from ..engine import Deconvnet, receptive_field
from ..io import atomic_path
from ..models import Net
from ..plot import scale_for_display
from ..scan import TopK
from ..tiles import Entry, Patches, project_entries, to_uint8
from .folders import layer_folder

#: image file formats of tiles, thumbnails and images: name -> (suffix, PIL format, save options)
IMAGE_FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # 4:4:4 chroma: the projections' thin coloured strokes survive (4:2:0 smears them)
    "jpeg": (".jpg", "JPEG", {"quality": 88, "subsampling": 0}),
    "png": (".png", "PNG", {"compress_level": 6}),
    "webp": (".webp", "WEBP", {"quality": 88, "method": 4}),
}
#: height in pixels of the index's thumbnails (smaller tiles are kept at their size, drawn enlarged)
THUMB_HEIGHT = 64
#: most projections per deconv pass
WALK_BATCH = 32


class Job(NamedTuple):
    """One projection: rank ``rank`` of the top k of ``layer``/``channel``."""

    layer: str
    channel: int
    rank: int
    value: float
    image: int
    row: int
    col: int

    @property
    def entry(self) -> Entry:
        """The scan's entry this job projects."""
        return Entry(self.channel, self.value, self.image, self.row, self.col)


def jobs_of(topks: dict[str, TopK], channels: dict[str, list[int]]) -> list[Job]:
    """Every top-k entry of the pages' channels, layer by layer, strongest first."""
    return [Job(layer, c, rank, v, i, r, col)
            for layer, chans in channels.items() for c in chans
            for rank, (v, i, (r, col)) in enumerate(topks[layer].entries(layer, c))]


def _encode(array: np.ndarray, image_format: str) -> bytes:
    """(H, W, 3) uint8 -> the bytes of an image file."""
    _, pil_format, options = IMAGE_FORMATS[image_format]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _pair(projection: torch.Tensor, patch: np.ndarray, scaling: str) -> np.ndarray:
    """The paper's pair as one uint8 image: the projection (display-scaled) beside the patch, a white gap."""
    proj = to_uint8(scale_for_display(projection, scaling))
    r, w = proj.shape[:2]
    gap = max(2, w // 24)
    out = np.full((r, 2 * w + gap, 3), 255, dtype=np.uint8)
    out[:, :w], out[:, w + gap :] = proj, patch
    return out


def _thumb(pair: np.ndarray) -> np.ndarray:
    if pair.shape[0] <= THUMB_HEIGHT:
        return pair
    width = round(pair.shape[1] * THUMB_HEIGHT / pair.shape[0])
    return np.asarray(Image.fromarray(pair).resize((width, THUMB_HEIGHT), Image.LANCZOS))


class Paths:
    """Where the atlas keeps each file (relative paths are what the pages link)."""

    def __init__(self, out: Path, image_format: str) -> None:
        self.out, self.ext = out, IMAGE_FORMATS[image_format][0]

    def folder(self, layer: str) -> str:
        return layer_folder(layer)

    def tile(self, layer: str, channel: int, rank: int) -> str:
        return f"{layer_folder(layer)}/tiles/{channel}_{rank}{self.ext}"

    def thumb(self, layer: str, channel: int) -> str:
        return f"{layer_folder(layer)}/thumbs/{channel}{self.ext}"

    def image(self, index: int) -> str:
        return f"images/{index}{self.ext}"

    def page(self, layer: str, channel: int) -> str:
        return f"{layer_folder(layer)}/{channel}.html"

    def outputs(self, job: Job) -> list[Path]:
        files = [self.out / self.tile(job.layer, job.channel, job.rank)]
        if job.rank == 0:
            files.append(self.out / self.thumb(job.layer, job.channel))
        return files



def _walk(net: Net, x: torch.Tensor, slot: dict[int, int], jobs: list[Job]) -> list[torch.Tensor]:
    """Project every job on its image of the batch ``x`` (``Deconvnet.project_units``: one forward).

    Returns each job's projection cropped to its receptive-field box, (C, r, r) in RGB order, model input
    scale. The work depends only on ``jobs`` (the whole batch's, done or not), so a resumed build computes
    exactly what an uninterrupted one did.
    """
    deconv = Deconvnet(net, max_batch=WALK_BATCH)
    out: list[torch.Tensor | None] = [None] * len(jobs)
    for layer in sorted({j.layer for j in jobs}, key=net.order):
        idx = [n for n, j in enumerate(jobs) if j.layer == layer]
        windows = project_entries(deconv, x, layer, [slot[jobs[n].image] for n in idx], [jobs[n].entry for n in idx])
        for n, w in zip(idx, windows, strict=True):
            out[n] = w
    return out  # type: ignore[return-value]


def _plan(paths: Paths, batches: list[tuple[list[int], list[Job]]]) -> list[tuple[int, list[int], list[int]]]:
    """Per batch with work left: (its number, the indices of its pending jobs, its images without a file)."""
    work = []
    for b, (images, batch) in enumerate(batches):
        pending = [n for n, j in enumerate(batch) if not all(p.is_file() for p in paths.outputs(j))]
        missing = [i for i in images if not (paths.out / paths.image(i)).is_file()]
        if pending or missing:
            work.append((b, pending, missing))
    return work


def _project_batch(net: Net, dataset: Any, paths: Paths, images: list[int], batch: list[Job], pending: list[int],
                   missing: list[int], rfs: dict, margin: int, scaling: str,
                   image_format: str) -> tuple[list[tuple[str, bytes]], float, float]:
    """One batch's missing files, encoded: ([(relative path, bytes)], project s, encode s)."""
    t0 = time.perf_counter()
    if pending:
        items = [dataset[i] for i in images]
        if any(x is None for x, _ in items):
            raise ValueError(f"an image of the scan can no longer be read (one of {images}). Hint: rescan")
        x = torch.stack([x for x, _ in items])
        windows = _walk(net, x, {i: b for b, i in enumerate(images)}, batch)
    t_project = time.perf_counter() - t0
    t0 = time.perf_counter()
    files: list[tuple[str, bytes]] = []
    rgb = {i: dataset.rgb(i) for i in images}
    for i in missing:
        files.append((paths.image(i), _encode(np.asarray(rgb[i]), image_format)))
    if pending:
        patches = {i: Patches(rgb[i], margin) for i in images}
        for n in pending:
            j, w = batch[n], windows[n]
            pair = _pair(w, patches[j.image].pixels(rfs[j.layer].box(j.row, j.col)), scaling)
            files.append((paths.tile(j.layer, j.channel, j.rank), _encode(pair, image_format)))
            if j.rank == 0:
                files.append((paths.thumb(j.layer, j.channel), _encode(_thumb(pair), image_format)))
    return files, t_project, time.perf_counter() - t0


def project_jobs(net: Net, dataset: Any, paths: Paths, jobs: list[Job], *, scaling: str, image_format: str,
             batch_size: int, progress: bool) -> tuple[int, float, float]:
    """Make the missing tiles, thumbnails and images; returns (projections made, project s, write s).

    Rank 0 finds the batches with work left; the ranks take them in turn (batch ``r * world + rank`` of
    round ``r``), and rank 0 writes what each round made: an interrupted build loses at most a round.
    """
    by_image: dict[int, list[Job]] = {}
    for j in jobs:
        by_image.setdefault(j.image, []).append(j)
    # the batches are fixed by the whole job list, so an interrupted run resumes with the same batches
    plan = sorted(by_image)
    batches = [(plan[s : s + batch_size], [j for i in plan[s : s + batch_size] for j in by_image[i]])
               for s in range(0, len(plan), batch_size)]
    work = distributed.on_main(_plan, paths, batches)
    rank, world = distributed.world()
    t_project, t_write = 0.0, 0.0
    rfs = {layer: receptive_field(net, layer) for layer in {j.layer for j in jobs}}
    margin = max((max(rf.size) for rf in rfs.values()), default=0)  # every box lies within one size of the image
    bar = tqdm(total=len(jobs), initial=len(jobs) - sum(len(batches[b][1]) for b, _, _ in work), desc="project",
               unit="proj", disable=not progress or rank != 0)
    try:
        for r in range(0, len(work), world):
            files: list[tuple[str, bytes]] = []
            if r + rank < len(work):
                b, pending, missing = work[r + rank]
                files, tp, te = _project_batch(net, dataset, paths, *batches[b], pending, missing, rfs, margin,
                                               scaling, image_format)
                t_project, t_write = t_project + tp, t_write + te
            t0 = time.perf_counter()
            shares = distributed.gather_to_main(files)
            if shares is not None:
                for share in shares:
                    for rel, data in share:
                        _write(paths.out / rel, data)
            t_write += time.perf_counter() - t0
            bar.update(sum(len(batches[b][1]) for b, _, _ in work[r : r + world]))
    finally:
        bar.close()
    return sum(len(pending) for _, pending, _ in work), t_project, t_write
