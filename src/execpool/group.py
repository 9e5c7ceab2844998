"""Groups of gateways, multi-channels, and the process-wide clean-up.

A :class:`Group` owns gateways: it gives them ids (``gw0``, ``gw1``, ... unless
the spec says ``id=``), starts several at once (every process is started
before any start-up is waited for, so N gateways start in about the time of
the slowest), runs code on all of them (``remote_exec`` returns a
:class:`MultiChannel`) and ends them all within a time bound (``terminate``).

Every group ever created is remembered weakly; at interpreter exit the
remaining gateways of all groups are ended (killed if they do not exit
promptly), so no worker outlives the master's normal exit or Ctrl-C.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from ._shipped.channel import NO_ENDMARKER, Channel
from ._shipped.execmodel import ExecModel
from ._xspec import XSpec, warn_unknown_keys
from .gateway import DEFAULT_EXIT_TIMEOUT, DEFAULT_START_TIMEOUT, Gateway, WorkerOptions

_groups: weakref.WeakSet[Group] = weakref.WeakSet()


#: A start hook: called with each new gateway of a group once it runs, before makegateway returns it.
StartHook = Callable[[Gateway], None]


class Group:
    """An ordered set of gateways, indexable by position and by id.

    Layers on top (such as a compatibility layer) adapt a group's gateways through
    generic hooks, set by a subclass or on an instance: :attr:`gateway_class` (the
    class of the gateways made), :attr:`worker_options` (how their worker processes
    behave) and :attr:`start_hooks` (run on each new gateway before it is returned).
    """

    #: The class of the gateways this group makes (a subclass of :class:`Gateway`).
    gateway_class: ClassVar[type[Gateway]] = Gateway
    #: How the group's worker processes behave (stdout, drain time on exit).
    worker_options: WorkerOptions = WorkerOptions()

    def __init__(self, xspecs: Iterable[str | XSpec] = (), execmodel: str | ExecModel | None = None) -> None:
        self._gateways: list[Gateway] = []
        self._lock = threading.Lock()
        self._autoid = 0
        #: The default execution model of the group's gateways (see :class:`ExecModel`).
        self.execmodel: str | ExecModel | None = execmodel
        #: Callables run in order on each new gateway once its worker process has said hello,
        #: before :meth:`makegateway` returns it; one that raises fails the start.
        self.start_hooks: list[StartHook] = []
        _groups.add(self)
        specs = list(xspecs)
        if specs:
            self.makegateways(specs)

    def __repr__(self) -> str:
        return "<Group %r>" % [gw.id for gw in self._gateways]

    def __len__(self) -> int:
        return len(self._gateways)

    def __iter__(self) -> Iterator[Gateway]:
        return iter(list(self._gateways))

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return any(gw.id == item for gw in self._gateways)
        return item in self._gateways

    def __getitem__(self, key: int | str) -> Gateway:
        if isinstance(key, int):
            return self._gateways[key]
        for gw in self._gateways:
            if gw.id == key:
                return gw
        raise KeyError("no gateway with id %r in %r" % (key, self))

    def allocate_id(self, spec: XSpec) -> str:
        """Give ``spec`` an id (``gwN``) unless it has one; refuse duplicates."""
        with self._lock:
            if spec.id is None or spec.id is True:
                while True:
                    gid = "gw%d" % self._autoid
                    self._autoid += 1
                    if gid not in self:
                        break
            else:
                gid = str(spec.id)
                if gid in self:
                    raise ValueError("a gateway with id %r already exists in %r" % (gid, self))
            return gid

    def makegateway(self, spec: str | XSpec | None = None, *, start_timeout: float | None = None) -> Gateway:
        """Start a gateway for ``spec`` (default ``"popen"``), add it to the group and return it.

        Raises :class:`GatewayStartError` (or its subclasses
        :class:`InterpreterNotFound` and :class:`InterpreterTooOld`) with the
        command line, exit status and the worker's stderr when it cannot start.
        """
        return self.makegateways([spec or "popen"], start_timeout=start_timeout)[0]

    def makegateways(self, specs: Iterable[str | XSpec], *, start_timeout: float | None = None) -> list[Gateway]:
        """Start several gateways at once; all or none: on a failure the others are ended."""
        xspecs = [s if isinstance(s, XSpec) else XSpec(s) for s in specs]
        timeout = DEFAULT_START_TIMEOUT if start_timeout is None else start_timeout
        started: list[Gateway] = []
        try:
            for xspec in xspecs:
                warn_unknown_keys(xspec)
                gw = self.gateway_class(xspec, self.allocate_id(xspec), self)
                with self._lock:
                    self._gateways.append(gw)
                started.append(gw)
            _spawn_all(started)
            for gw in started:
                gw._finish_start(timeout)
            for gw in started:
                for hook in self.start_hooks:
                    hook(gw)
        except BaseException:
            for gw in started:
                gw._kill_and_close()
            raise
        return started

    def _unregister(self, gw: Gateway) -> None:
        with self._lock:
            if gw in self._gateways:
                self._gateways.remove(gw)

    def remote_exec(self, source: Any, **kwargs: Any) -> MultiChannel:
        """``remote_exec`` on every gateway; returns their channels as a :class:`MultiChannel`."""
        return MultiChannel([gw.remote_exec(source, **kwargs) for gw in self])

    def terminate(self, timeout: float | None = None) -> None:
        """End every gateway: ask all to exit at once, then kill those still there after ``timeout``.

        With ``timeout=None`` each worker gets the default exit time (see :meth:`Gateway.exit`).
        """
        gateways = list(self._gateways)
        for gw in gateways:
            gw._begin_exit()
        wait = DEFAULT_EXIT_TIMEOUT if timeout is None else timeout
        threads = [threading.Thread(target=gw._finish_exit, args=(wait,)) for gw in gateways]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _spawn_all(gateways: list[Gateway]) -> None:
    """Start every gateway's process or connection at once (an ssh login takes a while);
    raise the first error, in spec order, after all attempts are done."""
    if len(gateways) == 1:
        gateways[0]._spawn()
        return
    errors: list[BaseException | None] = [None] * len(gateways)

    def spawn(i: int) -> None:
        try:
            gateways[i]._spawn()
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=spawn, args=(i,), name="execpool-spawn") for i in range(len(gateways))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc


class MultiChannel:
    """The channels of one ``Group.remote_exec``, used together."""

    def __init__(self, channels: list[Channel]) -> None:
        self._channels = channels

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels)

    def __getitem__(self, index: int) -> Channel:
        return self._channels[index]

    def __contains__(self, ch: object) -> bool:
        return ch in self._channels

    def send_each(self, item: Any) -> None:
        """Send ``item`` on every channel."""
        for ch in self._channels:
            ch.send(item)

    def receive_each(self, withchannel: bool = False) -> list[Any]:
        """Receive one item from each channel, in channel order (``(channel, item)`` pairs if asked)."""
        if withchannel:
            return [(ch, ch.receive()) for ch in self._channels]
        return [ch.receive() for ch in self._channels]

    def make_receive_queue(self, endmarker: Any = NO_ENDMARKER) -> queue.Queue[tuple[Channel, Any]]:
        """A queue that receives ``(channel, item)`` from all channels as items arrive.

        With an ``endmarker``, each channel adds ``(channel, endmarker)`` when it ends.
        """
        q: queue.Queue[tuple[Channel, Any]] = queue.Queue()
        for ch in self._channels:

            def put(item: Any, ch: Channel = ch) -> None:
                q.put((ch, item))

            ch.setcallback(put, endmarker=endmarker)
        return q

    def waitclose(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds in all) for every channel to close; then raise
        the first error (a RemoteError, or TimeoutError for channels still open)."""
        first_error = None
        deadline = None if timeout is None else time.monotonic() + timeout
        for ch in self._channels:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ch.waitclose(remaining)
            except Exception as exc:
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error


default_group = Group()


def makegateway(spec: str | XSpec | None = None, *, start_timeout: float | None = None) -> Gateway:
    """Start a gateway in the default group; see :meth:`Group.makegateway`."""
    return default_group.makegateway(spec, start_timeout=start_timeout)


_ending_all = threading.Event()


def ending_at_exit() -> bool:
    """True once the interpreter's exit has begun ending every group (what fails then is no news)."""
    return _ending_all.is_set()


def _terminate_all() -> None:
    _ending_all.set()
    for group in list(_groups):
        try:
            group.terminate(timeout=2.0)
        except Exception:
            pass


atexit.register(_terminate_all)
