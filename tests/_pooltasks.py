"""Task functions for the pool tests: importable by name, so they travel by reference.

Workers that cannot import this module from their ``sys.path`` get it from the
master (the pool serves pure-Python modules).  Keep it stdlib-only.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

MARKER: Any = None


def square_slowly(x: int) -> int:
    """``x * x`` after a short sleep, so that a map is still in flight a moment later."""
    time.sleep(0.05)
    return x * x


def pid_of(x: Any) -> int:
    """The pid of the worker that ran the task (after a short sleep, so that tasks spread over workers)."""
    time.sleep(0.05)
    return os.getpid()


def log_then_crash_on(item: tuple[int, int, str]) -> int:
    """Append ``x`` to ``logfile``; kill the interpreter (no clean exit) if ``x == crash``; else ``2 * x``."""
    x, crash, logfile = item
    with open(logfile, "a") as f:
        f.write("%d\n" % x)
    if x == crash:
        os._exit(3)
    time.sleep(0.02)
    return 2 * x


def kill_own_interpreter(x: int) -> int:
    """SIGKILL the worker's own process when ``x == 2``; else ``x``."""
    if x == 2:
        os.kill(os.getpid(), 9)
    time.sleep(0.02)
    return x


def record_pid_and_sleep(item: tuple[str, float]) -> int:
    """Write the worker's pid to ``path`` (atomically), sleep ``seconds``, return the pid."""
    path, seconds = item
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def record_pid_and_wait_for(item: tuple[str, str]) -> int:
    """Write the worker's pid to ``path``, then wait (at most 60 s) until file ``go`` exists; return the pid."""
    path, go = item
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def log_and_sleep(item: tuple[str, int, float]) -> int:
    """Append ``x`` to ``logfile``, sleep ``seconds``, return ``x``."""
    logfile, x, seconds = item
    with open(logfile, "a") as f:
        f.write("%d\n" % x)
    time.sleep(seconds)
    return x


def set_marker(value: Any, logfile: str) -> None:
    """Initializer: remember ``value`` in this worker; log the worker's pid."""
    global MARKER
    MARKER = value
    with open(logfile, "a") as f:
        f.write("%d\n" % os.getpid())


def read_marker(x: int) -> tuple[Any, int, int]:
    """What the initializer left in this worker, with ``x`` and the worker's pid."""
    time.sleep(0.05)
    return (MARKER, x, os.getpid())


def failing_initializer() -> None:
    raise ValueError("the initializer exploded (code 4711)")


def send_malformed_pool_message(item: tuple[int, int, Any]) -> int:
    """``2 * x``; but the task ``x == bad`` first sends ``message`` to the master on its pool worker's
    task channel, as a broken or hostile pool worker would."""
    x, bad, message = item
    if x == bad:
        import gc

        (worker,) = [o for o in gc.get_objects() if type(o).__name__ == "Worker" and hasattr(o, "channel")]
        if isinstance(message, tuple) and "<cid>" in message:
            # the id of the chunk this task runs in, from the pool worker's own frame
            frame = sys._getframe()
            while frame is not None and "cid" not in frame.f_locals:
                frame = frame.f_back
            assert frame is not None
            message = tuple(frame.f_locals["cid"] if part == "<cid>" else part for part in message)
        worker.channel.send(message)
    return 2 * x


def start_lingering_sleep(x: Any) -> int:
    """Start ``sleep 300`` holding the worker's stdout and stderr (it inherits them); return its pid."""
    import subprocess

    return subprocess.Popen(["sleep", "300"]).pid


def start_daemon_sleep(x: Any) -> int:
    """Start ``sleep 300`` in a session of its own (a daemon started on purpose); return its pid."""
    import subprocess

    return subprocess.Popen(["sleep", "300"], start_new_session=True).pid


def log_and_wait_for(item: tuple[str, int, str]) -> int:
    """Append ``x`` to ``logfile``, then wait (at most 60 s) until file ``go`` exists; return ``x``."""
    logfile, x, go = item
    with open(logfile, "a") as f:
        f.write("%d\n" % x)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x
