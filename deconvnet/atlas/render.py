"""The atlas's pages: Jinja2 templates (package data in ``templates/``) filled from the scan and statistics.

Every number a page shows is also in a ``data-`` attribute at full precision (``repr`` of the float),
so that a test, or a reader's script, can check the page against the scan.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image
from tqdm.auto import tqdm

from .._version import __version__
from ..data import Items
from ..engine import receptive_field
from ..io import atomic_path, write_json
from ..models import Net
from ..plot import describe_scaling
from ..scan import TopK
from .stats import ChannelStats

#: smallest on-screen side of a tile: smaller receptive fields are drawn enlarged by an integer factor
MIN_TILE_PX = 112
#: largest on-screen side of a tile
MAX_TILE_PX = 176
#: histogram drawing area (SVG user units)
HIST_W, HIST_H, HIST_LEFT, HIST_RIGHT, HIST_TOP, HIST_BOTTOM = 380, 170, 48, 10, 10, 40
#: the fields of a top-k entry and of a synthesised image written to a layer's JSON
ENTRY_KEYS = ("rank", "activation", "image", "label", "source", "row", "col", "box")
SYNTHESIS_KEYS = ("activation", "peak", "settings", "recipe", "image")


def environment() -> Environment:
    """The Jinja2 environment of the atlas templates: every value autoescaped (whatever the template's name:
    the rule of ``deconvnet.html``), undefined names are errors."""
    env = Environment(loader=PackageLoader("deconvnet.atlas", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = lambda v: f"{v:.4g}"
    env.filters["ranges"] = ranges
    return env


def ranges(values: list[int]) -> str:
    """Sorted integers as compact ranges: ``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the jump form's channel list)."""
    parts: list[str] = []
    for v in values:
        if parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == v - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{v}"
        elif parts and "-" not in parts[-1] and int(parts[-1]) == v - 1:
            parts[-1] = f"{parts[-1]}-{v}"
        else:
            parts.append(str(v))
    return ",".join(parts)


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _tile_display(r: int) -> tuple[int, bool]:
    """On-screen side of an r-pixel tile, and whether it is enlarged (drawn with crisp pixels)."""
    if r < MIN_TILE_PX:
        return r * math.ceil(MIN_TILE_PX / r), True
    return min(r, MAX_TILE_PX), False


def _ticks(top: float) -> list[float]:
    """Round tick values in [0, top] (about four)."""
    if top <= 0:
        return [0.0]
    step = 10 ** math.floor(math.log10(top / 4))
    for m in (1, 2, 2.5, 5, 10):
        if top / (m * step) <= 5:
            step *= m
            break
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def histogram(counts: list[int], nonpos: int, top: float, *, log: bool, what: str,
              marks: list[float] | None = None) -> dict[str, Any]:
    """Geometry of one histogram as SVG: a bar for the values <= 0, then ``len(counts)`` bins over (0, top].

    Args:
        counts: per bin counts.
        nonpos: count of values <= 0 (drawn apart, in another colour).
        top: upper end of the bins.
        log: height proportional to log10(1 + count) (unit histograms span decades), else to the count.
        what: what is counted, for the tooltips ("units", "images").
        marks: values to mark under the axis (the top-k activations).
    """
    bins = len(counts)
    plot_w = HIST_W - HIST_LEFT - HIST_RIGHT
    plot_h = HIST_H - HIST_TOP - HIST_BOTTOM
    slot = plot_w / (bins + 3)  # one slot for "<= 0", two empty slots (room for the labels), then the bins
    x0 = HIST_LEFT + 3 * slot
    hmax = max([nonpos, *counts, 1])

    def height(c: int) -> float:
        return plot_h * (math.log10(1 + c) / math.log10(1 + hmax) if log else c / hmax)

    def bar(x: float, c: int, title: str, cls: str) -> dict[str, Any]:
        h = height(c)
        # one decimal is a tenth of a pixel at the drawn size: enough, and it keeps the pages small
        return {"x": round(x + 0.5, 1), "y": round(HIST_TOP + plot_h - h, 1), "w": round(slot - 1, 1),
                "h": round(h, 1), "count": c, "title": title, "cls": cls}

    bars = [bar(HIST_LEFT, nonpos, f"≤ 0: {nonpos:,} {what}", "nonpos")]
    for i, c in enumerate(counts):
        lo, hi = top * i / bins, top * (i + 1) / bins
        bars.append(bar(x0 + i * slot, c, f"{lo:.4g} – {hi:.4g}: {c:,} {what}", "bin"))
    scale = (bins * slot) / top if top > 0 else 0.0
    xticks = [{"x": round(x0 + v * scale, 2), "label": f"{v:.3g}"} for v in _ticks(top)]
    yvals = [10**e for e in range(0, int(math.log10(hmax)) + 1)] if log else [v for v in _ticks(hmax) if v == int(v)]
    yticks = [{"y": round(HIST_TOP + plot_h - height(int(v)), 2), "label": f"{int(v):,}"} for v in yvals]
    return {
        "width": HIST_W, "height": HIST_H, "left": HIST_LEFT, "right": HIST_W - HIST_RIGHT, "top": HIST_TOP,
        "base": HIST_TOP + plot_h, "bars": bars, "xticks": xticks, "yticks": yticks, "log": log,
        "nonpos_x": round(HIST_LEFT + slot / 2, 2), "what": what,
        "marks": [round(x0 + min(max(v, 0.0), top) * scale, 2) for v in (marks or [])],
    }


def _dataset_name(dataset: Any) -> str:
    d = Items(dataset).describe()
    if d.get("kind") == "demo":
        return (f"the offline demo collection ({len(d.get('photos', []))} photographs bundled with scikit-image and "
                "matplotlib, cropped and mirrored)")
    if d.get("kind") == "folder":
        return f"the images under {d.get('root')}"
    return d.get("kind", type(dataset).__name__)


def _weights_note(net: Net) -> str | None:
    """A visible warning when the weights are not the ImageNet classifier's (the atlas must not hide it)."""
    weights = net.provenance.get("weights")
    if weights == "imagenet":
        return None
    if weights == "random":
        return "These are random weights: the pictures show no learned features."
    return f"These are not torchvision's ImageNet weights: {net.provenance.get('source', weights)}."


def _shown(entries: list, c: int, rf: Any, paths: Any, image_size: Any, items: Items) -> list[dict[str, Any]]:
    """A channel page's top-k entries: the unit, its image and tile, the receptive field on the image."""
    shown = []
    for rank, (v, i, (r, col)) in enumerate(entries):
        box = rf.box(r, col)
        w, h = image_size(i)
        ct, cl, cb, cr = max(box[0], 0), max(box[1], 0), min(box[2], h), min(box[3], w)
        shown.append({
            "rank": rank + 1, "activation": v, "image": i, "row": r, "col": col, "box": list(box),
            "label": items.label(i),
            "source": items.source(i),
            "tile": f"tiles/{c}_{rank}{paths.ext}", "image_file": f"../{paths.image(i)}",
            "image_w": w, "image_h": h,
            # the receptive field on the full image, clipped to it, in percent (CSS overlay)
            "overlay": {"top": 100 * ct / h, "left": 100 * cl / w,
                        "height": 100 * max(cb - ct, 0) / h, "width": 100 * max(cr - cl, 0) / w},
        })
    return shown


def _summary(st: ChannelStats, c: int, top1: float) -> dict[str, Any]:
    """A channel's numbers from its statistics (the page's table)."""
    n_units = max(st.n_units, 1)
    return {
        "max": top1, "mean": float(st.mean[c]), "std": float(st.std[c]), "min": float(st.min[c]),
        "active": 1 - int(st.units_nonpos[c]) / n_units, "n_units": st.n_units,
        "images_active": 1 - int(st.image_nonpos[c]) / max(st.n_images, 1), "n_images": st.n_images,
        "top": float(st.top[c]), "bins": st.bins,
    }


def _record(layer: str, c: int, paths: Any, summary: dict[str, Any], st: ChannelStats, shown: list[dict[str, Any]],
            synth: dict[str, Any] | None) -> dict[str, Any]:
    """A channel's entry in its layer's ``channels.json``."""
    return {
        "channel": c, "page": paths.page(layer, c), "summary": summary,
        "histogram": {"edges": st.edges(c), "units": st.units[c].tolist(),
                      "units_nonpos": int(st.units_nonpos[c]),
                      "image_max": st.image_max[c].tolist(), "image_nonpos": int(st.image_nonpos[c])},
        "entries": [{key: e[key] for key in ENTRY_KEYS}
                    | {"tile": f"{paths.folder(layer)}/{e['tile']}",
                       "image_file": paths.image(e["image"])} for e in shown],
    } | ({"synthesis": {k: synth[k] for k in SYNTHESIS_KEYS}} if synth else {})


def _provenance(net: Net, common: dict[str, Any], identity: dict[str, Any], first: dict[str, Any],
                processes: dict[str, Any] | None, scaling: str, *, n_images: int) -> list[tuple[str, str]]:
    """The index's provenance table: the model, its weights and input, the data, the scan, how it was built."""
    return [
        ("Architecture", net.arch),
        ("Weights", net.describe()),
        ("Weight source", str(net.provenance.get("source", ""))),
        ("Weight file", str(net.provenance.get("file") or "none (built in code)")),
        ("sha256", str(net.provenance.get("sha256") or "none")),
        ("Input", str(net.provenance.get("preprocessing", ""))),
        ("Data", f"{common['dataset_name']}: {n_images} images"),
        ("Top-k", f"{identity['k']} per channel, at most {identity['per_group']} per source image"
                  if identity["per_group"] else f"{identity['k']} per channel"),
        ("Scan fingerprint", str(first.get("fingerprint", ""))),
        *([("Built by", f"{processes['processes']} process(es)" + (f", torch.distributed {processes['backend']}"
                                                                   if processes.get("backend") else ""))]
          if processes else []),
        ("Projections",
         f"deconvnet (Zeiler & Fergus 2014), cropped to the receptive field; {describe_scaling(scaling)}"),
    ]


def render_site(out: Path, net: Net, dataset: Any, topks: dict[str, TopK], stats: dict[str, ChannelStats],
                channels: dict[str, list[int]], paths: Any, *, identity: dict[str, Any],
                dataset_name: str | None, scaling: str, progress: bool = True,
                processes: dict[str, Any] | None = None,
                synthesis: dict[str, dict[int, dict[str, Any]]] | None = None) -> list[Path]:
    """Write the static files, the index, every channel page and each layer's ``channels.json``.

    ``processes`` (``deconvnet.distributed.describe()``) is how the build ran, for the index's provenance;
    ``synthesis`` (``atlas.synthesis.synthesize_atlas``): layer -> channel -> the synthesised image's record.
    """

    env = environment()
    written: list[Path] = []
    for name in ("atlas.css", "atlas.js"):
        text = resources.files("deconvnet.atlas").joinpath("templates", "static", name).read_text(encoding="utf-8")
        _write_text(text, out / "static" / name)
        written.append(out / "static" / name)
    layers = list(topks)
    first = topks[layers[0]].provenance
    items = Items(dataset)
    image_sizes: dict[int, tuple[int, int]] = {}

    def image_size(i: int) -> tuple[int, int]:
        if i not in image_sizes:
            with Image.open(out / paths.image(i)) as im:  # reads the header only
                image_sizes[i] = im.size
        return image_sizes[i]

    common = {
        "arch": net.arch, "model_line": net.describe(), "weights_note": _weights_note(net), "version": __version__,
        "dataset_name": dataset_name or _dataset_name(dataset), "n_images": len(dataset),
        "k": identity["k"], "scaling_text": describe_scaling(scaling),
    }
    layer_info = []
    total = sum(len(channels[layer]) for layer in layers)
    bar = tqdm(total=total, desc="pages", unit="page", disable=not progress)
    for layer in layers:
        topk, st = topks[layer], stats[layer]
        rf = receptive_field(net, layer)
        side, enlarged = _tile_display(rf.size[0])
        gap = max(2, rf.size[1] // 24)
        pair_w = round((2 * rf.size[1] + gap) * side / rf.size[0])
        thumb_h = min(rf.size[0], 64)
        thumb_w = round((2 * rf.size[1] + gap) * thumb_h / rf.size[0])
        chans = channels[layer]
        info = {
            "name": layer, "folder": paths.folder(layer), "n_channels": net.channels[layer], "channels": chans,
            "rf": rf.size[0], "jump": rf.jump[0], "map": topk.map_size[layer],
            "thumb_w": round(thumb_w * 64 / thumb_h), "thumb_h": 64, "thumb_pixelated": thumb_h < 64,
            "cards": [],
        }
        records = []
        for pos, c in enumerate(chans):
            entries = topk.entries(layer, c)
            top1 = entries[0][0] if entries else float("nan")
            info["cards"].append({"channel": c, "page": paths.page(layer, c), "thumb": paths.thumb(layer, c),
                                  "top": top1, "has": bool(entries)})
            shown = _shown(entries, c, rf, paths, image_size, items)
            summary = _summary(st, c, top1)
            hist_units = histogram(st.units[c].tolist(), int(st.units_nonpos[c]), float(st.top[c]), log=True,
                                   what="units")
            hist_images = histogram(st.image_max[c].tolist(), int(st.image_nonpos[c]), float(st.top[c]), log=False,
                                    what="images", marks=[e["activation"] for e in shown])
            prev_c = chans[pos - 1] if pos > 0 else None
            next_c = chans[pos + 1] if pos + 1 < len(chans) else None
            synth = (synthesis or {}).get(layer, {}).get(c)
            html = env.get_template("channel.html").render(
                **common, root="../", synth=synth, title=f"{layer} channel {c} · {net.arch} atlas", layer=info,
                channel=c,
                entries=shown, summary=summary, hist_units=hist_units, hist_images=hist_images,
                prev=prev_c, next=next_c, tile_side=side, pair_w=pair_w, enlarged=enlarged,
                cols=max(1, math.ceil(math.sqrt(len(shown)))),  # 3x3 for the top 9, as the paper's Figure 2
            )
            page = out / paths.page(layer, c)
            _write_text(html, page)
            written.append(page)
            records.append(_record(layer, c, paths, summary, st, shown, synth))
            bar.update(1)
        write_json({"layer": layer, "arch": net.arch, "weights": net.describe(), "k": identity["k"],
                    "receptive_field": {"size": rf.size, "jump": rf.jump, "padding": rf.padding},
                    "map_size": topk.map_size[layer], "binning": "bin = min(floor(v / top * bins), bins - 1) for v > 0",
                    "channels": records}, out / paths.folder(layer) / "channels.json")
        layer_info.append(info)
    bar.close()
    provenance = _provenance(net, common, identity, first, processes, scaling, n_images=len(dataset))
    html = env.get_template("index.html").render(
        **common, root="", title=f"{net.arch} atlas · deconvnet", layers=layer_info, provenance=provenance,
        scan_date=str(first.get("date", "")),
    )
    _write_text(html, out / "index.html")
    written.append(out / "index.html")
    return written
