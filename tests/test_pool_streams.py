"""Flow control of lazy maps: an abandoned or cut stream ends, memory stays bounded, nothing hangs."""

from __future__ import annotations

import gc
import itertools
import resource
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _pooltasks as tasks
import execpool
from _helpers import wait_until

#: Address space the child master may use: a regression that buffers results without bound
#: fails with MemoryError instead of exhausting the machine.
CHILD_ADDRESS_SPACE = 2 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def test_an_abandoned_endless_imap_ends_when_the_with_block_is_left(tmp_path: Path) -> None:
    script = tmp_path / "master.py"
    script.write_text(
        textwrap.dedent(
            """
            import itertools, resource, time, execpool
            with execpool.Pool(2) as pool:
                for x in pool.imap(abs, itertools.count()):
                    if x > 1000:
                        break
                time.sleep(1.0)  # the stream is throttled meanwhile, not growing
                t = time.monotonic()
            print("left", time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, preexec_fn=_limited
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, seconds, rss_mib = proc.stdout.split()
    assert float(seconds) < 5, proc.stdout
    assert int(rss_mib) < 300, proc.stdout


def test_a_stream_kept_past_the_with_block_says_where_its_results_stop() -> None:
    with execpool.Pool(2) as pool:
        it = pool.imap(abs, itertools.count())
        first = next(it)
    got = [first]
    with pytest.raises(
        execpool.ExecpoolError, match=r"its with block ended, or Executor.shutdown\(\)\): the rest of the input"
    ):
        while True:
            got.append(next(it))
    assert got == list(range(len(got)))  # every task pulled before the cut was delivered, in order


def test_dropping_a_stream_ends_its_job(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    it = pool.imap_unordered(abs, itertools.count())
    next(it)
    del it
    gc.collect()
    pool.close()
    t = time.monotonic()
    pool.join(30)  # a hang guard: the job of the dropped iterator no longer holds the pool open
    assert time.monotonic() - t < 30


def test_after_close_a_stream_of_known_length_runs_to_its_end(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    it = pool.imap(abs, range(30_000))
    pool.close()
    pool.join(60)  # as in multiprocessing: its results wait for the consumer
    assert list(it) == list(range(30_000))


def test_after_close_a_stream_of_unknown_length_follows_its_consumer(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    it = pool.imap(abs, iter(range(30_000)))
    pool.close()
    assert list(it) == list(range(30_000))
    pool.join(30)


def test_an_executor_shut_down_with_an_endless_map_unread_returns() -> None:
    ex = execpool.Executor(2)
    results = ex.map(abs, itertools.count())
    assert next(results) == 0
    t = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - t < 30  # a hang guard: the unread endless map is cut
    with pytest.raises(execpool.ExecpoolError, match="the rest of the input"):
        for _ in results:
            pass


def _tasks_run(pool: execpool.Pool) -> int:
    return sum(s.tasks for s in pool.stats())


def _open_stream(api: str, cleanup: list[execpool.Pool]) -> tuple[execpool.Pool, Iterator[Any]]:
    """A stream of ``abs`` over an endless input, from ``api``, bounded at 20 pending results."""
    if api == "Executor.map":
        ex = execpool.Executor(2, max_pending=20)
        cleanup.append(ex.pool)
        return ex.pool, ex.map(abs, itertools.count())
    if api == "imap per call":
        pool = execpool.Pool(2)
        cleanup.append(pool)
        return pool, pool.imap(abs, itertools.count(), max_pending=20)
    pool = execpool.Pool(2, max_pending=20)
    cleanup.append(pool)
    return pool, getattr(pool, api)(abs, itertools.count())


@pytest.mark.parametrize("api", ["imap", "imap_unordered", "Executor.map", "imap per call"])
def test_a_stream_stops_dispatching_at_max_pending_untaken_results(api: str, cleanup: list[execpool.Pool]) -> None:
    pool, results = _open_stream(api, cleanup)
    next(results)
    assert wait_until(lambda: _tasks_run(pool) >= 21, 30)
    time.sleep(1.0)  # the workers are idle, not running ahead
    assert _tasks_run(pool) == 21  # the one taken, and max_pending=20 waiting for the consumer
    for _ in range(10):
        next(results)
    assert wait_until(lambda: _tasks_run(pool) >= 31, 30)
    time.sleep(0.5)
    assert _tasks_run(pool) == 31


def test_map_async_sends_at_most_max_pending_tasks_whose_results_are_not_in(
    tmp_path: Path, cleanup: list[execpool.Pool]
) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    log, go = tmp_path / "log", tmp_path / "go"
    result = pool.map_async(tasks.log_and_wait_for, [(str(log), x, str(go)) for x in range(6)], 1, max_pending=1)
    assert wait_until(log.exists, 30)
    time.sleep(1.0)  # a second pool worker is idle: the one task out is the bound
    assert log.read_text().split() == ["0"]
    go.touch()
    assert result.get(60) == list(range(6))


def test_max_pending_must_be_a_positive_int(cleanup: list[execpool.Pool]) -> None:
    with pytest.raises(ValueError, match="max_pending must be a positive int"):
        execpool.Pool(1, max_pending=0)
    pool = execpool.Pool(1)
    cleanup.append(pool)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_pending must be a positive int"):
            pool.imap(abs, [1], max_pending=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_pending must be a positive int"):
            pool.map_async(abs, [1], max_pending=bad)  # type: ignore[arg-type]


_BIG_RESULTS = """
import itertools, resource, time, execpool
API = %r
with execpool.Executor(2, max_pending=64) as ex:
    pool = ex.pool
    if API == "Executor.map":
        results = ex.map(bytes, itertools.repeat(1 << 20))
    else:
        results = getattr(pool, API)(bytes, itertools.repeat(1 << 20))
    next(results)
    time.sleep(2.0)  # 1 MiB results: without the bound the workers would fill the master
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, sum(s.tasks for s in pool.stats()))
"""


@pytest.mark.parametrize("api", ["imap", "imap_unordered", "Executor.map"])
def test_untaken_results_stay_bounded_in_memory(api: str, tmp_path: Path) -> None:
    script = tmp_path / "master.py"
    script.write_text(_BIG_RESULTS % api)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, preexec_fn=_limited
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss_mib, ran = proc.stdout.split()
    assert int(ran) <= 65, proc.stdout
    assert int(rss_mib) < 400, proc.stdout
