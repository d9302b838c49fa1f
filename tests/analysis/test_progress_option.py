"""The analyses' progress option has one name, ``progress``; ``show_progress`` still works, with a warning."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from deconvnet import analysis
from deconvnet.analysis._util import renamed_show_progress

from conftest import _small_net, images

PUBLIC = [analysis.make_figures, analysis.figure_methods, analysis.figure_sanity, analysis.figure_invariance,
          analysis.figure_occlusion, analysis.figure_evolution, analysis.figure_correspondence,
          analysis.correspondence, analysis.invariance_curves, analysis.occlusion_maps, analysis.sanity_check]


@renamed_show_progress
def _job(n: int, *, progress: bool = True) -> tuple[int, bool]:
    return n, progress


def test_show_progress_is_progress_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"_job\(show_progress=\.\.\.\) is deprecated; use progress="):
        assert _job(3, show_progress=False) == (3, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name (or none) warns nothing
        assert _job(3, progress=False) == (3, False) and _job(4) == (4, True)
    with pytest.raises(TypeError, match="progress= and show_progress="):
        _job(3, progress=False, show_progress=False)


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__name__)
def test_the_public_analyses_name_the_option_progress(func):
    params = inspect.signature(func).parameters
    assert "progress" in params and "show_progress" not in params and params["progress"].default is True


def test_an_analysis_called_with_the_old_name_gives_the_same_result():
    net, x = _small_net(), images((1, 3, 16, 16), seed=2)
    with pytest.warns(DeprecationWarning, match="occlusion_maps"):
        old = analysis.occlusion_maps(net, x, layer="4", size=4, stride=4, captum=False, show_progress=False)
    new = analysis.occlusion_maps(net, x, layer="4", size=4, stride=4, captum=False, progress=False)
    np.testing.assert_array_equal(old.activation, new.activation)
