"""The restoration study's former single module, kept so that ``deconvnet.resolution.restore`` still imports.

Its pieces now live one job to a module: ``restorers`` (max-pooling and the seven ways of undoing it),
``fit`` (training the learnable ones), ``metrics`` (the scores), ``compare`` (one signal restored every
way), ``tables`` and ``plots``. New code imports from ``deconvnet.resolution``.
"""

from .compare import Comparison, Restoration, compare_restorations, random_crops
from .fit import fit_restorer
from .metrics import MAXIMA_TOLERANCE, correlation, maxima_kept, mse, psnr
from .plots import plot_restorations, plot_scores
from .restorers import (
    METHOD_KEYS,
    METHODS,
    Method,
    bilinear_kernel,
    bilinear_transposed_conv,
    max_pool_2x2,
    resize_conv,
    restore_fixed,
    unpool,
)
from .tables import format_table, write_table

__all__ = [
    "MAXIMA_TOLERANCE",
    "METHODS",
    "METHOD_KEYS",
    "Comparison",
    "Method",
    "Restoration",
    "bilinear_kernel",
    "bilinear_transposed_conv",
    "compare_restorations",
    "correlation",
    "fit_restorer",
    "format_table",
    "max_pool_2x2",
    "maxima_kept",
    "mse",
    "plot_restorations",
    "plot_scores",
    "psnr",
    "random_crops",
    "resize_conv",
    "restore_fixed",
    "unpool",
    "write_table",
]
