"""Build the atlas: scan, statistics, projections and pages, each step resumable.

Layout of the output folder (every file written atomically)::

    OUT/index.html                  the model and its provenance, the layers, a grid of every channel
    OUT/atlas.json                  the manifest: what the atlas was built from, its layers and channels
    OUT/static/atlas.css, atlas.js  the style and the small script (keyboard, jump to a channel)
    OUT/images/<i>.jpg              the dataset images shown (as fed to the model: resized, cropped)
    OUT/<layer>/<c>.html            one page per channel
    OUT/<layer>/tiles/<c>_<r>.jpg   projection beside receptive-field patch, rank r of the top k
    OUT/<layer>/thumbs/<c>.jpg      the strongest pair, small, for the index
    OUT/<layer>/channels.json       every number of the layer's pages, machine-readable
    OUT/scans/                      the scans and statistics (working data; not needed by the pages)

What a rerun does: a finished scan (``scans/topk-<layer>.pt``) and finished statistics are reused; a
scan or a statistics pass that was interrupted resumes from its checkpoint; projections whose tile files
exist are not redone; new layers (and new channels) are added to the atlas; the pages are rendered anew.

Under torch.distributed (``torchrun ... -m deconvnet atlas``, or a script's own process group) the scan,
the statistics and the projections are shared between the ranks (``deconvnet.distributed``); rank 0
alone reads and writes the folder: it decides what is missing, receives the other ranks' encoded tiles
and writes every file, so the atlas is the one a single process builds, and the machines need not share
a disk (each rank keeps its scan checkpoints in its own ``OUT/scans``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import distributed
from ..data import Items
from ..engine import Deconvnet, receptive_field
from ..figure2 import PATCH_PAD, SELECTIONS, select_features
from ..io import atomic_path, write_json
from ..models import Net
from ..plot import DEFAULT_SCALING, SCALINGS, scale_for_display
from ..scan import TopK, scan_top_k
from .folders import layer_folder
from .stats import ChannelStats, channel_stats

ATLAS_FORMAT = 1
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


@dataclass
class Atlas:
    """What ``build_atlas`` made.

    Attributes:
        out: the atlas folder (open ``out / "index.html"``).
        layers: its layers (all of them, also those of earlier runs), in network order.
        channels: layer -> the channels that have a page.
        timings: seconds per step of this run: ``scan``, ``stats``, ``project`` (forwards and deconv
            walks), ``write`` (encoding and writing images, rendering and writing pages).
        projected: projections computed by this run (0 when everything was already there).
        site_bytes, site_files: size of the website (everything but ``scans/``).
        scan_bytes: size of ``scans/`` (scans, statistics and their checkpoints).
    """

    out: Path
    layers: list[str]
    channels: dict[str, list[int]]
    timings: dict[str, float] = field(default_factory=dict)
    projected: int = 0
    site_bytes: int = 0
    site_files: int = 0
    scan_bytes: int = 0


class _Job(NamedTuple):
    """One projection: rank ``rank`` of the top k of ``layer``/``channel``."""

    layer: str
    channel: int
    rank: int
    value: float
    image: int
    row: int
    col: int


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def check_layers(net: Net, layers: Sequence[str]) -> list[str]:
    """Validate layer names (paper names with a spatial map); duplicates dropped, order kept.

    Raises:
        ValueError: an unknown layer (listing the valid ones), one without a spatial map, or none at all.
    """
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("no layers given. Hint: e.g. conv3_3,conv4_3,conv5_3")
    for layer in layers:
        net.check_layer(layer)
        if not net.is_spatial(layer):
            raise ValueError(f"layer '{layer}' has no spatial map to show. Hint: use a layer that outputs maps "
                             "(`deconvnet layers --arch ...` lists them)")
    return layers


def check_out_folder(out: Path) -> None:
    """Make sure ``out`` can hold an atlas: a folder we can write, empty or an atlas already."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"the atlas folder '{out}' is a file. Hint: give a folder, e.g. --out atlas/")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write the atlas to '{out}' ({err.strerror or type(err).__name__}). "
                         "Hint: give a folder you can write, e.g. --out atlas/") from None
    if any(out.iterdir()) and not (out / "atlas.json").is_file():
        raise ValueError(f"'{out}' is not empty and holds no atlas (no atlas.json): the atlas will not write "
                         "over other files. Hint: give a new or empty folder")


def _model_identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """The model's provenance less where its weights file lies (that differs between machines and
    installs; the sha256 pins the weights)."""
    return {k: v for k, v in provenance.items() if k != "file"}


def _identity(net: Net, dataset: Any, k: int, per_group: int | None, scaling: str, image_format: str,
              bins: int) -> dict[str, Any]:
    """What fixes the atlas's content: a rerun with another identity would mix two atlases."""
    describe = Items(dataset).describe
    return _jsonable({
        "model": _model_identity(net.provenance),
        # what fixes the data, not what a scan learns about it (as deconvnet.scan does)
        "dataset": {k_: v for k_, v in describe().items() if k_ not in ("n_skipped", "skipped", "n_images")},
        "n": len(dataset), "k": k, "per_group": per_group, "scaling": scaling, "image_format": image_format,
        "bins": bins, "dtype": str(net.dtype),
    })


def _open_manifest(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / "atlas.json"
    if not path.is_file():
        return {"format": ATLAS_FORMAT, "identity": identity, "layers": [], "channels": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read '{path}' ({type(err).__name__}). Hint: delete the folder and rebuild") from None
    if manifest.get("format") != ATLAS_FORMAT:
        raise ValueError(f"'{path}' is not an atlas of format {ATLAS_FORMAT}. Hint: give a new folder")
    old = manifest.get("identity", {})
    if old != identity:
        diff = sorted(key for key in set(old) | set(identity) if old.get(key) != identity.get(key))
        raise ValueError(f"the atlas in '{out}' was built with another {', '.join(diff)}; adding to it would mix "
                         "two atlases. Hint: give another --out, or the same options as before")
    return manifest


def _layer_topk(topk: TopK, layer: str) -> TopK:
    return TopK(layers=[layer], k=topk.k, per_group=topk.per_group, values={layer: topk.values[layer]},
                images={layer: topk.images[layer]}, positions={layer: topk.positions[layer]},
                map_size={layer: topk.map_size[layer]}, provenance=topk.provenance)


def _check_topk(topk: TopK, net: Net, dataset: Any, k: int, per_group: int | None) -> None:
    """A scan given by the caller must be of this model, dataset, k and per-group limit."""
    prov = topk.provenance
    problems = []
    if _jsonable(_model_identity(prov.get("model") or {})) != _jsonable(_model_identity(net.provenance)):
        problems.append("model")
    if prov.get("n") != len(dataset):
        problems.append(f"dataset size ({prov.get('n')} images, not {len(dataset)})")
    if topk.k != k:
        problems.append(f"k ({topk.k}, not {k})")
    if topk.per_group != per_group:
        problems.append(f"per_group ({topk.per_group}, not {per_group})")
    if problems:
        raise ValueError(f"the scan given was made with another {', '.join(problems)}. Hint: leave topk out to scan "
                         "anew")


def _encode(array: np.ndarray, image_format: str) -> bytes:
    """(H, W, 3) uint8 -> the bytes of an image file."""
    _, pil_format, options = IMAGE_FORMATS[image_format]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def _pair(projection: torch.Tensor, patch: np.ndarray, scaling: str) -> np.ndarray:
    """The paper's pair as one uint8 image: the projection (display-scaled) beside the patch, a white gap."""
    proj = _to_uint8(scale_for_display(projection, scaling))
    r, w = proj.shape[:2]
    gap = max(2, w // 24)
    out = np.full((r, 2 * w + gap, 3), 255, dtype=np.uint8)
    out[:, :w], out[:, w + gap :] = proj, patch
    return out


class _Patches:
    """Receptive-field patches of one image: padded once with ``PATCH_PAD`` gray, then sliced (cheap)."""

    def __init__(self, rgb: Image.Image, margin: int) -> None:
        a = np.asarray(rgb.convert("RGB"))
        self.margin = margin
        self.padded = np.full((a.shape[0] + 2 * margin, a.shape[1] + 2 * margin, 3), _to_uint8(np.float64(PATCH_PAD)),
                              dtype=np.uint8)
        self.padded[margin : margin + a.shape[0], margin : margin + a.shape[1]] = a

    def crop(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The (h, w, 3) patch of an unclipped box ``(top, left, bottom, right)``, as ``plot.crop_box`` cuts it."""
        top, left, bottom, right = (v + self.margin for v in box)
        if min(top, left) < 0 or bottom > self.padded.shape[0] or right > self.padded.shape[1]:
            raise ValueError(f"box {box} reaches beyond the margin of {self.margin} px")
        return self.padded[top:bottom, left:right]


def _thumb(pair: np.ndarray) -> np.ndarray:
    if pair.shape[0] <= THUMB_HEIGHT:
        return pair
    width = round(pair.shape[1] * THUMB_HEIGHT / pair.shape[0])
    return np.asarray(Image.fromarray(pair).resize((width, THUMB_HEIGHT), Image.LANCZOS))


class _Paths:
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

    def outputs(self, job: _Job) -> list[Path]:
        files = [self.out / self.tile(job.layer, job.channel, job.rank)]
        if job.rank == 0:
            files.append(self.out / self.thumb(job.layer, job.channel))
        return files


def _walk(net: Net, x: torch.Tensor, slot: dict[int, int], jobs: list[_Job]) -> list[torch.Tensor]:
    """Project every job on its image of the batch ``x`` (``Deconvnet.project_units``: one forward).

    Returns each job's projection cropped to its receptive-field box, (C, r, r) in RGB order, model input
    scale. The work depends only on ``jobs`` (the whole batch's, done or not), so a resumed build computes
    exactly what an uninterrupted one did.
    """
    deconv = Deconvnet(net, max_batch=WALK_BATCH)
    layers = sorted({j.layer for j in jobs}, key=net.order)
    out: list[torch.Tensor | None] = [None] * len(jobs)
    for layer in layers:
        idx = [n for n, j in enumerate(jobs) if j.layer == layer]
        image = torch.tensor([slot[jobs[n].image] for n in idx])
        unit = torch.tensor([[jobs[n].row, jobs[n].col] for n in idx])
        channel = torch.tensor([jobs[n].channel for n in idx])
        windows, _, value = deconv.project_units(x, layer, image, channel, unit)
        for n, v in zip(idx, value.tolist(), strict=True):
            j = jobs[n]
            if not np.isclose(v, j.value, rtol=1e-3, atol=1e-5):
                raise ValueError(
                    f"image {j.image} gives activation {v:.6g} at {layer} channel {j.channel} ({j.row}, {j.col}), "
                    f"but the scan recorded {j.value:.6g}: was the scan made with this model and dataset?")
        rf = receptive_field(net, layer)
        if tuple(windows.shape[-2:]) != rf.size:
            raise RuntimeError(f"{layer}: projection window {tuple(windows.shape[-2:])} is not the receptive field "
                               f"{rf.size}")
        rgb = net.preprocessing.to_rgb_order(windows).detach().cpu()
        for n, w in zip(idx, rgb, strict=True):
            out[n] = w
    return out  # type: ignore[return-value]


def _plan(paths: _Paths, batches: list[tuple[list[int], list[_Job]]]) -> list[tuple[int, list[int], list[int]]]:
    """Per batch with work left: (its number, the indices of its pending jobs, its images without a file)."""
    work = []
    for b, (images, batch) in enumerate(batches):
        pending = [n for n, j in enumerate(batch) if not all(p.is_file() for p in paths.outputs(j))]
        missing = [i for i in images if not (paths.out / paths.image(i)).is_file()]
        if pending or missing:
            work.append((b, pending, missing))
    return work


def _project_batch(net: Net, dataset: Any, paths: _Paths, images: list[int], batch: list[_Job], pending: list[int],
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
        patches = {i: _Patches(rgb[i], margin) for i in images}
        for n in pending:
            j, w = batch[n], windows[n]
            pair = _pair(w, patches[j.image].crop(rfs[j.layer].box(j.row, j.col)), scaling)
            files.append((paths.tile(j.layer, j.channel, j.rank), _encode(pair, image_format)))
            if j.rank == 0:
                files.append((paths.thumb(j.layer, j.channel), _encode(_thumb(pair), image_format)))
    return files, t_project, time.perf_counter() - t0


def _project(net: Net, dataset: Any, paths: _Paths, jobs: list[_Job], *, scaling: str, image_format: str,
             batch_size: int, progress: bool) -> tuple[int, float, float]:
    """Make the missing tiles, thumbnails and images; returns (projections made, project s, write s).

    Rank 0 finds the batches with work left; the ranks take them in turn (batch ``r * world + rank`` of
    round ``r``), and rank 0 writes what each round made: an interrupted build loses at most a round.
    """
    by_image: dict[int, list[_Job]] = {}
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


def _start(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: the folder can hold this atlas; its manifest (a new one for a new atlas)."""
    check_out_folder(out)
    return _open_manifest(out, identity)


def _missing(scans: Path, kind: str, layers: list[str]) -> list[str]:
    """Rank 0: the layers without a finished ``kind`` file (``topk``, ``stats``)."""
    return [layer for layer in layers if not (scans / f"{kind}-{layer_folder(layer)}.pt").is_file()]


def _sizes(out: Path, scans: Path) -> tuple[int, int, int]:
    site_bytes, site_files = _folder_size(out, exclude=scans)
    return site_bytes, site_files, _folder_size(scans)[0] if scans.is_dir() else 0


def _folder_size(folder: Path, exclude: Path | None = None) -> tuple[int, int]:
    size = files = 0
    for root, dirs, names in os.walk(folder):
        if exclude is not None and Path(root) == exclude.parent:
            dirs[:] = [d for d in dirs if Path(root) / d != exclude]
        for n in names:
            size += (Path(root) / n).stat().st_size
            files += 1
    return size, files



def _check_arguments(dataset: Any, *, features: Any, k: int, select: str, scaling: str, image_format: str,
                     batch_size: int, bins: int) -> None:
    """Refuse, before any work, the arguments of ``build_atlas`` that cannot be met."""
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format '{image_format}'. Hint: one of {', '.join(IMAGE_FORMATS)}")
    if select not in SELECTIONS:
        raise ValueError(f"feature selection '{select}' is not understood. Hint: one of {', '.join(SELECTIONS)}")
    for name, value in (("k", k), ("batch_size", batch_size), ("bins", bins)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(features, int) and not isinstance(features, bool) and features < 1:
        raise ValueError(f"features must be at least 1 (or None for every channel), got {features}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")


def _page_channels(net: Net, topk: TopK, layer: str, earlier: list[int], asked: bool, features: Any, select: str,
                   seed: int) -> list[int]:
    """The channels of one layer that get pages: those of earlier runs, and those asked for now (``asked``: the
    layer is named in this run; a layer without pages yet always gets them)."""
    have = set(earlier)
    if asked or not have:
        c = net.channels[layer]
        if features is None:
            want = range(c)
        elif isinstance(features, int):
            want = select_features(topk, layer, features, select, seed)
        else:
            want = [int(v) for v in features]
            bad = [v for v in want if not 0 <= v < c]
            if bad:
                raise ValueError(f"channel(s) {bad} out of range for layer '{layer}' ({c} channels)")
        have |= set(want)
    return sorted(have)


def build_atlas(
    net: Net,
    dataset: Any,
    layers: Sequence[str],
    out: str | os.PathLike,
    *,
    k: int = 9,
    features: None | int | Sequence[int] = None,
    select: str = "random",
    seed: int = 0,
    scaling: str = DEFAULT_SCALING,
    image_format: str = "jpeg",
    per_group: int | None = 1,
    bins: int = 32,
    batch_size: int = 16,
    num_workers: int = 0,
    topk: TopK | None = None,
    dataset_name: str | None = None,
    progress: bool = True,
    synthesize: bool | dict[str, Any] = False,
    cache: bool | str | os.PathLike = True,
) -> Atlas:
    """Build (or extend, or finish) a static website of every channel's top-k projections.

    Args:
        net: the model.
        dataset: a collection from ``deconvnet.data`` (items ``(x, i)``, with ``rgb``; ``label`` and
            ``group`` are used where present).
        layers: paper layer names with spatial maps. Layers of earlier runs into ``out`` stay in it.
        out: the atlas folder: new, empty, or an atlas built with the same model, data and options.
        k: top activations per channel (the paper shows 9).
        features: None: every channel; N: N channels chosen as ``figure2.select_features`` does
            (``select``, ``seed``); or a list of channel numbers. A rerun adds channels, never removes.
        scaling: display scaling of the projections (``deconvnet.plot``).
        image_format: ``"jpeg"`` (default), ``"png"`` (lossless, larger) or ``"webp"``.
        per_group: most entries per channel from one group (the scan's; default 1: k different sources).
        bins: histogram bins of the channel pages.
        batch_size, num_workers: images per forward, ``DataLoader`` workers.
        topk: a finished scan to use for the layers it holds (must be of this model, dataset, k).
        dataset_name: how the pages name the data (default: from ``dataset.describe()``).
        progress: tqdm progress bars for every step.
        synthesize: True (or settings such as ``{"steps": 256}``): each channel page also shows the image
            synthesised to excite the channel most (``deconvnet.synthesis``; ``atlas.synthesis``), kept in
            ``OUT/<layer>/synth/`` so that a rebuild does not redo it. Rank 0 makes them.
        cache: the shared scan cache (``scan_top_k``'s ``cache``): True, False (``--no-cache``), or a folder.

    Returns:
        An ``Atlas``: the folder, its layers and channels, timings and sizes.

    Raises:
        ValueError: a bad layer, option or folder (one line naming it, with a hint).
    """
    from .render import render_site

    layers = check_layers(net, layers)
    _check_arguments(dataset, features=features, k=k, select=select, scaling=scaling, image_format=image_format,
                     batch_size=batch_size, bins=bins)
    out = Path(out)
    identity = _identity(net, dataset, k, per_group, scaling, image_format, bins)
    main = distributed.is_main()  # rank 0 reads and writes the folder; one process is rank 0
    manifest = distributed.on_main(_start, out, identity)
    all_layers = sorted(dict.fromkeys([*manifest["layers"], *layers]), key=net.order)
    for layer in all_layers:
        if layer not in net.layers:  # only a hand-edited manifest gets here: the identity pins the model
            raise ValueError(f"the atlas in '{out}' lists layer '{layer}', which {net.arch} lacks")
    Deconvnet(net)  # refuses, before any work, a model the engine has no rule for
    manifest["layers"] = all_layers
    manifest["built_by"] = distributed.describe()  # how many processes, which backend (this run)
    if main:
        write_json(manifest, out / "atlas.json")  # first: a folder being built is recognisably an atlas
    timings = {"scan": 0.0, "stats": 0.0, "project": 0.0, "write": 0.0}
    scans = out / "scans"

    # 1. the scan: one pass for every layer that has no finished scan yet
    t = time.perf_counter()
    missing = distributed.on_main(_missing, scans, "topk", all_layers)
    if topk is not None:
        given = [layer for layer in missing if layer in topk.layers]
        if given:
            _check_topk(topk, net, dataset, k, per_group)
            for layer in given if main else ():
                _layer_topk(topk, layer).save(scans / f"topk-{layer_folder(layer)}.pt")
            missing = [layer for layer in missing if layer not in given]
    if missing:
        result = scan_top_k(net, dataset, missing, k=k, per_group=per_group, batch_size=batch_size,
                            num_workers=num_workers, checkpoint=scans / f"scan-{_hash([identity, missing])}.pt",
                            progress=progress, cache=cache)  # the shared scan cache: the figure script's scan serves
        for layer in missing if main else ():
            _layer_topk(result, layer).save(scans / f"topk-{layer_folder(layer)}.pt")
    topks = distributed.on_main(
        lambda: {layer: TopK.load(scans / f"topk-{layer_folder(layer)}.pt") for layer in all_layers})
    timings["scan"] = time.perf_counter() - t

    # 2. activation statistics (histograms): one more pass, for the layers without them
    t = time.perf_counter()
    missing = distributed.on_main(_missing, scans, "stats", all_layers)
    if missing:
        tops = {layer: topks[layer].values[layer][:, 0] for layer in missing}
        result = channel_stats(net, dataset, tops, bins=bins, batch_size=batch_size, num_workers=num_workers,
                               checkpoint=scans / f"stats-{_hash([identity, missing])}.pt", progress=progress)
        for layer in missing if main else ():
            result[layer].save(scans / f"stats-{layer_folder(layer)}.pt")
    stats = distributed.on_main(
        lambda: {layer: ChannelStats.load(scans / f"stats-{layer_folder(layer)}.pt") for layer in all_layers})
    timings["stats"] = time.perf_counter() - t

    # 3. which channels get pages: those of earlier runs, and those asked for now
    channels = {layer: _page_channels(net, topks[layer], layer, manifest["channels"].get(layer, []),
                                      layer in layers, features, select, seed)
                for layer in all_layers}
    manifest["channels"] = channels
    if main:
        write_json(manifest, out / "atlas.json")

    # 4. projections: every top-k entry of those channels, grouped by image (one forward per image batch)
    paths = _Paths(out, image_format)
    jobs = [_Job(layer, c, rank, v, i, r, col)
            for layer in all_layers for c in channels[layer]
            for rank, (v, i, (r, col)) in enumerate(topks[layer].entries(layer, c))]
    made, t_project, t_write = _project(net, dataset, paths, jobs, scaling=scaling, image_format=image_format,
                                        batch_size=batch_size, progress=progress)
    timings["project"] = t_project

    # 4b. synthesised images (atlas --synthesize), kept per channel like the tiles
    synthesis = None
    if synthesize and main:
        from .synthesis import synthesize_atlas

        t = time.perf_counter()
        synthesis, _ = synthesize_atlas(net, out, channels, synthesize if isinstance(synthesize, dict) else None,
                                        progress=progress)
        timings["synthesize"] = time.perf_counter() - t

    # 5. pages: rendered anew every run (cheap), so that they list every layer and channel
    t = time.perf_counter()
    if main:
        render_site(out, net, dataset, topks, stats, channels, paths, identity=identity,
                    dataset_name=dataset_name, scaling=scaling, progress=progress, processes=distributed.describe(),
                    synthesis=synthesis)
    timings["write"] = t_write + time.perf_counter() - t
    site_bytes, site_files, scan_bytes = distributed.on_main(_sizes, out, scans)
    return Atlas(out=out, layers=all_layers, channels=channels, timings=timings, projected=made,
                 site_bytes=site_bytes, site_files=site_files, scan_bytes=scan_bytes)
