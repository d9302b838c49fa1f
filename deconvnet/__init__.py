"""deconvnet: see what a convolutional network has learned (Zeiler & Fergus 2014).

Top-level names::

    net = load_vgg("vgg16", weights="auto")      # or load_alexnet(...)
    x = net.preprocess("cat.jpg")
    p = Deconvnet(net).project(x, layer="conv5_3", channel="max")
    show(p)
    explore(net, "astronaut")                    # in a notebook: pick a layer, a channel, click a unit
    s = synthesize(net, "conv4_3", [0, 1])       # what those channels respond to most (Olah et al. 2017)
"""

from ._version import __version__
from .engine import Deconvnet, Projection, Record, Target
from .explore import explore
from .images import ImageReadError
from .models import Net, WeightsError, WeightsFallbackWarning, load_alexnet, load_model, load_vgg, wrap
from .plot import show
from .synthesis import Synthesis, synthesize

__all__ = [
    "Deconvnet",
    "ImageReadError",
    "Net",
    "Projection",
    "Record",
    "Synthesis",
    "Target",
    "WeightsError",
    "WeightsFallbackWarning",
    "__version__",
    "explore",
    "load_alexnet",
    "load_model",
    "load_vgg",
    "wrap",
    "show",
    "synthesize",
]
