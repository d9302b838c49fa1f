"""How far the deconvnet's pictures can be trusted, and the paper's other experiments.

One module per kind of analysis (as Captum has a folder per kind of explanation):

=====================  ============================================================================
``methods``            deconvnet vs Captum's Deconvolution (cross-check), GuidedBackprop and Saliency
``sanity``             the sanity checks, gathered from ``randomisation`` (parameter randomisation,
                       Adebayo et al. 2018), ``selectivity`` (neuron selectivity, Mahendran & Vedaldi
                       2016) and ``sanity_plots`` (their figures)
``similarity``         the four similarity measures of the sanity checks
``invariance``         translation, scale, rotation (Zeiler & Fergus Fig. 5)
``occlusion``          occlusion sensitivity (Fig. 7)
``filters``            first-layer filters (Fig. 6)
``evolution``          features across training checkpoints (Fig. 4); its demo network and training in
                       ``training``, checkpoint files as nets in ``checkpoints``
``correspondence``     occluding the same part in several images (Fig. 8, Table 1); its part boxes in
                       ``part_boxes``
=====================  ============================================================================

``make_figures`` writes every figure of these analyses (PNG) and their numbers (JSON) for the figure
script; each ``figure_*`` function writes one analysis.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..constants import DEFAULT_SIZE
from ..engine import Target, default_layers
from ..io import write_json
from ..models import Net
from ..plot import save_figure
from ._util import DPI, jsonable, last_relu, output_layer, renamed_show_progress
from .correspondence import bundled_parts, correspondence, load_parts, plot_correspondence
from .evolution import demo_evolution, evolution, plot_evolution, train_demo
from .filters import filter_grid, first_conv, plot_first_layer_filters
from .invariance import apply_transform, default_ranges, invariance_curves, plot_invariance
from .methods import METHODS, backward_maps, compare_methods, functional_relus, plot_method_comparison
from .occlusion import captum_occlusion, occlusion_maps, plot_occlusion
from .sanity import (
    neuron_selectivity,
    parametrised_layers,
    plot_sanity_curves,
    plot_sanity_maps,
    plot_selectivity,
    randomisation_steps,
    randomized,
    sanity_check,
)
from .similarity import METRICS, compare_maps, hog_pearson, spearman, ssim

__all__ = [
    "FIGURES",
    "FigureSettings",
    "METHODS",
    "METRICS",
    "apply_transform",
    "backward_maps",
    "captum_occlusion",
    "compare_maps",
    "compare_methods",
    "correspondence",
    "bundled_parts",
    "demo_evolution",
    "evolution",
    "load_parts",
    "plot_correspondence",
    "plot_evolution",
    "train_demo",
    "default_ranges",
    "filter_grid",
    "first_conv",
    "functional_relus",
    "hog_pearson",
    "invariance_curves",
    "make_figures",
    "neuron_selectivity",
    "occlusion_maps",
    "parametrised_layers",
    "plot_first_layer_filters",
    "plot_invariance",
    "plot_method_comparison",
    "plot_occlusion",
    "plot_sanity_curves",
    "plot_sanity_maps",
    "plot_selectivity",
    "randomisation_steps",
    "randomized",
    "sanity_check",
    "spearman",
    "ssim",
]


@dataclass(frozen=True)
class FigureSettings:
    """Image sizes and loop lengths of the figures (``full()`` for the paper, ``quick()`` for tests)."""

    images: tuple[str, ...]
    method_images: int  # the first images of ``images`` in the method comparison (rows: images x targets)
    size: int
    sanity_size: int
    sanity_images: int
    sanity_steps: int | None  # None: every parametrised layer
    n_random: int
    transform_steps: int
    occluder: tuple[int, int] | None  # (size, stride); None: the default for the image size
    correspondence_size: int = DEFAULT_SIZE
    correspondence_draws: int = 5
    evolution_epochs: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 40)
    evolution_samples: int = 512  # training crops per epoch of the demo CNN
    evolution_images: int | None = None  # the first n of the demo collection (None: all 374)
    folder: str | None = None  # ``images`` are paths relative to this folder (None: bundled photographs or paths)
    boxes: str | None = None  # the part boxes (JSON) of the correspondence experiment (None: the bundled faces)

    def on_folder(self, folder: str | os.PathLike, boxes: str | os.PathLike | None = None) -> FigureSettings:
        """These settings on a folder of one's own: its first images (as many as ``images`` holds, in path
        order, readable ones only) for methods, sanity, invariance and occlusion; with ``boxes`` (a JSON of
        part boxes of images of the folder, ``analysis.load_parts``) for the correspondence too.

        Raises:
            ValueError: the folder holds no readable image.
        """
        from ..data import _find_images
        from ..images import ImageReadError, load_rgb

        root = Path(folder).expanduser()
        names: list[str] = []
        for path in _find_images(root):
            try:
                load_rgb(str(path))
            except ImageReadError:
                continue
            names.append(path.relative_to(root).as_posix())
            if len(names) == len(self.images):
                break
        if not names:
            raise ValueError(f"'{folder}' holds no readable image. Hint: a folder of .jpg or .png files")
        return dataclasses.replace(self, images=tuple(names), folder=str(root),
                                   boxes=None if boxes is None else str(boxes))

    def paths(self, names: Sequence[str]) -> list[str]:
        """Where the images ``names`` (some of ``images``) are read from."""
        return [n if self.folder is None else str(Path(self.folder) / n) for n in names]

    @classmethod
    def full(cls) -> FigureSettings:
        # the randomisation test runs 3 methods x (1 + 13..16 layers) x 2 modes: at 128 px it takes minutes
        # on a CPU, at 224 px four times that, for maps whose comparison does not need the larger size
        return cls(("chelsea", "astronaut", "coffee"), 2, DEFAULT_SIZE, 128, 2, None, 5, 13, None)

    @classmethod
    def quick(cls) -> FigureSettings:
        return cls(("chelsea", "astronaut"), 2, 64, 64, 1, 3, 1, 5, (16, 16), correspondence_size=64,
                   correspondence_draws=2, evolution_epochs=(0, 1, 3), evolution_samples=64, evolution_images=34)


def _inputs(net: Net, names: Sequence[str], size: int, s: FigureSettings | None = None) -> torch.Tensor:
    return torch.cat([net.preprocess(n, size=size, crop=size) for n in (s.paths(names) if s else names)])


def _write_json(path: Path, data: dict) -> Path:
    return write_json(jsonable(data), path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    save_figure(fig, path, dpi=DPI)
    plt.close(fig)
    return path


def method_targets(net: Net) -> list[Target]:
    """Targets for the comparison: for a VGG or AlexNet, the strongest unit of the ReLU before the middle pool
    (relu3_3 for VGG16) and of the last conv ReLU, the whole strongest map of the last pool; for a graph, the
    strongest unit of a middle stage and of the last stage (``engine.default_layers``: ResNet ``layer3``,
    ``layer4``) and the whole strongest map of the last stage; then the top class score where a classifier
    exists."""
    pools = net.pools()
    if pools:
        middle_pool = net.depth(pools[len(pools) // 2])
        relus = [n for n in net.layers if n.startswith("relu") and net.depth(n) < middle_pool]
        targets = [Target(max(relus, key=net.depth)), Target(last_relu(net)), Target(pools[-1], "max", "all")]
    else:
        stages = default_layers(net)
        middle = (stages[len(stages) // 2] if len(stages) // 2 < len(stages) - 1
                  else stages[-2] if len(stages) > 1 else None)
        # a two-stage model: its first and last stage (never the same target twice); one stage: that one
        targets = ([Target(middle)] if middle else []) + [Target(stages[-1]), Target(stages[-1], "max", "all")]
    if output_layer(net) is not None:
        targets.append(Target(output_layer(net), "max"))
    return targets


@renamed_show_progress
def figure_methods(out_dir: Path, net: Net, s: FigureSettings, progress: bool = True) -> list[Path]:
    """methods.png / methods.json: every method for several images and targets.

    The figure shows the deconvnet, guided backprop and the gradient, all from this toolkit's engine (chain or
    graph); Captum's Deconvolution, which computes the deconvnet's rule independently, is the cross-check in
    methods.json (its largest difference to ours, per row), not a column of identical pictures. Where the
    model rectifies with functions (GoogLeNet, DenseNet), which Captum's hooks miss, the check is skipped
    and methods.json says why.
    """
    names = s.images[: s.method_images]
    x = _inputs(net, names, s.size, s)
    hidden = functional_relus(net, x)  # Captum cannot see these: no cross-check where there are any
    methods = [m for m in METHODS if m != "deconvolution" or not hidden]
    results = [compare_methods(net, x, t, methods) for t in method_targets(net)]
    # rows image-major: all targets of the first image, then the next
    rows = []
    for b in range(x.shape[0]):
        for r in results:
            rows.append(type(r)(r.target, {m: v[b : b + 1] for m, v in r.maps.items()}, r.channel[b : b + 1],
                                r.activation[b : b + 1], r.position[b : b + 1], r.deconvolution_error[b : b + 1],
                                r.input[b : b + 1], r.weights, r.target_labels[b : b + 1]))
    fig = plot_method_comparison(rows, net)
    errors = [r.deconvolution_error[0] if r.deconvolution_error else None for r in rows]
    check = ({"max_relative_error": max(errors)} if not hidden else
             {"skipped": f"{hidden} rectifier calls of {net.arch}'s forward are functions (F.relu), which Captum's "
                         "module hooks do not see: its Deconvolution is not the deconvnet here "
                         "(tests/engine/test_rules.py)"})
    numbers = {"weights": net.describe(), "images": list(names), "size": s.size,
               "engine": "deconvnet.engine, every rule",
               "shown": [m for m in METHODS if m != "deconvolution"],
               "cross_check": {"what": "Captum Deconvolution vs deconvnet (ours): max |Captum - ours| / max |ours| "
                                       "per row",
                               **check},
               "rows": [{"image": names[k // len(results)], "target": " ".join(r.target_labels[0].split()),
                         "deconvolution_vs_ours_relative_error": errors[k],
                         "activation": float(r.activation[0])} for k, r in enumerate(rows)]}
    return [_save(fig, out_dir / "methods.png"), _write_json(out_dir / "methods.json", numbers)]


def _sanity_layers(net: Net, target: Target, steps: int | None) -> list[str] | None:
    if steps is None:
        return None
    top_down = parametrised_layers(net, target.layer)[::-1]
    idx = sorted({round(i * (len(top_down) - 1) / max(1, steps - 1)) for i in range(steps)})
    return [top_down[i] for i in idx]


@renamed_show_progress
def figure_sanity(out_dir: Path, net: Net, s: FigureSettings, progress: bool = True) -> list[Path]:
    """sanity_curves.png, sanity_maps.png, selectivity.png and sanity.json."""
    from .sanity import default_target

    names = s.images[: s.sanity_images]
    x = _inputs(net, names, s.sanity_size, s)
    target = default_target(net)
    layers = _sanity_layers(net, target, s.sanity_steps)
    results = [sanity_check(net, x, target, mode=mode, layers=layers, progress=progress)
               for mode in ("cascading", "independent")]
    sel = neuron_selectivity(net, x, methods=("deconvnet", "guided_backprop", "gradient"), n_random=s.n_random)
    paths = [
        _save(plot_sanity_curves(results), out_dir / "sanity_curves.png"),
        _save(plot_sanity_maps(results[0], net), out_dir / "sanity_maps.png"),
        _save(plot_selectivity(sel, net), out_dir / "selectivity.png"),
    ]
    numbers = {
        "weights": net.describe(), "images": list(names), "size": s.sanity_size, "target": target.layer,
        "target_definition": results[0].definition,
        "target_channel": results[0].channel, "target_position": results[0].position,
        **{r.mode: {"steps": r.steps, "mean_similarity": r.summary(),
                    "all_zero_maps": {m: z.sum(1) for m, z in r.zero.items()}} for r in results},
        "selectivity": {"layer": sel.layer, "position": sel.position, "channel_max": sel.channel_max,
                        "channels_random": sel.channels_random, "mean_similarity": sel.summary()},
    }
    paths.append(_write_json(out_dir / "sanity.json", numbers))
    return paths


@renamed_show_progress
def figure_invariance(out_dir: Path, net: Net, s: FigureSettings, progress: bool = True) -> list[Path]:
    """invariance.png / invariance.json."""
    x = _inputs(net, s.images, s.size, s)
    r = invariance_curves(net, x, ranges=default_ranges(s.size, s.transform_steps), names=s.images,
                          progress=progress)
    numbers = {"weights": net.describe(), "images": list(s.images), "size": s.size, "layers": r.layers,
               "classifier": r.classifier, "classes": r.classes, "class_labels": r.class_labels, **r.summary()}
    return [_save(plot_invariance(r, net), out_dir / "invariance.png"),
            _write_json(out_dir / "invariance.json", numbers)]


@renamed_show_progress
def figure_occlusion(out_dir: Path, net: Net, s: FigureSettings, progress: bool = True) -> list[Path]:
    """occlusion.png / occlusion.json."""
    x = _inputs(net, s.images, s.size, s)
    size, stride = s.occluder if s.occluder is not None else (None, None)
    # Captum's per-pixel Occlusion is a smoothed (d), not drawn: the tests check it against the grid instead
    r = occlusion_maps(net, x, size=size, stride=stride, names=s.images, captum=False, progress=progress)
    return [_save(plot_occlusion(r, net), out_dir / "occlusion.png"),
            _write_json(out_dir / "occlusion.json", r.summary())]


def figure_filters(out_dir: Path, net: Net, alexnet: Net | None = None) -> list[Path]:
    """filters.png: the first-layer filters of ``net`` (and of AlexNet when given).

    A net with random weights beside a trained one is left out (random filters show nothing; the caption
    says so): the trained net's filters are then shown twice, scaled per filter (their patterns) and with
    one scale for the layer (their relative strength: weak or dead filters fade to gray).
    """
    trained = net.provenance.get("weights") != "random"
    extra = [alexnet] if alexnet is not None else []
    left_out = [n for n in extra if trained and n.provenance.get("weights") == "random"]
    nets = [net] + ([] if left_out else extra)
    caption = " ".join(f"{n.arch} (the subject of Fig. 6) is left out: only random weights are available for it here."
                       for n in left_out)
    fig = plot_first_layer_filters(nets, normalise=("filter", "layer") if len(nets) == 1 else "filter", caption=caption)
    return [_save(fig, out_dir / "filters.png")]


@renamed_show_progress
def figure_evolution(out_dir: Path, s: FigureSettings, progress: bool = True) -> list[Path]:
    """evolution.png (Fig. 4) and its sidecar: the demo CNN trained from scratch (checkpoints and their scans
    kept in the cache, ``deconvnet.cache.default_cache_dir() / "evolution_demo"``), whatever the figure
    script's model is: its training has no checkpoints."""
    from ..cache import default_cache_dir
    from .evolution import demo_evolution, write_evolution

    result, training = demo_evolution(default_cache_dir() / "evolution_demo", epochs=s.evolution_epochs,
                                      samples_per_epoch=s.evolution_samples, n_images=s.evolution_images,
                                      progress=progress)
    return list(write_evolution(result, out_dir / "evolution.png",
                                extra={"training": {"config": training.config, "loss": training.loss,
                                                    "accuracy": training.accuracy,
                                                    "weight_change": training.weight_change}}))


@renamed_show_progress
def figure_correspondence(out_dir: Path, net: Net, s: FigureSettings, progress: bool = True) -> list[Path]:
    """correspondence.png / correspondence.json (Fig. 8, Table 1) on the bundled faces, or on the images and
    part boxes of ``s.boxes`` (``FigureSettings.on_folder``)."""
    from .correspondence import bundled_parts, correspondence, load_parts, write_correspondence

    parts = bundled_parts() if s.boxes is None else load_parts(s.boxes, folder=s.folder)
    r = correspondence(net, parts.images, parts.parts, objects=parts.objects, size=s.correspondence_size,
                       draws=s.correspondence_draws, progress=progress)
    return list(write_correspondence(r, out_dir / "correspondence.png"))


FIGURES = ("methods", "sanity", "invariance", "occlusion", "filters", "evolution", "correspondence")


@renamed_show_progress
def make_figures(
    out_dir: Path,
    net: Net,
    *,
    quick: bool = False,
    alexnet: Net | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    data: str | os.PathLike | None = None,
    boxes: str | os.PathLike | None = None,
) -> list[Path]:
    """Write the figures (PNG) and numbers (JSON) of the analyses into ``out_dir``.

    Args:
        out_dir: the folder (created if needed).
        net: the model, a chain (VGG, AlexNet) or a graph (ResNet, GoogLeNet, ...); class panels appear only if
            it has a classifier.
        quick: small images and short loops (tests, notebooks); the figures say what they show either way.
        alexnet: also draw AlexNet's first-layer filters.
        only: a subset of ``FIGURES`` (default: all of them but ``evolution`` and ``correspondence``, the paper's
            experiments that the figure script asks for by name: the first trains a demo CNN, whatever ``net`` is).
        progress: tqdm bars over the long loops.
        data: a folder of one's own images for methods, sanity, invariance and occlusion (its first few,
            ``FigureSettings.on_folder``; default: the bundled photographs).
        boxes: with ``data``, a JSON of part boxes of its images for the correspondence (default: the bundled
            faces).

    Returns:
        The paths written, in order.
    """
    only = list(only) if only is not None else [f for f in FIGURES if f not in ("evolution", "correspondence")]
    unknown = [o for o in only if o not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}. Hint: choose from {', '.join(FIGURES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = FigureSettings.quick() if quick else FigureSettings.full()
    if data is not None:
        s = s.on_folder(data, boxes)
    elif boxes is not None:
        raise ValueError("boxes needs data, the folder its image names are relative to")
    makers: dict[str, Callable[[], list[Path]]] = {
        "methods": lambda: figure_methods(out_dir, net, s, progress),
        "sanity": lambda: figure_sanity(out_dir, net, s, progress),
        "invariance": lambda: figure_invariance(out_dir, net, s, progress),
        "occlusion": lambda: figure_occlusion(out_dir, net, s, progress),
        "filters": lambda: figure_filters(out_dir, net, alexnet),
        "evolution": lambda: figure_evolution(out_dir, s, progress),
        "correspondence": lambda: figure_correspondence(out_dir, net, s, progress),
    }
    paths: list[Path] = []
    for name in FIGURES:
        if name in only:
            paths += makers[name]()
    return paths
