"""``Executor``: a :class:`concurrent.futures.Executor` on the pool's engine.

``submit`` makes a one-task engine job whose sink sets a
:class:`~concurrent.futures.Future` from the scheduler thread; the future
turns *running* when its task is pulled for a slot, so ``cancel()`` works
until then.  ``map`` streams
through the same machinery as :meth:`Pool.imap` (lazy input, chunks), with
the ``timeout`` semantics of :meth:`concurrent.futures.Executor.map`.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._pool import Job
from ._shipped.poolmsg import MODE_APPLY, MODE_STAR
from .pool import Pool


def _one_call(future: concurrent.futures.Future[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
    """The input of a future's job: its one call, unless the future was cancelled before it ran."""
    if future.set_running_or_notify_cancel():
        yield (args, kwargs)


class _FutureSink:
    """The sink of a future's job: sets the future (scheduler thread)."""

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future

    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> bool:
        if errors:
            self.fail(errors[0])
        elif not self.future.done():
            self.future.set_result(values[0])
        return not errors

    def fail(self, exc: BaseException) -> None:
        if self.future.done():
            return
        if not self.future.running() and not self.future.set_running_or_notify_cancel():
            return
        self.future.set_exception(exc)

    def finish(self) -> None:
        pass


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` whose workers are gateways.

    Takes the same arguments as :class:`Pool` (``Executor(["ssh=node1//workers=4"],
    timeout=60)``) and works wherever an executor is expected, for example
    ``loop.run_in_executor(executor, func, arg)`` in asyncio.  The underlying
    pool is :attr:`pool` (its ``group`` and ``stats()`` included).
    """

    def __init__(self, specs: Any = None, **pool_options: Any) -> None:
        self.pool = Pool(specs, **pool_options)
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its :class:`~concurrent.futures.Future`."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not callable(fn):
                raise TypeError("%r is not callable" % (fn,))
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            job = Job(fn, _one_call(fut, args, kwargs), 1, MODE_APPLY, 1, _FutureSink(fut))
            self._pending.add(fut)
        fut.add_done_callback(self._forget)
        self.pool._sched.submit(job)
        return fut

    def _forget(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(fut)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn(*args)`` for the zipped ``iterables``, in order; ``timeout`` counts from this call.

        Unlike the base class, the input is consumed lazily (an endless
        iterable works); a task's exception is raised when its result is
        reached.  ``chunksize`` groups tasks per message (None: automatic).
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        it = self.pool._imap(fn, zip(*iterables), chunksize, True, MODE_STAR)  # noqa: B905 - map stops at the shortest

        def results() -> Iterator[Any]:
            import multiprocessing

            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    yield it.next(wait)
                except StopIteration:
                    return
                except multiprocessing.TimeoutError:
                    raise concurrent.futures.TimeoutError(
                        "Executor.map: results did not arrive within %s seconds" % timeout
                    ) from None

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; ``cancel_futures`` cancels what has not started; ``wait`` waits for the rest.

        A :meth:`map` over an input of unknown length is cut, as at the end of a pool's
        ``with`` block: its tasks already read finish, then its iterator raises
        :class:`~execpool.ExecpoolError` saying the rest was not run.
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for fut in pending:
                fut.cancel()
        self.pool._sched.close(cut_streams=True)
        if wait:
            self.pool.join()
