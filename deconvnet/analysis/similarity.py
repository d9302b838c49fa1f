"""How similar two attribution maps are: the four measures of Adebayo et al. (2018).

A map (3, H, W) in the model's input space is first reduced to one value per pixel by summing its colour
channels (the sign kept). Then:

================  ==============================================================================
``spearman_abs``  Spearman rank correlation of the absolute values (``scipy.stats.spearmanr``).
``spearman``      Spearman rank correlation of the signed values: a map and its negation give -1.
``ssim``          structural similarity (``skimage.metrics.structural_similarity``) of the absolute
                  maps, each divided by its maximum so that it lies in [0, 1] (data range 1). SSIM
                  looks at what a viewer sees, so a map and its negation give 1.
``hog_pearson``   Pearson correlation (``scipy.stats.pearsonr``) of the HOG features
                  (``skimage.feature.hog``, 9 orientations, 2x2-cell blocks) of the same normalised
                  absolute maps; a map and its negation give 1.
================  ==============================================================================

An all-zero map (a method can lose the whole signal, e.g. the gradient when the target unit is
inactive) has nothing to compare: every measure is NaN for it. Correlations of any other constant map are
undefined as well and reported as NaN, never replaced by a made-up number.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

METRICS = ("spearman_abs", "spearman", "ssim", "hog_pearson")
METRIC_LABELS = {
    "spearman_abs": "Spearman rank corr. (abs)",
    "spearman": "Spearman rank corr. (signed)",
    "ssim": "SSIM",
    "hog_pearson": "Pearson corr. of HOG",
}


def to_2d(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (3, H, W) map -> (H, W) float64 by summing the channels; an (H, W) map is returned as is."""
    a = m.detach().cpu().double().numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float64)
    if a.ndim == 3:
        a = a.sum(0)
    if a.ndim != 2:
        raise ValueError(f"expected a map of shape (3, H, W) or (H, W), got {a.shape}")
    return a


def _check_pair(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a2, b2 = to_2d(a), to_2d(b)
    if a2.shape != b2.shape:
        raise ValueError(f"maps of different sizes {a2.shape} and {b2.shape} cannot be compared. Hint: compare "
                         "maps of one input size")
    return a2, b2


def normalized_abs(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """``|m| / max|m|`` of the 2-D map, in [0, 1]; an all-zero map stays zero."""
    a = np.abs(to_2d(m))
    top = a.max()
    return a / top if top > 0 else a


def _quiet(f, *args) -> float:
    with warnings.catch_warnings():  # constant input: scipy warns and returns NaN, which is what we report
        warnings.simplefilter("ignore")
        return float(f(*args)[0])


def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, *, absolute: bool = False) -> float:
    """Spearman rank correlation of two maps, of their absolute values when ``absolute``."""
    from scipy.stats import spearmanr

    a2, b2 = _check_pair(a, b)
    if absolute:
        a2, b2 = np.abs(a2), np.abs(b2)
    return _quiet(spearmanr, a2.ravel(), b2.ravel())


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """SSIM of the normalised absolute maps (see the module docstring); window 7 or the largest odd size that fits."""
    from skimage.metrics import structural_similarity

    a2, b2 = _check_pair(a, b)
    side = min(a2.shape)
    if side < 3:
        raise ValueError(f"maps of {a2.shape} are too small for SSIM. Hint: at least 3x3 pixels")
    if not (a2.any() and b2.any()):
        return float("nan")
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(normalized_abs(a2), normalized_abs(b2), win_size=win, data_range=1.0))


def hog_cell(shape: tuple[int, int]) -> int:
    """HOG cell size used for a map of ``shape``: 8 pixels, smaller for maps under 32 pixels (4 cells a side)."""
    return max(2, min(8, min(shape) // 4))


def hog_features(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """HOG features (9 orientations, 2x2-cell blocks, L2-Hys) of the normalised absolute map."""
    from skimage.feature import hog

    a = normalized_abs(m)
    c = hog_cell(a.shape)
    return hog(a, orientations=9, pixels_per_cell=(c, c), cells_per_block=(2, 2), feature_vector=True)


def hog_pearson(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Pearson correlation of the HOG features of two maps."""
    from scipy.stats import pearsonr

    a2, b2 = _check_pair(a, b)
    return _quiet(pearsonr, hog_features(a2), hog_features(b2))


def compare_maps(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> dict[str, float]:
    """All four measures (``METRICS``) of two maps of the same size."""
    return {
        "spearman_abs": spearman(a, b, absolute=True),
        "spearman": spearman(a, b),
        "ssim": ssim(a, b),
        "hog_pearson": hog_pearson(a, b),
    }
