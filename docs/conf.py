"""Sphinx configuration of sever's documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (tests/test_docs.py builds it the same
way, warnings as errors). The reference pages are generated at build time: the config keys from
the schema in :mod:`sever.utils.config`, the commands from the click group, the API from the
docstrings (autodoc imports sever's modules, so build in an environment where sever's
dependencies are installed).
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the checkout's sever, also when it is not installed

import sever  # noqa: E402

project = "sever"
author = "sever contributors"
copyright = "sever contributors, MIT licence"
release = version = sever.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sever_docs",
]

root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Steel-surface defect segmentation on PyTorch", "fixed_sidebar": True}
html_static_path: list[str] = []

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# The index lists guides other branches add (guides/python-api*, guides/deploy*) by glob at their
# place in the order; a pattern that matches nothing yet must not fail the -W build.
suppress_warnings = ["toc.empty_glob"]
