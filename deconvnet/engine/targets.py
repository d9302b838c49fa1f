"""Targets to seeds: which unit, map or mask of a layer's activations goes down, and with what value."""

from __future__ import annotations

import numbers

import torch

from ..models import Net
from .types import Position, Selection, Target


def select_target(act: torch.Tensor, target: Target, net: Net) -> Selection:
    """What ``target`` selects in a layer's activations ``act`` (B, C, h, w) or (B, F): per image its channel,
    activation and position, and the seed (built on demand)."""
    b, c = act.shape[:2]
    spatial = act.dim() == 4
    a4 = act if spatial else act.view(b, c, 1, 1)
    h, w = a4.shape[-2:]
    channels = _target_channels(a4, target, net)
    maps = a4[torch.arange(b, device=act.device), channels]  # (B, h, w)
    pos = target.position
    if isinstance(pos, str):
        if pos not in ("max", "all"):
            raise ValueError(f"position '{pos}' is not understood. Hint: 'max', 'all', (row, col) or a mask")
        weight = None if pos == "max" else torch.ones_like(maps)
    elif isinstance(pos, torch.Tensor) and not pos.is_floating_point() and pos.dtype != torch.bool:
        units = pos.to(device=act.device, dtype=torch.long)  # (B, 2): one unit per image
        if units.shape != (b, 2):
            raise ValueError(f"per-image positions must be a ({b}, 2) integer tensor, got {tuple(pos.shape)}")
        if not ((units[:, 0] >= 0) & (units[:, 0] < h) & (units[:, 1] >= 0) & (units[:, 1] < w)).all():
            raise ValueError(f"per-image positions {units.tolist()} leave layer '{target.layer}''s {h}x{w} map")
        weight = torch.zeros_like(maps)
        weight[torch.arange(b, device=act.device), units[:, 0], units[:, 1]] = 1
    elif isinstance(pos, torch.Tensor):
        mask = pos.to(device=act.device, dtype=act.dtype)
        if mask.shape not in ((h, w), (b, h, w)):
            raise ValueError(f"mask of shape {tuple(pos.shape)} does not fit layer '{target.layer}': its map is "
                             f"{h}x{w}; give (h, w) or ({b}, {h}, {w})")
        weight = mask.expand(b, h, w)
    else:
        try:
            row, col = (int(v) for v in pos)
        except (TypeError, ValueError):
            raise ValueError(f"position {pos!r} is not understood. Hint: 'max', 'all', (row, col) or a mask") from None
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"position ({row}, {col}) is outside layer '{target.layer}''s {h}x{w} map for this input "
                             "size")
        weight = torch.zeros_like(maps)
        weight[:, row, col] = 1
    if weight is None:  # "max": the strongest unit of each image's map
        flat = maps.flatten(1).argmax(1)
        weight = torch.zeros_like(maps).flatten(1).scatter_(1, flat[:, None], 1.0).view_as(maps)
    seeded = maps * weight
    # the strongest projected unit (ties: first in row-major order)
    score = torch.where(weight != 0, seeded, torch.full_like(seeded, float("-inf")))
    flat = score.flatten(1).argmax(1)
    position = torch.stack([flat // w, flat % w], 1)
    activation = seeded.flatten(1).gather(1, flat[:, None]).squeeze(1)

    def seed_map() -> torch.Tensor:  # built only by the full walk: the cropped one needs no maps
        seed = torch.zeros_like(a4)
        seed[torch.arange(b, device=act.device), channels] = seeded
        return seed.view_as(act)

    return Selection(channels=channels, activation=activation, position=position, make_seed=seed_map)


def _target_channels(a4: torch.Tensor, target: Target, net: Net) -> torch.Tensor:
    """(B,) the channel of each image that ``target.channel`` names (``a4``: the activations (B, C, h, w))."""
    b, c = a4.shape[:2]
    ch = target.channel
    if isinstance(ch, torch.Tensor):  # one channel per image
        channels = ch.to(device=a4.device, dtype=torch.long).reshape(-1)
        if channels.numel() != b or not ((channels >= 0) & (channels < c)).all():
            raise ValueError(f"per-image channels {ch.tolist()} must be {b} values in [0, {c}) for layer "
                             f"'{target.layer}'")
    elif isinstance(ch, str):
        if ch != "max":
            raise ValueError(f"channel '{ch}' is not understood. Hint: an integer in [0, {c}) or 'max'")
        channels = a4.flatten(2).amax(2).argmax(1)
    else:
        if isinstance(ch, numbers.Integral) and not isinstance(ch, bool):
            ch = int(ch)  # numpy integers too
        if isinstance(ch, bool) or not isinstance(ch, int) or not 0 <= ch < c:
            raise ValueError(f"channel {ch!r} is out of range for layer '{target.layer}' of {net.arch}, which has {c} "
                             f"channels. Hint: use 0..{c - 1} or 'max'")
        channels = torch.full((b,), ch, dtype=torch.long, device=a4.device)
    return channels


def is_point(position: Position) -> bool:
    """Whether a target's position names one unit per image (``"max"``, ``(row, col)``, (B, 2) integers)."""
    if isinstance(position, torch.Tensor):
        return not position.is_floating_point() and position.dtype != torch.bool
    if isinstance(position, str):
        return position == "max"
    return True  # (row, col) in any sequence form; select_target has checked it
