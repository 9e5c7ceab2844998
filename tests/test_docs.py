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
