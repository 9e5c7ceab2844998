"""The fault matrix: each kind of target under each kind of fault, one parametrized test per cell.

Targets: a popen gateway; an ssh gateway; a ``Pool(2)`` of popen workers; a pool over ssh
(``workers=2``: one login, two workers relayed by it).  Faults:

- ``kill -9`` of the remote interpreter;
- the ssh connection killed (ssh targets only): SIGKILL to the local ``ssh`` client;
- the remote process stopped (SIGSTOP) past a timeout;
- the remote writing garbage to the protocol stream;
- Ctrl-C in the master (a separate master process) while work is in flight.

Every cell checks that nothing hangs (each wait has a hang guard), that the error is the
documented one and names its gateway or worker, that a pool delivers every result exactly
once (the task that meets the fault fails only with the documented error, every other task
succeeds), and that no process is left over (by pid: the "remote" processes of the ssh
targets run on this machine).  Each cell runs once, or ``LONG_REPEATS`` times under
``pytest --long``, each repeat on a new target.

In the pool cells one task of the map, the *victim* (``_faulttasks``), meets the fault: it
announces the pid of the worker running it (a file ``victim-PID``) and waits, so that the test
knows which process to kill or stop while the rest of the map is in flight; in the garbage cell
it writes the garbage itself, from inside the task.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import _faulttasks as faulttasks
import _pooltasks as tasks
import execpool
from _helpers import process_gone, start_master_script, wait_until
from test_pool_failures import TESTS_DIR, children_of, ready_pids

HANG_GUARD = 60  # seconds for any single wait: a hang guard, not a timing assertion
GONE_GUARD = 15  # seconds for a process to disappear once it was killed or its gateway ended
LONG_REPEATS = 20
N = 12  # tasks in a pool cell's map
VICTIM = 2  # the task of the map that meets the fault
RETRIES = 1  # the pool's default: a task fails with WorkerLost when RETRIES + 1 workers died running it
POOL_TIMEOUT = 2  # Pool(timeout=...) of the SIGSTOP cells

GATEWAYS = ["popen", "ssh"]
POOLS = ["pool-popen", "pool-ssh"]
ALL_TARGETS = GATEWAYS + POOLS
SSH_TARGETS = ["ssh", "pool-ssh"]

# Runs in a gateway's worker: says its pid, then answers every command (echo), writing
# garbage to the protocol stream first when told to.
REMOTE_CODE = """
import os
channel.send(os.getpid())
for command in channel:
    if command == "garbage":
        os.write(channel.gateway._io.wfd, %r)
    channel.send(command)
""" % (faulttasks.GARBAGE,)


@dataclass
class Target:
    name: str
    pool: bool
    ssh: bool
    spec: Any  # a gateway's xspec, or a Pool's specs


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    name = request.param
    pool, ssh = name in POOLS, name in SSH_TARGETS
    if ssh:
        server = request.getfixturevalue("sshd_server")
        spec: Any = [server.spec("host-a", "//workers=2")] if pool else server.spec("host-a")
    else:
        spec = 2 if pool else "popen"
    return Target(name, pool, ssh, spec)


@pytest.fixture
def repeats(long_run: bool) -> int:
    return LONG_REPEATS if long_run else 1


class Defect(AssertionError):
    """A failed check of a kind that a cell can be marked xfail for: the other checks of the
    repeat still run, and so do the later repeats; the first defect is raised at the end."""


class LeftOver(Defect):
    """A process of a target outlived what should have ended it."""


class MisleadingError(Defect):
    """An error names its gateway or worker but tells a wrong cause."""


def cells(targets: list[str], known_bugs: dict[str, tuple[type[AssertionError], str]]) -> list[Any]:
    """``targets`` as parameters; those of ``known_bugs`` marked xfail(strict), failing only with
    the named kind of assertion, so that any other failure of the cell still shows."""
    return [
        pytest.param(t, marks=pytest.mark.xfail(strict=True, raises=known_bugs[t][0], reason=known_bugs[t][1]))
        if t in known_bugs
        else t
        for t in targets
    ]


# -- helpers ------------------------------------------------------------------------------------


def run_repeats(repeats: int, tmp_path: Path, cell: Callable[[Path, contextlib.ExitStack], None]) -> None:
    """Run ``cell(directory, cleanup)`` ``repeats`` times; after each repeat's clean-up no process
    started under this one (workers, ssh clients, sshd sessions) may be left."""
    defects: list[Defect] = []
    for i in range(repeats):
        run = tmp_path / ("repeat-%d" % i)
        run.mkdir()
        try:
            before = descendants(os.getpid())
            try:
                with contextlib.ExitStack() as cleanup:
                    cell(run, cleanup)
            except Defect as exc:
                defects.append(exc)
            assert_no_new_descendants(before)
        except Defect as exc:
            defects.append(exc)
        except BaseException as exc:
            note(exc, "in repeat %d of %d" % (i + 1, repeats))
            raise
    if defects:
        note(defects[0], "%d defect(s) in %d repeat(s)" % (len(defects), repeats))
        raise defects[0]


def note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(text)


def assert_no_new_descendants(before: set[int]) -> None:
    if not wait_until(lambda: not descendants(os.getpid()) - before, timeout=GONE_GUARD):
        raise LeftOver("left over: %r" % sorted(descendants(os.getpid()) - before))


def descendants(pid: int) -> set[int]:
    """The live processes under ``pid`` (children, their children, ...)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child, _ in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def ssh_clients(parent: int) -> list[int]:
    """The live ``ssh`` client processes that ``parent`` started for host-a."""
    return [
        pid for pid, argv in children_of(parent) if argv and os.path.basename(argv[0]) == "ssh" and "host-a" in argv
    ]


def assert_gone(pids: set[int]) -> None:
    if not wait_until(lambda: all(process_gone(p) for p in pids), timeout=GONE_GUARD):
        raise LeftOver("still there: %r of %r" % ([p for p in pids if not process_gone(p)], sorted(pids)))


def kill_quietly(pid: int) -> None:
    """Clean-up for processes a test stopped: SIGKILL ``pid`` unless it is gone."""
    if not process_gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def bounded(func: Callable[..., Any], *args: Any) -> None:
    """Call ``func(*args)``; fail, rather than hang, if it does not return within the hang guard."""
    errors: list[BaseException] = []

    def call() -> None:
        try:
            func(*args)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(HANG_GUARD)
    assert not t.is_alive(), "%s did not return within %s seconds" % (getattr(func, "__qualname__", func), HANG_GUARD)
    if errors:
        raise errors[0]


def assert_names_gateway(exc: BaseException, gw: execpool.Gateway) -> None:
    assert re.search(r"\b%s\b" % re.escape(gw.id), str(exc)), "the error does not name %s: %s" % (gw.id, exc)


# -- gateway cells --------------------------------------------------------------------------------


@dataclass
class GatewayRun:
    gw: execpool.Gateway
    ch: execpool.Channel
    pid: int  # the worker interpreter's
    pids: set[int]  # the worker's and, over ssh, the ssh client's


def start_gateway(target: Target, cleanup: contextlib.ExitStack) -> GatewayRun:
    clients_before = set(ssh_clients(os.getpid()))
    group = execpool.Group()
    cleanup.callback(bounded, group.terminate, 5)
    gw = group.makegateway(target.spec)
    ch = gw.remote_exec(REMOTE_CODE)
    pid = ch.receive(HANG_GUARD)
    assert pid == gw.remote_info().pid
    pids = {pid}
    if target.ssh:
        clients = set(ssh_clients(os.getpid())) - clients_before
        assert len(clients) == 1, clients
        pids |= clients
    return GatewayRun(gw, ch, pid, pids)


def assert_gateway_lost(run: GatewayRun, match: str = "the connection ended") -> None:
    """The waiting channel ends with GatewayLostError naming the gateway; its processes end."""
    with pytest.raises(execpool.GatewayLostError, match=match) as info:
        run.ch.receive(HANG_GUARD)
    assert_names_gateway(info.value, run.gw)
    assert not run.gw.alive
    assert_gone(run.pids)


def gateway_kill_9(target: Target, run_dir: Path, cleanup: contextlib.ExitStack) -> None:
    run = start_gateway(target, cleanup)
    os.kill(run.pid, signal.SIGKILL)
    assert_gateway_lost(run)


def gateway_ssh_kill(target: Target, run_dir: Path, cleanup: contextlib.ExitStack) -> None:
    run = start_gateway(target, cleanup)
    (client,) = run.pids - {run.pid}
    os.kill(client, signal.SIGKILL)
    assert_gateway_lost(run)  # the remote worker sees its connection end and exits too


def gateway_sigstop(target: Target, run_dir: Path, cleanup: contextlib.ExitStack) -> None:
    run = start_gateway(target, cleanup)
    os.kill(run.pid, signal.SIGSTOP)
    cleanup.callback(kill_quietly, run.pid)
    run.ch.send("ping")  # a running worker answers at once: only the SIGSTOP keeps the answer away
    with pytest.raises(execpool.TimeoutError) as info:
        run.ch.receive(timeout=1)
    assert isinstance(info.value, TimeoutError)  # the builtin class too
    assert_names_gateway(info.value, run.gw)
    bounded(run.gw.exit, 2)  # a stopped worker cannot obey TERMINATE: exit() must end it anyway
    assert_gone(run.pids)


def gateway_garbage(target: Target, run_dir: Path, cleanup: contextlib.ExitStack) -> None:
    run = start_gateway(target, cleanup)
    run.ch.send("garbage")  # the worker writes garbage, then the echo: which must never arrive
    assert_gateway_lost(run, match="protocol error")


# -- pool cells ------------------------------------------------------------------------------------


def victim_pids(run_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in run_dir.glob("victim-*")}


def next_victim(run_dir: Path, handled: set[int]) -> int:
    """Wait until the victim task runs in a process not in ``handled``; add its pid there and return it."""
    assert wait_until(lambda: bool(victim_pids(run_dir) - handled), timeout=HANG_GUARD), "the victim never (re)started"
    pid = min(victim_pids(run_dir) - handled)
    handled.add(pid)
    return pid


def live_pids(pool: execpool.Pool) -> set[int]:
    """The interpreters of the pool's running gateways (relays included), and its ssh clients."""
    return {gw.remote_info().pid for gw in pool.group if gw.alive} | set(ssh_clients(os.getpid()))


def collect(results: Any) -> tuple[list[int], dict[int, BaseException]]:
    """Every result of an imap_unordered: the values, and the errors by task number."""
    values: list[int] = []
    failures: dict[int, BaseException] = {}
    while True:
        try:
            values.append(results.next(HANG_GUARD))
        except StopIteration:
            return values, failures
        except execpool.ExecpoolError as exc:
            m = re.search(r"\btask #(\d+) of ", str(exc))
            assert m, "an error that names no task: %r" % exc
            index = int(m.group(1))
            assert index not in failures, "task #%d failed twice: %r, %r" % (index, failures[index], exc)
            failures[index] = exc


def pool_cell(target: Target, run_dir: Path, cleanup: contextlib.ExitStack, fault: str) -> None:
    pool = execpool.Pool(target.spec, timeout=POOL_TIMEOUT if fault == "sigstop" else None)
    cleanup.callback(bounded, pool.terminate)
    cleanup.callback((run_dir / "go").touch)  # (runs first) no victim waits for its minute
    ready_pids(pool, 2)
    pids = live_pids(pool)
    assert len(pids) == (4 if target.ssh else 2), pids  # 2 workers (+ the relay and its ssh client)
    items = [(x, VICTIM, str(run_dir), fault == "garbage") for x in range(N)]
    results = pool.imap_unordered(faulttasks.square_or_meet_the_fault, items)
    handled: set[int] = set()
    faulted: set[int] = set()  # processes the fault ended: the victims' workers, lost connections
    if fault == "kill-9":
        for _ in range(RETRIES + 1):  # each time the victim runs, its worker is killed
            os.kill(next_victim(run_dir, handled), signal.SIGKILL)
    elif fault == "ssh-kill":
        for _ in range(RETRIES + 1):  # each time the victim runs, the host's connection is killed
            next_victim(run_dir, handled)
            faulted |= live_pids(pool)  # the relay, the workers and the ssh client of this connection
            (client,) = ssh_clients(os.getpid())
            os.kill(client, signal.SIGKILL)
    elif fault == "sigstop":
        pid = next_victim(run_dir, handled)
        os.kill(pid, signal.SIGSTOP)
        cleanup.callback(kill_quietly, pid)
        (run_dir / "go").touch()  # the victim would return now: only the SIGSTOP keeps it past its timeout
    values, failures = collect(results)
    faulted |= victim_pids(run_dir)

    # every result exactly once: the victim fails with the documented error, the other tasks succeed
    serial = [x * x for x in range(N)]
    assert collections.Counter(values) == collections.Counter(v for i, v in enumerate(serial) if i not in failures)
    assert VICTIM in failures, "the victim did not fail: %r" % values
    expected = execpool.TimeoutError if fault == "sigstop" else execpool.WorkerLost
    for index, exc in failures.items():
        assert type(exc) is expected, exc
        if index != VICTIM:
            # Only a lost host kills workers that ran other tasks: one that was running on both
            # lost connections was charged both deaths, as the failure model says.
            assert fault == "ssh-kill", "task #%d failed too: %s" % (index, exc)
            assert "2 worker processes died running it (retries=1)" in str(exc), exc
    # the victim ran (and took down a worker) RETRIES + 1 times; a timed-out task is not retried
    assert len(victim_pids(run_dir)) == (1 if fault == "sigstop" else RETRIES + 1), victim_pids(run_dir)

    # the error names the worker (slot and spec) that was replaced
    text = str(failures[VICTIM])
    m = re.search(r"task #%d of square_or_meet_the_fault \(.*? on pool worker (w\d+) \((.+?), host " % VICTIM, text)
    assert m, text
    slot, spec = m.groups()
    assert {s.id: s.spec for s in pool.stats()}.get(slot) == spec, (text, pool.stats())
    assert wait_until(lambda: any(s.id == slot and s.restarts >= 1 for s in pool.stats()), timeout=HANG_GUARD), (
        pool.stats()
    )
    if fault == "sigstop":
        assert "did not finish within timeout=%s seconds" % POOL_TIMEOUT in text, text
    else:
        assert "%d worker processes died running it (retries=%d)" % (RETRIES + 1, RETRIES) in text, text
    if fault == "garbage":
        assert "protocol error" in text, text
    if fault == "kill-9":
        assert "killed by SIGKILL" in text, text
    misleading = fault != "kill-9" and "killed by SIGKILL" in text  # raised last: the other checks first

    # the processes of the fault are gone before the pool ends; the pool works on with new
    # workers (a slot whose restart a second lost connection cut goes, as documented), which end with it
    assert_gone(faulted)
    assert pool.map(tasks.square_slowly, range(4)) == [0, 1, 4, 9]
    assert wait_until(lambda: all(s.state != "starting" for s in pool.stats()), timeout=HANG_GUARD), pool.stats()
    pids |= live_pids(pool)
    bounded(pool.terminate)
    assert_gone(pids | faulted)
    if misleading:
        raise MisleadingError("no worker was killed by SIGKILL: " + text)


# -- Ctrl-C in the master -----------------------------------------------------------------------

MASTER_GATEWAY = """
import json, execpool
gw = execpool.makegateway({spec!r})
ch = gw.remote_exec({code!r})
try:
    print(json.dumps([ch.receive()]), flush=True)  # the worker's pid: it runs
    ch.receive()  # the worker sends nothing more: only Ctrl-C ends this wait
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
"""

MASTER_POOL = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import execpool, _pooltasks
pool = execpool.Pool({spec!r})
while sum(s.state == "ready" for s in pool.stats()) < 2:
    time.sleep(0.02)
print(json.dumps([gw.remote_info().pid for gw in pool.group]), flush=True)
try:
    names = ["pid-a", "pid-b"] + ["pid-c%d" % i for i in range(8)]  # a and b block both workers
    items = [(os.path.join({run!r}, name), 300 if name in ("pid-a", "pid-b") else 0) for name in names]
    pool.map(_pooltasks.record_pid_and_sleep, items, chunksize=1)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
"""


def waits_on_a_lock(pid: int) -> bool:
    """True while the main thread of ``pid`` sleeps in a futex wait (a lock, queue or event), or
    when the kernel does not say where threads sleep."""
    try:
        with open("/proc/%d/wchan" % pid) as f:
            wchan = f.read().strip()
    except OSError:
        return True
    return wchan in ("", "0") or "futex" in wchan


def end_master(proc: Any) -> None:
    """Clean-up for a master process that a failed check left running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def ctrl_c(target: Target, run_dir: Path, cleanup: contextlib.ExitStack) -> None:
    if target.pool:
        source = MASTER_POOL.format(tests=TESTS_DIR, spec=target.spec, run=str(run_dir))
    else:
        source = MASTER_GATEWAY.format(spec=target.spec, code=REMOTE_CODE)
    proc = start_master_script(source, run_dir)
    cleanup.callback(end_master, proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=HANG_GUARD)[1]
    pids = set(json.loads(line))  # the interpreters, "remote" ones (relays) included
    assert len(pids) == ((3 if target.ssh else 2) if target.pool else 1), pids
    if target.pool:  # both workers run a task: the map is in flight
        assert wait_until(lambda: (run_dir / "pid-a").exists() and (run_dir / "pid-b").exists(), timeout=HANG_GUARD)
    assert wait_until(lambda: waits_on_a_lock(proc.pid), timeout=HANG_GUARD)  # in receive() or map()
    clients = ssh_clients(proc.pid)
    assert len(clients) == (1 if target.ssh else 0), clients
    pids |= set(clients) | {pid for pid, _ in children_of(proc.pid)}
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert "interrupted" in out, err
    assert re.search(r"^KeyboardInterrupt$", err, re.MULTILINE), err  # the master's own traceback
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
    assert_gone(pids)


# -- the matrix ---------------------------------------------------------------------------------------

GATEWAY_CELLS = {
    "kill-9": gateway_kill_9,
    "ssh-kill": gateway_ssh_kill,
    "sigstop": gateway_sigstop,
    "garbage": gateway_garbage,
}

KNOWN_BUGS_SIGSTOP: dict[str, tuple[type[BaseException], str]] = {}  # the stopped ssh worker is killed now
KNOWN_BUGS_SSH_KILL: dict[str, tuple[type[BaseException], str]] = {}  # the "killed by SIGKILL" one is fixed


def run_cell(target: Target, fault: str, repeats: int, tmp_path: Path) -> None:
    if fault == "ctrl-c":
        cell = ctrl_c
    elif target.pool:
        cell = functools.partial(pool_cell, fault=fault)
    else:
        cell = GATEWAY_CELLS[fault]
    run_repeats(repeats, tmp_path, functools.partial(cell, target))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", ALL_TARGETS, indirect=True)
def test_kill_9_of_the_remote_interpreter(target: Target, repeats: int, tmp_path: Path) -> None:
    run_cell(target, "kill-9", repeats, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", cells(SSH_TARGETS, KNOWN_BUGS_SSH_KILL), indirect=True)
def test_kill_of_the_ssh_connection(target: Target, repeats: int, tmp_path: Path) -> None:
    run_cell(target, "ssh-kill", repeats, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", cells(ALL_TARGETS, KNOWN_BUGS_SIGSTOP), indirect=True)
def test_remote_stopped_past_a_timeout(target: Target, repeats: int, tmp_path: Path) -> None:
    run_cell(target, "sigstop", repeats, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", ALL_TARGETS, indirect=True)
def test_remote_writes_garbage_to_the_protocol_stream(target: Target, repeats: int, tmp_path: Path) -> None:
    run_cell(target, "garbage", repeats, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", ALL_TARGETS, indirect=True)
def test_ctrl_c_in_the_master_with_work_in_flight(target: Target, repeats: int, tmp_path: Path) -> None:
    run_cell(target, "ctrl-c", repeats, tmp_path)
