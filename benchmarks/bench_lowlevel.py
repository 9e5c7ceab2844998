#!/usr/bin/env python
"""Low-level benchmark: execpool against execnet, side by side, in one run.

Both libraries are measured on the same gateway spec (default ``popen``: the
interpreter running this script), with their runs alternated per repetition
(A B, B A, A B, ...) so that noise on a shared machine hits both alike.
Scenarios:

  start-up    makegateway + first remote_exec result + exit, until the worker
              process is gone (min and median of N runs)
  latency     remote echo loop: send an int, wait for it to come back
  bulk echo   1 MiB ``bytes`` messages echoed back by the worker (a window of a
              few messages in flight), MiB/s of payload one way
  bulk 1-way  1 MiB ``bytes`` messages to the worker, each acknowledged with its
              length (same window), MiB/s
  small msgs  many ints sent one way, the worker counts them and sends back the
              count; messages/s
  serializer  in-process dumps+loads of a small nested dict (timeit); ops/s

Run from the repository root::

    python benchmarks/bench_lowlevel.py            # full run, about a minute
    python benchmarks/bench_lowlevel.py --quick    # smoke test, a few seconds
    python benchmarks/bench_lowlevel.py --spec 'popen//python=/path/to/python3.12'

execnet is needed as the reference: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from _common import (
    ECHO,
    RECEIVE_TIMEOUT,
    MiB,
    descendants,
    exit_execnet,
    finish,
    fmt,
    rotate,
    run_latency,
    run_oneway,
    source_revision,
)

try:
    import execnet
except ImportError:
    print(
        "bench_lowlevel: execnet is not installed; it is the reference this benchmark compares against.\n"
        "Install the benchmark extra:  pip install -e '.[bench]'",
        file=sys.stderr,
    )
    sys.exit(2)

try:
    import execpool
except ImportError:  # not installed: use the source tree next to this file
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import execpool

EXIT_TIMEOUT = 10.0

# -- remote code (kept Python 3.8-compatible: workers may be old interpreters) ----------


COUNT = """
n = 0
while True:
    x = channel.receive()
    if x is None:
        break
    n += 1
channel.send(n)
"""


HELLO = "channel.send(1)"

INFO = "import sys; channel.send((sys.executable, list(sys.version_info[:3])))"

SERIAL_OBJ = {"a": [1, 2.5, "x", None], "b": {"c": (1, 2)}, "d": b"bytes"}


# -- the two libraries behind one interface ---------------------------------------------


class Lib:
    """A library under test: how to make, use and fully end a gateway."""

    def __init__(self, name: str, mod: Any) -> None:
        self.name = name
        self.mod = mod
        self.live: list[Any] = []  # gateways not yet exited (ended in finally blocks)

    def makegateway(self, spec: str) -> Any:
        gw = self.mod.makegateway(spec)
        self.live.append(gw)
        return gw

    def exit(self, gw: Any) -> None:
        """End the gateway and wait until its worker process is gone."""
        if self.mod is execnet:
            # execnet's exit() only triggers the shutdown; its Group.terminate() then does
            # join() (receiver thread) and _io.wait() (the process).  Do the same here so
            # that both libraries are timed to the same point: the worker is gone.
            # (Bounded, with a kill at the end, so that a stuck worker cannot hang the run.)
            exit_execnet(gw, EXIT_TIMEOUT)
        else:
            gw.exit(EXIT_TIMEOUT)  # execpool: returns once the worker process is gone (killed after the timeout)
        if gw in self.live:
            self.live.remove(gw)

    def exit_all(self) -> None:
        for gw in list(self.live):
            try:
                self.exit(gw)
            except Exception as exc:  # pragma: no cover - best effort clean-up
                print("warning: exiting %s gateway failed: %r" % (self.name, exc), file=sys.stderr)
        self.live.clear()


EXECPOOL = Lib("execpool", execpool)
EXECNET = Lib("execnet", execnet)
LIBS = (EXECPOOL, EXECNET)


# -- scenarios ---------------------------------------------------------------------------
# Each returns {lib name: [one value per repetition]} plus, where useful, details.


def bench_startup(spec: str, reps: int) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    times: dict[str, list[float]] = {lib.name: [] for lib in LIBS}
    phases: dict[str, dict[str, list[float]]] = {lib.name: {"make": [], "first": [], "exit": []} for lib in LIBS}
    for rep in range(reps):
        for lib in rotate(list(LIBS), rep):
            gc.collect()
            t0 = time.perf_counter()
            gw = lib.makegateway(spec)
            t1 = time.perf_counter()
            ch = gw.remote_exec(HELLO)
            assert ch.receive(RECEIVE_TIMEOUT) == 1
            t2 = time.perf_counter()
            lib.exit(gw)
            t3 = time.perf_counter()
            times[lib.name].append(t3 - t0)
            ph = phases[lib.name]
            ph["make"].append(t1 - t0)
            ph["first"].append(t2 - t1)
            ph["exit"].append(t3 - t2)
    return times, phases


def run_bulk(gw: Any, total_mib: int, window: int = 4) -> float:
    """MiB/s of 1 MiB messages echoed back (payload counted one way)."""
    block = b"x" * MiB
    ch = gw.remote_exec(ECHO)
    send, receive = ch.send, ch.receive
    for _ in range(2):  # warm-up
        send(block)
        receive(RECEIVE_TIMEOUT)
    t0 = time.perf_counter()
    outstanding = 0
    for _ in range(total_mib):
        send(block)
        outstanding += 1
        if outstanding >= window:
            got = receive(RECEIVE_TIMEOUT)
            outstanding -= 1
    while outstanding:
        got = receive(RECEIVE_TIMEOUT)
        outstanding -= 1
    t = time.perf_counter() - t0
    assert len(got) == MiB
    finish(ch)
    return total_mib / t


def run_small(gw: Any, count: int) -> float:
    """Messages/s: ``count`` ints one way, then the worker's count back."""
    ch = gw.remote_exec(COUNT)
    send = ch.send
    t0 = time.perf_counter()
    for i in range(count):
        send(i)
    send(None)
    n = ch.receive(RECEIVE_TIMEOUT)
    t = time.perf_counter() - t0
    assert n == count, (n, count)
    ch.waitclose(RECEIVE_TIMEOUT)
    return count / t


def bench_channels(spec: str, runs: dict[str, tuple[Callable[[Any], float], int]]) -> dict[str, dict[str, list[float]]]:
    """Run the channel scenarios on one gateway per library (started once)."""
    results: dict[str, dict[str, list[float]]] = {name: {lib.name: [] for lib in LIBS} for name in runs}
    gws = {}
    try:
        for lib in LIBS:
            gw = lib.makegateway(spec)
            ch = gw.remote_exec(HELLO)
            assert ch.receive(RECEIVE_TIMEOUT) == 1
            gws[lib.name] = gw
        for name, (fn, reps) in runs.items():
            for rep in range(reps):
                for lib in rotate(list(LIBS), rep):
                    gc.collect()
                    results[name][lib.name].append(fn(gws[lib.name]))
    finally:
        for lib in LIBS:
            if lib.name in gws:
                lib.exit(gws[lib.name])
    return results


def bench_serializer(reps: int) -> dict[str, list[float]]:
    """dumps+loads round trips per second, in-process (best-of timeit repeats)."""
    out: dict[str, list[float]] = {lib.name: [] for lib in LIBS}
    timers = {}
    for lib in LIBS:
        dumps, loads = lib.mod.dumps, lib.mod.loads
        assert loads(dumps(SERIAL_OBJ)) == SERIAL_OBJ, lib.name
        timers[lib.name] = timeit.Timer(
            "loads(dumps(obj))", globals={"loads": loads, "dumps": dumps, "obj": SERIAL_OBJ}
        )
    numbers = {}
    for lib in LIBS:  # calibrate: about 0.2 s per repeat
        n, t = timers[lib.name].autorange()
        numbers[lib.name] = max(1, int(n * 0.2 / t))
    for rep in range(reps):
        for lib in rotate(list(LIBS), rep):
            n = numbers[lib.name]
            out[lib.name].append(n / timers[lib.name].timeit(n))
    return out


# -- reporting ---------------------------------------------------------------------------


class Row:
    def __init__(
        self, label: str, unit: str, scale: float, lower_better: bool, target: float, values: dict[str, list[float]]
    ):
        self.label = label
        self.unit = unit
        self.lower_better = lower_better
        self.target = target
        self.reps = len(values["execpool"])
        self.best = {}
        self.median = {}
        for name, vals in values.items():
            vals = [v * scale for v in vals]
            self.best[name] = min(vals) if lower_better else max(vals)
            self.median[name] = statistics.median(vals)

    def ratio(self, which: dict[str, float]) -> float:
        return which["execpool"] / which["execnet"]

    def met(self, ratio: float) -> bool:
        return ratio <= self.target if self.lower_better else ratio >= self.target

    def target_text(self) -> str:
        return ("<= %.1fx" if self.lower_better else ">= %gx") % self.target


def print_table(rows: list[Row]) -> None:
    line = "%-22s %-6s %4s | %9s %9s | %9s %9s | %6s %6s | %-8s %s"
    head = line % ("scenario", "unit", "reps", "best", "median", "best", "median", "best", "median", "target", "met")
    print("%-35s | %-19s | %-19s | %-13s |" % ("", "execpool", "execnet", "ratio ep/en"))
    print(head)
    print("-" * len(head))
    for r in rows:
        rb, rm = r.ratio(r.best), r.ratio(r.median)
        met = "yes" if r.met(rm) else "NO"
        if r.met(rm) != r.met(rb):
            met += " (best: %s)" % ("yes" if r.met(rb) else "no")
        print(
            line
            % (
                r.label,
                r.unit,
                r.reps,
                fmt(r.best["execpool"]),
                fmt(r.median["execpool"]),
                fmt(r.best["execnet"]),
                fmt(r.median["execnet"]),
                "%.2fx" % rb,
                "%.2fx" % rm,
                r.target_text(),
                met,
            )
        )
    print("-" * len(head))
    print("ratio = execpool / execnet; best = min time or max rate over the reps; 'met' is judged on the median ratio.")


def describe_remote(spec: str) -> str:
    gw = EXECPOOL.makegateway(spec)
    try:
        info = gw.remote_info()
        return "%s (%s %s)" % (info.executable, info.implementation, info.version)
    finally:
        EXECPOOL.exit(gw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="popen", help="gateway spec for both libraries (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions and small sizes: a smoke test, not figures"
    )
    parser.add_argument(
        "--only",
        default="startup,latency,bulk,small,serializer",
        help="comma-separated subset of: startup,latency,bulk,small,serializer",
    )
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"startup", "latency", "bulk", "small", "serializer"}
    if unknown:
        parser.error("unknown scenario(s): %s" % ", ".join(sorted(unknown)))

    if args.quick:
        p = dict(
            startup_reps=4, lat_reps=3, lat_n=300, bulk_reps=2, bulk_mib=16, small_reps=2, small_n=5000, ser_reps=3
        )
    else:
        p = dict(
            startup_reps=25, lat_reps=9, lat_n=2000, bulk_reps=5, bulk_mib=200, small_reps=7, small_n=100000, ser_reps=9
        )

    t_start = time.perf_counter()
    print("bench_lowlevel  %s" % datetime.datetime.now().isoformat(timespec="seconds"))
    print("master : %s %s (%s)" % (platform.python_implementation(), platform.python_version(), sys.executable))
    print("spec   : %s" % args.spec)
    print("worker : %s" % describe_remote(args.spec))
    ep_dir = os.path.dirname(execpool.__file__)
    rev = source_revision(ep_dir)
    print("execpool %s (%s%s)" % (execpool.__version__, ep_dir, ", git " + rev if rev else ""))
    print("execnet  %s (%s)" % (execnet.__version__, os.path.dirname(execnet.__file__)))
    if hasattr(os, "getloadavg"):
        print("load   : %.2f %.2f %.2f (1/5/15 min) on %s CPUs" % (*os.getloadavg(), os.cpu_count()))
    print("mode   : %s" % ("quick (smoke test; figures not meaningful)" if args.quick else "full"))
    print(flush=True)

    rows: list[Row] = []
    notes: list[str] = []
    try:
        if "startup" in only:
            times, phases = bench_startup(args.spec, p["startup_reps"])
            rows.append(Row("gateway start-up", "ms", 1000, True, 0.6, times))
            for name in ("execpool", "execnet"):
                ph = phases[name]
                notes.append(
                    "start-up phases, median ms, %-8s: makegateway %.1f, first remote_exec result %.1f, exit %.1f"
                    % (name, *(1000 * statistics.median(ph[k]) for k in ("make", "first", "exit")))
                )
        runs: dict[str, tuple[Callable[[Any], float], int]] = {}
        if "latency" in only:
            runs["latency"] = (lambda gw: run_latency(gw, p["lat_n"]), p["lat_reps"])
        if "bulk" in only:
            runs["bulk"] = (lambda gw: run_bulk(gw, p["bulk_mib"]), p["bulk_reps"])
            runs["oneway"] = (lambda gw: run_oneway(gw, b"x" * MiB, p["bulk_mib"]), p["bulk_reps"])
        if "small" in only:
            runs["small"] = (lambda gw: run_small(gw, p["small_n"]), p["small_reps"])
        if runs:
            res = bench_channels(args.spec, runs)
            if "latency" in res:
                rows.append(Row("round-trip latency", "us", 1e6, True, 0.4, res["latency"]))
                notes.append("latency: %d round trips of an int per repetition, after 200 warm-up ones" % p["lat_n"])
            if "bulk" in res:
                rows.append(Row("bulk 1 MiB echo", "MiB/s", 1, False, 2, res["bulk"]))
                notes.append(
                    "bulk echo: %d x 1 MiB bytes echoed per repetition (4 in flight); MiB/s one way" % p["bulk_mib"]
                )
            if "oneway" in res:
                rows.append(Row("bulk 1 MiB one-way", "MiB/s", 1, False, 2, res["oneway"]))
                notes.append(
                    "bulk one-way: %d x 1 MiB bytes to the worker, each acked with its length (4 in flight)"
                    % p["bulk_mib"]
                )
            if "small" in res:
                rows.append(Row("small-message rate", "msg/s", 1, False, 3, res["small"]))
                notes.append("small messages: %d ints one way, then the count back, per repetition" % p["small_n"])
        if "serializer" in only:
            rows.append(Row("serializer dumps+loads", "ops/s", 1, False, 10, bench_serializer(p["ser_reps"])))
            notes.append("serializer: loads(dumps(%r)), in-process, timeit" % (SERIAL_OBJ,))
    finally:
        for lib in LIBS:
            lib.exit_all()

    print_table(rows)
    for n in notes:
        print("  " + n)
    left = list(descendants(os.getpid()))
    # Give a just-exited process a moment to be reaped before calling it left over.
    if left:
        time.sleep(0.5)
        left = list(descendants(os.getpid()))
    print("  leftover child processes: %s" % (left or "none"))
    if hasattr(os, "getloadavg"):
        print("  load at the end: %.2f %.2f %.2f" % os.getloadavg())
    print("  total benchmark time: %.1f s" % (time.perf_counter() - t_start))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
