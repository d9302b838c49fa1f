"""Display of images and projections.

Display scaling (the paper gives none: "colour contrast is artificially enhanced") is this toolkit's
documented choice, one default everywhere (``show``, the ``project`` command, Figure 2, the analyses):

- ``"percentile"`` (default): per projection, zero is mid-gray and ``v / (2 m)`` is added, where ``m`` is
  the 99th percentile of ``|v|`` over the projection's *support* (the pixels where any channel is
  nonzero), clipped to [0, 1]. A few strong pixels no longer darken everything else to gray, and the
  zeros outside a unit's receptive field do not change the scale (a projection looks the same on the
  whole image and zoomed to its box).
- ``"symmetric"``: ``0.5 + v / (2 max|v|)`` over all three channels: nothing is clipped, the sign of every
  value and the colour balance between channels are kept; faint where a few pixels dominate.
- ``"minmax"``: per projection, ``(v - min) / (max - min)``.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence

import numpy as np
import torch

from .engine.rules import RULES

SCALINGS = ("percentile", "symmetric", "minmax")
DEFAULT_SCALING = "percentile"
#: the percentile of |v| over the support that maps to black/white in ``"percentile"`` scaling
PERCENTILE = 99.0


def scale_for_display(v: torch.Tensor | np.ndarray, scaling: str = DEFAULT_SCALING) -> np.ndarray:
    """A (3, H, W) or (H, W, 3) signed image -> (H, W, 3) float array in [0, 1] (see module docstring)."""
    a = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
        a = a.transpose(1, 2, 0)
    if scaling == "symmetric":
        m = np.abs(a).max()
        return 0.5 + a / (2 * m) if m > 0 else np.full_like(a, 0.5)
    if scaling == "percentile":
        support = np.abs(a).max(axis=-1) > 0
        m = np.percentile(np.abs(a[support]), PERCENTILE) if support.any() else 0.0
        return np.clip(0.5 + a / (2 * m), 0, 1) if m > 0 else np.full_like(a, 0.5)
    if scaling == "minmax":
        lo, hi = a.min(), a.max()
        return (a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5)
    raise ValueError(f"unknown scaling '{scaling}'. Hint: one of {', '.join(SCALINGS)}")


def describe_scaling(scaling: str) -> str:
    """A few words for a figure's footer."""
    return {
        "percentile": f"per-projection scaling to the {PERCENTILE:g}th percentile of |v| on its support, clipped; zero "
                      "= gray",
        "symmetric": "per-projection symmetric scaling to max |v|; zero = gray",
        "minmax": "per-projection min-max scaling",
    }[scaling]


def image_array(rgb01: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB tensor in [0, 1] -> (H, W, 3) array."""
    return rgb01.detach().cpu().double().clamp(0, 1).permute(1, 2, 0).numpy()


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def crop_box(t: torch.Tensor, box: Sequence[int], fill: float) -> torch.Tensor:
    """Crop (C, H, W) to an unclipped box ``(top, left, bottom, right)``, ``fill`` outside the image."""
    top, left, bottom, right = (int(v) for v in box)
    h, w = t.shape[-2:]
    pad = (max(0, -left), max(0, right - w), max(0, -top), max(0, bottom - h))
    t = torch.nn.functional.pad(t, pad, value=fill)
    top, left = top + pad[2], left + pad[0]
    return t[:, top : top + (bottom - int(box[0])), left : left + (right - int(box[1]))]


def draw_box(ax, box: Sequence[int], color: str = "#ffd400") -> None:
    """Outline a pixel box ``(top, left, bottom, right)`` on an image axis (black under colour: visible
    on light and dark images alike); the part outside the image is clipped by the axis."""
    from matplotlib.patches import Rectangle

    top, left, bottom, right = (int(v) for v in box)
    for width, c in ((3.2, "black"), (1.6, color)):
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, lw=width, ec=c))


def where(p, index: int = 0) -> str:
    """Where the projected unit is, in feature-map units and in input pixels, as one line."""
    row, col = (int(v) for v in p.position[index])
    h, w = p.map_size
    text = f"unit ({row}, {col}) of the {h}x{w} map"
    if p.box is not None:
        top, left, bottom, right = (int(v) for v in p.box[index])
        text += f", receptive field rows {top}..{bottom - 1}, cols {left}..{right - 1} ({bottom - top} px)"
    return text


def display_channels(p, index: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The image (3, H, W) in [0, 1] and the projection (3, H, W) of a ``Projection`` as drawn, and a note.

    An RGB model's are its own; a grayscale model's single channel is drawn in gray (the note says so). A
    model of other channels (C != 1, 3) has no colour image: the input is drawn as the mean of its channels
    and the projection as the sum of its C channels (each pixel's total signal), in gray, and the note says so.
    """
    x, proj = p.input[index].detach().cpu(), p.projection_rgb()[index].detach().cpu()
    c = x.shape[0]
    if c == p.preprocessing.channels:
        image = p.image_rgb()[index].detach().cpu()
        note = "" if c == 3 else "grayscale model: input and projection in gray"
    else:
        m = x.mean(0, keepdim=True)
        lo, hi = float(m.min()), float(m.max())
        image = ((m - lo) / (hi - lo) if hi > lo else torch.full_like(m, 0.5)).expand(3, -1, -1)
        note = f"{c}-channel model: input drawn as the mean of its {c} channels, projection as their sum, in gray"
    if proj.shape[0] != 3:
        proj = proj.sum(0, keepdim=True).expand(3, -1, -1)
    return image, proj, note


def show(p, index: int = 0, axes: Sequence | None = None, scaling: str = DEFAULT_SCALING, title: bool = True,
         zoom: bool = True):
    """Draw an image beside its projection; for a unit, its receptive field and a zoom on it.

    For a point target with a receptive-field box (``Projection.box``), the box is outlined on the image
    and the projection, and two more panels show the image patch and the projection inside the box,
    enlarged (patch pixels outside the image light gray, projection zero outside it).

    Args:
        p: a ``Projection``.
        index: which image of the batch.
        axes: two axes (four with a zoom) to draw on; None creates a figure.
        scaling: display scaling of the projection (see module docstring).
        title: name layer, channel, activation and position above, the weights and scaling below.
        zoom: add the zoomed panels when there is a box.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    box = p.box[index] if p.box is not None else None
    zoom = zoom and box is not None and (axes is None or len(axes) >= 4)
    n = 4 if zoom else 2
    if axes is None:
        fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 4.2 if title else 3.4), layout="constrained")
    else:
        fig = axes[0].figure
    image, proj, note = display_channels(p, index)
    axes[0].imshow(image_array(image), interpolation="nearest")
    axes[1].imshow(scale_for_display(proj, scaling), interpolation="nearest")
    if box is not None:
        for ax in axes[:2]:
            draw_box(ax, box)
            ax.set_xlim(-0.5, image.shape[-1] - 0.5)
            ax.set_ylim(image.shape[-2] - 0.5, -0.5)
    if zoom:
        axes[2].imshow(image_array(crop_box(image, box, 0.88)), interpolation="nearest")
        axes[3].imshow(scale_for_display(crop_box(proj, box, 0.0), scaling), interpolation="nearest")
    for ax in axes[:n]:
        _blank(ax)
    if title:
        names = ["input", "projection", "receptive field, zoomed", "projection, zoomed"]
        for ax, name in zip(axes[:n], names, strict=False):  # strict=False: the panels shown
            ax.set_title(name, fontsize=10)
        fig.suptitle(f"{p.layer} channel {int(p.channel[index])}: activation {float(p.activation[index]):.3g} at "
                     f"{where(p, index)}", fontsize=10)
        import textwrap

        footer = textwrap.fill(f"{p.weights}. Projection: {describe_scaling(scaling)}." + (f" {note}." if note else ""),
                               40 * n)
        fig.supxlabel(footer, fontsize=7.5, color="0.3")
    return fig


def save_figure(fig, path, dpi: int = 150) -> None:
    """Save a figure atomically (format from the suffix: png, pdf, svg)."""
    from pathlib import Path

    from .io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")


# --- print layout ---------------------------------------------------------------------------------------
# The figures are drawn at the size they are printed (a page's text width, about 7 inches, or less), so
# that a font size set here is the size on paper: nothing below 7 pt.

PRINT_WIDTH = 7.0  # inches: a page's text width
DPI = 200  # saved resolution: a 224 px map drawn 1.1 inches wide keeps its pixels
TEXT_PT = 7.5  # panel titles, labels, legends, annotations
#: a method's colour in plots: the engine's rules by their analysis names (``engine.rules``), and Captum's
#: Deconvolution (the cross-check)
METHOD_COLORS = {**{r.key: r.color for r in RULES.values()}, "deconvolution": "C1"}

TICK_PT = 7.0  # tick labels, colorbars, footers: the smallest text of any figure
TITLE_PT = 9.0  # the figure's title


def wrap_to_width(text: str, width_in: float, fontsize: float) -> str:
    """Wrap each line of ``text`` so that it fits ``width_in`` inches at ``fontsize`` points (an average
    character of DejaVu Sans is about 0.55 em wide); a formula (``R_in = R_out·[x > 0]``) is not broken."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    glue = "\x00"

    def protect(line: str) -> str:  # spaces inside [...] and around "=" do not break
        line = re.sub(r"\[[^\]]*\]", lambda m: m.group().replace(" ", glue), line)
        return line.replace(" = ", f"{glue}={glue}")

    return "\n".join(textwrap.fill(protect(line), chars).replace(glue, " ") for line in text.splitlines())


def footer(fig, text: str, *, fontsize: float = TICK_PT) -> None:
    """The figure's caption at its bottom edge, wrapped to the figure's width (as ``supxlabel``, so that
    constrained layout makes room for it)."""
    fig.supxlabel(wrap_to_width(text, fig.get_figwidth() - 0.2, fontsize), fontsize=fontsize, color="0.25")


def title(fig, text: str, *, fontsize: float = TITLE_PT, legend: tuple[list, list] | None = None,
          ncol: int = 3) -> None:
    """The figure's title, wrapped to its width, and under it a legend of the whole figure.

    For a constrained layout both are put in a band at the top that the layout leaves free (matplotlib
    stacks an "outside" legend on top of a suptitle otherwise).
    """
    text = wrap_to_width(text, fig.get_figwidth() - 0.2, fontsize)
    if legend is None:
        fig.suptitle(text, fontsize=fontsize)
        return
    height = fig.get_figheight()
    head = text_height(text, fontsize) + 0.05
    rows = math.ceil(len(legend[1]) / ncol)
    band = head + rows * TEXT_PT * 1.5 / 72 + 0.08
    fig.text(0.5, 1 - 0.05 / height, text, ha="center", va="top", fontsize=fontsize)
    fig.legend(*legend, loc="upper center", bbox_to_anchor=(0.5, 1 - head / height), ncol=ncol, fontsize=TEXT_PT,
               frameon=False, borderaxespad=0.2, columnspacing=1.5)
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set"):
        engine.set(rect=(0, 0, 1, 1 - band / height))


def text_height(text: str, fontsize: float) -> float:
    """Inches taken by ``text`` (its lines at matplotlib's default line spacing, with a little air)."""
    return (text.count("\n") + 1) * fontsize * 1.25 / 72 + 0.06
