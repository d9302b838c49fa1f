"""The ``synthesize`` command: the images channels respond to most (feature visualisation by optimisation)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ..constants import DEFAULT_SIZE
from .common import (
    ARCH_HELP,
    DEVICE_HELP,
    UsageError,
    _arch,
    _load_data,
    _load_net,
    check_counts,
    check_data_options,
    check_layer_names,
    check_output_folder,
)


def _channels(text: str) -> list[int]:
    """``0,3,7`` or ``0-7`` or both: a list of channel numbers."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                out += list(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of channels (e.g. 0,3,7 or 0-7)") from None
    if not out:
        raise argparse.ArgumentTypeError(f"'{text}' names no channel (e.g. 0,3,7 or 0-7)")
    return list(dict.fromkeys(out))


#: ``deconvnet.synthesis``'s objectives and recipes, written out so that ``--help`` needs no torch (test_synthesis
#: checks they agree)
OBJECTIVES = ("channel", "unit")
RECIPES = ("standard", "distill", "none")


def add_synthesis_parser(sub) -> None:
    s = sub.add_parser("synthesize", help="synthesise the image each channel responds to most (Olah et al. 2017)")
    s.add_argument("--arch", default="vgg16", type=_arch, metavar="ARCH", help=ARCH_HELP)
    s.add_argument("--weights", default="auto", help="auto, imagenet, mri or hed (vgg16, offline), random, or a "
                                                     "state_dict path")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthesis (and of --weights random)")
    s.add_argument("--layer", default="conv4_3", help="paper layer name (conv4_3, ...) or module path")
    s.add_argument("--channels", type=_channels, default=[0, 1, 2, 3], help="comma-separated channels or ranges (0,5,9 "
                                                                            "or 0-7)")
    s.add_argument("--steps", type=int, default=512, help="optimisation steps (the Distill article: 2560)")
    s.add_argument("--size", type=int, default=128, help="side of the synthesised image, in pixels")
    s.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate")
    s.add_argument("--objective", default="channel", choices=OBJECTIVES,
                   help="the channel's mean over the map, or its centre unit")
    s.add_argument("--transforms", default="standard", choices=RECIPES,
                   help="transformation robustness: lucent's standard, the Distill footnote's, or none")
    s.add_argument("--batch", type=int, default=8, help="channels optimised together in one batch")
    s.add_argument("--compare", action="store_true", help="also scan --data (default: the offline demo collection) for "
                                                          "each channel's strongest activation, recorded beside the "
                                                          "image's")
    s.add_argument("--data", default=None, help="a folder of images for --compare (recursive); default: the offline "
                                                "demo collection")
    s.add_argument("--resize", type=int, default=256, help="shorter side after resizing (--compare on a folder)")
    s.add_argument("--crop", type=int, default=DEFAULT_SIZE, help="side of the center crop fed to the model "
                                                                  "(--compare)")
    s.add_argument("--limit", type=int, default=None, help="--compare scans only the first N images")
    s.add_argument("--batch-size", type=int, default=16, help="images per forward pass (--compare)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", type=Path, required=True, help="output folder: one PNG per channel and a JSON sidecar")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_synthesize(args: argparse.Namespace) -> None:
    from ..synthesis import synthesize
    from ..synthesis.files import write_synthesis

    check_counts(("--steps", args.steps, 1), ("--size", args.size, 8), ("--batch", args.batch, 1),
                 ("--batch-size", args.batch_size, 1), ("--crop", args.crop, 1), ("--resize", args.resize, 1))
    if not args.lr > 0:
        raise UsageError(f"--lr {args.lr} must be positive")
    check_data_options(args)
    check_output_folder(args.out)
    check_layer_names(args.arch, [args.layer])  # before the weights load
    net = _load_net(args)
    layer = net.resolve(args.layer)
    n = net.channels[layer]
    bad = [c for c in args.channels if not 0 <= c < n]
    if bad:
        raise UsageError(f"channel {bad[0]} is out of range for layer '{layer}' of {args.arch}, which has {n} "
                         "channels. "
                         f"Hint: --channels within 0-{n - 1}")
    print(f"model: {net.describe()}")
    dataset_max, dataset_name = None, None
    if args.compare:
        dataset_max, dataset_name = _dataset_max(args, net, layer)
    t = time.perf_counter()
    parts, interrupted = [], False
    for start in range(0, len(args.channels), args.batch):
        s = synthesize(net, layer, args.channels[start : start + args.batch], steps=args.steps, size=args.size,
                       seed=args.seed, lr=args.lr, objective=args.objective, transforms=args.transforms,
                       progress=not args.quiet)
        parts.append(s)
        if s.interrupted:
            interrupted = True
            break
    result = parts[0] if len(parts) == 1 else _join(parts)
    seconds = time.perf_counter() - t
    done = result.channels
    written = write_synthesis(result, args.out, arch=args.arch,
                              dataset_max=None if dataset_max is None else [dataset_max[c] for c in done],
                              dataset_name=dataset_name)
    for i, c in enumerate(done):
        line = (f"{layer} channel {c}: mean {float(result.activations[i]):.4g}, "
                f"strongest unit {float(result.peaks[i]):.4g}")
        if dataset_max is not None:
            line += f" (strongest in {dataset_name}: {dataset_max[c]:.4g})"
        print(line)
    print(f"recipe: {result.recipe()}")
    for path in written:
        print(f"wrote {path}")
    print(f"timings: synthesis {seconds:.1f}s for {len(done)} channel(s), {seconds / max(len(done), 1):.1f}s each")
    if interrupted:
        print(f"deconvnet: interrupted after {result.settings['steps_done']} of {args.steps} steps; what it reached is "
              "written", file=sys.stderr)
        raise KeyboardInterrupt


def _join(parts):
    import torch

    from ..synthesis import Synthesis

    width = min(p.curve.shape[1] for p in parts)
    first = parts[0]
    return Synthesis(layer=first.layer, channels=[c for p in parts for c in p.channels],
                     images=torch.cat([p.images for p in parts]), activations=torch.cat([p.activations for p in parts]),
                     peaks=torch.cat([p.peaks for p in parts]), curve=torch.cat([p.curve[:, :width] for p in parts]),
                     settings=parts[-1].settings, weights=first.weights, provenance=first.provenance)


def _dataset_max(args: argparse.Namespace, net, layer: str) -> tuple[list[float], str]:
    """Each channel's strongest activation over ``--data`` (the scan cache shares it with the figures)."""
    from ..scan import scan_top_k

    if not net.is_spatial(layer):
        raise UsageError(f"--compare: layer '{layer}' has no spatial map to scan. Hint: leave --compare out")
    dataset, name = _load_data(args, net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        topk = scan_top_k(net, dataset, [layer], k=9, batch_size=args.batch_size, progress=not args.quiet, cache=True)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return [float(v) for v in topk.values[layer][:, 0]], f"{name} ({len(dataset)} images)"


#: channels per layer in ``figures --only synthesis`` (at most ``--features``)
FIGURE_CHANNELS = 4


def figures_synthesis(args: argparse.Namespace, net, layers: list[str], timings: list, scan) -> list[Path]:
    """``figures --only synthesis``: per layer, a few channels' synthesised images beside their top-k tiles.

    The channels are ``figure2.select_features``'s (``--select``, ``--seed``); ``--quick``: 64 steps at 64 px,
    else 256 steps at 128 px.
    """
    from ..distributed import is_main
    from ..figure2 import feature_tiles, select_features
    from ..synthesis import synthesize
    from ..synthesis.figure import write_synthesis_figure

    topk, dataset, dataset_name = scan(args, net, layers, timings)
    if not is_main():
        return []
    steps, size = (64, 64) if args.quick else (256, 128)
    rows = []
    for layer in layers:
        t = time.perf_counter()
        channels = select_features(topk, layer, min(args.features, FIGURE_CHANNELS), args.select, args.seed)
        if not channels:
            print(f"warning: {layer}: no feature map has {args.k} positive activations; left out of the synthesis "
                  "figure", file=sys.stderr)
            continue
        tiles = feature_tiles(net, dataset, topk, layer, channels, batch_size=args.batch_size, progress=not args.quiet)
        synth = synthesize(net, layer, channels, steps=steps, size=size, seed=args.seed, progress=not args.quiet)
        if synth.interrupted:
            raise KeyboardInterrupt
        rows.append((synth, tiles))
        timings.append((f"synthesise {layer}", time.perf_counter() - t))
    if not rows:
        return []
    out = args.out / f"synthesis_{args.arch}.{args.format}"
    return list(write_synthesis_figure(rows, out, arch=args.arch, dataset_name=dataset_name,
                                       n_images=topk.provenance.get("n", len(dataset)), scaling=args.scaling))
