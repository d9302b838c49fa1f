"""Neuron selectivity (Mahendran & Vedaldi 2016): does a map depend on the neuron it claims to show?

At one location of a layer, reverse (a) the most active channel, (b) a random other channel and (c) a
positive random vector |randn| over all channels, and compare the three images. Mahendran & Vedaldi
found the deconvnet's images nearly independent of the neuron: they are shaped by the switches and
ReLU masks recorded on the way up. The gradient is shown beside it for contrast.

The plot is in ``sanity_plots``; ``sanity`` gathers this test and the parameter-randomisation test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine import Target, check_input, default_layers
from ..models import Net
from .methods import backward_maps, deconvnet_seed
from .similarity import METRICS, compare_maps

SELECTIVITY_KINDS = ("max channel", "random channel", "random vector")
SELECTIVITY_PAIRS = (("max channel", "random channel"), ("max channel", "random vector"),
                     ("random channel", "random vector"))


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
    pools = net.pools()
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
    return SelectivityResult(layer, position.cpu(), channel_max.cpu(), channels_random.cpu(), stacked, scores, x,
                             net.describe())

