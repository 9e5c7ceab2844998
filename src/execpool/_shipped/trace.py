"""Debug tracing for both sides of a connection.

``EXECPOOL_DEBUG=1`` (or the seed system's ``EXECNET_DEBUG=1``) appends trace
lines to ``execpool-debug-<pid>`` in the temporary directory, one file per
process, master and workers alike; ``=2`` writes them to stderr instead
(a worker's stderr reaches the master's, prefixed with the gateway id).
Workers get the master's level in their start-up configuration, so tracing
reaches remote hosts whose environment does not carry the variable.

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import sys
import time

_level = 0
_prefix = "master"
_stream: object = None


def level_from_env() -> int:
    for name in ("EXECPOOL_DEBUG", "EXECNET_DEBUG"):
        value = os.environ.get(name, "").strip()
        if value:
            return 2 if value == "2" else 1
    return 0


def configure(level: int, prefix: str) -> None:
    """Set the trace level (0 off, 1 file, 2 stderr) and the side's name."""
    global _level, _prefix, _stream
    _level = level
    _prefix = prefix
    _stream = None


def enabled() -> bool:
    return _level > 0


def path_for(pid: int) -> str:
    """Where a level-1 trace of process ``pid`` on this host is written."""
    tmp = os.environ.get("TMPDIR") or os.environ.get("TEMP") or os.environ.get("TMP") or "/tmp"
    return os.path.join(tmp, "execpool-debug-%d" % pid)


def trace(*args: object) -> None:
    """Write one trace line if tracing is on (cheap when it is off)."""
    if not _level:
        return
    global _stream
    try:
        if _stream is None:
            if _level == 2:
                _stream = sys.stderr
            else:
                _stream = open(path_for(os.getpid()), "a", buffering=1)
        msg = " ".join(str(a) for a in args)
        _stream.write("[%s %d %.6f] %s\n" % (_prefix, os.getpid(), time.time(), msg))  # type: ignore[attr-defined]
        if _level == 2:
            _stream.flush()  # type: ignore[attr-defined]
    except Exception:
        pass  # tracing must never break the connection


configure(level_from_env(), "master")
