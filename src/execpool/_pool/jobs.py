"""Jobs and the sinks they deliver to.

A :class:`Job` is one call of map/imap/apply/submit as the engine sees it: its
function, its input iterator (pulled lazily, a chunk at a time, by the
scheduler thread only), how many of its tasks are outstanding, and its state
(:class:`~execpool._pool.states.JobState`).  Where its results go is not its
business: it hands them to its *sinks*, objects with three methods
(:class:`Sink`) that the scheduler thread calls:

- ``deliver(indices, values, errors)``: results of some tasks (``errors`` maps a
  position in ``indices`` to the task's exception); returns False when the sink
  wants no more results (the job then stops);
- ``fail(exc)``: the job as a whole failed (no pool worker left, its input raised,
  the pool was terminated...);
- ``finish()``: the job is over; called once, last.

The public result objects (``AsyncResult``, ``IMapIterator``, the executor's
future) are, or hold, such sinks; a progress bar is one more
(:class:`ProgressSink`).  A :class:`Chunk` is a slice of a job's tasks on its
way to a pool worker.
"""

from __future__ import annotations

import itertools
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .. import _payload
from .._shipped.errors import ExecpoolError
from .states import JobState, Trigger, advance


class PoolTerminated(ExecpoolError):
    """The pool was terminated (or broke down) before this task's result arrived."""


class Sink(Protocol):
    """Where a job's results go (see the module docstring); called by the scheduler thread only."""

    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> bool: ...

    def fail(self, exc: BaseException) -> None: ...

    def finish(self) -> None: ...


class WeakSink:
    """A sink the job does not keep alive: a stream's result iterator, which the caller may drop.

    Once the iterator is gone, ``gone()`` is called (in whichever thread dropped it) and every
    delivery answers "no more results wanted".
    """

    def __init__(self, target: Sink) -> None:
        self._ref = weakref.ref(target, lambda _ref: self.gone())
        self.gone: Callable[[], None] = lambda: None

    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> bool:
        target = self._ref()
        return target is not None and target.deliver(indices, values, errors)

    def fail(self, exc: BaseException) -> None:
        target = self._ref()
        if target is not None:
            target.fail(exc)

    def finish(self) -> None:
        target = self._ref()
        if target is not None:
            target.finish()


class ProgressSink:
    """A tqdm bar (``progress=True``) or ``progress(done, total)`` called after each chunk."""

    def __init__(self, progress: Any, total: int | None, name: str) -> None:
        self.total = total
        self.done = 0
        self.callback = progress if callable(progress) else None
        self.bar: Any = None
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="task")

    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> bool:
        self.done += len(indices)
        if self.bar is not None:
            self.bar.update(len(indices))
        elif self.callback is not None:
            try:
                self.callback(self.done, self.total)
            except Exception:
                traceback.print_exc()
        return True

    def fail(self, exc: BaseException) -> None:
        pass

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Job:
    """One call of map/imap/apply/submit: its input, its function, and the sinks its results go to."""

    def __init__(
        self,
        func: Callable[..., Any],
        items: Iterator[Any],
        total: int | None,
        mode: int,
        chunksize: int | None,
        sink: Sink,
        limit: int | None = None,
        stream: bool = False,
    ) -> None:
        self.func = func
        self.items = items
        self.total = total
        self.mode = mode
        self.chunksize = chunksize
        self.sinks: list[Sink] = [sink]
        #: most tasks pulled whose results the consumer has not taken (``max_pending``; None: no bound)
        self.limit = limit
        #: True for imap-like jobs, whose consumer takes results one by one from its own thread
        #: (:meth:`consumed_one`); otherwise a result is taken when it is delivered to the sinks.
        self.stream = stream
        self.throttled = False  # set by the scheduler while a stream waits for its consumer
        self.consumed = 0  # results the consumer took (a stream's consumer writes it)
        self.state = JobState.OPEN if total != 0 else JobState.EXHAUSTED
        self.fid = 0
        self.fpayload = b""
        self.by_value = False
        self.by_value_items = False
        self.next_index = 0
        self.pending = 0  # pulled, not yet delivered
        self.pulled = 0
        self.busy = 0.0
        self.measured = 0
        self.bytes_per_item = 0.0
        self._described: str | None = None
        self.prior: float | None = None  # seconds per task of earlier jobs of the same function
        self.cut_reason: str | None = None  # why the rest of the input was not run (see cut())

    def describe(self) -> str:
        """``name (file:line)`` of the job's function: its key for task times, and for messages."""
        if self._described is None:
            self._described = _payload.describe_function(self.func)
        return self._described

    def _advance(self, trigger: Trigger) -> None:
        self.state = advance(self.state, trigger, "job of %s" % self.describe())

    @property
    def ended(self) -> bool:
        """True once the job takes no more results (stopped or finished)."""
        return self.state in (JobState.STOPPED, JobState.ENDED)

    def wants_input(self) -> bool:
        return self.state is JobState.OPEN

    def done(self) -> bool:
        return self.ended or (self.state is JobState.EXHAUSTED and self.pending == 0)

    def pull(self, n: int) -> list[Any]:
        """Up to ``n`` more tasks from the input; the caller's iterator raising fails the job."""
        if self.state is not JobState.OPEN:
            return []
        try:
            got = list(itertools.islice(self.items, n))
        except BaseException as exc:  # the caller's iterator raised: the job fails with it
            self.fail(exc)
            return []
        self.pulled += len(got)
        if len(got) < n or (self.total is not None and self.pulled >= self.total):
            self._advance(Trigger.INPUT_END)
        self.pending += len(got)
        return got

    def per_task(self) -> float | None:
        """Seconds a task of this job takes on a pool worker: measured, else what earlier jobs of
        its function took, else None."""
        if self.measured:
            return self.busy / self.measured
        return self.prior

    def outstanding(self) -> int:
        """Tasks pulled from the input whose results the consumer has not taken."""
        return self.next_index - self.consumed

    def consumed_one(self) -> bool:
        """The consumer took a result (its own thread); True when the scheduler waits for that."""
        self.consumed += 1
        if self.throttled:
            self.throttled = False
            return True
        return False

    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> None:
        self.pending -= len(indices)
        if not self.stream:
            self.consumed += len(indices)  # in its place in the result: taken
        more = True
        for sink in self.sinks:
            more = sink.deliver(indices, values, errors) and more
        if not more and not self.ended:
            self._advance(Trigger.STOP)

    def stop(self) -> None:
        """Take no more input and no more results (its sinks are gone); :meth:`end` follows."""
        if not self.ended:
            self._advance(Trigger.STOP)

    def cut(self, reason: str) -> None:
        """Run no more of the input: the tasks already pulled finish and are delivered, then the
        sinks are failed with ``reason`` (so a consumer sees where its results stop, and why)."""
        if self.state is JobState.OPEN:
            self._advance(Trigger.INPUT_END)
            self.cut_reason = reason

    def fail(self, exc: BaseException) -> None:
        """The job as a whole fails with ``exc`` (its sinks are told; :meth:`end` follows)."""
        self._advance(Trigger.STOP)
        for sink in self.sinks:
            sink.fail(exc)

    def end(self) -> None:
        """Tell the sinks the job is over (once; later calls do nothing)."""
        if self.state is JobState.ENDED:
            return
        cut = self.state is JobState.EXHAUSTED and self.cut_reason is not None
        self._advance(Trigger.END)
        for sink in self.sinks:
            if cut:
                sink.fail(ExecpoolError(self.cut_reason or ""))
            try:
                sink.finish()
            except Exception:
                traceback.print_exc()
        # A result object holds its job; the job must not hold it back: without this cycle the
        # results (large arrays, say) go as soon as the caller drops them, not at the next gc.
        self.sinks = []

    def close_progress(self) -> None:
        """Close a progress bar of a job the pool abandons."""
        for sink in self.sinks:
            if isinstance(sink, ProgressSink):
                sink.finish()


class Chunk:
    """Consecutive (or, after a loss, single) tasks of one job sent to one pool worker together."""

    __slots__ = (
        "attempts",
        "buffers",
        "cid",
        "indices",
        "items",
        "job",
        "payload",
        "queued_behind",
        "sent_at",
        "unattributed",
    )

    def __init__(self, cid: int, job: Job, indices: range | list[int], items: list[Any], attempts: int) -> None:
        self.cid = cid
        self.job = job
        self.indices = indices
        self.items = items
        self.attempts = attempts  # worker process deaths charged to this (single-task) chunk
        self.unattributed = 0  # deaths of a larger chunk it was part of, charged if it kills again
        self.payload: bytes | None = None
        self.buffers: list[Any] = []  # the payload's out-of-band pickle buffers
        self.sent_at: float | None = None
        self.queued_behind = 0

    def size(self) -> int:
        """Bytes of the chunk's arguments on the wire (0 before they are pickled)."""
        if self.payload is None:
            return 0
        extra: int = sum(b.raw().nbytes for b in self.buffers)
        return len(self.payload) + extra


def charge_loss(suspect: Chunk, cids: Iterator[int]) -> list[Chunk]:
    """The chunks to run again after ``suspect`` was running when its worker process died.

    A one-task chunk is charged the death (and returned, unless the caller finds it over its
    retries); a larger one is split into one-task chunks, each carrying the death unattributed:
    whichever of them kills a worker process again is charged both deaths, the others never are.
    """
    if len(suspect.indices) > 1:
        singles = []
        for i, idx in enumerate(suspect.indices):
            single = Chunk(next(cids), suspect.job, [idx], [suspect.items[i]], suspect.attempts)
            single.unattributed = suspect.unattributed + 1
            singles.append(single)
        return singles
    suspect.attempts += 1 + suspect.unattributed
    suspect.unattributed = 0
    return [suspect]
