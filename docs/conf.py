"""Sphinx configuration: MyST Markdown pages, an API reference from the numpydoc-style
docstrings (napoleon), built with warnings as errors in CI (``sphinx-build -W``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "refimpl"
author = "the refimpl developers"
copyright = "2026, the refimpl developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# "Attributes" sections as :ivar: fields of their class, not attribute entries of their own:
# a NamedTuple's fields are already documented by autodoc (one entry each, no duplicates).
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"
myst_heading_anchors = 3
html_theme = "alabaster"
