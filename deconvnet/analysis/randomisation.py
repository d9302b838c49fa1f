"""Parameter randomisation (Adebayo et al. 2018): does a map depend on the model's parameters?

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

The plots are in ``sanity_plots``; ``sanity`` gathers this test and the neuron-selectivity test.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..engine import Target, check_input
from ..models import Net
from ._util import output_layer, renamed_show_progress
from ._util import progress as progress_bar
from .methods import backward_maps, deconvnet_seed
from .similarity import METRICS, compare_maps

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


def randomisation_steps(net: Net, layer: str, mode: str = "cascading",
                        layers: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
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
        raise ValueError(f"cannot randomise {bad} for target layer '{layer}'. Hint: parametrised layers at or "
                         f"below it: {', '.join(below)}")
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


@renamed_show_progress
def sanity_check(
    net: Net,
    x: torch.Tensor,
    target: Target | None = None,
    *,
    mode: str = "cascading",
    methods: Sequence[str] = SANITY_METHODS,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
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
        progress: a tqdm bar over the steps.

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
    for _, to_randomise in progress_bar(steps, enabled=progress, desc=f"{mode} randomisation"):
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
        which = ("the whole map of the channel strongest on the unchanged model" if ch == "max"
                 else f"the whole map of channel {ch}")
    elif isinstance(pos, str):
        which = ("the unit strongest on the unchanged model" if ch == "max"
                 else f"the strongest unit of channel {ch} on the unchanged model")
    elif isinstance(pos, torch.Tensor) and (pos.is_floating_point() or pos.dtype == torch.bool):
        which = (("the channel strongest on the unchanged model" if ch == "max" else f"channel {ch}")
                 + ", weighted by a mask")
    else:
        which = "a given unit of " + ("the channel strongest on the unchanged model" if ch == "max"
                                      else f"channel {ch}")
    return f"{layer}{pre}, {which}"

