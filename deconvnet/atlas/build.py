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

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..checks import fingerprint, positive_int
from ..data import Items
from ..engine import Deconvnet
from ..figure2 import SELECTIONS, select_features
from ..io import write_json
from ..models import Net
from ..plot import DEFAULT_SCALING, SCALINGS
from ..scan import TopK, scan_top_k
from .folders import layer_folder
from .project import IMAGE_FORMATS, Paths, jobs_of, project_jobs
from .render import render_site
from .stats import ChannelStats, channel_stats

__all__ = ["IMAGE_FORMATS", "Atlas", "build_atlas", "check_layers", "check_out_folder", "layer_folder"]

ATLAS_FORMAT = 1


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


def _check_arguments(net: Net, dataset: Any, layers: Sequence[str], *, features: Any, k: int, select: str,
                     scaling: str, image_format: str, batch_size: int, bins: int) -> list[str]:
    """Refuse, before any work, the arguments of ``build_atlas`` that cannot be met; the layers (``check_layers``)."""
    layers = check_layers(net, layers)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format '{image_format}'. Hint: one of {', '.join(IMAGE_FORMATS)}")
    if select not in SELECTIONS:
        raise ValueError(f"feature selection '{select}' is not understood. Hint: one of {', '.join(SELECTIONS)}")
    for name, value in (("k", k), ("batch_size", batch_size), ("bins", bins)):
        positive_int(name, value)
    if isinstance(features, int) and not isinstance(features, bool):
        positive_int("features", features, hint="None for every channel, or a list of channels")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    return layers


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


def _begin(net: Net, out: Path, identity: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """The manifest of this run (rank 0 checks the folder and writes it first, so that a folder being built is
    recognisably an atlas): the layers of earlier runs and of this one, in network order."""
    manifest = distributed.on_main(_start, out, identity)
    all_layers = sorted(dict.fromkeys([*manifest["layers"], *layers]), key=net.order)
    for layer in all_layers:
        if layer not in net.layers:  # only a hand-edited manifest gets here: the identity pins the model
            raise ValueError(f"the atlas in '{out}' lists layer '{layer}', which {net.arch} lacks")
    Deconvnet(net)  # refuses, before any work, a model the engine has no rule for
    manifest["layers"] = all_layers
    manifest["built_by"] = distributed.describe()  # how many processes, which backend (this run)
    if distributed.is_main():
        write_json(manifest, out / "atlas.json")
    return manifest


def _scan(net: Net, dataset: Any, scans: Path, layers: list[str], identity: dict[str, Any], topk: TopK | None, *,
          k: int, per_group: int | None, cache: Any, batch_size: int, num_workers: int,
          progress: bool) -> dict[str, TopK]:
    """Every layer's finished scan: kept from an earlier run, taken from ``topk``, or scanned (one pass for all
    the layers still missing, resumable from its checkpoint)."""
    main = distributed.is_main()
    missing = distributed.on_main(_missing, scans, "topk", layers)
    if topk is not None:
        given = [layer for layer in missing if layer in topk.layers]
        if given:
            _check_topk(topk, net, dataset, k, per_group)
            for layer in given if main else ():
                _layer_topk(topk, layer).save(scans / f"topk-{layer_folder(layer)}.pt")
            missing = [layer for layer in missing if layer not in given]
    if missing:
        checkpoint = scans / f"scan-{fingerprint([identity, missing], 12)}.pt"
        result = scan_top_k(net, dataset, missing, k=k, per_group=per_group, batch_size=batch_size,
                            num_workers=num_workers, checkpoint=checkpoint,
                            progress=progress, cache=cache)  # the shared scan cache: the figure script's scan serves
        for layer in missing if main else ():
            _layer_topk(result, layer).save(scans / f"topk-{layer_folder(layer)}.pt")
    return distributed.on_main(
        lambda: {layer: TopK.load(scans / f"topk-{layer_folder(layer)}.pt") for layer in layers})


def _statistics(net: Net, dataset: Any, scans: Path, layers: list[str], identity: dict[str, Any],
                topks: dict[str, TopK], *, bins: int, batch_size: int, num_workers: int,
                progress: bool) -> dict[str, ChannelStats]:
    """Every layer's activation statistics (histograms): kept from an earlier run, or one more pass for the
    layers without them."""
    missing = distributed.on_main(_missing, scans, "stats", layers)
    if missing:
        tops = {layer: topks[layer].values[layer][:, 0] for layer in missing}
        result = channel_stats(net, dataset, tops, bins=bins, batch_size=batch_size, num_workers=num_workers,
                               checkpoint=scans / f"stats-{fingerprint([identity, missing], 12)}.pt", progress=progress)
        for layer in missing if distributed.is_main() else ():
            result[layer].save(scans / f"stats-{layer_folder(layer)}.pt")
    return distributed.on_main(
        lambda: {layer: ChannelStats.load(scans / f"stats-{layer_folder(layer)}.pt") for layer in layers})


def _synthesis(net: Net, out: Path, channels: dict[str, list[int]], synthesize: bool | dict[str, Any],
               timings: dict[str, float], progress: bool) -> dict[str, dict[int, dict[str, Any]]]:
    """Rank 0: each page's synthesised image (``atlas.synthesis``), kept per channel like the tiles."""
    from .synthesis import synthesize_atlas

    t = time.perf_counter()
    synthesis, _ = synthesize_atlas(net, out, channels, synthesize if isinstance(synthesize, dict) else None,
                                    progress=progress)
    timings["synthesize"] = time.perf_counter() - t
    return synthesis


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
    layers = _check_arguments(net, dataset, layers, features=features, k=k, select=select, scaling=scaling,
                              image_format=image_format, batch_size=batch_size, bins=bins)
    out = Path(out)
    identity = _identity(net, dataset, k, per_group, scaling, image_format, bins)
    main = distributed.is_main()  # rank 0 reads and writes the folder; one process is rank 0
    manifest = _begin(net, out, identity, layers)
    all_layers, scans = manifest["layers"], out / "scans"
    timings = {"scan": 0.0, "stats": 0.0, "project": 0.0, "write": 0.0}
    passes = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)

    # 1. the scan: one pass for every layer that has no finished scan yet
    t = time.perf_counter()
    topks = _scan(net, dataset, scans, all_layers, identity, topk, k=k, per_group=per_group, cache=cache, **passes)
    timings["scan"] = time.perf_counter() - t

    # 2. activation statistics (histograms): one more pass, for the layers without them
    t = time.perf_counter()
    stats = _statistics(net, dataset, scans, all_layers, identity, topks, bins=bins, **passes)
    timings["stats"] = time.perf_counter() - t

    # 3. which channels get pages: those of earlier runs, and those asked for now
    channels = {layer: _page_channels(net, topks[layer], layer, manifest["channels"].get(layer, []),
                                      layer in layers, features, select, seed)
                for layer in all_layers}
    manifest["channels"] = channels
    if main:
        write_json(manifest, out / "atlas.json")

    # 4. projections: every top-k entry of those channels, grouped by image (one forward per image batch)
    paths = Paths(out, image_format)
    made, t_project, t_write = project_jobs(net, dataset, paths, jobs_of(topks, channels), scaling=scaling,
                                            image_format=image_format, batch_size=batch_size, progress=progress)
    timings["project"] = t_project

    # 4b. synthesised images (atlas --synthesize), kept per channel like the tiles
    synthesis = _synthesis(net, out, channels, synthesize, timings, progress) if synthesize and main else None

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
