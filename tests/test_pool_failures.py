"""The pool's failure behaviour with real worker processes: kill -9, crashing tasks, timeouts,
maxtasksperchild, initializers, terminate, Ctrl-C, lost ssh connections, specs that cannot start."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import _pooltasks as tasks
import execpool
from _helpers import process_gone, start_master_script, wait_until
from sshd import SshServer

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
HANG_GUARD = 60  # seconds for any single wait on a result: a hang guard, not a timing assertion


def ready_pids(pool: execpool.Pool, n: int) -> list[int]:
    """Wait until ``n`` workers are ready; return the pids of the pool's gateways."""
    assert wait_until(lambda: sum(s.state == "ready" for s in pool.stats()) >= n, timeout=HANG_GUARD), pool.stats()
    return [gw.remote_info().pid for gw in pool.group]


def read_pid(path: Path) -> int:
    assert wait_until(path.exists, timeout=HANG_GUARD), "the task never started"
    return int(path.read_text())


def attempts(logfile: Path, x: int) -> int:
    """How many times the task for ``x`` started (it appends ``x`` to ``logfile``)."""
    return logfile.read_text().split().count(str(x)) if logfile.exists() else 0


def children_of(pid: int) -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of the live child processes of ``pid``, read from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            yield int(entry), argv


# -- 1. a worker killed mid-map ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_kill_9_of_a_worker_mid_map_loses_no_result_and_replaces_the_worker(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    pids = ready_pids(pool, 2)
    assert len(pids) == 2
    n = 40
    it = pool.imap_unordered(tasks.square_slowly, range(n))
    got = [it.next(HANG_GUARD) for _ in range(3)]  # the map is in flight
    os.kill(pids[0], signal.SIGKILL)
    got += [it.next(HANG_GUARD) for _ in range(n - 3)]
    with pytest.raises(StopIteration):
        it.next(HANG_GUARD)
    # each result exactly once: no task lost, none delivered twice
    assert collections.Counter(got) == collections.Counter(x * x for x in range(n))
    assert wait_until(lambda: process_gone(pids[0]))
    # the dead worker's slot was restarted, the other one was not
    assert sorted(s.restarts for s in pool.stats()) == [0, 1], pool.stats()
    assert pool.map(tasks.square_slowly, range(10)) == [x * x for x in range(10)]
    later = set(pool.map(tasks.pid_of, range(10), chunksize=1))
    assert len(later) == 2 and pids[0] not in later, (later, pids)


# -- 2. a task that kills its interpreter --------------------------------------------------


@pytest.mark.timeout(120)
def test_a_task_that_kills_its_interpreter_fails_map_with_worker_lost_naming_it(
    cleanup: list[execpool.Pool], tmp_path: Path
) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    log = tmp_path / "log"
    items = [(x, 5, str(log)) for x in range(10)]
    with pytest.raises(execpool.WorkerLost, match=r"task #5 of log_then_crash_on") as info:
        pool.map_async(tasks.log_then_crash_on, items).get(HANG_GUARD)
    assert "retries=1" in str(info.value)
    # the pool goes on with replaced workers
    assert pool.map(tasks.square_slowly, range(6)) == [x * x for x in range(6)]


@pytest.mark.timeout(120)
def test_imap_delivers_the_other_results_and_raises_worker_lost_at_the_crashing_position(
    cleanup: list[execpool.Pool],
) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    it = pool.imap(tasks.kill_own_interpreter, range(8))
    outcome: list[object] = []
    for _ in range(8):
        try:
            outcome.append(it.next(HANG_GUARD))
        except execpool.WorkerLost as exc:
            assert "task #2 of kill_own_interpreter" in str(exc)
            outcome.append("lost")
    with pytest.raises(StopIteration):
        it.next(HANG_GUARD)
    assert outcome == [0, 1, "lost", 3, 4, 5, 6, 7]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retries", [0, 2])
def test_retries_decide_how_often_a_crashing_task_is_tried(
    cleanup: list[execpool.Pool], tmp_path: Path, retries: int
) -> None:
    pool = execpool.Pool(2, retries=retries)
    cleanup.append(pool)
    log = tmp_path / "log"
    items = [(x, 3, str(log)) for x in range(6)]
    results = pool.imap(tasks.log_then_crash_on, items, chunksize=1)
    outcome: list[object] = []
    for _ in items:
        try:
            outcome.append(results.next(HANG_GUARD))
        except execpool.WorkerLost as exc:
            assert "%d worker process%s died running it" % (retries + 1, "es" if retries else "") in str(exc), exc
            outcome.append("lost")
    assert outcome == [0, 2, 4, "lost", 8, 10]
    assert attempts(log, 3) == retries + 1


@pytest.mark.timeout(120)
def test_with_retries_0_the_tasks_queued_behind_a_crash_in_its_chunk_still_run(
    cleanup: list[execpool.Pool], tmp_path: Path
) -> None:
    pool = execpool.Pool(1, retries=0)
    cleanup.append(pool)
    log = tmp_path / "log"
    items = [(x, 1, str(log)) for x in range(8)]
    results = pool.imap(tasks.log_then_crash_on, items, chunksize=4)  # chunks [0-3] and [4-7]
    outcome: list[object] = []
    for _ in items:
        try:
            outcome.append(results.next(HANG_GUARD))
        except execpool.WorkerLost:
            outcome.append("lost")
    # Which task of a chunk killed its worker is found by running the chunk's tasks again one at a
    # time: the culprit runs twice (the chunk's death is charged to it when it kills again) ...
    assert attempts(log, 1) == 2
    # ... and tasks #2 and #3, which never started in the chunk, run once and are never charged
    # (task #0 ran before the crash; its result died with the worker, so it runs again).
    assert attempts(log, 2) == attempts(log, 3) == 1, log.read_text()
    assert outcome[1:] == ["lost", 4, 6, 8, 10, 12, 14]


# -- 3. timeouts ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_task_over_its_timeout_fails_and_its_worker_is_killed(cleanup: list[execpool.Pool], tmp_path: Path) -> None:
    pool = execpool.Pool(2, timeout=2)
    cleanup.append(pool)
    pidfile = tmp_path / "pid"
    slow = pool.apply_async(tasks.record_pid_and_sleep, ((str(pidfile), 300),))
    pid = read_pid(pidfile)
    with pytest.raises(TimeoutError) as info:  # the builtin class
        slow.get(HANG_GUARD)
    assert isinstance(info.value, execpool.TimeoutError)
    assert "task #0 of record_pid_and_sleep" in str(info.value) and "timeout=2" in str(info.value)
    assert wait_until(lambda: process_gone(pid))
    assert pool.map(tasks.square_slowly, range(6)) == [x * x for x in range(6)]
    assert pid not in pool.map(tasks.pid_of, range(6))


@pytest.mark.timeout(120)
def test_a_sigstopped_worker_past_the_timeout_is_killed(cleanup: list[execpool.Pool], tmp_path: Path) -> None:
    pool = execpool.Pool(1, timeout=2)
    cleanup.append(pool)
    pidfile, go = tmp_path / "pid", tmp_path / "go"
    # the task returns as soon as "go" exists: only the SIGSTOP keeps it past its timeout
    result = pool.apply_async(tasks.record_pid_and_wait_for, ((str(pidfile), str(go)),))
    pid = read_pid(pidfile)
    os.kill(pid, signal.SIGSTOP)
    try:
        go.touch()
        with pytest.raises(execpool.TimeoutError, match=r"task #0 of record_pid_and_wait_for"):
            result.get(HANG_GUARD)
        assert wait_until(lambda: process_gone(pid))
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert pool.map(tasks.square_slowly, range(4)) == [0, 1, 4, 9]


@pytest.mark.timeout(120)
def test_a_worker_stopped_before_it_starts_its_task_times_out_too(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(1, timeout=2)
    cleanup.append(pool)
    (pid,) = ready_pids(pool, 1)
    os.kill(pid, signal.SIGSTOP)  # idle and stopped: it never says it started the task
    try:
        with pytest.raises(execpool.TimeoutError, match=r"task #0 of square_slowly"):
            pool.apply(tasks.square_slowly, (3,))
        assert wait_until(lambda: process_gone(pid))
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert pool.map(tasks.square_slowly, range(3)) == [0, 1, 4]


# -- 4. maxtasksperchild ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_maxtasksperchild_replaces_workers_and_ends_the_old_ones(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2, maxtasksperchild=2)
    cleanup.append(pool)
    served = collections.Counter(pool.map(tasks.pid_of, range(10)))
    assert sum(served.values()) == 10
    assert max(served.values()) <= 2, served  # no incarnation ran more than 2 tasks, chunks or not
    assert len(served) >= 5, served
    # the incarnations that reached their quota were retired: their processes end
    finished = [pid for pid, count in served.items() if count == 2]
    assert wait_until(lambda: all(process_gone(pid) for pid in finished)), finished
    # (the last retirement may follow the last result by a moment)
    assert wait_until(lambda: sum(s.restarts for s in pool.stats()) >= len(finished)), pool.stats()
    pool.close()
    pool.join(HANG_GUARD)
    assert wait_until(lambda: all(process_gone(pid) for pid in served))


# -- 5. initializers --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_initializer_that_raises_makes_map_raise_gateway_start_error(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2, initializer=tasks.failing_initializer)
    cleanup.append(pool)
    with pytest.raises(execpool.GatewayStartError, match=r"initializer.*ValueError: the initializer exploded"):
        pool.map_async(tasks.square_slowly, range(4)).get(HANG_GUARD)


@pytest.mark.timeout(120)
def test_a_working_initializer_runs_in_every_worker_before_its_tasks(
    cleanup: list[execpool.Pool], tmp_path: Path
) -> None:
    log = tmp_path / "init"
    pool = execpool.Pool(2, initializer=tasks.set_marker, initargs=("ready", str(log)))
    cleanup.append(pool)
    pids = ready_pids(pool, 2)
    results = pool.map(tasks.read_marker, range(10), chunksize=1)
    assert [(marker, x) for marker, x, _ in results] == [("ready", x) for x in range(10)]
    initialized = [int(p) for p in log.read_text().split()]
    assert sorted(initialized) == sorted(pids)
    assert {pid for _, _, pid in results} == set(pids)


# -- 6. terminate and with-blocks --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_terminate_ends_every_worker_and_fails_unfinished_results(cleanup: list[execpool.Pool], tmp_path: Path) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    pids = ready_pids(pool, 2)
    running = pool.map_async(tasks.record_pid_and_sleep, [(str(tmp_path / "a"), 300), (str(tmp_path / "b"), 300)])
    queued = pool.apply_async(tasks.square_slowly, (3,))
    read_pid(tmp_path / "a")
    read_pid(tmp_path / "b")
    pool.terminate()
    assert wait_until(lambda: all(process_gone(pid) for pid in pids)), pids
    for result in (running, queued):
        with pytest.raises(execpool.PoolTerminated):
            result.get(HANG_GUARD)
    with pytest.raises(ValueError, match="not running"):
        pool.map(tasks.square_slowly, range(3))


@pytest.mark.timeout(120)
def test_a_with_block_that_raises_terminates_the_pool(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with execpool.Pool(2) as pool:
            pids = ready_pids(pool, 2)
            result = pool.map_async(tasks.record_pid_and_sleep, [(str(tmp_path / "a"), 300)])
            read_pid(tmp_path / "a")
            raise RuntimeError("boom")
    assert wait_until(lambda: all(process_gone(pid) for pid in pids)), pids
    with pytest.raises(execpool.PoolTerminated):
        result.get(HANG_GUARD)


@pytest.mark.timeout(120)
def test_a_with_block_that_ends_normally_waits_for_its_results(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with execpool.Pool(2) as pool:
        pids = ready_pids(pool, 2)
        result = pool.map_async(tasks.log_and_sleep, [(str(log), x, 0.05) for x in range(12)])
    assert result.ready()
    assert result.get(0) == list(range(12))
    assert sorted(int(x) for x in log.read_text().split()) == list(range(12))
    assert wait_until(lambda: all(process_gone(pid) for pid in pids)), pids


# -- 7. Ctrl-C in the master --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_ctrl_c_during_map_raises_keyboard_interrupt_and_ends_every_worker(tmp_path: Path) -> None:
    proc = start_master_script(
        f"""
        import sys, time
        sys.path.insert(0, {TESTS_DIR!r})
        import execpool, _pooltasks
        pool = execpool.Pool(2)
        while sum(s.state == "ready" for s in pool.stats()) < 2:
            time.sleep(0.02)
        print(*[gw.remote_info().pid for gw in pool.group], flush=True)
        try:
            pool.map(_pooltasks.record_pid_and_sleep, [("pid-a", 300), ("pid-b", 300)], chunksize=1)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
        """,
        tmp_path,
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        # both workers run a task: the map is in flight
        assert sorted([read_pid(tmp_path / "pid-a"), read_pid(tmp_path / "pid-b")]) == sorted(pids)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in out, err
    assert "KeyboardInterrupt" in err
    assert proc.returncode != 0
    assert wait_until(lambda: all(process_gone(pid) for pid in pids)), pids


# -- 8. a lost ssh connection ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_killing_the_ssh_client_mid_map_restarts_the_host_and_loses_no_result(
    sshd_server: SshServer, cleanup: list[execpool.Pool]
) -> None:
    pool = execpool.Pool([sshd_server.spec("host-a", "//workers=2")])
    cleanup.append(pool)
    remote = ready_pids(pool, 2)  # the relay and its two workers
    assert len(remote) == 3
    clients = [pid for pid, argv in children_of(os.getpid()) if os.path.basename(argv[0]) == "ssh" and "host-a" in argv]
    assert len(clients) == 1, clients
    n = 40
    it = pool.imap_unordered(tasks.square_slowly, range(n))
    got = [it.next(HANG_GUARD) for _ in range(3)]
    os.kill(clients[0], signal.SIGKILL)
    got += [it.next(HANG_GUARD) for _ in range(n - 3)]
    with pytest.raises(StopIteration):
        it.next(HANG_GUARD)
    assert collections.Counter(got) == collections.Counter(x * x for x in range(n))
    # the relay and the workers of the lost connection exit by themselves
    assert wait_until(lambda: all(process_gone(pid) for pid in remote), timeout=30), remote
    assert sum(s.restarts for s in pool.stats()) >= 2, pool.stats()
    assert pool.map(tasks.square_slowly, range(6)) == [x * x for x in range(6)]


# -- 9. specs that cannot start ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_spec_that_cannot_start_leaves_the_pool_working_with_the_good_one(
    cleanup: list[execpool.Pool], capsys: pytest.CaptureFixture[str]
) -> None:
    pool = execpool.Pool(["popen//python=/nonexistent/python3", "popen"])
    cleanup.append(pool)
    assert pool.map(tasks.square_slowly, range(8)) == [x * x for x in range(8)]
    states = sorted((s.state, s.error or "") for s in pool.stats())
    assert [state for state, _ in states] == ["failed", "ready"], states
    assert "/nonexistent/python3" in states[0][1]


@pytest.mark.timeout(120)
def test_only_specs_that_cannot_start_make_map_raise_gateway_start_error_naming_them(
    cleanup: list[execpool.Pool],
) -> None:
    pool = execpool.Pool(["popen//python=/nonexistent/python3", "popen//python=/nonexistent/other"])
    cleanup.append(pool)
    with pytest.raises(execpool.GatewayStartError, match="no worker left") as info:
        pool.map_async(tasks.square_slowly, range(4)).get(HANG_GUARD)
    assert "/nonexistent/python3" in str(info.value) and "/nonexistent/other" in str(info.value)


# -- 10. the Executor ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_executor_future_whose_worker_is_killed_still_completes(tmp_path: Path) -> None:
    executor = execpool.Executor(2)
    try:
        pidfile, go = tmp_path / "pid", tmp_path / "go"
        future = executor.submit(tasks.record_pid_and_wait_for, (str(pidfile), str(go)))
        pid = read_pid(pidfile)
        pidfile.unlink()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: process_gone(pid))
        go.touch()
        rerun = future.result(HANG_GUARD)
        assert rerun != pid and rerun == read_pid(pidfile)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        executor.pool.terminate()


@pytest.mark.timeout(120)
def test_executor_shutdown_with_cancel_futures_cancels_what_has_not_started(tmp_path: Path) -> None:
    log = tmp_path / "log"
    executor = execpool.Executor(1)
    try:
        futures = [executor.submit(tasks.log_and_sleep, (str(log), x, 0.5)) for x in range(8)]
        assert wait_until(lambda: futures[0].running() or futures[0].done(), timeout=HANG_GUARD)
        executor.shutdown(wait=True, cancel_futures=True)
        cancelled = [f for f in futures if f.cancelled()]
        finished = [f for f in futures if not f.cancelled()]
        assert len(cancelled) >= 4, futures
        assert all(f.done() for f in futures)
        assert sorted(f.result(0) for f in finished) == sorted(int(x) for x in log.read_text().split())
        for f in cancelled:
            with pytest.raises(concurrent.futures.CancelledError):
                f.result(0)
    finally:
        executor.pool.terminate()


@pytest.mark.timeout(120)
def test_executor_submit_after_shutdown_raises_runtime_error() -> None:
    executor = execpool.Executor(1)
    try:
        assert executor.submit(tasks.square_slowly, 3).result(HANG_GUARD) == 9
        executor.shutdown()
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(tasks.square_slowly, 4)
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.map(tasks.square_slowly, [1, 2])
    finally:
        executor.pool.terminate()


@pytest.mark.timeout(120)
def test_a_replaced_worker_leaves_no_dead_gateway_in_the_group(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    for _ in range(2):
        victim = ready_pids(pool, 2)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda victim=victim: victim not in ready_pids(pool, 2), timeout=HANG_GUARD)
    assert wait_until(lambda: len(pool.group) == 2 and all(gw.alive for gw in pool.group), timeout=HANG_GUARD)
    assert pool.map(tasks.square_slowly, range(4)) == [0, 1, 4, 9]


# -- a host that stays unreachable for a while --------------------------------------------------


@pytest.mark.timeout(120)
def test_a_slot_whose_host_stays_unreachable_is_tried_again_while_the_others_work(
    cleanup: list[execpool.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replacement of a killed worker meets an unreachable host through several rounds of
    attempts (injected: a real outage of that length cannot be staged here); the other worker
    carries the map meanwhile, and once the host answers again the slot is back."""
    import execpool._pool.slots as slots

    monkeypatch.setattr(slots, "REPLACE_RETRY_DELAYS", (0.05, 0.05))
    monkeypatch.setattr(slots, "SLOT_RETRY_SECONDS", 0.3)
    outage = {"left": 0, "refused": 0}
    real = execpool.Group.makegateways

    def makegateways(self: execpool.Group, specs: object, **kw: object) -> list[execpool.Gateway]:
        if outage["left"] > 0:
            outage["left"] -= 1
            outage["refused"] += 1
            raise execpool.HostUnreachable("injected outage: connection refused")
        return real(self, specs, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(execpool.Group, "makegateways", makegateways)
    pool = execpool.Pool(2)
    cleanup.append(pool)
    pids = ready_pids(pool, 2)
    outage["left"] = 7  # two rounds of 3 attempts, and one more
    it = pool.imap_unordered(tasks.square_slowly, range(200))
    got = [it.next(HANG_GUARD) for _ in range(3)]
    os.kill(pids[0], signal.SIGKILL)
    got += list(it)
    assert collections.Counter(got) == collections.Counter(x * x for x in range(200))
    assert wait_until(lambda: outage["refused"] == 7 and sum(s.state == "ready" for s in pool.stats()) == 2, 60), (
        outage,
        pool.stats(),
    )
    assert len(set(pool.map(tasks.pid_of, range(20), chunksize=1))) == 2


# -- a pool worker that breaks the message contract ---------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("message", "field"),
    [
        (("results", "not-a-cid", b"", 0.0, None, []), "field cid"),
        (("results", 1, b"", "soon", None, []), "field busy"),
        (("results", 1, b"", 0.0, [(0, "not a pack")], []), "errors[].pack"),
        (("begun",), "has 1 fields, not 2"),
        (("whatever", 1), "unknown pool message kind"),
        ("not a tuple", "non-empty tuple"),
        (("results", 10**9, pickle.dumps([0]), 0.0, None, []), "a chunk this pool worker does not hold"),
        (("begun", 10**9), "a chunk this pool worker does not hold"),
        (("results", "<cid>", pickle.dumps([1, 2, 3]), 0.0, None, []), "field data holds 3 results for chunk"),
        (("results", "<cid>", pickle.dumps("no list"), 0.0, None, []), "field data holds a str for chunk"),
    ],
    ids=["cid", "busy", "errors", "arity", "kind", "type", "unsent-chunk", "unsent-begun", "count", "not-list"],
)
def test_a_malformed_message_from_a_pool_worker_fails_that_worker_not_the_pool(
    cleanup: list[execpool.Pool], capfd: pytest.CaptureFixture[str], message: object, field: str
) -> None:
    pool = execpool.Pool(2, retries=1)
    cleanup.append(pool)
    ready_pids(pool, 2)
    items = [(x, 3, message) for x in range(8)]
    with pytest.raises(execpool.WorkerLost) as info:
        pool.map(tasks.send_malformed_pool_message, items, chunksize=1)
    text = str(info.value)
    assert "task #3 of send_malformed_pool_message" in text, text
    assert "pool worker w" in text and "malformed message" in text and field in text, text
    assert "2 worker processes died running it (retries=1)" in text, text
    # the pool survives: the slots are started again and take the next map
    assert pool.map(tasks.send_malformed_pool_message, [(x, -1, None) for x in range(20)]) == [2 * x for x in range(20)]
    assert sum(s.restarts for s in pool.stats()) >= 2
    err = capfd.readouterr().err
    assert "malformed message" in err and "ending its worker process" in err, err
    assert "scheduler failed" not in err, err


# -- messages over the frame cap -----------------------------------------------------------------


def test_an_argument_over_the_frame_cap_fails_its_task_alone(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(["popen//max_frame=1M"] * 2)
    cleanup.append(pool)
    items = [b"a", bytes(3 << 20), b"bc"]
    with pytest.raises(
        ValueError, match=r"arguments of task #1 of len pickle to \d+ bytes, over the frame cap"
    ) as info:
        pool.map(len, items)
    assert "max_frame=" in str(info.value) and "EXECPOOL_MAX_FRAME_SIZE" in str(info.value)
    assert "rsync=" in str(info.value)
    got: list[object] = []
    it = pool.imap(len, items)
    for _ in range(3):
        try:
            got.append(next(it))
        except ValueError:
            got.append("too big")
    assert got == [1, "too big", 2]
    assert pool.map(len, [b"ok"] * 50) == [2] * 50  # the pool goes on, with the same workers
    assert sum(s.restarts for s in pool.stats()) == 0


def test_a_result_over_the_frame_cap_fails_its_task_alone(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(["popen//max_frame=1M"] * 2, trust_workers=False)
    cleanup.append(pool)
    it = pool.imap(bytes, [1, 3 << 20, 2], chunksize=3)
    assert next(it) == b"\0"
    with pytest.raises(ValueError, match=r"the task's result pickles to \d+ bytes, over the frame cap"):
        next(it)
    assert next(it) == b"\0\0"
    with pytest.raises(ValueError, match=r"chunk \(3 tasks\) pickle to \d+ bytes together"):
        pool.map(bytes, [400_000] * 3, chunksize=3)
    assert pool.map(len, [b"ok"] * 50) == [2] * 50
    assert sum(s.restarts for s in pool.stats()) == 0


def test_a_function_over_the_frame_cap_fails_its_call(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(["popen//max_frame=1M"])
    cleanup.append(pool)
    ballast = bytes(3 << 20)
    with pytest.raises(ValueError, match=r"the function of .* pickle to \d+ bytes, over the frame cap"):
        pool.map(lambda x: x + len(ballast), range(3))
    assert pool.map(len, [b"ok"] * 5) == [2] * 5
