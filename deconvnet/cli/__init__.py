"""Command line: ``python -m deconvnet project IMAGE --layer conv5_3 --out figures/x.png``.

Errors are one line naming the bad value and the fix, with exit status 2 and no traceback.

``figures`` and ``atlas`` scale out with torchrun (``torchrun --nproc_per_node=N -m deconvnet atlas ...``):
the scan, the statistics and the projections are shared between the processes (``deconvnet.distributed``),
rank 0 alone writes and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

# torch, torchvision, captum and matplotlib are imported by the commands that need them, when they run:
# ``--help`` and argument errors come back at once (benchmarks/bench_cli_startup.py)
from .common import (
    FIGURE_SUFFIXES,
    UsageError,
    _load_data,
    _load_net,
    check_arch,
    check_count,
    check_counts,
    check_data_options,
    check_layer_names,
    check_output_file,
    check_output_folder,
    resolve_device,  # noqa: F401  (part of the command's API: deconvnet.cli.resolve_device)
)
from .experiments import cmd_correspondence, cmd_evolution
from .parser import ANALYSES, DEFAULT_KINDS, FIGURE_KINDS, PHOTO_EXAMPLES, build_parser  # noqa: F401 (the API)
from .synthesis import cmd_synthesize


def check_image_sizes(args: argparse.Namespace) -> None:
    """Before anything loads: an image resized to ``--resize`` (its float copy at least a square of that side)
    fits in memory."""
    from ..memory import check_bytes

    check_bytes(4 * 3 * args.resize * args.resize, f"an image resized to --resize {args.resize} px")
    check_bytes(4 * 3 * args.crop * args.crop * args.batch_size,
                f"a batch of {args.batch_size} images of --crop {args.crop} px")


def check_forward_fits(net, args: argparse.Namespace) -> None:
    """Once the model is loaded, before any image: a batch of ``--crop`` images goes through it in memory."""
    from ..memory import check_memory

    check_memory(net, args.batch_size, (args.crop, args.crop))


def cmd_atlas(args: argparse.Namespace) -> None:
    from ..atlas import build_atlas, check_layers, check_out_folder
    from ..distributed import on_main
    from ..engine import default_layers

    check_counts(("--k", args.k, 1), ("--batch-size", args.batch_size, 1), ("--crop", args.crop, 1),
                 ("--resize", args.resize, 1), ("--workers", args.workers, 0),
                 ("--synthesize-steps", args.synthesize_steps, 1))
    if args.features is not None:
        check_count("--features", args.features, 1, "at least 1, or all")
    check_data_options(args)
    on_main(check_out_folder, args.out)  # before the minutes of loading and scanning
    check_image_sizes(args)
    if args.layers is not None:
        check_layer_names(args.arch, [layer.strip() for layer in args.layers.split(",") if layer.strip()],
                          arch_kwargs=args.arch_kwargs)  # before the weights load
    net = _load_net(args)
    check_forward_fits(net, args)
    layers = (default_layers(net) if args.layers is None
              else [layer.strip() for layer in args.layers.split(",") if layer.strip()])
    layers = check_layers(net, layers)
    print(f"model: {net.describe()}")
    dataset, name = _load_data(args, net)
    print(f"data: {len(dataset)} images from {name}")
    atlas = build_atlas(net, dataset, layers, args.out, k=args.k, features=args.features, select=args.select,
                        seed=args.seed, scaling=args.scaling, image_format=args.format, batch_size=args.batch_size,
                        num_workers=args.workers, progress=not args.quiet, cache=not args.no_cache,
                        synthesize={"steps": args.synthesize_steps, "seed": args.seed} if args.synthesize else False)
    pages = sum(len(c) for c in atlas.channels.values())
    print(f"atlas: {', '.join(f'{layer} ({len(atlas.channels[layer])} channels)' for layer in atlas.layers)}; {pages} "
          "channel pages, "
          f"{atlas.projected} projections made now")
    print(f"size: {atlas.site_bytes / 2**20:.1f} MB in {atlas.site_files} files (and {atlas.scan_bytes / 2**20:.1f} MB "
          "of scans)")
    print("timings: " + ", ".join(f"{step} {sec:.1f}s" for step, sec in atlas.timings.items()))
    print(f"open {args.out / 'index.html'}")


def cmd_project(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine import Deconvnet
    from ..images import load_rgb
    from ..plot import save_figure, show, where

    if args.out.suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"--out '{args.out}' must end in {', '.join(FIGURE_SUFFIXES)}")
    check_count("--size", args.size, 0, "0 (keep) or a positive number of pixels")
    # before the model loads (seconds, or a download): a wrong layer, channel or image fails at once
    check_layer_names(args.arch, [args.layer], channel=args.channel, arch_kwargs=args.arch_kwargs)
    image = load_rgb(args.image)
    check_output_file(args.out)
    t0 = time.perf_counter()
    net = _load_net(args)
    size = args.size or None
    x = net.preprocess(image, size=size, crop=size)
    t1 = time.perf_counter()
    p = Deconvnet(net).project(x, args.layer, args.channel, args.position)
    t2 = time.perf_counter()
    fig = show(p, scaling=args.scaling)
    save_figure(fig, args.out)
    plt.close(fig)
    print(f"{args.layer} channel {int(p.channel[0])}, {where(p)}: activation {float(p.activation[0]):.4g}")
    print(f"model: {net.describe()}")
    print(f"wrote {args.out}  (load {t1 - t0:.1f}s, project {t2 - t1:.2f}s)")



def _figure_kinds(only: str) -> tuple[str, ...]:
    """The figure kinds ``--only`` names (``all``: every kind but synthesis), or a usage error."""
    kinds = DEFAULT_KINDS if only == "all" else tuple(k.strip() for k in only.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FIGURE_KINDS]
    if unknown or not kinds:
        raise UsageError(f"--only {only}: unknown figure kind {', '.join(unknown) or '(none)'}; use "
                         f"{', '.join(FIGURE_KINDS)} or all")
    return kinds


def _check_boxes(args: argparse.Namespace) -> None:
    """``--boxes``: a file, and only with ``--data``."""
    if args.boxes is not None and args.data is None:
        raise UsageError("--boxes needs --data, the folder its image names are relative to")
    if args.boxes is not None and not args.boxes.is_file():
        raise UsageError(f"--boxes '{args.boxes}' is not a file. Hint: a JSON of part boxes (see "
                         "deconvnet/analysis/parts.json)")


def cmd_figures(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..distributed import is_main, on_main
    from ..engine import default_layers

    kinds = _figure_kinds(args.only)
    check_counts(("--k", args.k, 1), ("--features", args.features, 1), ("--batch-size", args.batch_size, 1),
                 ("--crop", args.crop, 1), ("--resize", args.resize, 1), ("--workers", args.workers, 0))
    check_data_options(args)
    _check_boxes(args)
    on_main(check_output_folder, args.out)
    check_image_sizes(args)
    if args.layers is not None:  # before the model loads: a wrong name fails at once
        check_layer_names(args.arch, [layer.strip() for layer in args.layers.split(",") if layer.strip()],
                          arch_kwargs=args.arch_kwargs)
    timings: list[tuple[str, float]] = []
    t = time.perf_counter()
    net = _load_net(args)
    check_forward_fits(net, args)
    layers = (default_layers(net) if args.layers is None
              else list(dict.fromkeys(layer.strip() for layer in args.layers.split(",") if layer.strip())))
    for layer in layers:
        net.check_layer(layer)
    print(f"model: {net.describe()}")
    timings.append(("load model", time.perf_counter() - t))
    written: list[Path] = []
    if not net.can_show_stages and "resolution" in kinds:  # the resolution study is VGG's: it walks a chain's stages
        if args.only != "all":
            raise UsageError(f"--only {args.only}: the resolution figures need a VGG or AlexNet; {net.arch} is a "
                             f"graph. Hint: --only {','.join(k for k in kinds if k != 'resolution') or 'top9'}")
        print(f"note: {net.arch} is not a VGG or AlexNet chain: the resolution study is left out (it walks a chain's "
              "stages); the other figures are made", file=sys.stderr)
        kinds = tuple(k for k in kinds if k != "resolution")
    if "top9" in kinds:
        written += _figures_top9(args, net, layers, timings)
    if "synthesis" in kinds:  # what a unit wants beside its top-9 (deconvnet.synthesis)
        from .synthesis import figures_synthesis

        written += figures_synthesis(args, net, layers, timings, _figure_scan)
    if not is_main():  # the other ranks shared the scan; rank 0 projects, draws and writes
        return
    if "resolution" in kinds:
        from ..resolution import make_figures

        t = time.perf_counter()
        written += make_figures(args.out, net, quick=args.quick, fmt=args.format)
        timings.append(("resolution figures", time.perf_counter() - t))
    analyses = [k for k in kinds if k in ANALYSES]
    if analyses:
        from ..analysis import make_figures as analysis_figures
        from ..models import load_alexnet

        t = time.perf_counter()
        alexnet = None
        if "filters" in analyses and net.arch != "alexnet":  # Figure 6 shows AlexNet's conv1 too
            source = args.weights if args.weights in ("auto", "imagenet") else "random"
            if source == "random" and args.weights != "random":
                print(f"note: the filter figure shows {net.arch}'s filters only (--weights {args.weights} has no "
                      "AlexNet)",
                      file=sys.stderr)
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    alexnet = load_alexnet(source, seed=args.seed)
                for w in caught:
                    print(f"warning: AlexNet for the filter figure: {w.message}", file=sys.stderr)
        written += analysis_figures(args.out, net, quick=args.quick, alexnet=alexnet, only=analyses,
                                    progress=not args.quiet, data=args.data, boxes=args.boxes)
        timings.append((", ".join(analyses), time.perf_counter() - t))
    for path in written:
        print(f"wrote {path}")
    print("timings: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in timings))
    if not written:
        raise UsageError(f"nothing was written to '{args.out}' (see the warnings above). Hint: more images, a smaller "
                         "--k, "
                         "or other --layers")


def _figure_scan(args: argparse.Namespace, net, layers: list[str], timings: list):
    """The figure script's scan of ``--data`` (the shared scan cache first): ``(topk, dataset, its name)``."""
    import hashlib
    import json

    from ..cache import scan_cache_dir
    from ..scan import scan_top_k

    t = time.perf_counter()
    dataset, dataset_name = _load_data(args, net)
    data = None if args.data is None else str(Path(args.data).expanduser())  # part of the scan's file name
    print(f"data: {len(dataset)} images from {dataset_name}")
    timings.append(("load data", time.perf_counter() - t))
    t = time.perf_counter()
    key = json.dumps([net.provenance.get("sha256"), net.provenance["weights"], args.arch, args.seed, data,
                      args.resize, args.crop, args.limit, layers, args.k], default=str)
    ckpt = args.out / "scans" / f"scan-{net.arch}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if ckpt.is_file():
        print(f"scan: resuming from (or reusing) {ckpt}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the shared scan cache first (the atlas and the notebooks find this scan there too); the checkpoint
        # of a scan under way stays here, where a changed image is noticed and said
        topk = scan_top_k(net, dataset, layers, k=args.k, batch_size=args.batch_size, num_workers=args.workers,
                          checkpoint=ckpt, progress=not args.quiet, restart_stale=True, cache=not args.no_cache)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    cached = topk.provenance.get("cache") or {}
    for what, verb in (("found", "read from"), ("scanned", "stored in")):
        if cached.get(what):
            print(f"scan: {', '.join(cached[what])} {verb} the scan cache {scan_cache_dir(True)}")
    timings.append(("scan", time.perf_counter() - t))
    return topk, dataset, dataset_name


def _figures_top9(args: argparse.Namespace, net, layers: list[str], timings: list) -> list[Path]:
    from ..distributed import is_main
    from ..figure2 import make_figure2

    topk, dataset, dataset_name = _figure_scan(args, net, layers, timings)
    written: list[Path] = []
    if not is_main():
        return written
    for layer in layers:  # what deconvnet.figure2.make_figure2 does from Python, a layer at a time
        t = time.perf_counter()
        written += make_figure2(net, [layer], args.out, dataset=dataset, topk=topk, k=args.k, features=args.features,
                                select=args.select, seed=args.seed, scaling=args.scaling, fmt=args.format,
                                dataset_name=dataset_name, batch_size=args.batch_size, progress=not args.quiet)
        timings.append((f"project and draw {layer}", time.perf_counter() - t))
    return written


def cmd_layers(args: argparse.Namespace) -> None:
    """Print ``--arch``'s named layers with channels, map size and receptive field for a ``--size`` input.

    Seeded random weights: only shapes matter, so nothing is read or downloaded.
    """
    import torch

    from ..engine import default_layers, receptive_field, record
    from ..memory import check_bytes, check_memory
    from ..models import load_model

    check_count("--size", args.size, 1, "a positive number of pixels")
    check_bytes(4 * 3 * args.size * args.size, f"an input of {args.size}x{args.size} px")
    net = load_model(args.arch, "random")
    net.extend = True  # shapes only: a model of the declared rules lists its layers too
    check_memory(net, 1, (args.size, args.size))  # shapes only (meta or fake tensors): nothing allocated
    x = torch.zeros(1, net.in_channels or 3, args.size, args.size, dtype=net.dtype)
    # one forward with no switches, keeping only each output's shape
    shapes = record(net, x, list(net.layers), switches=False, reduce=lambda _, t: tuple(t.shape[1:])).activations
    defaults = set(default_layers(net))
    rows = [("layer", "module", "channels", "map", "receptive field", "stride", "padding", "default")]
    for name in net.layers:
        shape = shapes[name]
        if len(shape) == 3 and min(shape[1:]) > 1 and (net.can_show_stages or "." not in name):
            # a graph's fields are measured (a forward and backward each): its top-level modules only
            rf = receptive_field(net, name)
            rows.append((name, net.qualnames[name], str(shape[0]), f"{shape[1]}x{shape[2]}", f"{rf.size[0]} px",
                         str(rf.jump[0]), str(rf.padding[0]), "*" if name in defaults else ""))
        elif len(shape) == 3 and min(shape[1:]) > 1:
            rows.append((name, net.qualnames[name], str(shape[0]), f"{shape[1]}x{shape[2]}",
                         "receptive_field()", "-", "-", "*" if name in defaults else ""))
        else:
            rows.append((name, net.qualnames[name], str(shape[0]), "-", "whole image", "-", "-", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"{args.arch}, a {args.size}x{args.size} input: unit i of a map sees input pixels "
          "i*stride - padding ... i*stride - padding + field - 1 (each axis)")
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print("default: * marks the layers the figure script and the atlas show when --layers is left out")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, without the source line Python prints by default (``main`` sets it)."""
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``deconvnet`` command; returns the exit status. Warnings print as one line each while it runs."""
    with warnings.catch_warnings():  # restores Python's own warning display afterwards
        warnings.showwarning = _show_warning
        return _main(argv)


def _torchrun(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Under torchrun (``figures``, ``atlas``): join the process group for the run; ranks other than 0
    print nothing on stdout (rank 0 reports). Elsewhere: nothing."""
    stack = contextlib.ExitStack()
    if args.command not in ("figures", "atlas") or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return stack
    from .. import distributed

    args.device = distributed.init_from_env(args.device)
    stack.callback(distributed.shutdown)
    if not distributed.is_main():
        devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115 (the ExitStack closes it)
        stack.enter_context(contextlib.redirect_stdout(devnull))
    return stack


def _errors() -> tuple[type[BaseException], ...]:
    """The exceptions a command reports as one line: bad values, unreadable files, weights that cannot be had
    (the toolkit's own classes only where their modules were imported: ``--help`` imports none)."""
    own = [getattr(sys.modules.get(module), name, None) for module, name in
           (("deconvnet.models.weights", "WeightsError"), ("deconvnet.images", "ImageReadError"))]
    return (UsageError, ValueError, TypeError, FileNotFoundError, MemoryError, *(c for c in own if c is not None))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "arch", None) is not None and args.command != "evolution":  # evolution: also democnn
            args.arch = check_arch(args.arch)
        with _torchrun(args):
            {"project": cmd_project, "figures": cmd_figures, "atlas": cmd_atlas, "layers": cmd_layers,
             "evolution": cmd_evolution, "correspondence": cmd_correspondence,
             "synthesize": cmd_synthesize}[args.command](args)
    except Exception as err:
        if not isinstance(err, _errors()) and not isinstance(err, OSError):
            raise
        if isinstance(err, _errors()):
            print(f"deconvnet: error: {err}", file=sys.stderr)
            return 2
        # an OSError: unwritable or full disk, a file where a folder is needed, ...
        where = f" '{err.filename}'" if getattr(err, "filename", None) else ""
        print(f"deconvnet: error: cannot use{where}: {err.strerror or err}. Hint: check the path, its permissions "
              "and the free disk space", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print("deconvnet: interrupted" + ("; the scan's progress is saved" if getattr(err, "saved", False) else ""),
              file=sys.stderr)
        terminated = getattr(sys.modules.get("deconvnet.scan"), "Terminated", ())
        return 143 if terminated and isinstance(err, terminated) else 130
    return 0
