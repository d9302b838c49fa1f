"""Three ways to restore a feature map's resolution: transposed convolution, unpooling, interpolation.

The question that motivates the deconvnet, explained and measured:

- ``sizes``: the output-size formulas of convolution and transposed convolution, validated as PyTorch
  validates them.
- ``matrix``: the convolution as a matrix ``C``; the transposed convolution is ``C^T``, which restores the
  size but not the values.
- ``restorers``: 2x2 max-pooling undone seven ways (unpooling with switches, nearest, bilinear, bicubic, a
  fixed bilinear transposed convolution, a trained transposed convolution, a trained resize-convolution);
  ``fit`` trains the two learnable ones, ``metrics`` scores a restoration, ``compare`` restores one signal
  every way, ``tables`` writes the scores as a table and ``plots`` draws them.
- ``checkerboard``: the uneven overlap of a transposed convolution whose kernel size is not divisible by
  its stride, measured.
- ``stages``: the deconvnet's own unpool / transposed-convolution stages for one projection.
- ``figures``: ``make_figures(out_dir, net, quick=...)`` writes all of it.
"""

from .checkerboard import CheckerboardStudy, checkerboard_energy, checkerboard_study, make_upsampler, plot_checkerboard
from .compare import Comparison, Restoration, compare_restorations, random_crops
from .figures import make_figures
from .fit import fit_restorer
from .matrix import ConvMatrixExample, conv_matrix, conv_matrix_example, plot_conv_matrix
from .plots import plot_restorations, plot_scores
from .restorers import (
    METHOD_KEYS,
    METHODS,
    bilinear_kernel,
    bilinear_transposed_conv,
    max_pool_2x2,
    resize_conv,
    restore_fixed,
    unpool,
)
from .sizes import conv_output_size, conv_transpose_output_size
from .stages import StageTrace, deconvnet_stages, plot_stages
from .tables import format_table, write_table

__all__ = [
    "METHODS",
    "METHOD_KEYS",
    "CheckerboardStudy",
    "Comparison",
    "ConvMatrixExample",
    "Restoration",
    "StageTrace",
    "bilinear_kernel",
    "bilinear_transposed_conv",
    "checkerboard_energy",
    "checkerboard_study",
    "compare_restorations",
    "conv_matrix",
    "conv_matrix_example",
    "conv_output_size",
    "conv_transpose_output_size",
    "deconvnet_stages",
    "fit_restorer",
    "format_table",
    "make_figures",
    "make_upsampler",
    "max_pool_2x2",
    "plot_checkerboard",
    "plot_conv_matrix",
    "plot_restorations",
    "plot_scores",
    "plot_stages",
    "random_crops",
    "resize_conv",
    "restore_fixed",
    "unpool",
    "write_table",
]
