"""The engine: one interface (``Deconvnet``, ``record``, ``receptive_field``, ``spatial_layers``,
``default_layers``) with two engines behind it as peers, the chain walk (``chain``) and the autograd graph
(``graph``). Consumers (scan, figures, atlas, explorer, analyses) import from here only."""

from .deconvnet import ENGINES, Deconvnet, default_layers, record, spatial_layers
from .graph import UnsupportedLayerError
from .protocol import Engine
from .receptive import ReceptiveField, receptive_field
from .record import check_input
from .targets import select_target
from .types import RULES, Position, Projected, Projection, Record, Selection, Target, UnitWindows

__all__ = [
    "ENGINES",
    "RULES",
    "Deconvnet",
    "Engine",
    "Position",
    "Projected",
    "Projection",
    "ReceptiveField",
    "Record",
    "Selection",
    "Target",
    "UnitWindows",
    "UnsupportedLayerError",
    "check_input",
    "default_layers",
    "receptive_field",
    "record",
    "select_target",
    "spatial_layers",
]
