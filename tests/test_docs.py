"""The documentation builds without warnings and its examples run (sphinx doctest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

pytest.importorskip("sphinx", reason="install the test extra: pip install -e '.[test]'")


@pytest.mark.parametrize("builder", ["doctest", "html"])
def test_docs_build_cleanly(builder: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-E", "-b", builder, str(DOCS), str(tmp_path / builder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_every_test_the_guarantees_page_names_exists() -> None:
    """docs/guarantees.rst names the tests that prove each guarantee: they must exist."""
    import re

    text = (DOCS / "guarantees.rst").read_text()
    tests = DOCS.parent / "tests"
    current = None
    named = 0
    for m in re.finditer(r"``(test_\w+\.py)?::(test_\w+)``|``(test_\w+\.py)``", text):
        if m.group(3):  # a whole file
            assert (tests / m.group(3)).exists(), m.group(3)
            continue
        current = m.group(1) or current
        assert current is not None, m.group(0)
        source = (tests / current).read_text()
        assert re.search(r"^def %s\(" % m.group(2), source, re.M), "%s::%s" % (current, m.group(2))
        named += 1
    assert named >= 20


def test_every_public_name_is_in_the_api_reference() -> None:
    """Each name of ``execpool.__all__`` and ``execpool.compat.__all__`` appears in docs/api.rst."""
    import re

    import execpool
    import execpool.compat

    text = (DOCS / "api.rst").read_text()
    missing = []
    for module, names in (("execpool", execpool.__all__), ("execpool.compat", execpool.compat.__all__)):
        for name in names:
            if not re.search(r"(?<![\w.])(%s\.)?%s\b" % (re.escape(module), re.escape(name)), text):
                missing.append("%s.%s" % (module, name))
    assert not missing
