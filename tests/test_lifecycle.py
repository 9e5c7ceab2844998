"""No worker outlives its master: atexit, Ctrl-C, kill -9 of the master; tracing files."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import _pooltasks as tasks
import execpool
from _helpers import process_gone, run_master_script, start_master_script, wait_until
from sshd import SshServer

STUCK = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); channel.send(1)\\nwhile True: pass"


def test_workers_end_when_the_master_exits_without_cleaning_up(tmp_path: Path) -> None:
    result = run_master_script(
        f"""
        import execpool
        a = execpool.makegateway()
        g = execpool.Group(["popen", "popen"])
        ch = g[0].remote_exec("{STUCK}")
        ch.receive(10)
        print(a.remote_info().pid, *[gw.remote_info().pid for gw in g], flush=True)
        # no exit(), no terminate(): atexit must end them, the stuck one included
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 3
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=20)


def test_workers_end_when_the_master_is_killed(tmp_path: Path) -> None:
    proc = start_master_script(
        """
        import execpool, time
        g = execpool.Group(["popen", "popen"])
        busy = g[1].remote_exec("import time; channel.send(1); time.sleep(600)")
        busy.receive(10)
        print(*[gw.remote_info().pid for gw in g], flush=True)
        time.sleep(600)
        """,
        tmp_path,
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2, proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # the workers see EOF on their stdin and exit (the busy one is interrupted)
    assert wait_until(lambda: all(process_gone(p) for p in pids), timeout=20)


def test_ctrl_c_in_the_master_ends_its_workers(tmp_path: Path) -> None:
    proc = start_master_script(
        """
        import execpool
        gw = execpool.makegateway()
        ch = gw.remote_exec("channel.receive()")
        try:
            print(gw.remote_info().pid, flush=True)
            ch.receive()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
        """,
        tmp_path,
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    assert wait_until(lambda: process_gone(pid), timeout=20)


def test_debug_level_1_writes_trace_files_on_both_sides(tmp_path: Path) -> None:
    for var in ("EXECPOOL_DEBUG", "EXECNET_DEBUG"):
        tracedir = tmp_path / var
        tracedir.mkdir()
        result = run_master_script(
            """
            import os, execpool
            gw = execpool.makegateway()
            gw.remote_exec("channel.send(1)").receive(10)
            print(os.getpid(), gw.remote_info().pid)
            gw.exit()
            """,
            tmp_path,
            env={var: "1", "TMPDIR": str(tracedir)},
        )
        assert result.returncode == 0, result.stderr
        master_pid, worker_pid = result.stdout.split()
        master_trace = tracedir / ("execpool-debug-%s" % master_pid)
        worker_trace = tracedir / ("execpool-debug-%s" % worker_pid)
        assert master_trace.exists() and worker_trace.exists(), list(tracedir.iterdir())
        assert "sent EXEC" in master_trace.read_text()
        assert "worker started" in worker_trace.read_text()


def test_debug_level_2_traces_to_stderr(tmp_path: Path) -> None:
    result = run_master_script(
        """
        import execpool
        gw = execpool.makegateway()
        gw.remote_exec("channel.send(1)").receive(10)
        gw.exit()
        """,
        tmp_path,
        env={"EXECPOOL_DEBUG": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert "[master " in result.stderr
    assert "[gw0] [worker gw0 " in result.stderr  # the worker's trace, relayed with its prefix


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("EXECPOOL_DEBUG", "EXECNET_DEBUG")}
    env["TMPDIR"] = str(tmp_path)
    import subprocess

    code = "import execpool; gw = execpool.makegateway(); gw.remote_exec('pass').waitclose(10); gw.exit()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert not list(tmp_path.glob("execpool-debug-*"))


def test_worker_output_written_before_exit_is_never_lost(tmp_path: Path) -> None:
    for _ in range(5):
        result = run_master_script(
            """
            import execpool
            gw = execpool.makegateway()
            gw.remote_exec("import sys; print('last words'); sys.stderr.write('and more' + chr(10))").waitclose(10)
            gw.exit()
            """,
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "[gw0] last words" in result.stderr and "[gw0] and more" in result.stderr, result.stderr


def test_ending_workers_while_they_start_prints_no_swallowed_interrupt(tmp_path: Path) -> None:
    """Shutdown's SIGINT must not land in the import machinery's weakref callbacks, where Python
    prints "Exception ignored ... KeyboardInterrupt" and drops it (the worker then hangs until
    its watchdog)."""
    proc = run_master_script(
        """
        import time, execpool
        for i in range(15):
            pool = execpool.Pool(2)
            time.sleep(0.03 + 0.01 * (i % 5))  # the workers are starting: bootstrap, imports
            pool.terminate()
        print("done")
        """,
        tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


# -- what the worker's code started ---------------------------------------------------------------

_LINGER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=%s)
channel.send(child.pid)
"""


def test_processes_the_worker_started_end_with_it_and_do_not_delay_its_exit() -> None:
    group = execpool.Group()
    try:
        gw = group.makegateway("popen")
        lingering = gw.remote_exec(_LINGER % "False").receive(30)  # it holds the worker's stderr too
        t = time.monotonic()
        gw.exit()
        took = time.monotonic() - t
        assert wait_until(lambda: process_gone(lingering), 10), "the task's child outlived its worker process"
        assert took < 1.5, took  # nothing waited for the pipes the child held (a hang guard)
    finally:
        group.terminate(timeout=5)


def test_a_daemon_in_a_session_of_its_own_is_left_running() -> None:
    group = execpool.Group()
    try:
        gw = group.makegateway("popen")
        daemon = gw.remote_exec(_LINGER % "True").receive(30)
        gw.exit()
        assert not process_gone(daemon), "a process that left the worker's session is not the worker's to end"
    finally:
        group.terminate(timeout=5)
        os.kill(daemon, signal.SIGKILL)


@pytest.mark.parametrize("where", ["popen", "ssh"])
def test_what_a_worker_started_ends_when_the_worker_is_killed_with_sigkill(
    where: str, request: pytest.FixtureRequest
) -> None:
    spec = "popen" if where == "popen" else request.getfixturevalue("sshd_server").spec("host-b")
    group = execpool.Group()
    try:
        gw = group.makegateway(spec)
        lingering = gw.remote_exec(_LINGER % "False").receive(30)
        os.kill(gw.remote_info().pid, signal.SIGKILL)  # nothing runs in the worker: its group guard ends the rest
        assert wait_until(lambda: process_gone(lingering), 5), "the task's child outlived its killed worker"
    finally:
        group.terminate(timeout=5)


def test_a_pool_leaves_nothing_its_tasks_started(tmp_path: Path) -> None:
    proc = run_master_script(
        """
        import os, subprocess, sys, time
        import execpool

        def spawn(x):
            return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]).pid

        if __name__ == "__main__":
            with execpool.Pool(2) as pool:
                pids = pool.map(spawn, range(4), chunksize=1)
                t = time.monotonic()
            print(time.monotonic() - t, *pids)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    took, *pids = proc.stdout.split()
    assert float(took) < 5, proc.stdout
    assert wait_until(lambda: all(process_gone(int(p)) for p in pids), 10), proc.stdout


def test_terminate_from_a_finalizer_at_exit_returns_and_ends_the_workers(tmp_path: Path) -> None:
    proc = run_master_script(
        """
        import execpool

        class Holder:  # what a wrapper (a joblib backend, say) does
            def __init__(self):
                self.pool = execpool.Pool(2)

            def __del__(self):
                self.pool.terminate()

        holder = Holder()
        print(*holder.pool.map(abs, [-1, -2]), *(gw.remote_info().pid for gw in holder.pool.group))
        """,
        tmp_path,
        timeout=30,  # a hang guard: this hung forever
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    one, two, *pids = proc.stdout.split()
    assert (one, two) == ("1", "2")
    assert wait_until(lambda: all(process_gone(int(p)) for p in pids), 10)


def test_a_program_that_ends_with_its_pool_still_starting_prints_nothing(tmp_path: Path) -> None:
    for _ in range(3):
        proc = run_master_script("import execpool\npool = execpool.Pool(4)\n", tmp_path, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr  # no "could not start" for starts the exit cut short


def test_ending_gateways_right_after_their_hello_prints_no_interrupt(tmp_path: Path) -> None:
    # the shutdown's interrupt can reach a worker before its main loop runs
    proc = run_master_script(
        """
        import execpool
        from execpool._shipped import poolworker

        for _ in range(40):
            group = execpool.Group()
            group.makegateway("popen").remote_exec(poolworker.serve)
            group.terminate(timeout=2)
        """,
        tmp_path,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    assert "KeyboardInterrupt" not in proc.stderr, proc.stderr


def _leave_a_pool_whose_tasks_left_sleeps(specs: Any) -> tuple[float, list[int]]:
    with execpool.Pool(specs) as pool:
        pids = pool.map(tasks.start_lingering_sleep, range(6), chunksize=1)
        t = time.monotonic()
    return time.monotonic() - t, pids


def test_leaving_an_ssh_pool_ends_what_its_tasks_started_at_once(sshd_server: SshServer) -> None:
    took, pids = _leave_a_pool_whose_tasks_left_sleeps([sshd_server.spec("host-b", "//workers=2")])
    try:
        assert took < 5, took
        assert wait_until(lambda: all(process_gone(p) for p in pids), 5), pids
    finally:
        _kill_all(pids)


def test_leaving_a_via_pool_ends_what_its_tasks_started_at_once() -> None:
    group = execpool.Group()
    relay = group.makegateway("popen//id=relay")
    group.makegateways(["popen//via=%s" % relay.id] * 2)
    took, pids = _leave_a_pool_whose_tasks_left_sleeps(group)  # the pool owns the group now
    try:
        assert took < 5, took
        assert wait_until(lambda: all(process_gone(p) for p in pids), 5), pids
    finally:
        _kill_all(pids)


def test_a_task_that_starts_a_daemon_in_its_own_session_keeps_it_over_ssh(sshd_server: SshServer) -> None:
    with execpool.Pool([sshd_server.spec("host-b")]) as pool:
        pid = pool.apply(tasks.start_daemon_sleep, (0,))
    try:
        time.sleep(0.5)
        assert not process_gone(pid), "a process that left the worker's session is not the worker's to end"
    finally:
        _kill_all([pid])


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
