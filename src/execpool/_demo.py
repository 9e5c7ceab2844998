"""``execpool demo``: one real parallel map over every interpreter at hand.

The demo's task is ``hashlib.pbkdf2_hmac`` (about 10 ms of CPU each), a
builtin every CPython 3.8+ has, so it travels by reference to workers of any
version.  The demo starts a pool on the given specs (by default one worker
per local CPython found), maps the tasks with a progress bar, checks a
sample of the results against the same computation on the master, and
prints the pool's per-worker statistics.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence

from ._discover import find_interpreters
from ._shipped.errors import ExecpoolError
from .pool import Pool

ITERATIONS = 20_000


def _task_args(n: int) -> list[tuple[str, bytes, bytes, int]]:
    return [("sha256", b"password %d" % i, b"execpool demo", ITERATIONS) for i in range(n)]


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _size(n: int) -> str:
    return "%d B" % n if n < 10_000 else "%.0f kB" % (n / 1000)


def _wait_for_workers(pool: Pool, timeout: float = 60.0) -> None:
    """Until every pool worker is ready or has failed to start (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(s.state == "starting" for s in pool.stats()):
        time.sleep(0.01)


def run(specs: Sequence[str], local: bool, tasks: int, progress: bool = True) -> int:
    specs = list(specs)
    if local or not specs:
        found = find_interpreters()
        if not found and not specs:
            print("execpool: no CPython 3.8+ interpreter found on PATH or in pyenv", file=sys.stderr)
            return 1
        specs += [i.spec for i in found]
    print(
        "execpool demo: %d tasks of pbkdf2_hmac(sha256, %d rounds) on %d worker spec%s:"
        % (tasks, ITERATIONS, len(specs), "" if len(specs) == 1 else "s")
    )
    for spec in specs:
        print("  " + spec)
    sys.stdout.flush()
    args = _task_args(tasks)
    t0 = time.perf_counter()
    try:
        with Pool(specs, progress=progress) as pool:
            _wait_for_workers(pool)  # the point is one map over every interpreter at once
            results = pool.starmap(hashlib.pbkdf2_hmac, args, chunksize=1)
            stats = pool.stats()
    except (ExecpoolError, ValueError, OSError) as exc:
        print("execpool demo failed: %s" % exc, file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    sample = range(0, tasks, max(1, tasks // 20))
    t1 = time.perf_counter()
    bad = [i for i in sample if hashlib.pbkdf2_hmac(*args[i]) != results[i]]
    serial_each = (time.perf_counter() - t1) / max(1, len(sample))
    rows: list[tuple[str, ...]] = [
        ("worker", "python", "host", "tasks", "busy", "idle", "sent", "received", "restarts", "spec")
    ]
    for s in stats:
        rows.append(
            (
                s.id,
                s.python or "-",
                s.host or "-",
                str(s.tasks),
                "%.2f s" % s.busy,
                "%.2f s" % s.idle,
                _size(s.bytes_sent),
                _size(s.bytes_received),
                str(s.restarts),
                s.spec,
            )
        )
    print()
    print(_table(rows))
    print()
    failed = [s for s in stats if s.error]
    for s in failed:
        print("%s (%s) did not start: %s" % (s.id, s.spec, s.error))
    print(
        "%d results in %.2f s (the master alone would take about %.2f s); %d of %d checked against the master: %s"
        % (
            len(results),
            wall,
            serial_each * tasks,
            len(sample),
            len(sample),
            "all equal" if not bad else "MISMATCH at %s" % bad,
        )
    )
    return 1 if bad else 0
