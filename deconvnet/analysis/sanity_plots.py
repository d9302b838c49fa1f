"""The figures of the sanity checks: the randomisation curves and maps (``randomisation``), and the
neuron-selectivity maps (``selectivity``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..models import Net
from ..plot import METHOD_COLORS, image_array, scale_for_display
from ._util import TEXT_PT, TICK_PT, TITLE_PT, blank, tile_figure, wrap_to_width
from .methods import METHOD_TITLES
from .randomisation import SanityResult
from .selectivity import SELECTIVITY_KINDS, SelectivityResult
from .similarity import METRIC_LABELS, METRICS, normalized_abs


def _target_words(r: SanityResult, index: int | None = None) -> str:
    """The target of one image (for several images: its definition): layer, channel, position."""
    if index is None and r.input.shape[0] > 1:
        return r.definition
    i = index or 0
    layer, ch = r.target.layer, int(r.channel[i])
    pre = " (before its ReLU)" if "before its ReLU" in r.definition else ""
    if "class score" in r.definition:
        return f"the class score {layer}[{ch}]"
    if not r.spatial:
        return f"{layer}{pre} unit {ch}"
    pos = r.target.position
    if isinstance(pos, str) and pos == "all":
        return f"{layer}{pre} channel {ch}, whole map"
    if isinstance(pos, torch.Tensor) and (pos.is_floating_point() or pos.dtype == torch.bool):
        return f"{layer}{pre} channel {ch}, mask"
    return f"{layer}{pre} channel {ch} at ({int(r.position[i, 0])}, {int(r.position[i, 1])})"


def _row_label(fig, ax, text: str) -> None:
    """A method's name at the left of a row of tiles, broken into two lines where the row is too short."""
    box = ax.get_position()
    if len(text) * 0.55 * TEXT_PT / 72 > box.height * fig.get_figheight():
        text = text.replace(" (", "\n(") if " (" in text else text.replace(" ", "\n", 1)
    fig.text(box.x0 - 0.02 / fig.get_figwidth(), (box.y0 + box.y1) / 2, text, rotation=90, ha="right", va="center",
             fontsize=TEXT_PT)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _unit_words(r: SanityResult, i: int) -> str:
    """What the target resolved to for image ``i``: ``class 281``, ``channel 155 at (4, 3)``."""
    ch = int(r.channel[i])
    if "class score" in r.definition:
        return f"class {ch}"
    if not r.spatial:
        return f"unit {ch}"
    pos = r.target.position
    if (isinstance(pos, str) and pos == "all"
            or isinstance(pos, torch.Tensor) and (pos.is_floating_point() or pos.dtype == torch.bool)):
        return f"channel {ch}"
    return f"channel {ch} at ({int(r.position[i, 0])}, {int(r.position[i, 1])})"


STEP_WORDS = {"cascading": "cascading: the layer named and every layer above it re-initialised",
              "independent": "independent: only the layer named re-initialised"}
ZERO_WHY = ("All zero: the map lost the whole signal. Gradient and guided backprop pass a signal only through "
            "ReLUs whose input is positive; with the re-initialised weights every path from the target to the "
            "pixels meets a ReLU that is off (for a ReLU or pool target, usually the target itself). No similarity "
            "is defined there.")


def plot_sanity_curves(results: Sequence[SanityResult], *, axes=None, metrics: Sequence[str] = METRICS):
    """Similarity to the original map against the randomisation step, as Adebayo et al.: one row per
    measure, one column per result (e.g. cascading, independent), one curve per method (mean over images,
    band: min to max over images). A cross below the axis marks a step where a method's map was all zero.

    Args:
        results: from ``sanity_check`` (e.g. the cascading and the independent test).
        axes: a (len(metrics), len(results)) array of axes; None creates a figure 7 inches wide.
        metrics: which measures to draw.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    from ._util import PRINT_WIDTH, footer, title

    if axes is None:
        fig, axes = plt.subplots(len(metrics), len(results), figsize=(PRINT_WIDTH, 1.35 * len(metrics) + 2.2),
                                 squeeze=False, sharex="col", layout="constrained")
    else:
        axes = np.asarray(axes).reshape(len(metrics), len(results))
        fig = axes[0, 0].figure
    any_zero = False
    for c, r in enumerate(results):
        xs = np.arange(len(r.steps))
        for row, k in enumerate(metrics):
            ax = axes[row, c]
            for m, per in r.scores.items():
                v = per[k]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a step where every map vanished has no mean: a gap
                    mean = np.nanmean(v, axis=1)
                ax.plot(xs, mean, "o-", ms=2.5, lw=1.2, color=METHOD_COLORS.get(m), label=METHOD_TITLES[m])
                if v.shape[1] > 1 and np.isfinite(v).any():
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # all-NaN steps stay gaps
                        ax.fill_between(xs, np.nanmin(v, 1), np.nanmax(v, 1), color=METHOD_COLORS.get(m),
                                        alpha=0.15, lw=0)
                gone = r.zero[m].all(1)
                if gone.any():  # the map vanished for every image: no measure exists, mark it instead of a value
                    any_zero = True
                    ax.plot(xs[gone], np.full(gone.sum(), -0.18 if k != "spearman" else -0.9), "x", ms=5, mew=1.3,
                            color=METHOD_COLORS.get(m), label=f"{METHOD_TITLES[m]}: map all zero")
            ax.axhline(0, color="0.7", lw=0.6)
            ax.set_ylim(-1.05 if k == "spearman" else -0.25, 1.05)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=TICK_PT, pad=1.5)
            ax.set_xticks(xs)
            if row == len(metrics) - 1:
                ax.set_xticklabels(r.steps, rotation=90, fontsize=TICK_PT)
                ax.set_xlabel(f"last layer re-initialised ({r.mode})", fontsize=TEXT_PT)
            else:
                ax.tick_params(labelbottom=False)
            if row == 0:
                ax.set_title(f"{r.mode.capitalize()} randomisation", fontsize=TEXT_PT + 0.5)
            if c == 0:
                ax.set_ylabel(METRIC_LABELS[k].replace(" corr.", "\ncorr."), fontsize=TEXT_PT)
            else:
                ax.tick_params(labelleft=False)
    handles: dict = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    r0 = results[0]
    n, h, w = r0.input.shape[0], r0.input.shape[-2], r0.input.shape[-1]
    title(fig, f"Parameter-randomisation test (Adebayo et al. 2018): similarity of each map to the map of the "
               f"unchanged model; {n} image{'s' if n > 1 else ''} of {h}x{w} px, mean"
               + (" and min-max band" if n > 1 else ""),
          legend=(list(handles.values()), list(handles.keys())), ncol=3)
    units = "; ".join(_unit_words(r0, i) for i in range(n))
    footer(fig, f"Target: {r0.definition} ({'per image: ' if n > 1 else ''}{units}), the same at every step. "
                + _sentence("; ".join(STEP_WORDS[r.mode] for r in results)) + " (He-normal weights, zero biases). "
                + (ZERO_WHY + " " if any_zero else "")
                + f"\n{r0.weights}")
    return fig


def plot_sanity_maps(result: SanityResult, net: Net, *, index: int = 0, axes=None, max_cols: int = 8):
    """The maps themselves along the randomisation, as Adebayo et al.'s Fig. 2: the input, then one column
    per step, one row per method; the steps wrap into blocks of at most ``max_cols`` columns, so that the
    figure fits a page.

    Shown as the measures see them, |sum over colour channels|, each map clipped at its 99.5th percentile
    for display (a few strong pixels would otherwise leave the rest black). A map that is all zero is
    labelled so, and the caption says why.

    Args:
        result: from ``sanity_check``.
        net: the model (for display of the input).
        index: which image of the batch.
        axes: a (blocks x methods, columns) array of axes with room for the input and every step; None
            creates a figure 7 inches wide.
        max_cols: the most tiles in a row.

    Returns:
        The matplotlib figure.
    """
    from ._util import PRINT_WIDTH

    methods = list(result.maps)
    slots = 1 + len(result.steps)  # the input, then one map per step
    zero_steps = {m: [s for j, s in enumerate(result.steps) if result.zero[m][j, index]] for m in methods}
    any_zero = any(zero_steps.values())
    suptitle = (f"{result.mode.capitalize()} randomisation (Adebayo et al. 2018), from the top layer down: "
                f"maps of {_target_words(result, index)}")
    caption = (f"Columns: the last layer re-initialised; {STEP_WORDS[result.mode]} (He-normal weights, zero biases). "
               f"Target: {result.definition}; the same unit, and the same unit seed, at every step. "
               "|map| summed over colour, each clipped at its 99.5th percentile."
               + (f" {ZERO_WHY}" if any_zero else "") + f"\n{result.weights}")
    if axes is None:
        blocks = math.ceil(slots / max_cols)
        cols = math.ceil(slots / blocks)
        left, wgap = 0.3, 0.04
        tile = min(1.3, (PRINT_WIDTH - left - 0.05 - (cols - 1) * wgap) / cols)
        gaps = [0.3 if (i + 1) % len(methods) == 0 else 0.04 for i in range(blocks * len(methods) - 1)]
        fig, axes = tile_figure(blocks * len(methods), cols, tile, suptitle=suptitle, caption=caption, left=left,
                                header=0.2, row_gaps=gaps, wgap=wgap)
    else:
        axes = np.asarray(axes)
        axes = axes.reshape(-1, axes.shape[-1]) if axes.ndim > 1 else axes.reshape(len(methods), -1)
        cols = axes.shape[1]
        blocks = axes.shape[0] // len(methods)
        if blocks * cols < slots or axes.shape[0] % len(methods):
            raise ValueError(f"{axes.shape} axes cannot hold the input and {len(result.steps)} steps for "
                             f"{len(methods)} methods. Hint: pass (blocks x {len(methods)}, columns) axes with "
                             f"blocks x columns >= {slots}")
        fig = axes[0, 0].figure
        fig.suptitle(suptitle, fontsize=TITLE_PT)
        fig.supxlabel(wrap_to_width(caption, fig.get_figwidth() - 0.2, TICK_PT), fontsize=TICK_PT, color="0.25")
    image = image_array(net.deprocess(result.input[index : index + 1])[0])
    for k in range(blocks * cols):
        block, col = divmod(k, cols)
        for i, m in enumerate(methods):
            ax = axes[block * len(methods) + i, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0 and i == 0:
                ax.imshow(image)
                ax.set_title("input", fontsize=TEXT_PT, pad=2)
                continue
            if k == 0 or k >= slots:  # below the input, and after the last step: nothing to show
                ax.set_axis_off()
                continue
            j = k - 1
            a = normalized_abs(result.maps[m][j, index])
            top = np.percentile(a, 99.5) if a.any() else 1.0
            ax.imshow(np.clip(a / (top if top > 0 else 1.0), 0, 1), cmap="gray", vmin=0, vmax=1)
            if result.zero[m][j, index]:
                ax.text(0.5, 0.5, "all zero", color="w", ha="center", va="center", fontsize=TEXT_PT,
                        transform=ax.transAxes)
            if i == 0:
                ax.set_title(result.steps[j], fontsize=TEXT_PT, pad=2)
    for block in range(blocks):  # method names at the left margin of every row
        for i, m in enumerate(methods):
            _row_label(fig, axes[block * len(methods) + i, 0], METHOD_TITLES[m])
    return fig



def plot_selectivity(result: SelectivityResult, net: Net, *, index: int = 0, axes=None, scaling: str = "percentile"):
    """One row per method: the maps of the max channel, a random channel and a random vector, each titled
    with its SSIM and Spearman (abs) to the max-channel map, averaged over the draws; the input (with the
    location's receptive field) once, at the top left.

    The draw shown is the first whose maps are non-zero for every method: a random channel that is
    inactive at the location (its ReLU off) gives the gradient and guided backprop nothing to carry, their
    map is all zero and has no similarity. The caption says how many draws that left out.

    Args:
        result: from ``neuron_selectivity``.
        net: the model (for display of the input).
        index: which image of the batch.
        axes: a (methods, 4) array of axes; None creates a figure sized for print.
        scaling: display scaling of the signed maps.

    Returns:
        The matplotlib figure.
    """
    from matplotlib.patches import Rectangle

    from ..engine import receptive_field

    methods = list(result.maps)
    row_, col_ = (int(v) for v in result.position[index])
    n = result.channels_random.shape[0]

    def alive(m: str, kind: str, d: int) -> bool:
        return bool(result.maps[m][kind][d, index].abs().max() > 0)

    shown = {kind: next((d for d in range(result.maps[methods[0]][kind].shape[0])
                         if all(alive(m, kind, d) for m in methods)), 0)
             for kind in SELECTIVITY_KINDS}
    dead = {(m, kind): sum(not alive(m, kind, d) for d in range(result.maps[m][kind].shape[0]))
            for m in methods for kind in SELECTIVITY_KINDS[1:]}
    suptitle = (f"Neuron selectivity (Mahendran & Vedaldi 2016): {result.layer} at ({row_}, {col_}); "
                f"similarity to the max-channel map" + (f", mean of {n} draws" if n > 1 else ""))
    zero_note = ""
    if any(dead.values()):
        counts = "; ".join(f"{METHOD_TITLES[m]}, {kind}: {k} of {n}" for (m, kind), k in dead.items() if k)
        zero_note = (" A random channel inactive at this location (ReLU off) gives gradient and guided backprop "
                     f"nothing to carry: their map is all zero and has no similarity ({counts} draws); the means "
                     "are over the other draws, and the draw shown is the first whose maps are all non-zero.")
    caption = (f"Unit seeds at one location (1 on a channel, or |randn| over all channels), carried down by each "
               f"method; zero = gray ({scaling} scaling). Yellow box: the receptive field of the location. "
               f"\u03c1|\u00b7|: Spearman rank correlation of |map|.{zero_note}\n{result.weights}")
    if axes is None:
        fig, axes = tile_figure(len(methods), 4, 1.3, suptitle=suptitle, caption=caption, left=0.3, header=0.3,
                                row_gaps=[0.32] * (len(methods) - 1))
    else:
        axes = np.asarray(axes).reshape(len(methods), 4)
        fig = axes[0, 0].figure
        fig.suptitle(suptitle, fontsize=TITLE_PT)
        fig.supxlabel(caption, fontsize=TICK_PT, color="0.25")
    image = image_array(net.deprocess(result.input[index : index + 1])[0])
    top, left, bottom, right = receptive_field(net, result.layer).box(row_, col_, image.shape[:2])
    for i, m in enumerate(methods):
        if i == 0:
            axes[0, 0].imshow(image)
            axes[0, 0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                           ec="yellow", lw=1.0))
            axes[0, 0].set_title("input", fontsize=TEXT_PT, pad=2)
            blank(axes[0, 0])
        else:
            axes[i, 0].set_axis_off()
        for j, kind in enumerate(SELECTIVITY_KINDS, start=1):
            d = shown[kind]
            rgb = net.preprocessing.to_rgb_order(result.maps[m][kind][d, index : index + 1])[0]
            axes[i, j].imshow(scale_for_display(rgb, scaling))
            if not alive(m, kind, d):
                axes[i, j].text(0.5, 0.5, "all zero", ha="center", va="center", fontsize=TEXT_PT,
                                transform=axes[i, j].transAxes)
            what = {"max channel": f"max channel {int(result.channel_max[index])}",
                    "random channel": f"random channel {int(result.channels_random[d, index])}",
                    "random vector": "random vector |randn|"}[kind]
            if kind != "max channel":
                per = result.scores[m][f"max channel vs {kind}"]
                if np.isfinite(per["ssim"][:, index]).any():
                    what += (f"\nSSIM {np.nanmean(per['ssim'][:, index]):.2f}, "
                             f"\u03c1|\u00b7| {np.nanmean(per['spearman_abs'][:, index]):.2f}")
                else:
                    what += "\nno similarity (all zero)"
            axes[i, j].set_title(what, fontsize=TEXT_PT, pad=2)
            blank(axes[i, j])
        _row_label(fig, axes[i, 0], METHOD_TITLES[m])
    return fig
