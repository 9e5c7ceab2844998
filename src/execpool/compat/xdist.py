"""pytest plugin: ``pytest -p execpool.compat.xdist -n 4`` runs pytest-xdist on execpool.

Importing this module calls :func:`execpool.compat.install`, so pytest-xdist's
``import execnet`` gives execpool's compatibility layer on the master; the
workers it starts can ``import execnet`` too.  ``-p`` plugins load before
pytest's installed plugins (pytest-xdist among them), which is what makes this
work; the option can also go in ``PYTEST_ADDOPTS`` or the ``addopts`` setting.
"""

from __future__ import annotations

from . import install

install()
