"""The authenticated socket server (``execpool serve``) and its handshake: both ends' shared part.

Security model: the server starts interpreters for whoever connects, so it
never runs anything before the client has proven that it knows the shared
secret (the *token*).  The handshake, before a single byte of code::

    server -> client   MAGIC (9 bytes) + server nonce (32 random bytes)
    client -> server   HMAC-SHA256(token, "execpool-client" + server nonce + client nonce)
                       + client nonce (32 random bytes)
    server -> client   b"\\x01" + HMAC-SHA256(token, "execpool-server" + client nonce + server nonce)
                       (or b"\\x00" and the connection is closed: wrong token)

Both sides prove knowledge of the token without sending it; the fresh server
nonce makes a recorded client answer useless on a new connection (no
replay), and the server's answer lets the client check that it talks to the
real server.  The token only authenticates: without TLS (``--tls-cert``) the
traffic after the handshake is neither encrypted nor protected against
tampering on the network path, so bind to 127.0.0.1 (the default) or use TLS.

After the handshake the server starts ``PYTHON -c BOOTSTRAP`` for the
connection (one interpreter per connection) with the socket as its stdin and
stdout -- or, with TLS, relays between the TLS socket and the interpreter's
pipes -- and the client continues exactly as with a local worker process.

The same module runs in two places: on the master as ``execpool._shipped.server``
(the ``execpool serve`` command, see ``execpool._server``; the client's side of
the handshake, see ``execpool._socket``) and, for ``installvia=``, in a worker
process as ``_execpool.server``, where :func:`serve_one_client` (sent by
reference with ``remote_exec``) runs a server for one client.

Stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import subprocess
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, List, Optional

MAGIC = b"EXECPOOL1"
NONCE = 32
MAC = 32
HANDSHAKE_TIMEOUT = 10.0


def client_mac(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token, b"execpool-client" + server_nonce + client_nonce, hashlib.sha256).digest()


def server_mac(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token, b"execpool-server" + client_nonce + server_nonce, hashlib.sha256).digest()


def recv_exact(sock: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the connection closed during the handshake")
        data += chunk
    return data


class Server:
    """Accepts connections, authenticates them, and gives each one an interpreter."""

    def __init__(
        self,
        token: bytes,
        bootstrap: str,
        host: str = "127.0.0.1",
        port: int = 0,
        python: str = sys.executable,
        tls: Any = None,
        log: Optional[Callable[[str], None]] = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        fork: bool = False,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        if fork and tls is not None:
            raise ValueError("--fork and TLS cannot be combined: a forked worker reads the plain socket")
        self.fork = fork
        self.forked: List[int] = []
        self.token = token
        self.bootstrap = bootstrap
        self.python = python
        self.tls = tls
        self.log = log or _log_to_stderr
        self.sock = socket.create_server((host, port))
        self.address = self.sock.getsockname()[:2]
        self.children: List[subprocess.Popen[bytes]] = []
        self._closed = False

    def serve_forever(self) -> None:
        mode = "forking" if self.fork else "one interpreter per connection"
        self.log(
            "execpool serve: listening on %s:%d (pid %d, %s)" % (self.address[0], self.address[1], os.getpid(), mode)
        )
        if self.fork:
            import signal

            signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked workers are reaped by the kernel
        try:
            while not self._closed:
                try:
                    conn, addr = self.sock.accept()
                except OSError:
                    if self._closed:
                        return
                    raise
                if self.fork:
                    self._fork_worker(conn, addr)
                else:
                    threading.Thread(target=self._handle, args=(conn, addr), daemon=True).start()
        finally:
            self.close()

    def _fork_worker(self, conn: socket.socket, addr: Any) -> None:
        """--fork: a child of this (single-threaded) server authenticates the client and, if it
        passes, becomes the worker in place -- no new interpreter to start."""
        pid = os.fork()
        if pid:
            conn.close()
            self.forked = [p for p in self.forked if _alive(p)] + [pid]
            return
        status = 1
        try:
            self.sock.close()
            if self._handshake(conn, "%s:%d" % (addr[0], addr[1])):
                self.log("execpool serve: %s:%d authenticated; worker pid %d" % (addr[0], addr[1], os.getpid()))
                fd = conn.fileno()
                os.dup2(fd, 0)
                os.dup2(fd, 1)
                conn.close()
                try:
                    exec(compile(self.bootstrap, "<execpool bootstrap>", "exec"), {"__name__": "__main__"})
                    status = 0
                except SystemExit as exc:
                    status = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(status)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        for pid in self.forked:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        who = "%s:%d" % (addr[0], addr[1])
        tls_conn = self._handshake(conn, who)
        if tls_conn is None:
            return
        self.log("execpool serve: %s authenticated; starting a worker" % who)
        self._start_worker(tls_conn, who)

    def _handshake(self, conn: Any, who: str) -> Any:
        """Authenticate the client; return the (TLS-wrapped) connection, or None if refused."""
        try:
            conn.settimeout(self.handshake_timeout)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            server_nonce = os.urandom(NONCE)
            conn.sendall(MAGIC + server_nonce)
            answer = recv_exact(conn, MAC + NONCE)
            mac, client_nonce = answer[:MAC], answer[MAC:]
            if not hmac.compare_digest(mac, client_mac(self.token, server_nonce, client_nonce)):
                self.log("execpool serve: refused %s: wrong token" % who)
                conn.sendall(b"\x00")
                conn.close()
                return None
            conn.sendall(b"\x01" + server_mac(self.token, server_nonce, client_nonce))
            conn.settimeout(None)
        except Exception as exc:  # timeouts, TLS errors, garbage, early close
            self.log("execpool serve: refused %s: handshake failed (%s: %s)" % (who, type(exc).__name__, exc))
            try:
                conn.close()
            except OSError:
                pass
            return None
        return conn

    def _start_worker(self, conn: Any, who: str) -> None:
        argv = [self.python, "-c", self.bootstrap]
        if self.tls is None:
            # the plain socket becomes the worker's stdin and stdout
            child = subprocess.Popen(argv, stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.PIPE)
            conn.close()
        else:
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            threading.Thread(target=_copy_to_pipe, args=(conn, child), daemon=True).start()
            threading.Thread(target=_copy_to_socket, args=(child, conn), daemon=True).start()
        self.children.append(child)
        assert child.stderr is not None
        for line in child.stderr:
            self.log("[%s pid %d] %s" % (who, child.pid, line.decode("utf-8", "replace").rstrip("\n")))
        status = child.wait()
        self.children.remove(child)
        self.log("execpool serve: worker %d of %s exited with status %d" % (child.pid, who, status))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _log_to_stderr(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _copy_to_pipe(conn: Any, child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    try:
        while True:
            data = conn.recv(262144)
            if not data:
                break
            child.stdin.write(data)
            child.stdin.flush()
    except (OSError, ValueError):
        pass
    finally:
        try:
            child.stdin.close()
        except OSError:
            pass


def _copy_to_socket(child: subprocess.Popen[bytes], conn: Any) -> None:
    assert child.stdout is not None
    fd = child.stdout.fileno()
    try:
        while True:
            data = os.read(fd, 262144)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def serve_one_client(channel: Any) -> None:
    """An entry point for ``remote_exec`` (``installvia=``): a server for one client, on this host.

    Receives ``(token, host, port, bootstrap)``, sends back the address it listens
    on, and serves until the channel closes (the client's gateway is done with it)
    or this worker process ends.
    """
    token, host, port, bootstrap = channel.receive()
    server = Server(token, bootstrap, host, port)
    channel.send(tuple(server.address))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        channel.receive()  # until the client's gateway is done with it (or this gateway ends)
    except EOFError:
        pass
    finally:
        server.close()
