"""Sphinx configuration of the deconvnet documentation site (built by ``./run.sh docs``).

Pages are MyST Markdown. Three kinds of page are generated at build time by ``_ext/deconvnet_docs.py``, so
that what other code adds shows up without editing the docs: the API reference (one page per name of
``deconvnet.__all__``), the command-line reference (one page per subcommand of the argparse parser) and the
tutorials (one page per notebook of ``notebooks/``, with the figures the main job wrote into ``figures/``).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the package of this checkout, installed or not
os.environ.setdefault("DECONVNET_OFFLINE", "1")  # the build never downloads
os.environ.setdefault("MPLBACKEND", "Agg")

import deconvnet

project = "deconvnet"
author = "the deconvnet authors"
copyright = "the deconvnet authors, MIT licence"
release = version = deconvnet.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from _static: the site makes no network request
    "deconvnet_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md"]
myst_enable_extensions = ["dollarmath", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # notebooks' headings may jump levels (## after #, #### in a cell)

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = True

html_theme = "furo"
html_title = f"deconvnet {release}"
html_static_path = []
html_show_sourcelink = False
html_copy_source = False
pygments_style = "sphinx"
