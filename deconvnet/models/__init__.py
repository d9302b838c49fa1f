"""Model families and weight sources."""

from ._api import (
    ARCH_NAMES,
    CHAIN_MODULES,
    WEIGHT_SOURCES,
    Net,
    load_alexnet,
    load_model,
    load_user_model,
    load_vgg,
    wrap,
)
from .weights import WeightsError, WeightsFallbackWarning

__all__ = [
    "ARCH_NAMES",
    "CHAIN_MODULES",
    "WEIGHT_SOURCES",
    "Net",
    "WeightsError",
    "WeightsFallbackWarning",
    "load_alexnet",
    "load_model",
    "load_user_model",
    "load_vgg",
    "wrap",
]
