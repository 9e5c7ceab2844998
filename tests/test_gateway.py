"""Gateways: start-up, remote_exec, remote_status, remote_info, exit, errors."""

from __future__ import annotations

import inspect
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

import execpool
from _helpers import INTERPRETERS, SUPPORTED, process_gone, wait_until


def test_every_supported_interpreter_is_found_in_ci() -> None:
    found = {i.version[:2] for i in INTERPRETERS}
    missing = [v for v in SUPPORTED if v not in found]
    if missing and os.environ.get("CI"):
        pytest.fail("CI must test every CPython 3.8-3.13; missing: %s" % missing)
    if missing:
        pytest.skip("not installed here: %s" % missing)


# -- remote_exec and remote_info on every interpreter ---------------------------------


def test_remote_exec_runs_in_a_separate_worker_process(anygw: execpool.Gateway) -> None:
    ch = anygw.remote_exec("import os; channel.send(os.getpid())")
    pid = ch.receive(10)
    assert isinstance(pid, int) and pid != os.getpid()
    assert pid == anygw.remote_info().pid


def test_remote_info_describes_the_worker_interpreter(
    anygw: execpool.Gateway, interpreter: execpool.Interpreter
) -> None:
    info = anygw.remote_info()
    assert info.version_info[:3] == interpreter.version
    assert info.version == "%d.%d.%d" % interpreter.version
    assert info.implementation == "cpython"
    assert info.platform == sys.platform
    assert info.cwd == os.getcwd()
    assert info.cpu_count and info.cpu_count >= 1
    real = anygw.remote_exec("import sys; channel.send(sys.executable)").receive(10)
    assert info.executable == real
    assert anygw.remote_info() is info  # cached


def test_remote_exec_function_with_keyword_arguments(anygw: execpool.Gateway) -> None:
    ch = anygw.remote_exec(_add, a=2, b=40)
    assert ch.receive(10) == 42


def _add(channel, a, b=0):  # type: ignore[no-untyped-def]
    channel.send(a + b)


def test_remote_exec_source_is_dedented(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(
        """
        x = 1
        if x:
            channel.send("dedented")
        """
    )
    assert ch.receive(10) == "dedented"


def test_remote_exec_namespace_has_channel_and_channelexec_name(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(
        "channel.send((__name__, type(channel).__name__, sorted(k for k in dir() if not k.startswith('__'))))"
    )
    name, chtype, names = ch.receive(10)
    assert name == "__channelexec__"
    assert chtype == "Channel"
    assert names == ["channel"]


def test_each_remote_exec_gets_a_fresh_namespace(gw: execpool.Gateway) -> None:
    gw.remote_exec("leaked = 1").waitclose(10)
    ch = gw.remote_exec("channel.send('leaked' in globals())")
    assert ch.receive(10) is False


def test_remote_exec_module_runs_its_source(
    gw: execpool.Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "remote_mod_for_test.py").write_text(
        "def helper():\n    return 'from module'\n\nif __name__ == '__channelexec__':\n    channel.send(helper())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import remote_mod_for_test  # type: ignore[import-not-found]

    assert gw.remote_exec(remote_mod_for_test).receive(10) == "from module"


def test_first_remote_exec_runs_in_the_main_thread(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("import threading; channel.send(threading.current_thread() is threading.main_thread())")
    assert ch.receive(10) is True


def test_remote_execs_run_concurrently(gw: execpool.Gateway) -> None:
    first = gw.remote_exec("channel.send('first waiting'); channel.send(channel.receive() + 1)")
    assert first.receive(10) == "first waiting"
    # the main thread is busy in `first`; a second exec still runs, in another thread
    second = gw.remote_exec("import threading; channel.send(threading.current_thread() is threading.main_thread())")
    assert second.receive(10) is False
    first.send(41)
    assert first.receive(10) == 42


def test_remote_exec_runs_in_main_thread_again_once_it_is_idle(gw: execpool.Gateway) -> None:
    gw.remote_exec("pass").waitclose(10)
    ch = gw.remote_exec("import threading; channel.send(threading.current_thread() is threading.main_thread())")
    assert ch.receive(10) is True


# -- what remote_exec refuses --------------------------------------------------------------------

GLOBAL_CONSTANT = 3


def _uses_global(channel):  # type: ignore[no-untyped-def]
    channel.send(GLOBAL_CONSTANT)


def _imports_inside(channel, n):  # type: ignore[no-untyped-def]
    import math

    def inner(x):  # type: ignore[no-untyped-def]
        return math.factorial(x)

    channel.send(inner(n))


def test_remote_exec_function_may_import_and_define_inside(gw: execpool.Gateway) -> None:
    assert gw.remote_exec(_imports_inside, n=5).receive(10) == 120


def test_remote_exec_refuses_a_function_using_globals(gw: execpool.Gateway) -> None:
    with pytest.raises(ValueError, match="GLOBAL_CONSTANT"):
        gw.remote_exec(_uses_global)


def test_remote_exec_refuses_lambdas_and_closures(gw: execpool.Gateway) -> None:
    with pytest.raises(ValueError, match="lambda"):
        gw.remote_exec(lambda channel: None)
    y = 1

    def closure(channel):  # type: ignore[no-untyped-def]
        channel.send(y)

    with pytest.raises(ValueError, match="closure"):
        gw.remote_exec(closure)


def test_remote_exec_refuses_keyword_arguments_the_function_does_not_take(gw: execpool.Gateway) -> None:
    with pytest.raises(TypeError, match=r"unexpected|got an"):
        gw.remote_exec(_add, a=1, c=2)


def test_remote_exec_refuses_keyword_arguments_that_cannot_travel(gw: execpool.Gateway) -> None:
    with pytest.raises(execpool.DumpError, match="object"):
        gw.remote_exec(_add, a=object())


def test_remote_exec_refuses_other_types_and_kwargs_with_source(gw: execpool.Gateway) -> None:
    with pytest.raises(TypeError, match="source string, a function or a module"):
        gw.remote_exec(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no keyword arguments"):
        gw.remote_exec("pass", x=1)


def test_remote_traceback_line_numbers_match_the_function_source(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(_fails_on_purpose)
    with pytest.raises(execpool.RemoteError) as info:
        ch.receive(10)
    text = info.value.formatted
    assert "ZeroDivisionError" in text
    assert "_fails_on_purpose" in text
    assert "channel.send(1 // 0)  # the failing line" in text  # the source line, shown from the sent source
    line = inspect.getsourcelines(_fails_on_purpose)[1] + 1
    assert 'test_gateway.py", line %d, in _fails_on_purpose' % line in text
    assert "<execpool _worker>" not in text  # the worker's own frame is left out


def _fails_on_purpose(channel):  # type: ignore[no-untyped-def]
    channel.send(1 // 0)  # the failing line


# -- remote_status ---------------------------------------------------------------------------


def test_syntax_error_in_sent_source_is_reported_plainly(gw: execpool.Gateway) -> None:
    with pytest.raises(execpool.RemoteError) as info:
        gw.remote_exec("x = (1,\nchannel.send(x)").waitclose(10)
    assert "SyntaxError" in info.value.formatted
    assert "<execpool _worker>" not in info.value.formatted


def test_remote_status_reports_execution_while_code_runs(gw: execpool.Gateway) -> None:
    idle = gw.remote_status()
    assert idle.numexecuting == 0
    assert idle.pid == gw.remote_info().pid
    ch = gw.remote_exec("channel.send('busy'); channel.receive()")
    assert ch.receive(10) == "busy"
    busy = gw.remote_status()
    assert busy.numexecuting == 1
    assert busy.numchannels >= 1
    ch.send("done")
    ch.waitclose(10)
    assert wait_until(lambda: gw.remote_status().numexecuting == 0)


def test_channel_tables_do_not_grow_with_finished_remote_execs(gw: execpool.Gateway) -> None:
    for i in range(60):
        ch = gw.remote_exec("channel.send(channel.receive() * 2)")
        ch.send(i)
        assert ch.receive(10) == 2 * i
        ch.waitclose(10)
    assert wait_until(lambda: gw.remote_status().numchannels == 0 and gw._numchannels() == 0, timeout=10)


# -- xspec options -----------------------------------------------------------------------------


def test_chdir_relative_is_created_and_entered(
    group: execpool.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    gw = group.makegateway("popen//chdir=sub/dir")
    assert gw.remote_info().cwd == str(tmp_path / "sub" / "dir")
    assert gw.remote_exec("import os; channel.send(os.getcwd())").receive(10) == str(tmp_path / "sub" / "dir")


def test_chdir_absolute(group: execpool.Group, tmp_path: Path) -> None:
    target = tmp_path / "abs"
    gw = group.makegateway("popen//chdir=%s" % target)
    assert target.is_dir()
    assert gw.remote_exec("import os; channel.send(os.getcwd())").receive(10) == str(target)


def test_chdir_that_cannot_be_created_is_a_start_error(group: execpool.Group, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(execpool.GatewayStartError, match="could not apply the spec"):
        group.makegateway("popen//chdir=%s/below" % blocker)


def test_nice_env_and_dont_write_bytecode(group: execpool.Group) -> None:
    gw = group.makegateway("popen//nice=5//env:EXECPOOL_T1=one//env:EXECPOOL_T2=two=2//dont_write_bytecode")
    got = gw.remote_exec(
        "import os, sys\n"
        "channel.send((os.nice(0), os.environ['EXECPOOL_T1'], os.environ['EXECPOOL_T2'], sys.dont_write_bytecode))"
    ).receive(10)
    assert got == (os.nice(0) + 5, "one", "two=2", True)


def test_python_is_split_like_a_command_line(group: execpool.Group) -> None:
    gw = group.makegateway("popen//python=env EXECPOOL_LAUNCHED=yes %s" % sys.executable)
    assert gw.remote_exec("import os; channel.send(os.environ.get('EXECPOOL_LAUNCHED'))").receive(10) == "yes"


def test_popen_gateway_helper_uses_the_given_python(interpreter: execpool.Interpreter) -> None:
    gw = execpool.PopenGateway(python=interpreter.path)
    try:
        assert gw.remote_info().version_info[:3] == interpreter.version
        assert gw in execpool.default_group
    finally:
        gw.exit()
    assert gw not in execpool.default_group


def test_unknown_spec_keys_are_warned_about(group: execpool.Group) -> None:
    with pytest.warns(UserWarning, match="pyhton"):
        group.makegateway("popen//pyhton=python3")


def test_specs_execpool_cannot_start_are_refused_clearly(group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError, match="installvia=gw7 names no other gateway"):
        group.makegateway("socket=localhost:8888//installvia=gw7")
    with pytest.raises(execpool.GatewayStartError, match="names no transport"):
        group.makegateway("python=python3")


# -- start-up failures -------------------------------------------------------------------------


def test_missing_interpreter_names_the_command(group: execpool.Group) -> None:
    with pytest.raises(execpool.InterpreterNotFound, match="python9"):
        group.makegateway("popen//python=python9")
    assert len(group) == 0


def test_missing_interpreter_message_names_the_gateway_and_spec(group: execpool.Group) -> None:
    with pytest.raises(execpool.InterpreterNotFound, match=r"gateway gw\d+ \(popen//python=python9\)"):
        group.makegateway("popen//python=python9")


def test_code_interrupted_by_exit_is_not_reported_as_its_own_failure(group: execpool.Group) -> None:
    gw = group.makegateway()
    ch = gw.remote_exec("import time; channel.send('running'); time.sleep(600)")
    assert ch.receive(10) == "running"
    gw.exit()
    with pytest.raises(execpool.GatewayLostError):
        ch.receive(10)
    assert isinstance(ch._getremoteerror(), execpool.GatewayLostError)  # the connection ended, no RemoteError


def test_missing_interpreter_behind_a_launcher(group: execpool.Group) -> None:
    with pytest.raises(execpool.InterpreterNotFound) as info:
        group.makegateway("popen//python=env python9")
    assert "python9" in str(info.value)
    assert "exit status 127" in str(info.value)


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7"])
def test_too_old_interpreter_is_refused(group: execpool.Group, version: str) -> None:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates = sorted(root.glob(version + ".*/bin/python"))
    if not candidates:
        pytest.skip("no Python %s installed under %s" % (version, root))
    with pytest.raises(execpool.InterpreterTooOld, match=r"3\.8"):
        group.makegateway("popen//python=%s" % candidates[0])


def test_a_command_that_is_not_python_fails_clearly(group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError) as info:
        group.makegateway("popen//python=cat")
    assert "did not start an execpool worker" in str(info.value)
    assert "cat" in str(info.value)


def test_a_failed_start_reports_worker_stderr_in_the_error_not_twice(
    group: execpool.Group, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(execpool.GatewayStartError, match="invalid option"):
        group.makegateway("popen//python=cat")
    assert "invalid option" not in capsys.readouterr().err


def test_a_command_that_echoes_garbage_fails_clearly(group: execpool.Group, tmp_path: Path) -> None:
    fake = tmp_path / "fakepython"
    fake.write_text("#!/bin/sh\nprintf 'this is not a frame at all........'\nsleep 30\n")
    fake.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(execpool.GatewayStartError, match="protocol error"):
        group.makegateway("popen//python=%s" % fake)
    assert time.monotonic() - start < 30  # hang guard: the sleeping fake was killed


def test_a_silent_command_times_out_and_is_killed(group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError, match="did not start within"):
        group.makegateway("popen//python=sh -c 'sleep 60'", start_timeout=1.0)


# -- exit and clean-up -------------------------------------------------------------------------


def test_exit_ends_the_worker_process(group: execpool.Group) -> None:
    gw = group.makegateway()
    pid = gw.remote_info().pid
    gw.exit()
    assert process_gone(pid)
    assert not gw.alive
    gw.exit()  # harmless twice
    with pytest.raises(execpool.ChannelClosedError, match=r"exited|ended"):
        gw.remote_exec("pass")


def test_exit_does_not_hang_on_a_sender_blocked_by_a_worker_that_does_not_read(group: execpool.Group) -> None:
    import threading

    gw = group.makegateway()
    pid = gw.remote_info().pid
    ch = gw.remote_exec("channel.send('stopped'); import os, signal; os.kill(os.getpid(), signal.SIGSTOP)")
    assert ch.receive(10) == "stopped"
    errors: list[BaseException] = []
    sent = [0]

    def flood() -> None:  # fills the pipe, then blocks in write() holding the write lock
        try:
            while True:
                ch.send(b"x" * 65536)
                sent[0] += 1
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=flood, daemon=True)
    t.start()

    def blocked() -> bool:
        before = sent[0]
        time.sleep(0.5)
        return sent[0] == before and gw._wlock.locked()

    assert wait_until(blocked, timeout=20)
    start = time.monotonic()
    gw.exit(timeout=2)
    assert time.monotonic() - start < 30  # hang guard
    t.join(20)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], OSError)
    assert process_gone(pid)


def test_exit_interrupts_a_worker_blocked_in_the_main_thread(group: execpool.Group) -> None:
    gw = group.makegateway()
    pid = gw.remote_info().pid
    ch = gw.remote_exec("import time; channel.send('sleeping'); time.sleep(600)")
    assert ch.receive(10) == "sleeping"
    start = time.monotonic()
    gw.exit(timeout=30)
    assert time.monotonic() - start < 30  # hang guard; in practice milliseconds
    assert process_gone(pid)


def test_exit_ends_a_worker_that_ignores_sigint_and_spins(group: execpool.Group) -> None:
    gw = group.makegateway()
    pid = gw.remote_info().pid
    ch = gw.remote_exec(
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); channel.send('spinning')\nwhile True: pass"
    )
    assert ch.receive(10) == "spinning"
    gw.exit(timeout=30)
    assert process_gone(pid)


def test_exit_kills_a_worker_stuck_where_it_cannot_be_interrupted(group: execpool.Group) -> None:
    gw = group.makegateway()
    pid = gw.remote_info().pid
    # SIGSTOP: the worker cannot react at all; only the master's kill ends it.
    os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    gw.exit(timeout=1.0)
    assert time.monotonic() - start < 20
    assert process_gone(pid)


def test_killed_worker_ends_channels_with_a_clear_error(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send('ready'); channel.receive()")
    assert ch.receive(10) == "ready"
    ended = []
    other = gw.remote_exec("channel.receive()")
    other.setcallback(ended.append, endmarker="END")
    os.kill(gw.remote_info().pid, signal.SIGKILL)
    with pytest.raises(execpool.GatewayLostError) as info:
        ch.receive(20)
    assert "SIGKILL" in str(info.value)
    assert isinstance(info.value, EOFError)
    assert wait_until(lambda: ended == ["END"], timeout=10)
    with pytest.raises(execpool.ChannelClosedError):
        ch.send(1)
    with pytest.raises(OSError):
        gw.remote_exec("pass")
    with pytest.raises(execpool.GatewayLostError):
        ch.waitclose(5)
    gw.join(10)


def test_remote_output_reaches_local_stderr_with_the_gateway_id(
    gw: execpool.Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = gw.remote_exec(
        """
        import os, sys
        print("printed remotely")
        sys.stderr.write("stderr remotely\\n")
        os.write(1, b"fd1 remotely\\n")
        os.write(2, b"fd2 remotely\\n")
        channel.send("still talking")
        """
    )
    assert ch.receive(10) == "still talking"
    ch.waitclose(10)
    expected = ["printed remotely", "stderr remotely", "fd1 remotely", "fd2 remotely"]
    seen = ""

    def all_seen() -> bool:
        nonlocal seen
        seen += capsys.readouterr().err
        return all("[%s] %s" % (gw.id, line) in seen for line in expected)

    assert wait_until(all_seen, timeout=10), seen


def test_one_thread_relays_the_stderr_of_every_local_worker_and_ends_with_them() -> None:
    # in a fresh interpreter: other tests' gateways in this process would keep the pump alive
    script = textwrap.dedent(
        """
        import threading, time, execpool

        def pumps():
            return [t for t in threading.enumerate() if t.name == "execpool-stderr"]

        gws = [execpool.makegateway("popen") for _ in range(6)]
        print("pumps while running", len(pumps()), flush=True)
        for g in gws:
            g.remote_exec("import os; os.write(2, b'line from %s\\\\n')" % g.id).waitclose(10)
        for g in gws:
            g.exit()
        deadline = time.monotonic() + 10
        while pumps() and time.monotonic() < deadline:
            time.sleep(0.05)
        print("pumps after exit", len(pumps()), flush=True)
        """
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pumps while running 1" in out.stdout, out.stdout
    assert "pumps after exit 0" in out.stdout, out.stdout
    for n in range(6):
        assert "[gw%d] line from gw%d" % (n, n) in out.stderr, out.stderr


def test_frame_like_bytes_written_to_stdout_do_not_corrupt_the_protocol(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(
        """
        import os, sys
        os.write(1, bytes([2, 0, 0, 0, 1, 0, 0, 0, 3]) + b"abc")
        sys.stdout.write("\\x02\\x00\\x00\\x00\\x01")
        sys.stdout.flush()
        channel.send("intact")
        """
    )
    assert ch.receive(10) == "intact"


def test_garbage_on_the_protocol_stream_ends_the_connection_cleanly(gw: execpool.Gateway) -> None:
    waiting = gw.remote_exec("channel.receive()")
    gw.remote_exec("import os; os.write(channel.gateway._io.wfd, b'\\xff' * 64)")
    with pytest.raises(execpool.GatewayLostError, match="protocol error"):
        waiting.receive(20)
    gw.join(20)


def test_garbage_sent_to_the_worker_makes_it_exit(gw: execpool.Gateway) -> None:
    pid = gw.remote_info().pid
    waiting = gw.remote_exec("channel.receive()")
    gw._io.write(b"\xee" * 32)  # not a frame: the worker must drop the connection and exit
    with pytest.raises(execpool.GatewayLostError):
        waiting.receive(20)
    assert wait_until(lambda: process_gone(pid) or gw._transport.poll() is not None, timeout=20)


def test_oversize_frame_header_is_refused_before_allocation(gw: execpool.Gateway) -> None:
    waiting = gw.remote_exec("channel.receive()")
    gw.remote_exec("import os, struct; os.write(channel.gateway._io.wfd, struct.pack('!BII', 2, 1, 2**32 - 1))")
    with pytest.raises(execpool.GatewayLostError, match="cap"):
        waiting.receive(20)


def test_message_over_the_frame_cap_is_refused_at_send_time(group: execpool.Group) -> None:
    gw = group.makegateway("popen//max_frame=4K")
    ch = gw.remote_exec("channel.send(len(channel.receive()))")
    with pytest.raises(execpool.DumpError, match="frame cap"):
        ch.send(b"x" * 5000)
    ch.send(b"x" * 3000)  # the channel is still usable
    assert ch.receive(10) == 3000


def test_repr_names_the_gateway(gw: execpool.Gateway) -> None:
    text = repr(gw)
    assert gw.id in text and "popen" in text and "alive" in text


def test_source_text_of_remote_exec_is_dedented_with_textwrap_rules(gw: execpool.Gateway) -> None:
    src = textwrap.indent("channel.send(1)\n", "        ")
    assert gw.remote_exec(src).receive(10) == 1


def test_exiting_twice_never_closes_a_file_that_reused_the_workers_descriptor() -> None:
    gw = execpool.makegateway()
    gw.exit()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]  # take the numbers the gateway freed
    try:
        gw.exit()
        for fd in fds:
            os.fstat(fd)  # EBADF if the second exit closed one of them
    finally:
        for fd in fds:
            os.close(fd)
