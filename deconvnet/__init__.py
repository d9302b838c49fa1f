"""deconvnet: see what a convolutional network has learned (Zeiler & Fergus 2014).

Top-level names::

    net = load_vgg("vgg16", weights="auto")      # or load_alexnet(...)
    x = net.preprocess("cat.jpg")
    p = Deconvnet(net).project(x, layer="conv5_3", channel="max")
    show(p)
    explore(net, "astronaut")                    # in a notebook: pick a layer, a channel, click a unit
    s = synthesize(net, "conv4_3", [0, 1])       # what those channels respond to most (Olah et al. 2017)

The names are imported when first used (PEP 562), and so are the subpackages (``deconvnet.analysis`` after
``import deconvnet``): the command line reads its arguments before torch is imported.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: top-level name -> the module that defines it
_NAMES = {
    "Deconvnet": ".engine", "Projection": ".engine", "Record": ".engine", "Target": ".engine",
    "UnitWindows": ".engine",
    "ImageReadError": ".images",
    "Net": ".models", "WeightsError": ".models", "WeightsFallbackWarning": ".models", "load_alexnet": ".models",
    "load_model": ".models", "load_user_model": ".models", "load_vgg": ".models", "wrap": ".models",
    "show": ".plot",
    "Synthesis": ".synthesis", "synthesize": ".synthesis",
}

#: the subpackages and modules a user reaches as attributes (``dn.analysis.bundled_parts()``)
_SUBMODULES = ("analysis", "atlas", "cache", "data", "distributed", "engine", "explore", "figure2", "images", "io",
               "memory", "models", "plot", "preprocessing", "resolution", "scan", "synthesis")

__all__ = ["__version__", *sorted([*_NAMES, "explore"])]

if TYPE_CHECKING:  # what type checkers and editors see
    from .engine import Deconvnet, Projection, Record, Target, UnitWindows  # noqa: F401
    from .explore import explore  # noqa: F401
    from .images import ImageReadError  # noqa: F401
    from .models import (  # noqa: F401
        Net,
        WeightsError,
        WeightsFallbackWarning,
        load_alexnet,
        load_model,
        load_user_model,
        load_vgg,
        wrap,
    )
    from .plot import show  # noqa: F401
    from .synthesis import Synthesis, synthesize  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'deconvnet' has no attribute '{name}'")
    globals()[name] = value  # once: later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_SUBMODULES, "explore"})


class _Package(types.ModuleType):
    """``deconvnet.explore`` is the function, as when it was imported eagerly: importing the subpackage
    ``deconvnet.explore`` binds the module to the package's attribute, which this setter declines."""

    @property
    def explore(self) -> Any:
        from .explore import explore

        return explore

    @explore.setter
    def explore(self, value: Any) -> None:
        pass  # the import system's binding of the subpackage; the module stays in sys.modules


sys.modules[__name__].__class__ = _Package
