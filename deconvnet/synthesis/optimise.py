"""The optimisation: Adam on the image's spectrum, maximising a channel's mean (or one unit) at a layer.

Plain autograd through the model's own forward, with one forward hook on the layer that keeps its output and
stops the forward there: any model the toolkit wraps (chains, graphs, models with declared rules) works, and
no backward rule is changed (the deconvnet's rules are for projections, not for this gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checks import positive_int
from ..models import Net, wrap
from ..models.hooks import capture
from ..models.lock import exclusive, own_call
from . import transforms as T
from .param import FourierImage

OBJECTIVES = ("channel", "unit")
#: the settings' defaults, as lucid's ``render_vis`` and the Distill article
DEFAULT_STEPS, DEFAULT_SIZE, DEFAULT_LR = 512, 128, 0.05


@dataclass
class Synthesis:
    """Images synthesised for channels of one layer.

    Attributes:
        layer: the layer (its name in ``net.layers``).
        channels: the channels, one image each.
        images: (C, 3, H, W) RGB in [0, 1], on the CPU, ready to show.
        activations: (C,) the objective each image reaches, measured on the image itself (no transforms):
            the channel's mean over the layer's map (or the centre unit, ``objective="unit"``).
        peaks: (C,) the channel's strongest unit on the image: what a dataset scan's top activation measures.
        curve: (C, steps done) the objective at every step (under that step's transforms).
        settings: the recipe and its settings (steps, size, seed, learning rate, transforms,
            parameterisation, objective, whether it was interrupted).
        weights: ``net.describe()``; provenance: ``net.provenance``.
    """

    layer: str
    channels: list[int]
    images: torch.Tensor
    activations: torch.Tensor
    peaks: torch.Tensor
    curve: torch.Tensor
    settings: dict[str, Any]
    weights: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        """Whether the optimisation was interrupted before ``settings["steps"]`` steps."""
        return bool(self.settings.get("interrupted"))

    def recipe(self) -> str:
        """One line: what made the images (printed under every figure and page that shows one)."""
        s = self.settings
        done = (f"{s['steps_done']} of {s['steps']} steps (interrupted)" if s.get("interrupted")
                else f"{s['steps']} steps")
        return (f"Feature visualisation (Olah et al. 2017): {s['objective']} objective, {done}, Adam lr {s['lr']:g}, "
                f"{s['size']} px, seed {s['seed']}; {s['parameterisation']}; transforms: {s['transforms_text']}. "
                f"{self.weights}.")

    def record(self, index: int) -> dict[str, Any]:
        """What a sidecar keeps of image ``index`` (JSON-serialisable)."""
        return {"layer": self.layer, "channel": self.channels[index], "activation": float(self.activations[index]),
                "peak": float(self.peaks[index]),
                "curve_last": float(self.curve[index, -1]) if self.curve.shape[1] else None}


def channel_seed(seed: int, channel: int) -> int:
    """The seed of one channel's initial spectrum: the same image for a channel whatever else shares its batch."""
    return (seed * 1_000_003 + channel * 7919 + 17) % (2**63 - 1)


def _check_channels(net: Net, layer: str, channels: int | Sequence[int]) -> list[int]:
    n = net.channels[layer]
    out = [channels] if isinstance(channels, int) else list(channels)
    if not out:
        raise ValueError(f"no channels given for layer '{layer}'. Hint: e.g. channels=[0, 1, 2] (0..{n - 1})")
    for c in out:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"a channel is an integer, not {c!r}")
        if not 0 <= c < n:
            raise ValueError(f"channel {c} is out of range for layer '{layer}' of {net.arch}, which has {n} channels. "
                             f"Hint: use 0..{n - 1}")
    return out


def layer_output(net: Net, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` for the model input ``x``, with its autograd graph; the forward stops there.

    The hook exists only inside this call and acts only for it (``models.lock``).
    """
    def keep(keys: list[str], m: nn.Module, inputs: tuple, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer '{layer}' returns a {type(output).__name__}, not a tensor: name a module "
                             "whose output is one tensor")
        return output

    with own_call() as token:
        kept = capture({"out": net.layers[layer]}, lambda: net.model(x), keep=keep, token=token)
    if "out" not in kept:
        raise ValueError(f"the forward of {net.arch} never called layer '{layer}'. "
                         "Hint: name a module its forward uses")
    return kept["out"]


def _objective(out: torch.Tensor, channels: torch.Tensor, how: str) -> torch.Tensor:
    """(B,) the objective of image b: channel ``channels[b]``'s mean over the map, or its centre unit."""
    rows = out[torch.arange(len(channels)), channels]
    if rows.dim() == 1:  # a layer without maps (a classifier's output): the value itself
        return rows
    if how == "unit":
        return rows[:, rows.shape[1] // 2, rows.shape[2] // 2]
    return rows.flatten(1).mean(1)


def _check_settings(net: Net, objective: str, lr: float, transforms: str) -> T.Transform:
    """The objective is one of ``OBJECTIVES``, the learning rate positive, the model's input RGB or gray;
    returns the recipe's transform (``synthesis.transforms.recipe``, which checks its name)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective '{objective}' is not understood. Hint: one of {', '.join(OBJECTIVES)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    transform = T.recipe(transforms)
    if net.preprocessing.channels not in (1, 3):
        raise ValueError(f"{net.arch} takes {net.in_channels}-channel inputs: synthesis makes RGB images. "
                         "Hint: wrap the model with a 1- or 3-channel Preprocessing")
    return transform


def _ascend(net: Net, image: FourierImage, layer: str, target: torch.Tensor, objective: str,
            transform: T.Transform, g: torch.Generator, *, steps: int, lr: float, progress: bool,
            before_step: Callable[[], bool] | None) -> tuple[list[torch.Tensor], bool]:
    """Adam on ``image``'s spectrum for ``steps`` steps, or until Ctrl-C or ``before_step`` stops it: the
    objectives of every step done (on the CPU), and whether it was stopped."""
    optimiser = torch.optim.Adam([image.spectrum], lr=lr)
    curve: list[torch.Tensor] = []
    interrupted = False
    params = [(p, p.requires_grad) for p in net.model.parameters()]
    bar = tqdm(total=steps, desc=f"synthesize {layer}", unit="step", disable=not progress)

    def one_step() -> torch.Tensor:
        # the model's lock for one step only: between steps (``before_step``) another call may project the
        # model, as the explorer's main view does while its background synthesis waits
        with exclusive(net.model):
            for p, _ in params:
                p.requires_grad_(False)  # the backward computes the image's gradient only
            try:
                x = net.preprocessing.forward(transform(image.images(), g))
                value = _objective(layer_output(net, x, layer), target, objective)
                optimiser.zero_grad()
                (-value.sum()).backward()
                optimiser.step()
            finally:
                for p, flag in params:
                    p.requires_grad_(flag)
        return value

    try:
        for _ in range(steps):
            if before_step is not None and before_step():
                raise KeyboardInterrupt
            curve.append(one_step().detach().cpu())
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True  # what was reached is returned; the caller says it was interrupted
    finally:
        bar.close()
    return curve, interrupted


def _measure(net: Net, image: FourierImage, layer: str, target: torch.Tensor,
             objective: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images reached, measured on themselves (no transforms): ``(images, objectives, strongest units)``."""
    with exclusive(net.model), torch.no_grad():
        final = image.images().detach()
        out = layer_output(net, net.preprocessing.forward(final), layer)
        activations = _objective(out, target, objective).cpu()
        rows = out[torch.arange(len(target)), target]
        peaks = (rows.flatten(1).amax(1) if rows.dim() > 1 else rows).cpu()
    return final, activations, peaks


def synthesize(
    net: Net | nn.Module,
    layer: str | nn.Module,
    channels: int | Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    objective: str = "channel",
    transforms: str = "standard",
    decorrelate: bool = True,
    fft: bool = True,
    progress: bool = True,
    before_step: Callable[[], bool] | None = None,
) -> Synthesis:
    """Synthesise, for each channel, the image that excites it most, by gradient ascent from noise.

    Olah et al.'s recipe (Distill 2017; lucid's ``render_vis``): a Fourier parameterisation with a 1/f spectrum
    and decorrelated colours (``synthesis.param``), transformation robustness (``synthesis.transforms``), Adam
    at 0.05. The channels go in one batch, one image each; channel c's image does not depend on the others
    (its initial spectrum comes from ``channel_seed(seed, c)``, the transforms from ``seed``). Deterministic
    for a seed on the CPU. Ctrl-C stops the optimisation and returns what it reached
    (``settings["interrupted"]``).

    Args:
        net: a ``Net`` or any ``nn.Module`` (wrapped): chains, graphs, declared-rule models alike.
        layer: a layer name (``"conv4_3"``, ``"layer3"``), module path or module.
        channels: a channel or a list of channels of the layer.
        steps: optimisation steps (lucid: 512; the Distill article: 2560).
        size: side of the square image, in pixels (lucid: 128).
        seed: fixes the initial spectra and every transform.
        lr: Adam's learning rate.
        objective: ``"channel"``: the channel's mean over the map; ``"unit"``: its centre unit.
        transforms: ``"standard"`` (lucent's), ``"distill"`` (the article's footnote) or ``"none"``.
        decorrelate, fft: the colour decorrelation and the Fourier parameterisation (False: plain pixels,
            for comparison).
        progress: a tqdm progress bar.
        before_step: called before every step; True stops the optimisation there, as Ctrl-C does (the
            explorer's background thread: a newer request supersedes this one).

    Returns:
        A ``Synthesis``: the images (C, 3, H, W) in [0, 1], their activations and the settings.
    """
    net = wrap(net)
    layer = net.resolve(layer)
    chans = _check_channels(net, layer, channels)
    steps, size = positive_int("steps", steps, minimum=0), positive_int("size", size, minimum=8)
    transform = _check_settings(net, objective, lr, transforms)
    device, dtype = net.device, net.dtype
    image = FourierImage.random(len(chans), size, generators=[torch.Generator().manual_seed(channel_seed(seed, c))
                                                              for c in chans],
                                decorrelate=decorrelate, fft=fft, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed)
    target = torch.tensor(chans, device=device)
    curve, interrupted = _ascend(net, image, layer, target, objective, transform, g, steps=steps, lr=lr,
                                 progress=progress, before_step=before_step)
    final, activations, peaks = _measure(net, image, layer, target, objective)
    settings = {
        "method": "feature visualisation by optimisation (Olah et al. 2017, Distill; lucid's render_vis)",
        "objective": objective, "steps": steps, "steps_done": len(curve), "interrupted": interrupted,
        "size": size, "seed": seed, "lr": lr, "optimiser": "Adam", "transforms": transforms,
        "transforms_text": T.describe(transforms), "parameterisation": image.describe(),
        "decorrelate": decorrelate, "fft": fft,
    }
    return Synthesis(layer=layer, channels=chans, images=final.float().cpu().clamp(0, 1), activations=activations,
                     peaks=peaks, curve=(torch.stack(curve, 1) if curve else torch.zeros(len(chans), 0)),
                     settings=settings, weights=net.describe(), provenance=dict(net.provenance))
