"""The command line's arguments: one function per command of this module (``project``, ``figures``, ``layers``,
``atlas``); ``evolution``, ``correspondence`` and ``synthesize`` add theirs beside their commands.

Nothing here imports torch: ``--help`` and argument errors come back at once (benchmarks/bench_cli_startup.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._version import __version__
from ..constants import DEFAULT_SIZE
from .common import (
    ARCH_HELP,
    DEVICE_HELP,
    FIGURE_SUFFIXES,
    SCALINGS,
    _arch,
    _channel,
    _features,
    _Parser,
    _position,
    add_model_options,
    program_name,
)
from .experiments import _add_correspondence_parser, _add_evolution_parser
from .synthesis import add_synthesis_parser

#: the photographs ``project`` takes by name (``deconvnet.images.BUNDLED_PHOTOS``; test_cli checks they agree)
PHOTO_EXAMPLES = ("astronaut", "chelsea", "coffee", "rocket")


ANALYSES = ("methods", "sanity", "invariance", "occlusion", "filters", "evolution",
            "correspondence")  # analysis.FIGURES


FIGURE_KINDS = ("top9", "resolution") + ANALYSES + ("synthesis",)
#: what ``--only all`` draws: every kind but the synthesis, whose optimisation takes minutes per channel on a
#: CPU (``--only synthesis`` asks for it; benchmarks/bench_synthesis.py measures it)
DEFAULT_KINDS = tuple(k for k in FIGURE_KINDS if k != "synthesis")


def build_parser() -> argparse.ArgumentParser:
    """The ``deconvnet`` command's parser, with a subparser per command."""
    parser = _Parser(prog=program_name(), description="Zeiler & Fergus deconvnet visualisations.")
    parser.add_argument("--version", action="version", version=f"deconvnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_project_parser(sub)
    _add_figures_parser(sub)
    _add_layers_parser(sub)
    _add_atlas_parser(sub)
    _add_evolution_parser(sub)
    _add_correspondence_parser(sub)
    add_synthesis_parser(sub)
    return parser


def _add_project_parser(sub) -> None:
    p = sub.add_parser("project", help="project one unit or feature map of an image back to pixel space")
    p.add_argument("image", help=f"an image file, or a bundled photograph: {', '.join(PHOTO_EXAMPLES)}, ...")
    p.add_argument("--layer", default="conv5_3", help="paper layer name (conv5_3, relu4_3, pool5, ...)")
    p.add_argument("--channel", type=_channel, default="max", help="channel number, or max: the channel holding the "
                                                                   "layer's strongest activation")
    p.add_argument("--position", type=_position, default="max", help="max (strongest unit of the map), ROW,COL, or all "
                                                                     "(the whole map)")
    add_model_options(p, "seed for --weights random")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="resize the shorter side and center-crop to SIZE (0: "
                                                                  "keep the image as is)")
    p.add_argument("--scaling", default="percentile", choices=SCALINGS,
                   help="display scaling of the projection (see deconvnet.plot)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", type=Path, required=True, help=f"output figure ({', '.join(FIGURE_SUFFIXES)})")


def _add_loading_options(parser: argparse.ArgumentParser, limit_help: str) -> None:
    """How ``figures`` and ``atlas`` read their collection: resize, crop, limit, batches, workers, device."""
    parser.add_argument("--resize", type=int, default=256, help="shorter side after resizing (folders)")
    parser.add_argument("--crop", type=int, default=DEFAULT_SIZE, help="side of the center crop fed to the model")
    parser.add_argument("--limit", type=int, default=None, help=limit_help)
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def _add_figures_parser(sub) -> None:
    f = sub.add_parser("figures", help="the figure grids: Figure 2 (top-k per feature map) and the other figures")
    add_model_options(f, "seed for --weights random and the random feature selection")
    f.add_argument("--data", default=None, help="a folder of images (recursive): the scan of top9, and the first few "
                   "images of methods, sanity, invariance and occlusion; default: the offline demo collection and the "
                   "bundled photographs")
    f.add_argument("--boxes", type=Path, default=None, help="with --data: a JSON of part boxes of its images for the "
                   "correspondence (as the correspondence command's); default: the bundled faces")
    f.add_argument("--layers", default=None, help="comma-separated layers (default: the last conv of each block)")
    f.add_argument("--features", type=int, default=8, help="feature maps shown per layer")
    f.add_argument("--k", type=int, default=9, help="top activations per feature map")
    f.add_argument("--select", default="random", choices=("random", "strongest"), help="which feature maps: a seeded "
                                                                                       "random subset (as the paper) "
                                                                                       "or the strongest")
    f.add_argument("--scaling", default="percentile", choices=SCALINGS,
                   help="display scaling of the projections (see deconvnet.plot)")
    f.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="figure file format")
    _add_loading_options(f, "scan only the first N images")
    f.add_argument("--only", default="all", help=f"comma-separated figure kinds: {', '.join(FIGURE_KINDS)}, or all "
                   "(every kind but synthesis, which takes minutes per channel on a CPU)")
    f.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    f.add_argument("--quick", action="store_true", help="small settings for the non-top9 figures (seconds, for a first "
                                                        "look)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.add_argument("--no-cache", action="store_true", help="do not read or store scans in the shared scan cache")


def _add_layers_parser(sub) -> None:
    layers_cmd = sub.add_parser("layers", help="an architecture's named layers: channels, map size and receptive field "
                                               "(no weights needed)")
    layers_cmd.add_argument("--arch", default="vgg16", type=_arch, metavar="ARCH", help=ARCH_HELP)
    layers_cmd.add_argument("--size", type=int, default=DEFAULT_SIZE, help="side of the square input, in pixels")


def _add_atlas_parser(sub) -> None:
    a = sub.add_parser("atlas", help="a static website of every channel's top-k projections (open OUT/index.html)")
    add_model_options(a, "seed for --weights random and the random feature selection")
    a.add_argument("--data", default=None, help="a folder of images (recursive); default: the offline demo collection")
    a.add_argument("--layers", default=None, help="comma-separated layers (default: the last conv of each block); a "
                                                  "rerun adds layers")
    a.add_argument("--features", type=_features, default=None, metavar="N|all", help="channels per layer: all "
                                                                                     "(default) or N (see --select)")
    a.add_argument("--k", type=int, default=9, help="top activations per channel")
    a.add_argument("--select", default="random", choices=("random", "strongest"), help="which N channels with "
                                                                                       "--features N")
    a.add_argument("--scaling", default="percentile", choices=SCALINGS,
                   help="display scaling of the projections (see deconvnet.plot)")
    a.add_argument("--format", default="jpeg", choices=("jpeg", "png", "webp"), help="image file format of the tiles")
    _add_loading_options(a, "use only the first N images")
    a.add_argument("--out", type=Path, default=Path("atlas"), help="the atlas folder (new, or an atlas to extend or "
                                                                   "finish)")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--synthesize", action="store_true", help="also show on each channel page the image synthesised to "
                                                             "excite it most (kept: a rebuild does not redo it)")
    a.add_argument("--synthesize-steps", type=int, default=512, help="optimisation steps of --synthesize (128 px "
                                                                     "images)")
    a.add_argument("--no-cache", action="store_true", help="do not read or store scans in the shared scan cache")
