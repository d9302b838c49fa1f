"""The deconvnet beside its relatives: guided backprop and the plain gradient, for the same target.

All methods start from the same signal placed on the target layer's output (the *seed*) and carry it
down to the pixels; they differ only in the rule at each ReLU (Springenberg et al. 2015; docs/explanation/deconvnet.md),
with R the signal coming down and x the ReLU's forward input:

==================  =====================================  =============================================
method              rule at a ReLU                         computed by
==================  =====================================  =============================================
``deconvnet``       R_in = R_out [R_out > 0]               the engine, ``Deconvnet(net)``
``guided_backprop`` R_in = R_out [x > 0] [R_out > 0]       the engine, ``Deconvnet(net, rule="guided")``
``gradient``        R_in = R_out [x > 0]                   the engine, ``Deconvnet(net, rule="gradient")``
``deconvolution``   the deconvnet's rule                   Captum ``Deconvolution`` (the live cross-check)
==================  =====================================  =============================================

The three methods run through this toolkit's own engines, chain or graph, so they honour every rectifier,
functional ones included (GoogLeNet, DenseNet, Inception v3), which Captum's module hooks miss. Captum stays
the cross-check: it explains a scalar, here S(x) = <seed, layer(x)> per image, whose derivative on the layer
is the seed, with the forward stopped right after the layer. For ``compare_methods`` the seed is the
deconvnet's (Zeiler & Fergus): the target's activations, every other activation of the layer zero, so the
deconvnet column is exactly what ``Deconvnet.project`` returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine import Deconvnet, Target, check_input, record, select_target
from ..engine.ops import rectifier
from ..engine.rules import RULES as RULE_REGISTRY
from ..engine.rules import find as find_rule
from ..models import Net
from ..models.hooks import capture
from ..models.lock import own_call
from ..plot import image_array, scale_for_display
from ._util import label, output_layer

#: the engine's rules (``engine.rules``, by their analysis names) and Captum's Deconvolution, the cross-check
METHODS = ("deconvnet", "deconvolution", *(r.key for r in RULE_REGISTRY.values() if r.name != "deconvnet"))
METHOD_TITLES = {
    **{r.key: r.title for r in RULE_REGISTRY.values()},
    "deconvnet": "deconvnet (ours)",
    "deconvolution": "Captum Deconvolution",
    "gradient": "gradient (saliency)",
}
RULES = {**{r.key: r.formula.split(" (")[0] for r in RULE_REGISTRY.values()},
         "deconvolution": RULE_REGISTRY["deconvnet"].formula.split(" (")[0]}
RULES_CAPTION = (
    "Backward rule at each ReLU (R: signal coming down, x: forward input of the ReLU): "
    "deconvnet  R_in = R_out·[R_out > 0];   guided backprop  R_in = R_out·[x > 0]·[R_out > 0];   "
    "gradient  R_in = R_out·[x > 0]."
)


class TargetScore(nn.Module):
    """S(x) = <seed, layer(x)> for each image, the forward stopped right after the layer.

    Wrapping ``net.model`` as a submodule lets Captum find (and hook) its ReLUs. Our forward hook is
    registered inside ``forward``, after Captum's own hooks, so Captum sees the target layer's output
    before the forward is stopped.

    Args:
        net: the model.
        layer: paper name of the target layer.
        seed: (B, ...) the signal on the layer's output (its derivative of S).
    """

    def __init__(self, net: Net, layer: str, seed: torch.Tensor) -> None:
        super().__init__()
        self.model = net.model
        self.layer = layer
        self._module = net.check_layer(layer)
        self.register_buffer("seed", seed.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with own_call() as token:  # the forward stopped at the layer; another thread's forward is not seen
            out = capture({"out": self._module}, lambda: self.model(x), token=token)["out"]
        return (out * self.seed.view_as(out)).flatten(1).sum(1)


def deconvnet_seed(net: Net, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    """The deconvnet's seed for a target (Zeiler & Fergus: the target's activations, the rest zero).

    Uses the engine's own target selection (``engine.select_target``), so it means what
    ``Deconvnet.project`` means: ``channel="max"`` is the channel holding the layer's strongest activation,
    ``position="max"`` that channel's strongest unit, ``"all"`` the whole map, a (row, col) or a (B, 2) integer
    tensor one unit, a float or bool (h, w) / (B, h, w) tensor a mask weighting the map.

    Returns:
        ``(seed, channel, activation, position)``: seed shaped like the layer's output (B, C, h, w) or
        (B, F), and per image the channel, the strongest seeded activation and its (row, col).
    """
    act = record(net, x, [target.layer]).activations[target.layer]
    sel = select_target(act, target, net)
    return sel.seed(), sel.channels, sel.activation, sel.position


def backward_maps(
    net: Net,
    x: torch.Tensor,
    layer: str,
    seed: torch.Tensor,
    methods: Sequence[str] = METHODS,
) -> dict[str, torch.Tensor]:
    """Carry one seed on ``layer``'s output down to the pixels with each method's rule.

    Args:
        net: the model (a chain or a graph).
        x: (B, 3, H, W) model input.
        layer: the layer the seed sits on.
        seed: (B, ...) shaped like the layer's output.
        methods: any of ``METHODS``.

    Returns:
        ``{method: (B, 3, H, W) map in the model's input space}``.
    """
    unknown = [m for m in methods if m not in METHODS and find_rule(m) is None]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}. Hint: choose from {', '.join(METHODS)}")
    x = check_input(x, net)
    layer = net.resolve(layer)
    seed = seed.to(device=x.device, dtype=x.dtype)
    out: dict[str, torch.Tensor] = {}
    for method in methods:
        rule = find_rule(method)
        if rule is not None:
            out[method] = Deconvnet(net, rule=rule.name).project_seed(x, layer, seed)
    if "deconvolution" in methods:
        out["deconvolution"] = captum_maps(net, x, layer, seed, ["deconvolution"])["deconvolution"]
    return {m: out[m] for m in methods}


def captum_maps(net: Net, x: torch.Tensor, layer: str, seed: torch.Tensor,
                methods: Sequence[str] = ("deconvolution", "guided_backprop", "gradient")) -> dict[str, torch.Tensor]:
    """Captum's ``Deconvolution``, ``GuidedBackprop`` and ``Saliency`` for the same seed: the independent
    cross-check of the engine's rules. Captum hooks ``nn.ReLU`` modules only: on a model with functional
    ReLUs (GoogLeNet, DenseNet) its maps are not these rules' maps."""
    from captum.attr import Deconvolution, GuidedBackprop, Saliency

    x = check_input(x, net)
    score = TargetScore(net, net.resolve(layer), seed.to(device=x.device, dtype=x.dtype))
    captum = {"deconvolution": Deconvolution, "guided_backprop": GuidedBackprop}
    out = {}
    with warnings.catch_warnings():
        # Captum announces, on every call, that it hooks the ReLUs (and removes the hooks) and that it set
        # requires_grad on its copy of the input: both are what is meant here
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        for method in methods:
            if method in captum:
                out[method] = captum[method](score).attribute(x.detach().clone()).detach()
            elif method == "gradient":
                out[method] = Saliency(score).attribute(x.detach().clone(), abs=False).detach()
    return out


def functional_relus(net: Net, x: torch.Tensor) -> int:
    """How many rectifier calls of one forward on ``x`` happen outside an ``nn.ReLU`` module (``F.relu`` in
    GoogLeNet's ``BasicConv2d``, DenseNet's last ReLU). Captum's module hooks miss them: where there are any,
    Captum's Deconvolution is not the deconvnet and cannot be its cross-check."""
    from torch.overrides import TorchFunctionMode

    from ..models.lock import exclusive

    depth, count = [0], [0]

    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            # every spelling the engine takes for a ReLU (``engine.ops.rectifier``: clamp(min=0) too)
            count[0] += depth[0] == 0 and rectifier(func, args, kwargs) is not None
            return func(*args, **kwargs)

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    handles = []
    with exclusive(net.model) as model:
        try:
            for m in net.model.modules():
                if isinstance(m, nn.ReLU):
                    handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
            with torch.no_grad(), Count():
                model(check_input(x, net))
        finally:
            for h in handles:
                h.remove()
    return int(count[0])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = b.abs().max()
    err = (a - b).abs().max()
    if scale == 0:
        return 0.0 if err == 0 else float("inf")
    return float(err / scale)


@dataclass
class MethodComparison:
    """Maps of several methods for one target and a batch of images.

    Attributes:
        target: the target (its ``channel``/``position`` as asked).
        maps: method -> (B, 3, H, W) in the model's input space.
        channel, activation, position: per image, what the deconvnet seed selected.
        deconvolution_error: per image, max |ours - Captum Deconvolution| / max |ours| (the cross-check).
        input: the model input.
        weights: ``net.describe()``.
        target_labels: per image, a readable name of the target (``conv5_3 ch 12 / unit (3, 4)``,
            ``class score fc8[281] (tabby)``).
    """

    target: Target
    maps: dict[str, torch.Tensor]
    channel: torch.Tensor
    activation: torch.Tensor
    position: torch.Tensor
    deconvolution_error: list[float]
    input: torch.Tensor
    weights: str
    target_labels: list[str] = field(default_factory=list)


def _target_label(net: Net, target: Target, channel: int, position: Sequence[int], spatial: bool) -> str:
    if not spatial:
        if target.layer == output_layer(net):
            return f"class score {target.layer}[{channel}]\n({label(net, channel)})"
        return f"{target.layer} unit {channel}"
    pos = target.position
    where = "whole map" if isinstance(pos, str) and pos == "all" else (
        "mask" if isinstance(pos, torch.Tensor) else f"unit ({position[0]}, {position[1]})")
    return f"{target.layer} ch {channel}\n{where}"


def compare_methods(net: Net, x: torch.Tensor, target: Target, methods: Sequence[str] = METHODS) -> MethodComparison:
    """All methods for one target, from the deconvnet's seed (see the module docstring).

    Args:
        net: the model.
        x: (B, 3, H, W) model input.
        target: ``Target(layer, channel, position)``: a unit (position ``"max"`` or ``(row, col)``), a
            whole map (``"all"``) or, on the last classifier layer, a class score
            (``Target("fc8", class_index_or_"max")``).
        methods: any of ``METHODS``; include ``"deconvolution"`` to get the cross-check.

    Returns:
        A ``MethodComparison``.
    """
    if not isinstance(target, Target):
        target = Target(*target)
    x = check_input(x, net)
    seed, channel, activation, position = deconvnet_seed(net, x, target)
    maps = backward_maps(net, x, target.layer, seed, methods)
    errors = []
    if "deconvnet" in maps and "deconvolution" in maps:
        errors = [relative_error(maps["deconvolution"][b], maps["deconvnet"][b]) for b in range(x.shape[0])]
    spatial = seed.dim() == 4
    labels = [_target_label(net, target, int(channel[b]), position[b].tolist(), spatial) for b in range(x.shape[0])]
    return MethodComparison(target, maps, channel, activation, position, errors, x, net.describe(), labels)


SHOWN_METHODS = ("deconvnet", "guided_backprop", "gradient")  # Captum's Deconvolution is a cross-check, not a picture


def _unit_box(net: Net, r: MethodComparison, b: int) -> tuple[int, int, int, int] | None:
    """The input box (top, left, bottom, right) seen by the row's target unit, or None (a whole map, a mask,
    an fc unit: no single receptive field to mark)."""
    from ..engine import receptive_field

    pos = r.target.position
    if isinstance(pos, str) and pos == "all":
        return None
    if isinstance(pos, torch.Tensor) and (pos.is_floating_point() or pos.dtype == torch.bool):
        return None
    if not net.is_spatial(r.target.layer):
        return None
    row, col = (int(v) for v in r.position[b])
    return receptive_field(net, r.target.layer).box(row, col, tuple(r.input.shape[-2:]))


def plot_method_comparison(
    results: Sequence[MethodComparison],
    net: Net,
    *,
    axes=None,
    methods: Sequence[str] | None = None,
    scaling: str = "percentile",
    crop: bool = True,
):
    """One row per (image, target): the input (the target unit's receptive field marked), then one column
    per method; for a unit, the maps are cropped to its receptive field (as Zeiler & Fergus show them:
    outside it every map is exactly zero).

    Captum's ``Deconvolution`` computes the deconvnet's rule a second time: its maps equal ours (the
    ``deconvolution_error`` of each result says by how much), so it is a check, kept in the numbers and the
    tests, and not drawn unless asked for in ``methods``.

    Args:
        results: from ``compare_methods`` (rows: each result's images in order).
        net: the model (for display of the input and the caption).
        axes: a (rows, 1 + methods) array of axes to draw on; None creates a figure sized for print.
        methods: the columns (default: those of ``SHOWN_METHODS`` that the results hold).
        scaling: display scaling of the signed maps (``deconvnet.plot.scale_for_display``); the default
            ``"percentile"`` clips the few strongest pixels so that the rest of a sparse map is visible.
        crop: crop the maps of a unit to its receptive field.

    Returns:
        The matplotlib figure.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    from ._util import TEXT_PT, tile_figure

    rows = [(r, b) for r in results for b in range(r.input.shape[0])]
    methods = [m for m in (methods if methods is not None else SHOWN_METHODS) if m in results[0].maps]
    ncols = 1 + len(methods)
    boxes = [_unit_box(net, r, b) for r, b in rows]
    suptitle = "One target, three backward rules: deconvnet, guided backprop and gradient"
    caption = (f"{RULES_CAPTION}\nAll start from the same seed (the deconvnet's: the target's activation, all else "
               f"zero); zero = gray ({scaling} scaling)."
               + ((" Yellow box: the receptive field of the target unit"
                   + ("; a unit's maps are cropped to it." if crop else "."))
                  if any(bx is not None for bx in boxes) else "")
               + f"\n{net.describe()}")
    if axes is None:
        # a page is about 9 inches high: the tiles shrink with the number of rows, never below 0.8 inch
        tile = float(np.clip(7.2 / len(rows), 0.85, 1.3))
        fig, axes = tile_figure(len(rows), ncols, tile, suptitle=suptitle, caption=caption, left=0.42, header=0.2)
    else:
        axes = np.asarray(axes).reshape(len(rows), ncols)
        fig = axes[0, 0].figure
        fig.suptitle(suptitle, fontsize=9)
        fig.supxlabel(caption, fontsize=7, color="0.25")
    for i, ((r, b), box) in enumerate(zip(rows, boxes, strict=True)):
        axes[i, 0].imshow(image_array(net.deprocess(r.input[b : b + 1])[0]), interpolation="nearest")
        if box is not None:
            top, left, bottom, right = box
            axes[i, 0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                           ec="yellow", lw=1.0))
        axes[i, 0].set_ylabel(r.target_labels[b], fontsize=TEXT_PT, labelpad=2)
        for j, m in enumerate(methods, start=1):
            rgb = net.preprocessing.to_rgb_order(r.maps[m][b : b + 1])[0]
            if crop and box is not None:
                rgb = rgb[:, box[0] : box[2], box[1] : box[3]]
            axes[i, j].imshow(scale_for_display(rgb, scaling), interpolation="nearest")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=TEXT_PT, pad=3)
    for j, m in enumerate(methods, start=1):
        words = METHOD_TITLES[m]
        narrow = axes[0, j].get_position().width * fig.get_figwidth() * 72 < len(words) * 0.55 * TEXT_PT + 4
        axes[0, j].set_title(words.replace(" (", "\n(") if narrow else words, fontsize=TEXT_PT, pad=3)
    return fig
