"""Gateways: the master's handle on one worker interpreter.

Threads and data of one gateway on the master::

    caller thread ── remote_exec/send ──> dumps ──> [write lock] ──> transport ──> worker stdin
    worker stdout ──> transport ──> reader thread ──> frames ──> channel queues / callbacks
    worker stderr ──> transport ──> stderr relay thread ──> sys.stderr, "[gw0] " prefixed

The transport moves bytes and owns the worker's life; nothing above it knows
which one runs: ``_popen`` (a local process; also ssh through the OpenSSH
client, see ``_ssh``), ``_paramiko``, ``_socket`` (an ``execpool serve``
connection) or ``_relay`` (``via=``, through another gateway).

Start-up: the transport starts ``PYTHON -c BOOTSTRAP`` (see ``_bootstrap``),
the gateway writes the payload and configuration to the worker's stdin and
waits for the worker's HELLO frame, which carries what :meth:`Gateway.remote_info`
reports.  A worker that exits, writes garbage or stays silent instead raises
:class:`GatewayStartError` with the command line, the exit status and the
worker's last stderr lines.

Shut-down (:meth:`Gateway.exit`): a TERMINATE frame and EOF on the worker's
stdin; the worker interrupts its main thread and exits within its grace
period; if the process is still there when ``timeout`` runs out it is killed
with SIGKILL (with its process group).  No worker outlives its gateway.
"""

from __future__ import annotations

import builtins
import dataclasses
import dis
import inspect
import shlex
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._bootstrap import (
    BOOTSTRAP,
    EXIT_NO_PAYLOAD,
    EXIT_TOO_OLD,
    bootstrap_input,
    interpreter_key,
    known_magic,
    remember_bytecode,
)
from ._popen import PopenTransport, describe_status
from ._shipped import trace as _trace
from ._shipped.channel import Channel
from ._shipped.connection import BaseGateway
from ._shipped.errors import (
    ChannelClosedError,
    DataFormatError,
    GatewayStartError,
    InterpreterNotFound,
    InterpreterTooOld,
    ProtocolError,
    TimeoutError,
)
from ._shipped.execmodel import get_execmodel
from ._shipped.frames import EXEC, HELLO, STATUS, TERMINATE, default_max_frame, parse_size
from ._shipped.serial import dumps, loads
from ._ssh import choose_backend, classify_failure, remote_command, split_target, ssh_argv
from ._xspec import XSpec

if TYPE_CHECKING:
    from ._paramiko import ParamikoTransport
    from ._relay import RelayTransport
    from ._socket import SocketTransport

#: Seconds a worker may take to start and say hello before the start counts as failed.
DEFAULT_START_TIMEOUT = 60.0
#: Seconds :meth:`Gateway.exit` waits for the worker to exit before killing it.
DEFAULT_EXIT_TIMEOUT = 10.0
#: Seconds a worker may spend shutting down (atexit handlers, threads) before it ends itself.
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
    """Facts about a worker interpreter, reported once at start-up."""

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
    """A snapshot of a worker's activity, from :meth:`Gateway.remote_status`."""

    numexecuting: int
    numchannels: int
    execqsize: int
    numthreads: int
    pid: int


class Gateway(BaseGateway):
    """A connection to one worker interpreter.  Create it with :func:`makegateway`."""

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
        self._transport: PopenTransport | ParamikoTransport | RelayTransport | SocketTransport | None = None
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
            raise GatewayStartError("gateway %s (%s) was exited before it started" % (self.id, self.spec))
        spec = self.spec
        where = "%s (%s)" % (self.id, spec)
        installvia = self._installvia()
        if spec.via is not None:
            self._transport = self._relay_transport(where)
        elif spec.transport == "popen":
            python = spec.python if isinstance(spec.python, str) else sys.executable
            try:
                cmd = shlex.split(python)
            except ValueError as exc:
                raise GatewayStartError("xspec %r: cannot split python=%r: %s" % (str(spec), python, exc)) from None
            if not cmd:
                raise GatewayStartError("xspec %r: python= is empty" % str(spec))
            self._transport = PopenTransport([*cmd, "-c", BOOTSTRAP], where, env=spec.env or None)
            self._interpreter_key = interpreter_key(cmd)  # a local worker: its bytecode is trusted
        elif spec.transport == "ssh":
            if choose_backend(spec) == "openssh":
                argv, display = ssh_argv(spec, BOOTSTRAP)
                self._transport = PopenTransport(argv, where, display=display)
            else:
                from ._paramiko import ParamikoTransport

                target, port = split_target(spec.ssh)
                self._transport = ParamikoTransport(spec, target, port, remote_command(spec, BOOTSTRAP), where)
        elif spec.transport == "socket":
            from ._socket import SocketTransport

            self._transport = SocketTransport(spec, where, installvia, BOOTSTRAP)
        else:
            raise GatewayStartError(_unsupported_transport(spec))
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

    def _installvia(self) -> Gateway | None:
        """The running gateway named by ``installvia=`` (None without the key)."""
        spec = self.spec
        if spec.installvia is None:
            return None
        if spec.transport != "socket" or not isinstance(spec.installvia, str):
            raise GatewayStartError(
                "xspec %r: installvia= starts a socket server; write socket=HOST:PORT//installvia=GWID" % str(spec)
            )
        return self._group_member(spec.installvia, "installvia")

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

    def _relay_transport(self, where: str) -> RelayTransport:
        from ._relay import RelayTransport

        spec = self.spec
        if spec.transport != "popen" or not isinstance(spec.via, str):
            raise GatewayStartError(
                "xspec %r: via= starts a local worker on the via gateway's host; write popen//via=GWID" % str(spec)
            )
        via = self._group_member(spec.via, "via")
        python = spec.python if isinstance(spec.python, str) else via.remote_info().executable
        try:
            cmd = shlex.split(python)
        except ValueError as exc:
            raise GatewayStartError("xspec %r: cannot split python=%r: %s" % (str(spec), python, exc)) from None
        display = "%s on %s" % (python, via.id)
        return RelayTransport(via, [*cmd, "-c", BOOTSTRAP], dict(spec.env), where, display)

    def _finish_start(self, timeout: float | None) -> None:
        """Wait for the worker's hello; on failure, clean up and raise GatewayStartError."""
        if self._exiting:
            self._kill_and_close()
            raise GatewayStartError("gateway %s (%s) was exited while it started" % (self.id, self.spec))
        if not self._hello_event.wait(timeout):
            self._kill_and_close()
            stderr = self._transport.stderr_text() if self._transport else ""
            raise GatewayStartError(
                "gateway %s (%s) did not start within %s seconds: `%s` never answered; "
                "is it a Python interpreter, and does it start this slowly?%s"
                % (self.id, self.spec, timeout, self._describe_command(), _stderr_detail(stderr))
            )
        if self._hello is None:
            self._raise_start_failure(self._start_error or "the worker ended before saying hello")
        hello = self._hello
        assert hello is not None
        if "error" in hello:
            self._kill_and_close()
            raise GatewayStartError(
                "gateway %s (%s): the worker could not apply the spec: %s" % (self.id, self.spec, hello["error"])
            )
        self._info = RemoteInfo(
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
        stderr = transport.stderr_text()
        command = self._describe_command()
        detail = _stderr_detail(stderr)
        if self.spec.transport == "ssh":
            python = self.spec.python if isinstance(self.spec.python, str) else "python3"
            error = classify_failure(status, stderr, "gateway %s (%s)" % (self.id, self.spec), python)
            if error is not None:
                raise error
        if status == EXIT_TOO_OLD:
            raise InterpreterTooOld(
                "gateway %s (%s): `%s` is older than CPython 3.8, which execpool workers need; "
                "point python= at a newer interpreter%s" % (self.id, self.spec, command, detail)
            )
        if status == 127 or (status == EXIT_NO_PAYLOAD and not stderr.strip()):
            raise InterpreterNotFound(
                "gateway %s (%s): `%s` could not run a Python interpreter (%s)%s"
                % (self.id, self.spec, command, describe_status(status), detail)
            )
        raise GatewayStartError(
            "gateway %s (%s): `%s` did not start an execpool worker: %s (%s)%s"
            % (self.id, self.spec, command, reason, describe_status(status), detail)
        )

    # -- frames from the worker -----------------------------------------------------------

    def _handle(self, mtype: int, cid: int, payload: bytes) -> None:
        if mtype == HELLO and self._hello is None:
            try:
                hello = loads(payload)
                if not isinstance(hello, dict):
                    raise DataFormatError("hello is not a dict")
            except DataFormatError as exc:
                raise ProtocolError("the worker's hello could not be read: %s" % exc) from None
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
        if getattr(transport, "status_unknown", False):
            return "%s; worker pid %s: exit status unknown (the connection of its via gateway %s was lost)" % (
                reason,
                transport.pid,
                self.spec.via,
            )
        # With the OpenSSH client the local process is ssh itself, not the remote worker.
        what = "ssh client pid" if self.spec.ssh and self.spec.via is None else "worker pid"
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
        """Run ``source`` in the worker and return the channel connected to it.

        ``source`` is a string of Python code (dedented), a module (its source
        is run), or a function ``f(channel, **kwargs)`` whose source is sent
        and which is then called with ``kwargs`` (which must be channel data).
        The code sees ``channel`` as a global and ``__name__ == "__channelexec__"``.
        The channel closes when the code finishes; if it raises, the
        traceback arrives as a :class:`RemoteError` on ``receive``/``waitclose``.
        """
        call_name = None
        if isinstance(source, str):
            if kwargs:
                raise TypeError("remote_exec(source_string) takes no keyword arguments; send data over the channel")
            src = textwrap.dedent(source)
            filename = "<remote_exec %s>" % self.id
        elif isinstance(source, types.ModuleType):
            if kwargs:
                raise TypeError("remote_exec(module) takes no keyword arguments; send data over the channel")
            src = _module_source(source)
            filename = getattr(source, "__file__", None) or "<module %s>" % source.__name__
        elif isinstance(source, types.FunctionType) and (source.__module__ or "").startswith(_SHIPPED_PREFIX):
            # an entry point of the worker-side folder: the worker already has it, so send a reference
            module = "_execpool." + source.__module__[len(_SHIPPED_PREFIX) :]
            src = "from %s import %s" % (module, source.__name__)
            filename = "<remote_exec %s of %s>" % (self.id, module)
            call_name = source.__name__
        elif isinstance(source, types.FunctionType):
            src, filename = _function_source(source, kwargs)
            call_name = source.__name__
        else:
            raise TypeError("remote_exec takes a source string, a function or a module, not %s" % type(source).__name__)
        payload = dumps((src, call_name, kwargs, filename), self._channel_id)
        ch = self.newchannel()
        try:
            self._send(EXEC, ch.id, payload)
        except ChannelClosedError:
            ch._on_lost(self._lost or "the gateway has exited")
            raise
        return ch

    def remote_status(self, timeout: float | None = 30.0) -> RemoteStatus:
        """Ask the worker what it is doing (answered even while its code runs)."""
        ch = self.newchannel()
        self._send(STATUS, ch.id)
        d = ch.receive(timeout)
        return RemoteStatus(**{f.name: d[f.name] for f in dataclasses.fields(RemoteStatus)})

    def remote_info(self) -> RemoteInfo:
        """Executable, version, platform, start-up cwd, pid and CPU count of the worker."""
        if self._info is None:
            raise GatewayStartError("gateway %s has not started" % self.id)
        return self._info

    @property
    def alive(self) -> bool:
        """True while the connection is up and :meth:`exit` has not been called."""
        return not self._exiting and self._lost is None and self._hello is not None

    def exit(self, timeout: float | None = DEFAULT_EXIT_TIMEOUT) -> None:
        """End the worker: ask it to exit, wait up to ``timeout`` seconds, then kill it.

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
        """Killing the local ssh client does not end a remote worker that cannot read (stopped,
        or stuck in C code holding the GIL): sshd does not signal a command without a terminal.
        So over a new login (OpenSSH) or a new channel (paramiko), SIGKILL it by pid."""
        if not self.spec.ssh or self.spec.via is not None or self._info is None:
            return
        from ._ssh import kill_remote_worker_command, ssh_command_argv

        command = kill_remote_worker_command(self._info.pid)
        try:
            if choose_backend(self.spec) == "openssh":
                import shutil
                import subprocess

                ssh = shutil.which("ssh")
                if ssh:
                    subprocess.run(ssh_command_argv(ssh, self.spec, command), capture_output=True, timeout=15)
            else:
                transport: Any = self._transport
                transport.run_command(command, timeout=15)
        except Exception as exc:  # best effort: the local side is killed anyway
            _trace.trace("could not kill the remote worker of", self.id, exc)

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
        """Wait until the connection has ended (after :meth:`exit`, or when the worker dies)."""
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


def _stderr_detail(stderr: str) -> str:
    if not stderr.strip():
        return ""
    return "\n  worker stderr:\n    " + stderr.replace("\n", "\n    ")


def _unsupported_transport(spec: XSpec) -> str:
    kind = spec.transport
    if kind is None:
        return "xspec %r names no transport: start it with 'popen' (a local interpreter)" % str(spec)
    return (
        "xspec %r: the %s transport is not available in this version of execpool; "
        "'popen' (local interpreters, or any launcher command via python=) and 'ssh=HOST' work so far"
        % (str(spec), kind)
    )


#: Functions of these modules are already in every worker (as ``_execpool.NAME``).
_SHIPPED_PREFIX = "execpool._shipped."


def _module_source(module: types.ModuleType) -> str:
    try:
        return inspect.getsource(module)
    except (OSError, TypeError) as exc:
        raise ValueError("cannot send module %s: its source is not available (%s)" % (module.__name__, exc)) from None


_BUILTIN_NAMES = frozenset(dir(builtins)) | {"__name__", "__file__", "__builtins__"}


def _global_names(code: types.CodeType) -> set[str]:
    names = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"):
            names.add(str(ins.argval).replace(" + NULL", "").replace("NULL + ", ""))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _function_source(func: types.FunctionType, kwargs: dict[str, Any]) -> tuple[str, str]:
    """The source to send for ``func``, checked to be self-contained."""
    what = "function %s" % func.__qualname__
    if func.__name__ == "<lambda>":
        raise ValueError("cannot remote_exec a lambda: write a def f(channel, ...) at module level")
    if func.__closure__:
        raise ValueError(
            "cannot remote_exec %s: it is a closure over %s from an enclosing function; "
            "pass those values as keyword arguments instead" % (what, ", ".join(func.__code__.co_freevars))
        )
    missing = sorted(_global_names(func.__code__) - _BUILTIN_NAMES - {func.__name__})
    if missing:
        raise ValueError(
            "cannot remote_exec %s: it uses the global name(s) %s, which do not exist in the worker "
            "(only its own source is sent); import or define them inside the function, or pass "
            "values as keyword arguments" % (what, ", ".join(missing))
        )
    try:
        lines, firstline = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise ValueError("cannot remote_exec %s: its source is not available (%s)" % (what, exc)) from None
    src = textwrap.dedent("".join(lines))
    if src.lstrip().startswith("@"):
        raise ValueError("cannot remote_exec %s: it is decorated; send an undecorated function" % what)
    try:
        inspect.signature(func).bind(None, **kwargs)
    except TypeError as exc:
        raise TypeError("remote_exec(%s, ...): %s; it is called as f(channel, **kwargs)" % (what, exc)) from None
    filename = inspect.getsourcefile(func) or "<function %s>" % func.__qualname__
    # Pad so that line numbers in remote tracebacks match the file on the master.
    return "\n" * (firstline - 1) + src, filename
