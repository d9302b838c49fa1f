"""Transformation robustness (Olah et al. 2017): random padding, jitter, scaling and rotation of the image
before each step, so that the optimisation cannot win with high-frequency patterns that a one-pixel shift
undoes.

Each transform is a factory returning a function ``(images, generator) -> images`` (lucent's style); every
random choice is drawn from the ``torch.Generator`` passed in, so a seed fixes the whole sequence, and one
draw applies to the whole batch (each image's optimisation stays independent of the others in it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(values: Sequence[float], g: torch.Generator) -> float:
    return values[int(torch.randint(len(values), (1,), generator=g))]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels of constant ``value`` (0.5: mid-gray)."""
    def run(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return F.pad(t, (width, width, width, width), mode="constant", value=value)
    return run


def jitter(d: int) -> Transform:
    """A random crop ``d`` pixels smaller on each axis (a shift by 0..d pixels)."""
    def run(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = t.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=g))
        return t[..., dy : dy + h - d, dx : dx + w - d]
    return run


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize (bilinear) by a factor chosen from ``scales``."""
    def run(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = _choice(scales, g)
        h, w = t.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return t if size == (h, w) else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return run


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle chosen from ``degrees`` (bilinear; corners filled by the border)."""
    def run(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a = math.radians(_choice(degrees, g))
        if a == 0:
            return t
        h, w = t.shape[-2:]
        cos, sin = math.cos(a), math.sin(a)
        # affine_grid works in normalised coordinates: correct for a non-square image's aspect
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=t.dtype, device=t.device)
        grid = F.affine_grid(theta.expand(t.shape[0], 2, 3), list(t.shape), align_corners=False)
        return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return run


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order, all drawing from the one generator."""
    def run(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for f in transforms:
            t = f(t, g)
        return t
    return run


#: lucent's ``standard_transforms``: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4
STANDARD = {
    "pad": 12, "jitter": 8, "scales": [1 + (i - 5) / 50 for i in range(11)],
    "degrees": list(range(-10, 11)) + 5 * [0], "jitter_after": 4,
}
#: the Distill article's footnote: pad 16, jitter 16, scale {1, 0.975, 1.025, 0.95, 1.05}, rotate -5..5, jitter 8
DISTILL = {
    "pad": 16, "jitter": 16, "scales": [1, 0.975, 1.025, 0.95, 1.05], "degrees": list(range(-5, 6)), "jitter_after": 8,
}
RECIPES = {"standard": STANDARD, "distill": DISTILL, "none": None}


def recipe(name: str) -> Transform:
    """The transforms of a named recipe (``RECIPES``): ``"standard"`` (lucent), ``"distill"`` or ``"none"``."""
    if name not in RECIPES:
        raise ValueError(f"transforms '{name}' are not understood. Hint: one of {', '.join(RECIPES)}")
    r = RECIPES[name]
    if r is None:
        return lambda t, g: t
    return compose([pad(r["pad"]), jitter(r["jitter"]), random_scale(r["scales"]), random_rotate(r["degrees"]),
                    jitter(r["jitter_after"])])


def describe(name: str) -> str:
    """A recipe's transforms in words (recorded beside every image)."""
    r = RECIPES.get(name)
    if r is None:
        return "no transforms"
    return (f"pad {r['pad']} (gray), jitter {r['jitter']}, scale {min(r['scales']):g}-{max(r['scales']):g}, "
            f"rotate {min(r['degrees'])}..{max(r['degrees'])} degrees, jitter {r['jitter_after']}")
