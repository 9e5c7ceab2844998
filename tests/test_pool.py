"""Pool and Executor: the multiprocessing/concurrent.futures surface, how work travels, rsync,
trust_workers, progress and stats -- with real worker processes (failures: test_pool_failures.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import execpool
import pool_api_tasks as tasks
from _helpers import INTERPRETERS, wait_until
from execpool._payload import ModuleServer, RemoteTraceback

pytestmark = pytest.mark.timeout(120)

OTHER = [i for i in INTERPRETERS if i.version[:2] != sys.version_info[:2]]


@pytest.fixture(scope="module")
def pool() -> Any:
    p = execpool.Pool(2)
    yield p
    p.terminate()


def all_ready(p: execpool.Pool, n: int) -> bool:
    return sum(s.state == "ready" for s in p.stats()) == n


# -- the multiprocessing.Pool surface ------------------------------------------------------------


def test_map_returns_the_serial_results_in_order(pool: execpool.Pool) -> None:
    assert pool.map(tasks.square, range(1000)) == [x * x for x in range(1000)]


def test_map_of_an_empty_input_is_empty(pool: execpool.Pool) -> None:
    assert pool.map(tasks.square, []) == []
    assert list(pool.imap(tasks.square, [])) == []


def test_map_with_an_explicit_chunksize(pool: execpool.Pool) -> None:
    assert pool.map(tasks.square, range(50), chunksize=7) == [x * x for x in range(50)]


def test_map_of_many_trivial_tasks_uses_few_messages(pool: execpool.Pool) -> None:
    before = sum(s.bytes_sent for s in pool.stats())
    assert pool.map(tasks.count, range(100_000)) == list(range(100_000))
    # 100k ints pickled one per message would be far more than 2 MB with message framing.
    assert sum(s.bytes_sent for s in pool.stats()) - before < 2_000_000


def test_starmap_and_starmap_async(pool: execpool.Pool) -> None:
    pairs = [(i, 10 * i) for i in range(20)]
    assert pool.starmap(tasks.add, pairs) == [a + b for a, b in pairs]
    assert pool.starmap_async(tasks.add, pairs).get(30) == [a + b for a, b in pairs]


def test_apply_passes_positional_and_keyword_arguments(pool: execpool.Pool) -> None:
    assert pool.apply(tasks.kw, (1,), {"b": 2, "c": 3}) == (1, 2, 3)
    assert pool.apply_async(tasks.kw, (4,)).get(30) == (4, 0, 0)


def test_imap_is_ordered_and_imap_unordered_complete(pool: execpool.Pool) -> None:
    assert list(pool.imap(tasks.square, range(200))) == [x * x for x in range(200)]
    assert sorted(pool.imap_unordered(tasks.square, range(200))) == [x * x for x in range(200)]


def test_imap_reads_an_endless_generator_lazily(pool: execpool.Pool) -> None:
    pulled = itertools.count()

    def gen() -> Any:
        for i in itertools.count():
            next(pulled)
            yield i

    it = pool.imap(tasks.count, gen())
    assert list(itertools.islice(it, 50)) == list(range(50))
    wait_until(lambda: False, timeout=0.5)  # give the workers time to run ahead
    ahead = next(pulled)
    assert ahead <= execpool.pool.DEFAULT_MAX_PENDING + 50 + 1  # never more than the bound ahead of the consumer
    assert next(it) == 50


def test_imap_raises_a_task_error_at_its_position_and_goes_on(pool: execpool.Pool) -> None:
    it = pool.imap(tasks.fail_on, range(6), chunksize=1)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="task got 3"):
        next(it)
    assert list(it) == [4, 5]


def test_imap_next_timeout_raises_multiprocessing_timeout(pool: execpool.Pool) -> None:
    it = pool.imap(tasks.version_after, [1], chunksize=1)
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.001)
    assert it.next(timeout=30)[0] == 1


def test_map_async_callback_and_async_result_states(pool: execpool.Pool) -> None:
    slow = pool.apply_async(tasks.version_after, (1, 0.5))
    assert not slow.ready()
    with pytest.raises(ValueError, match="not ready"):
        slow.successful()
    got: list[Any] = []
    done = threading.Event()
    r = pool.map_async(tasks.square, range(5), callback=lambda v: (got.append(v), done.set()))
    r.wait(30)
    assert r.ready() and r.successful()
    assert r.get() == [0, 1, 4, 9, 16]
    assert done.wait(10) and got == [[0, 1, 4, 9, 16]]
    assert slow.get(30)[0] == 1 and slow.successful()


def test_map_async_error_callback_gets_the_first_failure(pool: execpool.Pool) -> None:
    errors: list[BaseException] = []
    r = pool.map_async(tasks.fail_on, range(10), error_callback=errors.append)
    with pytest.raises(ValueError, match="task got 3"):
        r.get(30)
    assert r.ready() and not r.successful()
    assert wait_until(lambda: len(errors) == 1) and isinstance(errors[0], ValueError)


def test_get_with_a_timeout_raises_multiprocessing_timeout(pool: execpool.Pool) -> None:
    r = pool.apply_async(tasks.version_after, (1, 0.5))
    with pytest.raises(multiprocessing.TimeoutError, match="did not arrive"):
        r.get(timeout=0.01)
    assert r.get(30)[0] == 1


def test_task_exception_keeps_its_type_and_carries_the_remote_traceback(pool: execpool.Pool) -> None:
    with pytest.raises(tasks.CustomError, match="custom failure") as info:
        pool.map(tasks.raise_custom, [1])
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_custom" in str(cause) and "pool_api_tasks.py" in str(cause)
    assert "worker w" in str(cause) and "Python %d.%d" % sys.version_info[:2] in str(cause)
    if sys.version_info >= (3, 11):
        assert any("raised on pool worker" in n for n in info.value.__notes__)


def test_a_result_that_cannot_be_pickled_is_that_tasks_error(pool: execpool.Pool) -> None:
    with pytest.raises(TypeError, match="cannot be sent to the master"):
        pool.map(tasks.return_unpicklable, [1])
    assert pool.map(tasks.square, [3]) == [9]


def test_arguments_that_cannot_be_pickled_fail_with_a_clear_error(pool: execpool.Pool) -> None:
    with pytest.raises(TypeError, match="cannot send the arguments of tasks #0"):
        pool.map(tasks.count, [threading.Lock()])


def test_bad_arguments_are_refused_at_once() -> None:
    for kwargs, exc in [
        ({"specs": 0}, ValueError),
        ({"specs": True}, TypeError),
        ({"specs": ["popen//workers=0"]}, ValueError),
        ({"specs": ["popen//workers=many"]}, ValueError),
        ({"specs": ["popen//id=a//workers=2"]}, ValueError),
        ({"retries": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"maxtasksperchild": 0}, ValueError),
        ({"rsync": ["/nonexistent/dir"]}, ValueError),
    ]:
        with pytest.raises(exc):
            execpool.Pool(**kwargs)


def test_chunksize_must_be_positive(pool: execpool.Pool) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(tasks.square, [1], chunksize=0)
    with pytest.raises(TypeError, match="not callable"):
        pool.map(42, [1])  # type: ignore[arg-type]


def test_processes_keyword_works_as_in_multiprocessing() -> None:
    with execpool.Pool(processes=2) as p:
        assert p.map(tasks.square, range(4)) == [0, 1, 4, 9]
        assert len(p.stats()) == 2
    with pytest.raises(TypeError, match="not both"):
        execpool.Pool(2, processes=2)


def test_closed_pool_refuses_work_and_join_needs_close() -> None:
    p = execpool.Pool(1)
    try:
        with pytest.raises(ValueError, match=r"close\(\) or terminate\(\)"):
            p.join()
        r = p.map_async(tasks.square, range(10))
        p.close()
        with pytest.raises(ValueError, match="not running"):
            p.map(tasks.square, [1])
        p.join(60)
        assert r.get(0) == [x * x for x in range(10)]
    finally:
        p.terminate()


def test_context_manager_waits_for_submitted_work_then_ends_workers() -> None:
    with execpool.Pool(2) as p:
        assert wait_until(lambda: all_ready(p, 2), timeout=60)
        pids = [gw.remote_info().pid for gw in p.group]
        r = p.map_async(tasks.version_after, range(4), chunksize=1)
    assert r.ready(), "leaving the block returned before the submitted work was done"
    assert [x for x, _ in r.get(0)] == [0, 1, 2, 3]
    from _helpers import process_gone

    assert all(wait_until(lambda pid=pid: process_gone(pid)) for pid in pids)


def test_pool_group_gives_the_low_level_api(pool: execpool.Pool) -> None:
    assert wait_until(lambda: all_ready(pool, 2))
    mc = pool.group.remote_exec("import os; channel.send(os.getpid())")
    pids = sorted(mc.receive_each())
    assert len(pids) == 2 and len(set(pids)) == 2


# -- how functions travel --------------------------------------------------------------------------


def test_lambdas_and_closures_travel_by_value_to_the_masters_python(pool: execpool.Pool) -> None:
    k = 7
    assert pool.map(lambda x: x + k, [1, 2]) == [8, 9]

    def nested(x: int) -> int:
        return x * k

    assert pool.map(nested, [1, 2]) == [7, 14]


@pytest.mark.skipif(not OTHER, reason="needs a CPython of another minor version than the master's")
def test_by_value_function_fails_before_dispatch_on_another_python() -> None:
    other = OTHER[0]
    with execpool.Pool([other.spec, "popen"]) as p:
        with pytest.raises(ValueError) as info:
            p.map(lambda x: x, [1])
        msg = str(info.value)
        assert "<lambda>" in msg and "by value" in msg and other.short_version in msg
        assert "test_pool.py" in msg
        assert p.map(tasks.square, [1, 2, 3]) == [1, 4, 9]  # by reference: any Python
        assert all(s.tasks == 0 or s.python for s in p.stats())


@pytest.mark.skipif(not OTHER, reason="needs a CPython of another minor version than the master's")
def test_arguments_that_need_cloudpickle_fail_without_a_worker_of_the_masters_python() -> None:
    with execpool.Pool([OTHER[0].spec]) as p:
        with pytest.raises(ValueError, match=r"the arguments of count .* travel by value .* no such worker"):
            p.map(tasks.count, [lambda: 1])
        assert p.map(tasks.count, [1]) == [1]


def test_mixed_python_versions_map_equals_serial_map() -> None:
    """One pool over every CPython found (3.8-3.13 in CI): the map's results equal the serial
    map's, and every version took part."""
    if os.environ.get("CI"):
        assert {i.version[:2] for i in INTERPRETERS} >= {(3, m) for m in range(8, 14)}
    specs = [i.spec for i in INTERPRETERS]
    with execpool.Pool(specs) as p:
        assert wait_until(lambda: all_ready(p, len(specs)), timeout=60)
        out = p.map(tasks.version_after, range(4 * len(specs)), chunksize=1)
        assert [x for x, _ in out] == list(range(4 * len(specs)))
        assert {v for _, v in out} == {i.version[:2] for i in INTERPRETERS}
        assert p.starmap(tasks.add, [(i, i) for i in range(300)]) == [2 * i for i in range(300)]
        stats = p.stats()
    assert sorted(s.python for s in stats) == sorted(".".join(map(str, i.version)) for i in INTERPRETERS)


def _write_package(root: Path, name: str, factor: int) -> None:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .core import times\nORIGIN = __file__\n")
    (pkg / "core.py").write_text("def times(x):\n    return x * %d\n" % factor)


def test_modules_the_worker_lacks_are_served_from_the_master(tmp_path: Path) -> None:
    _write_package(tmp_path, "served_pkg_a", 5)
    sys.path.insert(0, str(tmp_path))
    try:
        import served_pkg_a  # type: ignore[import-not-found]

        specs = [i.spec for i in INTERPRETERS[:1]] + ["popen"]
        with execpool.Pool(specs) as p:
            assert p.map(served_pkg_a.times, range(5)) == [0, 5, 10, 15, 20]
            origin = p.apply(tasks.import_and_call, ("served_pkg_a.core", "times", 2))
            assert origin == 10
            assert {"served_pkg_a", "served_pkg_a.core"} <= set(p._sched.modules.served)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(tmp_path))
        for m in [m for m in sys.modules if m.startswith("served_pkg_a")]:
            del sys.modules[m]


def test_by_value_functions_use_the_masters_cloudpickle_even_where_another_is_installed(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "cloudpickle"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('an old cloudpickle that cannot load this')\n")
    spec = "popen//env:PYTHONPATH=%s" % fake.parent
    with execpool.Pool([spec]) as p:
        assert str(fake.parent) in p.apply(tasks.module_attr, ("sys", "path"))  # the old one is importable
        k = 3
        assert p.map(lambda x: x * k, [1, 2]) == [3, 6]
        origin = p.apply(tasks.module_attr, ("cloudpickle", "__file__"))
        assert not origin.startswith(str(fake.parent))


def test_without_module_serving_a_missing_module_is_an_import_error(tmp_path: Path) -> None:
    _write_package(tmp_path, "served_pkg_b", 2)
    sys.path.insert(0, str(tmp_path))
    try:
        import served_pkg_b  # type: ignore[import-not-found]

        with execpool.Pool(1, serve_modules=False) as p:
            with pytest.raises(ModuleNotFoundError, match="served_pkg_b"):
                p.map(served_pkg_b.times, [1])
            with pytest.raises(ModuleNotFoundError, match="served_pkg_b"):  # every task of a chunk fails so
                p.map(served_pkg_b.times, range(50), chunksize=10)
    finally:
        sys.path.remove(str(tmp_path))
        for m in [m for m in sys.modules if m.startswith("served_pkg_b")]:
            del sys.modules[m]


def test_module_server_never_serves_stdlib_extensions_main_or_unimported_parents(tmp_path: Path) -> None:
    server = ModuleServer()
    assert server.answer("json") is None  # stdlib: the worker has its own
    assert server.answer("_pickle") is None or not server.answer("_pickle")  # builtin / extension
    assert server.answer("__main__") is None
    assert server.answer("no_such_module_xyz") is None
    assert server.answer(".relative") is None
    assert server.answer(42) is None
    _write_package(tmp_path, "never_imported_pkg", 1)
    sys.path.insert(0, str(tmp_path))
    try:
        assert server.answer("never_imported_pkg.core") is None  # answering would import the parent
        assert "never_imported_pkg" not in sys.modules
        answer = server.answer("never_imported_pkg")
        assert answer is not None and answer[2] is True and "from .core" in answer[0]
        assert "never_imported_pkg" not in sys.modules  # looking up a top-level module imports nothing
    finally:
        sys.path.remove(str(tmp_path))
    cp = server.answer("cloudpickle")
    assert cp is not None and cp[2] is True  # a pure-Python site-package is served


# -- trust_workers=False ---------------------------------------------------------------------------


def test_untrusted_workers_return_builtin_values_and_builtin_exceptions() -> None:
    with execpool.Pool(1, trust_workers=False) as p:
        assert p.map(tasks.kw, [1, 2]) == [(1, 0, 0), (2, 0, 0)]
        with pytest.raises(ValueError, match="task got 3"):
            p.map(tasks.fail_on, [3])
        with pytest.raises(execpool.RemoteError, match="CustomError: custom failure"):
            p.map(tasks.raise_custom, [1])
        with pytest.raises(TypeError, match="trust_workers=False allows only builtin values"):
            p.map(tasks.make_custom, [1])


@pytest.mark.parametrize("trusted", [True, False])
def test_a_crafted_result_pickle_runs_code_only_when_workers_are_trusted(tmp_path: Path, trusted: bool) -> None:
    sentinel = tmp_path / "pwned"
    with execpool.Pool(1, trust_workers=trusted) as p:
        # The task makes its worker send a crafted pickle (calling os.system) as the result.
        if trusted:
            assert p.apply(tasks.send_crafted_result, (str(sentinel),)) == 0  # os.system's status
            assert sentinel.exists()  # what trust_workers=False protects against
        else:
            with pytest.raises(execpool.ExecpoolError, match=r"cannot load the results.*refused to load posix\.system"):
                p.apply(tasks.send_crafted_result, (str(sentinel),))
            assert not sentinel.exists()


# -- rsync before dispatch -------------------------------------------------------------------------


def _project(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "proj" / "synced_mod_pkg"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("def hello(x):\n    return 'hello %s' % x\n")
    data = tmp_path / "proj" / "data"
    data.mkdir()
    (data / "x.txt").write_text("payload")
    return code, data


def test_rsync_syncs_to_a_host_that_cannot_see_the_masters_files(tmp_path: Path) -> None:
    code, data = _project(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    spec = "popen//env:EXECPOOL_HOSTKEY=elsewhere//env:HOME=%s//workers=2" % home
    with execpool.Pool([spec], rsync=[str(code), str(data)]) as p:
        assert p.map(tasks.read_file, ["data/x.txt"] * 4) == ["payload"] * 4
        assert p.apply(tasks.import_and_call, ("synced_mod_pkg", "hello", 1)) == "hello 1"
        _, cwd, path = p.apply(tasks.whoami)
        assert cwd.startswith(str(home / ".cache" / "execpool" / "sync")) and cwd in path
        assert (Path(cwd) / "synced_mod_pkg" / "__init__.py").read_text() == (code / "__init__.py").read_text()
        assert len(p._sched.hostsync.synced) == 2  # two directories, one host: each synced once
        more = tmp_path / "proj" / "later_pkg"
        more.mkdir()
        (more / "__init__.py").write_text("VALUE = 41\n")
        p.rsync(str(more))
        assert p.apply(tasks.module_attr, ("later_pkg", "VALUE")) == 41


def test_rsync_to_a_worker_that_sees_the_masters_directory_only_extends_sys_path(tmp_path: Path) -> None:
    code, _ = _project(tmp_path)
    with execpool.Pool(1, rsync=[str(code)]) as p:
        _, cwd, path = p.apply(tasks.whoami)
        assert str(code.parent) in path and cwd == os.getcwd()
        assert p.apply(tasks.import_and_call, ("synced_mod_pkg", "hello", 2)) == "hello 2"
        assert p._sched.hostsync.synced == {}


# -- progress, stats -------------------------------------------------------------------------------


def test_progress_callable_receives_counts() -> None:
    seen: list[tuple[int, int | None]] = []
    with execpool.Pool(2, progress=lambda done, total: seen.append((done, total))) as p:
        p.map(tasks.square, range(100))
    assert seen[-1] == (100, 100)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_progress_bar_reaches_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    with execpool.Pool(1, progress=True) as p:
        p.map(tasks.square, range(30))
    assert "30/30" in capsys.readouterr().err


def test_stats_account_for_every_task(pool: execpool.Pool) -> None:
    assert wait_until(lambda: all_ready(pool, 2), timeout=60)  # a loaded machine may start one late
    before = sum(s.tasks for s in pool.stats())
    pool.map(tasks.square, range(500))
    stats = pool.stats()
    assert sum(s.tasks for s in stats) - before == 500
    for s in stats:
        assert s.python == "%d.%d.%d" % sys.version_info[:3] and s.host and s.state == "ready"
        assert s.busy >= 0 and s.idle >= 0 and s.bytes_sent > 0 and s.bytes_received > 0


# -- Executor --------------------------------------------------------------------------------------


def test_executor_submit_and_map() -> None:
    with execpool.Executor(2) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        f = ex.submit(tasks.kw, 1, b=2, c=3)
        assert f.result(30) == (1, 2, 3)
        assert list(ex.map(tasks.add, range(5), range(5))) == [0, 2, 4, 6, 8]
        bad = ex.submit(tasks.fail_on, 3)
        assert isinstance(bad.exception(30), ValueError)
        with pytest.raises(concurrent.futures.TimeoutError):
            list(ex.map(tasks.version_after, [1, 2], [5.0, 5.0], timeout=0.2))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)


def test_executor_works_with_asyncio_run_in_executor() -> None:
    async def main(ex: execpool.Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(ex, tasks.square, i) for i in range(10))))

    with execpool.Executor(2) as ex:
        assert asyncio.run(main(ex)) == [i * i for i in range(10)]


# -- ssh and the demo ------------------------------------------------------------------------------


def test_pool_over_ssh_hosts_uses_one_login_per_host(sshd_server: Any) -> None:
    specs = [sshd_server.spec("host-a", "//workers=2"), sshd_server.spec("host-b")]
    with execpool.Pool(specs) as p:
        assert p.map(tasks.square, range(300)) == [x * x for x in range(300)]
        assert wait_until(lambda: all_ready(p, 3), timeout=60)
        hosts = [str(gw.spec) for gw in p.group if gw.spec.ssh]
        assert sorted(h.split("//")[0] for h in hosts) == ["ssh=host-a", "ssh=host-b"]
        assert sum(1 for gw in p.group if gw.spec.via) == 2


def test_rsync_over_ssh_syncs_each_distinct_host_once_before_dispatch(sshd_server: Any, tmp_path: Path) -> None:
    code, data = _project(tmp_path)
    homes = {name: tmp_path / name for name in ("home-a", "home-b")}
    for h in homes.values():
        h.mkdir()
    specs = [
        sshd_server.spec("host-a", "//workers=2//env:EXECPOOL_HOSTKEY=a//env:HOME=%s" % homes["home-a"]),
        sshd_server.spec("host-b", "//env:EXECPOOL_HOSTKEY=b//env:HOME=%s" % homes["home-b"]),
    ]
    with execpool.Pool(specs, rsync=[str(code), str(data)]) as p:
        assert wait_until(lambda: all_ready(p, 3), timeout=60)
        out = p.map(tasks.read_file, ["data/x.txt"] * 30, chunksize=1)
        assert out == ["payload"] * 30
        assert sorted(p._sched.hostsync.synced) == sorted((host, str(d)) for host in "ab" for d in (code, data))
        cwds = {cwd for _, cwd, _ in p.map(tasks.whoami, range(30), chunksize=1)}
    assert all(any(c.startswith(str(h)) for h in homes.values()) for c in cwds)
    for h in homes.values():
        (synced,) = (h / ".cache" / "execpool" / "sync").iterdir()
        assert (synced / "data" / "x.txt").read_text() == "payload"
        assert (synced / "synced_mod_pkg" / "__init__.py").exists()


def test_execpool_demo_runs_a_checked_map_on_every_local_python() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "execpool", "demo", "--tasks", "24", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "all equal" in proc.stdout
    for i in INTERPRETERS:
        assert ".".join(map(str, i.version)) in proc.stdout


def test_pool_in_a_script_with_a_main_function(tmp_path: Path) -> None:
    from _helpers import run_master_script

    proc = run_master_script(
        textwrap.dedent(
            """
            import execpool

            def triple(x):
                return 3 * x

            if __name__ == "__main__":
                with execpool.Pool(2) as pool:
                    print(pool.map(triple, range(5)))
            """
        ),
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 3, 6, 9, 12]"


def test_a_pool_over_an_existing_group_uses_its_gateways() -> None:
    group = execpool.Group(["popen", "popen"])
    try:
        pids = sorted(gw.remote_info().pid for gw in group)
        with execpool.Pool(group) as p:
            assert p.group is group
            got = set(p.map(tasks.version_after, range(8), chunksize=1))
            assert {x for x, _ in got} == set(range(8))
            assert {pid for pid, _, _ in p.map(tasks.whoami, range(40), chunksize=1)} <= set(pids)
    finally:
        group.terminate(5)


def test_an_unclosed_pool_warns_and_ends_its_workers_when_collected() -> None:
    import gc

    from _helpers import process_gone

    p = execpool.Pool(1)
    pid = p.apply(tasks.whoami)[0]
    with pytest.warns(ResourceWarning, match="unclosed running execpool.Pool"):
        del p
        gc.collect()
    assert wait_until(lambda: process_gone(pid), timeout=30)


def test_leaving_a_with_block_runs_an_unread_imap_to_its_end() -> None:
    with execpool.Pool(2) as p:
        it = p.imap(tasks.count, range(3 * execpool.pool.DEFAULT_MAX_PENDING))  # more than the read-ahead bound
    assert sum(it) == sum(range(3 * execpool.pool.DEFAULT_MAX_PENDING))


def test_async_result_callbacks_have_run_when_get_returns(pool: execpool.Pool) -> None:
    import time

    calls: list[str] = []

    def slow_callback(value: Any) -> None:
        time.sleep(0.05)
        calls.append("callback")

    def slow_error_callback(exc: BaseException) -> None:
        time.sleep(0.05)
        calls.append("error_callback")

    for _ in range(5):
        calls.clear()
        pool.apply_async(tasks.square, (2,), callback=slow_callback).get(30)
        assert calls == ["callback"]
        r = pool.apply_async(tasks.fail_on, (3,), error_callback=slow_error_callback)
        r.wait(30)
        assert calls == ["callback", "error_callback"]


def test_a_pool_left_running_at_interpreter_exit_ends_quietly(tmp_path: Path) -> None:
    from _helpers import run_master_script

    proc = run_master_script(
        """
        import execpool
        pool = execpool.Pool(1)
        print(pool.map(abs, [-1, -2]))
        """,
        tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[1, 2]"
    assert proc.stderr == "", proc.stderr


def test_each_task_of_a_chunk_runs_once_when_some_of_them_fail(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    with execpool.Pool(1) as p:
        out = p.imap(tasks.log_and_fail_on_three, [(str(log), x) for x in range(10)], chunksize=10)
        got = []
        for _ in range(10):
            try:
                got.append(next(out))
            except ValueError as exc:
                got.append(str(exc))
    assert got == [0, 10, 20, "task 3 fails", 40, 50, "task 6 fails", 70, 80, 90]
    assert sorted(int(line) for line in log.read_text().split()) == list(range(10))  # once each


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_a_task_raising_stopiteration_fails_its_call_instead_of_ending_the_iteration(trusted: bool) -> None:
    with execpool.Pool(2, trust_workers=trusted) as p:
        for make in (p.imap, p.imap_unordered):
            got = []
            with pytest.raises(RuntimeError, match="raised StopIteration") as info:
                for x in make(tasks.stop_at_five, range(10), chunksize=1):
                    got.append(x)
            assert isinstance(info.value.__cause__, StopIteration)
            assert 5 not in got
        with pytest.raises(RuntimeError, match="raised StopIteration"):
            p.map(tasks.stop_at_five, range(10))
        assert p.map(tasks.stop_at_five, range(5)) == list(range(5))


def test_the_pools_group_is_usable_right_after_the_pool_is_made() -> None:
    # the gateways are in the group while their worker processes still start: calls wait for them
    for _ in range(3):
        with execpool.Pool(2) as p:
            got = [ch.receive(30) for ch in p.group.remote_exec("channel.send(6 * 7)")]
            assert got and got == [42] * len(got)
            assert all(gw.remote_info().pid > 0 for gw in p.group)
            assert all(gw.remote_status().numexecuting >= 0 for gw in p.group)


def test_a_call_on_a_gateway_whose_start_failed_says_so() -> None:
    group = execpool.Group()
    gw = execpool.Gateway(execpool.XSpec("popen//python=/nonexistent/python3"), "gw-bad", group)
    gw._hello_event.set()  # as a connection that ended before the hello leaves it
    for call in (lambda: gw.remote_exec("pass"), gw.remote_info, gw.remote_status):
        with pytest.raises(execpool.GatewayStartError, match=r"gw-bad .*its worker process did not start"):
            call()


def test_big_arguments_after_tiny_ones_of_the_same_function_travel_in_small_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the function's time per task carries over from the first map; its arguments' size must not
    from execpool import _payload

    sizes: list[int] = []
    real = _payload.dumps_items

    def recording(items: list[Any]) -> Any:
        sizes.append(len(items))
        return real(items)

    with execpool.Pool(2) as p:
        assert p.map(len, [b"x"] * 20000) == [1] * 20000
        monkeypatch.setattr(_payload, "dumps_items", recording)
        big = [bytes([i]) * (1 << 20) for i in range(40)]  # distinct: pickle would share one object
        assert p.map(len, big) == [1 << 20] * 40
    assert sizes and max(sizes) <= 8, sizes
