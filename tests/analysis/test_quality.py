"""The measures of what a projection shows (deconvnet.analysis.quality), on patterns whose answer is known."""

import math

import pytest
import torch

from deconvnet.analysis.quality import anisotropy, distinctness, high_frequency_share


def test_vertical_stripes_are_anisotropic_and_high_frequency():
    cols = torch.arange(64)
    stripes = ((cols % 2) * 2.0 - 1.0).expand(3, 64, 64)  # 2-px vertical stripes: half a cycle per pixel
    assert anisotropy(stripes) == math.inf  # all high-frequency energy is horizontal
    assert high_frequency_share(stripes) == pytest.approx(1.0)
    assert anisotropy(stripes.transpose(1, 2)) == math.inf  # folded: horizontal stripes count the same


def test_white_noise_is_isotropic_and_smooth_images_are_low_frequency():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 128, 128, generator=g, dtype=torch.float64)
    assert anisotropy(noise) == pytest.approx(1.0, abs=0.05)
    # white noise: the share of the plane outside |f| < 1/4 on both axes is 1 - (1/2)^2
    assert high_frequency_share(noise) == pytest.approx(0.75, abs=0.02)
    smooth = torch.nn.functional.avg_pool2d(noise[None], 9, 1, 4)[0]
    assert high_frequency_share(smooth) < 0.1
    assert anisotropy(torch.zeros(3, 8, 8)) == 1.0 and high_frequency_share(torch.zeros(3, 8, 8)) == 0.0


def test_stripes_on_noise_raise_anisotropy_by_their_energy():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(64, 64, generator=g, dtype=torch.float64)
    stripes = (torch.arange(64) % 2).double().expand(64, 64) * 2 - 1
    assert anisotropy(noise + 0.5 * stripes) > 1.5 > anisotropy(noise)


def test_distinctness():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 16, 16, generator=g)
    assert distinctness([a, a, 2 * a]) == pytest.approx(0.0, abs=1e-12)  # one picture at three scales
    assert distinctness([a, -a]) == pytest.approx(2.0)
    assert distinctness([a, b]) == pytest.approx(1.0, abs=0.2)  # unrelated
    with pytest.raises(ValueError, match="at least two"):
        distinctness([a])
