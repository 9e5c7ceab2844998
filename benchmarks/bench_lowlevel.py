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

import os
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from _harness import (
    RECEIVE_TIMEOUT,
    Gateways,
    MiB,
    Scenario,
    Target,
    alternate,
    bench_parser,
    chosen,
    execpool_description,
    import_execpool,
    leftover_children,
    medians_ms,
    pair_table,
    print_footer,
    print_header,
    results_row,
    run_echo,
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

execpool = import_execpool()

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

SERIAL_OBJ = {"a": [1, 2.5, "x", None], "b": {"c": (1, 2)}, "d": b"bytes"}

# -- the two libraries ---------------------------------------------------------------------

EXECPOOL = Gateways("execpool", execpool)
EXECNET = Gateways("execnet", execnet)
LIBS = (EXECPOOL, EXECNET)
PHASES = ("make", "first", "exit")
SCENARIOS = ("startup", "latency", "bulk", "small", "serializer")

# -- scenarios ---------------------------------------------------------------------------
# Each returns {lib name: [one value per repetition]} plus, where useful, details.


def bench_startup(spec: str, reps: int) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """makegateway + first result + exit until the worker is gone, per library."""
    runs = alternate(LIBS, reps, lambda lib, rep: lib.startup(spec))
    times = {lib.name: [sum(r) for r in runs[lib]] for lib in LIBS}
    phases = {lib.name: {k: [r[i] for r in runs[lib]] for i, k in enumerate(PHASES)} for lib in LIBS}
    return times, phases


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
    results: dict[str, dict[str, list[float]]] = {}
    try:
        gws = {lib: lib.make_ready(spec) for lib in LIBS}
        for name, (fn, reps) in runs.items():
            out = alternate(LIBS, reps, lambda lib, rep, fn=fn: fn(gws[lib]))  # type: ignore[misc]
            results[name] = {lib.name: vals for lib, vals in out.items()}
    finally:
        for lib in LIBS:
            lib.exit_all()
    return results


def bench_serializer(reps: int) -> dict[str, list[float]]:
    """dumps+loads round trips per second, in-process (best-of timeit repeats)."""
    timers = {}
    for lib in LIBS:
        dumps, loads = lib.mod.dumps, lib.mod.loads
        assert loads(dumps(SERIAL_OBJ)) == SERIAL_OBJ, lib.name
        timers[lib] = timeit.Timer("loads(dumps(obj))", globals={"loads": loads, "dumps": dumps, "obj": SERIAL_OBJ})
    numbers = {}
    for lib in LIBS:  # calibrate: about 0.2 s per repeat
        n, t = timers[lib].autorange()
        numbers[lib] = max(1, int(n * 0.2 / t))
    out = alternate(LIBS, reps, lambda lib, rep: numbers[lib] / timers[lib].timeit(numbers[lib]))
    return {lib.name: vals for lib, vals in out.items()}


# -- reporting ---------------------------------------------------------------------------


def scenario(title: str, unit: str, scale: float, target: Target, values: dict[str, list[float]]) -> Scenario:
    """A row of the table: ratio execpool / execnet; rates (unit '/s') are better when higher."""
    return Scenario(
        title,
        values,
        reference="execnet",
        targets={"execpool": target},
        unit=unit,
        scale=scale,
        lower_better=not unit.endswith("/s"),
    )


def describe_remote(spec: str) -> str:
    gw = EXECPOOL.make(spec)
    try:
        info = gw.remote_info()
        return "%s (%s %s)" % (info.executable, info.implementation, info.version)
    finally:
        EXECPOOL.exit(gw)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "few repetitions and small sizes: a smoke test, not figures", SCENARIOS)
    parser.add_argument("--spec", default="popen", help="gateway spec for both libraries (default: %(default)s)")
    args = parser.parse_args(argv)
    only = chosen(parser, args.only, SCENARIOS)

    if args.quick:
        p = dict(
            startup_reps=4, lat_reps=3, lat_n=300, bulk_reps=2, bulk_mib=16, small_reps=2, small_n=5000, ser_reps=3
        )
    else:
        p = dict(
            startup_reps=25, lat_reps=9, lat_n=2000, bulk_reps=5, bulk_mib=200, small_reps=7, small_n=100000, ser_reps=9
        )

    t_start = time.perf_counter()
    ep_dir = os.path.dirname(execpool.__file__)
    print_header(
        "bench_lowlevel",
        [
            ("spec", args.spec),
            ("worker", describe_remote(args.spec)),
            ("execpool", execpool_description(ep_dir)),
            ("execnet", "%s (%s)" % (execnet.__version__, os.path.dirname(execnet.__file__))),
        ],
        quick=args.quick,
    )

    scenarios: list[Scenario] = []
    notes: list[str] = []
    try:
        if "startup" in only:
            times, phases = bench_startup(args.spec, p["startup_reps"])
            scenarios.append(scenario("gateway start-up", "ms", 1000, Target("<=", 0.6), times))
            for name in ("execpool", "execnet"):
                notes.append(
                    "start-up phases, median ms, %-8s: makegateway %.1f, first remote_exec result %.1f, exit %.1f"
                    % (name, *medians_ms(phases[name], PHASES))
                )
        runs: dict[str, tuple[Callable[[Any], float], int]] = {}
        if "latency" in only:
            runs["latency"] = (lambda gw: run_latency(gw, p["lat_n"]), p["lat_reps"])
        if "bulk" in only:
            runs["bulk"] = (lambda gw: run_echo(gw, p["bulk_mib"]), p["bulk_reps"])
            runs["oneway"] = (lambda gw: run_oneway(gw, b"x" * MiB, p["bulk_mib"]), p["bulk_reps"])
        if "small" in only:
            runs["small"] = (lambda gw: run_small(gw, p["small_n"]), p["small_reps"])
        if runs:
            res = bench_channels(args.spec, runs)
            if "latency" in res:
                scenarios.append(scenario("round-trip latency", "us", 1e6, Target("<=", 0.4), res["latency"]))
                notes.append("latency: %d round trips of an int per repetition, after 200 warm-up ones" % p["lat_n"])
            if "bulk" in res:
                scenarios.append(scenario("bulk 1 MiB echo", "MiB/s", 1, Target(">=", 2), res["bulk"]))
                notes.append(
                    "bulk echo: %d x 1 MiB bytes echoed per repetition (4 in flight); MiB/s one way" % p["bulk_mib"]
                )
            if "oneway" in res:
                scenarios.append(scenario("bulk 1 MiB one-way", "MiB/s", 1, Target(">=", 2), res["oneway"]))
                notes.append(
                    "bulk one-way: %d x 1 MiB bytes to the worker, each acked with its length (4 in flight)"
                    % p["bulk_mib"]
                )
            if "small" in res:
                scenarios.append(scenario("small-message rate", "msg/s", 1, Target(">=", 3), res["small"]))
                notes.append("small messages: %d ints one way, then the count back, per repetition" % p["small_n"])
        if "serializer" in only:
            values = bench_serializer(p["ser_reps"])
            scenarios.append(scenario("serializer dumps+loads", "ops/s", 1, Target(">=", 10), values))
            notes.append("serializer: loads(dumps(%r)), in-process, timeit" % (SERIAL_OBJ,))
    finally:
        for lib in LIBS:
            lib.exit_all()

    pair_table(scenarios, [("execpool", "execpool"), ("execnet", "execnet")], "ratio ep/en", unit=True).print(
        "ratio = execpool / execnet; best = min time or max rate over the reps; 'met' is judged on the median ratio."
    )
    notes.append("RESULTS.md row: %s" % results_row(args.spec, source_revision(ep_dir), scenarios))
    left = print_footer(notes, {"child processes": leftover_children()}, t_start)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
