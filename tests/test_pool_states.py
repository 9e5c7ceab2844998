"""Every public method of Pool, Executor and pool.group is safe at any moment of the pool's life.

Just after ``Pool()``, while it works, after ``close()`` and after ``terminate()``, a call either
works or raises an error that says what is wrong -- never an internal AttributeError or the like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import execpool

#: Errors a call may raise to say it cannot be done now (with a message that says why).
CLEAR = (ValueError, RuntimeError, execpool.ExecpoolError)

#: Internal errors that must never reach a caller of the public API.
INTERNAL = (AttributeError, TypeError, KeyError, IndexError, AssertionError, NameError, UnboundLocalError)

POOL_CALLS: dict[str, Callable[[execpool.Pool, Path], Any]] = {
    "apply": lambda p, d: p.apply(abs, (-1,)),
    "apply_async": lambda p, d: p.apply_async(abs, (-1,)).get(30),
    "map": lambda p, d: p.map(abs, [-1, -2]),
    "map_async": lambda p, d: p.map_async(abs, [-1, -2]).get(30),
    "starmap": lambda p, d: p.starmap(pow, [(2, 3)]),
    "starmap_async": lambda p, d: p.starmap_async(pow, [(2, 3)]).get(30),
    "imap": lambda p, d: list(p.imap(abs, [-1, -2])),
    "imap_unordered": lambda p, d: sorted(p.imap_unordered(abs, [-1, -2])),
    "close": lambda p, d: p.close(),
    "terminate": lambda p, d: p.terminate(),
    "join": lambda p, d: p.join(30),
    "rsync": lambda p, d: p.rsync(str(d)),
    "stats": lambda p, d: p.stats(),
    "repr": lambda p, d: repr(p),
    "group": lambda p, d: (len(p.group), list(p.group), repr(p.group)),
    "group.remote_exec": lambda p, d: p.group.remote_exec("channel.send(1)").receive_each(),
    "group.terminate": lambda p, d: p.group.terminate(timeout=5),
    "with": lambda p, d: p.__enter__().__exit__(None, None, None),
}

EXECUTOR_CALLS: dict[str, Callable[[execpool.Executor, Path], Any]] = {
    "submit": lambda e, d: e.submit(abs, -1).result(30),
    "map": lambda e, d: list(e.map(abs, [-1, -2], timeout=30)),
    "shutdown": lambda e, d: e.shutdown(wait=True),
    "shutdown(wait=False)": lambda e, d: e.shutdown(wait=False, cancel_futures=True),
    "pool.stats": lambda e, d: e.pool.stats(),
    "with": lambda e, d: e.__enter__().__exit__(None, None, None),
}

MOMENTS = ["just started", "working", "closed", "joined", "terminated"]


def _bring_to(pool: execpool.Pool, moment: str) -> None:
    if moment == "working":
        pool.map_async(time.sleep, [0.3] * 4, chunksize=1)
        time.sleep(0.2)
    elif moment == "closed":
        pool.close()
    elif moment == "joined":
        pool.close()
        pool.join(30)
    elif moment == "terminated":
        pool.terminate()


def _call_safely(call: Callable[[], Any]) -> None:
    try:
        call()
    except INTERNAL as exc:
        raise AssertionError("an internal error reached the caller: %r" % exc) from exc
    except CLEAR as exc:
        assert str(exc), "%r says nothing" % exc


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("name", list(POOL_CALLS))
def test_a_pool_method_works_or_says_why_not(
    name: str, moment: str, tmp_path: Path, cleanup: list[execpool.Pool]
) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    _bring_to(pool, moment)
    _call_safely(lambda: POOL_CALLS[name](pool, tmp_path))
    pool.terminate()  # and the pool still ends cleanly afterwards
    pool.join(30)


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("name", list(EXECUTOR_CALLS))
def test_an_executor_method_works_or_says_why_not(
    name: str, moment: str, tmp_path: Path, cleanup: list[execpool.Pool]
) -> None:
    ex = execpool.Executor(2)
    cleanup.append(ex.pool)
    if moment in ("closed", "joined"):
        ex.shutdown(wait=moment == "joined")
    else:
        _bring_to(ex.pool, moment)
    _call_safely(lambda: EXECUTOR_CALLS[name](ex, tmp_path))
    ex.pool.terminate()
    ex.pool.join(30)
