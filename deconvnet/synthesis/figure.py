"""The synthesis figure: for a few channels per layer, the synthesised image beside the channel's top-k
deconvnet projections and their image patches (``figure2``'s tiles), so that what a unit wants and where it
fired in real images can be read together."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..figure2 import FeatureTiles, plot_feature
from ..io import write_json
from ..models.weights import sha256_file
from ..plot import (
    DEFAULT_SCALING,
    PRINT_WIDTH,
    TICK_PT,
    TITLE_PT,
    _blank,
    describe_scaling,
    save_figure,
    text_height,
    wrap_to_width,
)
from .files import to_uint8
from .optimise import Synthesis


def plot_synthesis_grid(rows: Sequence[tuple[Synthesis, Sequence[FeatureTiles]]], *, title: str, footer: str,
                        scaling: str = DEFAULT_SCALING):
    """One row per layer; per channel: the synthesised image, the top-k projections, the top-k patches.

    Returns:
        A new matplotlib figure.
    """
    import matplotlib.pyplot as plt

    cols = max(len(t) for _, t in rows)
    width, margin, gap, label = PRINT_WIDTH, 0.05, 0.1, 0.3
    side = (width - 2 * margin - (cols - 1) * gap) / cols / 3 - 0.02
    head = wrap_to_width(title, width - 0.2, TITLE_PT)
    foot = wrap_to_width(footer, width - 0.2, TICK_PT)
    top, bottom = text_height(head, TITLE_PT) + 0.1, text_height(foot, TICK_PT) + 0.08
    height = top + len(rows) * (side + label) + bottom
    fig = plt.figure(figsize=(width, height))
    for r, (synth, tiles) in enumerate(rows):
        y = height - top - r * (side + label) - label - side
        for c, t in enumerate(tiles):
            x = margin + c * (3 * side + 0.04 + gap)
            k = synth.channels.index(t.channel)
            axes = [fig.add_axes([(x + j * (side + 0.02)) / width, y / height, side / width, side / height])
                    for j in range(3)]
            axes[0].imshow(to_uint8(synth.images[k]), interpolation="antialiased")
            _blank(axes[0])
            plot_feature(t, axes[1:], scaling, title=False)
            axes[0].set_title(f"{synth.layer} ch {t.channel}: image {float(synth.peaks[k]):.3g} vs data "
                              f"{float(t.values[0]):.3g}", fontsize=TICK_PT, loc="left", pad=2)
    fig.text(0.5, 1 - 0.05 / height, head, ha="center", va="top", fontsize=TITLE_PT)
    fig.text(0.5, 0.04 / height, foot, ha="center", va="bottom", fontsize=TICK_PT, color="0.25")
    return fig


def write_synthesis_figure(rows: Sequence[tuple[Synthesis, Sequence[FeatureTiles]]], out: str | os.PathLike, *,
                           arch: str, dataset_name: str, n_images: int | str,
                           scaling: str = DEFAULT_SCALING) -> tuple[Path, Path]:
    """Draw and save the grid and its JSON sidecar (settings, activations beside the dataset's, weights)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    first = rows[0][0]
    k = len(rows[0][1][0].values)
    title = (f"{arch}: what a unit wants beside where it fired. Per channel: the image synthesised to excite it "
             f"most (left), its top {k} activations across {n_images} images of {dataset_name} projected by the "
             f"deconvnet (middle) and their receptive-field patches (right)")
    footer = (f"{first.recipe()} Above each image: the channel's strongest unit on the synthesised image vs its "
              f"strongest in the data. Projections: {describe_scaling(scaling)}.")
    fig = plot_synthesis_grid(rows, title=title, footer=footer, scaling=scaling)
    save_figure(fig, out, dpi=300)
    plt.close(fig)
    meta = {
        "figure": out.name, "figure_sha256": sha256_file(out), "recipe": first.recipe(), "settings": first.settings,
        "weights": first.weights, "provenance": first.provenance, "dataset": dataset_name, "n_images": n_images,
        "scaling": scaling,
        "channels": [{"layer": s.layer, "channel": t.channel,
                      "activation": float(s.activations[s.channels.index(t.channel)]),
                      "peak": float(s.peaks[s.channels.index(t.channel)]), "dataset_max": float(t.values[0]),
                      "top_images": [int(i) for i in t.images]}
                     for s, tiles in rows for t in tiles],
    }
    sidecar = out.with_name(out.name + ".json")
    write_json(meta, sidecar)
    return out, sidecar

