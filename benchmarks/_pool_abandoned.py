"""bench_pool's abandoned-imap case: ``for x in pool.imap(f, itertools.count()): break`` in a ``with``
block, then leaving the block -- for execpool.Pool and multiprocessing.Pool, each in a child process.

Each run is a fresh child master (``python -c``) under an address-space cap (``RLIMIT_AS``) and a
timeout, since a pool that reads an endless input without bound grows until it is stopped, or
hangs.  The child samples its own resident set (``/proc/self/status``, every 2 ms, in a thread)
from just after its pool is up and warm until it has left the block, and prints the peak above
that start and the seconds the ``with`` block's exit took.  ``hold`` seconds pass between the
``break`` and leaving the block (0: leave at once; 1: the abandoned stream has a second to grow).

Only the standard library is imported here (see ``bench_pool``'s note on spawned workers).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

#: The child's address-space cap, and how long it may take.
CAP = 3 << 30
CHILD_TIMEOUT = 60.0

CHILD = r"""
import itertools, json, sys, threading, time
KIND, HOLD = sys.argv[1], float(sys.argv[2])

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

peak = [0]
sampling = [True]

def sample():
    while sampling[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

if KIND == "execpool":
    import execpool
    pool = execpool.Pool(2)
else:
    import multiprocessing
    pool = multiprocessing.get_context(KIND).Pool(2)
with pool:
    pool.map(abs, range(64))  # the workers are up and warm
    start = rss()
    peak[0] = start
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for x in pool.imap(abs, itertools.count()):
        break
    time.sleep(HOLD)
    t = time.monotonic()
left = time.monotonic() - t
sampling[0] = False
sampler.join()
peak[0] = max(peak[0], rss())
print(json.dumps({"exit": left, "peak_above_start": peak[0] - start}), flush=True)
"""


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def run_once(kind: str, hold: float, pythonpath: str) -> dict[str, Any]:
    """One child run: {"exit": s, "peak_above_start": bytes} or {"failed": what happened}."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(hold)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            preexec_fn=_capped,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"failed": "hung: killed after %.0f s" % CHILD_TIMEOUT}
    took = time.monotonic() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"failed": "exit status %s after %.1f s: %s" % (proc.returncode, took, tail[:160])}
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def run(kinds: list[str], holds: list[float], reps: int, pythonpath: str) -> dict[tuple[str, float], list[dict]]:
    """Every (kind, hold) ``reps`` times, alternated."""
    results: dict[tuple[str, float], list[dict]] = {(k, h): [] for k in kinds for h in holds}
    for rep in range(reps):
        order = list(results)
        order = order[rep % len(order) :] + order[: rep % len(order)]
        for key in order:
            results[key].append(run_once(key[0], key[1], pythonpath))
    return results


def describe(runs: list[dict]) -> str:
    """Median exit time and peak RSS above start of the runs that finished, and what the others did."""
    ok = [r for r in runs if "failed" not in r]
    parts = []
    if ok:
        parts.append(
            "leave the block %.3f s (median; max %.3f), peak RSS +%.0f MiB above start (median; max %.0f)"
            % (
                statistics.median(r["exit"] for r in ok),
                max(r["exit"] for r in ok),
                statistics.median(r["peak_above_start"] for r in ok) / (1 << 20),
                max(r["peak_above_start"] for r in ok) / (1 << 20),
            )
        )
    for r in runs:
        if "failed" in r:
            parts.append("FAILED: " + r["failed"])
    return "; ".join(parts) + " [%d/%d runs finished]" % (len(ok), len(runs))


def verdict(runs: list[dict], rss_bound: float, exit_bound: float) -> bool:
    """Every run finished, under both bounds (bytes, seconds)."""
    return bool(runs) and all(
        "failed" not in r and r["peak_above_start"] < rss_bound and r["exit"] < exit_bound for r in runs
    )
