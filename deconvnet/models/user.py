"""A user's own model named by import path: ``mypkg.models:TinyResNet`` (a class, a factory or an instance).

The path is resolved the way ``uvicorn module:app`` resolves its app: the module is imported with the
current working directory first on ``sys.path``, then the attribute after the colon is looked up (dots
reach nested attributes). A class or factory is called with the keyword arguments given (``kwargs``) under
a seeded random state; a weights file is a ``state_dict`` saved with ``torch.save``, read with
``weights_only=True`` and loaded strictly. See docs/how-to/own-model.md.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..preprocessing import CAFFE, GRAYSCALE, MRI, TORCHVISION, Preprocessing
from .weights import WeightsError, load_state_dict_file

#: ``module.path:attribute`` with Python identifiers on both sides (the attribute may be dotted)
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

#: prefixes that name a model source, not a module (``timm:resnet18``): never imported as a user module
RESERVED_PREFIXES = ("timm",)

#: ``--preprocessing`` names
PREPROCESSING_NAMES: dict[str, Preprocessing] = {"torchvision": TORCHVISION, "imagenet": TORCHVISION,
                                                 "caffe": CAFFE, "mri": MRI, "grayscale": GRAYSCALE}


def is_import_path(text: Any) -> bool:
    """Whether ``text`` reads as ``module.path:Attribute`` (and not as a reserved source such as ``timm:``)."""
    return (isinstance(text, str) and bool(_IMPORT_PATH.match(text))
            and text.split(":", 1)[0] not in RESERVED_PREFIXES)


def resolve(spec: str) -> Any:
    """The object ``spec`` (``module.path:Attribute``) names, imported with the working directory on the path.

    Raises:
        ValueError: ``spec`` is not an import path, its module cannot be imported, or it has no such attribute
            (the message names what the module offers).
    """
    if not is_import_path(spec):
        raise ValueError(f"'{spec}' is not an import path. Hint: module.path:ClassName, e.g. mypkg.models:TinyResNet")
    module_name, attr = spec.split(":", 1)
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):  # the module itself, not one it imports
            raise ValueError(f"cannot import '{module_name}' for '{spec}': no module named '{err.name}' from "
                             f"{os.getcwd()}. Hint: run from the folder that holds {err.name.split('.')[0]}.py "
                             "(or its package folder), or add that folder to PYTHONPATH") from None
        raise ValueError(f"cannot import '{module_name}' for '{spec}': it imports '{err.name}', which is not "
                         "installed") from None
    except Exception as err:  # a SyntaxError or an exception raised while the module runs
        raise ValueError(f"cannot import '{module_name}' for '{spec}': {type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            offered = sorted(n for n, v in vars(module).items() if not n.startswith("_")
                             and ((isinstance(v, type) and issubclass(v, nn.Module)) or isinstance(v, nn.Module)
                                  or (callable(v) and not isinstance(v, type)
                                      and getattr(v, "__module__", None) == module.__name__)))
            raise ValueError(f"'{module_name}' has no attribute '{attr}' (for '{spec}'). Hint: "
                             + (f"it defines {', '.join(offered[:8])}" if offered else "name an nn.Module class or a "
                                "function that returns one"))
        obj = getattr(obj, part)
    return obj


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """Keyword arguments for a factory from a JSON object (``'{"width": 32}'``); None or empty: none."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--arch-kwargs '{text}' is not JSON: {err.msg}. Hint: a JSON object, e.g. "
                         "'{\"width\": 32}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"--arch-kwargs '{text}' is a JSON {type(value).__name__}, not an object. Hint: "
                         "'{\"width\": 32}'")
    return value


def parse_preprocessing(text: str | Preprocessing | None) -> Preprocessing | None:
    """A preprocessing by name (torchvision, caffe, mri, grayscale) or as ``RGB:MEAN,MEAN,MEAN:STD,STD,STD``
    (inputs in [0, 1]; ``BGR:`` and ``L:m:s`` too); None stays None (the default of ``wrap``)."""
    if text is None or isinstance(text, Preprocessing):
        return text
    if text in PREPROCESSING_NAMES:
        return PREPROCESSING_NAMES[text]
    hint = (f"Hint: one of {', '.join(PREPROCESSING_NAMES)}, or ORDER:MEANS:STDS for inputs in [0, 1], e.g. "
            "RGB:0.5,0.5,0.5:0.25,0.25,0.25")
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("RGB", "BGR", "L"):
        raise ValueError(f"unknown preprocessing '{text}'. {hint}")
    try:
        mean, std = (tuple(float(v) for v in p.split(",")) for p in parts[1:])
        if not all(s > 0 for s in std):
            raise ValueError("a std must be positive")
        return Preprocessing(parts[0], 1.0, mean, std, name=f"{parts[0]}, [0,1], mean {mean}, std {std}")
    except ValueError as err:
        raise ValueError(f"preprocessing '{text}': {err}. {hint}") from None


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into ``model``, in one short line; None if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    said = [f"{len(missing)} missing key(s) ({some(missing)})" if missing else "",
            f"{len(unexpected)} unexpected key(s) ({some(unexpected)})" if unexpected else "",
            f"{len(shapes)} of another shape ({some(shapes)}; file vs model)" if shapes else ""]
    said = [s for s in said if s]
    return "; ".join(said) if said else None


def load_state_dict_into(model: nn.Module, path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Load the ``state_dict`` file ``path`` strictly into ``model``; returns its provenance (file, sha256).

    Raises:
        WeightsError: the file cannot be read, or its keys or shapes do not fit ``model`` (one line naming
            the first few missing, unexpected and misshapen keys).
    """
    state, provenance = load_state_dict_file(path)
    problem = _mismatch(model, state)
    if problem is not None:
        raise WeightsError(f"weights '{os.fspath(path)}' do not fit {what}: {problem}. Hint: the state_dict of this "
                           "very model (torch.save(model.state_dict(), FILE)), built with the same --arch-kwargs")
    model.load_state_dict(state, strict=True)
    return provenance


def build_user_model(
    spec: str,
    weights: str | os.PathLike | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model ``spec`` names and load its ``state_dict`` file; ``load_user_model`` wraps it.

    Args:
        spec: ``module.path:Attribute``: an ``nn.Module`` class, a function returning one, or an instance.
        weights: a ``state_dict`` file; None, ``"auto"`` or ``"random"``: the weights as the class or
            factory makes them (seeded by ``seed``).
        kwargs: keyword arguments for the class or factory.
        seed: seed of the random state the class or factory runs under.

    Returns:
        The model in eval mode, and its provenance (import path, weights file and sha256).

    Raises:
        ValueError: the path cannot be resolved, or does not give an ``nn.Module``.
        WeightsError: the weights file cannot be read or does not fit.
    """
    obj = resolve(spec)
    kwargs = dict(kwargs or {})
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError(f"'{spec}' is a model instance; it takes no keyword arguments. Hint: name its class")
        model = obj
    elif callable(obj):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = obj(**kwargs)
            except TypeError as err:
                raise ValueError(f"'{spec}'({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {err}. "
                                 "Hint: give its arguments as --arch-kwargs '{\"name\": value}'") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"'{spec}' returned a {type(model).__name__}, not a torch.nn.Module")
    else:
        raise ValueError(f"'{spec}' is a {type(obj).__name__}, not an nn.Module class, factory or instance")
    built = spec + (f"(**{json.dumps(kwargs, sort_keys=True)})" if kwargs else "")
    source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if source in ("imagenet", "mri", "hed") and not os.path.exists(source):
        raise ValueError(f"weights '{source}' are for the built-in archs, not '{spec}'. Hint: the path of its "
                         "state_dict file (torch.save(model.state_dict(), FILE)), or random")
    if source in (None, "auto", "random"):
        provenance: dict[str, Any] = {"weights": "as built", "source": f"{built}, as the code initialises it",
                                      "seed": seed, "sha256": None}
    else:
        provenance = load_state_dict_into(model, source, built)
        provenance["source"] = f"{built} with state_dict file {provenance['file']}"
    provenance["model"] = built
    return model.eval(), provenance
