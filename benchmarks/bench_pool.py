#!/usr/bin/env python
"""Pool benchmark: execpool.Pool against multiprocessing, concurrent.futures, loky and mpire, in one run.

Every library runs the same workloads with 2 local worker processes, its
variants alternated per repetition (the order rotates: A B C, B C A, ...) so
that noise on a shared machine hits all alike.  Workloads 1-3 run on pools
started once and warmed up (untimed); only the ``map`` call is timed:

  trivial     100 000 x square(x), map with each library's default chunking
  cpu         400 tasks of ~5 ms pure-Python work (a loop calibrated at start);
              reference: the ideal, serial time (measured in the master) / 2
  bytes       200 distinct 1 MiB ``bytes`` arguments (os.urandom, made up front);
              the task returns len(); master -> worker transfer
  start-up    a new pool, until the result of one trivial task is back (and, as
              a second figure, also its close() + join() or shutdown())

Then, for execpool.Pool and multiprocessing.Pool (fork) only:

  bytes-cold  the bytes map on a new pool each time (workers up, nothing run yet)
  bytes-warm  the bytes map on a pool that ran 2000 x nbytes(b"x") just before
              (untimed): tiny arguments first must not make huge chunks
  abandoned   ``for x in pool.imap(abs, itertools.count()): break`` in a ``with``
              block, then leave it (at once, and after 3 s): peak RSS above the
              pool's start and the time to leave, each run a child process under
              an address-space cap and a timeout (``_pool_abandoned.py``)

Then, over the tests' real sshd (``tests/sshd.py``, loopback, needs root), the
same workloads for execpool with three ssh hosts (one worker each) and with
``host-a//workers=2`` (two workers behind one ssh login), against local
execpool in the same rotation.

Run from the repository root::

    python benchmarks/bench_pool.py            # full run, about 3-3.5 minutes
    python benchmarks/bench_pool.py --quick    # smoke test, about 30 s
    python benchmarks/bench_pool.py --no-ssh --only trivial,startup

loky and mpire are optional (``pip install -e '.[bench]'``): without them their
rows are skipped with a note.  The task functions live in ``_pool_tasks.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This module's top level imports only the standard library and the benchmark's own small
# modules: spawned workers (multiprocessing "spawn", loky) re-run it as __mp_main__, and should
# pay what they pay for a small user script, not for importing every library measured here.
import _pool_tasks as tasks
from _harness import (
    Column,
    MiB,
    Scenario,
    Target,
    alternate,
    bench_parser,
    chosen,
    default_remote_python,
    descendants,
    execpool_description,
    fmt,
    grouped_table,
    import_execpool,
    package_version,
    print_footer,
    print_header,
    process_state,
    results_row,
    running_sshd,
    source_revision,
    sshd_missing,
    wait_gone,
)

HERE = Path(__file__).resolve().parent
TIMEOUT = 120.0  # seconds any one map or first result may take before it counts as a failure
WORKERS = 2
CPU_TASK_SECONDS = 0.005
WORKLOADS = ("trivial", "cpu", "bytes", "startup", "bytes-cold", "bytes-warm", "abandoned")
#: The abandoned imap's peak RSS above the pool's start must stay under this; its block must end in ABANDONED_EXIT s.
ABANDONED_RSS = 200 * 1024 * 1024
ABANDONED_EXIT = 5.0
ABANDONED_HOLDS = [0.0, 3.0]
BYTES_WORKLOADS = ("bytes", "bytes-cold", "bytes-warm")

FULL = dict(
    trivial_n=100_000,
    trivial_reps=7,
    cpu_n=400,
    cpu_reps=5,
    bytes_n=200,
    bytes_reps=5,
    startup_reps=15,
    abandoned_reps=3,
    ssh_trivial_reps=5,
    ssh_cpu_reps=3,
    ssh_bytes_reps=5,
    ssh_startup_reps=7,
    chunksize1_part=20,
)
QUICK = dict(
    trivial_n=20_000,
    trivial_reps=2,
    cpu_n=80,
    cpu_reps=2,
    bytes_n=40,
    bytes_reps=2,
    startup_reps=3,
    abandoned_reps=1,
    ssh_trivial_reps=2,
    ssh_cpu_reps=2,
    ssh_bytes_reps=2,
    ssh_startup_reps=2,
    chunksize1_part=10,
)

# the libraries, imported by load_libraries() (not at the top level: see above)
execpool: Any = None
loky: Any = None
mpire: Any = None


def load_libraries() -> list[str]:
    """Import execpool (installed, or the source tree next to this file), loky and mpire; notes on what is missing."""
    global execpool, loky, mpire
    execpool = import_execpool()
    notes = []
    try:
        import loky as lk

        loky = lk
    except ImportError:
        notes.append("loky is not installed (pip install -e '.[bench]'): its rows are skipped")
    try:
        import mpire as mp

        mpire = mp
    except ImportError:
        notes.append("mpire is not installed (pip install -e '.[bench]'): its rows are skipped")
    return notes


# -- the libraries ---------------------------------------------------------------------------


class Lib:
    """One pool implementation: start a pool, map, one task, stop (until its workers are gone)."""

    name = ""
    label = ""
    workers = WORKERS

    def start(self) -> Any:
        raise NotImplementedError

    def ready(self, pool: Any) -> None:
        """Wait until every worker is up (for libraries that start them in the background)."""

    # The multiprocessing.Pool API, which execpool.Pool shares; other libraries override these.
    def map(self, pool: Any, func: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return list(pool.map_async(func, items, chunksize).get(TIMEOUT))

    def first(self, pool: Any, func: Callable[[Any], Any], arg: Any) -> Any:
        return pool.apply_async(func, (arg,)).get(TIMEOUT)

    def stop(self, pool: Any) -> None:
        raise NotImplementedError

    def describe(self, pool: Any) -> str:
        """Something to say about a pool after the workloads (execpool: its worker stats)."""
        return ""


class ExecpoolLib(Lib):
    def __init__(self, name: str, label: str, specs: Any, workers: int) -> None:
        self.name = name
        self.label = label
        self.specs = specs
        self.workers = workers

    def start(self) -> Any:
        return execpool.Pool(self.specs)

    def ready(self, pool: Any) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            states = [s.state for s in pool.stats()]
            if states.count("ready") >= self.workers:
                return
            if "failed" in states or time.monotonic() > deadline:
                raise RuntimeError("%s: workers did not start: %r" % (self.name, pool.stats()))
            time.sleep(0.005)

    def stop(self, pool: Any) -> None:
        pool.close()
        pool.join(TIMEOUT)

    def describe(self, pool: Any) -> str:
        return "; ".join(
            "%s %s: %d tasks, busy %.2f s, idle %.2f s, sent %.1f MiB"
            % (s.id, s.host or "?", s.tasks, s.busy, s.idle, s.bytes_sent / MiB)
            for s in pool.stats()
        )


class MultiprocessingLib(Lib):
    def __init__(self, method: str) -> None:
        self.method = method
        self.name = "mp-" + method
        self.label = "multiprocessing.Pool (%s)" % method

    def start(self) -> Any:
        return multiprocessing.get_context(self.method).Pool(WORKERS)

    def stop(self, pool: Any) -> None:
        pool.close()
        pool.join()


class FuturesLib(Lib):
    """concurrent.futures.ProcessPoolExecutor or loky.ProcessPoolExecutor: map's default chunksize is 1."""

    def __init__(self, name: str, label: str, factory: Callable[[], Any]) -> None:
        self.name = name
        self.label = label
        self.factory = factory

    def start(self) -> Any:
        return self.factory()

    def map(self, pool: Any, func: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return list(pool.map(func, items, timeout=TIMEOUT, chunksize=chunksize or 1))

    def first(self, pool: Any, func: Callable[[Any], Any], arg: Any) -> Any:
        return pool.submit(func, arg).result(TIMEOUT)

    def stop(self, pool: Any) -> None:
        pool.shutdown(wait=True)


class MpireLib(Lib):
    """mpire.WorkerPool with keep_alive=True: without it every map() starts and ends the workers."""

    name = "mpire"
    label = "mpire.WorkerPool"

    def start(self) -> Any:
        return mpire.WorkerPool(n_jobs=WORKERS, keep_alive=True)

    def map(self, pool: Any, func: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return list(pool.map(func, items, chunk_size=chunksize))

    def first(self, pool: Any, func: Callable[[Any], Any], arg: Any) -> Any:
        return pool.apply(func, args=(arg,))

    def stop(self, pool: Any) -> None:
        pool.stop_and_join()


def local_libs() -> list[Lib]:
    import concurrent.futures

    libs: list[Lib] = [
        ExecpoolLib("execpool", "execpool.Pool", WORKERS, WORKERS),
        MultiprocessingLib("fork"),
        MultiprocessingLib("spawn"),
        FuturesLib(
            "cf",
            "concurrent.futures (%s)" % multiprocessing.get_start_method(),
            lambda: concurrent.futures.ProcessPoolExecutor(WORKERS),
        ),
    ]
    if loky is not None:
        libs.append(FuturesLib("loky", "loky.ProcessPoolExecutor", lambda: loky.ProcessPoolExecutor(WORKERS)))
    if mpire is not None:
        libs.append(MpireLib())
    return libs


# -- measuring -------------------------------------------------------------------------------


class Variant:
    """One timed way of running a workload: a library's map with a chunksize, or the serial loop."""

    def __init__(
        self,
        name: str,
        label: str,
        lib: Lib | None,
        chunksize: int | None = None,
        fraction: int = 1,
        *,
        fresh: bool = False,
        before: Callable[[Lib, Any], None] | None = None,
    ) -> None:
        self.name = name
        self.label = label
        self.lib = lib
        self.chunksize = chunksize
        self.fraction = fraction  # runs 1/fraction of the items; its time is multiplied by fraction
        self.fresh = fresh  # each run on a new pool (started and ready, untimed; stopped after, untimed)
        self.before = before  # run on the pool before each timed map (untimed)


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, exc: BaseException) -> None:
        text = "%s: %s: %s" % (where, type(exc).__name__, exc)
        self.items.append(text)
        print("FAILED " + text, file=sys.stderr, flush=True)


def start_pools(libs: list[Lib], warm: list[tuple[Callable[[Any], Any], list[Any]]], failures: Failures) -> dict:
    """Start one pool per library and warm it up with a few tasks of each workload's function (untimed).

    Returns name -> (pool, seconds from start until warmed up)."""
    t_all = time.perf_counter()
    pools: dict[str, tuple[Any, float]] = {}
    for lib in libs:
        t0 = time.perf_counter()
        try:
            pool = lib.start()
        except Exception as exc:
            failures.add("%s: start" % lib.label, exc)
            continue
        try:
            lib.ready(pool)
            for func, items in warm:
                lib.map(pool, func, items, 1)
        except Exception as exc:
            failures.add("%s: warm-up" % lib.label, exc)
            stop_quietly(lib, pool, failures)
            continue
        pools[lib.name] = (pool, time.perf_counter() - t0)
    print("  %-40s [%.1f s]" % ("pools started and warmed up", time.perf_counter() - t_all), flush=True)
    return pools


def stop_quietly(lib: Lib, pool: Any, failures: Failures) -> None:
    try:
        lib.stop(pool)
    except Exception as exc:
        failures.add("%s: stop" % lib.label, exc)


def run_map(
    variants: list[Variant],
    pools: dict[str, tuple[Any, float]],
    func: Callable[[Any], Any],
    items: list[Any],
    expected: list[Any],
    reps: int,
    failures: Failures,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time ``map(func, items)`` for every variant, ``reps`` times, in a rotating order.

    Returns wall-clock seconds and the master's CPU seconds (all its threads) per run."""

    def once(v: Variant, rep: int) -> tuple[float, float]:
        part = items[: len(items) // v.fraction]
        pool = None
        if v.lib is not None:
            if v.fresh:
                pool = v.lib.start()
                v.lib.ready(pool)
            else:
                pool = pools[v.lib.name][0]
            if v.before is not None:
                v.before(v.lib, pool)
        try:
            c0 = time.process_time()
            t0 = time.perf_counter()
            if v.lib is None:
                out = [func(x) for x in part]
            else:
                out = v.lib.map(pool, func, part, v.chunksize)
            t = time.perf_counter() - t0
            c = time.process_time() - c0
        finally:
            if v.fresh and v.lib is not None:
                v.lib.stop(pool)
        if out != expected[: len(part)]:
            raise AssertionError("wrong results (%d values, first %r)" % (len(out), out[:3]))
        return t * v.fraction, c * v.fraction

    def failed(v: Variant, rep: int, exc: Exception) -> None:
        failures.add("%s: %s" % (v.label, func.__name__), exc)

    ready = [v for v in variants if v.lib is None or v.lib.name in pools]
    runs = alternate(ready, reps, once, on_error=failed)
    times = {v.name: [t for t, _ in runs.get(v, [])] for v in variants}
    cpu = {v.name: [c for _, c in runs.get(v, [])] for v in variants}
    return times, cpu


def is_helper(cmdline: str) -> bool:
    """multiprocessing's and loky's resource trackers: started once, kept for the master's lifetime."""
    return "resource_tracker" in cmdline


#: Children of this process that are not pool workers: the test sshd's listener (its sessions, with
#: the remote workers in them, are below it and do count).
NOT_WORKERS: set[int] = set()


def is_worker(pid: int, cmdline: str) -> bool:
    """Whether a descendant of this process belongs to a pool: local workers, ssh clients, sshd sessions."""
    return not is_helper(cmdline) and pid not in NOT_WORKERS


def workers_left() -> dict[int, str]:
    return descendants(os.getpid(), is_worker)


def wait_gone_workers(seconds: float) -> dict[int, str]:
    return wait_gone(os.getpid(), seconds, is_worker, poll=0.05)


class Startup:
    """What bench_startup measured, per library name."""

    def __init__(self, libs: list[Lib]) -> None:
        self.first: dict[str, list[float]] = {lib.name: [] for lib in libs}  # create + first result
        self.full: dict[str, list[float]] = {lib.name: [] for lib in libs}  # ... + stop
        self.cpu_first: dict[str, list[float]] = {lib.name: [] for lib in libs}  # master CPU, same spans
        self.cpu_full: dict[str, list[float]] = {lib.name: [] for lib in libs}
        self.phases: dict[str, dict[str, list[float]]] = {
            lib.name: {"create": [], "first": [], "stop": []} for lib in libs
        }
        self.late: dict[str, list[str]] = {lib.name: [] for lib in libs}  # processes still there after stop()


def bench_startup(libs: list[Lib], reps: int, warmup: bool, failures: Failures) -> Startup:
    """Create + first result, and create + first result + stop, per library, ``reps`` times in a rotating order."""
    out = Startup(libs)

    def once(lib: Lib, record: bool) -> None:
        c0 = time.process_time()
        t0 = time.perf_counter()
        pool = lib.start()
        t1 = time.perf_counter()
        try:
            value = lib.first(pool, tasks.square, 3)
            t2 = time.perf_counter()
            c2 = time.process_time()
        finally:
            lib.stop(pool)
        t3 = time.perf_counter()
        c3 = time.process_time()
        if value != 9:
            raise AssertionError("wrong result %r" % (value,))
        left = workers_left()  # stop() should return once the workers are gone
        if left:
            states = {pid: process_state(pid) for pid in left}
            gone = not wait_gone_workers(10.0)
            if record:
                procs = ", ".join("pid %d [%s] %s" % (pid, states[pid], cmd[:40]) for pid, cmd in left.items())
                out.late[lib.name].append(
                    "%s; %s %.0f ms after stop() returned"
                    % (procs, "gone" if gone else "still there", 1000 * (time.perf_counter() - t3))
                )
        if record:
            out.first[lib.name].append(t2 - t0)
            out.full[lib.name].append(t3 - t0)
            out.cpu_first[lib.name].append(c2 - c0)
            out.cpu_full[lib.name].append(c3 - c0)
            for key, value in zip(("create", "first", "stop"), (t1 - t0, t2 - t1, t3 - t2), strict=True):
                out.phases[lib.name][key].append(value)

    def failed(lib: Lib, rep: int, exc: Exception) -> None:
        failures.add("%s: %s" % (lib.label, "start-up warm-up" if rep < 0 else "start-up"), exc)
        if rep >= 0:
            wait_gone_workers(10.0)

    # warmup: one untimed run each: page caches, lazy imports, the resource trackers' start
    alternate(libs, reps, lambda lib, rep: once(lib, rep >= 0), warmup=warmup, on_error=failed)
    return out


def calibrate(seconds: float) -> int:
    """The ``n`` for which ``spin(n)`` takes about ``seconds`` here (best of several runs)."""
    n = 10_000
    while True:
        t = min(_timed(tasks.spin, n) for _ in range(5))
        if t >= 0.002:
            break
        n *= 2
    n = max(1, int(n * seconds / t))
    t = min(_timed(tasks.spin, n) for _ in range(7))  # one more round at the final size
    return max(1, int(n * seconds / t))


def _timed(func: Callable[[Any], Any], arg: Any) -> float:
    t0 = time.perf_counter()
    func(arg)
    return time.perf_counter() - t0


# -- reporting -------------------------------------------------------------------------------


def scenario(
    title: str,
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    labels: dict[str, str],
    reference: str,
    target: tuple[str, float] | None = None,
    failed: set[str] | None = None,
) -> Scenario:
    """Rows of one workload: seconds per variant, shown in ms, with ratios to the reference row and
    the master's CPU time (median, ms)."""
    return Scenario(
        title,
        times,
        reference,
        {target[0]: Target("<=", target[1])} if target else {},
        scale=1000,
        labels=labels,
        failed=failed or set(),
        extra={"median": {name: fmt(1000 * statistics.median(vals)) for name, vals in cpu.items() if vals}},
    )


def print_table(scenarios: list[Scenario]) -> None:
    grouped_table(scenarios, 52, "time, ms", extra=[Column("median", 9, group="master\nCPU, ms")]).print(
        "ratio = variant time / reference time; best = min over the reps, median = median; 'met' is judged on the\n"
        "median ratio (and says so when the best ratio disagrees).  master CPU = CPU time of the benchmark process\n"
        "(all its threads: the pool's own threads included, the workers not) over the same span."
    )


# -- the two halves ------------------------------------------------------------------------


def execpool_counters(libs: list[Lib], pools: dict[str, tuple[Any, float]]) -> dict[str, tuple[int, float]]:
    """Tasks and busy seconds (measured by the workers) of each execpool pool so far."""
    out = {}
    for lib in libs:
        if isinstance(lib, ExecpoolLib) and lib.name in pools:
            stats = pools[lib.name][0].stats()
            out[lib.name] = (sum(s.tasks for s in stats), sum(s.busy for s in stats))
    return out


def run_workloads(
    prefix: str,
    libs: list[Lib],
    variants: dict[str, list[Variant]],
    pools: dict[str, tuple[Any, float]],
    data: dict[str, Any],
    reps: dict[str, int],
    ref: dict[str, str],
    targets: dict[str, tuple[str, float]],
    failures: Failures,
) -> tuple[list[Scenario], list[str]]:
    """Run workloads 1-3 (those in ``variants``) on started pools; one Scenario each, and notes."""
    scenarios: list[Scenario] = []
    notes: list[str] = []
    titles = {
        "trivial": "%strivial: %d x square(x), map" % (prefix, len(data["trivial"][0])),
        "cpu": "%scpu: %d tasks of %.1f ms, map" % (prefix, len(data["cpu"][0]), 1000 * data["cpu_task"]),
        "bytes": "%sbytes: %d distinct 1 MiB arguments, map" % (prefix, len(data["bytes"][0])),
        "bytes-cold": "%sbytes-cold: the same, each on a new pool" % prefix,
        "bytes-warm": "%sbytes-warm: the same, after 2000 tiny ones" % prefix,
    }
    funcs = {"trivial": tasks.square, "cpu": tasks.spin, "bytes": tasks.nbytes}
    funcs["bytes-cold"] = funcs["bytes-warm"] = tasks.nbytes
    for key, vs in variants.items():
        items, expected = data[key.split("-")[0]]
        before = execpool_counters(libs, pools)
        n_failed = len(failures.items)
        t0 = time.perf_counter()
        times, cpu = run_map(vs, pools, funcs[key], items, expected, reps[key], failures)
        print("  %-40s [%.1f s]" % (titles[key], time.perf_counter() - t0), flush=True)
        after = execpool_counters(libs, pools)
        labels = {v.name: v.label for v in vs}
        failed = {v.name for v in vs if not times[v.name]} if len(failures.items) > n_failed else set()
        if key == "cpu":
            if "serial" in times:
                times = {"ideal": [t / WORKERS for t in times["serial"]], **times}
                labels["ideal"] = "ideal: serial / %d" % WORKERS
            per_task = [
                "%s %.2f ms" % (name, 1000 * (after[name][1] - b[1]) / (after[name][0] - b[0]))
                for name, b in before.items()
                if name in after and after[name][0] > b[0]
            ]
            if per_task:
                notes.append(
                    "%scpu: time per task measured inside the execpool workers: %s (the same call in the master, "
                    "median of 9 before the pools started: %.2f ms)"
                    % (prefix, ", ".join(per_task), 1000 * data["cpu_task"])
                )
        scenarios.append(scenario(titles[key], times, cpu, labels, ref[key], targets.get(key), failed))
    return scenarios, notes


def _tiny_bytes_first(lib: Lib, pool: Any) -> None:
    """bytes-warm's untimed first step: the same function over tiny arguments, default chunking."""
    lib.map(pool, tasks.nbytes, [b"x"] * 2000, None)


def bench_abandoned(reps: int, notes: list[str]) -> list[str]:
    """The abandoned endless imap (see ``_pool_abandoned``): notes per library and hold; summary lines."""
    import _pool_abandoned

    t0 = time.perf_counter()
    src = str(Path(execpool.__file__).resolve().parent.parent)
    runs = _pool_abandoned.run(["execpool", "fork"], ABANDONED_HOLDS, reps, src)
    print("  %-40s [%.1f s]" % ("abandoned imap (child processes)", time.perf_counter() - t0), flush=True)
    labels = {"execpool": "execpool.Pool(2)", "fork": "multiprocessing.Pool(2) (fork)"}
    for (kind, hold), rs in runs.items():
        notes.append(
            "abandoned imap, %s, leaving %s: %s"
            % (labels[kind], "at once" if hold == 0 else "%.0f s after the break" % hold, _pool_abandoned.describe(rs))
        )
    notes.append(
        "abandoned imap: `for x in pool.imap(abs, itertools.count()): break` in `with Pool(2)`, then the block is "
        "left; each run a new child master under RLIMIT_AS %d GiB and a %.0f s timeout; RSS sampled every 2 ms "
        "from when the pool is up (after a 64-task map) until the block was left"
        % (_pool_abandoned.CAP >> 30, _pool_abandoned.CHILD_TIMEOUT)
    )
    ours = [r for (kind, _), rs in runs.items() if kind == "execpool" for r in rs]
    met = _pool_abandoned.verdict(ours, ABANDONED_RSS, ABANDONED_EXIT)
    return [
        "abandoned imap, execpool.Pool: peak RSS above start < %d MiB and leaving < %.0f s in every run: %s"
        % (ABANDONED_RSS >> 20, ABANDONED_EXIT, "met" if met else "NOT met")
    ]


def startup_scenarios(
    prefix: str, libs: list[Lib], st: Startup, reference: str, target: tuple[str, float] | None
) -> tuple[list[Scenario], list[str]]:
    labels = {lib.name: lib.label for lib in libs}
    scenarios = [
        scenario(prefix + "start-up: create + first result", st.first, st.cpu_first, labels, reference, target),
        scenario(prefix + "start-up + stop: create + first result + stop", st.full, st.cpu_full, labels, reference),
    ]
    notes = []
    width = max(len(lib.label) for lib in libs)
    for lib in libs:
        ph = st.phases[lib.name]
        if ph["create"]:
            notes.append(
                "%sstart-up phases, median ms, %-*s: create %.1f, first result %.1f, stop %.1f"
                % (prefix, width, lib.label, *(1000 * statistics.median(ph[k]) for k in ("create", "first", "stop")))
            )
        for text in st.late[lib.name]:
            notes.append("%s%s: worker processes left when stop() returned: %s" % (prefix, lib.label, text))
    return scenarios, notes


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "few repetitions and small sizes: a smoke test", WORKLOADS)
    parser.add_argument("--no-ssh", action="store_true", help="local pools only (no sshd)")
    parser.add_argument(
        "--python",
        default=default_remote_python(),
        help="the interpreter of the ssh workers (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    only = chosen(parser, args.only, WORKLOADS, "workload")
    p = QUICK if args.quick else FULL

    t_start = time.perf_counter()
    notes = load_libraries()
    fields = [("execpool", execpool_description(os.path.dirname(execpool.__file__)))]
    for mod in (loky, mpire):
        if mod is not None:
            fields.append((mod.__name__, "%s (%s)" % (package_version(mod.__name__), os.path.dirname(mod.__file__))))
    fields.append(
        (
            "stdlib",
            "multiprocessing, concurrent.futures; default start method here: %s" % multiprocessing.get_start_method(),
        )
    )
    print_header("bench_pool", fields, quick=args.quick)

    failures = Failures()
    scenarios: list[Scenario] = []
    summary_extra: list[str] = []
    workloads = [w for w in ("trivial", "cpu", "bytes") if w in only]

    # the workloads' data, made up front (untimed)
    n_spin = calibrate(CPU_TASK_SECONDS)
    spin_result = tasks.spin(n_spin)
    task_time = statistics.median(_timed(tasks.spin, n_spin) for _ in range(9))
    trivial_items = list(range(p["trivial_n"]))
    any_bytes = any(w in only for w in ("bytes", "bytes-cold", "bytes-warm"))
    blocks = [os.urandom(MiB) for _ in range(p["bytes_n"] if any_bytes else 4)]
    data: dict[str, Any] = {
        "trivial": (trivial_items, [x * x for x in trivial_items]),
        "cpu": ([n_spin] * p["cpu_n"], [spin_result] * p["cpu_n"]),
        "cpu_task": task_time,
        "bytes": (blocks, [MiB] * len(blocks)),
    }
    notes.append(
        "cpu task: spin(%d), calibrated to %.1f ms; median of 9 serial runs in the master %.2f ms"
        % (n_spin, 1000 * CPU_TASK_SECONDS, 1000 * task_time)
    )
    warm = [(tasks.square, list(range(64))), (tasks.spin, [n_spin // 50] * 8), (tasks.nbytes, blocks[:4])]

    # -- local ---------------------------------------------------------------------------------
    libs = local_libs()
    by_name = {lib.name: lib for lib in libs}
    mp_chunk = -(-p["trivial_n"] // (4 * WORKERS))  # multiprocessing.Pool.map's automatic chunksize
    part = p["chunksize1_part"]
    print("== local: %d workers each ==" % WORKERS, flush=True)
    if workloads or "bytes-cold" in only or "bytes-warm" in only:
        ep = by_name["execpool"]
        trivial_vs = [
            Variant("execpool", "execpool.Pool (automatic chunks)", ep),
            Variant("execpool-mp", "execpool.Pool, chunksize=%d (as mp)" % mp_chunk, ep, mp_chunk),
            Variant("mp-fork", "multiprocessing.Pool (fork), default", by_name["mp-fork"]),
            Variant("mp-spawn", "multiprocessing.Pool (spawn), default", by_name["mp-spawn"]),
        ]
        for name in ("cf", "loky"):
            if name in by_name:
                lib = by_name[name]
                trivial_vs.append(Variant(name + "-1", lib.label + ", chunksize=1 (default) *", lib, 1, part))
                trivial_vs.append(Variant(name, lib.label + ", chunksize=%d" % mp_chunk, lib, mp_chunk))
        if "mpire" in by_name:
            trivial_vs.append(Variant("mpire", "mpire.WorkerPool, default", by_name["mpire"]))
        plain = [Variant(lib.name, lib.label, lib) for lib in libs]
        variants: dict[str, list[Variant]] = {}
        if "trivial" in only:
            variants["trivial"] = trivial_vs
        if "cpu" in only:
            variants["cpu"] = [Variant("serial", "serial, in the master", None), *plain]
        if "bytes" in only:
            variants["bytes"] = plain
        pair = [ep, by_name["mp-fork"]]
        if "bytes-cold" in only:
            variants["bytes-cold"] = [Variant(lib.name, lib.label + ", new pool", lib, fresh=True) for lib in pair]
        if "bytes-warm" in only:
            variants["bytes-warm"] = [
                Variant(lib.name, lib.label + ", after tiny ones", lib, before=_tiny_bytes_first) for lib in pair
            ]
        pools = start_pools(libs, warm, failures)
        try:
            scs, more = run_workloads(
                "",
                libs,
                variants,
                pools,
                data,
                {
                    "trivial": p["trivial_reps"],
                    "cpu": p["cpu_reps"],
                    "bytes": p["bytes_reps"],
                    "bytes-cold": p["bytes_reps"],
                    "bytes-warm": p["bytes_reps"],
                },
                {"trivial": "mp-fork", "cpu": "ideal", **dict.fromkeys(BYTES_WORKLOADS, "mp-fork")},
                {
                    "trivial": ("execpool", 1.0),
                    "cpu": ("execpool", 1.05),
                    "bytes": ("execpool", 1.0),
                    "bytes-cold": ("execpool", 1.0),
                    "bytes-warm": ("execpool", 1.0),
                },
                failures,
            )
            scenarios += scs
            notes += more
            notes.append(
                "workloads: one pool per library, started once and warmed up (%s, chunksize 1; untimed); only "
                "map() is timed.  Start until warmed up, s: %s"
                % (
                    ", ".join("%d x %s" % (len(items), f.__name__) for f, items in warm),
                    ", ".join("%s %.2f" % (name, t) for name, (_, t) in pools.items()),
                )
            )
            if "execpool" in pools:
                notes.append("execpool.Pool workers after the workloads: " + ep.describe(pools["execpool"][0]))
        finally:
            for lib in libs:
                if lib.name in pools:
                    stop_quietly(lib, pools[lib.name][0], failures)
        if "trivial" in variants:
            notes.append(
                "trivial: * = chunksize=1 rows run 1/%d of the tasks (%d) and show their time x %d (the full %d "
                "take 20-30 s per run here); chunksize=%d is multiprocessing.Pool.map's automatic size for %d "
                "tasks (len / (4 x workers)); mpire's default: len / (64 x workers)"
                % (part, p["trivial_n"] // part, part, p["trivial_n"], mp_chunk, p["trivial_n"])
            )
        if "cpu" in variants:
            notes.append(
                "cpu: serial = the same %d calls in a loop in the master, in the same rotation; ideal = serial / %d"
                % (p["cpu_n"], WORKERS)
            )
        if "bytes" in variants:
            notes.append(
                "bytes: %d x os.urandom(1 MiB), made before the pools start; nbytes() returns len(data); default "
                "chunking (multiprocessing's: %d MiB per chunk)" % (p["bytes_n"], -(-p["bytes_n"] // (4 * WORKERS)))
            )
        if "bytes-cold" in variants or "bytes-warm" in variants:
            notes.append(
                "bytes-cold: each run starts a new pool and waits until its workers are up (untimed), times the "
                "map, stops the pool (untimed); bytes-warm: each run first maps nbytes over 2000 x b'x' on the "
                "warmed pool (untimed, default chunking), then the timed 1 MiB map of the same function"
            )
    if "abandoned" in only:
        summary_extra += bench_abandoned(p["abandoned_reps"], notes)
    if "startup" in only:
        t0 = time.perf_counter()
        st = bench_startup(libs, p["startup_reps"], not args.quick, failures)
        print("  %-40s [%.1f s]" % ("start-up", time.perf_counter() - t0), flush=True)
        scs, more = startup_scenarios("", libs, st, "mp-spawn", ("execpool", 1.0))
        scenarios += scs
        notes += more
        notes.append(
            "start-up: %d runs per library%s, each a new pool; create = the constructor, first = one square(3) "
            "(apply_async / submit / apply) until its result is back, stop = close() + join() / shutdown(wait=True) "
            "/ stop_and_join(), which return once the workers have exited"
            % (p["startup_reps"], "" if args.quick else ", after one untimed warm-up run each")
        )
    notes.append(
        "loky: a new loky.ProcessPoolExecutor(2) per pool (not get_reusable_executor, which hands back a running "
        "one); mpire: WorkerPool(n_jobs=2, keep_alive=True) (without keep_alive every map() starts and stops its "
        "workers); concurrent.futures and mpire use the default start method (%s)" % multiprocessing.get_start_method()
    )

    # -- ssh -----------------------------------------------------------------------------------
    left_remote: dict[int, str] | None = None
    reason = "--no-ssh given" if args.no_ssh else sshd_missing()
    print()
    if reason is not None:
        print("== over ssh: skipped (%s) ==" % reason)
        notes.append("ssh: skipped (%s)" % reason)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="bench_pool-", ignore_cleanup_errors=True) as tmp,
            running_sshd(Path(tmp) / "sshd") as sshd,
        ):
            server = sshd.server
            if sshd.pid is not None:
                NOT_WORKERS.add(sshd.pid)
            extra = "//python=%s" % args.python
            hosts = [server.spec(h, extra) for h in ("host-a", "host-b", "host-c")]
            pair = server.spec("host-a", extra + "//workers=2")
            ssh_libs: list[Lib] = [
                ExecpoolLib("execpool", "execpool.Pool(2), local", WORKERS, WORKERS),
                ExecpoolLib("ssh-3", "execpool ssh: host-a, host-b, host-c", hosts, 3),
                ExecpoolLib("ssh-a2", "execpool ssh: host-a//workers=2", [pair], 2),
            ]
            print(
                "== over ssh: %s on %s, port %d (host-a, host-b, host-c), same machine; remote python %s =="
                % (
                    server.proc.args[0] if server.proc else "sshd",
                    ", ".join(server.hosts[h] for h in ("host-a", "host-b", "host-c")),
                    server.port,
                    args.python,
                )
            )
            config = str(server.ssh_config)
            print("spec   : [%s]" % ", ".join(hosts).replace(config, "CONFIG"))
            print("spec   : [%s]" % pair.replace(config, "CONFIG"))
            print("CONFIG : %s" % config, flush=True)
            if workloads:
                plain = [Variant(lib.name, lib.label, lib) for lib in ssh_libs]
                pools = start_pools(ssh_libs, warm, failures)
                try:
                    scs, more = run_workloads(
                        "ssh ",
                        ssh_libs,
                        dict.fromkeys(workloads, plain),
                        pools,
                        data,
                        {"trivial": p["ssh_trivial_reps"], "cpu": p["ssh_cpu_reps"], "bytes": p["ssh_bytes_reps"]},
                        dict.fromkeys(workloads, "execpool"),
                        {},
                        failures,
                    )
                    notes += more
                    notes.append(
                        "ssh workloads: pools started once and warmed up as the local ones; start until warmed "
                        "up, s: %s" % ", ".join("%s %.2f" % (name, t) for name, (_, t) in pools.items())
                    )
                    for lib in ssh_libs[1:]:
                        if lib.name in pools:
                            notes.append("%s workers: %s" % (lib.label, lib.describe(pools[lib.name][0])))
                    local_cpu = next((sc for sc in scenarios if sc.title.startswith("cpu")), None)
                    ssh_cpu = next((sc for sc in scs if sc.title.startswith("ssh cpu")), None)
                    ideal = local_cpu.figure("ideal") if local_cpu is not None else None
                    if ssh_cpu is not None and ideal is not None:
                        notes.append(
                            "ssh cpu, median ratio to the ideal of the local cpu rows (%s ms): %s"
                            % (
                                fmt(ideal.median),
                                ", ".join(
                                    "%s %.2fx" % (name, 1000 * statistics.median(vals) / ideal.median)
                                    for name, vals in ssh_cpu.values.items()
                                    if vals
                                ),
                            )
                        )
                    scenarios += scs
                finally:
                    for lib in ssh_libs:
                        if lib.name in pools:
                            stop_quietly(lib, pools[lib.name][0], failures)
            if "startup" in only:
                t0 = time.perf_counter()
                st = bench_startup(ssh_libs, p["ssh_startup_reps"], not args.quick, failures)
                print("  %-40s [%.1f s]" % ("start-up", time.perf_counter() - t0), flush=True)
                scs, more = startup_scenarios("ssh ", ssh_libs, st, "execpool", None)
                scenarios += scs
                notes += more
                notes.append(
                    "ssh start-up: %d runs each%s; every run logs in anew (one ssh connection per host)"
                    % (p["ssh_startup_reps"], "" if args.quick else ", after one untimed warm-up run each")
                )
        left_remote = sshd.left

    # -- the table -----------------------------------------------------------------------------
    print()
    print_table(scenarios)
    rev = source_revision(os.path.dirname(execpool.__file__))
    notes.append("RESULTS.md row: %s" % results_row("quick" if args.quick else "full", rev, scenarios))
    summary = [sc.summary(name) for sc in scenarios for name in sc.targets]
    summary += summary_extra
    summary += ["FAILED: " + f for f in failures.items]
    left_local = wait_gone_workers(2.0)
    helpers = [pid for pid, cmd in descendants(os.getpid()).items() if is_helper(cmd)]
    if helpers:
        summary.append(
            "(not counted: %d resource tracker(s) of multiprocessing / loky, kept until this process ends)"
            % len(helpers)
        )
    left = print_footer(
        notes,
        {"local child processes": left_local, "sshd sessions or workers": left_remote},
        t_start,
        summary=summary,
    )
    return 1 if left or failures.items else 0


if __name__ == "__main__":
    sys.exit(main())
