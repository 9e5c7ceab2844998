"""The pool's engine: workers, chunks and the one thread that schedules them.

Threads, queues and messages on the master::

    caller threads ── submit(job) ──┐
    starter threads ── ready/fail ──┤                      ┌─> worker w0: ch.send(("t", ...))
    reader threads ── results/lost ─┼─> events ─> scheduler ┼─> worker w1
    imap consumers ── consumed ─────┘   (queue)   thread    └─> jobs: results into their slots,
                                                                  callbacks, progress bars

Every scheduling decision is made by the scheduler thread, which alone
touches workers' in-flight tables and jobs' input iterators; everyone else
talks to it through the ``events`` queue.  A worker is a gateway running
``_poolworker`` (sent with ``remote_exec``) plus, when modules are served,
a second channel on which it asks for module sources.

- *Chunks.*  A job's input is cut into chunks pulled lazily from its
  iterator.  Without a ``chunksize`` the first chunk is one task (unless an
  earlier job of the same function says how long its tasks take); then the
  size follows the measured time per task (a chunk should take
  ``CHUNK_SECONDS`` or four round trips, whichever is longer) and shrinks
  towards the end of a job of known length, down to ``CHUNK_FLOOR`` seconds
  of work, so that workers finish together.  A worker holds up to
  ``WINDOW`` chunks, but a second one only when its running chunk is short
  next to a round trip (``_wants_more``): long chunks do not queue behind
  each other while another worker could take them.
- *Failures.*  A worker processes its chunks in order, so when it dies the
  oldest chunk in flight was running.  A one-task chunk is charged the
  death; a larger one is split into one-task chunks, and whichever of them
  kills a worker again is charged both deaths (tasks that never started, or
  ran fine, are never charged).  A task charged more than ``retries``
  deaths fails with :class:`WorkerLost`.  The other chunks go back to the
  front of the queue uncharged.  The worker is replaced (a new gateway of
  the same spec); if that fails, the pool goes on without it, and with no
  worker left every job fails with the start errors.
- *Timeouts.*  With ``timeout=`` tasks travel one per chunk; the clock of a
  task starts when it is sent to an idle worker (or when the worker's
  previous result arrives) and restarts when the worker says it started it.
  A task over its time fails with :class:`TimeoutError` and its worker is
  killed and replaced.
- *Hosts.*  ``ssh=host//workers=N`` starts one gateway to the host (the
  relay) and N workers ``via=`` it: one ssh login per host.  Directories
  given to ``rsync=`` are synced once per distinct host before its workers
  take tasks (skipped where the worker sees the master's own directory).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import math
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from . import _payload
from ._shipped import hostkey as _hostkey
from ._shipped import poolmsg as _msg
from ._shipped import poolworker as _poolworker
from ._shipped import trace as _trace
from ._shipped.channel import Channel
from ._shipped.errors import (
    ExecpoolError,
    GatewayStartError,
    HostUnreachable,
    InterpreterNotFound,
    TimeoutError,
    WorkerLost,
)
from ._xspec import XSpec
from .gateway import Gateway
from .group import Group

#: Chunks a worker holds at once (one running, the next already there).
WINDOW = 2
#: Seconds of work an automatic chunk aims at, and the least a chunk shrinks to at a job's end.
CHUNK_SECONDS = 0.05
CHUNK_FLOOR = 0.002
#: Functions a worker keeps loaded (and the master remembers the ids of).
FUNCTIONS_KEPT = 512
#: Bytes of pickled arguments an automatic chunk aims to stay under.
CHUNK_BYTES = 4 * 1024 * 1024
#: A busy worker is sent its next chunk ahead of time when the running one is expected to take
#: less than this many seconds, or less than PREFETCH_RTTS round trips to it.
PREFETCH_BELOW = 0.005
PREFETCH_RTTS = 50
#: Pauses between attempts to restart a worker whose host could not be reached.
REPLACE_RETRY_DELAYS = (1.0, 2.0, 4.0)
#: Seconds between further rounds of those attempts while the host stays unreachable and other
#: workers carry on (a slot is never dropped for an outage; with no worker left, jobs fail).
SLOT_RETRY_SECONDS = 30.0
#: Seconds a worker may take to start (gateway, rsync, initializer excluded).
START_TIMEOUT = 60.0

_END = object()

#: Keys of a pool spec that describe the worker, passed on to workers started ``via=`` a host's relay.
_WORKER_KEYS = ("python", "chdir", "nice", "dont_write_bytecode", "max_frame")


class PoolTerminated(ExecpoolError):
    """The pool was terminated (or broke down) before this task's result arrived."""


@dataclasses.dataclass
class WorkerStats:
    """What one worker slot of a pool has done (replacements of it included)."""

    id: str
    spec: str
    host: str | None = None
    python: str | None = None
    state: str = "starting"
    tasks: int = 0
    failures: int = 0
    busy: float = 0.0
    idle: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    restarts: int = 0
    error: str | None = None


# -- jobs ---------------------------------------------------------------------------------


class Job:
    """One call of map/imap/apply...: its input, its function and where results go.

    Subclasses decide where results go; the scheduler thread calls
    ``deliver``/``fail``/``finish``, nothing else does.
    """

    limit: int | None = None  # most tasks pulled but not yet consumed (streams only)
    throttled = False  # set by the scheduler while a stream waits for its consumer

    def __init__(
        self,
        func: Callable[..., Any],
        items: Iterator[Any],
        total: int | None,
        mode: int,
        chunksize: int | None,
        progress: Any,
    ) -> None:
        self.func = func
        self.items = items
        self.total = total
        self.mode = mode
        self.chunksize = chunksize
        self.progress = progress
        self.fid = 0
        self.fpayload = b""
        self.by_value = False
        self.by_value_items = False
        self.next_index = 0
        self.exhausted = False
        self.pending = 0  # pulled, not yet delivered
        self.pulled = 0
        self.delivered = 0
        self.busy = 0.0
        self.measured = 0
        self.bytes_per_item = 0.0
        self._described: str | None = None
        self.prior: float | None = None  # seconds per task of earlier jobs of the same function
        self.ended = False
        self._bar: Any = None

    def describe(self) -> str:
        """``name (file:line)`` of the job's function: its key for task times, and for messages."""
        if self._described is None:
            self._described = _payload.describe_function(self.func)
        return self._described

    def pull(self, n: int) -> list[Any]:
        if self.exhausted:
            return []
        try:
            got = list(itertools.islice(self.items, n))
        except BaseException as exc:  # the caller's iterator raised: the job fails with it
            self.exhausted = True
            self.fail(exc)
            return []
        self.pulled += len(got)
        if len(got) < n or (self.total is not None and self.pulled >= self.total):
            self.exhausted = True
        self.pending += len(got)
        return got

    def per_task(self) -> float | None:
        """Seconds a task of this job takes on a worker: measured, else what earlier jobs of its
        function took, else None."""
        if self.measured:
            return self.busy / self.measured
        return self.prior

    def outstanding(self) -> int:
        """Tasks pulled from the input whose results the consumer has not taken (streams only)."""
        return 0

    def wants_input(self) -> bool:
        return not self.ended and not self.exhausted

    def deliver(self, indices: range | list[int], values: list[Any], errors: dict[int, BaseException]) -> None:
        raise NotImplementedError

    def fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def done(self) -> bool:
        return self.ended or (self.exhausted and self.pending == 0)

    def finish(self) -> None:
        self.close_progress()

    # progress ------------------------------------------------------------------
    def open_progress(self) -> None:
        if self.progress is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=getattr(self.func, "__name__", "tasks"), unit="task")

    def step_progress(self, n: int) -> None:
        self.delivered += n
        if self._bar is not None:
            self._bar.update(n)
        elif callable(self.progress):
            try:
                self.progress(self.delivered, self.total)
            except Exception:
                traceback.print_exc()

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
        self.chdir = chdir
        self.rsync_paths = [os.path.abspath(p) for p in rsync]
        self.modules = _payload.ModuleServer() if serve_modules else None
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.workers: list[_Worker] = []
        self.jobs: collections.deque[Job] = collections.deque()
        self.retry: collections.deque[_Chunk] = collections.deque()
        self.cids = itertools.count(1)
        self.fid_of: dict[bytes, int] = {}  # pickled function -> its id (jobs of one function share it)
        self.next_fid = itertools.count(1)
        self.state = "running"  # -> closing -> closed | terminated
        self.errors: list[str] = []
        self.needs_mine: set[Job] = set()  # jobs that only a worker of the master's Python can run
        # function -> (seconds per task, pickled bytes per task) from its last job
        self.task_times: dict[str, tuple[float, float]] = {}
        self.broken: BaseException | None = None  # set when no worker is left: every job fails with it
        self.starting = 0  # start-ups in progress (hosts being expanded, workers starting)
        self.finished = threading.Event()
        self.stopped = False  # set under ``lock`` when the scheduler thread ends
        self.lock = threading.Lock()  # guards stats snapshots and the host tables
        self.master_python = tuple(sys.version_info[:2])
        self.init_payload: bytes | None = None
        self.init_by_value = False
        if initializer is not None:
            why = _payload.needs_by_value(initializer)
            import cloudpickle

            try:
                self.init_payload = (cloudpickle if why else __import__("pickle")).dumps(
                    (initializer, tuple(initargs)), _payload.PROTOCOL
                )
            except Exception as exc:
                raise TypeError(
                    "the initializer %s cannot be pickled: %s" % (_payload.describe_function(initializer), exc)
                ) from exc
            self.init_by_value = why is not None
        self.hostkey = _local_hostkey()
        self.sync_base = (
            "~/.cache/execpool/sync/"
            + hashlib.sha256(("%s\0%s" % (self.hostkey, "\0".join(self.rsync_paths))).encode()).hexdigest()[:16]
        )
        self.synced: dict[tuple[str, str], threading.Event] = {}
        if isinstance(specs, Group):
            self.group = specs
            entries: list[tuple[XSpec | Gateway, int | str]] = [(gw, 1) for gw in specs]
        else:
            self.group = Group()
            entries = _entries(specs)
        self.hosts: list[_Host] = []
        self.thread = threading.Thread(target=self._run, name="execpool-pool-scheduler", daemon=True)
        self.thread.start()
        for entry, count in entries:
            self._expand(entry, count)

    # -- starting workers (starter threads) ------------------------------------------------

    def _expand(self, entry: XSpec | Gateway, count: int | str) -> None:
        with self.lock:
            self.starting += 1
        if isinstance(entry, Gateway):
            w = self._new_worker(entry.spec, None, str(entry.spec))
            w.gw = entry
            self._start_thread(w)
            with self.lock:
                self.starting -= 1
            return
        spec = entry
        relayed = spec.via is None and spec.transport in ("ssh", "socket") and count != 1
        if not relayed:
            n = (os.cpu_count() or 1) if count == "auto" else int(count)
            for _ in range(n):
                self._start_thread(self._new_worker(spec, None, str(spec)))
            with self.lock:
                self.starting -= 1
            return
        host = _Host(self, spec)
        self.hosts.append(host)
        threading.Thread(target=self._expand_host, args=(host, count), daemon=True, name="execpool-pool-host").start()

    def _expand_host(self, host: _Host, count: int | str) -> None:
        try:
            try:
                relay = host.relay()
                n = (relay.remote_info().cpu_count or 1) if count == "auto" else int(count)
            except BaseException as exc:
                w = self._new_worker(host.spec, host, str(host.spec))
                self.events.put(("startfail", w, exc))
                return
            for _ in range(n):
                self._start_thread(self._new_worker(host.spec, host, str(host.spec)))
        finally:
            with self.lock:
                self.starting -= 1
            self.events.put(("wake",))

    def _new_worker(self, spec: XSpec, host: _Host | None, shown: str) -> _Worker:
        with self.lock:
            w = _Worker(len(self.workers), spec, host, WorkerStats(id="w%d" % len(self.workers), spec=shown))
            self.workers.append(w)
        return w

    def _start_thread(self, w: _Worker) -> None:
        with self.lock:
            self.starting += 1
            w.gen += 1
            w.state = "starting"
            w.stats.state = "starting"
        threading.Thread(target=self._start, args=(w,), daemon=True, name="execpool-pool-start-%d" % w.index).start()

    def _start(self, w: _Worker) -> None:
        gw = w.gw
        gen = w.gen
        try:
            if gw is None or not gw.alive:
                gw = w.gw = self._new_gateway(w)
            if self.state != "running" and self.state != "closing":
                raise PoolTerminated("the pool was terminated while this worker started")
            paths, chdir = self._prepare(gw)
            ch = gw.remote_exec(_poolworker.serve)
            modch = None
            if self.modules is not None:
                modch = gw.newchannel()
                modch.setcallback(_module_answerer(self.modules, modch))
            ch.send(
                {
                    "modules": modch,
                    "prefer": ["cloudpickle"],  # by-value functions need the master's cloudpickle
                    "path": paths,
                    "chdir": self.chdir or chdir,
                    "trust": self.trusted,
                    "begin": self.timeout is not None,
                    "protocol": _payload.PROTOCOL,
                    "init": self.init_payload,
                }
            )
            first = ch.receive()
            if first[0] == _msg.INIT_ERROR:
                info = gw.remote_info()
                where = "worker %s (%s, Python %s)" % (w.stats.id, w.stats.spec, info.version)
                exc = _payload.rebuild_exception(first[1], self.trusted, where)
                raise GatewayStartError(
                    "the pool's initializer failed on %s: %s: %s" % (where, type(exc).__name__, exc)
                ) from exc
            if first[0] != _msg.READY:
                raise GatewayStartError("unexpected first message %r from pool worker %s" % (first[0], w.stats.id))
            info = gw.remote_info()
            w.ch = ch
            w.python = tuple(first[1]["python"])
            ch.setcallback(functools.partial(self._post_message, w, gen), endmarker=_END)
            with self.lock:
                if self.stopped:  # the scheduler is gone: nobody would ever end this gateway
                    raise PoolTerminated("the pool ended while this worker started")
                self.events.put(("ready", w, info))
        except BaseException as exc:
            if gw is not None:
                threading.Thread(target=gw.exit, args=(2.0,), daemon=True).start()
            self.events.put(("startfail", w, exc))

    def _new_gateway(self, w: _Worker) -> Gateway:
        """Start the worker's gateway.  A replacement tries again after 1, 2 and 4 s when its
        host cannot be reached: a connection that just failed is often back a moment later."""
        delays = list(REPLACE_RETRY_DELAYS) if w.replacing else []
        while True:
            try:
                if w.host is not None:
                    return self.group.makegateway(w.host.worker_spec(), start_timeout=START_TIMEOUT)
                return self.group.makegateway(_strip_pool_keys(w.spec), start_timeout=START_TIMEOUT)
            except (GatewayStartError, OSError) as exc:
                if not delays or self.state not in ("running", "closing") or isinstance(exc, InterpreterNotFound):
                    raise
                _trace.trace("pool worker", w.stats.id, "could not restart:", exc, "- trying again")
                time.sleep(delays.pop(0))

    def _post_message(self, w: _Worker, gen: int, msg: Any) -> None:
        self.events.put(("msg", w, msg, gen))

    def _prepare(self, gw: Gateway, paths: list[str] | None = None) -> tuple[list[str], str | None]:
        """Sync directories (default: ``rsync=``) to the gateway's host, once per host and directory.

        Returns the directories to put on the worker's ``sys.path`` and the
        working directory to give it (None when nothing had to be synced).
        """
        paths = self.rsync_paths if paths is None else paths
        if not paths:
            return [], None
        items = []
        for p in paths:
            st = os.stat(p)
            items.append((p, st.st_dev, st.st_ino))
        probe = gw.remote_exec(_hostkey.probe)
        probe.send((items, self.sync_base, self.hostkey))
        hostkey, shared, base = probe.receive(START_TIMEOUT)
        dirs = [os.path.dirname(p) for p, s in zip(paths, shared, strict=True) if s]
        todo = [p for p, s in zip(paths, shared, strict=True) if not s]
        for p in todo:
            key = (hostkey, p)
            with self.lock:
                ev = self.synced.get(key)
                mine = ev is None
                if mine:
                    ev = self.synced[key] = threading.Event()
            assert ev is not None
            if mine:
                try:
                    from .rsync import RSync

                    rs = RSync(p, verbose=False)
                    rs.add_target(gw, base + "/" + os.path.basename(p.rstrip(os.sep)))
                    rs.send()
                except BaseException:
                    with self.lock:
                        del self.synced[key]
                    raise
                finally:
                    ev.set()
            else:
                ev.wait()
                if key not in self.synced:
                    raise GatewayStartError("syncing %s to %s failed for another worker of the pool" % (p, hostkey))
        if not todo:
            return dirs, None
        return [base, *dirs], base

    def add_rsync(self, path: str) -> None:
        """Sync one more directory to every host of the pool now; later workers get it at start."""
        p = os.path.abspath(path)
        if not os.path.isdir(p):
            raise ValueError("Pool.rsync: %r is not a directory on the master" % path)
        if p not in self.rsync_paths:
            self.rsync_paths.append(p)
        for w in list(self.workers):
            gw, ch = w.gw, w.ch
            if w.state != "ready" or gw is None or ch is None:
                continue
            dirs, _ = self._prepare(gw, [p])
            try:
                ch.send((_msg.ADD_PATH, dirs))
            except OSError:
                pass  # the worker died; its replacement syncs at start

    # -- the public side (caller threads) ------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self.state != "running":
            raise ValueError("Pool not running: it was closed or terminated")
        why = _payload.needs_by_value(job.func)
        try:
            payload, by_value = _payload.dumps_function(job.func)
        except Exception as exc:
            raise TypeError("cannot send %s to the workers: %s" % (job.describe(), exc)) from exc
        if by_value or self.init_by_value:
            self._check_versions(job.describe(), why or "it cannot be pickled by reference")
        job.fpayload = payload
        job.by_value = by_value
        with self.lock:
            fid = self.fid_of.get(payload)
            if fid is None:
                if len(self.fid_of) >= FUNCTIONS_KEPT:
                    self.fid_of.pop(next(iter(self.fid_of)))
                fid = self.fid_of[payload] = next(self.next_fid)
        job.fid = fid
        job.open_progress()
        self.events.put(("job", job))

    def _check_versions(self, what: str, why: str) -> None:
        """Refuse by-value functions when a worker runs another Python (major, minor)."""
        deadline = time.monotonic() + START_TIMEOUT * 2
        while True:
            with self.lock:
                busy = self.starting
            if busy == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        mine = "%d.%d" % self.master_python
        for w in list(self.workers):
            if w.python is not None and w.python[:2] != self.master_python and w.state in ("ready", "starting"):
                raise ValueError(
                    "%s travels by value (cloudpickle) because %s; that needs the master's Python %s, "
                    "but worker %s (%s) runs Python %s. Move the function to a module the workers can import "
                    "(served from the master if they lack it), or use only Python %s workers."
                    % (what, why, mine, w.stats.id, w.stats.spec, ".".join(map(str, w.python)), mine)
                )

    def wake(self) -> None:
        self.events.put(("wake",))

    def close(self) -> None:
        if self.state == "running":
            self.state = "closing"
        self.events.put(("wake",))

    def terminate(self) -> None:
        if self.state in ("closed", "terminated"):
            return
        self.state = "terminated"
        self.events.put(("wake",))
        if threading.current_thread() is not self.thread:
            self.finished.wait(30.0)
        self._terminate_group()

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def stats(self) -> list[WorkerStats]:
        now = time.monotonic()
        out = []
        with self.lock:
            for w in self.workers:
                s = dataclasses.replace(w.stats)
                if w.ready_at is not None:
                    s.idle = max(0.0, s.idle + (now - w.ready_at) - w.busy_since_ready)
                out.append(s)
        return out

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
                    self._fail_all(PoolTerminated("the pool was terminated before this task finished"))
                    self._mark_ended()
                    break
                if self.state == "closing":
                    for job in self.jobs:  # no new work can come: an unread imap runs to its end,
                        job.limit = None  # as in multiprocessing (its results wait in memory)
                self._dispatch()
                if self.state == "closing" and not self.jobs and not self.retry:
                    self._shutdown_workers()
                    self.state = "closed"
                    break
        except BaseException as exc:
            text = traceback.format_exc()
            sys.stderr.write("execpool: the pool's scheduler failed; ending the pool:\n%s" % text)
            self.state = "terminated"
            self._fail_all(PoolTerminated("the pool's scheduler failed: %s: %s" % (type(exc).__name__, exc)))
            self._terminate_group()
        finally:
            with self.lock:
                self.stopped = True
            self._end_late_starters()
            self.finished.set()

    def _end_late_starters(self) -> None:
        """End the gateways of workers that became ready after the scheduler's last look."""
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return
            if ev[0] == "ready" and ev[1].gw is not None:
                threading.Thread(target=ev[1].gw.exit, args=(2.0,), daemon=True).start()

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "msg":
            if ev[3] == ev[1].gen:  # not from an earlier gateway of this worker slot
                self._on_message(ev[1], ev[2])
        elif kind == "job":
            job: Job = ev[1]
            if self.state == "terminated":
                job.fail(PoolTerminated("the pool was terminated"))
                job.finish()
            elif self.broken is not None:
                job.fail(self.broken)
                job.finish()
            else:
                prior = self.task_times.get(job.describe())
                if prior is not None:
                    job.prior, job.bytes_per_item = prior
                self.jobs.append(job)
                if job.by_value:
                    self.needs_mine.add(job)
        elif kind == "ready":
            self._on_ready(ev[1], ev[2])
        elif kind == "startfail":
            self._on_startfail(ev[1], ev[2])
        elif kind == "retryslot":
            self._on_retryslot(ev[1])
        elif kind == "retired":
            pass

    def _on_ready(self, w: _Worker, info: Any) -> None:
        with self.lock:
            self.starting -= 1
            w.state = "ready"
            w.ready_at = time.monotonic()
            w.busy_since_ready = 0.0
            w.stats.state = "ready"
            w.stats.host = info.hostname
            w.stats.python = info.version
            w.stats.error = None
        if self.state == "terminated":
            self._retire(w, kill=True)

    def _on_startfail(self, w: _Worker, exc: BaseException) -> None:
        with self.lock:
            self.starting -= 1
            w.state = "failed"
            w.stats.state = "failed"
            w.stats.error = "%s: %s" % (type(exc).__name__, exc)
        retry = w.replacing and isinstance(exc, HostUnreachable) and self._wants_workers()
        if self.state in ("running", "closing"):
            self.errors.append("%s (%s): %s" % (w.stats.id, w.stats.spec, w.stats.error))
            later = "; trying again in %g s" % SLOT_RETRY_SECONDS if retry else ""
            sys.stderr.write(
                "execpool: pool worker %s (%s) could not start: %s%s\n"
                % (w.stats.id, w.stats.spec, w.stats.error, later)
            )
        if retry:
            timer = threading.Timer(SLOT_RETRY_SECONDS, self.events.put, args=(("retryslot", w),))
            timer.daemon = True
            timer.start()
        self._check_alive()

    def _wants_workers(self) -> bool:
        return self.broken is None and (self.state == "running" or (self.state == "closing" and bool(self.jobs)))

    def _on_retryslot(self, w: _Worker) -> None:
        if w.state == "failed" and self._wants_workers():
            _trace.trace("pool worker", w.stats.id, "trying its host again")
            self._start_thread(w)

    def _check_alive(self) -> None:
        with self.lock:
            if self.starting or any(w.state in ("ready", "starting", "retiring") for w in self.workers):
                return
        if self.state not in ("running", "closing"):
            return
        msg = "the pool has no worker left:\n  " + "\n  ".join(self.errors[-len(self.workers) :] or ["no worker"])
        self.broken = GatewayStartError(msg)
        self._fail_all(self.broken)

    def _fail_all(self, exc: BaseException) -> None:
        for job in list(self.jobs):
            if not job.ended:
                job.fail(exc)
            job.finish()
        self.jobs.clear()
        self.retry.clear()
        for w in self.workers:
            w.inflight.clear()

    def _on_message(self, w: _Worker, msg: Any) -> None:
        if msg is _END:
            self._on_lost(w)
            return
        kind = msg[0]
        if kind == _msg.RESULTS:
            _, cid, data, busy, errors = msg
            chunk = w.inflight.pop(cid, None)
            if chunk is None:
                return
            now = time.monotonic()
            n = len(chunk.indices)
            with self.lock:
                w.stats.tasks += n
                w.stats.busy += busy
                w.busy_since_ready += busy
                w.stats.bytes_received += len(data)
                if errors:
                    w.stats.failures += len(errors)
            if w.current == cid:
                w.current = None
                w.deadline = None
            if self.timeout is not None and w.current is None and w.inflight:
                w.current = next(iter(w.inflight))  # the worker goes on with its next chunk now
                w.deadline = now + self.timeout
            if chunk.sent_at is not None and chunk.queued_behind == 0:
                rtt = max(0.0, now - chunk.sent_at - busy)
                w.rtt = rtt if w.rtt is None else 0.8 * w.rtt + 0.2 * rtt
            job = chunk.job
            err: BaseException
            job.busy += busy
            job.measured += n
            self._remember_task_time(job)
            if job.ended:
                self._after_result(w)
                return
            where = self._where(w)
            whole = [pack for i, pack in errors or () if i < 0]
            if whole:  # the whole chunk failed: its function or its arguments did not load
                err = _payload.rebuild_exception(whole[0], self.trusted, "%s, task #%s" % (where, chunk.indices[0]))
                self._deliver(job, chunk, [None] * n, dict.fromkeys(range(n), err))
                self._after_result(w)
                return
            try:
                values = _payload.loads_results(data, self.trusted)
                if not isinstance(values, list) or len(values) != n:
                    raise ValueError("expected %d results, got %r" % (n, type(values).__name__))
            except Exception as exc:
                err = ExecpoolError("cannot load the results from %s: %s: %s" % (where, type(exc).__name__, exc))
                self._deliver(job, chunk, [None] * n, dict.fromkeys(range(n), err))
            else:
                errs: dict[int, BaseException] = {}
                for i, pack in errors or ():
                    errs[i] = _payload.rebuild_exception(pack, self.trusted, "%s, task #%s" % (where, chunk.indices[i]))
                self._deliver(job, chunk, values, errs)
            self._after_result(w)
        elif kind == _msg.BEGUN:
            if msg[1] in w.inflight:
                w.current = msg[1]
                w.deadline = time.monotonic() + (self.timeout or 0.0)

    def _remember_task_time(self, job: Job) -> None:
        """Keep the function's time per task for its next job's first chunk (few functions are kept)."""
        key = job.describe()
        if key not in self.task_times and len(self.task_times) >= 256:
            self.task_times.pop(next(iter(self.task_times)))
        self.task_times[key] = (job.busy / job.measured, job.bytes_per_item)

    def _deliver(self, job: Job, chunk: _Chunk, values: list[Any], errs: dict[int, BaseException]) -> None:
        n = len(chunk.indices)
        job.pending -= n
        job.deliver(chunk.indices, values, errs)
        job.step_progress(n)
        if job.done():
            self._end_job(job)

    def _after_result(self, w: _Worker) -> None:
        if self.maxtasks is not None and w.dispatched >= self.maxtasks and not w.inflight and w.state == "ready":
            self._retire(w, kill=False)
            if self.state in ("running", "closing"):
                with self.lock:
                    w.stats.restarts += 1
                self._replace(w)

    def _on_lost(self, w: _Worker) -> None:
        if w.state in ("retiring", "dead", "failed") and not w.inflight:
            w.state = "dead" if w.state == "retiring" else w.state
            return
        reason = _lost_reason(w)
        chunks = list(w.inflight.values())
        w.inflight.clear()
        w.state = "dead"
        with self.lock:
            w.stats.state = "dead"
            if w.ready_at is not None:
                w.stats.idle += max(0.0, time.monotonic() - w.ready_at - w.busy_since_ready)
                w.ready_at = None
        requeue: list[_Chunk] = []
        if chunks and not w.killed:
            suspect = chunks.pop(0)
            if len(suspect.indices) > 1:
                # Which of its tasks killed the worker is unknown: run them one at a time; the one
                # that kills again is charged this death too (the others never are).
                for i, idx in enumerate(suspect.indices):
                    single = _Chunk(next(self.cids), suspect.job, [idx], [suspect.items[i]], suspect.attempts)
                    single.unattributed = suspect.unattributed + 1
                    requeue.append(single)
            else:
                suspect.attempts += 1 + suspect.unattributed
                suspect.unattributed = 0
                if suspect.attempts > self.retries:
                    err = WorkerLost(
                        "task #%d of %s was running on %s when the worker died (%s); %d worker%s died running "
                        "it (retries=%d). The task may crash its interpreter (segfault, os._exit, out of "
                        "memory), or the host or its connection failed."
                        % (
                            suspect.indices[0],
                            suspect.job.describe(),
                            self._where(w),
                            reason,
                            suspect.attempts,
                            "s" if suspect.attempts > 1 else "",
                            self.retries,
                        )
                    )
                    with self.lock:
                        w.stats.failures += 1
                    if not suspect.job.ended:
                        self._deliver(suspect.job, suspect, [None], {0: err})
                else:
                    requeue.append(suspect)
        requeue.extend(chunks)
        for c in reversed(requeue):
            if not c.job.ended:
                c.payload = None
                self.retry.appendleft(c)
        if self.state in ("running", "closing") and (self.jobs or self.retry or self.state == "running"):
            with self.lock:
                w.stats.restarts += 1
            self._replace(w)
        else:
            self._check_alive()

    def _replace(self, w: _Worker) -> None:
        old = w.gw
        if old is not None:  # end what is left of it (and take it out of the group)
            threading.Thread(target=old.exit, args=(1.0,), daemon=True).start()
        w.replacing = True
        w.gw = None
        w.ch = None
        w.killed = False
        w.dispatched = 0
        w.funcs = set()
        w.current = None
        w.deadline = None
        self._start_thread(w)

    def _retire(self, w: _Worker, kill: bool) -> None:
        """Stop giving ``w`` work and end its gateway in the background."""
        w.state = "retiring"
        with self.lock:
            w.stats.state = "retired"
            if w.ready_at is not None:
                w.stats.idle += max(0.0, time.monotonic() - w.ready_at - w.busy_since_ready)
                w.ready_at = None
        gw, ch = w.gw, w.ch
        if ch is not None and not kill:
            try:
                ch.send((_msg.EXIT,))
            except OSError:
                pass
        if gw is not None:
            threading.Thread(target=gw.exit, args=(0.0 if kill else 5.0,), daemon=True).start()

    def _where(self, w: _Worker) -> str:
        s = w.stats
        return "worker %s (%s, host %s, Python %s)" % (s.id, s.spec, s.host or "?", s.python or "?")

    # timeouts ---------------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.workers if w.deadline is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _check_timeouts(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for w in self.workers:
            if w.deadline is None or w.deadline > now or w.current is None:
                continue
            chunk = w.inflight.pop(w.current, None)
            w.deadline = None
            w.current = None
            if chunk is None:
                continue
            w.killed = True
            with self.lock:
                w.stats.failures += len(chunk.indices)
            err = TimeoutError(
                "task #%d of %s did not finish within timeout=%s seconds on %s; the worker was killed and "
                "replaced" % (chunk.indices[0], chunk.job.describe(), self.timeout, self._where(w))
            )
            if not chunk.job.ended:
                self._deliver(
                    chunk.job, chunk, [None] * len(chunk.indices), dict.fromkeys(range(len(chunk.indices)), err)
                )
            gw = w.gw
            if gw is not None:
                threading.Thread(target=gw.exit, args=(0.0,), daemon=True).start()

    # dispatch ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.state not in ("running", "closing"):
            return
        self._fail_starving()
        ready = [w for w in self.workers if w.state == "ready"]
        if not ready:
            return
        progress = True
        while progress:
            progress = False
            for w in ready:
                if w.state != "ready" or len(w.inflight) >= WINDOW or not self._wants_more(w):
                    continue
                if self.maxtasks is not None and w.dispatched >= self.maxtasks:
                    continue
                chunk = self._next_chunk(w, len(ready))
                if chunk is None:
                    continue
                self._send_chunk(w, chunk)
                progress = True
        self._fail_starving()  # a chunk found to need the master's Python may have been put back

    def _wants_more(self, w: _Worker) -> bool:
        """Whether ``w`` should get another chunk now.

        An idle worker always does.  A busy one gets the next chunk ahead of time only when
        its current chunk is expected to be short next to a round trip (then waiting for the
        result before sending more would leave it idle for a noticeable share of the time);
        long chunks are not queued behind each other, so a worker that starts later, or
        finishes earlier, finds work instead of watching another worker's queue.
        """
        if not w.inflight:
            return True
        running = next(iter(w.inflight.values()))
        job = running.job
        per = job.per_task()
        if per is None:
            return False
        expected = per * len(running.indices)
        return expected < max(PREFETCH_BELOW, PREFETCH_RTTS * (w.rtt or 0.0))

    def _fail_starving(self) -> None:
        """Fail jobs that only a worker of the master's Python can run when no such worker is left."""
        self.needs_mine = {j for j in self.needs_mine if not j.ended}
        if not self.needs_mine:
            return
        if any(
            w.state == "starting"
            or (w.state == "ready" and w.python is not None and w.python[:2] == self.master_python)
            for w in self.workers
        ):
            return
        for job in list(self.needs_mine):
            what = "%s" % job.describe() if job.by_value else "the arguments of %s" % job.describe()
            job.fail(
                ValueError(
                    "%s travel by value (cloudpickle), which needs a worker of the master's Python %s; "
                    "the pool has no such worker. Make them importable (module-level functions and classes) "
                    "so that plain pickle can send them." % (what, "%d.%d" % self.master_python)
                )
            )
            self._end_job(job)
        self.needs_mine.clear()

    def _end_job(self, job: Job) -> None:
        job.finish()
        job.ended = True
        try:
            self.jobs.remove(job)
        except ValueError:
            pass

    def _next_chunk(self, w: _Worker, nworkers: int) -> _Chunk | None:
        for i, c in enumerate(self.retry):
            if c.job.ended:
                continue
            if self._compatible(w, c.job):
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
            if not job.wants_input() or not self._compatible(w, job):
                if job.done():
                    finished.append(job)
                continue
            if job.limit is not None:  # an imap: not more than ``limit`` tasks ahead of its consumer
                # Flag first, then look: a consumer that takes a result after the flag is set
                # wakes us; one that took it before is seen in outstanding() (no lost wake-up).
                job.throttled = True
                if job.outstanding() >= job.limit:
                    continue
                job.throttled = False
            n = self._chunk_size(job, w, nworkers)
            if job.limit is not None:
                n = min(n, job.limit - job.outstanding())
            start = job.next_index
            items = job.pull(n)
            if not items:
                if job.done():
                    finished.append(job)
                continue
            job.next_index += len(items)
            chunk = _Chunk(next(self.cids), job, range(start, start + len(items)), items, 0)
            break
        for job in finished:
            self._end_job(job)
        return chunk

    def _compatible(self, w: _Worker, job: Job) -> bool:
        if not (job.by_value or job.by_value_items):
            return True
        return w.python is not None and w.python[:2] == self.master_python

    def _chunk_size(self, job: Job, w: _Worker, nworkers: int) -> int:
        if self.timeout is not None:
            return 1
        if job.chunksize:
            n = job.chunksize
        elif job.per_task() is None:
            n = 1  # nothing known yet: one task, and a first result soon
        else:
            per = max(job.per_task() or 0.0, 1e-7)
            target = max(CHUNK_SECONDS, 4 * (w.rtt or 0.0))
            n = max(1, int(target / per))
            if job.total is not None:
                # Towards the end, smaller chunks so that the workers finish together; but never
                # below CHUNK_FLOOR seconds of work, where messages would cost more than balance gains.
                remaining = job.total - job.next_index
                floor = max(1, int(CHUNK_FLOOR / per))
                n = min(n, max(floor, math.ceil(remaining / (2 * nworkers))))
            if job.bytes_per_item > 0:
                n = min(n, max(1, int(CHUNK_BYTES / job.bytes_per_item)))
            if job.limit is not None:  # an imap: stay well inside its read-ahead bound
                n = min(n, max(1, job.limit // (2 * WINDOW * nworkers)))
        if self.maxtasks is not None:
            n = min(n, self.maxtasks - w.dispatched)
        return max(1, n)

    def _send_chunk(self, w: _Worker, chunk: _Chunk) -> None:
        job = chunk.job
        ch = w.ch
        assert ch is not None
        try:
            if chunk.payload is None:
                chunk.payload, by_value = _payload.dumps_items(chunk.items)
                if by_value and not job.by_value_items:
                    job.by_value_items = True
                    self.needs_mine.add(job)
                    if not self._compatible(w, job):
                        self.retry.appendleft(chunk)
                        return
                n = len(chunk.indices)
                job.bytes_per_item = (
                    0.7 * job.bytes_per_item + 0.3 * (len(chunk.payload) / n)
                    if job.bytes_per_item
                    else len(chunk.payload) / n
                )
        except Exception as exc:
            err = TypeError(
                "cannot send the arguments of tasks #%d-#%d of %s: %s"
                % (chunk.indices[0], chunk.indices[-1], job.describe(), exc)
            )
            self._deliver(job, chunk, [None] * len(chunk.indices), dict.fromkeys(range(len(chunk.indices)), err))
            return
        chunk.queued_behind = len(w.inflight)
        chunk.sent_at = time.monotonic()
        w.inflight[chunk.cid] = chunk
        if self.timeout is not None and w.current is None:
            # The clock runs from now; the worker's "b" (it started the task) restarts it.
            w.current = chunk.cid
            w.deadline = chunk.sent_at + self.timeout
        w.dispatched += len(chunk.indices)
        try:
            if job.fid not in w.funcs:
                if len(w.funcs) >= FUNCTIONS_KEPT:
                    ch.send((_msg.FORGET,))  # the worker forgets its functions; later tasks send theirs again
                    w.funcs.clear()
                ch.send((_msg.FUNCTION, job.fid, job.fpayload))
                w.funcs.add(job.fid)
                w.stats.bytes_sent += len(job.fpayload)
            ch.send((_msg.TASKS, chunk.cid, job.fid, job.mode, chunk.payload))
            w.stats.bytes_sent += len(chunk.payload)
        except OSError:
            pass  # the worker is gone: its endmarker re-queues what it held

    # shutting down --------------------------------------------------------------------------

    def _shutdown_workers(self) -> None:
        for w in self.workers:
            if w.state == "ready" and w.ch is not None:
                try:
                    w.ch.send((_msg.EXIT,))  # the worker loop returns; exiting the gateways ends the processes
                except OSError:
                    pass
        self._terminate_group(timeout=10.0)
        self._mark_ended()

    def _mark_ended(self) -> None:
        with self.lock:
            for w in self.workers:
                if w.stats.state in ("starting", "ready", "dead"):
                    w.stats.state = "ended"

    def _terminate_group(self, timeout: float = 2.0) -> None:
        try:
            self.group.terminate(timeout)
        except Exception:
            traceback.print_exc()
        for job in list(self.jobs):
            job.close_progress()


class _Chunk:
    __slots__ = ("attempts", "cid", "indices", "items", "job", "payload", "queued_behind", "sent_at", "unattributed")

    def __init__(self, cid: int, job: Job, indices: range | list[int], items: list[Any], attempts: int) -> None:
        self.cid = cid
        self.job = job
        self.indices = indices
        self.items = items
        self.attempts = attempts  # worker deaths charged to this (single-task) chunk
        self.unattributed = 0  # deaths of a larger chunk it was part of, charged if it kills again
        self.payload: bytes | None = None
        self.sent_at: float | None = None
        self.queued_behind = 0


class _Worker:
    def __init__(self, index: int, spec: XSpec, host: _Host | None, stats: WorkerStats) -> None:
        self.index = index
        self.spec = spec
        self.host = host
        self.stats = stats
        self.gw: Gateway | None = None
        self.ch: Channel | None = None
        self.state = "starting"
        self.python: tuple[int, ...] | None = None
        self.inflight: collections.OrderedDict[int, _Chunk] = collections.OrderedDict()
        self.funcs: set[int] = set()
        self.dispatched = 0
        self.rtt: float | None = None
        self.current: int | None = None
        self.deadline: float | None = None
        self.killed = False
        self.ready_at: float | None = None
        self.busy_since_ready = 0.0
        self.gen = 0  # incremented at each start: messages of an earlier gateway are ignored
        self.replacing = False  # a start after a loss: retried if the host is unreachable


class _Host:
    """One host whose workers share a single gateway (the relay): ``ssh=host//workers=N``."""

    def __init__(self, sched: Scheduler, spec: XSpec) -> None:
        self.sched = sched
        self.spec = spec
        self.lock = threading.Lock()
        self.gw: Gateway | None = None

    def relay(self) -> Gateway:
        with self.lock:
            if self.gw is None or not self.gw.alive:
                self.gw = self.sched.group.makegateway(_strip_pool_keys(self.spec), start_timeout=START_TIMEOUT)
            return self.gw

    def worker_spec(self) -> str:
        relay = self.relay()
        parts = ["popen", "via=%s" % relay.id]
        for key in _WORKER_KEYS:
            value = getattr(self.spec, key)
            if value is True:
                parts.append(key)
            elif value is not None:
                parts.append("%s=%s" % (key, value))
        parts += ["env:%s=%s" % kv for kv in self.spec.env.items()]
        return "//".join(parts)


def _strip_pool_keys(spec: XSpec) -> str:
    """The gateway spec of a pool spec: without ``workers=`` and without ``id=`` (the pool names its gateways)."""
    drop = ("workers=", "id=")
    return "//".join(p for p in str(spec).split("//") if not p.startswith(drop) and p not in ("workers", "id"))


def _entries(specs: Any) -> list[tuple[XSpec | Gateway, int | str]]:
    if specs is None:
        specs = os.cpu_count() or 1
    if isinstance(specs, bool):
        raise TypeError("Pool(specs=...) takes None, a number of local workers or a list of xspecs, not %r" % specs)
    if isinstance(specs, int):
        if specs < 1:
            raise ValueError("Pool needs at least one worker, got %d" % specs)
        return [(XSpec("popen"), specs)]
    if isinstance(specs, (str, XSpec)):
        specs = [specs]
    out: list[tuple[XSpec | Gateway, int | str]] = []
    for s in specs:
        spec = s if isinstance(s, XSpec) else XSpec(s)
        workers = getattr(spec, "workers", None)
        count: int | str
        if workers is None:
            count = 1
        elif workers == "auto":
            count = "auto"
        else:
            try:
                count = int(workers)
            except (TypeError, ValueError):
                raise ValueError("xspec %r: workers= takes a number or 'auto', not %r" % (str(spec), workers)) from None
            if count < 1:
                raise ValueError("xspec %r: workers= must be at least 1" % str(spec))
        if count != 1 and spec.id is not None:
            raise ValueError("xspec %r: id= names one gateway; it cannot be combined with workers=" % str(spec))
        out.append((spec, count))
    if not out:
        raise ValueError("Pool needs at least one worker spec")
    return out


def _module_answerer(server: _payload.ModuleServer, modch: Channel) -> Callable[[Any], None]:
    def answer(name: Any) -> None:
        try:
            reply = server.answer(name)
        except Exception:
            reply = None
        try:
            modch.send(reply)
        except OSError:
            pass

    return answer


def _lost_reason(w: _Worker) -> str:
    gw = w.gw
    if gw is None:
        return "its gateway was gone"
    lost = getattr(gw, "_lost", None)
    return str(lost) if lost else "its channel closed"


def _local_hostkey() -> str:
    return _hostkey.host_key()
