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
autodoc_member_order = "bysource"
autodoc_typehints = "none"
myst_heading_anchors = 3
html_theme = "alabaster"


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple's fields are documented by its docstring's Attributes section; autodoc's
    own entry for each ("Alias for field number N") would describe them a second time."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
