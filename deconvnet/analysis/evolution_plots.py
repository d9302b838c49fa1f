"""The Fig. 4 grid of ``evolution`` (``plot_evolution``), and the figure with its sidecar (``write_evolution``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..io import write_json
from ..plot import DEFAULT_SCALING, describe_scaling, scale_for_display
from ._util import PRINT_WIDTH, TEXT_PT, TICK_PT, TITLE_PT, jsonable, text_height, wrap_to_width

if TYPE_CHECKING:
    from .evolution import EvolutionResult


def plot_evolution(result: EvolutionResult, *, scaling: str = DEFAULT_SCALING, title: str | None = None,
                   caption: str | None = None, width: float = PRINT_WIDTH):
    """The Fig. 4 grid: a row per feature map (grouped by layer), a column per checkpoint, each cell the
    strongest projection beside its image patch; above each layer's rows, the top-k overlap with the
    previous checkpoint.

    Returns:
        A new matplotlib figure, ``width`` inches wide.
    """
    import matplotlib.pyplot as plt

    n_cols = len(result.labels)
    rows = [(layer, j) for layer in result.layers for j in range(len(result.channels[layer]))]
    left, right, cell_gap, pair_gap = 0.62, 0.05, 0.08, 0.015
    tile = (width - left - right - (n_cols - 1) * cell_gap - n_cols * pair_gap) / (2 * n_cols)
    band = TEXT_PT * 1.45 / 72  # the overlap line above each layer's block
    k = result.topk[0].k
    title = title or (f"{result.arch}: the strongest activation of {sum(len(c) for c in result.channels.values())} "
                      f"feature maps across the dataset at each of {n_cols} checkpoints, projected (left) beside its "
                      f"receptive-field patch (right)")
    caption = caption or (
        f"Each row: one feature map; each column: one checkpoint. Above each layer: J, the mean top-{k} overlap with "
        f"the previous checkpoint over all the layer's channels (Jaccard of the (image, position) sets; 1 = "
        f"unchanged). Projections: {describe_scaling(scaling)}; an empty cell: no positive activation. "
        f"Weights: {result.weights[-1]} (last column). {result.note}").strip()
    head = wrap_to_width(title, width - 0.2, TITLE_PT)
    foot = wrap_to_width(caption, width - 0.2, TICK_PT)
    header = TEXT_PT * 1.5 / 72
    top = text_height(head, TITLE_PT) + 0.06 + header
    bottom = text_height(foot, TICK_PT) + 0.06
    height = top + len(rows) * (tile + 0.03) + len(result.layers) * (band + 0.06) + bottom
    fig = plt.figure(figsize=(width, height))
    fig.text(0.5, 1 - 0.05 / height, head, ha="center", va="top", fontsize=TITLE_PT)
    fig.text(0.5, 0.04 / height, foot, ha="center", va="bottom", fontsize=TICK_PT, color="0.25")

    def x_of(col: int, which: int) -> float:
        return left + col * (2 * tile + pair_gap + cell_gap) + which * (tile + pair_gap)

    y = height - top
    for col, label in enumerate(result.labels):
        fig.text((x_of(col, 1) - pair_gap / 2) / width, (y + 0.04) / height, label, ha="center", va="bottom",
                 fontsize=TEXT_PT)
    for layer in result.layers:
        y -= band + 0.06
        fig.text(0.05 / width, (y + 0.03) / height, f"{layer} ({result.receptive[layer]} px)", ha="left",
                 va="bottom", fontsize=TEXT_PT, weight="bold")
        for col in range(1, n_cols):
            fig.text((x_of(col, 1) - pair_gap / 2) / width, (y + 0.03) / height,
                     f"J={result.overlap[layer][col - 1]:.2f}", ha="center", va="bottom", fontsize=TEXT_PT,
                     color="0.2")
        for j, c in enumerate(result.channels[layer]):
            y -= tile
            fig.text((left - 0.04) / width, (y + tile / 2) / height, f"ch {c}", ha="right", va="center",
                     fontsize=TEXT_PT)
            for col in range(n_cols):
                ft = result.tiles[layer][col][j]
                for which in range(2):
                    ax = fig.add_axes([x_of(col, which) / width, y / height, tile / width, tile / height])
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if ft is None:
                        ax.set_facecolor("0.93")
                        continue
                    img = (scale_for_display(ft.projections[0], scaling) if which == 0
                           else ft.patches[0].permute(1, 2, 0).double().numpy())
                    # a few-pixel field is shown as pixels, not as a blur
                    interp = "nearest" if img.shape[0] * 3 < tile * 200 else "antialiased"
                    ax.imshow(img, interpolation=interp)
            y -= 0.03
    return fig


def write_evolution(result: EvolutionResult, out: str | os.PathLike, *, scaling: str = DEFAULT_SCALING,
                    extra: dict | None = None, dpi: int = 200) -> tuple[Path, Path]:
    """Draw and save the figure (PNG/PDF/SVG by suffix) and its sidecar ``<out>.json`` (every value)."""
    import matplotlib.pyplot as plt

    from ..models.weights import sha256_file
    from ..plot import save_figure

    out = Path(out)
    fig = plot_evolution(result, scaling=scaling)
    save_figure(fig, out, dpi=dpi)
    plt.close(fig)
    sidecar = out.with_name(out.name + ".json")
    write_json(dict(result.summary(), figure=out.name, figure_sha256=sha256_file(out), scaling=scaling,
                    **jsonable(extra or {})), sidecar)
    return out, sidecar
