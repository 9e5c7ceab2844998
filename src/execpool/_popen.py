"""The popen transport, and the stderr relay that every transport shares.

Popen: a local interpreter process talking over its stdin/stdout pipes.

The transport starts the process (``python=`` split like a shell command
line, so ``env FOO=1 python3`` or ``nice python3.9`` are launchers too), gives
the gateway an :class:`~execpool._shipped.connection.FdIO` over the pipes, relays the
worker's stderr line by line to the local ``sys.stderr`` prefixed with the
gateway id (keeping the last lines for error messages), and stops the process:
politely through the protocol first, then with SIGKILL to its whole process
group.  Workers run in a session of their own so that a Ctrl-C in the
master's terminal reaches the master only; the master then ends them.  What
a worker's code leaves behind when the worker exits by itself is ended by the
worker's own group guard (``_shipped/procgroup.py``), as over ssh.
"""

from __future__ import annotations

import collections
import os
import selectors
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._bootstrap import BOOTSTRAP, interpreter_key
from ._shipped import trace as _trace
from ._shipped.connection import FdIO, enlarge_pipe
from ._shipped.errors import GatewayStartError, InterpreterNotFound
from ._shipped.relay import start_child
from ._xspec import local_python

if TYPE_CHECKING:
    from ._transports import Launch, Launched


class StderrRelay:
    """The part of a transport that relays the worker's stderr, shared by all transports.

    Lines go to the local ``sys.stderr`` prefixed with the gateway id; the last
    ones are kept for error messages.  Until the worker has started they are held
    back: on a failed start they go into the exception's message instead.
    """

    def __init__(self, gateway_id: str) -> None:
        #: How messages name the gateway, e.g. "gw0 (popen//python=python3.9)".
        self.gateway_id = gateway_id
        #: What relayed stderr lines start with.
        self.prefix = "[%s] " % gateway_id
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._pump: threading.Thread | _Relayed | None = None
        self._held: list[str] | None = []
        self._held_lock = threading.Lock()

    def _start_relay(self, read: Callable[[int], bytes]) -> None:
        """Relay what ``read(n)`` returns, in a thread of this relay's own (for streams that
        are not file descriptors: paramiko's channel, a relayed worker)."""
        self._pump = threading.Thread(
            target=self._relay_stderr, args=(read,), name="execpool-stderr-%s" % self.gateway_id, daemon=True
        )
        self._pump.start()

    def _start_fd_relay(self, fd: int) -> None:
        """Relay the pipe ``fd``: one thread serves the pipes of every local worker process."""
        self._pump = _PUMP.add(fd, self)

    def _feed(self, pending: bytes, data: bytes) -> bytes:
        """Emit the complete lines of ``pending + data``; return the incomplete rest."""
        *lines, rest = (pending + data).split(b"\n")
        for line in lines:
            self._emit(line)
        return rest

    def _relay_stderr(self, read: Callable[[int], bytes]) -> None:
        pending = b""
        while True:
            try:
                data = read(65536)
            except (OSError, EOFError):
                data = b""
            if not data:
                if pending:
                    self._emit(pending)
                return
            pending = self._feed(pending, data)

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.stderr_tail.append(text)
        with self._held_lock:
            if self._held is not None:
                self._held.append(self.prefix + text + "\n")
                return
        _write_stderr(self.prefix + text + "\n")

    def release_stderr(self, emit: bool = True) -> None:
        """The worker has started: print what it wrote so far and relay from now on."""
        with self._held_lock:
            held, self._held = self._held, None
        if held and emit:
            _write_stderr("".join(held))

    def stderr_text(self, wait: float = 0.5) -> str:
        """The last lines the worker wrote to stderr (waits briefly for the relay to drain)."""
        if self._pump is not None:
            self._pump.join(wait)
        return "\n".join(self.stderr_tail)

    def drain_stderr(self, timeout: float = 2.0, emit: bool = True) -> None:
        """Wait (briefly) until everything the worker wrote to stderr has been relayed.

        With ``emit=False`` lines still held back from start-up are dropped (a failed
        start reports them in its exception instead)."""
        if self._pump is not None and self._pump is not threading.current_thread():
            self._pump.join(timeout)
        self.release_stderr(emit)


class _Relayed:
    """A relayed pipe, as the code that waits for its end sees it: ``join(timeout)``,
    ``is_alive()`` (the end: EOF or an error reading it)."""

    def __init__(self, relay: StderrRelay) -> None:
        self.relay = relay
        self.pending = b""
        self.ended = threading.Event()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not _PUMP.thread:  # the pump cannot wait for itself
            self.ended.wait(timeout)

    def is_alive(self) -> bool:
        return not self.ended.is_set()


class _StderrPump:
    """One thread that relays the stderr pipes of all local worker processes (popen, ssh).

    A selector over the pipes; the thread starts with the first pipe and ends when the last
    one has reached its end, so an idle master has no thread for it, and a busy one a single
    thread whatever the number of workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self.thread: threading.Thread | None = None

    def add(self, fd: int, relay: StderrRelay) -> _Relayed:
        handle = _Relayed(relay)
        with self._lock:
            if self._selector is None:
                self._selector = selectors.DefaultSelector()
            stale = self._selector.get_map().get(fd)
            if stale is not None:  # a number closed under us and reused: that pipe has ended
                self._selector.unregister(fd)
                stale.data.ended.set()
            self._selector.register(fd, selectors.EVENT_READ, handle)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, args=(self._selector,), name="execpool-stderr", daemon=True
                )
                self.thread.start()
        return handle

    def _run(self, selector: selectors.BaseSelector) -> None:
        while True:
            with self._lock:
                if not selector.get_map():
                    self.thread = None
                    return
            try:
                ready = selector.select(1.0)
            except (OSError, ValueError):  # a pipe closed under us: find it below
                ready = []
                for key in list(selector.get_map().values()):
                    try:
                        os.fstat(key.fd)
                    except OSError:
                        self._end(selector, key)
            for key, _ in ready:
                handle = key.data
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._end(selector, key)
                    continue
                try:
                    handle.pending = handle.relay._feed(handle.pending, data)
                except Exception:  # one relay's trouble (a broken sys.stderr) must not stop the rest
                    pass

    def _end(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        handle = key.data
        with self._lock:
            try:
                selector.unregister(key.fd)
            except (KeyError, ValueError):
                pass
        try:
            if handle.pending:
                handle.relay._emit(handle.pending)
        except Exception:
            pass
        handle.ended.set()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._selector = None  # the parent's pipes are not this process's business
        self.thread = None


_PUMP = _StderrPump()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PUMP._after_fork)


def split_python(spec: object, python: str) -> list[str]:
    """``python=`` split like a shell command line (launchers such as ``env FOO=1 python3`` included)."""
    try:
        cmd = shlex.split(python)
    except ValueError as exc:
        raise GatewayStartError("xspec %r: cannot split python=%r: %s" % (str(spec), python, exc)) from None
    if not cmd:
        raise GatewayStartError("xspec %r: python= is empty" % str(spec))
    return cmd


def launch(request: Launch) -> Launched:
    """The ``popen`` transport: ``python=`` (default: this interpreter) as a local worker process."""
    from ._transports import Launched

    spec = request.spec
    cmd = split_python(spec, local_python(spec))
    transport = PopenTransport([*cmd, "-c", BOOTSTRAP], request.where, env=spec.env or None)
    return Launched(transport, interpreter_key=interpreter_key(cmd))  # a local worker: its bytecode is trusted


class PopenTransport(StderrRelay):
    """A worker process on this machine.  ``argv`` is the full command line."""

    def __init__(
        self, argv: list[str], gateway_id: str, env: dict[str, str] | None = None, display: str | None = None
    ) -> None:
        super().__init__(gateway_id)
        self.argv = argv
        self._display = display
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FdIO:
        try:
            self.proc = start_child(self.argv, self.env)
        except FileNotFoundError:
            raise InterpreterNotFound(
                "gateway %s: the command %r was not found (command line: %s); "
                "install that interpreter or point python= at one that exists"
                % (self.gateway_id, self.argv[0], shlex.join(self.argv[:-2]))
            ) from None
        except PermissionError as exc:
            raise InterpreterNotFound(
                "gateway %s: %r is not executable (%s)" % (self.gateway_id, self.argv[0], exc)
            ) from None
        _trace.trace("started", self.gateway_id, "pid", self.proc.pid, "argv", self.argv[:-2])
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        enlarge_pipe(self.proc.stdin.fileno())
        self._start_fd_relay(self.proc.stderr.fileno())
        # The gateway's FdIO owns duplicates (non-inheritable, so later children do not
        # hold them open); the originals are closed so that closing the dup means EOF.
        io = FdIO(os.dup(self.proc.stdout.fileno()), os.dup(self.proc.stdin.fileno()))
        self.proc.stdin.close()
        self.proc.stdout.close()
        return io

    def drain_stderr(self, timeout: float = 2.0, emit: bool = True) -> None:
        super().drain_stderr(timeout, emit)
        # Once the relay has read stderr to its end, close the pipe now rather than when the
        # garbage collector frees the Popen (a pool's objects form cycles): no fd waits for it.
        pump = self._pump
        if self.proc is not None and self.proc.stderr is not None and (pump is None or not pump.is_alive()):
            try:
                self.proc.stderr.close()
            except OSError:
                pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def describe(self) -> str:
        """The command line, for messages."""
        if self._display is not None:
            return self._display
        return shlex.join(self.argv[:-2]) if len(self.argv) > 2 else shlex.join(self.argv)

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float | None) -> int | None:
        """Wait for the process to exit; return its status, or None on timeout.

        What is left of the worker's process group once it exited (processes its code started
        and left behind) is ended by the worker's own guard (``_shipped/procgroup.py``), on
        every system: nothing here waits for the pipes those processes may hold.
        """
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the worker and everything in its process group."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if not self._kill_group():
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        _trace.trace("killed", self.gateway_id, "pid", self.proc.pid)

    def _kill_group(self) -> bool:
        """SIGKILL the worker's process group (it leads one: ``start_new_session``), if it is not reaped."""
        if self.proc is None or self.proc.returncode is not None:
            return False  # reaped: its pid, and the group's id, may be someone else's by now
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:
        pass


def describe_status(status: int | None) -> str:
    """'exit status 3' / 'killed by SIGKILL' / 'still running'."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            return "killed by %s" % signal.Signals(-status).name
        except ValueError:
            return "killed by signal %d" % -status
    return "exit status %d" % status
