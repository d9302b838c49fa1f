"""The similarity measures (deconvnet.analysis.similarity) against hand-checked cases."""

import math

import numpy as np
import pytest
import torch

from deconvnet.analysis import similarity as sim

from conftest import images

# --- similarity measures: hand-checked cases -------------------------------------------------------------

def test_identical_maps_give_one_for_every_measure():
    m = images((1, 3, 32, 32), seed=3)[0]
    assert sim.compare_maps(m, m) == pytest.approx({k: 1.0 for k in sim.METRICS}, abs=1e-12)


def test_negated_map_behaves_as_each_measure_defines():
    m = images((1, 3, 32, 32), seed=4)[0]
    s = sim.compare_maps(m, -m)
    assert s["spearman"] == pytest.approx(-1.0, abs=1e-12)  # ranks reversed
    assert s["spearman_abs"] == pytest.approx(1.0, abs=1e-12)  # the absolute values are the same
    assert s["ssim"] == pytest.approx(1.0, abs=1e-12)  # computed on |map|
    assert s["hog_pearson"] == pytest.approx(1.0, abs=1e-12)  # computed on |map|


def test_spearman_hand_example():
    # ranks 1,2,3,4 vs 1,3,2,4: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[10.0, 30.0], [20.0, 40.0]])
    assert sim.spearman(a, b) == pytest.approx(0.8, abs=1e-12)
    # with absolute values: |-3| ranks last: ranks of |a'| = 1,2,4,3 vs 1,3,2,4: d = 0,1,2,1 -> 1 - 36/60
    a2 = np.array([[1.0, 2.0], [-4.0, 3.0]])
    assert sim.spearman(a2, b, absolute=True) == pytest.approx(1 - 6 * 6 / 60, abs=1e-12)


def test_channels_are_summed_before_comparing():
    rgb = torch.zeros(3, 4, 4)
    rgb[0, 0, 0], rgb[1, 0, 0], rgb[2, 3, 3] = 1.0, 2.0, -5.0
    np.testing.assert_array_equal(sim.to_2d(rgb), rgb.sum(0).double().numpy())


def test_ssim_of_a_single_window_matches_the_formula():
    # a 7x7 image has one 7x7 window: SSIM is the textbook formula with sample (co)variances
    g = np.random.default_rng(0)
    a, b = g.random((7, 7)), g.random((7, 7))
    a, b = a / a.max(), b / b.max()  # already what ssim() normalises to
    mx, my = a.mean(), b.mean()
    vx, vy = a.var(ddof=1), b.var(ddof=1)
    cxy = ((a - mx) * (b - my)).sum() / 48
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert sim.ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_hog_of_vertical_vs_horizontal_stripes():
    # vertical stripes, period = cell size: every cell puts all of its energy in one orientation bin, the
    # transposed image in another. Two vectors, each with k equal non-zero entries out of N, never in the
    # same place, have Pearson correlation -k / (N - k); here k = N / 9 (one bin of 9): -1/8.
    x = np.zeros((32, 32))
    x[:, ::8] = 1
    x[:, 1::8] = 1
    assert sim.hog_pearson(x, x.T) == pytest.approx(-1 / 8, abs=1e-12)


def test_an_all_zero_map_has_no_similarity():
    m = images((1, 3, 16, 16), seed=5)[0]
    s = sim.compare_maps(m, torch.zeros_like(m))
    assert all(math.isnan(v) for v in s.values())


def test_maps_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="Hint"):
        sim.compare_maps(torch.zeros(3, 8, 8), torch.zeros(3, 9, 9))
