"""The ``evolution`` (Fig. 4) and ``correspondence`` (Fig. 8, Table 1) commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..constants import DEFAULT_SIZE
from .common import (
    ARCH_HELP,
    DEVICE_HELP,
    EXTEND_HELP,
    FIGURE_SUFFIXES,
    SCALINGS,
    UsageError,
    _check_device,
    _load_net,
    add_model_options,
    check_arch,
    check_counts,
    check_data_folder,
    check_data_options,
    check_layer_names,
    check_output_file,
    resolve_device,
)


def _add_evolution_parser(sub) -> None:
    e = sub.add_parser("evolution", help="Fig. 4: features across training checkpoints (default: a demo CNN trained "
                                         "here)")
    e.add_argument("--checkpoints", default=None, help="comma-separated state_dict files in training order; default: "
                   "train the offline demo CNN and use its checkpoints")
    e.add_argument("--arch", default=None, metavar="ARCH", help=f"the checkpoints' architecture: {DEMO_ARCH_NAME} (the "
                   "demo CNN) or " + ARCH_HELP)
    e.add_argument("--labels", default=None, help="comma-separated column titles, one per checkpoint (default: file "
                                                  "names)")
    e.add_argument("--layers", default=None, help="comma-separated layers (default: relu1,relu2,relu3 for the demo, "
                                                  "else the "
                   "last conv of each block)")
    e.add_argument("--features", type=int, default=4, help="feature maps per layer")
    e.add_argument("--k", type=int, default=9, help="top activations per feature map (the overlap is measured on them)")
    e.add_argument("--select", default="random", choices=("random", "strongest"), help="which feature maps (chosen on "
                                                                                       "the last checkpoint)")
    e.add_argument("--seed", type=int, default=0, help="seed of the feature selection and of the demo's training")
    e.add_argument("--scaling", default="percentile", choices=SCALINGS,
                   help="display scaling of the projections")
    e.add_argument("--data", default=None, help="a folder of images (recursive); default: the offline demo collection")
    e.add_argument("--resize", type=int, default=256, help="shorter side after resizing (folders)")
    e.add_argument("--crop", type=int, default=None, help="side of the center crop fed to the model (default "
                                                          f"{DEFAULT_SIZE}; the demo CNN: 64)")
    e.add_argument("--limit", type=int, default=None, help="scan only the first N images")
    e.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--out", type=Path, default=Path("figures/evolution.png"), help="output figure "
                                                                                   f"({', '.join(FIGURE_SUFFIXES)}); "
                   "the sidecar is OUT.json, the scans (and the demo's checkpoints) go beside it")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--extend", action="store_true", help=EXTEND_HELP)


DEMO_ARCH_NAME = "democnn"


def cmd_evolution(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..analysis.evolution import DEMO_LAYERS, DEMO_SIZE, evolution, train_demo, write_evolution
    from ..cache import default_cache_dir
    from ..data import Head, load_dataset
    from ..engine import default_layers

    if args.out.suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"--out '{args.out}' must end in {', '.join(FIGURE_SUFFIXES)}")
    check_counts(("--k", args.k, 1), ("--features", args.features, 1), ("--batch-size", args.batch_size, 1),
                 ("--resize", args.resize, 1), ("--crop", args.crop or 1, 1))
    check_data_options(args)
    checkpoints = (None if args.checkpoints is None
                   else [Path(c.strip()) for c in args.checkpoints.split(",") if c.strip()])
    if checkpoints is not None:
        if not checkpoints:
            raise UsageError("--checkpoints is empty. Hint: --checkpoints epoch1.pt,epoch5.pt,...")
        missing = [str(c) for c in checkpoints if not c.is_file()]
        if missing:
            raise UsageError(f"--checkpoints: file not found: '{missing[0]}'. Hint: comma-separated state_dict files")
        if args.arch is None:
            raise UsageError("--checkpoints needs --arch, the architecture they are state_dicts of. Hint: --arch "
                             "vgg16, "
                             f"resnet18, ... or {DEMO_ARCH_NAME}")
    if args.arch is not None and args.arch != DEMO_ARCH_NAME:
        check_arch(args.arch)
    labels = None if args.labels is None else [label.strip() for label in args.labels.split(",")]
    check_output_file(args.out)
    args.device = resolve_device(args.device)
    _check_device(args.device)
    t0 = time.perf_counter()
    demo = checkpoints is None
    arch = DEMO_ARCH_NAME if demo else args.arch
    if demo:
        training = train_demo(default_cache_dir() / "evolution_demo", seed=args.seed, progress=not args.quiet)
        print(f"demo CNN: {'reused' if training.reused else 'trained'} in {training.folder} ({training.seconds:.0f}s); "
              f"training accuracy per epoch {', '.join(f'{a:.2f}' for a in training.accuracy)}")
        checkpoints = training.checkpoints
        labels = labels or ["init" if e == 0 else f"epoch {e}" for e in training.epochs]
    if labels is not None and len(labels) != len(checkpoints):
        raise UsageError(f"--labels has {len(labels)} names for {len(checkpoints)} checkpoints. Hint: one per "
                         "checkpoint")
    from ..analysis.evolution import load_checkpoint

    labels = labels or [c.stem for c in checkpoints]
    # the first checkpoint, loaded once: its preprocessing makes the dataset, its layers are the default
    first = load_checkpoint(checkpoints[0], arch, device=args.device)
    crop = args.crop or (DEMO_SIZE if arch == DEMO_ARCH_NAME else DEFAULT_SIZE)
    data = None if args.data is None else str(Path(args.data).expanduser())
    dataset = load_dataset(data, preprocessing=first.preprocessing, resize=args.resize, crop=crop)
    if args.limit is not None and args.limit < len(dataset):
        dataset = Head(dataset, args.limit)
    print(f"data: {len(dataset)} images from {'the offline demo collection' if data is None else repr(data)}")
    layers = (None if args.layers is None
              else list(dict.fromkeys(layer.strip() for layer in args.layers.split(",") if layer.strip())))
    if layers is None:
        layers = list(DEMO_LAYERS) if arch == DEMO_ARCH_NAME else default_layers(first)
    checkpoints = [first, *checkpoints[1:]]
    if args.extend:  # every checkpoint projected with the declared rules
        checkpoints = [first, *(load_checkpoint(c, arch, device=args.device) for c in checkpoints[1:])]
        for net in checkpoints:
            net.extend = True
    result = evolution(checkpoints, dataset, layers, args.features, arch=arch, labels=labels, k=args.k,
                       select=args.select, seed=args.seed, cache=args.out.parent / "scans", batch_size=args.batch_size,
                       device=args.device, progress=not args.quiet)
    paths = write_evolution(result, args.out, scaling=args.scaling)
    for layer in result.layers:
        pairs = zip(result.labels, result.labels[1:], result.overlap[layer], strict=False)  # consecutive checkpoints
        print(f"{layer}: top-{args.k} overlap with the previous checkpoint " +
              ", ".join(f"{a}->{b} {v:.2f}" for a, b, v in pairs))
    for path in paths:
        print(f"wrote {path}")
    print(f"time {time.perf_counter() - t0:.1f}s")


def _add_correspondence_parser(sub) -> None:
    c = sub.add_parser("correspondence", help="Fig. 8 / Table 1: occlude the same part in several images, score per "
                                              "layer")
    c.add_argument("--data", default=None, help="a folder of images; the names in --boxes are paths relative to it")
    c.add_argument("--boxes", type=Path, default=None, help="a JSON of part boxes, {\"images\": {name: {part: [top, "
                                                            "left, "
                   "bottom, right], ..., \"object\": [...]}}} in each image's pixels; default: the bundled faces "
                   "(deconvnet/analysis/parts.json)")
    add_model_options(c, "seed for --weights random and the random occluder positions")
    c.add_argument("--layers", default=None, help="comma-separated layers (default: relu5_3 and relu7 with a "
                                                  "classifier, "
                   "else relu3_3, relu4_3, relu5_3)")
    c.add_argument("--size", type=int, default=DEFAULT_SIZE, help="resize the shorter side and center-crop to SIZE "
                                                                  "(0: keep)")
    c.add_argument("--draws", type=int, default=10, help="random-position draws of the control")
    c.add_argument("--batch-size", type=int, default=8, help="occluded images per forward pass")
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument("--out", type=Path, default=Path("figures/correspondence.png"), help=f"output figure "
                   f"({', '.join(FIGURE_SUFFIXES)}); the numbers go to the same name with .json")
    c.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_correspondence(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..analysis.correspondence import correspondence, load_parts, write_correspondence
    from ..images import load_rgb

    if args.out.suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"--out '{args.out}' must end in {', '.join(FIGURE_SUFFIXES)}")
    check_counts(("--size", args.size, 0), ("--draws", args.draws, 1), ("--batch-size", args.batch_size, 1))
    check_data_folder(args.data)
    if args.data is not None and args.boxes is None:
        raise UsageError("--data needs --boxes, the JSON of part boxes of its images. Hint: see "
                         "deconvnet/analysis/parts.json")
    parts = load_parts(args.boxes, folder=None if args.data is None else Path(args.data).expanduser())
    for name in parts.images:  # every image readable before the model loads
        load_rgb(name)
    if args.layers is not None:
        check_layer_names(args.arch, [layer.strip() for layer in args.layers.split(",") if layer.strip()],
                          arch_kwargs=args.arch_kwargs)
    check_output_file(args.out)
    t0 = time.perf_counter()
    net = _load_net(args)
    print(f"model: {net.describe()}")
    layers = None if args.layers is None else [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    r = correspondence(net, parts.images, parts.parts, layers, objects=parts.objects, size=args.size or None,
                       draws=args.draws, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    print(f"{len(r.names)} images ({', '.join(r.names)}); mean feature sign change (lower = more consistent), "
          f"± std over image pairs (parts) or over {r.draws} draws (random):")
    print(r.table())
    for path in write_correspondence(r, args.out):
        print(f"wrote {path}")
    print(f"time {time.perf_counter() - t0:.1f}s")
