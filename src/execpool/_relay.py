"""The relay transport: ``popen//via=GWID`` starts a worker through another gateway.

The via gateway runs :func:`execpool._shipped.relay.serve` (an ordinary
``remote_exec``, sent by reference: every worker process has it): it
starts ``PYTHON -c BOOTSTRAP`` as a child process on its own host and copies
bytes between that child's pipes and two channels::

    master gateway ──bytes──> relay channel ──> via worker ──> child stdin
    child stdout ──> via worker ──> relay channel ──bytes──> master gateway
    child stderr ──> via worker ──> stderr channel ──> "[gwN] " lines on the master

So every worker started ``via=`` one ssh gateway shares that gateway's single
ssh connection.  Control messages on the relay channel are tuples (data is
always ``bytes``): the relay reports ``("pid", n)`` once the child runs,
``("error", text)`` if it could not start, and ``("status", code)`` when it
exits; the master sends ``("eof",)`` to close the child's stdin and
``("kill",)`` to kill it.  When the via gateway goes away, the child loses its
stdin and exits like any worker whose master is gone.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._bootstrap import BOOTSTRAP
from ._popen import StderrRelay, split_python
from ._shipped import relay as _relay_end
from ._shipped import trace as _trace
from ._shipped.errors import GatewayStartError, InterpreterNotFound

if TYPE_CHECKING:
    from ._transports import Launch, Launched

_CHUNK = 1024 * 1024


def launch(request: Launch) -> Launched:
    """The relay transport: ``popen//via=GWID`` starts a local worker process on GWID's host."""
    from ._transports import Launched

    spec = request.spec
    if spec.transport != "popen" or not isinstance(spec.via, str):
        raise GatewayStartError(
            "xspec %r: via= starts a local worker on the via gateway's host; write popen//via=GWID" % str(spec)
        )
    via = request.member(spec.via, "via")
    python = spec.python if isinstance(spec.python, str) else via.remote_info().executable
    cmd = split_python(spec, python)
    display = "%s on %s" % (python, via.id)
    return Launched(RelayTransport(via, [*cmd, "-c", BOOTSTRAP], dict(spec.env), request.where, display))


class RelayIO:
    """Byte transport over the relay channel (the gateway's ``io`` object)."""

    def __init__(self, transport: RelayTransport) -> None:
        self._t = transport
        self._buf = b""
        self._wclosed = False

    def _next_bytes(self) -> bytes:
        t = self._t
        while True:
            try:
                item = t.chan.receive()
            except EOFError:  # the via gateway went away (GatewayLostError is an EOFError)
                t._set_status(None)
                return b""
            if type(item) is bytes:
                return item
            t._control(item)
            if t.status_known.is_set():
                return b""

    def read(self, n: int) -> bytes:
        if not self._buf:
            self._buf = self._next_bytes()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def write(self, header: bytes, payload: bytes = b"", extra: Any = None) -> None:
        if self._wclosed:
            raise OSError("the relayed worker's input is closed")
        data = b"".join([header, payload, *(extra or ())])
        try:
            for start in range(0, len(data), _CHUNK):  # stay well under the via gateway's frame cap
                self._t.chan.send(data[start : start + _CHUNK])
        except OSError:
            raise
        except Exception as exc:
            raise OSError(str(exc)) from exc

    def close_write(self) -> None:
        if not self._wclosed:
            self._wclosed = True
            try:
                self._t.chan.send(("eof",))
            except OSError:
                pass

    def close(self) -> None:
        self.close_write()


class RelayTransport(StderrRelay):
    """A worker started and relayed by another gateway (``via=``)."""

    def __init__(self, via: Any, argv: list[str], env: dict[str, str], gateway_id: str, display: str) -> None:
        super().__init__(gateway_id)
        self.via = via
        self.argv = argv
        self.env = env
        self._display = display
        self.chan: Any = None
        self.pid: int | None = None  # on the via host
        self.status: int | None = None
        self.status_known = threading.Event()

    def describe(self) -> str:
        return self._display

    def start(self) -> RelayIO:
        chan = self.via.remote_exec(_relay_end.serve)
        errch = self.via.newchannel()
        chan.send((self.argv, self.env, errch))
        first = chan.receive(60)
        if first[0] == "error":
            chan.waitclose(10)
            text = first[1]
            cls = (
                InterpreterNotFound if text.startswith(("FileNotFoundError", "PermissionError")) else GatewayStartError
            )
            raise cls(
                "gateway %s: %s could not start `%s` on its host: %s"
                % (self.gateway_id, self.via.id, self._display, text)
            )
        self.pid = int(first[1])
        self.chan = chan

        def read_err(n: int) -> bytes:  # the stderr channel carries bytes items
            try:
                return bytes(errch.receive())
            except EOFError:
                return b""

        self._start_relay(read_err)
        _trace.trace("relay for", self.gateway_id, "via", self.via.id, "pid", self.pid)
        return RelayIO(self)

    def _control(self, item: Any) -> None:
        if type(item) is tuple and len(item) == 2 and item[0] == "status":
            self._set_status(int(item[1]))

    def _set_status(self, status: int | None) -> None:
        """Record the worker's exit status; None: unknown (the via gateway's connection is gone)."""
        if not self.status_known.is_set():
            self.status_unknown = status is None
            if status is None:
                #: Why the exit status is unknown, for messages.
                self.status_unknown_reason = "the connection of its via gateway %s was lost" % self.via.id
            self.status = status if status is not None else -9  # ended, as far as this side can tell
            self.status_known.set()
            if self.chan is not None:
                # The worker has exited (its output all came before its status): closing the
                # channel ends the relay's loop on the via gateway, so it keeps no thread behind.
                try:
                    self.chan.close()
                except OSError:
                    pass

    def poll(self) -> int | None:
        return self.status if self.status_known.is_set() else None

    def wait(self, timeout: float | None) -> int | None:
        self.status_known.wait(timeout)
        return self.poll()

    def kill(self) -> None:
        if self.chan is None or self.status_known.is_set():
            return
        try:
            self.chan.send(("kill",))
        except OSError:
            self._set_status(None)
