"""What every engine and every consumer exchange: ``Target`` in, ``Projection`` out, ``Record`` of a forward,
``Selection`` of a target's units, ``UnitWindows`` of many single units, ``Projected`` of an engine's pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..preprocessing import Preprocessing
from . import rules
from .switches import PoolSwitches

Position = str | tuple[int, int] | torch.Tensor

#: the backward rules at a rectifier (Springenberg et al. 2015): name -> the rule in words (``engine.rules``)
RULES = {r.name: r.formula for r in rules.RULES.values()}


def check_rule(rule: str) -> str:
    """The rule's name (``"guided"`` for ``"guided_backprop"`` too); a ValueError naming the rules if none."""
    return rules.get(rule).name


@dataclass(frozen=True)
class Target:
    """What to project: a layer (paper name), a channel and a position in its map.

    Attributes:
        layer: ``"conv5_3"``, ``"relu4_3"``, ``"pool5"``, ...
        channel: a channel index, ``"max"`` (per image, the channel holding the layer's strongest
            activation), or a (B,) tensor of one channel per image.
        position: ``"max"`` (per image, the strongest unit of the channel's map), ``(row, col)``,
            a (B, 2) integer tensor of one unit per image, ``"all"`` (the whole map) or a mask of shape
            (h, w) or (B, h, w), bool or float, that weights the map.
    """

    layer: str
    channel: int | str | torch.Tensor = "max"
    position: Position = "max"


@dataclass
class Projection:
    """The result of projecting one target for a batch of images.

    Attributes:
        projection: (B, C, H, W) in the model's input space (channel order of the model).
        activation: (B,) the value of the strongest projected unit (for a point target, the unit's).
        position: (B, 2) row, col of that unit in the layer's map.
        channel: (B,) the channel projected.
        layer: the layer's paper name.
        target: the ``Target`` asked for.
        input: (B, C, H, W) the model input that was projected.
        preprocessing: the model's preprocessing, for display.
        weights: one line naming model and weights (``Net.describe()``).
        map_size: (h, w) of the layer's map ((1, 1) for a layer without one).
        box: for a point target of a spatial layer, (B, 4) int64 ``(top, left, bottom, right)``: the
            receptive field of the unit in input pixels (bottom/right exclusive, not clipped to the
            image), computed for chains and measured (once, cached) for graphs; None for whole maps,
            masks and fc layers, whose units see more than one box.
        label: class names of the projected channels, when the layer is the classifier's output.
        rule: the backward rule at the rectifiers (``RULES``): ``"deconvnet"`` unless asked otherwise.
        declared: the declared rules of ``extend=True`` (``engine.rules``) that the forward took before the
            layer's output, with their counts (``{"GELU as ReLU": 18, ...}``); empty where none was needed.
    """

    projection: torch.Tensor
    activation: torch.Tensor
    position: torch.Tensor
    channel: torch.Tensor
    layer: str
    target: Target
    input: torch.Tensor
    preprocessing: Preprocessing
    weights: str
    map_size: tuple[int, int] = (1, 1)
    box: torch.Tensor | None = None
    label: list[str] | None = None
    rule: str = "deconvnet"
    declared: dict[str, int] = field(default_factory=dict)

    def projection_rgb(self) -> torch.Tensor:
        """The projection with its channels in RGB order (what display functions want)."""
        return self.preprocessing.to_rgb_order(self.projection)

    def image_rgb(self) -> torch.Tensor:
        """The input image as RGB in [0, 1]."""
        return self.preprocessing.inverse(self.input)


@dataclass
class Record:
    """What one hooked forward pass recorded.

    Attributes:
        shapes: stack index -> (input shape, output shape) of every module up to the deepest layer.
        switches: stack index -> the pool's ``PoolSwitches`` (compact: the argmax as a one-byte offset
            inside its window; ``.flat()`` gives PyTorch's int64 flat indices).
        activations: layer name -> its output (B, C, h, w) or (B, F), a copy (in-place ReLUs overwrite).
        masks: stack index -> where a ReLU's forward input was positive (bool, its output's shape), recorded
            for the rules that need it (guided backpropagation, gradient); the deconvnet's rule does not.
        depth: stack index of the deepest recorded module (chains; -1 for a graph's record).
        declared: layer -> the declared rules (``engine.rules``) the forward took before its output, counted
            (graphs with ``extend=True``; empty otherwise).
    """

    shapes: dict[int, tuple[torch.Size, torch.Size]] = field(default_factory=dict)
    switches: dict[int, PoolSwitches] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    depth: int = -1
    declared: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """What a target selects in a layer's activations (``targets.select_target``), per image of the batch.

    Attributes:
        channels: (B,) the channel of each image.
        activation: (B,) the value of the strongest selected unit (for a point target, the unit's).
        position: (B, 2) row, col of that unit in the layer's map ((0, 0) for a layer without one).
        make_seed: builds the seed; ``seed()`` calls it.
    """

    channels: torch.Tensor
    activation: torch.Tensor
    position: torch.Tensor
    make_seed: Callable[[], torch.Tensor] = field(repr=False)

    def seed(self) -> torch.Tensor:
        """The signal placed on the layer's output, shaped like it ((B, C, h, w) or (B, F)): the selected
        activations, every other zero. Built on demand (the cropped walk needs no maps)."""
        return self.make_seed()


@dataclass
class UnitWindows:
    """Many single units of one layer, each projected on its receptive-field box (``project_units``).

    Attributes:
        windows: (N, C, r_h, r_w) the projections on the boxes of ``receptive_field(layer)`` (zero outside
            the image: the box is not clipped).
        origins: (N, 2) the boxes' top-left pixels (may be negative).
        activations: (N,) the units' activations.
    """

    windows: torch.Tensor
    origins: torch.Tensor
    activations: torch.Tensor


@dataclass
class Projected:
    """What an engine's ``project`` gives the facade: one projection per target, in order, with what each
    target selected and the record of the forward.

    Attributes:
        projections: (B, C, H, W) per target, in the model's input space.
        selections: the ``Selection`` per target.
        record: the forward's ``Record`` (the targets' layers' activations, the declared rules).
    """

    projections: list[torch.Tensor]
    selections: list[Selection]
    record: Record


class UnsupportedLayerError(ValueError):
    """The model computes something the deconvnet has no rule for (the message names it and where)."""
