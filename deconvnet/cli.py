"""Command line: ``python -m deconvnet project IMAGE --layer conv5_3 --out figures/x.png``.

Errors are one line naming the bad value and the fix, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from .images import SKIMAGE_PHOTOS, ImageReadError
from .models import ARCH_NAMES, WeightsError


class UsageError(Exception):
    """A bad command-line value; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UsageError(f"{message} (see {self.prog} --help)")


def _position(text: str):
    if text in ("max", "all"):
        return text
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not max, all or ROW,COL (e.g. 10,11)") from None
    return (row, col)


def _channel(text: str):
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a channel number or max") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m deconvnet", description="Zeiler & Fergus deconvnet visualisations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("project", help="project one unit or feature map of an image back to pixel space")
    p.add_argument("image", help=f"an image file, or a bundled photograph: {', '.join(SKIMAGE_PHOTOS)}")
    p.add_argument("--layer", default="conv5_3", help="paper layer name (conv5_3, relu4_3, pool5, ...)")
    p.add_argument("--channel", type=_channel, default="max", help="channel number, or max: the channel holding the layer's strongest activation")
    p.add_argument("--position", type=_position, default="max", help="max (strongest unit of the map), ROW,COL, or all (the whole map)")
    p.add_argument("--arch", default="vgg16", choices=ARCH_NAMES, metavar="ARCH", help=f"one of {', '.join(ARCH_NAMES)}")
    p.add_argument("--weights", default="auto", help="auto, imagenet, hed (vgg16), random, or a state_dict path")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    p.add_argument("--size", type=int, default=224, help="resize the shorter side and center-crop to SIZE (0: keep the image as is)")
    p.add_argument("--scaling", default="symmetric", choices=("symmetric", "minmax", "percentile"), help="display scaling of the projection")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, required=True, help="output figure (.png, .pdf, .svg)")
    return parser


def cmd_project(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import Deconvnet, load_model
    from .plot import save_figure, show

    if args.out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out '{args.out}' must end in .png, .pdf or .svg")
    if args.size < 0:
        raise UsageError(f"--size {args.size} must be 0 (keep) or a positive number of pixels")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = load_model(args.arch, args.weights, seed=args.seed, device=args.device)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    size = args.size or None
    x = net.preprocess(args.image, size=size, crop=size)
    t1 = time.perf_counter()
    p = Deconvnet(net).project(x, args.layer, args.channel, args.position)
    t2 = time.perf_counter()
    fig = show(p, scaling=args.scaling)
    save_figure(fig, args.out)
    plt.close(fig)
    row, col = (int(v) for v in p.position[0])
    print(f"{args.layer} channel {int(p.channel[0])}, unit ({row}, {col}), activation {float(p.activation[0]):.4g}")
    print(f"model: {net.describe()}")
    print(f"wrote {args.out}  (load {t1 - t0:.1f}s, project {t2 - t1:.2f}s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        {"project": cmd_project}[args.command](args)
    except (UsageError, ValueError, TypeError, WeightsError, ImageReadError, FileNotFoundError) as err:
        print(f"deconvnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deconvnet: interrupted", file=sys.stderr)
        return 130
    return 0
