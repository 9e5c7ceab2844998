"""The socket transport: ``socket=host:port`` to an ``execpool serve`` process.

The client connects, proves that it knows the shared token (HMAC handshake,
see ``_shipped.server``), checks that the server knows it too, and then talks to the
worker the server started for this connection exactly as to a local one.
The token comes from ``token_file=PATH`` in the spec or the
``EXECPOOL_TOKEN`` environment variable; ``tls`` (with ``tls_ca=PATH`` for a
private CA or a self-signed certificate) wraps the connection in TLS.

There is no local process: the worker's exit is the end of the connection,
and "killing" it closes the socket, which makes the worker exit.  Its stderr
stays with the server, which logs it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from typing import TYPE_CHECKING, Any

from ._bootstrap import BOOTSTRAP
from ._popen import StderrRelay
from ._server import read_token
from ._shipped import server as _server_end
from ._shipped.errors import AuthenticationFailed, GatewayStartError, HostUnreachable
from ._shipped.server import HANDSHAKE_TIMEOUT, MAC, MAGIC, NONCE, client_mac, recv_exact, server_mac

if TYPE_CHECKING:
    from ._transports import Launch, Launched


def install_server(via: Any, host: str, port: int, bootstrap: str) -> tuple[tuple[str, int], bytes, Any]:
    """Start a one-client ``execpool serve`` through the gateway ``via``.

    The gateway runs :func:`execpool._shipped.server.serve_one_client` (every worker
    process has it), with a fresh random token that travels over ``via``'s own,
    already trusted, channel.
    Returns the address it listens on, the token, and the channel whose closing
    stops it.
    """
    import secrets

    token = secrets.token_hex(32).encode()
    ch = via.remote_exec(_server_end.serve_one_client)
    ch.send((token, host, port, bootstrap))
    host_port = ch.receive(60)
    return (str(host_port[0]), int(host_port[1])), token, ch


def launch(request: Launch) -> Launched:
    """The ``socket`` transport: a connection to an ``execpool serve`` server (``installvia=``:
    one started for this gateway through another gateway of the group)."""
    from ._transports import Launched

    spec = request.spec
    installvia = request.member(spec.installvia, "installvia") if spec.installvia is not None else None
    return Launched(SocketTransport(spec, request.where, installvia, BOOTSTRAP))


class SocketIO:
    """The gateway's byte transport over a (TLS) socket."""

    def __init__(self, sock: Any, ended: threading.Event, on_close: Any = None) -> None:
        self.sock = sock
        self._ended = ended
        self._on_close = on_close
        self._wclosed = False

    def read(self, n: int) -> bytes:
        try:
            data = bytes(self.sock.recv(n))
        except OSError:
            self._ended.set()  # reset or broken: the worker is gone as far as we can tell
            raise
        if not data:
            self._ended.set()
        return data

    def readinto(self, buf: Any) -> int:
        try:
            n = int(self.sock.recv_into(buf))
        except OSError:
            self._ended.set()
            raise
        if not n:
            self._ended.set()
        return n

    def write(self, header: bytes, payload: bytes = b"", extra: Any = None) -> None:
        if self._wclosed:
            raise OSError("the connection's sending side is closed")
        if len(payload) < 65536:
            self.sock.sendall(header + payload)
        else:
            self.sock.sendall(header)
            self.sock.sendall(payload)
        for buf in extra or ():
            self.sock.sendall(buf)

    def close_write(self) -> None:
        if self._wclosed:
            return
        self._wclosed = True
        if not hasattr(self.sock, "version"):  # plain socket: half-close, the worker sees EOF
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._wclosed = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self._on_close is not None:
            self._on_close()


class SocketTransport(StderrRelay):
    """A worker started by an ``execpool serve`` process for this connection."""

    pid = None  # no local process

    def __init__(self, spec: Any, gateway_id: str, installvia: Any = None, bootstrap: str = "") -> None:
        super().__init__(gateway_id)
        self.spec = spec
        self.installvia = installvia  # a gateway that starts the server for us
        self._bootstrap = bootstrap
        self._install_channel: Any = None
        m = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)", str(spec.socket))
        if not m:
            raise GatewayStartError("xspec %r: write socket=HOST:PORT" % str(spec))
        self.host = m.group("v6") or m.group("host")
        self.port = int(m.group("port"))
        self.sock: Any = None
        self.ended = threading.Event()

    def describe(self) -> str:
        return "socket %s:%d" % (self.host, self.port)

    def _install(self, where: str) -> bytes:
        try:
            (self.host, self.port), token, self._install_channel = install_server(
                self.installvia, self.host, self.port, self._bootstrap
            )
        except Exception as exc:
            raise GatewayStartError(
                "%s: could not start a server through %s on %s:%d: %s"
                % (where, self.installvia.id, self.host, self.port, str(exc).strip().splitlines()[-1])
            ) from None
        return token

    def _stop_installed(self) -> None:
        if self._install_channel is not None:
            self._install_channel.close()

    def start(self) -> SocketIO:
        where = "gateway %s" % self.gateway_id
        if self.installvia is not None:
            token = self._install(where)
        else:
            try:
                token = read_token(self.spec.token_file if isinstance(self.spec.token_file, str) else None)
            except (OSError, ValueError) as exc:
                raise GatewayStartError("%s: %s" % (where, exc)) from None
        try:
            sock: Any = socket.create_connection((self.host, self.port), timeout=HANDSHAKE_TIMEOUT)
        except OSError as exc:
            raise HostUnreachable(
                "%s: cannot connect to %s:%d (%s); is `execpool serve` running there?"
                % (where, self.host, self.port, exc)
            ) from None
        try:
            if self.spec.tls:
                import ssl

                cafile = self.spec.tls_ca if isinstance(self.spec.tls_ca, str) else None
                context = ssl.create_default_context(cafile=cafile)
                sock = context.wrap_socket(sock, server_hostname=self.host)
            hello = recv_exact(sock, len(MAGIC) + NONCE)
            if hello[: len(MAGIC)] != MAGIC:
                raise GatewayStartError("%s: %s:%d is not an execpool server" % (where, self.host, self.port))
            server_nonce = hello[len(MAGIC) :]
            client_nonce = os.urandom(NONCE)
            sock.sendall(client_mac(token, server_nonce, client_nonce) + client_nonce)
            verdict = sock.recv(1)
            if verdict != b"\x01":
                raise AuthenticationFailed(
                    "%s: the server at %s:%d refused the token; use the token the server was started with"
                    % (where, self.host, self.port)
                )
            proof = recv_exact(sock, MAC)
            if proof != server_mac(token, server_nonce, client_nonce):
                raise AuthenticationFailed(
                    "%s: the server at %s:%d could not prove that it knows the token; not connecting"
                    % (where, self.host, self.port)
                )
            sock.settimeout(None)
        except (GatewayStartError, AuthenticationFailed):
            sock.close()
            self._stop_installed()
            raise
        except Exception as exc:
            sock.close()
            self._stop_installed()
            raise GatewayStartError(
                "%s: the handshake with %s:%d failed (%s: %s)" % (where, self.host, self.port, type(exc).__name__, exc)
            ) from None
        self.sock = sock
        self.release_stderr()
        return SocketIO(sock, self.ended, self._stop_installed)

    def poll(self) -> int | None:
        return 0 if self.ended.is_set() else None

    def wait(self, timeout: float | None) -> int | None:
        self.ended.wait(timeout)
        return self.poll()

    def kill(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.ended.set()
        self._stop_installed()  # the installed server kills what is left of its worker
