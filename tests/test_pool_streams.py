"""Flow control of lazy maps: an abandoned or cut stream ends, memory stays bounded, nothing hangs."""

from __future__ import annotations

import gc
import itertools
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import execpool

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
