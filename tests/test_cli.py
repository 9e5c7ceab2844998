"""The execpool command line."""

from __future__ import annotations

import subprocess
import sys

from _helpers import INTERPRETERS
from execpool.cli import main


def test_info_prints_a_row_per_gateway(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["info", "popen", "popen//id=second"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "spec", "python", "platform", "cpus", "pid", "start-up"]
    assert out[1].startswith("gw0") and "cpython %d.%d" % sys.version_info[:2] in out[1]
    assert out[2].startswith("second") and out[2].endswith("ms")


def test_info_without_specs_uses_every_local_interpreter(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for interp in INTERPRETERS:
        assert "cpython %s" % ".".join(map(str, interp.version)) in out


def test_info_reports_a_bad_spec_and_exits_1(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["info", "popen//python=python9"]) == 1
    assert "python9" in capsys.readouterr().err


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "execpool", "info", "popen"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "gw0" in result.stdout
    version = subprocess.run([sys.executable, "-m", "execpool", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("execpool ")
