"""All figures and tables of the resolution study, for ``python -m deconvnet figures --only resolution``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import images
from ..constants import DEFAULT_SIZE
from ..engine import record
from ..models import Net
from ..plot import DPI, save_figure
from .checkerboard import CheckerboardStudy, checkerboard_study, plot_checkerboard
from .compare import Comparison, compare_restorations, random_crops
from .matrix import conv_matrix_example, plot_conv_matrix
from .plots import plot_restorations, plot_scores
from .stages import deconvnet_stages, plot_stages
from .tables import write_table


@dataclass(frozen=True)
class Settings:
    """What the figures are made from.

    Attributes:
        photo: the evaluated photograph (a bundled scikit-image name or a path).
        train_photos: the photographs the trained layers learn from (held out from ``photo``).
        size: photographs are resized and center-cropped to ``size`` x ``size``.
        layers: VGG layers whose feature maps are pooled and restored.
        steps: Adam steps of every trained layer.
        crops, crop_size: random crops per training signal (the layers are local; crops are cheaper).
        seeds: random initialisations averaged in the checkerboard study.
        stage_layer: the layer whose strongest unit is projected for the stage figure.
    """

    photo: str = "astronaut"
    train_photos: tuple[str, ...] = ("chelsea", "coffee", "rocket")
    size: int = DEFAULT_SIZE
    layers: tuple[str, ...] = ("relu1_2", "relu4_3")
    steps: int = 300
    crops: int = 8
    crop_size: int = 64
    seeds: int = 8
    stage_layer: str = "pool3"


def settings(quick: bool = False) -> Settings:
    """The full settings, or small ones that run in seconds (notebook tests, ``--quick``)."""
    if quick:
        return Settings(train_photos=("chelsea",), size=96, layers=("relu1_2", "relu4_3"), steps=60, crops=4,
                        crop_size=32, seeds=2, stage_layer="pool2")
    return Settings()


def photo_tensor(image: images.ImageLike, size: int) -> torch.Tensor:
    """A photograph (path, bundled name, PIL, array) resized and center-cropped: (3, size, size) in [0, 1]."""
    return images.pil_to_tensor01(images.resize_center_crop(images.load_rgb(image), size, size))


def feature_maps(net: Net, rgb01: torch.Tensor, layer: str) -> torch.Tensor:
    """The activations of ``layer`` (N, C, h, w) for RGB images (N, 3, H, W) in [0, 1]."""
    x = net.preprocessing.forward(rgb01.to(device=net.device, dtype=net.dtype))
    return record(net, x, [layer]).activations[layer].detach().float().cpu()


def _crop_size(h: int, want: int) -> int:
    c = min(h, want)
    return c - c % 2


def run_comparisons(net: Net, s: Settings) -> list[Comparison]:
    """The photograph and each feature layer, max-pooled and restored seven ways."""
    photo = photo_tensor(s.photo, s.size)
    train = torch.stack([photo_tensor(p, s.size) for p in s.train_photos])
    held_out = ", ".join(s.train_photos)
    out = [compare_restorations(
        photo, signal=f"{s.photo} (RGB)", train=random_crops(train, _crop_size(s.size, s.crop_size), s.crops),
        trained_on=f"{s.crops} crops of {_crop_size(s.size, s.crop_size)} px from each of {held_out}",
        steps=s.steps, peak=1.0, weights="no network: pixels of the photograph",
    )]
    for layer in s.layers:
        fm = feature_maps(net, torch.cat([photo[None], train]), layer)
        cs = _crop_size(fm.shape[-1], s.crop_size // 2)
        out.append(compare_restorations(
            fm[0], signal=f"{layer} of {s.photo}", train=random_crops(fm[1:], cs, s.crops // 2),
            trained_on=f"{s.crops // 2} crops of {cs} px of the {layer} maps of {held_out}",
            steps=s.steps, weights=net.describe(),
        ))
    return out


def run_checkerboard(s: Settings) -> CheckerboardStudy:
    """The checkerboard study on the photograph, the layers trained on the held-out photographs."""
    photo = photo_tensor(s.photo, s.size)
    train = torch.stack([photo_tensor(p, s.size) for p in s.train_photos])
    cs = _crop_size(s.size, s.crop_size)
    return checkerboard_study(
        photo, signal=s.photo, train=random_crops(train, cs, s.crops),
        trained_on=f"{s.crops} crops of {cs} px from each of {', '.join(s.train_photos)}",
        steps=s.steps, seeds=s.seeds,
    )


def make_figures(out_dir: Path, net: Net, *, quick: bool = False, fmt: str = "png") -> list[Path]:
    """Write every figure and table of the resolution study into ``out_dir``; return their paths.

    Figures (``fmt``: png, pdf or svg): ``resolution_conv_matrix``, ``resolution_restore_photo``,
    ``resolution_restore_<layer>`` per feature layer, ``resolution_scores``, ``resolution_checkerboard``,
    ``resolution_deconvnet_stages``. Tables (CSV and JSON): ``resolution_comparison``,
    ``resolution_checkerboard``.

    Args:
        out_dir: the folder (created if missing).
        net: the model whose feature maps and projection are shown (named in every figure).
        quick: small settings that run in seconds.
        fmt: the figures' file format.

    Returns:
        The paths written.
    """
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    s = settings(quick)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out_dir / f"{name}.{fmt}"
        save_figure(fig, path, dpi=DPI)  # the analyses' resolution: a 224 px map drawn 1.1 in wide keeps its pixels
        plt.close(fig)
        written.append(path)

    save(plot_conv_matrix(conv_matrix_example()), "resolution_conv_matrix")
    comparisons = run_comparisons(net, s)
    save(plot_restorations(comparisons[0]), "resolution_restore_photo")
    for layer, c in zip(s.layers, comparisons[1:], strict=True):
        save(plot_restorations(c), f"resolution_restore_{layer}")
    save(plot_scores(comparisons), "resolution_scores")
    written += write_table([r for c in comparisons for r in c.rows()], out_dir / "resolution_comparison")
    study = run_checkerboard(s)
    save(plot_checkerboard(study), "resolution_checkerboard")
    written += write_table(study.rows, out_dir / "resolution_checkerboard")
    x = net.preprocess(s.photo, size=s.size, crop=s.size)
    save(plot_stages(deconvnet_stages(net, x, s.stage_layer)), "resolution_deconvnet_stages")
    return written

