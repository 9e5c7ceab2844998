"""``Pool``: the ``multiprocessing.Pool`` API over gateways to any interpreters.

A pool is a client of the low-level API: each of its pool workers is the loop
``_shipped/poolworker.py`` running in a worker process behind a gateway of
``pool.group`` (started with ``remote_exec``), and the engine in
:mod:`execpool._pool` hands them chunks of tasks.  This module holds the
public surface and the result objects; a result object is not an engine job
but the *sink* of one (``deliver``/``fail``/``finish``, see
:mod:`execpool._pool.jobs`)::

    pool.map / starmap / apply ──> AsyncResult (sink: results into their places)
    pool.imap / imap_unordered ──> IMapIterator (sink: results into a bounded buffer)
                                   │
                                   └─ its Job is submitted to the scheduler thread, which
                                      cuts the input into chunks and sends them to slots

Results are delivered by the scheduler thread and read by the caller's thread:
an :class:`AsyncResult` completes once (event set, then its callback or
error_callback runs in the scheduler thread); an :class:`IMapIterator`
wakes its consumer on each delivery.
"""

from __future__ import annotations

import collections
import multiprocessing
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ._pool import Job, PoolTerminated, Scheduler, WorkerStats
from ._pool.jobs import WeakSink
from ._shipped.poolmsg import MODE_APPLY, MODE_MAP, MODE_STAR
from .group import Group

__all__ = ["AsyncResult", "IMapIterator", "Pool", "PoolTerminated", "WorkerStats"]

#: The default of ``max_pending`` for streams (imap, imap_unordered, Executor.map): the most tasks of
#: one call whose results its reader has not taken before the pool stops dispatching that call.
DEFAULT_MAX_PENDING = 10_000


class AsyncResult:
    """The result of :meth:`Pool.map_async`, :meth:`Pool.apply_async` and friends.

    ``get(timeout)`` returns the value (a list for the map family) or raises
    the first task exception to arrive; the rest of the job is then dropped.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        items: list[Any],
        mode: int,
        chunksize: int | None,
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        single: bool,
        max_pending: int | None = None,
    ) -> None:
        self.job = Job(func, iter(items), len(items), mode, chunksize, self, limit=max_pending)
        self._values: list[Any] = [None] * len(items)
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._error: BaseException | None = None
        self._event = threading.Event()
        self._finished = False

    # the sink the engine calls (scheduler thread) ---------------------------------------------
    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> bool:
        if errors:
            self.fail(errors[min(errors)])
            return False  # the first error is the result: the rest of the job is dropped
        if isinstance(indices, range) and indices.step == 1:
            self._values[indices.start : indices.stop] = values
        else:
            for i, v in zip(indices, values, strict=True):
                self._values[i] = v
        return True

    def fail(self, exc: BaseException) -> None:
        if self._error is None and not self._event.is_set():
            self._error = exc

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:  # as in multiprocessing: the callback has run by the time get() returns
            if self._error is not None:
                if self._error_callback is not None:
                    self._error_callback(self._error)
            elif self._callback is not None:
                self._callback(self._value())
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            self._event.set()

    def _value(self) -> Any:
        return self._values[0] if self._single else self._values

    def ready(self) -> bool:
        """True once the result (or an error) has arrived."""
        return self._event.is_set()

    def successful(self) -> bool:
        """True if the job finished without an error; ValueError while not ready."""
        if not self.ready():
            raise ValueError("%r is not ready" % self)
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds passed."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Return the result; re-raise the task's exception; ``multiprocessing.TimeoutError`` on timeout."""
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError(
                "the result of %s did not arrive within %s seconds" % (self.job.describe(), timeout)
            )
        if self._error is not None:
            raise self._error
        return self._value()

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return "<AsyncResult %s %s>" % (self.job.describe(), state)


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class IMapIterator:
    """The iterator :meth:`Pool.imap` and :meth:`Pool.imap_unordered` return.

    The input is consumed lazily, at most ``max_pending`` tasks ahead of the
    consumer (the pool's, or the call's), so an endless generator works.  A task's exception is raised
    at its position; iteration can go on past it.  ``next(timeout)`` raises
    ``multiprocessing.TimeoutError`` when nothing arrives in time.
    """

    def __init__(
        self,
        sched: Scheduler,
        func: Callable[..., Any],
        items: Iterable[Any],
        mode: int,
        chunksize: int | None,
        ordered: bool,
        blocking_interrupt: Callable[[], None],
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
        # The job holds this iterator weakly: one the caller drops ends the job (the rest of
        # its input is not run), instead of results piling up for no one.
        weak = WeakSink(self)
        self.job = Job(func, iter(items), total, mode, chunksize, weak, limit=max_pending, stream=True)
        job = self.job
        weak.gone = lambda: sched.abandoned(job)
        self._sched = sched
        self._ordered = ordered
        self._cond = threading.Condition()
        self._buffer: dict[int, Any] = {}
        self._queue: collections.deque[Any] = collections.deque()
        self._pos = 0
        self._error: BaseException | None = None
        self._finished = False
        self._interrupt = blocking_interrupt

    # the sink the engine calls (scheduler thread) ---------------------------------------------
    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> bool:
        with self._cond:
            for k, (i, v) in enumerate(zip(indices, values, strict=True)):
                if k in errors:
                    v = _Failed(errors[k])
                if self._ordered:
                    self._buffer[i] = v
                else:
                    self._queue.append(v)
            self._cond.notify_all()
        return True

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result (in input order for ``imap``, arrival order for ``imap_unordered``)."""
        try:
            with self._cond:
                while True:
                    if self._ordered and self._pos in self._buffer:
                        value = self._buffer.pop(self._pos)
                        self._pos += 1
                        break
                    if not self._ordered and self._queue:
                        value = self._queue.popleft()
                        self._pos += 1
                        break
                    if self._error is not None:
                        raise self._error
                    if self._finished:
                        raise StopIteration
                    if not self._cond.wait(timeout):
                        raise multiprocessing.TimeoutError(
                            "no result of %s arrived within %s seconds" % (self.job.describe(), timeout)
                        )
        except KeyboardInterrupt:
            self._interrupt()
            raise
        if self.job.consumed_one():  # the scheduler waits for room ahead of this consumer: there is some now
            self._sched.consumed(self.job)
        if type(value) is _Failed:
            raise value.exc
        return value


class Pool:
    """A pool of worker interpreters with the ``multiprocessing.Pool`` API.

    ``specs`` says where the workers run: None (one local worker per CPU),
    a number of local workers, a list of xspec strings or :class:`XSpec`
    (``"ssh=node1//workers=4"``, ``"popen//python=python3.9"``; ``workers=N``
    or ``workers=auto`` start several workers from one spec, sharing one ssh
    login per host), or an existing :class:`Group` whose gateways become the
    workers.  Workers start in the background; the first tasks go out as soon
    as the first worker is up.

    - ``initializer(*initargs)`` runs in each worker before its first task;
      if it raises, that worker does not join the pool (the error is printed,
      and raised by every call once no worker is left).
    - ``maxtasksperchild``: a worker is replaced after that many tasks.
    - ``retries``: how many times a task whose worker died is tried again
      before it fails with :class:`WorkerLost`.
    - ``timeout``: seconds a task may run; an overrunning task fails with
      :class:`TimeoutError` and its worker is killed and replaced.  Tasks then
      travel one at a time.
    - ``progress``: True for a tqdm bar per call, or ``callable(done, total)``.
    - ``rsync``: directories synced to every distinct host before its workers
      take tasks; they land in one directory per pool and host, which is put
      on the workers' ``sys.path`` and made their working directory.  Workers
      that see the master's own directory just get its parent on ``sys.path``.
    - ``chdir``: the workers' working directory.
    - ``trust_workers=False``: load results with the restricted loader (only
      builtin values) so that a compromised worker cannot run code on the master.
    - ``serve_modules``: let workers import the master's pure-Python modules.
    - ``processes``: as in :mod:`multiprocessing`, a number of local workers
      (the same as passing the number as ``specs``).
    - ``max_pending``: the most tasks of one call whose results its consumer
      has not taken; at the bound the pool stops dispatching that call until
      the consumer takes one.  Default: ``DEFAULT_MAX_PENDING`` (10 000) for
      ``imap``, ``imap_unordered`` and ``Executor.map``; no bound for the map
      family, whose result list holds every result anyway.  Given here, it
      applies to all; ``imap``, ``imap_unordered``, ``map_async`` and
      ``starmap_async`` also take a per-call ``max_pending=``.

    Leaving a ``with`` block waits for submitted work and ends the workers;
    an exception inside the block terminates the pool instead.
    """

    def __init__(
        self,
        specs: int | str | Iterable[Any] | Group | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        retries: int = 1,
        timeout: float | None = None,
        progress: bool | Callable[[int, int | None], Any] = False,
        rsync: Iterable[str] | None = None,
        chdir: str | None = None,
        trust_workers: bool = True,
        serve_modules: bool = True,
        processes: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        # None: streams get DEFAULT_MAX_PENDING; the map family, whose result lists hold every result
        # by contract, is not bounded unless the pool or the call says so (a bound costs chunk size)
        self._max_pending = None if max_pending is None else _check_max_pending(max_pending, "Pool")
        if processes is not None:  # multiprocessing.Pool's name for a number of local workers
            if specs is not None:
                raise TypeError("give Pool either specs or processes, not both")
            specs = processes
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None, not %r" % (maxtasksperchild,))
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an int >= 0, not %r" % (retries,))
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds or None, not %r" % (timeout,))
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        if isinstance(rsync, str):
            rsync = [rsync]
        paths = list(rsync or ())
        import os

        for p in paths:
            if not os.path.isdir(p):
                raise ValueError("rsync=: %r is not a directory on the master" % p)
        self._progress = progress
        self._sched = Scheduler(
            specs,
            initializer=initializer,
            initargs=tuple(initargs),
            maxtasksperchild=maxtasksperchild,
            retries=retries,
            timeout=timeout,
            rsync=paths,
            chdir=chdir,
            trust_workers=trust_workers,
            serve_modules=serve_modules,
        )

    @property
    def group(self) -> Group:
        """The :class:`Group` of the pool's gateways (its relays included)."""
        return self._sched.group

    def __repr__(self) -> str:
        s = self._sched
        return "<execpool.Pool %s workers=%d>" % (s.state, s.ready_count())

    # -- submitting ----------------------------------------------------------------------------

    def _async(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        mode: int,
        chunksize: int | None,
        callback: Any,
        error_callback: Any,
        single: bool = False,
        max_pending: int | None = None,
    ) -> AsyncResult:
        _check_chunksize(chunksize)
        limit = self._max_pending if max_pending is None else _check_max_pending(max_pending, "map_async")
        if not callable(func):
            raise TypeError("%r is not callable" % (func,))
        result = AsyncResult(func, list(items), mode, chunksize, callback, error_callback, single, limit)
        self._sched.submit(result.job, self._progress)
        return result

    def _wait(self, result: AsyncResult) -> Any:
        try:
            return result.get()
        except KeyboardInterrupt:
            self.terminate()
            raise

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Run ``func(*args, **kwds)`` on a worker; return an :class:`AsyncResult`."""
        return self._async(func, [(tuple(args), dict(kwds or {}))], MODE_APPLY, 1, callback, error_callback, True)

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` on a worker; wait for and return its result."""
        return self._wait(self.apply_async(func, args, kwds))

    def map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        max_pending: int | None = None,
    ) -> AsyncResult:
        """``[func(x) for x in iterable]`` on the workers; return an :class:`AsyncResult`.

        ``max_pending`` (default: the pool's, if it has one; else no bound): the most tasks sent
        whose results are not yet in the result list."""
        return self._async(func, iterable, MODE_MAP, chunksize, callback, error_callback, max_pending=max_pending)

    def map(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """``[func(x) for x in iterable]``, computed by the workers, in input order."""
        values: list[Any] = self._wait(self.map_async(func, iterable, chunksize))
        return values

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        max_pending: int | None = None,
    ) -> AsyncResult:
        """``[func(*args) for args in iterable]`` on the workers; return an :class:`AsyncResult`."""
        items = [tuple(a) for a in iterable]
        return self._async(func, items, MODE_STAR, chunksize, callback, error_callback, max_pending=max_pending)

    def starmap(
        self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[Any]:
        """``[func(*args) for args in iterable]``, computed by the workers, in input order."""
        values: list[Any] = self._wait(self.starmap_async(func, iterable, chunksize))
        return values

    def _imap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        ordered: bool,
        mode: int = MODE_MAP,
        max_pending: int | None = None,
    ) -> IMapIterator:
        _check_chunksize(chunksize)
        if max_pending is not None:
            limit = _check_max_pending(max_pending, "imap")
        else:
            limit = DEFAULT_MAX_PENDING if self._max_pending is None else self._max_pending
        if not callable(func):
            raise TypeError("%r is not callable" % (func,))
        it = IMapIterator(self._sched, func, iterable, mode, chunksize, ordered, self.terminate, limit)
        self._sched.submit(it.job, self._progress)
        return it

    def imap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        max_pending: int | None = None,
    ) -> IMapIterator:
        """Like :meth:`map`, but lazy: an iterator over the results, in input order.

        At most ``max_pending`` (default: the pool's) tasks run ahead of the iterator's reader."""
        return self._imap(func, iterable, chunksize, True, max_pending=max_pending)

    def imap_unordered(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        max_pending: int | None = None,
    ) -> IMapIterator:
        """Like :meth:`imap`, but results come in the order they finish."""
        return self._imap(func, iterable, chunksize, False, max_pending=max_pending)

    # -- the pool's life -------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more work; the workers exit once the submitted work is done."""
        self._sched.close()

    def terminate(self) -> None:
        """End the workers now; unfinished results fail with :class:`PoolTerminated`."""
        self._sched.terminate()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers to exit; call :meth:`close` or :meth:`terminate` first."""
        if self._sched.state == "running":
            raise ValueError("Pool.join() needs close() or terminate() first")
        if not self._sched.join(timeout):
            from ._shipped.errors import TimeoutError

            raise TimeoutError("the pool's work did not finish within %s seconds" % timeout)

    def __del__(self) -> None:
        sched = getattr(self, "_sched", None)
        if sched is None or sched.state != "running":
            return
        sched.close()
        if not sys.is_finalizing():  # at interpreter exit the group's clean-up ends the workers
            warnings.warn("unclosed running execpool.Pool %r: closing it" % self, ResourceWarning, stacklevel=2)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, etype: Any, value: Any, tb: Any) -> None:
        if etype is None:
            self._sched.close(cut_streams=True)
            self.join()
        else:
            self.terminate()

    # -- around the work -------------------------------------------------------------------------

    def rsync(self, path: str) -> None:
        """Sync directory ``path`` to every host of the pool now (and to workers started later)."""
        self._sched.add_rsync(path)

    def stats(self) -> list[WorkerStats]:
        """Per slot (one pool worker and its replacements): spec, host, Python, tasks, failures,
        busy/idle seconds, bytes, restarts."""
        return self._sched.stats()


def _check_max_pending(max_pending: object, where: str) -> int:
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError("%s: max_pending must be a positive int, not %r" % (where, max_pending))
    return max_pending


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError("chunksize must be a positive int or None (automatic), not %r" % (chunksize,))
