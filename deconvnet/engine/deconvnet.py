"""``Deconvnet``: the one interface every consumer uses, with the chain and graph engines behind it as peers.

What a consumer asks of a model (record a forward at the layers it needs, project targets, the receptive
field of a layer, the layers that have spatial maps, the default layers of a figure, class names) is asked
here; ``engine.chain`` (a stack of modules walked down step by step, with the receptive-field-cropped walk)
and ``engine.graph`` (the rule at every rectifier of the model's own autograd graph) do the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..models import Net, wrap
from .chain import UNPOOL_MODES, ChainEngine
from .graph import GraphEngine, check_modules, record_graph
from .protocol import Engine
from .receptive import ReceptiveField, receptive_field
from .record import check_input, record_chain
from .targets import is_point
from .types import Position, Projection, Record, Target, UnitWindows, check_rule

ENGINES = ("auto", "chain", "graph")


def record(
    net: Net,
    x: torch.Tensor,
    layers: Sequence[str],
    *,
    switches: bool = True,
    reduce: Callable[[str, torch.Tensor], object] | None = None,
) -> Record:
    """One forward up to the deepest of ``layers``, keeping their activations (or ``reduce(layer, output)``
    of each, computed inside the forward: a scan keeps per-map maxima without copies), and for a chain its
    shapes and max-pool switches (``switches=False`` skips them)."""
    if net.is_chain:
        return record_chain(net, x, layers, switches=switches, reduce=reduce)
    return record_graph(net, x, layers, reduce, extend=getattr(net, "extend", False))


def spatial_layers(net: Net) -> list[str]:
    """The layers whose outputs are maps (B, C, h, w) larger than one unit, in forward order: those a scan,
    Figure 2, the atlas and the explorer can show."""
    if net.is_chain:
        return [n for n in net.layers if net.is_spatial(n)]
    shapes = net.output_shapes()
    return [n for n in shapes if len(shapes[n]) == 4 and min(shapes[n][-2:]) > 1]


def default_layers(net: Net) -> list[str]:
    """The layers a figure shows when none are named.

    Chains with the paper's names: the last conv of each block (VGG: conv1_2 ... conv5_3; AlexNet: conv1 ...
    conv5). Graphs: the outputs of their stages, the composite blocks (ResNet: layer1 ... layer4; GoogLeNet:
    the inception blocks; DenseNet: the dense blocks and transitions; Inception v3: the Mixed blocks), found
    as the modules at the top level (or inside a top-level ``features``) that hold two or more convolutions,
    or a convolution and a pooling, and output maps. Other chains: their last four conv layers.
    """
    convs = [n for n in net.layers if n.startswith("conv")]
    if net.is_chain and convs and all(not n[4:5].isalpha() for n in convs):  # the paper's names
        if "_" not in convs[0]:
            return convs
        last: dict[str, str] = {}
        for n in convs:
            last[n.split("_")[0]] = n
        return list(last.values())
    spatial = set(spatial_layers(net))
    if net.is_chain:
        return [n for n in net.layers if n in spatial and isinstance(net.layers[n], nn.Conv2d)][-4:]
    top = [(n, m) for n, m in net.model.named_children()]
    if len(top) and isinstance(getattr(net.model, "features", None), nn.Sequential):
        top = [(f"features.{n}", m) for n, m in net.model.features.named_children()]
    if net.stages:  # the family names its stages (timm's feature_info)
        return [n for n in net.stages if n in spatial] or list(net.stages)
    stages = []
    for name, m in top:
        kinds = [type(s) for s in m.modules()]
        convs_in = sum(issubclass(k, nn.Conv2d) for k in kinds)
        pools_in = sum(issubclass(k, (nn.MaxPool2d, nn.AvgPool2d)) for k in kinds)
        if name in spatial and (convs_in >= 2 or (convs_in and pools_in)):
            stages.append(name)
    if len(stages) == 1 and isinstance(net.layers.get(stages[0]), nn.Sequential):  # RegNet: one trunk of stages
        inner = [f"{stages[0]}.{n}" for n, _ in net.layers[stages[0]].named_children()]
        if len(inner) > 1 and all(n in spatial for n in inner):
            return inner
    return stages or [n for n in spatial_layers(net) if "." not in n][-4:]


def _whole_numbers(values: object, what: str) -> torch.Tensor:
    """Indices as an int64 CPU tensor; a value that is not a whole number (``1.7``, NaN, a bool) is refused,
    not truncated."""
    t = torch.as_tensor(values)
    if t.dtype == torch.bool:
        raise ValueError(f"{what} must hold integers, got booleans. Hint: integer indices")
    if t.is_floating_point():
        bad = ~torch.isfinite(t) | (t != t.round())
        if bool(bad.any()):
            raise ValueError(f"{what} {t[bad][0].item():.6g} is not a whole number. Hint: integer indices")
    elif t.is_complex():
        raise ValueError(f"{what} must hold integers, got complex numbers. Hint: integer indices")
    return t.to(torch.long).cpu()


class Deconvnet:
    """Zeiler & Fergus's deconvnet mirrored on a model.

    Args:
        net: a ``Net`` (``load_vgg``, ``load_alexnet``, ``load_model``) or any ``nn.Module`` (wrapped by
            ``deconvnet.wrap``: VGG/AlexNet and ``nn.Sequential`` chains, other models as graphs).
        engine: ``"auto"`` (default): the module-by-module walk for chains, the autograd graph
            (``engine.graph``) for the others; ``"chain"`` or ``"graph"`` to choose (they agree).
        rule: the backward rule at every rectifier (``RULES``): ``"deconvnet"`` (default; Zeiler & Fergus),
            ``"guided"`` (guided backpropagation) or ``"gradient"`` (the plain gradient, saliency).
        unpool: ``"scatter_add"`` (default, the exact transpose of max-pooling) or ``"max_unpool"``
            (``F.max_unpool2d``, which overwrites where overlapping windows share a maximum; chains only).
        max_batch: most projections per deconv pass (bounds memory).
        crop: ``"auto"`` (default): point targets of spatial layers of a chain are projected inside their
            receptive-field windows only (equal to the full projection) when the window is smaller than
            the image; ``True``: always; ``False``: always walk the whole maps.
        keep: how many recorded forwards to keep, by input tensor (its identity) and layers: projecting
            again on the same tensor runs no forward (the explorer's clicks). A graph's forward is kept
            with its autograd graph, which costs memory. ``forwards`` counts the forwards that ran.
        extend: project, with the declared rules (``engine.rules``; docs/explanation/declared-rules.md),
            what the paper has no rule for: ReLU-like activations (SiLU, GELU, Hardswish, ...) taken as a
            ReLU, gates (sigmoid, hardsigmoid, softmax factors of a product) and normalisers' divisors
            (LayerNorm, GroupNorm, ...) held constant; each projection names those it took
            (``Projection.declared``). ``None`` (default): the net's own setting (``net.extend``, which the
            command line's ``--extend`` sets), else False: exact or refused.

    Example:
        >>> deconv = Deconvnet(net)
        >>> p = deconv.project(x, layer="conv5_3", channel=441, position="max")
    """

    def __init__(self, net: Net | nn.Module, *, engine: str = "auto", rule: str = "deconvnet",
                 unpool: str = "scatter_add", max_batch: int = 32, crop: str | bool = "auto",
                 keep: int = 0, extend: bool | None = None) -> None:
        net = wrap(net)
        extend = bool(getattr(net, "extend", False) if extend is None else extend)
        if engine not in ENGINES:
            raise ValueError(f"engine '{engine}' is not understood. Hint: one of {', '.join(ENGINES)}")
        if engine == "chain" and not net.is_chain:
            raise ValueError(f"{net.arch} is not a chain of modules; engine='chain' cannot walk it. "
                             "Hint: engine='auto'")
        kind = "chain" if engine == "auto" and net.is_chain else ("graph" if engine == "auto" else engine)
        self.rule = rule = check_rule(rule)
        self.extend = extend
        if kind == "graph" and unpool != "scatter_add":
            raise ValueError("the graph engine unpools through the max-pool gradient (scatter_add) only")
        if unpool not in UNPOOL_MODES:
            raise ValueError(f"unpool '{unpool}' is not understood. Hint: one of {', '.join(UNPOOL_MODES)}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if crop not in ("auto", True, False):
            raise ValueError(f"crop {crop!r} is not understood. Hint: 'auto', True or False")
        if kind == "graph":
            check_modules(net.model, extend=extend, rule=rule)
        self.net, self.unpool, self.max_batch, self.crop = net, unpool, max_batch, crop
        self._engine: Engine = (
            ChainEngine(net, rule=rule, unpool=unpool, max_batch=max_batch, crop=crop, keep=keep, extend=extend)
            if kind == "chain" else GraphEngine(net, rule=rule, keep=keep, extend=extend))

    @property
    def engine(self) -> str:
        """The engine behind this object: ``"chain"`` (the module-by-module walk) or ``"graph"``."""
        return self._engine.name

    @property
    def can_show_stages(self) -> bool:
        """Whether ``stages`` shows the projection step by step (the chain engine's walk)."""
        return self._engine.can_show_stages

    @property
    def forwards(self) -> int:
        """How many forwards this object has run (projections answered from ``keep`` run none)."""
        return self._engine.kept.forwards

    @property
    def forward_seconds(self) -> float:
        """How long this object's forwards took, in all (seconds)."""
        return self._engine.kept.seconds

    # --- what a consumer asks of a model ------------------------------------------------------------------
    def record(self, x: torch.Tensor, layers: Sequence[str], *, switches: bool = True,
               reduce: Callable[[str, torch.Tensor], object] | None = None) -> Record:
        """One forward up to the deepest of ``layers`` (see ``engine.record``); ``reduce(layer, output)``, if
        given, is kept instead of each output."""
        return self._engine.record(x, [self.net.resolve(layer) for layer in layers], switches=switches, reduce=reduce)

    def receptive_field(self, layer: str | nn.Module) -> ReceptiveField:
        """The receptive field of a unit of ``layer``: computed for chains, measured once and cached for graphs."""
        return receptive_field(self.net, self.net.resolve(layer))

    def spatial_layers(self) -> list[str]:
        """The layers with spatial maps, in forward order (``engine.spatial_layers``)."""
        return spatial_layers(self.net)

    def default_layers(self) -> list[str]:
        """The layers a figure shows when none are named (``engine.default_layers``)."""
        return default_layers(self.net)

    @property
    def categories(self) -> list[str] | None:
        """Class names of the model's outputs, where the weights name them."""
        return self.net.categories

    # --- projections --------------------------------------------------------------------------------------
    def project(
        self, x: torch.Tensor, layer: str, channel: int | str = "max", position: Position = "max"
    ) -> Projection:
        """Project one target for a batch of images: every other activation of the layer set to zero.

        Args:
            x: (B, C, H, W) model input (``net.preprocess``; C = 3 for RGB models, 1 for grayscale, any).
            layer: a layer name (``"conv5_3"``, ``"layer3"``), a module path or the module.
            channel: channel index or ``"max"``.
            position: ``"max"``, ``(row, col)``, ``"all"`` or a mask; see ``Target``.

        Returns:
            A ``Projection``; ``projection`` is (B, C, H, W) in the model's input space.
        """
        return self.project_many(x, [Target(layer, channel, position)])[0]

    def project_many(self, x: torch.Tensor, targets: Sequence[Target]) -> list[Projection]:
        """Project many targets: one forward for the batch, the passes down batched over targets.

        Point targets (position ``"max"``, ``(row, col)`` or per-image units) of a chain's spatial layers
        take the receptive-field-cropped path when ``crop`` allows; the others walk the whole maps. Equal
        to projecting the targets one by one. Returns one ``Projection`` per target, in order.
        """
        targets = [t if isinstance(t, Target) else Target(*t) for t in targets]
        if not targets:
            return []
        targets = [Target(self.net.resolve(t.layer), t.channel, t.position) for t in targets]
        done = self._engine.project(x, targets)
        rec = done.record
        x = x if x.device == self.net.device and x.dtype == self.net.dtype else x.to(self.net.device, self.net.dtype)
        out = []
        for k, t in enumerate(targets):
            act = rec.activations[t.layer]
            sel = done.selections[k]
            channels, activation, position = sel.channels, sel.activation, sel.position
            spatial = act.dim() == 4
            out.append(Projection(
                projection=done.projections[k], activation=activation, position=position, channel=channels,
                layer=t.layer, target=t, input=x, preprocessing=self.net.preprocessing,
                weights=self.net.describe(), map_size=tuple(act.shape[-2:]) if spatial else (1, 1),
                box=self._boxes(t, position) if spatial else None, label=self._label(act, channels),
                rule=self.rule, declared=dict(rec.declared.get(t.layer, {})),
            ))
        return out

    def project_seed(self, x: torch.Tensor, layer: str | nn.Module, seed: torch.Tensor) -> torch.Tensor:
        """Carry any signal placed on ``layer``'s output (``seed``, shaped like that output) down to the
        input with the rule: (B, C, H, W). ``project`` is this with the seed of a target; the analyses use
        other seeds (a random positive vector over the channels, a class score)."""
        layer = self.net.resolve(layer)
        shape = (x.shape[0], *self._output_shape(x, layer)[1:])
        if tuple(seed.shape) != shape:
            raise ValueError(f"a seed of shape {tuple(seed.shape)} does not fit layer '{layer}', whose output for this "
                             f"input is {shape}. Hint: a tensor shaped like record(x, [layer]).activations[layer]")
        if seed.is_floating_point() or seed.is_complex():
            bad = ~torch.isfinite(seed)
            if bool(bad.any()):
                where = tuple(int(v) for v in bad.nonzero()[0])
                raise ValueError(f"the seed holds {int(bad.sum())} value(s) that are not finite (NaN or inf; the first "
                                 f"at {where}, {seed[where].item()}): the projection would be NaN. Hint: a finite seed")
        return self._engine.project_seed(x, layer, seed)

    def _output_shape(self, x: torch.Tensor, layer: str) -> tuple[int, ...]:
        """A layer's output shape (for one image) at the input's size (``Net.output_shapes``, cached per size)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            check_input(x, self.net)  # its one-line message
        return self.net.output_shapes(tuple(x.shape[-2:]))[layer]

    def project_units(self, x: torch.Tensor, layer: str | nn.Module, image: torch.Tensor, channel: torch.Tensor,
                      unit: torch.Tensor) -> UnitWindows:
        """Many single units of one layer over a batch, each projected on its receptive-field box.

        The atlas's and Figure 2's step: unit k is ``(channel[k], unit[k])`` of image ``image[k]`` of ``x``.
        Chains walk down inside the windows only (``walk_down_cropped``; where that walk does not apply,
        the chain engine hands the units to the graph engine, which agrees). Graphs compute each unit on the
        crop of its image that it sees, a batch of crops at a time (``GraphEngine.project_windows``), or,
        where the field covers most of the image, project whole inputs, one unit per image in each
        backward, and cut the boxes out.

        Args:
            x: (B, C, H, W) model input.
            image: (N,) index into ``x``; channel: (N,); unit: (N, 2) row, col in the layer's map.

        Returns:
            ``UnitWindows``: ``windows`` (N, C, r_h, r_w) projections on the boxes of ``receptive_field(layer)``
            (zero outside the image: the box is not clipped), ``origins`` (N, 2) the boxes' top-left pixels
            (may be negative), ``activations`` (N,) the units' activations.
        """
        layer = self.net.resolve(layer)
        image, channel, unit = (_whole_numbers(t, what)
                                for t, what in ((image, "image"), (channel, "channel"), (unit, "unit")))
        _, c, h, w = self._output_shape(x, layer)
        n = len(image)
        if channel.shape != (n,) or unit.shape != (n, 2):
            raise ValueError(f"image, channel and unit must be (N,), (N,) and (N, 2), got {tuple(image.shape)}, "
                             f"{tuple(channel.shape)} and {tuple(unit.shape)}")
        for what, values, size in (("image", image, x.shape[0]), ("channel", channel, c), ("row", unit[:, 0], h),
                                   ("column", unit[:, 1], w)):
            bad = values[(values < 0) | (values >= size)]
            if len(bad):
                raise ValueError(f"{what} {int(bad[0])} is out of range for layer '{layer}' on this input: "
                                 f"{what}s run 0..{size - 1}")
        return self._engine.project_units(x, layer, image, channel, unit)

    def stages(self, x: torch.Tensor, target: Target) -> list[tuple[str, torch.Tensor]]:
        """The signal after every step down for one target of a chain: ``[(module name, tensor), ...]``.

        The first entry is the seed on the layer's output; the last is the projection.
        """
        return self._engine.stages(x, Target(self.net.resolve(target.layer), target.channel, target.position))

    def _label(self, act: torch.Tensor, channels: torch.Tensor) -> list[str] | None:
        """Class names of the projected channels, when the layer is the model's output and the weights name them."""
        cats = self.net.categories
        if cats is None or act.dim() != 2 or act.shape[1] != len(cats):
            return None
        return [cats[int(c)] for c in channels]

    def _boxes(self, target: Target, position: torch.Tensor) -> torch.Tensor | None:
        """(B, 4) receptive-field boxes of a point target's units; None where a target has no one box."""
        if not is_point(target.position) or not self.net.is_spatial(target.layer):
            return None
        try:
            rf = receptive_field(self.net, target.layer)
        except ValueError:  # a 1x1 map after adaptive pooling, or a field wider than can be measured
            return None
        return torch.tensor([rf.box(int(r), int(c)) for r, c in position.tolist()], dtype=torch.long)
