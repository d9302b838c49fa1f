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

from ..core import Target, check_input
from ..models import Net
from ..plot import image_array, scale_for_display
from ._util import blank, deep_layer, progress
from .methods import METHOD_TITLES, backward_maps, deconvnet_seed
from .similarity import METRIC_LABELS, METRICS, compare_maps, normalized_abs

SANITY_METHODS = ("deconvnet", "guided_backprop", "gradient")
MODES = ("cascading", "independent")
METHOD_COLORS = {"deconvnet": "C3", "guided_backprop": "C0", "gradient": "C2", "deconvolution": "C1"}


# --- randomising layers -------------------------------------------------------------------------------

def parametrised_layers(net: Net, up_to: str | None = None) -> list[str]:
    """Paper names of the Conv2d and Linear layers, in forward order, up to ``up_to`` (included)."""
    limit = net.depth(up_to) if up_to is not None else len(net.stack)
    return [n for n, m in net.layers.items() if isinstance(m, (nn.Conv2d, nn.Linear)) and net.depth(n) <= limit]


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
    """The class score of the top class where a classifier exists, else the strongest unit of the last pool."""
    if net.classifier is not None:
        return Target(list(net.layers)[-1], "max", "max")
    return Target(deep_layer(net), "max", "max")


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
                        channel.cpu(), position.cpu(), x, net.describe())


def _target_words(r: SanityResult, index: int | None = None) -> str:
    """The target in words: the layer, and the channel/position of one image (or 'fixed per image')."""
    if index is None and r.input.shape[0] > 1:
        return f"{r.target.layer} (channel and position fixed per image on the unchanged model)"
    i = index or 0
    if not r.target.layer.startswith(("conv", "relu", "pool", "bn")):  # fc layers
        return f"{r.target.layer} unit {int(r.channel[i])}" + (" (top class of the unchanged model)" if r.target.layer == "fc8" else "")
    if isinstance(r.target.position, str) and r.target.position == "all":
        return f"{r.target.layer} channel {int(r.channel[i])}, whole map"
    if isinstance(r.target.position, str) or isinstance(r.target.position, tuple):
        return f"{r.target.layer} channel {int(r.channel[i])} at ({int(r.position[i, 0])}, {int(r.position[i, 1])})"
    return f"{r.target.layer} channel {int(r.channel[i])}, mask"


def plot_sanity_curves(results: Sequence[SanityResult], *, axes=None, metrics: Sequence[str] = METRICS):
    """Similarity to the original map against the randomisation step: one row per result, one column per
    measure, one curve per method (mean over images, band: min to max over images), as Adebayo et al.

    Args:
        results: from ``sanity_check`` (e.g. the cascading and the independent test).
        axes: a (len(results), len(metrics)) array of axes; None creates a figure.
        metrics: which measures to draw.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(len(results), len(metrics), figsize=(3.6 * len(metrics), 3.3 * len(results) + 1.1),
                                 squeeze=False, constrained_layout=True)
    else:
        axes = np.asarray(axes).reshape(len(results), len(metrics))
        fig = axes[0, 0].figure
    for row, r in zip(axes, results):
        xs = np.arange(len(r.steps))
        for ax, k in zip(row, metrics):
            for m, per in r.scores.items():
                v = per[k]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a step where every map vanished has no mean: a gap
                    mean = np.nanmean(v, axis=1)
                ax.plot(xs, mean, "o-", ms=3, lw=1.4, color=METHOD_COLORS.get(m), label=METHOD_TITLES[m])
                if v.shape[1] > 1 and np.isfinite(v).any():
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # all-NaN steps stay gaps
                        ax.fill_between(xs, np.nanmin(v, 1), np.nanmax(v, 1), color=METHOD_COLORS.get(m), alpha=0.15, lw=0)
                gone = r.zero[m].all(1)
                if gone.any():  # the map vanished for every image: no measure exists, mark it instead of a value
                    ax.plot(xs[gone], np.full(gone.sum(), -0.18 if k != "spearman" else -0.95), "x", ms=6, mew=1.5,
                            color=METHOD_COLORS.get(m), label=f"{METHOD_TITLES[m]}: map all zero")
            ax.axhline(0, color="0.7", lw=0.6)
            ax.set_xticks(xs)
            ax.set_xticklabels(r.steps, rotation=60, ha="right", fontsize=7)
            ax.set_ylim(-1.05 if k == "spearman" else -0.25, 1.05)
            ax.set_title(METRIC_LABELS[k], fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel(f"{r.mode} randomisation\nsimilarity to original", fontsize=8)
    step_word = {"cascading": "cascading: every layer from the top down to the one named is re-initialised",
                 "independent": "independent: only the layer named is re-initialised"}
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="outside right upper")
    r0 = results[0]
    fig.suptitle(f"Parameter-randomisation sanity check (Adebayo et al. 2018): target {_target_words(r0)};\n"
                 f"{r0.input.shape[0]} image(s) of {r0.input.shape[-2]}x{r0.input.shape[-1]} px, mean and min–max band",
                 fontsize=10)
    fig.supxlabel("; ".join(step_word[r.mode] for r in results) + ". He-normal weights, zero biases.\n"
                  f"{r0.weights}", fontsize=7, color="0.3")
    return fig


def plot_sanity_maps(result: SanityResult, net: Net, *, index: int = 0, axes=None):
    """The maps themselves along the randomisation: one row per method, one column per step.

    Shown as the measures see them, |sum over colour channels|, but each map clipped at its 99.5th
    percentile for display (a few strong pixels would otherwise leave the rest black).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    methods = list(result.maps)
    ncols = 1 + len(result.steps)
    if axes is None:
        fig, axes = plt.subplots(len(methods), ncols, figsize=(1.35 * ncols + 0.6, 1.45 * len(methods) + 1.2), squeeze=False)
        fig.subplots_adjust(left=0.06, right=0.995, top=1 - 0.6 / fig.get_figheight(), bottom=0.55 / fig.get_figheight(),
                            wspace=0.04, hspace=0.08)
    else:
        axes = np.asarray(axes).reshape(len(methods), ncols)
        fig = axes[0, 0].figure
    image = image_array(net.deprocess(result.input[index : index + 1])[0])
    for i, m in enumerate(methods):
        axes[i, 0].imshow(image)
        axes[i, 0].set_ylabel(METHOD_TITLES[m], fontsize=8)
        for j, step in enumerate(result.steps, start=1):
            a = normalized_abs(result.maps[m][j - 1, index])
            top = np.percentile(a, 99.5) if a.any() else 1.0
            axes[i, j].imshow(np.clip(a / (top if top > 0 else 1.0), 0, 1), cmap="gray", vmin=0, vmax=1)
            if result.zero[m][j - 1, index]:
                axes[i, j].text(0.5, 0.5, "map all\nzero", color="w", ha="center", va="center", fontsize=7,
                                transform=axes[i, j].transAxes)
            if i == 0:
                axes[i, j].set_title(step, fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=7)
    fig.suptitle(f"{result.mode.capitalize()} randomisation, from the top down: maps of {_target_words(result, index)}\n"
                 "(|map| summed over colour; shown clipped at its 99.5th percentile)", fontsize=9)
    fig.text(0.5, 0.005, result.weights, ha="center", va="bottom", fontsize=6.5, color="0.3")
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
        layer: a spatial layer (default: the last pooling layer, ``pool5``).
        methods: any of ``deconvnet.analysis.methods.METHODS``.
        n_random: draws of the random channel and of the random vector.
        seed: the random draws.

    Returns:
        A ``SelectivityResult`` whose ``scores`` compare every pair of the three kinds.
    """
    pools = [n for n in net.layers if n.startswith("pool")]
    layer = layer if layer is not None else max(pools, key=net.depth)
    x = check_input(x, net)
    _, _, _, position = deconvnet_seed(net, x, Target(layer, "max", "max"))
    from ..core import record

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
    """One row per method: the input, then the maps of the max channel, a random channel and a random
    vector (first draw), each titled with its SSIM and Spearman (abs) to the max-channel map, averaged over draws.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    methods = list(result.maps)
    if axes is None:
        fig, axes = plt.subplots(len(methods), 4, figsize=(9.2, 2.45 * len(methods) + 1.1), squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.99, top=1 - 0.75 / fig.get_figheight(), bottom=0.6 / fig.get_figheight(),
                            wspace=0.05, hspace=0.3)
    else:
        axes = np.asarray(axes).reshape(len(methods), 4)
        fig = axes[0, 0].figure
    row_, col_ = (int(v) for v in result.position[index])
    for i, m in enumerate(methods):
        axes[i, 0].imshow(image_array(net.deprocess(result.input[index : index + 1])[0]))
        axes[i, 0].set_ylabel(METHOD_TITLES[m], fontsize=8)
        axes[i, 0].set_title("input" if i == 0 else "", fontsize=8)
        for j, kind in enumerate(SELECTIVITY_KINDS, start=1):
            rgb = net.preprocessing.to_rgb_order(result.maps[m][kind][0, index : index + 1])[0]
            axes[i, j].imshow(scale_for_display(rgb, scaling))
            what = {"max channel": f"max channel {int(result.channel_max[index])}",
                    "random channel": f"random channel {int(result.channels_random[0, index])}",
                    "random vector": "random vector |randn|"}[kind]
            if kind != "max channel":
                per = result.scores[m][f"max channel vs {kind}"]
                what += f"\nSSIM {np.nanmean(per['ssim'][:, index]):.2f}, ρ|·| {np.nanmean(per['spearman_abs'][:, index]):.2f}"
            axes[i, j].set_title(what, fontsize=7.5)
        for ax in axes[i]:
            blank(ax)
    fig.suptitle(f"Neuron selectivity (Mahendran & Vedaldi 2016): {result.layer} at ({row_}, {col_}); "
                 f"similarity to the max-channel map, mean of {result.channels_random.shape[0]} draw(s)", fontsize=9)
    fig.text(0.5, 0.01, f"Unit seeds at one location (1 on a channel, or |randn| over all channels), carried down by each "
             f"method; zero = gray ({scaling} scaling).\n{result.weights}", ha="center", va="bottom", fontsize=6.5, color="0.3")
    return fig
