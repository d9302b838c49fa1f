"""An atlas of every unit: a static website of each channel's top-k deconvnet projections.

Like OpenAI Microscope, for Zeiler & Fergus's Figure 2 at the scale of whole layers::

    from deconvnet.atlas import build_atlas
    atlas = build_atlas(net, dataset, ["conv3_3", "conv5_3"], "atlas/")
    # open atlas/index.html (from disk or any static host)

``build_atlas`` scans the dataset (``deconvnet.scan``), counts each channel's activations into
histograms (``channel_stats``), projects every top-k entry inside its receptive field (one forward per
image batch), and renders the pages from Jinja2 templates. Each step resumes where an interrupted run
stopped; a rerun with more layers adds them.
"""

from .build import IMAGE_FORMATS, Atlas, build_atlas, check_layers, check_out_folder
from .stats import ChannelStats, channel_stats

__all__ = ["IMAGE_FORMATS", "Atlas", "ChannelStats", "build_atlas", "channel_stats", "check_layers", "check_out_folder"]
