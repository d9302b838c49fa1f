"""The engine interface: what ``Deconvnet`` asks of the engine behind it, chain or graph (their peers' contract)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from .record import Kept
from .types import Projected, Record, Target, UnitWindows


@runtime_checkable
class Engine(Protocol):
    """One engine behind the facade: ``ChainEngine`` (a stack walked down module by module) or ``GraphEngine``
    (the rule at every rectifier of the model's own autograd graph). Layers are resolved by the facade.

    Attributes:
        name: ``"chain"`` or ``"graph"`` (``Deconvnet.engine``).
        can_show_stages: whether ``stages`` walks the projection down step by step (chains).
        kept: the recorded forwards kept by input (``keep``), with the count and time of those that ran.
    """

    name: str
    can_show_stages: bool
    kept: Kept

    def record(self, x: torch.Tensor, layers: Sequence[str], *, switches: bool = True,
               reduce: Callable | None = None) -> Record:
        """One forward up to the deepest of ``layers``."""
        ...

    def project(self, x: torch.Tensor, targets: list[Target]) -> Projected:
        """Projections of resolved targets, what each selected and the forward's record."""
        ...

    def project_seed(self, x: torch.Tensor, layer: str, seed: torch.Tensor) -> torch.Tensor:
        """Any signal (B, ...) placed on ``layer``'s output, carried down to the input: (B, C, H, W)."""
        ...

    def project_units(self, x: torch.Tensor, layer: str, image: torch.Tensor, channel: torch.Tensor,
                      unit: torch.Tensor) -> UnitWindows:
        """Many single units of one layer (checked indices), each projected on its receptive-field box."""
        ...

    def stages(self, x: torch.Tensor, target: Target) -> list[tuple[str, torch.Tensor]]:
        """The signal after every step down for one resolved target (``can_show_stages`` engines)."""
        ...
