"""Feature visualisation by optimisation: the image a unit responds to most, synthesised from noise.

Beside the deconvnet (which part of *this* image made the unit fire), synthesis answers what would make it
fire most (Olah et al. 2017, "Feature Visualization", Distill)::

    s = dn.synthesize(net, "conv4_3", [0, 1, 2], steps=512, size=128)
    s.images           # (3, 3, 128, 128) RGB in [0, 1]
    s.activations      # the channel means the images reach

``param`` (the Fourier and colour parameterisation), ``transforms`` (seeded pad, jitter, scale, rotate),
``optimise`` (the loop and the ``Synthesis`` result), ``io`` (images and sidecars on disk).
"""

from .optimise import OBJECTIVES, Synthesis, channel_seed, synthesize
from .param import COLOR_CORRELATION_SVD_SQRT, FourierImage, color_matrix, decorrelate_colors
from .transforms import RECIPES

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "OBJECTIVES", "RECIPES", "FourierImage", "Synthesis", "channel_seed",
           "color_matrix", "decorrelate_colors", "synthesize"]
