"""The package's named defaults, in a module that imports nothing: the command line reads them for ``--help``
before torch is imported, and ``models/``, the engine and every consumer may use them."""

from __future__ import annotations

#: the side of the square every image is resized and cropped to by default (ImageNet practice, the paper's
#: 224x224 inputs): ``Net.preprocess``, the probe forward of a model's shapes, the CLI's ``--size``/``--crop``
DEFAULT_SIZE = 224
