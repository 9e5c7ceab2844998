"""Gateways: the master's handle on one worker process (an interpreter behind a gateway).

Threads and data of one gateway on the master::

    caller thread ── remote_exec/send ──> dumps ──> [write lock] ──> transport ──> worker stdin
    worker stdout ──> transport ──> reader thread ──> frames ──> channel queues / callbacks
    worker stderr ──> transport ──> stderr relay thread ──> sys.stderr, "[gw0] " prefixed

The transport moves bytes and owns the worker process's life; nothing above
it knows which one runs: the registry in ``_transports`` picks it from the
xspec's keys (``_popen``, ``_ssh`` and ``_paramiko``, ``_socket``, ``_relay``).
What ``remote_exec`` sends is prepared by ``_remote_source``; a failed start is
diagnosed by ``_startfail``.  The gateway takes what it needs from its group
through :class:`GatewayOwner`, so it knows nothing of :class:`execpool.Group`.

Start-up: the transport starts ``PYTHON -c BOOTSTRAP`` (see ``_bootstrap``),
the gateway writes the payload and configuration to the worker process's stdin
and waits for its HELLO frame, which carries what :meth:`Gateway.remote_info`
reports.  A worker that exits, writes garbage or stays silent instead raises
:class:`GatewayStartError` with the command line, the exit status and the
worker's last stderr lines.

Shut-down (:meth:`Gateway.exit`): a TERMINATE frame and EOF on the worker's
stdin; the worker interrupts its main thread and exits within its grace
period; if the process is still there when ``timeout`` runs out it is killed
with SIGKILL (with its process group).  No worker outlives its gateway.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any, Protocol

from . import _startfail
from ._bootstrap import bootstrap_input, known_magic, remember_bytecode
from ._popen import describe_status
from ._remote_source import SHIPPED_PREFIX as _SHIPPED_PREFIX  # noqa: F401 - importable from here too
from ._remote_source import prepare
from ._shipped import trace as _trace
from ._shipped.channel import Channel
from ._shipped.connection import BaseGateway
from ._shipped.errors import ChannelClosedError, DataFormatError, GatewayStartError, ProtocolError, TimeoutError
from ._shipped.execmodel import get_execmodel
from ._shipped.frames import EXEC, HELLO, STATUS, TERMINATE, default_max_frame, parse_size
from ._shipped.serial import dumps, loads
from ._transports import Launch, Launched, Transport, launch
from ._xspec import XSpec

#: Seconds a worker process may take to start and say hello before the start counts as failed.
DEFAULT_START_TIMEOUT = 60.0
#: Seconds :meth:`Gateway.exit` waits for the worker process to exit before killing it.
DEFAULT_EXIT_TIMEOUT = 10.0
#: Seconds a worker process may spend shutting down (atexit handlers, threads) before it ends itself.
WORKER_GRACE = 2.0


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How the worker processes of a group behave, beyond what their xspecs say.

    The defaults are execpool's; a layer on top (a compatibility layer, say) may
    give its groups other ones.
    """

    #: Send what the worker's code writes to fd 1 (``print``) to ``/dev/null`` instead of stderr.
    discard_stdout: bool = False
    #: Seconds running code may go on after :meth:`Gateway.exit` before it is interrupted.
    drain: float = 0.0


class GatewayOwner(Protocol):
    """What a gateway needs from the group that owns it (:class:`execpool.Group` is one)."""

    #: The default execution model of the owner's gateways (a name, an ExecModel, or None).
    execmodel: Any
    #: The options of the owner's worker processes.
    worker_options: WorkerOptions

    def __contains__(self, item: object) -> bool: ...

    def __getitem__(self, key: str) -> Gateway: ...

    def _unregister(self, gw: Gateway) -> None: ...


@dataclasses.dataclass(frozen=True)
class RemoteInfo:
    """Facts about a worker process, reported once at start-up."""

    executable: str
    version_info: tuple[Any, ...]
    implementation: str
    platform: str
    machine: str
    hostname: str
    cwd: str
    pid: int
    cpu_count: int | None

    @property
    def version(self) -> str:
        """``"3.12.1"``: the interpreter's version as a string."""
        return ".".join(str(p) for p in self.version_info[:3])


@dataclasses.dataclass(frozen=True)
class RemoteStatus:
    """A snapshot of a worker process's activity, from :meth:`Gateway.remote_status`."""

    numexecuting: int
    numchannels: int
    execqsize: int
    numthreads: int
    pid: int


class Gateway(BaseGateway):
    """A connection to one worker process.  Create it with :func:`makegateway`."""

    _first_channel_id = 1

    def __init__(self, spec: XSpec, id: str, group: GatewayOwner | None = None) -> None:
        max_frame = parse_size(spec.max_frame, "max_frame") if spec.max_frame else default_max_frame()
        super().__init__(id, max_frame)
        self.spec = spec
        self._group = group
        #: Locks, events and queues for code that runs with this gateway (see :class:`ExecModel`).
        try:
            self.execmodel = get_execmodel(spec.execmodel or (group.execmodel if group is not None else None))
        except ValueError as exc:
            raise ValueError("xspec %r: %s" % (str(spec), exc)) from None
        self._transport: Transport | None = None
        self._launched: Launched | None = None
        self._hello: dict[str, Any] | None = None
        self._hello_event = threading.Event()
        self._start_error: str | None = None
        self._info: RemoteInfo | None = None
        self._exit_lock = threading.Lock()
        self._exiting = False
        self._started_at = 0.0
        self._interpreter_key: str | None = None
        #: Seconds from starting the process to the worker's hello (None until started).
        self.startup_seconds: float | None = None

    def __repr__(self) -> str:
        pid = self._transport.pid if self._transport else None
        state = "exited" if self._exiting else ("lost" if self._lost else "alive")
        return "<Gateway id=%r %s pid=%s %s>" % (self.id, self.spec, pid, state)

    # -- start-up -----------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start the worker process and send the bootstrap (does not wait for it)."""
        if self._exiting:
            self._ended.set()  # no connection will ever exist: exit() must not wait for one
            raise _startfail.exited_before_start(self.id, self.spec)
        spec = self.spec
        self._launched = launch(Launch(spec, self.id, "%s (%s)" % (self.id, spec), self._group_member))
        self._transport = self._launched.transport
        self._interpreter_key = self._launched.interpreter_key
        self._transport.prefix = "[%s] " % self.id
        self._started_at = time.perf_counter()
        self._io = self._transport.start()
        self._start_reader()
        if self._exiting:
            # exit() ran while the process started (a group terminated mid-start): it saw no
            # connection to end, so end it here; _finish_start reports the start as failed.
            self._close_write_or_kill("the gateway was exited while it started")
            return
        config = {
            "id": self.id,
            "max_frame": self._max_frame,
            "debug": _trace.level_from_env() or _trace._level,
            "env": dict(spec.env),
            "chdir": spec.chdir if isinstance(spec.chdir, str) else None,
            "nice": int(spec.nice) if spec.nice is not None else None,
            "dont_write_bytecode": bool(spec.dont_write_bytecode),
            "grace": WORKER_GRACE,
            "execmodel": self.execmodel.backend,
        }
        options = self._group.worker_options if self._group is not None else WorkerOptions()
        if options.discard_stdout:
            config["stdout"] = "devnull"
        if options.drain > 0:
            config["drain"] = options.drain
        magic = None
        if self._interpreter_key is not None:
            config["return_bytecode"] = True
            magic = known_magic(self._interpreter_key)
        try:
            self._io.write(bootstrap_input(config, magic))
        except OSError as exc:
            _trace.trace("writing the bootstrap to", self.id, "failed:", exc)  # reported by _finish_start

    def _group_member(self, gid: str, key: str) -> Gateway:
        spec = self.spec
        if self._group is None or gid not in self._group or gid == self.id:
            raise GatewayStartError(
                "xspec %r: %s=%s names no other gateway of this group; start that gateway first" % (str(spec), key, gid)
            )
        other = self._group[gid]
        if not other._hello_event.wait(DEFAULT_START_TIMEOUT) or other._hello is None or not other.alive:
            raise GatewayStartError("xspec %r: the %s gateway %s is not running" % (str(spec), key, other.id))
        return other

    def _await_started(self, what: str) -> None:
        """Before ``what`` (a method's name): wait for a start still under way, or say why it cannot run.

        A gateway is in its group from the moment its start begins (a pool's gateways, say),
        so a caller may reach it before its worker process has said hello.
        """
        hello = self._hello
        if hello is not None and "error" not in hello:
            return
        if not self._hello_event.wait(DEFAULT_START_TIMEOUT):
            raise GatewayStartError(
                "%s on gateway %s (%s): its worker process is still starting after %.0f s"
                % (what, self.id, self.spec, DEFAULT_START_TIMEOUT)
            )
        hello = self._hello
        if hello is None or "error" in hello:
            raise GatewayStartError(
                "%s on gateway %s (%s): its worker process did not start (the makegateway or Pool "
                "call that started it says why)" % (what, self.id, self.spec)
            )

    def _finish_start(self, timeout: float | None) -> None:
        """Wait for the worker's hello; on failure, clean up and raise GatewayStartError."""
        if self._exiting:
            self._kill_and_close()
            raise _startfail.exited_while_starting(self.id, self.spec)
        if not self._hello_event.wait(timeout):
            self._kill_and_close()
            stderr = self._transport.stderr_text() if self._transport else ""
            raise _startfail.no_hello_in_time(self.id, self.spec, timeout, self._describe_command(), stderr)
        if self._hello is None:
            self._raise_start_failure(self._start_error or "the worker process ended before saying hello")
        hello = self._hello
        assert hello is not None
        if "error" in hello:
            self._kill_and_close()
            raise _startfail.spec_not_applied(self.id, self.spec, hello["error"])
        self._info = _remote_info(hello)
        _trace.trace("gateway", self.id, "started in %.1f ms" % (1000 * (self.startup_seconds or 0)), self._info)

    def _describe_command(self) -> str:
        return self._transport.describe() if self._transport else str(self.spec.python or sys.executable)

    def _raise_start_failure(self, reason: str) -> None:
        transport = self._transport
        assert transport is not None
        status = transport.wait(0.5)  # an exiting process has its status in milliseconds
        if status is None:
            self._kill_and_close()
            status = transport.wait(5.0)
        else:
            self._close_io()
        diagnose = self._launched.diagnose if self._launched is not None else None
        command = self._describe_command()
        raise _startfail.start_failure(self.id, self.spec, command, reason, status, transport.stderr_text(), diagnose)

    # -- frames from the worker -----------------------------------------------------------

    def _handle(self, mtype: int, cid: int, payload: bytes) -> None:
        if mtype == HELLO and self._hello is None:
            try:
                hello = loads(payload)
                if not isinstance(hello, dict):
                    raise DataFormatError("hello is not a dict")
            except DataFormatError as exc:
                raise ProtocolError("the worker process's hello could not be read: %s" % exc) from None
            self.startup_seconds = time.perf_counter() - self._started_at
            bytecode = hello.pop("bytecode", None)
            if self._interpreter_key is not None and _valid_bytecode(bytecode):
                remember_bytecode(self._interpreter_key, bytecode[0], bytecode[1])
            self._hello = hello
            if self._transport is not None:
                self._transport.release_stderr()
            self._hello_event.set()
            return
        super()._handle(mtype, cid, payload)

    def _describe_end(self, reason: str) -> str:
        transport = self._transport
        if transport is None or self._exiting or self._hello is None:
            return reason
        status = transport.wait(0.2)
        if status is None:
            return reason
        unknown = getattr(transport, "status_unknown_reason", None)
        if unknown:
            return "%s; worker pid %s: exit status unknown (%s)" % (reason, transport.pid, unknown)
        what = self._launched.process if self._launched is not None else "worker pid"
        return "%s; %s %s: %s" % (reason, what, transport.pid, describe_status(status))

    def _connection_ended(self, reason: str) -> None:
        if self._hello is None:
            self._start_error = reason
            self._hello_event.set()
            return
        if not self._exiting and self._io is not None:
            # The connection is unusable (protocol error, or the worker closed it): close our
            # side too, so that a worker which is still running sees EOF and exits.
            self._close_write_or_kill("the connection ended (%s)" % reason)

    def _close_write_or_kill(self, reason: str) -> None:
        if self._io is None:
            return
        if not self._close_write(reason) and self._transport is not None:
            self._transport.kill()  # a sender is stuck writing to a worker that does not read
            self._close_write(reason, timeout=10.0)

    # -- the public API ---------------------------------------------------------------------

    def remote_exec(self, source: str | Callable[..., Any] | types.ModuleType, **kwargs: Any) -> Channel:
        """Run ``source`` in the worker process and return the channel connected to it.

        ``source`` is a string of Python code (dedented), a module (its source
        is run), or a function ``f(channel, **kwargs)`` whose source is sent
        and which is then called with ``kwargs`` (which must be channel data).
        The code sees ``channel`` as a global and ``__name__ == "__channelexec__"``.
        The channel closes when the code finishes; if it raises, the
        traceback arrives as a :class:`RemoteError` on ``receive``/``waitclose``.
        """
        src, call_name, filename = prepare(source, kwargs, self.id)
        self._await_started("remote_exec")
        payload = dumps((src, call_name, kwargs, filename), self._channel_id)
        ch = self.newchannel()
        try:
            self._send(EXEC, ch.id, payload)
        except ChannelClosedError:
            ch._on_lost(self._lost or "the gateway has exited")
            raise
        return ch

    def remote_status(self, timeout: float | None = 30.0) -> RemoteStatus:
        """Ask the worker process what it is doing (answered even while its code runs)."""
        self._await_started("remote_status")
        ch = self.newchannel()
        self._send(STATUS, ch.id)
        d = ch.receive(timeout)
        return RemoteStatus(**{f.name: d[f.name] for f in dataclasses.fields(RemoteStatus)})

    def remote_info(self) -> RemoteInfo:
        """Executable, version, platform, start-up cwd, pid and CPU count of the worker process."""
        if self._info is None:
            self._await_started("remote_info")
            assert self._hello is not None
            self._info = _remote_info(self._hello)
        return self._info

    @property
    def alive(self) -> bool:
        """True while the connection is up and :meth:`exit` has not been called."""
        return not self._exiting and self._lost is None and self._hello is not None

    def exit(self, timeout: float | None = DEFAULT_EXIT_TIMEOUT) -> None:
        """End the worker process: ask it to exit, wait up to ``timeout`` seconds, then kill it.

        Returns once the worker process is gone.  Calling it again is harmless.
        """
        self._begin_exit()
        self._finish_exit(timeout)

    def _begin_exit(self) -> None:
        with self._exit_lock:
            if self._exiting:
                return
            self._exiting = True
        _trace.trace("exiting gateway", self.id)
        if self._lost is None and self._io is not None:
            try:
                self._send(TERMINATE, 0, lock_timeout=1.0)
            except ChannelClosedError:
                pass  # closing the write side (or killing the worker) below ends it anyway
        self._close_write_or_kill("the gateway was exited")
        if self._group is not None:
            self._group._unregister(self)

    def _finish_exit(self, timeout: float | None) -> None:
        transport = self._transport
        deadline = None if timeout is None else time.monotonic() + timeout
        # The worker's stdout closes when it exits: wait for that (an event, not polling).
        self._ended.wait(timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if transport is not None and transport.wait(remaining) is None:
            _trace.trace("gateway", self.id, "did not exit in time; killing it")
            self._kill_remote_worker()
            transport.kill()
            transport.wait(None)
        self._close_io()
        if transport is not None:
            transport.drain_stderr()

    def _kill_remote_worker(self) -> None:
        """Where killing the transport does not end the worker process (an ssh login), the
        transport's own hook kills it by pid."""
        kill_remote = self._launched.kill_remote if self._launched is not None else None
        if kill_remote is not None and self._info is not None:
            kill_remote(self._info.pid)

    def _kill_and_close(self) -> None:
        with self._exit_lock:
            self._exiting = True
        if self._transport is not None:
            self._transport.kill()
            self._transport.wait(5.0)
        self._close_io()
        if self._transport is not None:
            self._transport.drain_stderr(emit=self._hello is not None and "error" not in self._hello)
        if self._group is not None:
            self._group._unregister(self)

    def _close_io(self) -> None:
        if self._io is None:
            return
        self._close_write_or_kill("the gateway was exited")
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5.0)
            if not self._reader.is_alive():
                self._io.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the connection has ended (after :meth:`exit`, or when the worker process dies)."""
        if not self._ended.wait(timeout):
            raise TimeoutError("gateway %s did not end within %s seconds" % (self.id, timeout))
        if self._transport is not None:
            self._transport.wait(timeout)
            self._transport.drain_stderr()


def _valid_bytecode(value: Any) -> bool:
    return (
        type(value) is tuple
        and len(value) == 2
        and type(value[0]) is bytes
        and len(value[0]) == 4
        and type(value[1]) is bytes
    )


def _remote_info(hello: dict[str, Any]) -> RemoteInfo:
    """What a worker process's hello says about it."""
    return RemoteInfo(
        executable=hello["executable"],
        version_info=tuple(hello["version_info"]),
        implementation=hello["implementation"],
        platform=hello["platform"],
        machine=hello["machine"],
        hostname=hello["hostname"],
        cwd=hello["cwd"],
        pid=hello["pid"],
        cpu_count=hello["cpu_count"],
    )
