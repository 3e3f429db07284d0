"""Sphinx configuration: MyST Markdown pages, an API reference from the numpydoc-style
docstrings (napoleon), the PyData theme (NumPy's, SciPy's and pandas'), built with warnings as
errors in CI (``sphinx-build -W``)."""

import os
import re
import sys

from docutils import nodes

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
# A block without a language is a transcript, a table, a listing or a formula: plain text. A
# guessed lexer would colour it as Python wherever its words happen to parse as Python.
highlight_language = "none"

html_theme = "pydata_sphinx_theme"
html_title = "refimpl"
html_static_path = ["_static"]
html_css_files = ["refimpl.css"]
html_theme_options = {
    # Every page is in the header; the left sidebar would only repeat that list, and the
    # width it takes is what the tables and transcripts need.
    "header_links_before_dropdown": 4,
    "navbar_persistent": [],
    "navbar_end": ["search-button", "theme-switcher"],
    "navigation_with_keys": False,
    "show_prev_next": True,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"**": []}
PYTHON_START = re.compile(r"(import|from|def|class|@)\b|>>> ")


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple's fields are documented by its docstring's Attributes section; autodoc's
    own entry for each ("Alias for field number N") would describe them a second time."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def _python_literal_blocks(app, doctree):
    """A docstring's ``::`` block that is Python (a module's usage example) is highlighted as
    Python: the docstrings do not name the language, and the default here is plain text.
    Only blocks that compile and start with an import or a definition count; a formula or a
    signature (``impl(params, inputs) -> (loss, grads)``) does not compile."""
    for block in doctree.findall(nodes.literal_block):
        text = block.astext()
        if "language" in block or not PYTHON_START.match(text):   # named, or not Python
            continue
        try:
            compile(text, "<docstring>", "exec")
        except SyntaxError:
            continue
        block["language"] = "python"


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("doctree-read", _python_literal_blocks)
