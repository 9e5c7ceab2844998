"""What the benchmark scripts share: worker code, timed loops, table numbers, process checks.

Imported by ``bench_lowlevel.py``, ``bench_ssh.py``, ``bench_rsync.py`` and ``bench_pool.py`` (run from the
repository root, their directory is on ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

MiB = 1024 * 1024
RECEIVE_TIMEOUT = 120.0

# Worker code, run with remote_exec by both libraries: echo items / acknowledge them with
# their length, until None.
ECHO = """
while True:
    x = channel.receive()
    if x is None:
        break
    channel.send(x)
"""

ACK = """
while True:
    x = channel.receive()
    if x is None:
        break
    channel.send(len(x))
"""


def finish(ch: Any) -> None:
    """End an ECHO/ACK loop and wait for its channel to close."""
    ch.send(None)
    ch.waitclose(RECEIVE_TIMEOUT)


def run_latency(gw: Any, iterations: int) -> float:
    """Seconds per round trip of an int (mean over ``iterations``, after a warm-up)."""
    ch = gw.remote_exec(ECHO)
    send, receive = ch.send, ch.receive
    for i in range(min(200, iterations)):  # warm-up: channel open, code running, caches hot
        send(i)
        receive(RECEIVE_TIMEOUT)
    t0 = time.perf_counter()
    for i in range(iterations):
        send(i)
        receive(RECEIVE_TIMEOUT)
    t = time.perf_counter() - t0
    finish(ch)
    return t / iterations


def run_oneway(gw: Any, block: bytes, total_mib: int, window: int = 4) -> float:
    """MiB/s of ``total_mib`` messages of ``block`` (1 MiB) to the worker, each acknowledged
    with its length, ``window`` in flight."""
    ch = gw.remote_exec(ACK)
    send, receive = ch.send, ch.receive
    for _ in range(2):  # warm-up
        send(block)
        receive(RECEIVE_TIMEOUT)
    t0 = time.perf_counter()
    outstanding = acked = 0
    for _ in range(total_mib):
        send(block)
        outstanding += 1
        if outstanding >= window:
            acked += receive(RECEIVE_TIMEOUT)
            outstanding -= 1
    while outstanding:
        acked += receive(RECEIVE_TIMEOUT)
        outstanding -= 1
    t = time.perf_counter() - t0
    assert acked == total_mib * len(block), (acked, total_mib)
    finish(ch)
    return total_mib * len(block) / MiB / t


def rotate(items: list[Any], rep: int) -> list[Any]:
    """The order of the variants in repetition ``rep``: each takes every position in turn."""
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


def fmt(v: float) -> str:
    """A figure with about four significant digits, for the tables."""
    if v >= 1000:
        return "%.0f" % v
    if v >= 100:
        return "%.1f" % v
    if v >= 10:
        return "%.2f" % v
    return "%.3f" % v


def source_revision(path: str) -> str:
    """git commit of the checkout holding ``path`` (+ '-dirty' if it has local changes there), or ''."""
    try:
        top = subprocess.run(
            ["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if top.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
        )
        return top.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process (Linux /proc; empty elsewhere)."""
    out: dict[int, tuple[int, str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            out[int(entry)] = (int(fields[1]), cmdline[:100])
    return out


def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` (children, grandchildren, ...): pid -> command line."""
    table = _proc_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, (pp, cmd) in table.items():
            if pp == parent and p not in found:
                found[p] = cmd
                frontier.append(p)
    return found


def wait_gone(pid: int, seconds: float) -> dict[int, str]:
    """Descendants of ``pid`` still there after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    left = descendants(pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = descendants(pid)
    return left


def exit_execnet(gw: Any, timeout: float = 10.0) -> None:
    """End an execnet gateway as its Group.terminate() does -- exit(), join the receiver,
    wait for the process -- bounded, with a kill at the end, so that a stuck worker cannot
    hang a run and both libraries are timed to the same point: the worker is gone."""
    gw.exit()
    gw.join(timeout)
    popen = getattr(gw._io, "popen", None)
    if popen is None:
        gw._io.wait()
    else:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def end_sessions(server_pid: int) -> dict[int, str]:
    """Sessions left under the test sshd (its children, their shells and workers): report
    them, then end them by pid -- while the listener still runs, so that it reaps them (the
    init here does not reap orphans).  Returns what was left before the clean-up."""
    left = wait_gone(server_pid, 5.0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in descendants(server_pid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not wait_gone(server_pid, 5.0):
            break
    return left


def default_remote_python() -> str:
    """A real interpreter path for remote workers (not pyenv's shim, which costs 0.1-0.25 s per start)."""
    import sys

    base = getattr(sys, "_base_executable", "") or sys.executable
    return base if os.path.exists(base) else "python3"


def machine_description() -> str:
    """CPUs, CPU model, memory, OS and kernel of this machine (Linux /proc; less elsewhere), for headers."""
    import platform

    model = "?"
    mem = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = ", %.1f GiB RAM" % (int(line.split()[1]) / 1024 / 1024)
                    break
    except OSError:
        pass
    return "%s CPUs (%s)%s, %s %s (%s)" % (
        os.cpu_count(),
        model,
        mem,
        platform.system(),
        platform.release(),
        platform.node(),
    )
