"""Slots: the scheduler's record of each pool worker, and how their worker processes start and end.

A *worker process* is an interpreter behind a gateway; a *pool worker* is the
loop the pool runs in it (``_shipped/poolworker.py``, started with
``gateway.remote_exec(poolworker.serve)``); a *slot* (:class:`Slot`) is the
scheduler's record of one: its gateway and task channel, its chunks in flight,
its state (:class:`~execpool._pool.states.SlotState`) and its public
:class:`WorkerStats`.  ``workers=N`` in a spec makes N slots.

:class:`SlotTable` owns the slots: it expands the pool's specs into slots,
starts each in a starter thread (gateway, host sync, pool worker, initializer),
replaces a lost or retired one (a new gateway of the same spec, tried again
after 1, 2 and 4 s when its host cannot be reached), and retires them.
``ssh=host//workers=N`` starts one gateway to the host (the relay,
:class:`Host`) and N worker processes ``via=`` it: one ssh login per host.
Starter threads and a slot's channel callback tell the scheduler what
happened through a :class:`Reporter` (ready, start failed, a message, lost),
which the scheduler turns into events on its queue.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .. import _payload
from .._shipped import poolmsg as _msg
from .._shipped import poolworker as _poolworker
from .._shipped import trace as _trace
from .._shipped.channel import Channel
from .._shipped.errors import GatewayStartError, InterpreterNotFound
from .._xspec import XSpec
from ..gateway import Gateway
from ..group import Group
from .hostsync import HostSync
from .jobs import Chunk, PoolTerminated
from .states import SlotState, Trigger, advance

#: Pauses between attempts to restart a slot whose host could not be reached.
REPLACE_RETRY_DELAYS = (1.0, 2.0, 4.0)
#: Seconds between further rounds of those attempts while the host stays unreachable and other
#: slots carry on (a slot is never dropped for an outage; with no slot left, jobs fail).
SLOT_RETRY_SECONDS = 30.0
#: Seconds a worker process may take to start (gateway, rsync, initializer excluded).
START_TIMEOUT = 60.0

#: Keys of a pool spec that describe the worker process, passed on to those started ``via=`` a relay.
_WORKER_KEYS = ("python", "chdir", "nice", "dont_write_bytecode", "max_frame")

_END = object()


@dataclasses.dataclass
class WorkerStats:
    """What one slot of a pool (one pool worker, its replacements included) has done."""

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


@dataclasses.dataclass(frozen=True)
class StartSettings:
    """What every pool worker is started with."""

    modules: _payload.ModuleServer | None
    chdir: str | None
    trusted: bool
    begin: bool  # the pool worker says when it begins a chunk (timeout=)
    init_payload: bytes | None


class Slot:
    """The scheduler's record of one pool worker (see the module docstring)."""

    def __init__(self, index: int, spec: XSpec, host: Host | None, stats: WorkerStats) -> None:
        self.index = index
        self.spec = spec
        self.host = host
        self.stats = stats
        self.gw: Gateway | None = None
        self.ch: Channel | None = None
        self.state = SlotState.NEW
        self.python: tuple[int, ...] | None = None
        self.inflight: collections.OrderedDict[int, Chunk] = collections.OrderedDict()
        self.funcs: set[int] = set()
        self.dispatched = 0
        self.rtt: float | None = None
        self.current: int | None = None
        self.deadline: float | None = None
        self.killed = False  # the pool killed it (timeout): its chunks are not charged the death
        self.fault: str | None = None  # why the pool ended it (a malformed message)
        self.ready_at: float | None = None
        self.busy_since_ready = 0.0
        self.gen = 0  # incremented at each start: messages of an earlier gateway are ignored
        self.replacing = False  # a start after a loss: retried if the host is unreachable

    def advance(self, trigger: Trigger) -> None:
        self.state = advance(self.state, trigger, "slot %s (%s)" % (self.stats.id, self.stats.spec))

    def where(self) -> str:
        """``pool worker w0 (spec, host h, Python 3.x)``, for messages."""
        s = self.stats
        return "pool worker %s (%s, host %s, Python %s)" % (s.id, s.spec, s.host or "?", s.python or "?")

    def lost_reason(self) -> str:
        if self.fault is not None:
            return self.fault
        gw = self.gw
        if gw is None:
            return "its gateway was gone"
        lost = getattr(gw, "_lost", None)
        return str(lost) if lost else "its channel closed"


class Host:
    """One host whose worker processes share a single gateway (the relay): ``ssh=host//workers=N``."""

    def __init__(self, group: Group, spec: XSpec) -> None:
        self.group = group
        self.spec = spec
        self.lock = threading.Lock()
        self.gw: Gateway | None = None

    def relay(self) -> Gateway:
        with self.lock:
            if self.gw is None or not self.gw.alive:
                self.gw = self.group.makegateway(strip_pool_keys(self.spec), start_timeout=START_TIMEOUT)
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


class Reporter(Protocol):
    """How starter threads and channel callbacks tell the scheduler what happened to a slot
    (the scheduler turns each call into an event on its queue)."""

    def ready(self, slot: Slot, gen: int, info: Any) -> None: ...

    def start_failed(self, slot: Slot, gen: int, error: BaseException, counted: bool = True) -> None: ...

    def message(self, slot: Slot, gen: int, msg: Any) -> None: ...

    def lost(self, slot: Slot, gen: int) -> None: ...

    def wake(self) -> None: ...


class SlotTable:
    """The pool's slots, and the starter threads that bring their pool workers up."""

    def __init__(
        self,
        group: Group,
        report: Reporter,
        settings: StartSettings,
        hostsync: HostSync,
        accepting: Callable[[], bool],
    ) -> None:
        self.group = group
        self.report = report
        self.settings = settings
        self.hostsync = hostsync
        self.accepting = accepting  # whether the pool still takes work (starts are worth finishing)
        self.slots: list[Slot] = []
        self.hosts: list[Host] = []
        self.lock = threading.Lock()  # guards stats snapshots, ``starting`` and ``stopped``
        self.starting = 0  # start-ups in progress (hosts being expanded, slots starting)
        self.stopped = False  # set under ``lock`` when the scheduler thread ends

    # -- expanding specs ---------------------------------------------------------------------

    def expand(self, entry: XSpec | Gateway, count: int | str) -> None:
        """Make the slots of one spec (or of one existing gateway) and start them."""
        if isinstance(entry, Gateway):
            slot = self._new_slot(entry.spec, None)
            slot.gw = entry
            self.start(slot)
            return
        spec = entry
        relayed = spec.via is None and spec.transport in ("ssh", "socket") and count != 1
        if not relayed:
            n = (os.cpu_count() or 1) if count == "auto" else int(count)
            for _ in range(n):
                self.start(self._new_slot(spec, None))
            return
        host = Host(self.group, spec)
        self.hosts.append(host)
        with self.lock:
            self.starting += 1
        threading.Thread(target=self._expand_host, args=(host, count), daemon=True, name="execpool-pool-host").start()

    def _expand_host(self, host: Host, count: int | str) -> None:
        try:
            try:
                relay = host.relay()
                n = (relay.remote_info().cpu_count or 1) if count == "auto" else int(count)
            except BaseException as exc:
                self.report.start_failed(self._new_slot(host.spec, host), 0, exc, counted=False)
                return
            for _ in range(n):
                self.start(self._new_slot(host.spec, host))
        finally:
            with self.lock:
                self.starting -= 1
            self.report.wake()

    def _new_slot(self, spec: XSpec, host: Host | None) -> Slot:
        with self.lock:
            n = len(self.slots)
            slot = Slot(n, spec, host, WorkerStats(id="w%d" % n, spec=str(spec)))
            self.slots.append(slot)
        return slot

    # -- starting (starter threads) ------------------------------------------------------------

    def start(self, slot: Slot) -> None:
        """Start ``slot``'s pool worker in a starter thread (its gateway too, if it has none)."""
        with self.lock:
            self.starting += 1
            slot.gen += 1
            slot.advance(Trigger.START)
            slot.stats.state = "starting"
        threading.Thread(
            target=self._start, args=(slot,), daemon=True, name="execpool-pool-start-%d" % slot.index
        ).start()

    def _start(self, slot: Slot) -> None:
        gw = slot.gw
        gen = slot.gen
        settings = self.settings
        try:
            if gw is None or not gw.alive:
                gw = slot.gw = self._new_gateway(slot)
            if not self.accepting():
                raise PoolTerminated("the pool was terminated while this pool worker started")
            paths, chdir = self.hostsync.prepare(gw)
            ch = gw.remote_exec(_poolworker.serve)
            modch = None
            if settings.modules is not None:
                modch = gw.newchannel()
                modch.setcallback(_module_answerer(settings.modules, modch))
            ch.send(
                {
                    "modules": modch,
                    "prefer": ["cloudpickle"],  # by-value functions need the master's cloudpickle
                    "path": paths,
                    "chdir": settings.chdir or chdir,
                    "trust": settings.trusted,
                    "begin": settings.begin,
                    "protocol": _payload.PROTOCOL,
                    "init": settings.init_payload,
                }
            )
            try:
                first = _msg.from_worker(ch.receive())
            except _msg.MalformedMessage as exc:
                raise GatewayStartError("pool worker %s (%s) sent %s" % (slot.stats.id, slot.stats.spec, exc)) from None
            if isinstance(first, _msg.InitError):
                info = gw.remote_info()
                where = "pool worker %s (%s, Python %s)" % (slot.stats.id, slot.stats.spec, info.version)
                err = _payload.rebuild_exception(first.pack, settings.trusted, where)
                raise GatewayStartError(
                    "the pool's initializer failed on %s: %s: %s" % (where, type(err).__name__, err)
                ) from err
            if not isinstance(first, _msg.Ready):
                raise GatewayStartError(
                    "pool worker %s (%s) sent a %s message before ready"
                    % (slot.stats.id, slot.stats.spec, type(first).__name__)
                )
            info = gw.remote_info()
            slot.ch = ch
            slot.python = first.python
            ch.setcallback(self._poster(slot, gen), endmarker=_END)
            with self.lock:
                if self.stopped:  # the scheduler is gone: nobody would ever end this gateway
                    raise PoolTerminated("the pool ended while this pool worker started")
                self.report.ready(slot, gen, info)
        except BaseException as exc:
            if gw is not None:
                threading.Thread(target=gw.exit, args=(2.0,), daemon=True).start()
            self.report.start_failed(slot, gen, exc)

    def _poster(self, slot: Slot, gen: int) -> Callable[[Any], None]:
        report = self.report

        def post(msg: Any) -> None:
            if msg is _END:
                report.lost(slot, gen)
            else:
                report.message(slot, gen, msg)

        return post

    def _new_gateway(self, slot: Slot) -> Gateway:
        """Start the slot's gateway.  A replacement tries again after 1, 2 and 4 s when its host
        cannot be reached: a connection that just failed is often back a moment later."""
        delays = list(REPLACE_RETRY_DELAYS) if slot.replacing else []
        while True:
            try:
                if slot.host is not None:
                    return self.group.makegateway(slot.host.worker_spec(), start_timeout=START_TIMEOUT)
                return self.group.makegateway(strip_pool_keys(slot.spec), start_timeout=START_TIMEOUT)
            except (GatewayStartError, OSError) as exc:
                if not delays or not self.accepting() or isinstance(exc, InterpreterNotFound):
                    raise
                _trace.trace("pool worker", slot.stats.id, "could not restart:", exc, "- trying again")
                time.sleep(delays.pop(0))

    # -- replacing and retiring (scheduler thread) --------------------------------------------

    def replace(self, slot: Slot) -> None:
        """End what is left of the slot's worker process and start a new one in its place."""
        old = slot.gw
        if old is not None:  # end what is left of it (and take it out of the group)
            threading.Thread(target=old.exit, args=(1.0,), daemon=True).start()
        slot.replacing = True
        slot.gw = None
        slot.ch = None
        slot.killed = False
        slot.fault = None
        slot.dispatched = 0
        slot.funcs = set()
        slot.current = None
        slot.deadline = None
        self.start(slot)

    def retire(self, slot: Slot, kill: bool) -> None:
        """Give ``slot`` no more work and end its gateway in the background (at once if ``kill``)."""
        slot.advance(Trigger.RETIRE)
        with self.lock:
            slot.stats.state = "retired"
            self.stop_idle_clock(slot)
        gw, ch = slot.gw, slot.ch
        if ch is not None and not kill:
            try:
                ch.send((_msg.EXIT,))
            except OSError:
                pass
        if gw is not None:
            threading.Thread(target=gw.exit, args=(0.0 if kill else 5.0,), daemon=True).start()

    def stop_idle_clock(self, slot: Slot) -> None:
        """Add the slot's idle time since it became ready to its stats (call with ``lock`` held)."""
        if slot.ready_at is not None:
            slot.stats.idle += max(0.0, time.monotonic() - slot.ready_at - slot.busy_since_ready)
            slot.ready_at = None

    def kill(self, slot: Slot) -> None:
        """End the slot's gateway now (its loss arrives as a Lost event)."""
        gw = slot.gw
        if gw is not None:
            threading.Thread(target=gw.exit, args=(0.0,), daemon=True).start()

    def mark_ended(self) -> None:
        with self.lock:
            for slot in self.slots:
                if slot.stats.state in ("starting", "ready", "dead"):
                    slot.stats.state = "ended"

    def sync_directory(self, path: str) -> None:
        """Sync one more directory to every host now and put it on the ready pool workers' path;
        pool workers started later get it at start."""
        p = self.hostsync.add(path)
        for s in list(self.slots):
            gw, ch = s.gw, s.ch
            if s.state is not SlotState.READY or gw is None or ch is None:
                continue
            dirs, _ = self.hostsync.prepare(gw, [p])
            try:
                ch.send((_msg.ADD_PATH, dirs))
            except OSError:
                pass  # the worker process died; its replacement syncs at start

    def ready(self) -> list[Slot]:
        """The slots that take work: ready, and not being ended for a malformed message."""
        return [s for s in self.slots if s.state is SlotState.READY and s.fault is None]

    def stats(self) -> list[WorkerStats]:
        now = time.monotonic()
        out = []
        with self.lock:
            for slot in self.slots:
                s = dataclasses.replace(slot.stats)
                if slot.ready_at is not None:
                    s.idle = max(0.0, s.idle + (now - slot.ready_at) - slot.busy_since_ready)
                out.append(s)
        return out


def strip_pool_keys(spec: XSpec) -> str:
    """The gateway spec of a pool spec: without ``workers=`` and without ``id=`` (the pool names its gateways)."""
    drop = ("workers=", "id=")
    return "//".join(p for p in str(spec).split("//") if not p.startswith(drop) and p not in ("workers", "id"))


def entries(specs: Any) -> list[tuple[XSpec | Gateway, int | str]]:
    """The pool's specs with the number of pool workers each asks for (``workers=``, ``"auto"``)."""
    if isinstance(specs, Group):
        return [(gw, 1) for gw in specs]
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
