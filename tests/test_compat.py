"""execpool.compat: execnet's API and semantics on execpool, and pytest-xdist running on it.

The test process itself runs under pytest-xdist on the real execnet, so nothing
here calls :func:`execpool.compat.install` in-process: whatever installs the
stand-in runs in a separate master process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import execpool
import execpool.compat as execnet
from _helpers import run_master_script, wait_until
from sshd import SshServer

#: The public names of execnet 2.1 (its ``__all__``); every one must exist in the compat layer.
EXECNET_ALL = (
    "Channel DataFormatError DumpError Gateway Group HostNotFound LoadError MultiChannel RSync "
    "RemoteError TimeoutError XSpec __version__ default_group dump dumps load loads makegateway set_execmodel"
).split()


@pytest.fixture
def cgroup() -> Any:
    g = execnet.Group()
    yield g
    g.terminate(timeout=10)


# -- the names --------------------------------------------------------------------------


def test_every_public_name_of_execnet_is_there() -> None:
    missing = [name for name in EXECNET_ALL if not hasattr(execnet, name)]
    assert not missing
    for name in EXECNET_ALL:
        if name != "__version__":
            assert name in execnet.__all__


def test_the_installed_execnet_has_no_public_name_we_lack() -> None:
    real = pytest.importorskip("execnet")
    if getattr(real, "__execpool_compat__", False):
        pytest.skip("execnet is execpool's stand-in in this process")
    assert sorted(set(real.__all__) - set(dir(execnet))) == []


def test_names_are_execpools_own_classes() -> None:
    assert execnet.Channel is execpool.Channel
    assert execnet.Gateway is execpool.Gateway
    assert execnet.XSpec is execpool.XSpec
    # RSync: a subclass with execnet's semantics (targets forgotten after send, its callbacks)
    assert issubclass(execnet.RSync, execpool.RSync)
    assert execnet.RemoteError is execpool.RemoteError
    assert issubclass(execnet.Group, execpool.Group)
    assert execnet.HostNotFound is execpool.HostUnreachable
    assert execnet.LoadError is execpool.DataFormatError
    assert issubclass(execnet.TimeoutError, TimeoutError)


def test_submodules_carry_the_names_clients_import_from_them() -> None:
    assert execnet.gateway_base.ExecModel is execpool.ExecModel
    assert execnet.gateway_base.Channel is execpool.Channel
    assert execnet.multi.Group is execnet.Group
    assert execnet.multi.default_group is execnet.default_group
    assert execnet.xspec.XSpec is execpool.XSpec
    assert execnet.rsync.RSync is execnet.RSync
    assert execnet.gateway_bootstrap.HostNotFound is execpool.HostUnreachable


# -- groups, specs and execution models ------------------------------------------------------


def test_allocate_id_stores_the_id_in_the_spec_and_makegateway_uses_it(cgroup: Any) -> None:
    spec = execnet.XSpec("popen")
    cgroup.allocate_id(spec)
    assert spec.id == "gw0"
    cgroup.allocate_id(spec)  # re-entrant: the spec keeps its id
    assert spec.id == "gw0"
    gw = cgroup.makegateway(spec)
    assert gw.id == "gw0" and cgroup["gw0"] is gw
    other = execnet.XSpec("popen")
    cgroup.allocate_id(other)
    assert other.id == "gw1"


def test_group_execmodel_is_an_object_and_reaches_the_worker() -> None:
    g = execnet.Group(execmodel="main_thread_only")
    try:
        assert g.execmodel.backend == "main_thread_only"
        assert g.remote_execmodel.backend == "main_thread_only"
        gw = g.makegateway("popen")
        assert gw.execmodel.backend == "main_thread_only"
        assert gw.spec.execmodel == "main_thread_only"
        ch = gw.remote_exec("channel.send(channel.gateway.execmodel.backend)")
        assert ch.receive(30) == "main_thread_only"
    finally:
        g.terminate(timeout=10)


def test_execmodel_in_the_spec_wins(cgroup: Any) -> None:
    gw = cgroup.makegateway("execmodel=main_thread_only//popen")
    assert gw.execmodel.backend == "main_thread_only"
    gw2 = cgroup.makegateway("popen")
    assert gw2.execmodel.backend == "thread"


def test_set_execmodel_before_and_after_the_first_gateway(cgroup: Any) -> None:
    cgroup.set_execmodel("main_thread_only", "thread")
    assert (cgroup.execmodel.backend, cgroup.remote_execmodel.backend) == ("main_thread_only", "thread")
    cgroup.makegateway()
    with pytest.raises(ValueError, match="before the group's first gateway"):
        cgroup.set_execmodel("thread")


@pytest.mark.parametrize("name", ["gevent", "eventlet", "nonsense"])
def test_an_unsupported_execmodel_is_refused_clearly(name: str) -> None:
    with pytest.raises(ValueError, match="execmodel %r is not supported: execpool runs workers with threads" % name):
        execnet.Group(execmodel=name)
    with pytest.raises(ValueError, match="xspec 'execmodel=%s//popen': execmodel %r is not supported" % (name, name)):
        execpool.Group().makegateway("execmodel=%s//popen" % name)


def test_execmodel_primitives_on_both_sides(cgroup: Any) -> None:
    gw = cgroup.makegateway()
    model = gw.execmodel
    lock = model.RLock()
    with lock, lock:  # re-entrant
        pass
    event = model.Event()
    model.start(event.set)
    assert event.wait(10)
    q = model.queue.Queue()
    q.put(1)
    assert q.get(timeout=1) == 1
    ch = gw.remote_exec(
        """
        m = channel.gateway.execmodel
        lock, event, q = m.RLock(), m.Event(), m.queue.Queue()
        with lock, lock:
            m.start(q.put, (5,))
        event.set()
        channel.send((event.is_set(), q.get(timeout=10), m.get_ident() > 0))
        """
    )
    assert ch.receive(30) == (True, 5, True)


def test_xspec_equality_and_hashing_by_string() -> None:
    a, b = execnet.XSpec("popen//id=x"), execnet.XSpec("popen//id=x")
    assert a == b and hash(a) == hash(b) and a == "popen//id=x"
    assert a != execnet.XSpec("popen//id=y")
    assert len({a, b}) == 1
    assert execnet.XSpec("popen").chdir is None  # keys not given read as None


def test_xspec_samefilesystem_as_pytest_xdists_tests_use_it() -> None:
    assert execnet.XSpec("popen")._samefilesystem()
    assert execnet.XSpec("execmodel=main_thread_only//popen")._samefilesystem()
    assert not execnet.XSpec("popen//chdir=elsewhere")._samefilesystem()
    assert not execnet.XSpec("ssh=somehost")._samefilesystem()


# -- gateways and channels ---------------------------------------------------------------


def test_rinfo_is_cached_and_update_asks_again(cgroup: Any, tmp_path: Path) -> None:
    gw = cgroup.makegateway()
    info = gw._rinfo()
    assert info is gw._rinfo()
    assert info.executable == sys.executable
    assert info.version_info[:3] == tuple(sys.version_info[:3])
    assert info.platform == sys.platform
    assert info.cwd == os.getcwd()
    gw.remote_exec("import os; os.chdir(%r)" % str(tmp_path)).waitclose(30)
    assert gw._rinfo().cwd == os.getcwd()
    fresh = gw._rinfo(update=True)
    assert fresh.cwd == str(tmp_path)
    assert gw._rinfo() is fresh


def test_first_remote_exec_runs_in_the_workers_main_thread(cgroup: Any) -> None:
    gw = cgroup.makegateway("execmodel=main_thread_only//popen")
    ch = gw.remote_exec("import threading; channel.send(threading.current_thread() is threading.main_thread())")
    assert ch.receive(30) is True


def test_endmarker_arrives_when_the_connection_is_lost(cgroup: Any) -> None:
    gw = cgroup.makegateway()
    ch = gw.remote_exec("import os; channel.send(os.getpid()); channel.receive()")
    pid = ch.receive(30)
    got: list[Any] = []
    done = threading.Event()

    def callback(item: Any) -> None:
        got.append(item)
        if item == "END":
            done.set()

    ch.setcallback(callback, endmarker="END")
    os.kill(pid, 9)
    assert done.wait(30), got
    assert got == ["END"]
    err = ch._getremoteerror()
    assert isinstance(err, EOFError), err  # what pytest-xdist reads to tell a crash


def test_getremoteerror_after_a_remote_exception(cgroup: Any) -> None:
    gw = cgroup.makegateway()
    ch = gw.remote_exec("raise ValueError('boom')")
    with pytest.raises(execnet.RemoteError):
        ch.waitclose(30)
    err = ch._getremoteerror()
    assert isinstance(err, execnet.RemoteError) and "ValueError: boom" in str(err)
    ok = gw.remote_exec("pass")
    ok.waitclose(30)
    assert ok._getremoteerror() is None


def test_sending_on_a_closed_channel_raises_oserror(cgroup: Any) -> None:
    gw = cgroup.makegateway()
    ch = gw.remote_exec("channel.receive()")
    ch.close()
    with pytest.raises(OSError):
        ch.send(1)
    remote_closed = gw.remote_exec("pass")
    remote_closed.waitclose(30)
    with pytest.raises(OSError):
        remote_closed.send(1)


def test_remote_code_imports_execnet_on_compat_workers(cgroup: Any) -> None:
    gw = cgroup.makegateway()
    ch = gw.remote_exec(
        """
        import execnet
        from execnet.gateway_base import ExecModel
        try:
            execnet.dumps(object())
            refused = False
        except execnet.DumpError:
            refused = True
        data = execnet.loads(execnet.dumps({"a": [1, 2.5, None, b"x"]}))
        channel.send((execnet.__execpool_compat__, refused, data,
                      isinstance(channel, execnet.Channel), isinstance(channel.gateway.execmodel, ExecModel)))
        """
    )
    assert ch.receive(30) == (True, True, {"a": [1, 2.5, None, b"x"]}, True, True)


def test_code_on_a_compat_worker_can_start_gateways_of_its_own(cgroup: Any) -> None:
    """pytest-xdist's own suite under -n: a test on a worker runs pytest -n 1 in-process, whose
    ``import execnet`` is the worker's stand-in and must offer Group, RSync, XSpec, ..."""
    gw = cgroup.makegateway()
    ch = gw.remote_exec(
        """
        import os, execnet
        import execpool.compat
        execpool.compat.install()  # what -p execpool.compat.xdist does there: keeps the stand-in
        import execnet.multi
        group = execnet.Group(execmodel="main_thread_only")
        try:
            inner = group.makegateway(execnet.XSpec("popen"))
            pid = inner.remote_exec("import os; channel.send(os.getpid())").receive(30)
        finally:
            group.terminate(timeout=10)
        channel.send((pid != os.getpid(), execnet.multi.Group is execnet.Group, execnet.__execpool_compat__,
                      issubclass(execnet.RSync, object)))
        """
    )
    assert ch.receive(60) == (True, True, True, True)


def test_plain_execpool_workers_do_not_get_the_stand_in(group: execpool.Group) -> None:
    gw = group.makegateway()
    ch = gw.remote_exec(
        "import sys\n"
        "try:\n"
        "    import execnet\n"
        "except ImportError:\n"
        "    execnet = None\n"
        "channel.send(getattr(execnet, '__execpool_compat__', False))\n"
    )
    assert ch.receive(30) is False


def test_compat_worker_lets_running_code_finish_on_exit(cgroup: Any, tmp_path: Path) -> None:
    """execnet's workers give running code a while to finish when the master exits the
    gateway; pytest-xdist relies on it (its worker still reports after 'workerfinished')."""
    marker = tmp_path / "finished"
    gw = cgroup.makegateway()
    ch = gw.remote_exec("import time; channel.send('go'); time.sleep(0.5); open(%r, 'w').write('done')" % str(marker))
    assert ch.receive(30) == "go"
    gw.exit()
    assert marker.read_text() == "done"


def test_compat_worker_still_interrupts_code_that_outlives_the_drain(cgroup: Any) -> None:
    gw = cgroup.makegateway()
    ch = gw.remote_exec("import time; channel.send('go'); time.sleep(600)")
    assert ch.receive(30) == "go"
    start = time.monotonic()
    gw.exit()
    assert time.monotonic() - start < 60  # drain (5 s) + grace, not the sleep


def test_compat_worker_discards_stdout_as_execnets_do(tmp_path: Path) -> None:
    result = run_master_script(
        """
        import execpool, execpool.compat as execnet
        gw = execnet.makegateway()
        gw.remote_exec("print('to-stdout'); import sys; sys.stderr.write('to-stderr\\\\n')").waitclose(30)
        gw.exit()
        plain = execpool.makegateway()
        plain.remote_exec("print('plain-stdout')").waitclose(30)
        plain.exit()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "to-stdout" not in result.stderr + result.stdout
    assert "to-stderr" in result.stderr
    assert "plain-stdout" in result.stderr  # execpool's own workers keep printing visible


def test_unreachable_host_raises_hostnotfound(cgroup: Any) -> None:
    with pytest.raises(execnet.HostNotFound):
        cgroup.makegateway("ssh=nobody@127.0.0.1:1//sshbackend=paramiko")


# -- rsync, dump/load, better-than-seed behaviour -------------------------------------------------


def test_rsync_subclass_filter_and_report_hook(cgroup: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("a")
    (src / "pkg" / "b.pyc").write_text("b")
    (src / "c.txt").write_text("c")
    reported: list[tuple[str, str]] = []

    class HostRSync(execnet.RSync):
        def filter(self, path: str) -> bool:
            return not path.endswith(".pyc")

        def _report_send_file(self, gateway: Any, modified_rel_path: str) -> None:
            reported.append((gateway.id, modified_rel_path))

    gw = cgroup.makegateway()
    rs = HostRSync(src, verbose=False)
    rs.add_target(gw, str(tmp_path / "dst"), delete=True)
    rs.send()
    assert sorted(reported) == [("gw0", "c.txt"), ("gw0", "pkg/a.py")]
    assert (tmp_path / "dst" / "pkg" / "a.py").read_text() == "a"
    assert not (tmp_path / "dst" / "pkg" / "b.pyc").exists()


def test_dump_and_load_through_a_file() -> None:
    f = io.BytesIO()
    for obj in (1, "two", [3.0, None], {"k": (b"v",)}):
        execnet.dump(f, obj)
    f.seek(0)
    assert [execnet.load(f) for _ in range(4)] == [1, "two", [3.0, None], {"k": (b"v",)}]
    with pytest.raises(EOFError):
        execnet.load(f)
    with pytest.raises(execnet.DumpError):
        execnet.dump(io.BytesIO(), object())
    truncated = io.BytesIO(f.getvalue()[:-1])
    for _ in range(3):
        execnet.load(truncated)
    with pytest.raises(execnet.LoadError, match="truncated"):
        execnet.load(truncated)


def test_the_seeds_bugs_stay_fixed(cgroup: Any) -> None:
    """execnet refuses ints below -2**31 in some versions and wants a size for read()."""
    gw = cgroup.makegateway()
    ch = gw.remote_exec("channel.send(channel.receive() - 1)")
    ch.send(-(2**40))
    assert ch.receive(30) == -(2**40) - 1
    ch = gw.remote_exec("f = channel.makefile('w'); f.write('line1\\n'); f.write('rest'); f.close()")
    assert ch.makefile("r").read() == "line1\nrest"


# -- install() and the two ways of running a client unchanged --------------------------------------


def test_install_makes_import_execnet_give_the_compat_layer(tmp_path: Path) -> None:
    result = run_master_script(
        """
        import execpool.compat
        execpool.compat.install()
        import execnet, execnet.multi
        from execnet.gateway_base import ExecModel
        assert execnet is execpool.compat and execnet.multi.Group is execpool.compat.Group
        gw = execnet.makegateway("execmodel=main_thread_only//popen")
        ch = gw.remote_exec("import execnet; channel.send(execnet.__execpool_compat__)")
        print("remote", ch.receive(30))
        gw.exit()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "remote True" in result.stdout


def test_install_refuses_when_the_real_execnet_came_first(tmp_path: Path) -> None:
    pytest.importorskip("execnet")
    result = run_master_script(
        """
        import execnet
        import execpool.compat
        execpool.compat.install()
        """,
        tmp_path,
    )
    assert result.returncode != 0
    assert "the real execnet" in result.stderr and "before anything imports execnet" in result.stderr


XDIST_SUITE = {
    "test_one.py": """
        import os, pytest

        @pytest.mark.parametrize("i", range(12))
        def test_numbers(i):
            import execnet
            assert getattr(execnet, "__execpool_compat__", False), execnet
            assert os.environ["PYTEST_XDIST_WORKER"].startswith("gw")
            assert i < 11, "the one failure"
    """,
    "test_two.py": """
        import os, warnings

        def test_pid():
            with open(os.environ["PIDS"], "a") as f:
                f.write("%d\\n" % os.getpid())

        def test_warns():
            warnings.warn(UserWarning("from a worker"))

        def test_skipped():
            import pytest
            pytest.skip("on purpose")
    """,
}


def _write_suite(tmp_path: Path) -> Path:
    root = tmp_path / "suite"
    root.mkdir()
    for name, text in XDIST_SUITE.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def _run_pytest(argv: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **extra)
    for name in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(name, None)
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("how", ["plugin", "runner"])
def test_pytest_xdist_runs_unchanged_on_execpool(tmp_path: Path, how: str) -> None:
    pytest.importorskip("xdist")
    root = _write_suite(tmp_path)
    common = ["-n", "2", "-p", "no:cacheprovider", "-rA", "-W", "always::UserWarning"]
    if how == "plugin":
        argv = [sys.executable, "-m", "pytest", "-p", "execpool.compat.xdist", *common]
    else:
        # the console script next to this interpreter, found as a user would name it
        script = Path(sys.executable).parent / "pytest"
        program = "pytest" if script.exists() else "-m pytest"
        argv = [sys.executable, "-m", "execpool.compat", "--", *program.split(), *common]
    pids = tmp_path / "pids"
    result = _run_pytest(argv, root, PIDS=str(pids))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 13 passed, 1 skipped, 1 warning" in out, out
    assert "the one failure" in out and "from a worker" in out
    assert "created: 2/2 workers" in out
    worker_pid = int(pids.read_text())
    assert worker_pid != os.getpid()
    assert wait_until(lambda: not Path("/proc/%d" % worker_pid).exists(), timeout=30), "a worker was left"


def test_a_crashing_test_is_reported_as_a_crashed_worker(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    root = tmp_path / "suite"
    root.mkdir()
    (root / "test_crash.py").write_text(
        "import os\n\ndef test_crash():\n    os._exit(3)\n\ndef test_fine():\n    pass\n"
    )
    argv = [sys.executable, "-m", "pytest", "-p", "execpool.compat.xdist", "-n", "2", "-p", "no:cacheprovider"]
    result = _run_pytest(argv, root)
    out = result.stdout
    assert "crashed while running 'test_crash.py::test_crash'" in out, out + result.stderr
    assert "1 failed, 1 passed" in out, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "usage: python -m execpool.compat"),
        (["no-such-program-xyz"], "neither a file nor a program on PATH"),
        (["/bin/sh"], "is not a Python program"),
        (["./no-such-script.py"], "./no-such-script.py: no such file"),
    ],
)
def test_runner_usage_errors(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "execpool.compat", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_pytest_xdist_over_ssh_with_rsyncdir(tmp_path: Path, sshd_server: SshServer) -> None:
    """``--tx ssh=...`` and ``--rsyncdir``: xdist's RSync subclass (filter, report hook) on execpool."""
    pytest.importorskip("xdist")
    root = _write_suite(tmp_path)
    suite = root / "tests"
    suite.mkdir()
    (suite / "test_remote.py").write_text(
        "import os\n\n"
        "def test_runs_in_the_synced_copy():\n"
        "    import execnet\n"
        "    assert execnet.__execpool_compat__\n"
        "    assert os.getcwd().startswith(os.environ['REMOTE_BASE']), os.getcwd()\n"
    )
    remote = tmp_path / "remote"
    tx = "2*ssh=host-a//ssh_config=%s//python=%s//chdir=%s//env:REMOTE_BASE=%s" % (
        sshd_server.ssh_config,
        sys.executable,
        remote,
        remote,
    )
    argv = [sys.executable, "-m", "pytest", "-p", "execpool.compat.xdist", "-p", "no:cacheprovider", "-d"]
    argv += ["--tx", tx, "--rsyncdir", str(suite), str(suite), "-W", "ignore::DeprecationWarning"]
    result = _run_pytest(argv, root)
    assert "1 passed" in result.stdout, result.stdout + result.stderr
    assert (remote / "tests" / "test_remote.py").exists()
