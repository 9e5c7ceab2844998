"""Helpers the tests share: the local interpreters, waiting, process checks, master scripts.

A plain module: tests import from here (``from _helpers import wait_until``), never from conftest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import execpool

#: Every CPython 3.8+ on this machine (PATH and pyenv's versions directory).
INTERPRETERS = execpool.find_interpreters()
#: The Python versions execpool's workers support.
SUPPORTED = [(3, minor) for minor in range(8, 14)]


def process_gone(pid: int) -> bool:
    """True if ``pid`` does not exist or is a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` (a hang guard, not a timing assertion) passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def run_master_script(
    source: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a separate master process (with execpool importable)."""
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent(source))
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=tmp_path
    )


def start_master_script(source: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent(source))
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=tmp_path,
    )


def stop_serve_process(proc: subprocess.Popen[bytes]) -> None:
    """End an ``execpool serve`` process the way Ctrl-C does, killing it if it lingers."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
