"""Loading models (``load_vgg``, ``load_alexnet``, ``load_model``) and wrapping any ``nn.Module`` as a ``Net``."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..preprocessing import GRAYSCALE, TORCHVISION, Preprocessing
from . import alexnet as alexnet_table
from . import timm as timm_family
from . import vgg as vgg_table
from .net import CHAIN_MODULES, DEFAULT_SIZE, Net, _tree, unwrap_compiled  # noqa: F401 (re-exported)
from .user import build_user_model, is_import_path, parse_preprocessing
from .weights import (
    OFFLINE,
    WeightsError,
    cached_checkpoint,
    check_downloadable,
    fallback_warning,
    host_reachable,
    load_state_dict_file,
    load_torchvision_weights,
    sha256_file,
)

WEIGHT_SOURCES = ("auto", "imagenet", *OFFLINE, "random", "<path to a state_dict file>")


# --- loaders --------------------------------------------------------------------------------------------

def _random_model(builder: Callable[..., nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(weights=None)


def _empty_model(builder: Callable[..., nn.Module]) -> nn.Module:
    """The architecture with uninitialised CPU memory for its weights, which are loaded next: built on the meta
    device, so that no random initialisation is drawn only to be overwritten (VGG16's takes seconds)."""
    with torch.device("meta"):
        model = builder(weights=None)
    return model.to_empty(device="cpu")


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
    enum = _weights_enum(arch, source)
    if enum is not None:  # VGG16_Weights.IMAGENET1K_V1, "DEFAULT", "IMAGENET1K_FEATURES", ...
        tv_weights, source = enum, "imagenet"
    if not isinstance(source, str):
        raise TypeError(f"weights must be a string, a path or a torchvision weights enum, got {type(weights).__name__}")

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

    # a loaded file replaces every weight of features and classifier (a file without a classifier drops it)
    model = _random_model(builder, seed) if source == "random" else _empty_model(builder)
    preprocessing, has_classifier = TORCHVISION, True
    if source == "random":
        provenance = {"weights": "random", "source": "torchvision default initialisation", "seed": seed, "sha256": None}
    elif source == "imagenet":
        state, provenance = load_torchvision_weights(tv_weights, arch)
        has_classifier = _load_into(model, state, arch, provenance)
        preprocessing = torchvision_preprocessing(tv_weights)
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
        looks_like_path = (os.sep in source or source.endswith((".pth", ".pt", ".bin", ".ckpt"))
                           or os.path.exists(source))
        if not looks_like_path:
            raise ValueError(f"unknown weights '{source}'. Hint: use one of {', '.join(WEIGHT_SOURCES)}")
        state, provenance = load_state_dict_file(source)
        has_classifier = _load_into(model, state, arch, provenance)

    names = dict(table.feature_names(model.features))
    if has_classifier:
        names.update(vgg_table.classifier_names(model.classifier))
    categories = tv_weights.meta.get("categories") if source == "imagenet" and has_classifier else None
    model.eval()
    net = Net(
        model if has_classifier else model.features,
        arch=arch,
        stack=_table_stack(model, has_classifier),
        features=model.features,
        classifier=model.classifier if has_classifier else None,
        names=names,
        preprocessing=preprocessing,
        provenance=provenance,
        categories=categories,
    )
    if has_classifier:
        net.provenance["categories"] = "ImageNet-1k" if categories else "unknown"
    return net.to(device=device, dtype=dtype)


def _table_stack(model: nn.Module, has_classifier: bool) -> list[tuple[str, nn.Module]]:
    """The forward order of torchvision's VGG and AlexNet: features, then avgpool, flatten and classifier."""
    stack = [(f"features.{i}", m) for i, m in enumerate(model.features)]
    if has_classifier:
        stack.append(("avgpool", model.avgpool))
        stack += [(f"classifier.{i}", m) for i, m in enumerate(model.classifier)]
    return stack


def _weights_enum(arch: str, weights: Any) -> Any:
    """A torchvision weights enum from an enum or its name (``"DEFAULT"``, ``"IMAGENET1K_V1"``); else None."""
    from torchvision.models import WeightsEnum, get_model_weights

    if isinstance(weights, WeightsEnum):
        return weights
    if not isinstance(weights, str) or not weights.isupper():
        return None
    try:
        cls = get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    name = weights.split(".")[-1]
    if name == "DEFAULT":
        return cls.DEFAULT
    if name in cls.__members__:
        return cls[name]
    raise ValueError(f"{arch} has no torchvision weights '{weights}'. Hint: one of DEFAULT, "
                     f"{', '.join(cls.__members__)}")


def torchvision_preprocessing(enum: Any) -> Preprocessing:
    """The input convention of torchvision weights, from their ``transforms()`` (mean and std)."""
    t = enum.transforms()
    mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    if mean == TORCHVISION.mean and std == TORCHVISION.std:
        return TORCHVISION
    return Preprocessing("RGB", 1.0, mean, std, name=f"torchvision {type(enum).__name__}.{enum.name} (RGB, [0,1], "
                         f"mean {tuple(round(v, 4) for v in mean)}, std {tuple(round(v, 4) for v in std)})")


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


def load_model(arch: str, weights: Any = "auto", *, seed: int = 0, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> Net:
    """Any torchvision classification model by name: ``load_vgg``/``load_alexnet`` for those (paper layer
    names, offline weights), else the torchvision builder (``resnet50``, ``googlenet``, ``densenet121``, ...),
    wrapped as a graph (layers are module paths); ``"timm:NAME"`` for any timm model (``models.timm``:
    ``"random"`` weights offline, timm's pretrained weights online; its ``feature_info`` stages are the
    default layers).

    Args:
        weights: as ``load_vgg`` ("auto", "imagenet", a torchvision weights enum or its name, "random", a
            state_dict path); "auto" offline gives seeded random weights, with a warning.

    Raises:
        ValueError: unknown arch (the message names the valid ones) or weights name.
        WeightsError: the weights cannot be had or read.
    """
    if isinstance(arch, str) and arch.startswith(timm_family.PREFIX):  # any timm model by name
        net, provenance = timm_family.load_timm(arch, weights, seed=seed, wrap=wrap)
        net.provenance.update(provenance)
        return net.to(device=device, dtype=dtype)
    if is_import_path(arch):  # a user's own model: "mypkg.models:TinyResNet" (``deconvnet.models.user``)
        return load_user_model(arch, None if weights == "auto" else weights, seed=seed, device=device, dtype=dtype)
    if arch == "alexnet":
        return load_alexnet(weights, seed=seed, device=device, dtype=dtype)
    if arch in vgg_table.ARCHS:
        return load_vgg(arch, weights, seed=seed, device=device, dtype=dtype)
    import torchvision.models as tvm

    classification = tvm.list_models(module=tvm)
    if arch not in classification:
        import difflib

        near = difflib.get_close_matches(arch, classification, n=5)
        raise ValueError(f"unknown arch '{arch}'. Hint: a torchvision classification model"
                         + (f", e.g. {', '.join(near)}" if near else " (torchvision.models.list_models())")
                         + ", or your own model by import path, module.path:ClassName")
    builder = tvm.get_model_builder(arch)
    enum = _weights_enum(arch, weights)
    source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if enum is None and source in ("auto", "imagenet"):
        enum = tvm.get_model_weights(arch).DEFAULT
        if source == "auto" and not (cached_checkpoint(enum.url).is_file() or host_reachable(enum.url)):
            fallback_warning(arch, "not cached, and the download host cannot be reached",
                             f"RANDOM weights (seed {seed}): there are no offline weights for {arch}")
            enum, source = None, "random"
    if enum is not None:
        check_downloadable(enum.url, arch)
        try:
            model = builder(weights=enum)  # torchvision's own loading (it also sets, e.g., GoogLeNet's transform_input)
        except Exception as err:
            raise WeightsError(f"could not get torchvision's weights {type(enum).__name__}.{enum.name} for {arch}: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Hint: offline, use "
                               "weights='random' or the path of a state_dict file") from err
        path = cached_checkpoint(enum.url)
        provenance = {"weights": "imagenet", "source": f"torchvision {type(enum).__name__}.{enum.name}",
                      "file": path.name, "sha256": sha256_file(path) if path.is_file() else None}
        net = wrap(model.eval(), weights=enum, name=arch)
        net.provenance.update(provenance)
        return net.to(device=device, dtype=dtype)
    if source == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = builder(weights=None)
        provenance = {"weights": "random", "source": "torchvision default initialisation", "seed": seed, "sha256": None}
    elif isinstance(source, str) and (os.sep in source or os.path.exists(source) or source.endswith((".pth", ".pt"))):
        model = builder(weights=None)
        state, provenance = load_state_dict_file(source)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            msg = " ".join(str(err).split())
            raise WeightsError(f"weights '{source}' do not fit {arch}: {msg[:400]}. Hint: a torchvision {arch} "
                               "state_dict") from err
    else:
        raise ValueError(f"unknown weights {weights!r}. Hint: auto, imagenet, DEFAULT, random or a state_dict path")
    net = wrap(model.eval(), name=arch)
    net.provenance.update(provenance)
    return net.to(device=device, dtype=dtype)


def load_user_model(
    spec: str,
    weights: str | os.PathLike | None = None,
    *,
    kwargs: dict[str, Any] | None = None,
    preprocessing: Preprocessing | str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Net:
    """A user's own model by import path (``"mypkg.models:TinyResNet"``), with its ``state_dict`` file.

    Args:
        spec: ``module.path:Attribute``, imported with the working directory first on ``sys.path``: an
            ``nn.Module`` class, a function returning one, or an instance.
        weights: a ``state_dict`` file (read with ``weights_only=True``, loaded strictly); None, ``"auto"``
            or ``"random"``: the weights as the code initialises them, under ``seed``.
        kwargs: keyword arguments for the class or factory.
        preprocessing: the input convention: a ``Preprocessing`` or a name (``torchvision``, ``caffe``,
            ``mri``, ``grayscale``, or ``RGB:MEANS:STDS``); default torchvision's ImageNet mean/std.
        seed, device, dtype: as ``load_model``.

    Returns:
        The wrapped model; its provenance names the import path, the weights file and its sha256, and the
        preprocessing.

    Raises:
        ValueError: the path cannot be resolved, or does not give an ``nn.Module``.
        WeightsError: the weights file cannot be read, or its keys do not fit (one line naming them).
    """
    model, provenance = build_user_model(spec, weights, kwargs=kwargs, seed=seed)
    net = wrap(model, preprocessing=parse_preprocessing(preprocessing), name=spec.split(":", 1)[1])
    net.provenance.update(provenance)
    return net.to(device=device, dtype=dtype)


def wrap(
    model: nn.Module,
    *,
    preprocessing: Preprocessing | Any = None,
    weights: Any = None,
    name: str | None = None,
    categories: Sequence[str] | None = None,
) -> Net:
    """Any ``nn.Module`` as a ``Net`` (``Deconvnet(model)`` calls this).

    torchvision's VGG and AlexNet get their family table (the paper's layer names, the chain walk); an
    ``nn.Sequential`` of modules the chain walk knows becomes a chain (layers named by module path);
    everything else is a graph, projected through its own autograd graph (``deconvnet.engine.graph``).

    Args:
        model: the model; it is put in eval mode for each call, and its mode restored.
        preprocessing: a ``Preprocessing``, or torchvision weights whose ``transforms()`` give it; default
            torchvision's ImageNet mean/std (assumed, and said so in the provenance).
        weights: torchvision weights the model was built with: preprocessing, class names and provenance
            come from them.
        name: what figures call the model (default: its class name, or the VGG/AlexNet arch).
        categories: class names of the outputs (default: from ``weights``).

    A model wrapped with no options is wrapped once: ``Deconvnet(model)`` again finds the same ``Net``, which
    follows later changes of the module tree (``Net.refresh``). A ``torch.compile``d model is projected
    through its original module, with the same weights. A model whose first convolution takes one channel
    gets grayscale preprocessing (``preprocessing.GRAYSCALE``) unless told otherwise.
    """
    if isinstance(model, Net):
        model.refresh()
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module or a deconvnet Net, got {type(model).__name__}")
    model = unwrap_compiled(model)  # layer names with or without "_orig_mod." (``Net.resolve``)
    plain = preprocessing is None and weights is None and name is None and categories is None
    if plain and model in _WRAPPED:  # Deconvnet(model) again: the same Net, with its measured shapes and fields
        net = _WRAPPED[model]
        if net.tree == _tree(model) or not net.is_chain:  # a graph follows surgery itself (``Net.refresh``)
            net.refresh()
            return net
    net = _wrap(model, preprocessing, weights, name, categories)
    if plain:
        _WRAPPED[model] = net
    return net


_WRAPPED: weakref.WeakKeyDictionary[nn.Module, Net] = weakref.WeakKeyDictionary()


def _wrap(model: nn.Module, preprocessing: Any, weights: Any, name: str | None,
          categories: Sequence[str] | None) -> Net:
    from torchvision.models import VGG, AlexNet, WeightsEnum

    if weights is not None and not isinstance(weights, WeightsEnum):
        raise TypeError("weights must be torchvision weights (e.g. ResNet50_Weights.DEFAULT), got "
                        f"{type(weights).__name__}")
    if isinstance(preprocessing, WeightsEnum):
        preprocessing = torchvision_preprocessing(preprocessing)
    assumed = preprocessing is None and weights is None
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    if preprocessing is None:
        gray = channels == 1
        preprocessing = (torchvision_preprocessing(weights) if weights is not None
                         else (GRAYSCALE if gray else TORCHVISION))
    if categories is None and weights is not None:
        categories = weights.meta.get("categories")
    provenance = {
        "weights": f"torchvision {type(weights).__name__}.{weights.name}" if weights is not None else "user model",
        "source": "weights as built by the caller" + (
            "" if not assumed else f"; input normalisation assumed: {preprocessing.name}" if channels in (1, 3)
            else f"; {channels} input channels: inputs are built by the caller, not from images"),
        "sha256": None,
    }
    if isinstance(model, (VGG, AlexNet)):
        table = alexnet_table if isinstance(model, AlexNet) else vgg_table
        n_conv = sum(isinstance(m, nn.Conv2d) for m in model.features)
        bn = any(isinstance(m, nn.BatchNorm2d) for m in model.features)
        arch = name or ("alexnet" if table is alexnet_table else f"vgg{n_conv + 3}" + ("_bn" if bn else ""))
        names = dict(table.feature_names(model.features))
        names.update(vgg_table.classifier_names(model.classifier))
        return Net(model, arch=arch, names=names, preprocessing=preprocessing, provenance=provenance,
                   stack=_table_stack(model, True), features=model.features, classifier=model.classifier,
                   categories=categories)
    arch = name or type(model).__name__
    stack = _sequential_stack(model)
    if stack is not None:
        spatial = []
        for _, m in stack:
            if isinstance(m, (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                break
            spatial.append(m)
        return Net(model, arch=arch, names=None, preprocessing=preprocessing, provenance=provenance, stack=stack,
                   features=nn.Sequential(*spatial), categories=categories)
    return Net(model, arch=arch, names=None, preprocessing=preprocessing, provenance=provenance, categories=categories)


def _sequential_stack(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The leaves of nested ``nn.Sequential``s in order, if the chain walk has a rule for each; else None."""
    if not isinstance(model, nn.Sequential):
        return None
    leaves: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, seq: nn.Sequential) -> bool:
        for child_name, child in seq.named_children():
            path = f"{prefix}{child_name}"
            if isinstance(child, nn.Sequential):
                if not visit(path + ".", child):
                    return False
            elif isinstance(child, CHAIN_MODULES):
                leaves.append((path, child))
            else:
                return False
        return True

    return leaves if visit("", model) and leaves else None


ARCH_NAMES = tuple(vgg_table.ARCHS) + tuple(alexnet_table.ARCHS)
