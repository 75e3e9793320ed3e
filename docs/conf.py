"""Sphinx configuration for pycontain's documentation.

Build: ``./dev docs`` (or ``python -m sphinx -W -b html docs docs/_build/html``).
The tutorials in ``notebooks/`` are rendered by myst-nb with their stored
outputs; they are never executed here (nbval executes them in CI).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pycontain"
author = "the pycontain developers"
copyright = "the pycontain developers"
release = "0.1.0"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Notebooks show their stored outputs; executing them needs root and a real kernel (nbval does that).
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "notebooks/README.md", "Thumbs.db", ".DS_Store"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# pycontain's docstrings also use a "Fields:" section (ChildSpec): read it like "Attributes:".
napoleon_custom_sections = [("Fields", "params_style")]

try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # the default theme works as well, just plainer
    html_theme = "alabaster"
html_title = "pycontain"

# Names in docstrings that autodoc cannot (or need not) resolve.
nitpicky = False
suppress_warnings = ["myst.header"]
