"""The pool's event loop: one scheduler thread, fed by one queue of typed events.

Threads, queues and messages on the master::

    caller threads ─── Submitted, Wake ───┐
    starter threads ── Ready, StartFailed ┤                          ┌─> slot w0 ─ TASKS ─> pool worker
    reader threads ─── Message, Lost ─────┼─> events ─> scheduler ───┼─> slot w1 ─ TASKS ─> pool worker
    stream consumers ─ Consumed ──────────┤   (queue)   thread       └─> job sinks: deliver/fail/finish
    timers ─────────── RetrySlot ─────────┘                              (results, callbacks, progress)

Every scheduling decision is made by the scheduler thread, which alone
touches the slots' in-flight tables and the jobs' input iterators; everyone
else talks to it through the ``events`` queue (:mod:`.events`).  A slot
(:mod:`.slots`) is the record of one pool worker: the loop
``_shipped/poolworker.py`` running in a worker process behind a gateway, with
a second channel on which it asks for module sources when modules are served.
Slot and job states change only through the one transition table of
:mod:`.states`; chunks are cut and sent by :mod:`.dispatch`, sized by
:mod:`.chunking`; ``rsync=`` is :mod:`.hostsync`.  Messages between the master
and a pool worker are named in ``_shipped/poolmsg.py``, and every message a
pool worker sends is checked there: a malformed one ends that slot's worker
process (its tasks are then treated as on a loss, below), never the pool.

- *Failures.*  A pool worker runs its chunks in order, so when its worker
  process dies the oldest chunk in flight was running.  A one-task chunk is
  charged the death; a larger one is split into one-task chunks, and
  whichever of them kills a worker process again is charged both deaths
  (tasks that never started, or ran fine, are never charged).  A task charged
  more than ``retries`` deaths fails with :class:`WorkerLost`.  The other
  chunks go back to the front of the queue uncharged.  The slot is started
  again (a new gateway of the same spec); if that fails, the pool goes on
  without it, and with no slot left every job fails with the start errors.
- *Timeouts.*  With ``timeout=`` tasks travel one per chunk; the clock of a
  task starts when it is sent to an idle slot (or when the slot's previous
  result arrives) and restarts when the pool worker says it began it
  (``BEGUN``).  A task over its time fails with :class:`TimeoutError` and its
  worker process is killed and replaced.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import _payload
from .._shipped import poolmsg as _msg
from .._shipped import trace as _trace
from .._shipped.errors import GatewayStartError, HostUnreachable, TimeoutError, WorkerLost
from ..group import Group, ending_at_exit
from . import slots as _slots
from .chunking import next_rtt
from .dispatch import FUNCTIONS_KEPT, Dispatcher
from .events import Abandoned, Consumed, Event, Lost, Message, Ready, RetrySlot, StartFailed, Submitted, Wake
from .hostsync import HostSync
from .jobs import Chunk, Job, PoolTerminated, ProgressSink, charge_loss
from .slots import Slot, SlotTable, StartSettings, WorkerStats
from .states import SlotState, Trigger


class Scheduler:
    """The engine behind :class:`~execpool.Pool` and :class:`~execpool.Executor`."""

    def __init__(
        self,
        specs: Any,
        *,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        maxtasksperchild: int | None,
        retries: int,
        timeout: float | None,
        rsync: list[str],
        chdir: str | None,
        trust_workers: bool,
        serve_modules: bool,
    ) -> None:
        self.retries = retries
        self.timeout = timeout
        self.maxtasks = maxtasksperchild
        self.trusted = trust_workers
        self.modules = _payload.ModuleServer() if serve_modules else None
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.fid_of: dict[bytes, int] = {}  # pickled function -> its id (jobs of one function share it)
        self.next_fid = 0
        self.state = "running"  # -> closing -> closed | terminated
        self.cut_streams = False  # closing cuts the input of unbounded streams (leaving a with block)
        self.errors: list[str] = []
        self.broken: BaseException | None = None  # set when no slot is left: every job fails with it
        self.finished = threading.Event()
        self.master_python = tuple(sys.version_info[:2])
        init_payload, self.init_by_value = _initializer_payload(initializer, initargs)
        self.hostsync = HostSync(rsync)
        entries = _slots.entries(specs)
        self.group = specs if isinstance(specs, Group) else Group()
        settings = StartSettings(self.modules, chdir, trust_workers, timeout is not None, init_payload)
        self.slots = SlotTable(self.group, _Poster(self.events), settings, self.hostsync, self._accepting)
        self.lock = self.slots.lock
        self.queue = Dispatcher(self.slots, timeout, maxtasksperchild, self.master_python)
        self.thread = threading.Thread(target=self._run, name="execpool-pool-scheduler", daemon=True)
        for entry, count in entries:  # every slot counts as starting before the first event is seen
            self.slots.expand(entry, count)
        self.thread.start()

    def _accepting(self) -> bool:
        return self.state in ("running", "closing")

    # -- the public side (caller threads) ------------------------------------------------------

    def submit(self, job: Job, progress: Any = False) -> None:
        """Queue ``job``; ``progress`` (True: a tqdm bar, or ``callable(done, total)``) adds a sink."""
        if self.state != "running":
            raise ValueError("Pool not running: it was closed or terminated")
        why = _payload.needs_by_value(job.func)
        try:
            payload, by_value = _payload.dumps_function(job.func)
        except Exception as exc:
            raise TypeError("cannot send %s to the pool workers: %s" % (job.describe(), exc)) from exc
        if by_value or self.init_by_value:
            _check_versions(self.slots, self.master_python, job.describe(), why or "it cannot be pickled by reference")
        job.fpayload = payload
        job.by_value = by_value
        with self.lock:
            fid = self.fid_of.get(payload)
            if fid is None:
                if len(self.fid_of) >= FUNCTIONS_KEPT:
                    self.fid_of.pop(next(iter(self.fid_of)))
                self.next_fid += 1
                fid = self.fid_of[payload] = self.next_fid
        job.fid = fid
        if progress:
            job.sinks.append(ProgressSink(progress, job.total, getattr(job.func, "__name__", "tasks")))
        self.events.put(Submitted(job))

    def add_rsync(self, path: str) -> None:
        """Sync one more directory to every host of the pool now; later pool workers get it at start."""
        self.slots.sync_directory(path)

    def consumed(self, job: Job) -> None:
        self.events.put(Consumed(job))

    def wake(self) -> None:
        self.events.put(Wake())

    def abandoned(self, job: Job) -> None:
        """A stream's result iterator is gone (any thread): its job ends."""
        self.events.put(Abandoned(job))

    def close(self, cut_streams: bool = False) -> None:
        """Accept no more jobs; with ``cut_streams``, the input of unbounded streams is cut too."""
        if cut_streams:
            self.cut_streams = True
        if self.state == "running":
            self.state = "closing"
        self.events.put(Wake())

    def terminate(self) -> None:
        if self.state in ("closed", "terminated"):
            return
        self.state = "terminated"
        self.events.put(Wake())
        if sys.is_finalizing():  # a finalizer at exit: threads no longer run, atexit ended the groups
            return
        if threading.current_thread() is not self.thread and self.thread.is_alive():
            self.finished.wait(30.0)
        self._terminate_group()

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def stats(self) -> list[WorkerStats]:
        return self.slots.stats()

    def ready_count(self) -> int:
        return len(self.slots.ready())

    # -- the scheduler thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                timeout = self._next_deadline()
                try:
                    ev = self.events.get(timeout=timeout) if timeout is None or timeout > 0 else None
                except queue.Empty:
                    ev = None
                while ev is not None:
                    self._handle(ev)
                    try:
                        ev = self.events.get_nowait()
                    except queue.Empty:
                        ev = None
                self._check_timeouts()
                if self.state == "terminated":
                    self.queue.fail_all(PoolTerminated("the pool was terminated before this task finished"))
                    self.slots.mark_ended()
                    break
                if self.state == "closing":
                    self.queue.settle_streams(self.cut_streams)
                if self._accepting():
                    self.queue.dispatch()
                if self.state == "closing" and self.queue.idle():
                    self._shutdown_slots()
                    self.state = "closed"
                    break
        except BaseException as exc:
            text = traceback.format_exc()
            sys.stderr.write("execpool: the pool's scheduler failed; ending the pool:\n%s" % text)
            self.state = "terminated"
            self.queue.fail_all(PoolTerminated("the pool's scheduler failed: %s: %s" % (type(exc).__name__, exc)))
            self._terminate_group()
        finally:
            with self.lock:
                self.slots.stopped = True
            self._end_late_starters()
            self.finished.set()

    def _end_late_starters(self) -> None:
        """End the gateways of slots that became ready after the scheduler's last look."""
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, Ready) and ev.slot.gw is not None:
                threading.Thread(target=ev.slot.gw.exit, args=(2.0,), daemon=True).start()

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, Message):
            if ev.gen == ev.slot.gen:  # not from an earlier gateway of this slot
                self._on_message(ev.slot, ev.msg)
        elif isinstance(ev, Lost):
            if ev.gen == ev.slot.gen:
                self._on_lost(ev.slot)
        elif isinstance(ev, Submitted):
            job = ev.job
            if self.state == "terminated" or self.broken is not None:
                terminated = PoolTerminated("the pool was terminated")
                job.fail(terminated if self.state == "terminated" or self.broken is None else self.broken)
                job.end()
            else:
                self.queue.admit(job)
        elif isinstance(ev, (Ready, StartFailed)) and ev.gen != ev.slot.gen:
            # a start whose worker process was lost before this arrived: the slot was started again
            with self.lock:
                self.slots.starting -= 1
        elif isinstance(ev, Ready):
            self._on_ready(ev.slot, ev.info)
        elif isinstance(ev, StartFailed):
            self._on_startfail(ev.slot, ev.error, ev.counted)
        elif isinstance(ev, Abandoned):
            ev.job.stop()
        elif isinstance(ev, RetrySlot):
            if ev.slot.state is SlotState.FAILED and self._wants_slots():
                _trace.trace("pool worker", ev.slot.stats.id, "trying its host again")
                self.slots.start(ev.slot)
        else:
            assert isinstance(ev, (Consumed, Wake)), ev  # the loop looks again after every event

    def _on_ready(self, s: Slot, info: Any) -> None:
        with self.lock:
            self.slots.starting -= 1
            s.advance(Trigger.STARTED)
            s.ready_at = time.monotonic()
            s.busy_since_ready = 0.0
            s.stats.state = "ready"
            s.stats.host = info.hostname
            s.stats.python = info.version
            s.stats.error = None
        if self.state == "terminated":
            self.slots.retire(s, kill=True)

    def _on_startfail(self, s: Slot, exc: BaseException, counted: bool) -> None:
        with self.lock:
            if counted:
                self.slots.starting -= 1
            s.advance(Trigger.START_FAILED)
            s.stats.state = "failed"
            s.stats.error = "%s: %s" % (type(exc).__name__, exc)
        retry = s.replacing and isinstance(exc, HostUnreachable) and self._wants_slots()
        if self._accepting() and not ending_at_exit():  # at exit, a start cut short is no news
            self.errors.append("%s (%s): %s" % (s.stats.id, s.stats.spec, s.stats.error))
            later = "; trying again in %g s" % _slots.SLOT_RETRY_SECONDS if retry else ""
            sys.stderr.write(
                "execpool: pool worker %s (%s) could not start: %s%s\n"
                % (s.stats.id, s.stats.spec, s.stats.error, later)
            )
        if retry:
            timer = threading.Timer(_slots.SLOT_RETRY_SECONDS, self.events.put, args=(RetrySlot(s),))
            timer.daemon = True
            timer.start()
        self._check_alive()

    def _wants_slots(self) -> bool:
        return self.broken is None and (self.state == "running" or (self.state == "closing" and bool(self.queue.jobs)))

    def _check_alive(self) -> None:
        with self.lock:
            if self.slots.starting or any(s.state in _LIVE or s.state is SlotState.RETIRING for s in self.slots.slots):
                return
        if not self._accepting():
            return
        msg = "the pool has no worker left:\n  " + "\n  ".join(self.errors[-len(self.slots.slots) :] or ["no worker"])
        self.broken = GatewayStartError(msg)
        self.queue.fail_all(self.broken)

    def _on_message(self, s: Slot, raw: Any) -> None:
        if s.fault is not None:
            return  # its worker process is being ended for an earlier malformed message
        try:
            msg = _fitting_message(s, raw)
        except _msg.MalformedMessage as exc:
            self._condemn(s, "it sent a malformed message: %s" % exc)
            return
        if isinstance(msg, _msg.Begun):
            if msg.cid in s.inflight:
                s.current = msg.cid
                s.deadline = time.monotonic() + (self.timeout or 0.0)
        else:
            self._on_results(s, msg)

    def _condemn(self, s: Slot, fault: str) -> None:
        """End a slot's worker process for breaking the message contract (its loss follows)."""
        s.fault = fault
        with self.lock:
            s.stats.error = fault
        sys.stderr.write("execpool: %s: %s; ending its worker process\n" % (s.where(), fault))
        self.slots.kill(s)

    def _on_results(self, s: Slot, msg: _msg.Results) -> None:
        chunk = s.inflight[msg.cid]  # _on_message checked that the slot holds it
        loaded = None
        if not chunk.job.ended:
            try:
                loaded = self.queue.load_results(chunk, msg, s.where(), self.trusted)
            except _msg.MalformedMessage as exc:
                self._condemn(s, "it sent a malformed message: %s" % exc)  # the chunk is put back with the loss
                return
        del s.inflight[msg.cid]
        now = time.monotonic()
        n = len(chunk.indices)
        with self.lock:
            s.stats.tasks += n
            s.stats.busy += msg.busy
            s.busy_since_ready += msg.busy
            s.stats.bytes_received += _msg.size_of(msg.data, msg.buffers)
            if msg.errors:
                s.stats.failures += len(msg.errors)
        if s.current == msg.cid:
            s.current = None
            s.deadline = None
        if self.timeout is not None and s.current is None and s.inflight:
            s.current = next(iter(s.inflight))  # the pool worker goes on with its next chunk now
            s.deadline = now + self.timeout
        if chunk.sent_at is not None and chunk.queued_behind == 0:
            s.rtt = next_rtt(s.rtt, max(0.0, now - chunk.sent_at - msg.busy))
        job = chunk.job
        job.busy += msg.busy
        job.measured += n
        self.queue.remember_task_time(job)
        if loaded is not None and not job.ended:
            self.queue.deliver(job, chunk, *loaded)
        self._after_result(s)

    def _after_result(self, s: Slot) -> None:
        if (
            self.maxtasks is not None
            and s.dispatched >= self.maxtasks
            and not s.inflight
            and s.state is SlotState.READY
        ):
            self.slots.retire(s, kill=False)
            if self._accepting():
                with self.lock:
                    s.stats.restarts += 1
                self.slots.replace(s)

    def _on_lost(self, s: Slot) -> None:
        if s.state in (SlotState.RETIRING, SlotState.DEAD, SlotState.FAILED) and not s.inflight:
            s.advance(Trigger.LOST)
            return
        reason = s.lost_reason()
        chunks = list(s.inflight.values())
        s.inflight.clear()
        s.advance(Trigger.LOST)
        with self.lock:
            s.stats.state = "dead"
            self.slots.stop_idle_clock(s)
        requeue = []
        if chunks and not s.killed:
            suspect = chunks.pop(0)
            again = charge_loss(suspect, self.queue.cids)
            if again == [suspect] and suspect.attempts > self.retries:
                err = _worker_lost(suspect, s, reason, self.retries)
                with self.lock:
                    s.stats.failures += 1
                if not suspect.job.ended:
                    self.queue.deliver(suspect.job, suspect, [None], {0: err})
            else:
                requeue.extend(again)
        requeue.extend(chunks)
        self.queue.put_back(requeue)
        if self._accepting() and (not self.queue.idle() or self.state == "running"):
            with self.lock:
                s.stats.restarts += 1
            self.slots.replace(s)
        else:
            self._check_alive()

    # timeouts ---------------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        deadlines = [s.deadline for s in self.slots.slots if s.deadline is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _check_timeouts(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for s in self.slots.slots:
            if s.deadline is None or s.deadline > now or s.current is None:
                continue
            chunk = s.inflight.pop(s.current, None)
            s.deadline = None
            s.current = None
            if chunk is None:
                continue
            s.killed = True
            with self.lock:
                s.stats.failures += len(chunk.indices)
            err = TimeoutError(
                "task #%d of %s did not finish within timeout=%s seconds on %s; its worker process was killed "
                "and replaced" % (chunk.indices[0], chunk.job.describe(), self.timeout, s.where())
            )
            if not chunk.job.ended:
                self.queue.fail_chunk(chunk, err)
            self.slots.kill(s)

    # shutting down --------------------------------------------------------------------------

    def _shutdown_slots(self) -> None:
        for s in self.slots.slots:
            if s.state is SlotState.READY and s.ch is not None:
                try:
                    s.ch.send((_msg.EXIT,))  # the pool worker returns; exiting the gateways ends the processes
                except OSError:
                    pass
        self._terminate_group(timeout=10.0)
        self.slots.mark_ended()

    def _terminate_group(self, timeout: float = 2.0) -> None:
        try:
            self.group.terminate(timeout)
        except Exception:
            traceback.print_exc()
        for job in list(self.queue.jobs):
            job.close_progress()


_LIVE = (SlotState.READY, SlotState.STARTING)


class _Poster:
    """The slots' :class:`~execpool._pool.slots.Reporter`: each report becomes an event on the queue."""

    def __init__(self, events: queue.SimpleQueue[Event]) -> None:
        self.events = events

    def ready(self, slot: Slot, gen: int, info: Any) -> None:
        self.events.put(Ready(slot, gen, info))

    def start_failed(self, slot: Slot, gen: int, error: BaseException, counted: bool = True) -> None:
        self.events.put(StartFailed(slot, gen, error, counted))

    def message(self, slot: Slot, gen: int, msg: Any) -> None:
        self.events.put(Message(slot, gen, msg))

    def lost(self, slot: Slot, gen: int) -> None:
        self.events.put(Lost(slot, gen))

    def wake(self) -> None:
        self.events.put(Wake())


def _check_versions(slots: SlotTable, master_python: tuple[int, ...], what: str, why: str) -> None:
    """Refuse by-value functions when a pool worker runs another Python (major, minor)."""
    deadline = time.monotonic() + _slots.START_TIMEOUT * 2
    while True:
        with slots.lock:
            busy = slots.starting
        if busy == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    mine = "%d.%d" % master_python
    for s in list(slots.slots):
        if s.python is not None and s.python[:2] != master_python and s.state in _LIVE:
            raise ValueError(
                "%s travels by value (cloudpickle) because %s; that needs the master's Python %s, "
                "but pool worker %s (%s) runs Python %s. Move the function to a module the workers can "
                "import (served from the master if they lack it), or use only Python %s workers."
                % (what, why, mine, s.stats.id, s.stats.spec, ".".join(map(str, s.python)), mine)
            )


def _worker_lost(suspect: Chunk, s: Slot, reason: str, retries: int) -> WorkerLost:
    """The error of a task whose worker processes died running it more than ``retries`` times."""
    return WorkerLost(
        "task #%d of %s was running on %s when its worker process died (%s); %d worker process%s "
        "died running it (retries=%d). The task may crash its interpreter (segfault, os._exit, out "
        "of memory), or the host or its connection failed."
        % (
            suspect.indices[0],
            suspect.job.describe(),
            s.where(),
            reason,
            suspect.attempts,
            "es" if suspect.attempts > 1 else "",
            retries,
        )
    )


def _initializer_payload(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> tuple[bytes | None, bool]:
    """The pickled ``(initializer, initargs)`` and whether it travels by value (cloudpickle)."""
    if initializer is None:
        return None, False
    why = _payload.needs_by_value(initializer)
    import cloudpickle

    try:
        payload = (cloudpickle if why else __import__("pickle")).dumps(
            (initializer, tuple(initargs)), _payload.PROTOCOL
        )
    except Exception as exc:
        raise TypeError(
            "the initializer %s cannot be pickled: %s" % (_payload.describe_function(initializer), exc)
        ) from exc
    return payload, why is not None


def _fitting_message(s: Slot, raw: Any) -> _msg.Results | _msg.Begun:
    """``raw`` from the pool worker of ``s``, checked field by field and against what it was sent.

    Raises :class:`~execpool._shipped.poolmsg.MalformedMessage` naming what does not fit.
    """
    msg = _msg.from_worker(raw)
    if not isinstance(msg, (_msg.Results, _msg.Begun)):
        raise _msg.MalformedMessage("a %s message after the pool worker was ready" % type(msg).__name__)
    chunk = s.inflight.get(msg.cid)
    if chunk is None:
        raise _msg.MalformedMessage(
            "%s message: field cid is %d, a chunk this pool worker does not hold"
            % (type(msg).__name__.lower(), msg.cid)
        )
    if isinstance(msg, _msg.Results):
        for i, _ in msg.errors or ():
            if not -1 <= i < len(chunk.indices):
                raise _msg.MalformedMessage("results message: field errors[].i is %d, out of range" % i)
    return msg
