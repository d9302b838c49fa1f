"""The deconvnet's own resolution restoration, stage by stage.

On the way down, every unpooling doubles the resolution by putting each value back at its switch: the map
becomes sparse (at most one nonzero in four per channel) and specific to the image the switches came
from. Every transposed convolution then spreads each value over its 3x3 taps and densifies the map again
(Noh et al. 2015 describe the same pair in a decoder). ``deconvnet_stages`` keeps the signal after each of
these steps, and the fraction of nonzero values inside the projected unit's receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..engine import Deconvnet, Target, receptive_field, record
from ..models import Net
from ..plot import PRINT_WIDTH, TEXT_PT, TICK_PT, footer, scale_for_display, title


@dataclass
class Stage:
    """The signal after one step down.

    Attributes:
        label: ``"seed pool3"``, ``"unpool pool2"``, ``"conv2_2ᵀ"``.
        kind: ``"seed"``, ``"unpool"`` or ``"transposed conv"``.
        signal: (C, h, w) in the model's channel order.
        box: (top, left, bottom, right) of the receptive field at this resolution (bottom/right exclusive).
        nonzero: fraction of nonzero values inside ``box``, all channels.
    """

    label: str
    kind: str
    signal: torch.Tensor
    box: tuple[int, int, int, int]
    nonzero: float


@dataclass
class StageTrace:
    """The stages of one projection, with what is needed to show them.

    Attributes:
        stages: after the seed, every unpool and every transposed convolution, top to bottom.
        layer, channel, position: the projected unit.
        image_rgb: (3, H, W) the input image in [0, 1].
        projection_rgb: (3, H, W) the projection, channels in RGB order.
        weights: ``Net.describe()``.
    """

    stages: list[Stage]
    layer: str
    channel: int
    position: tuple[int, int]
    image_rgb: torch.Tensor
    projection_rgb: torch.Tensor
    weights: str


def deconvnet_stages(net: Net, x: torch.Tensor, layer: str = "pool3", channel: int | str = "max") -> StageTrace:
    """Project one unit of ``layer`` and keep the signal after every unpool and transposed convolution.

    The unit is the strongest of ``channel`` (``"max"``: of any channel) among the units whose receptive
    field lies wholly inside the image, so that the stages can be shown on the same, uncut window (if no
    unit's field fits, the strongest of all).

    Args:
        net: the model.
        x: (1, 3, H, W) model input (``net.preprocess``).
        layer: paper layer name of the projected unit (a spatial layer).
        channel: channel index or ``"max"``.

    Returns:
        A ``StageTrace``.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, 3, H, W), got {tuple(x.shape)}. Hint: x[:1]")
    act = record(net, x, [layer]).activations[layer][0]
    if act.dim() != 3:
        raise ValueError(f"layer '{layer}' is not spatial. Hint: a conv, relu or pool layer")
    h_in, w_in = x.shape[-2:]
    rf = receptive_field(net, layer)
    inside = torch.zeros(act.shape[-2:], dtype=torch.bool)
    for i in range(act.shape[-2]):
        for j in range(act.shape[-1]):
            y0, x0, y1, x1 = rf.box(i, j)
            inside[i, j] = y0 >= 0 and x0 >= 0 and y1 <= h_in and x1 <= w_in
    if not inside.any():
        inside[:] = True
    if channel == "max":
        score = torch.where(inside, act, torch.full_like(act, float("-inf")))
    else:
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < act.shape[0]:
            raise ValueError(f"channel {channel!r} is out of range for '{layer}'. Hint: 0..{act.shape[0] - 1} or 'max'")
        score = torch.full_like(act, float("-inf"))
        score[channel] = torch.where(inside, act[channel], torch.full_like(act[channel], float("-inf")))
    ch, rem = divmod(int(score.flatten().argmax()), act.shape[-2] * act.shape[-1])
    row, col = divmod(rem, act.shape[-1])
    trace = Deconvnet(net).stages(x, Target(layer, ch, (row, col)))
    seed = trace[0][1][0]
    top, left, bottom, right = rf.box(row, col, (h_in, w_in))
    paper = {q: p for p, q in net.qualnames.items()}
    modules = dict(net.stack)

    def stage(label: str, kind: str, r: torch.Tensor) -> Stage:
        h, w = r.shape[-2:]
        b = (top * h // h_in, left * w // w_in, -(-bottom * h // h_in), -(-right * w // w_in))
        inside = r[:, b[0] : b[2], b[1] : b[3]]
        return Stage(label, kind, r, b, float((inside != 0).double().mean()))

    out = [stage(f"seed {layer}", "seed", seed)]
    for qual, r in trace[1:]:
        m = modules[qual]
        name = paper.get(qual, qual)
        if isinstance(m, nn.MaxPool2d):
            out.append(stage(f"unpool {name}", "unpool", r[0]))
        elif isinstance(m, nn.Conv2d):
            out.append(stage(f"{name}ᵀ", "transposed conv", r[0]))
    return StageTrace(
        stages=out,
        layer=layer,
        channel=ch,
        position=(row, col),
        image_rgb=net.deprocess(x)[0],
        projection_rgb=net.preprocessing.to_rgb_order(trace[-1][1])[0],
        weights=net.describe(),
    )


def plot_stages(trace: StageTrace, axes=None, *, columns: int = 7):
    """Draw each stage (one channel, signed, cropped to the receptive field), the projection, and the
    nonzero fraction per stage.

    Each map shows the channel with the most energy inside the receptive field, on a symmetric colour
    scale (white = exactly zero), nearest-neighbour enlarged so that single pixels stay visible.

    Args:
        trace: from ``deconvnet_stages``.
        axes: a flat sequence of ``len(trace.stages) + 3`` matplotlib axes (input crop, stages, projection,
            nonzero plot); None creates a figure.
        columns: panels per row when creating the figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(trace.stages) + 3
    if axes is None:
        rows = -(-(n - 1) // columns) + 1
        # printed at a page's width: panels of about an inch, the nonzero plot below them
        fig = plt.figure(figsize=(PRINT_WIDTH, 1.45 * (rows - 1) + 2.6), layout="constrained")
        gs = fig.add_gridspec(rows, columns, height_ratios=[1] * (rows - 1) + [0.8])
        axes = [fig.add_subplot(gs[i // columns, i % columns]) for i in range(n - 1)]
        axes.append(fig.add_subplot(gs[rows - 1, :]))
    else:
        axes = list(np.asarray(axes, dtype=object).flat)
        fig = axes[0].figure
    if len(axes) < n:
        raise ValueError(f"need {n} axes (input, {len(trace.stages)} stages, projection, nonzero plot), "
                         f"got {len(axes)}")
    last = trace.stages[-1]
    top, left, bottom, right = last.box
    axes[0].imshow(trace.image_rgb.permute(1, 2, 0).double().numpy()[top:bottom, left:right], interpolation="nearest")
    axes[0].set_title(f"input, its\nreceptive field\n{bottom - top}x{right - left} px", fontsize=TICK_PT)
    for ax, s in zip(axes[1:], trace.stages, strict=False):  # axes[1:] goes on past the stages
        top, left, bottom, right = s.box
        inside = s.signal[:, top:bottom, left:right].double()
        ch = int(inside.pow(2).flatten(1).sum(1).argmax())
        a = inside[ch].numpy()
        lim = float(np.abs(a).max()) or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        h = s.signal.shape[-2]
        ax.set_title(f"{s.label}\n{h}x{h}, ch. {ch}\nnonzero {100 * s.nonzero:.2g}%", fontsize=TICK_PT,
                     color={"unpool": "tab:red", "transposed conv": "tab:blue"}.get(s.kind, "black"))
    p_ax = axes[len(trace.stages) + 1]
    top, left, bottom, right = last.box
    p_ax.imshow(scale_for_display(trace.projection_rgb[:, top:bottom, left:right]), interpolation="nearest")
    p_ax.set_title("projection\n(RGB, percentile\nscaling)", fontsize=TICK_PT)
    for ax in axes[: len(trace.stages) + 2]:
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[len(trace.stages) + 2]
    xs = np.arange(len(trace.stages))
    vals = [100 * s.nonzero for s in trace.stages]
    ax.plot(xs, vals, color="0.5", lw=1)
    for kind, color in (("seed", "black"), ("unpool", "tab:red"), ("transposed conv", "tab:blue")):
        idx = [i for i, s in enumerate(trace.stages) if s.kind == kind]
        ax.scatter(xs[idx], [vals[i] for i in idx], color=color, label=kind, zorder=3)
    ax.set_xticks(xs)
    ax.set_xticklabels([s.label for s in trace.stages], fontsize=TICK_PT, rotation=30, ha="right")
    ax.tick_params(labelsize=TICK_PT)
    ax.set_ylabel("nonzero inside the\nreceptive field (%)", fontsize=TEXT_PT)
    ax.set_yscale("log")
    ax.set_ylim(min(vals) / 2, 150)
    ax.legend(fontsize=TICK_PT, loc="lower right")
    ax.grid(alpha=0.3)
    title(fig, f"The deconvnet restoring resolution: {trace.layer} channel {trace.channel} at "
               f"{trace.position}, projected down. Unpooling (red) makes the maps sparse, transposed "
               "convolution (blue) densifies them")
    footer(fig, f"Maps: the strongest channel inside the receptive field, white = 0.\n{trace.weights}")
    return fig
