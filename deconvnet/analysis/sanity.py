"""Sanity checks: does a map depend on the model's parameters, and on the neuron it claims to show?

Parameter randomisation (Adebayo et al. 2018)
    *Cascading*: re-initialise the parametrised layers from the top (the target layer) down, one more layer
    each step; *independent*: one layer at a time, the others as trained. At every step each method's
    map is compared to the map of the unchanged model with the four measures of
    ``deconvnet.analysis.similarity``. A method whose maps stay similar while the weights that compute the
    target are destroyed is not explaining those weights.

    Re-initialisation: weights drawn from He's normal N(0, 2 / fan_in), biases set to zero (torchvision's
    VGG initialisation uses the same family). A layer gets the same draw in every step. The work is done
    on a deep copy of the model: the caller's model is never modified.

    The explained quantity is fixed on the unchanged model: the target's channel and position (for a
    classifier, the top class) are chosen once, and every model carries the *unit* seed (1 on the target,
    0 elsewhere: the derivative of the target's value) down. A change of the target's activation alone
    (its size or sign) therefore does not count as a change of the map. The deconvnet's own projection is
    this map times the activation.

    The default target is a *pre-activation*, as Adebayo et al.'s class logit is: the top class score
    where a classifier exists, else the strongest unit of the last convolution's output before its ReLU
    (``conv5_3``). A pre-activation is a linear function of the layer below, so its derivative there is
    a row of its weights, whatever the weights are: re-initialising cannot switch it off. A ReLU or pool
    unit can die: once re-initialised weights make it negative, the gradient and guided backprop carry
    nothing down (the deconvnet still does, its ReLU rule ignores the forward pass), and their maps are
    all zero. The definition (layer, channel, position, unit seed) is the same at every step; only the
    weights change. Where a map is all zero nonetheless (a target chosen by the caller), the figures say
    so and why.

Neuron selectivity (Mahendran & Vedaldi 2016)
    At one location of a layer, reverse (a) the most active channel, (b) a random other channel and (c) a
    positive random vector |randn| over all channels, and compare the three images. Mahendran & Vedaldi
    found the deconvnet's images nearly independent of the neuron: they are shaped by the switches and
    ReLU masks recorded on the way up. The gradient is shown beside it for contrast.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..engine import Target, check_input, default_layers
from ..models import Net
from ..plot import METHOD_COLORS, image_array, scale_for_display
from ._util import TEXT_PT, TICK_PT, TITLE_PT, blank, output_layer, progress, tile_figure, wrap_to_width
from .methods import METHOD_TITLES, backward_maps, deconvnet_seed
from .similarity import METRIC_LABELS, METRICS, compare_maps, normalized_abs

SANITY_METHODS = ("deconvnet", "guided_backprop", "gradient")
MODES = ("cascading", "independent")


# --- randomising layers -------------------------------------------------------------------------------

def parametrised_layers(net: Net, up_to: str | None = None) -> list[str]:
    """Names of the Conv2d and Linear layers in forward order (``Net.order``; for a graph, the order its forward
    first reaches them), up to ``up_to`` (included). In a graph a branch reached earlier than ``up_to`` need
    not feed it: randomising it leaves the map unchanged (the default targets are fed by every layer)."""
    names = sorted((n for n, m in net.layers.items() if isinstance(m, (nn.Conv2d, nn.Linear))), key=net.order)
    return names if up_to is None else [n for n in names if net.order(n) <= net.order(up_to)]


def _reinitialise_(net: Net, layers: Sequence[str], seed: int) -> None:
    """In place: He-normal weights, zero biases; the draw of a layer depends on ``seed`` and its name only."""
    order = parametrised_layers(net)
    for name in layers:
        m = net.check_layer(name)
        if name not in order:
            raise ValueError(f"layer '{name}' has no parameters to randomise. Hint: one of {', '.join(order)}")
        g = torch.Generator().manual_seed(seed * 1000 + order.index(name))
        fan_in = m.weight[0].numel()
        w = torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
        with torch.no_grad():
            m.weight.copy_(w.to(m.weight))
            if m.bias is not None:
                m.bias.zero_()


def randomized(net: Net, layers: Sequence[str], *, seed: int = 0) -> Net:
    """A deep copy of ``net`` with ``layers`` re-initialised (He normal weights, zero biases).

    Args:
        net: the model; it is not modified.
        layers: paper names of Conv2d/Linear layers (``parametrised_layers(net)``).
        seed: the draw; a layer gets the same weights for the same seed whatever else is randomised.

    Returns:
        The new ``Net``; its provenance lists the randomised layers.
    """
    new = copy.deepcopy(net)
    _reinitialise_(new, layers, seed)
    new.provenance["randomised_layers"] = list(layers)
    return new


def randomisation_steps(net: Net, layer: str, mode: str = "cascading", layers: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
    """The steps of a randomisation test: ``[(step name, layers randomised at that step), ...]``.

    Args:
        net: the model.
        layer: the target layer; only parametrised layers at or below it can change the map.
        mode: ``"cascading"`` (from the top down, cumulative) or ``"independent"`` (one layer each).
        layers: the layers to stop at (default: all of them); in cascading mode a step still randomises
            every parametrised layer from the top down to its layer.

    Returns:
        The first step is ``("original", [])``.
    """
    if mode not in MODES:
        raise ValueError(f"mode '{mode}' is not understood. Hint: one of {', '.join(MODES)}")
    below = parametrised_layers(net, layer)
    top_down = below[::-1]
    wanted = top_down if layers is None else list(layers)
    bad = [n for n in wanted if n not in below]
    if bad:
        raise ValueError(f"cannot randomise {bad} for target layer '{layer}'. Hint: parametrised layers at or below it: {', '.join(below)}")
    wanted = sorted(wanted, key=top_down.index)
    steps = [("original", [])]
    for name in wanted:
        steps.append((name, top_down[: top_down.index(name) + 1] if mode == "cascading" else [name]))
    return steps


# --- the test -------------------------------------------------------------------------------------------

def default_target(net: Net) -> Target:
    """A target that randomisation cannot switch off (see the module docstring): the top class score
    where a classifier exists, else the strongest unit of the last convolution, before its ReLU."""
    if output_layer(net) is not None:
        return Target(output_layer(net), "max", "max")
    convs = [n for n, m in net.layers.items() if isinstance(m, nn.Conv2d)]
    return Target(max(convs, key=net.order), "max", "max")


def unit_seed(net: Net, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's *unit* seed on the unchanged model: 1 on the target (a mask's weights for a mask,
    ones over the map for ``"all"``), 0 elsewhere.

    Returns:
        ``(seed, channel, position)``, the channel and position chosen on ``net`` for each image.
    """
    zf_seed, channel, _, position = deconvnet_seed(net, x, target)
    seed = torch.zeros_like(zf_seed)
    b = torch.arange(seed.shape[0], device=seed.device)
    if seed.dim() == 2:
        seed[b, channel] = 1.0
        return seed, channel, position
    pos = target.position
    if isinstance(pos, str) and pos == "all":
        seed[b, channel] = 1.0
    elif isinstance(pos, torch.Tensor):
        seed[b, channel] = pos.to(seed).expand(seed.shape[0], *seed.shape[-2:])
    else:
        seed[b, channel, position[:, 0], position[:, 1]] = 1.0
    return seed, channel, position


@dataclass
class SanityResult:
    """Similarity of each method's maps to those of the unchanged model, step by step.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        steps: step names (``"original"``, then the layer randomised at that step).
        randomised: per step, the layers randomised.
        scores: method -> metric -> array (steps, B).
        maps: method -> (steps, B, 3, H, W) maps in the model's input space.
        zero: method -> bool array (steps, B): the map is all zero (the method lost the whole signal, so
            every measure is NaN there).
        target: the target; channel, position: what it resolved to on the unchanged model, per image.
        input: the model input; weights: ``net.describe()``.
        definition: the target in words, the same at every step (``describe_target``).
        spatial: whether the target layer has a spatial map (conv part) or not (fc layers).
    """

    mode: str
    steps: list[str]
    randomised: list[list[str]]
    scores: dict[str, dict[str, np.ndarray]]
    maps: dict[str, torch.Tensor]
    zero: dict[str, np.ndarray]
    target: Target
    channel: torch.Tensor
    position: torch.Tensor
    input: torch.Tensor
    weights: str
    definition: str = ""
    spatial: bool = True

    def summary(self) -> dict:
        """Mean over images of every score: ``{method: {metric: {step: value}}}`` (NaN where undefined)."""
        return {
            m: {k: {s: float(np.nanmean(v[i])) if np.isfinite(v[i]).any() else float("nan")
                    for i, s in enumerate(self.steps)} for k, v in per.items()}
            for m, per in self.scores.items()
        }


def sanity_check(
    net: Net,
    x: torch.Tensor,
    target: Target | None = None,
    *,
    mode: str = "cascading",
    methods: Sequence[str] = SANITY_METHODS,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> SanityResult:
    """Parameter-randomisation test (Adebayo et al. 2018) of each method's maps.

    Args:
        net: the model (never modified: the test works on a copy).
        x: (B, 3, H, W) model input.
        target: what to explain (default ``default_target(net)``); its channel and position are fixed on
            the unchanged model.
        mode: ``"cascading"`` or ``"independent"``.
        methods: any of ``deconvnet.analysis.methods.METHODS``.
        layers: the randomisation steps to measure (default: every parametrised layer at or below the
            target, from the top down).
        seed: the random draw of the new weights.
        show_progress: a tqdm bar over the steps.

    Returns:
        A ``SanityResult``.
    """
    target = target if target is not None else default_target(net)
    if not isinstance(target, Target):
        target = Target(*target)
    x = check_input(x, net)
    steps = randomisation_steps(net, target.layer, mode, layers)
    seed_t, channel, position = unit_seed(net, x, target)
    work = copy.deepcopy(net)  # randomised in place, step by step; the caller's model is never touched
    originals = dict(work.model.state_dict())
    originals = {k: v.clone() for k, v in originals.items()}
    maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    done: list[str] = []
    for name, to_randomise in progress(steps, enabled=show_progress, desc=f"{mode} randomisation"):
        if mode == "independent" and done:
            work.model.load_state_dict(originals)  # restore the copy (the caller's model was never changed)
            done = []
        new = [n for n in to_randomise if n not in done]
        _reinitialise_(work, new, seed)
        done += new
        out = backward_maps(work, x, target.layer, seed_t, methods)
        for m in methods:
            maps[m].append(out[m].cpu())
    stacked = {m: torch.stack(v) for m, v in maps.items()}
    b = x.shape[0]
    scores = {m: {k: np.full((len(steps), b), np.nan) for k in METRICS} for m in methods}
    for m in methods:
        for i in range(len(steps)):
            for j in range(b):
                for k, v in compare_maps(stacked[m][0, j], stacked[m][i, j]).items():
                    scores[m][k][i, j] = v
    zero = {m: (v.flatten(2).abs().amax(2) == 0).numpy() for m, v in stacked.items()}
    return SanityResult(mode, [s for s, _ in steps], [list(r) for _, r in steps], scores, stacked, zero, target,
                        channel.cpu(), position.cpu(), x, net.describe(), describe_target(net, target),
                        seed_t.dim() == 4)


def describe_target(net: Net, target: Target) -> str:
    """What a sanity check explains, in words that hold at every step: the layer (and whether it is a
    pre-activation), and how the channel and position were chosen on the unchanged model."""
    layer = target.layer
    module = net.check_layer(layer)
    if layer == output_layer(net):
        which = "the top class of the unchanged model" if target.channel == "max" else f"class {target.channel}"
        return f"the class score (logit) {layer}, for {which}"
    pre = " before its ReLU" if isinstance(module, (nn.Conv2d, nn.Linear)) else ""
    ch, pos = target.channel, target.position
    if not net.is_spatial(layer):
        which = "the unit strongest on the unchanged model" if ch == "max" else f"unit {ch}"
        return f"{layer}{pre}, {which}"
    if isinstance(pos, str) and pos == "all":
        which = "the whole map of the channel strongest on the unchanged model" if ch == "max" else f"the whole map of channel {ch}"
    elif isinstance(pos, str):
        which = "the unit strongest on the unchanged model" if ch == "max" else f"the strongest unit of channel {ch} on the unchanged model"
    elif isinstance(pos, torch.Tensor) and (pos.is_floating_point() or pos.dtype == torch.bool):
        which = ("the channel strongest on the unchanged model" if ch == "max" else f"channel {ch}") + ", weighted by a mask"
    else:
        which = "a given unit of " + ("the channel strongest on the unchanged model" if ch == "max" else f"channel {ch}")
    return f"{layer}{pre}, {which}"


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
    if isinstance(pos, str) and pos == "all" or isinstance(pos, torch.Tensor) and (pos.is_floating_point() or pos.dtype == torch.bool):
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
                        ax.fill_between(xs, np.nanmin(v, 1), np.nanmax(v, 1), color=METHOD_COLORS.get(m), alpha=0.15, lw=0)
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
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    r0 = results[0]
    n, h, w = r0.input.shape[0], r0.input.shape[-2], r0.input.shape[-1]
    title(fig, f"Parameter-randomisation test (Adebayo et al. 2018): similarity of each map to the map of the "
               f"unchanged model; {n} image{'s' if n > 1 else ''} of {h}x{w} px, mean" + (" and min-max band" if n > 1 else ""),
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
            raise ValueError(f"{axes.shape} axes cannot hold the input and {len(result.steps)} steps for {len(methods)} "
                             f"methods. Hint: pass (blocks x {len(methods)}, columns) axes with blocks x columns >= {slots}")
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


# --- neuron selectivity ---------------------------------------------------------------------------------

SELECTIVITY_KINDS = ("max channel", "random channel", "random vector")
SELECTIVITY_PAIRS = (("max channel", "random channel"), ("max channel", "random vector"), ("random channel", "random vector"))


@dataclass
class SelectivityResult:
    """Maps for the most active channel, random channels and random positive vectors at one location.

    Attributes:
        layer: the layer; position: (B, 2) the location (the layer's strongest unit, per image).
        channel_max: (B,) the most active channel there.
        channels_random: (n, B) the random channels (never the most active one).
        maps: method -> kind -> (n, B, 3, H, W) (``"max channel"`` has n = 1).
        scores: method -> "a vs b" -> metric -> array (n, B).
        input, weights: as elsewhere.
    """

    layer: str
    position: torch.Tensor
    channel_max: torch.Tensor
    channels_random: torch.Tensor
    maps: dict[str, dict[str, torch.Tensor]]
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    input: torch.Tensor | None = None
    weights: str = ""

    def summary(self) -> dict:
        """Mean (over draws and images) of every score: ``{method: {"a vs b": {metric: value}}}``."""
        return {m: {p: {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in per.items()}
                    for p, per in pairs.items()} for m, pairs in self.scores.items()}


def neuron_selectivity(
    net: Net,
    x: torch.Tensor,
    layer: str | None = None,
    *,
    methods: Sequence[str] = ("deconvnet", "gradient"),
    n_random: int = 3,
    seed: int = 0,
) -> SelectivityResult:
    """Mahendran & Vedaldi's test: does the image depend on the neuron reversed?

    At the location of the layer's strongest activation (per image), three unit seeds are carried down:
    1 on the most active channel, 1 on a random other channel, and |randn| over all channels.

    Args:
        net: the model.
        x: (B, 3, H, W) model input.
        layer: a spatial layer (default: a chain's last pooling layer, ``pool5``; a graph's last stage, ``layer4``).
        methods: any of ``deconvnet.analysis.methods.METHODS``.
        n_random: draws of the random channel and of the random vector.
        seed: the random draws.

    Returns:
        A ``SelectivityResult`` whose ``scores`` compare every pair of the three kinds.
    """
    pools = [n for n in net.layers if n.startswith("pool")] if net.is_chain else []
    layer = layer if layer is not None else (max(pools, key=net.depth) if pools else default_layers(net)[-1])
    x = check_input(x, net)
    _, _, _, position = deconvnet_seed(net, x, Target(layer, "max", "max"))
    from ..engine import record

    act = record(net, x, [layer]).activations[layer]
    if act.dim() != 4:
        raise ValueError(f"layer '{layer}' has no spatial map. Hint: use a conv, relu or pool layer")
    b, c = act.shape[:2]
    bi = torch.arange(b, device=act.device)
    column = act[bi, :, position[:, 0], position[:, 1]]  # (B, C): all channels at the location
    channel_max = column.argmax(1)
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(1, c, (n_random, b), generator=g).to(act.device)
    channels_random = (channel_max[None] + offsets) % c  # uniform over the other channels
    vectors = torch.randn(n_random, b, c, generator=g, dtype=torch.float64).abs().to(act)

    def seed_at(values: torch.Tensor) -> torch.Tensor:  # (B, C) values at the location
        s = torch.zeros_like(act)
        s[bi, :, position[:, 0], position[:, 1]] = values
        return s

    seeds = {"max channel": [seed_at(torch.nn.functional.one_hot(channel_max, c).to(act))]}
    seeds["random channel"] = [seed_at(torch.nn.functional.one_hot(ch, c).to(act)) for ch in channels_random]
    seeds["random vector"] = [seed_at(v) for v in vectors]
    maps: dict[str, dict[str, list[torch.Tensor]]] = {m: {k: [] for k in SELECTIVITY_KINDS} for m in methods}
    for kind, ss in seeds.items():
        for s in ss:
            out = backward_maps(net, x, layer, s, methods)
            for m in methods:
                maps[m][kind].append(out[m].cpu())
    stacked = {m: {k: torch.stack(v) for k, v in per.items()} for m, per in maps.items()}
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for m in methods:
        scores[m] = {}
        for a, bb in SELECTIVITY_PAIRS:
            per = {k: np.full((n_random, b), np.nan) for k in METRICS}
            for i in range(n_random):
                ia = 0 if a == "max channel" else i
                for j in range(b):
                    for k, v in compare_maps(stacked[m][a][ia, j], stacked[m][bb][i, j]).items():
                        per[k][i, j] = v
            scores[m][f"{a} vs {bb}"] = per
    return SelectivityResult(layer, position.cpu(), channel_max.cpu(), channels_random.cpu(), stacked, scores, x, net.describe())


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

    shown = {kind: next((d for d in range(result.maps[methods[0]][kind].shape[0]) if all(alive(m, kind, d) for m in methods)), 0)
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
            axes[0, 0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="yellow", lw=1.0))
            axes[0, 0].set_title("input", fontsize=TEXT_PT, pad=2)
            blank(axes[0, 0])
        else:
            axes[i, 0].set_axis_off()
        for j, kind in enumerate(SELECTIVITY_KINDS, start=1):
            d = shown[kind]
            rgb = net.preprocessing.to_rgb_order(result.maps[m][kind][d, index : index + 1])[0]
            axes[i, j].imshow(scale_for_display(rgb, scaling))
            if not alive(m, kind, d):
                axes[i, j].text(0.5, 0.5, "all zero", ha="center", va="center", fontsize=TEXT_PT, transform=axes[i, j].transAxes)
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
