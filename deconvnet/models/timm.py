"""The timm family: any ``timm`` model by name (``load_model("timm:convnext_nano", "random")``).

What is timm-specific lives here: building by name (random weights offline, timm's pretrained weights
online), the input normalisation of the weights' ``pretrained_cfg``, their provenance (name and digest) and
the default layers, timm's ``feature_info`` stages.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..preprocessing import TORCHVISION, Preprocessing
from .net import Net
from .weights import WeightsError, fallback_warning, sha256_file

PREFIX = "timm:"


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is in the lock
        raise ValueError("timm is not installed. Hint: pip install timm (see requirements.lock)") from err
    return timm


def _preprocessing(cfg: dict) -> Preprocessing:
    mean = tuple(float(v) for v in cfg.get("mean", TORCHVISION.mean))
    std = tuple(float(v) for v in cfg.get("std", TORCHVISION.std))
    if mean == TORCHVISION.mean and std == TORCHVISION.std:
        return TORCHVISION
    return Preprocessing("RGB", 1.0, mean, std, name=f"timm pretrained_cfg (RGB, [0,1], mean "
                         f"{tuple(round(v, 4) for v in mean)}, std {tuple(round(v, 4) for v in std)})")


def stages(model: torch.nn.Module) -> list[str] | None:
    """The modules of timm's ``feature_info`` (the outputs of its stages), the default layers."""
    info = getattr(model, "feature_info", None)
    names = [d.get("module") for d in info if isinstance(d, dict)] if isinstance(info, list) else []
    modules = dict(model.named_modules())
    names = [n for n in names if n and n in modules]
    return names or None


def load_timm(arch: str, weights: Any, *, seed: int, wrap: Any) -> tuple[Net, dict]:
    """Build ``timm:NAME`` and wrap it (``wrap``: ``models.wrap``).

    Args:
        arch: ``"timm:convnext_nano"``.
        weights: ``"random"`` (seeded, offline), ``"imagenet"`` (timm's pretrained weights, downloaded by
            timm) or ``"auto"`` (pretrained when the hub can be reached, else random with a warning).

    Returns:
        The ``Net`` (its ``stages`` set from ``feature_info``) and its provenance.

    Raises:
        ValueError: an unknown timm model name (the message names close ones) or weights name.
    """
    timm = _timm()
    name = arch[len(PREFIX):]
    known = timm.list_models()
    if name not in known:
        import difflib

        near = difflib.get_close_matches(name, known, n=5)
        raise ValueError(f"unknown timm model '{name}'. Hint: a name of timm.list_models()"
                         + (f", e.g. {', '.join('timm:' + n for n in near)}" if near else ""))
    source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if source not in ("auto", "imagenet", "random"):
        raise ValueError(f"unknown weights {weights!r} for {arch}. Hint: auto, imagenet or random")
    if source == "auto":
        source = "random" if os.environ.get("DECONVNET_OFFLINE") else "imagenet"
        if source == "random":
            fallback_warning(arch, "DECONVNET_OFFLINE is set", f"RANDOM weights (seed {seed})")
    if source == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False)
        provenance = {"weights": "random", "source": "timm default initialisation", "seed": seed, "sha256": None}
    else:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as err:
            raise WeightsError(f"could not get timm's pretrained weights for {name}: {str(err).splitlines()[0]}. "
                               "Hint: offline, use weights='random'") from err
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        hub = cfg.get("hf_hub_id") or cfg.get("url") or name
        provenance = {"weights": "imagenet", "source": f"timm {name} ({hub})", "sha256": _digest(cfg)}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    net = wrap(model.eval(), name=arch, preprocessing=_preprocessing(cfg))
    net.stages = stages(model)
    return net, provenance


def _digest(cfg: dict) -> str | None:
    """sha256 of the pretrained file in the Hugging Face cache, where it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(cfg.get("hf_hub_id", ""), fname)
            if isinstance(path, str) and os.path.isfile(path):
                return sha256_file(path)
    except Exception:  # no digest is better than no model
        return None
    return None
