"""``Net``: a torchvision model with what is specific to it (layer names, preprocessing, provenance)."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .. import images
from ..preprocessing import TORCHVISION, Preprocessing
from . import alexnet as alexnet_table
from . import vgg as vgg_table
from .weights import (
    OFFLINE,
    WeightsError,
    cached_checkpoint,
    fallback_warning,
    host_reachable,
    load_state_dict_file,
    load_torchvision_weights,
)

WEIGHT_SOURCES = ("auto", "imagenet", *OFFLINE, "random", "<path to a state_dict file>")


class Net:
    """A loaded model and everything the toolkit needs to know about it.

    Attributes:
        arch: ``"vgg16"``, ``"alexnet"``, ...
        model: the module whose forward is run (the torchvision model; its ``features`` alone when the
            weights have no classifier).
        features: the torchvision ``features`` part.
        classifier: the torchvision ``classifier`` part, or None for features-only weights.
        stack: the modules in forward order, ``(qualified name, module)``; the deconvnet walks it down.
        layers: ordered mapping from the paper's layer names (``conv5_3``) to modules.
        preprocessing: how RGB images become model input, and back.
        provenance: arch, weight source, file and sha256 of the weights.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        arch: str,
        features: nn.Sequential,
        classifier: nn.Sequential | None,
        names: Mapping[str, str],
        preprocessing: Preprocessing,
        provenance: dict[str, Any],
    ) -> None:
        self.arch = arch
        self.model = model.eval()
        self.features = features
        self.classifier = classifier
        self.preprocessing = preprocessing
        self.provenance = dict(provenance, arch=arch, preprocessing=preprocessing.name)
        stack = [(f"features.{i}", m) for i, m in enumerate(features)]
        if classifier is not None:
            stack.append(("avgpool", model.avgpool))
            stack += [(f"classifier.{i}", m) for i, m in enumerate(classifier)]
        self.stack: list[tuple[str, nn.Module]] = stack
        by_qualname = dict(stack)
        self.layers: OrderedDict[str, nn.Module] = OrderedDict(
            (paper, by_qualname[q]) for paper, q in names.items() if q in by_qualname
        )
        self.qualnames: dict[str, str] = {p: q for p, q in names.items() if q in by_qualname}
        self.channels: dict[str, int] = self._count_channels()

    def _count_channels(self) -> dict[str, int]:
        out, c, by_module = {}, 3, {id(m): p for p, m in self.layers.items()}
        for _, m in self.stack:
            if isinstance(m, nn.Conv2d):
                c = m.out_channels
            elif isinstance(m, nn.Linear):
                c = m.out_features
            if id(m) in by_module:
                out[by_module[id(m)]] = c
        return out

    # --- devices ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Net":
        """Move the model (in place) and return self."""
        self.model.to(device=device, dtype=dtype)
        return self

    # --- names -----------------------------------------------------------------------------------------
    def check_layer(self, layer: str) -> nn.Module:
        """The module of a paper layer name; a wrong name raises ``ValueError`` listing the valid ones."""
        if layer not in self.layers:
            raise ValueError(
                f"unknown layer '{layer}' for {self.arch}. Hint: valid layers are {', '.join(self.layers)}"
            )
        return self.layers[layer]

    def depth(self, layer: str) -> int:
        """Index in ``stack`` of a layer's module."""
        module = self.check_layer(layer)
        return next(i for i, (_, m) in enumerate(self.stack) if m is module)

    # --- images ----------------------------------------------------------------------------------------
    def preprocess(self, image: images.ImageLike, size: int | None = None, crop: int | None = None) -> torch.Tensor:
        """An RGB image -> model input (1, 3, H, W) on the model's device and dtype.

        Args:
            image: path, bundled scikit-image photograph name, PIL image, HxWx3 array or (3, H, W) tensor.
            size: resize the shorter side to this many pixels (None: keep).
            crop: center-crop a ``crop`` x ``crop`` square (None: no crop).
        """
        from ..memory import check_memory

        pil = images.load_rgb(image)
        if crop is not None and size is not None and crop > size:
            raise ValueError(f"crop {crop} is larger than the resized shorter side {size}. Hint: crop <= size")
        # refuse a size whose resizing or forward pass cannot fit in memory before allocating either
        resized_w, resized_h = images.resized_size(pil.size, size)
        check_memory(self, 1, (resized_h, resized_w) if crop is None else (crop, crop))
        if 3 * resized_w * resized_h > 2**31:  # the resized RGB image alone would take over 2 GiB
            raise MemoryError(f"resizing the image to {resized_w}x{resized_h} px needs "
                              f"{3 * resized_w * resized_h / 2**30:.0f} GiB. Hint: use a smaller size (e.g. 224)")
        pil = images.resize_center_crop(pil, size, crop)
        x = images.pil_to_tensor01(pil).unsqueeze(0).to(device=self.device, dtype=self.dtype)
        return self.preprocessing.forward(x)

    def deprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (B, 3, H, W) -> RGB in [0, 1] for display."""
        return self.preprocessing.inverse(x)

    def describe(self) -> str:
        """One line naming the model and the weights that made a figure."""
        p = self.provenance
        sha = f", sha256 {p['sha256'][:12]}" if p.get("sha256") else ""
        seed = f", seed {p['seed']}" if "seed" in p else ""
        return f"{self.arch}, weights: {p['weights']} ({p['source']}{seed}{sha})"

    def __repr__(self) -> str:
        return f"Net({self.describe()}; {len(self.layers)} named layers)"


# --- loaders --------------------------------------------------------------------------------------------

def _random_model(builder: Callable[..., nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(weights=None)


def _load_into(model: nn.Module, state: dict, arch: str, provenance: dict) -> bool:
    """Load ``features.*`` (required) and ``classifier.*`` (optional, all or none); True if a classifier."""
    where = provenance.get("file", provenance["source"])
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    clf = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    unknown = [k for k in state if not k.startswith(("features.", "classifier."))]
    if unknown:
        raise WeightsError(f"weights '{where}' do not fit {arch}: unexpected keys {unknown[:5]}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # every projection and figure would be NaN
        raise WeightsError(f"weights '{where}' hold NaN or infinite values in {', '.join(broken[:5])}: the file is "
                           "broken. Hint: use another weights file or source")
    for part, sub in (("features", feats), ("classifier", clf)):
        if part == "classifier" and not sub:
            continue
        try:
            getattr(model, part).load_state_dict(sub, strict=True)
        except RuntimeError as err:
            msg = " ".join(str(err).split())
            raise WeightsError(
                f"weights '{where}' do not fit {arch}'s {part}: {msg[:400]}. "
                f"Hint: is it a torchvision {arch} state_dict?"
            ) from err
    return bool(clf)


def _load(
    arch: str,
    table: Any,
    weights: str | os.PathLike,
    seed: int,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
) -> Net:
    builder, tv_weights = table.ARCHS[arch]
    offline = getattr(table, "OFFLINE", {}).get(arch, ())
    source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if not isinstance(source, str):
        raise TypeError(f"weights must be a string or path, got {type(weights).__name__}")

    if source == "auto":
        if cached_checkpoint(tv_weights.url).is_file() or host_reachable(tv_weights.url):
            try:
                return _load(arch, table, "imagenet", seed, device, dtype)
            except WeightsError as err:
                reason = str(err).split(". Hint")[0]
        else:
            reason = "not cached, and the download host cannot be reached"
        if offline:
            source = offline[0]
            fallback_warning(arch, reason, f"the offline weights '{source}' ({OFFLINE[source][2]}); no classifier")
        else:
            fallback_warning(arch, reason, f"RANDOM weights (seed {seed}): there are no offline weights for {arch}")
            source = "random"

    model = _random_model(builder, seed)
    preprocessing, has_classifier = TORCHVISION, True
    if source == "random":
        provenance = {"weights": "random", "source": "torchvision default initialisation", "seed": seed, "sha256": None}
    elif source == "imagenet":
        state, provenance = load_torchvision_weights(tv_weights, arch)
        has_classifier = _load_into(model, state, arch, provenance)
    elif source in OFFLINE:
        if source not in offline:
            raise WeightsError(
                f"weights='{source}' exists for {', '.join(a for a, s in _offline_archs().items() if source in s)} "
                f"only, not {arch}. Hint: use weights='imagenet', a state_dict path, or 'random'"
            )
        loader, preprocessing, _ = OFFLINE[source]
        state, provenance = loader()
        has_classifier = _load_into(model, state, arch, provenance)
    else:
        looks_like_path = os.sep in source or source.endswith((".pth", ".pt", ".bin", ".ckpt")) or os.path.exists(source)
        if not looks_like_path:
            raise ValueError(f"unknown weights '{source}'. Hint: use one of {', '.join(WEIGHT_SOURCES)}")
        state, provenance = load_state_dict_file(source)
        has_classifier = _load_into(model, state, arch, provenance)

    names = dict(table.feature_names(model.features))
    if has_classifier:
        names.update(vgg_table.classifier_names(model.classifier))
    net = Net(
        model if has_classifier else model.features,
        arch=arch,
        features=model.features,
        classifier=model.classifier if has_classifier else None,
        names=names,
        preprocessing=preprocessing,
        provenance=provenance,
    )
    if has_classifier:
        net.provenance["categories"] = "ImageNet-1k" if source == "imagenet" else "unknown"
    return net.to(device=device, dtype=dtype)


def _offline_archs() -> dict[str, tuple[str, ...]]:
    return {**vgg_table.OFFLINE, **getattr(alexnet_table, "OFFLINE", {})}


def load_vgg(
    arch: str = "vgg16",
    weights: str | os.PathLike = "auto",
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Net:
    """Load a torchvision VGG (vgg11/13/16/19 and their ``_bn`` variants) in eval mode.

    Args:
        arch: ``"vgg16"``, ``"vgg16_bn"``, ...
        weights: ``"imagenet"`` (torchvision, downloaded and cached), ``"mri"`` or ``"hed"`` (vgg16 only:
            offline conv weights, no classifier; see ``deconvnet.models.weights``), ``"random"`` (seeded),
            a path to a torchvision-layout state_dict, or ``"auto"``: ImageNet when cached or
            downloadable, else the offline default (``"mri"``) with a warning.
        seed: seed of the random initialisation (``"random"``, and the fallback of ``"auto"`` for archs
            without offline weights).
        device, dtype: where the model lives; inputs and projections follow it.

    Returns:
        The loaded ``Net``.

    Raises:
        ValueError: unknown arch or weights name.
        WeightsError: the weights cannot be had or read (the message names the file and the fix).
    """
    if arch not in vgg_table.ARCHS:
        raise ValueError(f"unknown VGG arch '{arch}'. Hint: use one of {', '.join(vgg_table.ARCHS)} (or load_alexnet)")
    return _load(arch, vgg_table, weights, seed, device, dtype)


def load_alexnet(
    weights: str | os.PathLike = "auto",
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Net:
    """Load torchvision's AlexNet (overlapping 3x3 stride-2 pooling, like Zeiler & Fergus's net).

    Args and Raises: as ``load_vgg``; there are no offline AlexNet weights, so offline ``"auto"`` falls
    back to seeded random weights with a warning.
    """
    return _load("alexnet", alexnet_table, weights, seed, device, dtype)


def load_model(arch: str, weights: str | os.PathLike = "auto", **kwargs: Any) -> Net:
    """``load_vgg`` or ``load_alexnet`` by arch name."""
    if arch == "alexnet":
        return load_alexnet(weights, **kwargs)
    return load_vgg(arch, weights, **kwargs)


ARCH_NAMES = tuple(vgg_table.ARCHS) + tuple(alexnet_table.ARCHS)
