"""Leak and soak tests with real processes: gateways, groups, pools and executors started and
ended over and over must leave nothing behind, and long runs must not grow.

Each workload runs in a master process of its own (``run_master_script``), so that pytest's
threads and files do not blur the figures.  The master counts its own resources with the
``HARNESS`` below: its child processes (every process whose parent chain leads to it, zombies
included), its open file descriptors, its threads (``threading.active_count()`` and the kernel's
tasks) and the execpool objects still alive (gateways, channels, groups, schedulers).  It counts
once after a warm-up cycle, so that whatever is made lazily once (caches, the default group)
exists already, then runs N cycles and counts again, and prints the figures as JSON.

*Settling.*  Some endings are asynchronous by design: a pool's scheduler thread returns just
after ``join()`` wakes up, a retired worker is exited by a daemon thread.  Before counting, the
master waits (up to ``SETTLE`` seconds, a hang guard) until every count is back at or below its
warm-up value; what is still there then is a leak.  The warm-up count itself is taken once no
child process is left and two samples 0.1 s apart agree.

*The garbage collector.*  Counting starts with ``gc.collect()``: what only the collector can
free is not lost for good.  Whether ``exit()``/``close()``/``terminate()`` release the file
descriptors by themselves, without the collector, is a test of its own
(``test_cycles_release_file_descriptors_without_the_garbage_collector``).

Soaks (``--long`` only): a million small tasks through one pool, and a mixed workload for
``EXECPOOL_SOAK_SECONDS`` (default 600), with the resident memory (VmRSS) of the master and of
the workers at start and end.  Every test prints its figures: ``pytest tests/test_leaks.py --long
-rA`` shows them, and with EXECPOOL_LEAK_REPORT=FILE they are appended to FILE too (``-s`` shows
nothing of what xdist workers print).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from _helpers import run_master_script
from sshd import SshServer

#: Seconds the soak with mixed traffic runs under --long.
SOAK_SECONDS = float(os.environ.get("EXECPOOL_SOAK_SECONDS", "600"))
#: Counts compared before and after: every one must be back at its warm-up value.
KEYS = ("children", "fds", "threads", "tasks", "gateways", "channels", "groups", "schedulers")
#: What the operating system holds: the counts that do not depend on Python's object graph.
OS_KEYS = ("children", "fds", "threads", "tasks")

# Task functions, written next to the master script: the master imports them by name, the
# workers import them from the master's directory or are served them by the pool.
TASKS = """
import os, time, zlib

def square(x):
    return x * x

def crc(blob):
    return zlib.crc32(blob)

def fail_on_sevens(x):
    if x % 7 == 0:
        raise ValueError("task %d fails on purpose" % x)
    return x * x

def nap(x):
    time.sleep(0.005)
    return x * x

def pid(x):
    return os.getpid()
"""

HARNESS = r'''
import gc, json, os, sys, threading, time
import execpool
from execpool._shipped.channel import Channel
from execpool._pool import Scheduler

import leaktasks

COLLECT = True  # gc.collect() before counting
SETTLE = 15.0  # seconds the counts may take to come back down (a hang guard)
KEYS = ("children", "fds", "threads", "tasks", "gateways", "channels", "groups", "schedulers")
EXTRA = {}  # name -> function: more counts (the ssh test counts the server's processes)
CYCLES = int(os.environ.get("LEAK_CYCLES", "0"))  # how many cycles the test asks for


def process_table():
    """pid -> (ppid, state, command line) of every process on the machine."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[0], cmd)
    return table


def descendants(root, table=None):
    """[pid, state, command line] of every process whose parent chain leads to ``root``."""
    table = process_table() if table is None else table
    below = {}
    for pid, (ppid, _, _) in table.items():
        below.setdefault(ppid, []).append(pid)
    out, todo = [], list(below.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append([pid, table[pid][1], table[pid][2][:100]])
        todo.extend(below.get(pid, ()))
    return sorted(out)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait(predicate, timeout=60.0):
    """Poll ``predicate`` until it is true or ``timeout`` (a hang guard) passes."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def ready(pool, n):
    """Wait until ``n`` workers of ``pool`` are ready (a map may finish before every worker is up)."""
    return wait(lambda: sum(s.state == "ready" for s in pool.stats()) == n)


def rss_kib(pid):
    """Resident memory of ``pid`` in KiB (VmRSS), None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def counts():
    if COLLECT:
        gc.collect()
    kids = descendants(os.getpid())
    c = {
        "children": len(kids),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "tasks": len(os.listdir("/proc/self/task")),
        "gateways": 0,
        "channels": 0,
        "groups": 0,
        "schedulers": 0,
    }
    kinds = {execpool.Gateway: "gateways", Channel: "channels", execpool.Group: "groups", Scheduler: "schedulers"}
    for o in gc.get_objects():
        k = kinds.get(type(o))
        if k is not None:
            c[k] += 1
    for name, f in EXTRA.items():
        c[name] = f()
    c["processes"] = kids
    c["thread_names"] = sorted(t.name for t in threading.enumerate())
    return c


def settle(limit=None, children=0, timeout=None):
    """The counts once asynchronous endings are over.

    With ``limit``: as soon as no count is above it.  Without: once ``children`` child processes
    are left and two samples 0.1 s apart agree.  After ``timeout`` (default SETTLE): as they are.
    """
    keys = list(KEYS) + list(EXTRA)
    deadline = time.monotonic() + (SETTLE if timeout is None else timeout)
    prev = None
    while True:
        now = counts()
        if limit is not None:
            if all(now[k] <= limit[k] for k in keys):
                return now
        elif now["children"] == children and prev is not None and all(now[k] == prev[k] for k in keys):
            return now
        if time.monotonic() > deadline:
            return now
        prev = now
        time.sleep(0.1)


def report(**figures):
    print("RESULT " + json.dumps(figures), flush=True)


def measure_cycles(cycle, n, more=dict):
    """Warm up with one cycle, count, run ``n`` cycles, count again once settled; report
    (with the figures ``more()`` returns then)."""
    pre = counts()
    cycle()
    before = settle()
    t0 = time.monotonic()
    for _ in range(n):
        cycle()
    seconds = time.monotonic() - t0
    after = settle(before)
    report(cycles=n, seconds=round(seconds, 2), pre=pre, before=before, after=after, **more())
'''


def figure(text: str) -> None:
    """Print ``text`` (shown by ``-s`` or ``-rA``), and append it to the file named by
    EXECPOOL_LEAK_REPORT if set: with ``-n 2``, ``-s`` shows nothing of what the xdist workers print."""
    print(text)
    path = os.environ.get("EXECPOOL_LEAK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def run_measured(
    source: str, tmp_path: Path, cycles: int = 0, env: dict[str, str] | None = None, timeout: float = 120
) -> Any:
    """Run ``source`` (after the harness, with ``CYCLES`` set to ``cycles``) in a master process of
    its own; return what it reported."""
    (tmp_path / "leaktasks.py").write_text(textwrap.dedent(TASKS))
    env = {**(env or {}), "LEAK_CYCLES": str(cycles)}
    proc = run_master_script(HARNESS + textwrap.dedent(source), tmp_path, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:  # not an AssertionError: an xfail for a leak must not swallow it
        pytest.fail("master failed (%s):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    result = json.loads(lines[-1][len("RESULT ") :])
    result["stderr"] = proc.stderr
    return result


def grown(result: Any, keys: tuple[str, ...] | list[str] = KEYS) -> dict[str, tuple[int, int]]:
    """The counts that are higher after the cycles than after the warm-up: (before, after)."""
    before, after = result["before"], result["after"]
    return {k: (before[k], after[k]) for k in keys if after[k] > before[k]}


def brief(c: dict[str, Any], keys: tuple[str, ...] | list[str] = KEYS) -> str:
    return " ".join("%s=%s" % (k, c[k]) for k in keys)


def show(what: str, result: Any, keys: tuple[str, ...] | list[str] = KEYS, more: str = "") -> None:
    figure(
        "\n%s: %d cycles in %.1f s\n  before: %s\n  after:  %s%s"
        % (what, result["cycles"], result["seconds"], brief(result["before"], keys), brief(result["after"], keys), more)
    )


def assert_quiet(result: Any) -> None:
    """Nothing went wrong out of sight: no traceback, no error from a thread, no failed worker start."""
    for sign in ("Traceback", "Exception ignored", "execpool:"):
        assert sign not in result["stderr"], result["stderr"]


def leftovers(result: Any) -> str:
    after = result["after"]
    return "processes left: %s\nthreads: %s" % (after["processes"], after["thread_names"])


# -- the measurement itself ---------------------------------------------------------------------


def test_the_measurement_sees_a_leaked_process_fd_thread_and_gateway(tmp_path: Path) -> None:
    """A workload that leaks on purpose (a child process, a pipe, a thread and a running gateway
    per cycle) is reported as grown by exactly that much: the counts can fail."""
    result = run_measured(
        """
        import subprocess
        SETTLE = 1.0
        kept = []
        stop = threading.Event()

        def cycle():
            kept.append(subprocess.Popen(["sleep", "60"]))
            kept.append(os.pipe())
            threading.Thread(target=stop.wait, daemon=True).start()
            kept.append(execpool.Group(["popen"]))  # started, never ended

        measure_cycles(cycle, 3)
        stop.set()
        for k in kept:
            if isinstance(k, subprocess.Popen):
                k.kill()
                k.wait()
            elif isinstance(k, execpool.Group):
                k.terminate(5)
        """,
        tmp_path,
    )
    g = grown(result)
    assert {k: a - b for k, (b, a) in g.items()} == {
        "children": 9,  # a sleep, a worker and its process-group guard each
        "fds": 3 * 2 + 3 * 3,  # a pipe each; a worker's stdin, stdout and stderr each
        "threads": 3 + 3,  # the leaked thread and a worker's reader each (one stderr pump serves all)
        "tasks": 3 + 3,
        "gateways": 3,
        "groups": 3,
    }, g


# -- 1. gateways -----------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_gateway_cycles_leave_no_process_fd_or_thread(tmp_path: Path, long_run: bool) -> None:
    """``makegateway()``, one ``remote_exec`` round trip, ``exit()``: 30 times (200 with --long),
    and no worker process, file descriptor, thread or execpool object is left."""
    n = 200 if long_run else 30
    result = run_measured(
        """
        def cycle():
            gw = execpool.makegateway()
            ch = gw.remote_exec("channel.send(channel.receive() * 2)")
            ch.send(21)
            assert ch.receive(30) == 42
            gw.exit()

        measure_cycles(cycle, CYCLES)
        """,
        tmp_path,
        cycles=n,
        timeout=500,
    )
    show("gateway cycles (makegateway / remote_exec round trip / exit)", result)
    assert not grown(result), leftovers(result)
    assert_quiet(result)


# -- 2. groups -------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_group_cycles_with_terminate_leave_no_process_fd_or_thread(tmp_path: Path, long_run: bool) -> None:
    """A group of two gateways, a ``remote_exec`` on both, ``terminate()``: 15 times (100 with
    --long), and nothing is left."""
    n = 100 if long_run else 15
    result = run_measured(
        """
        def cycle():
            group = execpool.Group(["popen", "popen"])
            mc = group.remote_exec("channel.send(channel.receive() + 1)")
            mc.send_each(1)
            assert mc.receive_each() == [2, 2]
            group.terminate(10)

        measure_cycles(cycle, CYCLES)
        """,
        tmp_path,
        cycles=n,
        timeout=500,
    )
    show("group cycles (2 gateways / remote_exec on both / terminate)", result)
    assert not grown(result), leftovers(result)
    assert_quiet(result)


# -- 3. pools and executors ------------------------------------------------------------------------

POOL_CYCLES = {
    "close-join": """
        def cycle():
            pool = execpool.Pool(2)
            assert pool.map(leaktasks.square, range(100)) == [x * x for x in range(100)]
            pool.close()
            pool.join(60)
        """,
    # terminate() with work in flight: a map done, another one running
    "terminate": """
        def cycle():
            pool = execpool.Pool(2)
            assert pool.map(leaktasks.square, range(100)) == [x * x for x in range(100)]
            pending = pool.map_async(leaktasks.nap, range(100))
            pool.terminate()
            try:
                pending.get(60)
            except execpool.PoolTerminated:
                pass
        """,
    "executor": """
        def cycle():
            ex = execpool.Executor(2)
            futures = [ex.submit(leaktasks.square, x) for x in range(100)]
            assert [f.result(60) for f in futures] == [x * x for x in range(100)]
            ex.shutdown()
        """,
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", list(POOL_CYCLES))
def test_pool_cycles_leave_no_process_fd_or_thread(tmp_path: Path, long_run: bool, how: str) -> None:
    """``Pool(2)`` with a map of 100 tasks, ended by ``close()`` + ``join()`` or by ``terminate()``
    with a second map in flight, and ``Executor(2)`` with 100 submits ended by ``shutdown()``: 8
    times each (50 with --long), and nothing is left."""
    n = 50 if long_run else 8
    result = run_measured(
        textwrap.dedent(POOL_CYCLES[how]) + "\nmeasure_cycles(cycle, CYCLES)\n", tmp_path, cycles=n, timeout=500
    )
    show("pool cycles (%s; 2 workers, 100 tasks)" % how, result)
    assert not grown(result), leftovers(result)
    assert_quiet(result)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "how",
    [
        "gateway",
        "group",
        "close-join",
        "terminate",
        "executor",
    ],
)
def test_cycles_release_file_descriptors_without_the_garbage_collector(tmp_path: Path, how: str) -> None:
    """``exit()``, ``terminate()``, ``close()`` + ``join()`` and ``shutdown()`` release the OS's
    resources themselves: with the cyclic garbage collector off, nothing the OS holds grows."""
    cycles = dict(POOL_CYCLES)
    cycles["gateway"] = """
        def cycle():
            gw = execpool.makegateway()
            gw.remote_exec("channel.send(1)").receive(30)
            gw.exit()
        """
    cycles["group"] = """
        def cycle():
            group = execpool.Group(["popen", "popen"])
            assert group.remote_exec("channel.send(1)").receive_each() == [1, 1]
            group.terminate(10)
        """
    result = run_measured(
        "gc.disable()\nCOLLECT = False\nSETTLE = 3.0\n"
        + textwrap.dedent(cycles[how])
        + "\nmeasure_cycles(cycle, CYCLES)\n",
        tmp_path,
        cycles=5,
    )
    show("%s cycles without the garbage collector" % how, result, OS_KEYS)
    assert not grown(result, OS_KEYS), leftovers(result)


@pytest.mark.timeout(600)
def test_a_long_lived_pool_keeps_nothing_of_its_dead_workers(tmp_path: Path, long_run: bool) -> None:
    """A worker killed with SIGKILL and replaced, 5 times (30 with --long), in one pool: the pool
    ends up with what it had (two workers, their pipes and threads), not one more file or
    gateway (a dead worker's gateway used to stay in ``pool.group`` with its pipes open)."""
    n = 30 if long_run else 5
    result = run_measured(
        """
        import signal
        SETTLE = 5.0
        pool = execpool.Pool(2)

        def cycle():
            assert ready(pool, 2)
            gw = next(gw for gw in pool.group if gw.alive)
            os.kill(gw.remote_info().pid, signal.SIGKILL)
            assert wait(lambda: not gw.alive)  # seen by its gateway: the next cycle picks another
            assert pool.map(leaktasks.square, range(200)) == [x * x for x in range(200)]
            assert ready(pool, 2)

        pool.map(leaktasks.square, range(1000))
        pre = counts()
        cycle()
        before = settle(children=2)
        t0 = time.monotonic()
        for _ in range(CYCLES):
            cycle()
        seconds = time.monotonic() - t0
        after = settle(before)
        report(cycles=CYCLES, seconds=round(seconds, 2), pre=pre, before=before, after=after, group=len(pool.group))
        pool.close()
        pool.join(60)
        """,
        tmp_path,
        cycles=n,
        timeout=500,
    )
    more = "\n  gateways in pool.group at the end: %d" % result["group"]
    show("worker kills in one pool (kill -9, replacement, map of 200)", result, more=more)
    assert not grown(result), leftovers(result)
    assert_quiet(result)
    assert result["group"] == 2


# -- 4. pools over ssh -----------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["openssh", "paramiko"])
def test_pool_cycles_over_ssh_leave_nothing_here_or_on_the_host(
    tmp_path: Path, long_run: bool, sshd_server: SshServer, backend: str
) -> None:
    """Pools of two workers on an ssh host (one login, the workers started ``via=`` it): no ssh
    client, thread or fd left here, and on the host (this machine) no process left that came
    through the sshd (session processes, worker interpreters), nor any of the pools' worker pids."""
    n = 10 if long_run else 2
    assert sshd_server.proc is not None
    spec = sshd_server.spec("host-a", "//workers=2//sshbackend=%s" % backend)
    result = run_measured(
        """
        SSHD = int(os.environ["LEAK_SSHD_PID"])
        PORT = os.environ["LEAK_SSHD_PORT"]
        SPEC = os.environ["LEAK_SPEC"]
        BOOTSTRAP = "-c import os,sys"  # how a worker interpreter's command line starts
        remote_pids = set()
        seen_running = []


        def remote():
            # What runs through the test sshd: its descendants, and every process whose environment has
            # an SSH_CONNECTION to its port (a process whose parent ended is no descendant any more).
            table = process_table()
            found = {p[0]: p[2] for p in descendants(SSHD, table)}
            for pid, (_, state, cmd) in table.items():
                try:
                    with open("/proc/%d/environ" % pid, "rb") as f:
                        env = f.read().split(b"\\0")
                except OSError:
                    continue
                if any(v.startswith(b"SSH_CONNECTION=") and v.split()[-1] == PORT.encode() for v in env):
                    found[pid] = cmd
            return found


        EXTRA["remote_processes"] = lambda: len(remote())
        EXTRA["remote_workers"] = lambda: sum(BOOTSTRAP in cmd for cmd in remote().values())

        def cycle():
            pool = execpool.Pool([SPEC])
            assert pool.map(leaktasks.square, range(100)) == [x * x for x in range(100)]
            pids = pool.map(leaktasks.pid, range(20))
            assert ready(pool, 2)
            remote_pids.update(gw.remote_info().pid for gw in pool.group)
            assert len(remote_pids) >= 3 and set(pids) <= remote_pids  # a relay and two workers
            # while the pool runs, the count sees them (and their session): it is not blind
            seen_running.append(EXTRA["remote_workers"]())
            pool.close()
            pool.join(60)

        def remote_figures():
            return {
                "remote_alive": sorted(p for p in remote_pids if alive(p)),
                "remote_seen": len(remote_pids),
                "remote_workers_running": min(seen_running),
                "remote_left": sorted(remote().items()),
            }

        measure_cycles(cycle, CYCLES, remote_figures)
        """,
        tmp_path,
        cycles=n,
        env={"LEAK_SSHD_PID": str(sshd_server.proc.pid), "LEAK_SSHD_PORT": str(sshd_server.port), "LEAK_SPEC": spec},
        timeout=500,
    )
    keys = [*KEYS, "remote_processes", "remote_workers"]
    more = "\n  remote worker pids seen: %d, still alive: %s; worker interpreters counted while a pool ran: %d" % (
        result["remote_seen"],
        result["remote_alive"],
        result["remote_workers_running"],
    )
    show("pool cycles over ssh (%s; workers=2 via one login)" % backend, result, keys, more)
    assert result["remote_workers_running"] >= 3  # the relay and two workers: the count sees them
    assert not grown(result, keys), "%s\nthrough the sshd: %s" % (leftovers(result), result["remote_left"])
    assert result["remote_alive"] == []
    assert_quiet(result)


# -- 5. soaks (--long only) ------------------------------------------------------------------------

#: Most a process's resident memory may grow over a soak, in KiB.  A million tasks: 8 MiB is 8.4
#: bytes per task, so one leaked pointer per task (a list or dict slot) already exceeds it and any
#: leaked object (16 bytes or more) far exceeds it; the allocator's own drift measured here was
#: under 1.5 MiB (master and workers, over ten million tasks).
MILLION_RSS_BOUND = 8 * 1024
#: The same for the mixed soak, whose single operations peak at several MiB (40 arguments of
#: 100 KiB, pickled on both sides): 20 MiB is about twice that peak, so the allocator keeping one
#: operation's worth of freed heap does not fail the test, while a leak of one 100 KiB argument in
#: a thousand operations does.
MIXED_RSS_BOUND = 20 * 1024


def rss_rows(start: dict[str, int | None], end: dict[str, int | None]) -> list[tuple[str, int, int, int]]:
    """(process, start KiB, end KiB, growth KiB) for each process measured at both ends."""
    return [(k, start[k] or 0, end[k] or 0, (end[k] or 0) - (start[k] or 0)) for k in start]


def soak_figures(head: str, result: Any, rows: list[tuple[str, int, int, int]]) -> str:
    lines = [head]
    lines += ["  RSS %-36s start %7d KiB  end %7d KiB  growth %+6d KiB" % row for row in rows]
    lines.append("  RSS timeline [s, master, workers...]: %s" % result["timeline"])
    lines.append("  counts before: %s\n  counts after:  %s" % (brief(result["before"]), brief(result["after"])))
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_a_million_small_tasks_through_one_pool(tmp_path: Path) -> None:
    """1,000,000 tasks in batches of 10,000 through one Pool(2) -- map, imap_unordered and
    imap_unordered with small chunks in turn -- every result checked; the resident memory of the
    master and of both workers grows less than MILLION_RSS_BOUND."""
    result = run_measured(
        """
        TOTAL, BATCH = 1_000_000, 10_000
        pool = execpool.Pool(2)

        def batch(i, start):
            xs = range(start, start + BATCH)
            want = [x * x for x in xs]
            kind = i % 3
            if kind == 0:
                assert pool.map(leaktasks.square, xs) == want
            elif kind == 1:
                assert sorted(pool.imap_unordered(leaktasks.square, xs)) == want
            else:
                assert sorted(pool.imap_unordered(leaktasks.square, xs, chunksize=10)) == want

        for i in range(3):  # warm-up: one batch of each kind
            batch(i, 0)
        assert ready(pool, 2)
        pids = [gw.remote_info().pid for gw in pool.group]

        def rss():
            gc.collect()
            return {"master": rss_kib(os.getpid()), **{"worker %d" % p: rss_kib(p) for p in pids}}

        start = rss()
        before = counts()
        t0 = time.monotonic()
        timeline = []
        for i in range(TOTAL // BATCH):
            batch(i, i * BATCH)
            if i % 20 == 19:
                timeline.append([round(time.monotonic() - t0, 1), *rss().values()])
        seconds = time.monotonic() - t0
        end = rss()
        stats = pool.stats()
        after = settle(before)
        report(tasks=TOTAL, seconds=round(seconds, 2), start=start, end=end, timeline=timeline,
               before=before, after=after, restarts=sum(s.restarts for s in stats),
               done=sum(s.tasks for s in stats) - 3 * BATCH)
        pool.close()
        pool.join(60)
        """,
        tmp_path,
        timeout=1100,
    )
    rows = rss_rows(result["start"], result["end"])
    rate = result["tasks"] / result["seconds"]
    figure(
        soak_figures(
            "\nsoak: %d tasks in %.1f s (%.0f tasks/s)" % (result["tasks"], result["seconds"], rate), result, rows
        )
    )
    assert result["done"] == result["tasks"] and result["restarts"] == 0  # the same two workers throughout
    assert [r for r in rows if r[3] >= MILLION_RSS_BOUND] == [], rows
    assert not grown(result), leftovers(result)
    assert_quiet(result)


MIXED_SOAK = """
import collections, concurrent.futures, random, signal, zlib

SECONDS = float(os.environ.get("EXECPOOL_SOAK_SECONDS", "600"))
KILL_EVERY = 30.0  # seconds between two kill -9 of a pool worker
SAMPLE_EVERY = 60.0  # seconds between two RSS samples
rng = random.Random(4711)
blobs = [os.urandom(100 * 1024) for _ in range(8)]
crcs = [zlib.crc32(b) for b in blobs]
sq = leaktasks.square
pool = execpool.Pool(2)
ex = execpool.Executor(2)
tally = collections.Counter()  # operation -> times run; "tasks" -> tasks run


def squares(n):
    return [x * x for x in range(n)]


def op_map(big=False):
    n = 5000 if big else rng.randint(1, 5000)
    assert pool.map(sq, range(n), chunksize=rng.choice([None, None, 1, 50])) == squares(n)
    return n


def op_imap(big=False):
    n = 5000 if big else rng.randint(1, 5000)
    assert list(pool.imap(sq, range(n), chunksize=rng.choice([None, 1, 7, 100]))) == squares(n)
    return n


def op_imap_unordered(big=False):
    n = 5000 if big else rng.randint(1, 5000)
    # squares of distinct numbers are distinct: equal sorted lists mean every result exactly once
    assert sorted(pool.imap_unordered(sq, range(n), chunksize=rng.choice([None, 1, 7, 100]))) == squares(n)
    return n


def op_apply_async(big=False):
    n = 300 if big else rng.randint(1, 300)
    arrived = collections.Counter()  # callbacks run in the scheduler thread, before get() returns
    results = [pool.apply_async(sq, (x,), callback=lambda v: arrived.update([v])) for x in range(n)]
    assert [r.get(60) for r in results] == squares(n)
    assert arrived == collections.Counter(squares(n))
    return n


def op_executor(big=False):
    n = 300 if big else rng.randint(1, 300)
    futures = {ex.submit(sq, x): x for x in range(n)}
    seen = collections.Counter()
    for f in concurrent.futures.as_completed(futures, timeout=120):
        assert f.result() == futures[f] ** 2
        seen[futures[f]] += 1
    assert seen == collections.Counter(range(n))
    m = 1000 if big else rng.randint(1, 1000)
    assert list(ex.map(sq, range(m), timeout=120)) == squares(m)
    return n + m


def op_large(big=False):
    k = 40 if big else rng.randint(1, 40)
    picks = [rng.randrange(len(blobs)) for _ in range(k)]
    assert pool.map(leaktasks.crc, [blobs[i] for i in picks]) == [crcs[i] for i in picks]
    assert sorted(pool.imap_unordered(leaktasks.crc, [blobs[i] for i in picks])) == sorted(crcs[i] for i in picks)
    futures = [ex.submit(leaktasks.crc, blobs[i]) for i in picks[:8]]
    assert [f.result(120) for f in futures] == [crcs[i] for i in picks[:8]]
    return 2 * k + len(futures)


def op_exceptions(big=False):
    n = 2000 if big else rng.randint(8, 2000)
    it = pool.imap(leaktasks.fail_on_sevens, range(n))
    for x in range(n):  # a failing task raises at its position; the iteration goes on past it
        try:
            v = it.next(60)
        except ValueError as e:
            assert x % 7 == 0 and "task %d fails" % x in str(e), (x, e)
        else:
            assert x % 7 and v == x * x, (x, v)
    assert next(it, "end") == "end"
    try:
        pool.map(leaktasks.fail_on_sevens, range(n))
    except ValueError as e:
        assert "fails on purpose" in str(e)
    else:
        raise AssertionError("map did not raise")
    errors = []
    r = pool.apply_async(leaktasks.fail_on_sevens, (14,), error_callback=errors.append)
    r.wait(60)
    assert r.ready() and not r.successful() and len(errors) == 1
    assert isinstance(ex.submit(leaktasks.fail_on_sevens, 21).exception(60), ValueError)
    return 2 * n + 2


def op_kill(big=False):
    assert ready(pool, 2)
    victim = next(gw for gw in pool.group if gw.alive and gw.remote_info().pid != survivor)
    n = 600
    it = pool.imap_unordered(leaktasks.nap, range(n))
    got = [it.next(60) for _ in range(50)]
    os.kill(victim.remote_info().pid, signal.SIGKILL)
    got += list(it)
    assert sorted(got) == squares(n)  # every result exactly once, the killed worker's included
    assert wait(lambda: not victim.alive)
    return n


OPS = [op_map, op_imap, op_imap_unordered, op_apply_async, op_executor, op_large, op_exceptions]


def rss():
    gc.collect()
    out = {"master": rss_kib(os.getpid()), "pool worker %d (never killed)" % survivor: rss_kib(survivor)}
    out.update(("executor worker %d" % p, rss_kib(p)) for p in ex_pids)
    return out


# warm-up: every operation at its largest, and one kill
assert ready(pool, 2) and ready(ex.pool, 2)
for op in OPS:
    op(big=True)
survivor = [gw.remote_info().pid for gw in pool.group if gw.alive][0]
op_kill()
tally["op_kill"] += 1
assert ready(pool, 2)
ex_pids = [gw.remote_info().pid for gw in ex.pool.group]
start = rss()
before = counts()
t0 = time.monotonic()
timeline = [[0, *start.values()]]
last_kill = last_sample = t0
while time.monotonic() - t0 < SECONDS:
    now = time.monotonic()
    op = op_kill if now - last_kill >= KILL_EVERY else rng.choice(OPS)
    if op is op_kill:
        last_kill = now
    tally["tasks"] += op()
    tally[op.__name__] += 1
    if now - last_sample >= SAMPLE_EVERY:
        timeline.append([round(now - t0), *rss().values()])
        last_sample = now
seconds = time.monotonic() - t0
assert ready(pool, 2)
end = rss()
timeline.append([round(time.monotonic() - t0), *end.values()])
after = settle(before)  # a killed worker's gateway is exited by a daemon thread
report(seconds=round(seconds, 1), tally=tally, start=start, end=end, timeline=timeline, before=before, after=after,
       group=len(pool.group), survivor_alive=alive(survivor),
       executor_same=[gw.remote_info().pid for gw in ex.pool.group] == ex_pids)
pool.close()
pool.join(60)
ex.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak_mixed_traffic_with_worker_kills(tmp_path: Path) -> None:
    """For EXECPOOL_SOAK_SECONDS: maps, imaps, apply_async, Executor submits and maps, 100 KiB
    arguments, failing tasks, and a pool worker killed with SIGKILL every 30 s.  Every result
    arrives exactly once (checked in each operation); the master's resident memory, and that of
    the one pool worker never killed and of the executor's workers, grow less than
    MIXED_RSS_BOUND; the master ends with as many workers, files and threads as it started with."""
    result = run_measured(MIXED_SOAK, tmp_path, timeout=SOAK_SECONDS + 500)
    rows = rss_rows(result["start"], result["end"])
    tally = result["tally"]
    ops = sum(v for k, v in tally.items() if k != "tasks")
    head = "\nmixed soak: %.0f s, %d operations, %d tasks: %s" % (result["seconds"], ops, tally["tasks"], tally)
    text = soak_figures(head, result, rows)
    figure(text + "\n  gateways in pool.group at the end: %d (2 live workers)" % result["group"])
    assert result["survivor_alive"] and result["executor_same"]
    assert tally["op_kill"] >= (2 if SOAK_SECONDS > 30 else 1)  # the warm-up's, and one every 30 s
    assert [r for r in rows if r[3] >= MIXED_RSS_BOUND] == [], rows
    assert not grown(result), leftovers(result)  # as many workers, pipes, threads as at the start
    assert_quiet(result)
