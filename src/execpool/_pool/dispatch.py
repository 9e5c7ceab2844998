"""Dispatch: the queue of jobs, the chunks to run again, and sending chunks to ready slots.

Owned by the scheduler thread (nothing here is touched by any other thread):
it pulls chunks lazily from the jobs' input iterators in submission order
(chunks put back after a loss first), sizes them (:mod:`.chunking`), keeps a
job at most ``limit`` (``max_pending``) tasks ahead of its consumer, keeps jobs whose
function or arguments travel by value (cloudpickle) on slots of the master's
Python, and sends a chunk's function (once per pool worker) and tasks.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterator
from typing import Any

from .. import _payload
from .._shipped import poolmsg as _msg
from .._shipped.errors import DumpError, ExecpoolError
from . import chunking
from .jobs import Chunk, Job
from .slots import Slot, SlotTable
from .states import SlotState

#: Functions a pool worker keeps loaded (and the master remembers the ids of).
FUNCTIONS_KEPT = 512
#: Functions whose time per task is remembered for their next job's first chunk.
TIMES_KEPT = 256


class Dispatcher:
    """The jobs of one pool and the chunks on their way to its slots."""

    def __init__(self, slots: SlotTable, timeout: float | None, maxtasks: int | None, master_python: tuple[int, ...]):
        self.slots = slots
        self.timeout = timeout
        self.maxtasks = maxtasks
        self.master_python = master_python
        self.jobs: collections.deque[Job] = collections.deque()
        self.retry: collections.deque[Chunk] = collections.deque()
        self.cids: Iterator[int] = itertools.count(1)
        self.needs_mine: set[Job] = set()  # jobs that only a slot of the master's Python can run
        # function -> seconds per task in its last job (not its arguments' size: the next job's
        # arguments are measured afresh, so big ones after tiny ones do not make huge chunks)
        self.task_times: dict[str, float] = {}

    # -- jobs ---------------------------------------------------------------------------------

    def admit(self, job: Job) -> None:
        prior = self.task_times.get(job.describe())
        if prior is not None:
            job.prior = prior
        self.jobs.append(job)
        if job.by_value:
            self.needs_mine.add(job)

    def remember_task_time(self, job: Job) -> None:
        """Keep the function's time per task for its next job's first chunk (few functions are kept)."""
        key = job.describe()
        if key not in self.task_times and len(self.task_times) >= TIMES_KEPT:
            self.task_times.pop(next(iter(self.task_times)))
        self.task_times[key] = job.busy / job.measured

    def end_job(self, job: Job) -> None:
        job.end()
        try:
            self.jobs.remove(job)
        except ValueError:
            pass

    def deliver(self, job: Job, chunk: Chunk, values: list[Any], errs: dict[int, BaseException]) -> None:
        job.deliver(chunk.indices, values, errs)
        if job.done():
            self.end_job(job)

    def fail_chunk(self, chunk: Chunk, err: BaseException) -> None:
        """Every task of ``chunk`` fails with ``err``."""
        n = len(chunk.indices)
        self.deliver(chunk.job, chunk, [None] * n, dict.fromkeys(range(n), err))

    def load_results(
        self, chunk: Chunk, msg: _msg.Results, where: str, trusted: bool
    ) -> tuple[list[Any], dict[int, BaseException]]:
        """The values and errors of a RESULTS message of ``chunk`` (from ``where``), ready to deliver.

        A message whose results do not fit the chunk (not a list, or another count of them)
        breaks the message contract: :class:`~execpool._shipped.poolmsg.MalformedMessage`.
        Results that do not load (the restricted loader refuses them, say) fail the chunk's tasks.
        """
        n = len(chunk.indices)
        whole = [pack for i, pack in msg.errors or () if i < 0]
        if whole:  # the whole chunk failed: its function or its arguments did not load
            err = _payload.rebuild_exception(whole[0], trusted, "%s, task #%s" % (where, chunk.indices[0]))
            return [None] * n, dict.fromkeys(range(n), err)
        try:
            values = _payload.loads_results(msg.data, trusted, msg.buffers)
        except Exception as exc:
            failed = ExecpoolError("cannot load the results from %s: %s: %s" % (where, type(exc).__name__, exc))
            return [None] * n, dict.fromkeys(range(n), failed)
        if not isinstance(values, list) or len(values) != n:
            got = "%d results" % len(values) if isinstance(values, list) else "a %s" % type(values).__name__
            raise _msg.MalformedMessage(
                "results message: field data holds %s for chunk %d of %d tasks" % (got, msg.cid, n)
            )
        errs: dict[int, BaseException] = {}
        for i, pack in msg.errors or ():
            errs[i] = _payload.rebuild_exception(pack, trusted, "%s, task #%s" % (where, chunk.indices[i]))
        return values, errs

    def settle_streams(self, cut: bool) -> None:
        """What becomes of the streams (imap jobs) once the pool is closing.

        A stream over an input of known length runs to its end without waiting for its
        consumer (as in multiprocessing; its results are bounded by that length).  One over an
        input of unknown length stays throttled, at most ``limit`` tasks ahead of its consumer;
        with ``cut`` (leaving the pool's ``with`` block) the rest of its input is not run: the
        tasks already pulled finish, then its iterator raises an error that says so.
        """
        for job in self.jobs:
            if not job.stream or job.limit is None or job.ended:
                continue
            if job.total is not None:
                job.limit = None
            elif cut and job.wants_input():
                job.cut(
                    "the pool was closed (its with block ended, or Executor.shutdown()): the rest of the input "
                    "of this imap of %s (of unknown length) was not run; read the results before then to get all"
                    % job.describe()
                )

    def put_back(self, chunks: list[Chunk]) -> None:
        """Chunks to run again, first (their payload is made again)."""
        for c in reversed(chunks):
            if not c.job.ended:
                c.payload = None
                c.buffers = []
                self.retry.appendleft(c)

    def fail_all(self, exc: BaseException) -> None:
        for job in list(self.jobs):
            if not job.ended:
                job.fail(exc)
            job.end()
        self.jobs.clear()
        self.retry.clear()
        for slot in self.slots.slots:
            slot.inflight.clear()

    def idle(self) -> bool:
        return not self.jobs and not self.retry

    # -- dispatching --------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Give every ready slot that wants one a chunk, until none is taken."""
        self.fail_starving()
        ready = self.slots.ready()
        if not ready:
            return
        progress = True
        while progress:
            progress = False
            for slot in ready:
                if slot.state is not SlotState.READY or not self._wants_more(slot):
                    continue
                if self.maxtasks is not None and slot.dispatched >= self.maxtasks:
                    continue
                chunk = self._next_chunk(slot, len(ready))
                if chunk is None:
                    continue
                self._send_chunk(slot, chunk)
                progress = True
        self.fail_starving()  # a chunk found to need the master's Python may have been put back

    def _wants_more(self, slot: Slot) -> bool:
        if not slot.inflight:
            return True
        running = next(iter(slot.inflight.values()))
        return chunking.wants_another_chunk(len(slot.inflight), len(running.indices), running.job.per_task(), slot.rtt)

    def fail_starving(self) -> None:
        """Fail jobs that only a slot of the master's Python can run when no such slot is left."""
        self.needs_mine = {j for j in self.needs_mine if not j.ended}
        if not self.needs_mine:
            return
        if any(
            s.state is SlotState.STARTING
            or (s.state is SlotState.READY and s.python is not None and s.python[:2] == self.master_python)
            for s in self.slots.slots
        ):
            return
        for job in list(self.needs_mine):
            what = "%s" % job.describe() if job.by_value else "the arguments of %s" % job.describe()
            job.fail(
                ValueError(
                    "%s travel by value (cloudpickle), which needs a pool worker of the master's Python %s; "
                    "the pool has no such worker. Make them importable (module-level functions and classes) "
                    "so that plain pickle can send them." % (what, "%d.%d" % self.master_python)
                )
            )
            self.end_job(job)
        self.needs_mine.clear()

    def _next_chunk(self, slot: Slot, nslots: int) -> Chunk | None:
        for i, c in enumerate(self.retry):
            if c.job.ended:
                continue
            if self._compatible(slot, c.job):
                del self.retry[i]
                return c
        while self.retry and self.retry[0].job.ended:
            self.retry.popleft()
        finished: list[Job] = []
        chunk = None
        for job in self.jobs:  # not modified in this loop (many one-task jobs must stay cheap)
            if job.ended:
                finished.append(job)
                continue
            if not job.wants_input() or not self._compatible(slot, job):
                if job.done():
                    finished.append(job)
                continue
            if job.limit is not None:  # not more than ``limit`` tasks ahead of its consumer
                # Flag first, then look: a consumer that takes a result after the flag is set
                # wakes us; one that took it before is seen in outstanding() (no lost wake-up).
                job.throttled = True
                if job.outstanding() >= job.limit:
                    continue
                job.throttled = False
            n = chunking.chunk_size(
                per_task=job.per_task(),
                rtt=slot.rtt,
                remaining=None if job.total is None else job.total - job.next_index,
                slots=nslots,
                chunksize=job.chunksize,
                bytes_per_task=job.bytes_per_item,
                read_ahead=_read_ahead(job),
                budget=None if self.maxtasks is None else self.maxtasks - slot.dispatched,
                one_at_a_time=self.timeout is not None,
                sizes_unmeasured=job.bytes_per_item == 0.0,
            )
            if job.limit is not None:
                n = min(n, job.limit - job.outstanding())
            start = job.next_index
            items = job.pull(n)
            if not items:
                if job.done():
                    finished.append(job)
                continue
            job.next_index += len(items)
            chunk = Chunk(next(self.cids), job, range(start, start + len(items)), items, 0)
            break
        for job in finished:
            self.end_job(job)
        return chunk

    def _compatible(self, slot: Slot, job: Job) -> bool:
        if not (job.by_value or job.by_value_items):
            return True
        return slot.python is not None and slot.python[:2] == self.master_python

    def _send_chunk(self, slot: Slot, chunk: Chunk) -> None:
        job = chunk.job
        ch = slot.ch
        assert ch is not None
        try:
            if chunk.payload is None:
                chunk.payload, chunk.buffers, by_value = _payload.dumps_items(chunk.items)
                if by_value and not job.by_value_items:
                    job.by_value_items = True
                    self.needs_mine.add(job)
                    if not self._compatible(slot, job):
                        self.retry.appendleft(chunk)
                        return
                job.bytes_per_item = chunking.next_bytes_per_task(job.bytes_per_item, chunk.size(), len(chunk.indices))
        except Exception as exc:
            err = TypeError(
                "cannot send the arguments of tasks #%d-#%d of %s: %s"
                % (chunk.indices[0], chunk.indices[-1], job.describe(), exc)
            )
            self.fail_chunk(chunk, err)
            return
        chunk.queued_behind = len(slot.inflight)
        chunk.sent_at = time.monotonic()
        slot.inflight[chunk.cid] = chunk
        if self.timeout is not None and slot.current is None:
            # The clock runs from now; the pool worker's BEGUN (it started the task) restarts it.
            slot.current = chunk.cid
            slot.deadline = chunk.sent_at + self.timeout
        slot.dispatched += len(chunk.indices)
        try:
            if job.fid not in slot.funcs:
                if len(slot.funcs) >= FUNCTIONS_KEPT:
                    ch.send((_msg.FORGET,))  # later tasks send their functions again
                    slot.funcs.clear()
                ch.send((_msg.FUNCTION, job.fid, job.fpayload))
                slot.funcs.add(job.fid)
                slot.stats.bytes_sent += len(job.fpayload)
            ch.send((_msg.TASKS, chunk.cid, job.fid, job.mode, chunk.payload, chunk.buffers))
            slot.stats.bytes_sent += chunk.size()
        except DumpError:  # over the frame cap: nothing was written
            self._unsend(slot, chunk)
            self._oversized(slot, chunk)
        except OSError:
            pass  # the worker process is gone: its Lost event puts back what it held

    def _unsend(self, slot: Slot, chunk: Chunk) -> None:
        """Take back the bookkeeping of a chunk that could not be sent to ``slot``."""
        del slot.inflight[chunk.cid]
        slot.dispatched -= len(chunk.indices)
        if slot.current == chunk.cid:
            slot.current = None
            slot.deadline = None

    def _oversized(self, slot: Slot, chunk: Chunk) -> None:
        """A chunk whose message is over the frame cap: split it, or fail its one task (or the job's function)."""
        job = chunk.job
        if len(chunk.indices) > 1 and job.fid in slot.funcs:
            # one task may be the large one: send them one by one, so only that one fails
            singles = [
                Chunk(next(self.cids), job, range(i, i + 1), [item], chunk.attempts)
                for i, item in zip(chunk.indices, chunk.items, strict=True)
            ]
            self.retry.extendleft(reversed(singles))
            return
        what = "the function" if job.fid not in slot.funcs else "the arguments of task #%d" % chunk.indices[0]
        size = len(job.fpayload) if job.fid not in slot.funcs else chunk.size()
        err = ValueError(
            "%s of %s pickle to %d bytes, over the frame cap of %d bytes of %s: raise the cap with max_frame= "
            "in the pool's specs or EXECPOOL_MAX_FRAME_SIZE, or better, send a path the pool workers can read "
            "(a shared directory, or rsync= to sync it once per host) instead of the data"
            % (what, job.describe(), size, slot.gw._max_frame if slot.gw is not None else 0, slot.where())
        )
        self.fail_chunk(chunk, err)


def _read_ahead(job: Job) -> int | None:
    """The read-ahead bound chunk sizing keeps a job's chunks inside: a stream's ``limit`` (its chunks
    stay well inside it, for a consumer that reads as results arrive); for a map, whose results leave
    the bound as they arrive, a chunk may be a slot's whole share of it: chunk sizing divides the
    read-ahead by ``2 * WINDOW * slots``, so ``2 * WINDOW * limit`` gives ``limit / slots``."""
    if job.limit is None or job.stream:
        return job.limit
    return 2 * chunking.WINDOW * job.limit
