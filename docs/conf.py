"""Sphinx configuration for the execpool documentation.

Build:   sphinx-build -W -b html docs docs/_build/html
Doctest: sphinx-build -W -b doctest docs docs/_build/doctest
"""

import os
import sys

# execpool is normally installed (editable) into the environment that runs
# Sphinx; the source tree is added as a fallback for a bare checkout.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

import execpool

project = "execpool"
author = "the execpool authors"
copyright = "the execpool authors"
version = release = execpool.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]

exclude_patterns = ["_build"]
root_doc = "index"

html_theme = "alabaster"
html_theme_options = {
    "description": "Python code on many interpreters, over channels",
}

# -- autodoc ------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"


def _builtin_bases_as_text(app, name, obj, options, bases):
    """Show builtin base classes as plain names.

    ``execpool.TimeoutError`` derives from the builtin ``TimeoutError``; as a
    cross-reference that name would resolve to ``execpool.TimeoutError``
    itself.  Without intersphinx builtins are not linked anyway.
    """
    for i, base in enumerate(bases):
        if isinstance(base, type) and base.__module__ == "builtins":
            bases[i] = "``%s``" % base.__qualname__


def _check_all_documented(app, env):
    """Warn (an error under -W) about names of execpool.__all__ missing from the docs."""
    from sphinx.util import logging

    documented = env.get_domain("py").objects
    missing = [name for name in execpool.__all__ if "execpool." + name not in documented]
    if missing:
        logging.getLogger(__name__).warning("execpool.__all__ names not documented: %s", ", ".join(missing))


def setup(app):
    app.connect("autodoc-process-bases", _builtin_bases_as_text)
    app.connect("env-check-consistency", _check_all_documented)


# -- doctest -------------------------------------------------------------------------------
# Every document's examples start with execpool imported; each document opens
# and closes its own gateways (see the testsetup/testcleanup blocks).
doctest_global_setup = """
import execpool
"""
# The doctest flags are Sphinx's defaults: ELLIPSIS, IGNORE_EXCEPTION_DETAIL and
# DONT_ACCEPT_TRUE_FOR_1.
