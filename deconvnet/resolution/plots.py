"""The restoration figures: every method's output beside the original, and the scores as bar charts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..plot import PRINT_WIDTH, TEXT_PT, TICK_PT, footer, title, wrap_to_width
from .compare import Comparison


def _busiest_window(x: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most gradient energy (detail to zoom on)."""
    g = x.double()
    e = (g[:, 1:, :-1] - g[:, :-1, :-1]).pow(2) + (g[:, :-1, 1:] - g[:, :-1, :-1]).pow(2)
    s = F.avg_pool2d(e.sum(0)[None, None], size, stride=max(1, size // 4))[0, 0]
    i = int(s.argmax())
    step = max(1, size // 4)
    return (i // s.shape[1]) * step, (i % s.shape[1]) * step


def _display(t: torch.Tensor, channel: int | None) -> np.ndarray:
    if channel is None:
        return t.detach().double().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return t[channel].detach().double().cpu().numpy()


def plot_restorations(comparison: Comparison, axes=None, *, channel: int | None = None, zoom: int | None = None):
    """Draw the original, the pooled map and the seven restorations, full size and zoomed.

    Photographs (3 channels, ``psnr_db`` set) are shown in colour, clamped to [0, 1]; feature maps one
    channel at a time (default: the channel with the most energy), all panels on the original's colour
    scale.

    Args:
        comparison: from ``compare_restorations``.
        axes: a (2, 9) array of matplotlib axes; None creates a figure.
        channel: the feature-map channel to show (ignored for photographs).
        zoom: side of the zoomed window in pixels (default: a quarter of the height, at least 8).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    cmp_ = comparison
    rgb = cmp_.original.shape[0] == 3 and next(iter(cmp_.restorations.values())).psnr_db is not None
    if rgb:
        channel = None
    elif channel is None:
        channel = int(cmp_.original.double().pow(2).flatten(1).sum(1).argmax())
    heads = None
    if axes is None:
        # printed at a page's width: the nine panels as a 3x3 grid, each the whole map beside its zoomed window
        fig = plt.figure(figsize=(PRINT_WIDTH, 5.3), layout="constrained")
        subs = fig.subfigures(3, 3, wspace=0.02, hspace=0.01).ravel()
        pairs = [sub.subplots(1, 2, gridspec_kw={"wspace": 0.04}) for sub in subs]
        axes = np.array([[a for a, _ in pairs], [z for _, z in pairs]], dtype=object)
        heads = list(subs)
    else:
        fig = np.asarray(axes).flat[0].figure
    axes = np.asarray(axes)
    if axes.shape != (2, 9):
        raise ValueError(f"axes must be a 2 x 9 array, got {axes.shape}")
    h, w = cmp_.original.shape[-2:]
    zoom = zoom or max(8, (h // 7) // 2 * 2)
    top, left = _busiest_window(cmp_.original if rgb else cmp_.original[channel : channel + 1], zoom)
    top, left = top - top % 2, left - left % 2  # on the pooling grid, so the pooled panel zooms alike
    ref = cmp_.original if rgb else cmp_.original[channel]
    lims = (0.0, 1.0) if rgb else (float(ref.min()), float(ref.max()))
    kw = {} if rgb else {"cmap": "magma", "vmin": lims[0], "vmax": lims[1]}
    panels = [(f"original ({h}x{w})", cmp_.original, None), (f"max-pooled 2x2 ({h // 2}x{w // 2})", cmp_.pooled, None)]
    for r in cmp_.restorations.values():
        if r.psnr_db is not None:
            score = f"PSNR {r.psnr_db:.2f} dB, corr {r.correlation:.3f}"
        else:
            score = f"corr {r.correlation:.3f}, MSE {r.mse:.3g}"
        panels.append((f"({'abcdefg'[len(panels) - 2]}) {' '.join(r.label.split())}", r.restored, score))
    for col, (head, t, score) in enumerate(panels):
        img = _display(t, channel)
        scale = 2 if t.shape[-1] * 2 == w else 1  # the pooled map is half size: zoom on its half window
        ax_full, ax_zoom = axes[0, col], axes[1, col]
        ax_full.imshow(img, interpolation="nearest", **kw)
        ax_full.add_patch(patches.Rectangle((left / scale - 0.5, top / scale - 0.5), zoom / scale, zoom / scale,
                                            fill=False, edgecolor="cyan", linewidth=1))
        zt, zl, zs = top // scale, left // scale, zoom // scale
        ax_zoom.imshow(img[zt : zt + zs, zl : zl + zs], interpolation="nearest", **kw)
        if heads is not None:  # the title and the score span the pair
            heads[col].suptitle(head, fontsize=TEXT_PT)
            heads[col].supxlabel(score or " ", fontsize=TICK_PT)
        else:
            ax_full.set_title(head, fontsize=TEXT_PT)
            if score:
                ax_zoom.set_xlabel(score, fontsize=TICK_PT)
        for ax in (ax_full, ax_zoom):
            ax.set_xticks([])
            ax.set_yticks([])
    what = "" if rgb else f", channel {channel} of {cmp_.original.shape[0]}"
    title(fig, f"Restoring the resolution of {cmp_.signal}{what} after 2x2 max-pooling")
    footer(fig, f"Each panel: the whole map and, right, its cyan window ({zoom}x{zoom} px at row {top}, column "
                f"{left}) enlarged. Trained layers: {cmp_.steps} Adam steps, fitted on {cmp_.trained_on}; (f) starts "
                f"from (e), (g) from (b). Scores against the original, unclamped outputs.\n{cmp_.weights}")
    return fig


def plot_scores(comparisons: Sequence[Comparison], axes=None):
    """Bar charts of the table: PSNR for photographs, correlation for feature maps, one axis each.

    Args:
        comparisons: from ``compare_restorations``.
        axes: one matplotlib axis per comparison; None creates a figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(comparisons)
    if axes is None:
        # printed at a page's width: one row of bar charts, the method names once, on the left
        fig, axes = plt.subplots(1, n, figsize=(PRINT_WIDTH, 3.3), layout="constrained", squeeze=False,
                                 gridspec_kw={"width_ratios": [1.6] + [1] * (n - 1)})
        axes = axes[0]
    else:
        fig = np.asarray(axes).flat[0].figure
    axes = list(np.asarray(axes).flat)
    if len(axes) != n:
        raise ValueError(f"need {n} axes, got {len(axes)}")
    colors = {"unpool": "tab:red", "nearest": "tab:orange", "bilinear": "tab:blue", "bicubic": "tab:cyan",
              "tconv_bilinear": "tab:green", "tconv_trained": "darkgreen", "resize_conv_trained": "tab:purple"}
    for i, (ax, c) in enumerate(zip(axes, comparisons, strict=True)):
        rs = list(c.restorations.values())
        use_psnr = all(r.psnr_db is not None for r in rs)
        vals = [r.psnr_db if use_psnr else r.correlation for r in rs]
        ys = np.arange(len(rs))[::-1]
        ax.barh(ys, vals, color=[colors.get(r.method, "gray") for r in rs])
        for y, v in zip(ys, vals, strict=True):
            ax.text(v, y, f" {v:.1f}" if use_psnr else f" {v:.2f}", va="center", fontsize=TICK_PT)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"({'abcdefg'[k]}) " + " ".join(r.label.split()) for k, r in enumerate(rs)]
                           if i == 0 else [f"({'abcdefg'[k]})" for k in range(len(rs))], fontsize=TICK_PT)
        xlabel = "PSNR (dB), higher\nis better" if use_psnr else "correlation with\nthe original"
        ax.set_xlabel(xlabel, fontsize=TEXT_PT)
        lo = min(vals)
        ax.set_xlim(min(0, lo) if not use_psnr else max(0, lo - 3), max(vals) * 1.25 if use_psnr else 1.4)
        ax.set_title(wrap_to_width(c.signal, 1.3, TEXT_PT), fontsize=TEXT_PT)
        ax.tick_params(labelsize=TICK_PT)
    title(fig, "Restoring resolution after 2x2 max-pooling: scores")
    footer(fig, "\n".join(sorted({c.weights for c in comparisons})))
    return fig
