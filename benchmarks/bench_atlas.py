"""Time and size of the atlas of every channel of a layer, step by step (scan / statistics / project / write).

    .venv/bin/python benchmarks/bench_atlas.py                       # conv3_3 and conv5_3, offline weights
    .venv/bin/python benchmarks/bench_atlas.py --layers conv3_3 --limit 64 --out /tmp/atlas-bench
    .venv/bin/python benchmarks/bench_atlas.py --arch resnet50 --weights random --layers layer2,layer3 \
        --compare vgg16:mri:conv3_3 --limit 64 --features 64   # a graph beside VGG, one run

Each layer gets an atlas of its own, built from nothing in a fresh folder on the offline demo collection
(374 crops of 17 photographs), so that each line is the cost of that layer alone. "project" is the
forwards that record the switches plus the deconv walks inside the receptive fields; "write" is encoding
and writing the images and rendering the pages. The aim: for conv3_3, project at most 3x scan.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

import deconvnet as dn
from deconvnet.atlas import build_atlas
from deconvnet.data import Head, demo_collection


def sizes_by_kind(out: Path) -> dict[str, tuple[int, int]]:
    """bytes and files of the website by kind (scans/ apart)."""
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for root, _, names in os.walk(out):
        rel = Path(root).relative_to(out)
        for n in names:
            if rel.parts[:1] == ("scans",):
                kind = "scans (not part of the site)"
            elif rel.name in ("tiles", "thumbs", "images", "static"):
                kind = rel.name
            else:
                kind = Path(n).suffix.lstrip(".") or n
            kinds[kind][0] += (Path(root) / n).stat().st_size
            kinds[kind][1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(kinds.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--weights", default="mri", help="mri (offline default), hed, imagenet, random")
    parser.add_argument("--layers", default="conv3_3,conv5_3")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of the demo collection")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--format", default="jpeg", choices=("jpeg", "png", "webp"))
    parser.add_argument("--features", type=int, default=None, help="only the first N channels of each layer (default: "
                                                                   "all)")
    parser.add_argument("--compare", default=None, metavar="ARCH:WEIGHTS:LAYERS",
                        help="also measure another model in the same run (layers separated by +), e.g. "
                             "vgg16:mri:conv3_3")
    parser.add_argument("--out", type=Path, default=None, help="keep the atlases here (default: a temporary folder)")
    args = parser.parse_args()

    runs = [(args.arch, args.weights, [layer.strip() for layer in args.layers.split(",") if layer.strip()])]
    if args.compare:
        arch, weights, layers = args.compare.split(":")
        runs.append((arch, weights, layers.split("+")))
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-atlas-"))
    features = list(range(args.features)) if args.features else None
    print(f"data: the demo collection{f', first {args.limit} images' if args.limit else ''}, 224 px; batch "
          f"{args.batch_size}; images as {args.format}; "
          f"{f'channels 0..{args.features - 1}' if features else 'every channel'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs (shared machine: timings vary by about 20%)")
    print()
    header = (f"{'model':9} {'layer':8} {'channels':>8} {'proj':>6} {'scan s':>7} {'stats s':>7} {'project s':>9} "
              f"{'write s':>7} {'total s':>7} {'project/scan':>12} {'site MB':>8} {'files':>6}")
    rows, details = [], []
    for arch, weights, layers in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = dn.load_model(arch, weights)
        print(f"model: {net.describe()}")
        dataset = demo_collection(preprocessing=net.preprocessing)
        if args.limit:
            dataset = Head(dataset, args.limit)
        for layer in layers:
            out = root / f"{arch}_{layer}"
            if out.exists():
                if not (out / "atlas.json").is_file():
                    sys.exit(f"{out} exists and is not an atlas; refusing to delete it")
                shutil.rmtree(out)  # the benchmark's own earlier atlas: measure from nothing
            t = time.perf_counter()
            atlas = build_atlas(net, dataset, [layer], out, k=9, features=features, batch_size=args.batch_size,
                                image_format=args.format, progress=False)
            total = time.perf_counter() - t
            tm = atlas.timings
            rows.append(f"{arch:9} {layer:8} {len(atlas.channels[layer]):>8} {atlas.projected:>6} {tm['scan']:>7.1f} "
                        f"{tm['stats']:>7.1f} {tm['project']:>9.1f} {tm['write']:>7.1f} {total:>7.1f} "
                        f"{tm['project'] / tm['scan']:>11.2f}x {atlas.site_bytes / 2**20:>8.1f} {atlas.site_files:>6}")
            kinds = sizes_by_kind(out)
            sizes = ", ".join(f"{k} {b / 2**20:.2f} MB ({n} files)" for k, (b, n) in kinds.items())
            details.append(f"{arch} {layer}: " + sizes)
            if len(rows) == 1:
                print(header)
            print(rows[-1], flush=True)
    print()
    for d in details:
        print(d)
    print(f"\natlases in {root}")


if __name__ == "__main__":
    main()
