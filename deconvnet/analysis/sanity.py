"""Sanity checks: does a map depend on the model's parameters, and on the neuron it claims to show?

Two tests, one module each, with their figures apart:

=====================  ============================================================================
``randomisation``      parameter randomisation (Adebayo et al. 2018): re-initialise the layers from
                       the top down (cascading) or one at a time (independent) and compare each
                       method's maps to those of the unchanged model
``selectivity``        neuron selectivity (Mahendran & Vedaldi 2016): reverse the most active channel,
                       a random channel and a random vector at one location and compare the images
``sanity_plots``       the figures of both
=====================  ============================================================================

This module gathers their names, so that ``from deconvnet.analysis import sanity`` reaches all of them.
"""

from __future__ import annotations

from .randomisation import (
    MODES,
    SANITY_METHODS,
    SanityResult,
    default_target,
    describe_target,
    parametrised_layers,
    randomisation_steps,
    randomized,
    sanity_check,
    unit_seed,
)
from .sanity_plots import METHOD_COLORS, STEP_WORDS, ZERO_WHY, plot_sanity_curves, plot_sanity_maps, plot_selectivity
from .selectivity import SELECTIVITY_KINDS, SELECTIVITY_PAIRS, SelectivityResult, neuron_selectivity

__all__ = [
    "METHOD_COLORS",
    "MODES",
    "SANITY_METHODS",
    "SELECTIVITY_KINDS",
    "SELECTIVITY_PAIRS",
    "STEP_WORDS",
    "SanityResult",
    "SelectivityResult",
    "ZERO_WHY",
    "default_target",
    "describe_target",
    "neuron_selectivity",
    "parametrised_layers",
    "plot_sanity_curves",
    "plot_sanity_maps",
    "plot_selectivity",
    "randomisation_steps",
    "randomized",
    "sanity_check",
    "unit_seed",
]
