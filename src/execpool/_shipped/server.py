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

import errno
import hashlib
import hmac
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

MAGIC = b"EXECPOOL1"
NONCE = 32
MAC = 32
HANDSHAKE_TIMEOUT = 10.0  # seconds for the whole handshake, from accept to the verdict
MAX_PENDING = 64  # unauthenticated connections at once
MAX_PENDING_PER_ADDRESS = 8  # of them from one address


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


class _Pending:
    """A connection that has not authenticated yet: its one deadline and what it has sent."""

    __slots__ = ("answer", "conn", "deadline", "greeted", "ip", "nonce", "who")

    def __init__(self, conn: Any, who: str, ip: str, deadline: float) -> None:
        self.conn = conn
        self.who = who
        self.ip = ip
        self.deadline = deadline
        self.nonce = os.urandom(NONCE)
        self.answer = b""
        self.greeted = False  # the hello is sent (after the TLS handshake, with TLS)


class Server:
    """Accepts connections, authenticates them, and gives each one an interpreter.

    One thread (:meth:`serve_forever`) accepts and runs every handshake, non-blocking, with
    one deadline per connection; only an authenticated connection gets a worker (a thread and
    an interpreter, or with ``fork`` a forked child).  Limits: at most ``max_pending``
    unauthenticated connections (when full, a new one takes the place of the oldest pending
    handshake of the address holding the most), ``max_pending_per_address`` from one address
    (more are closed at once); when the process runs out of file descriptors it stops
    accepting for a while and keeps serving the workers it has.
    """

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
        max_pending: int = MAX_PENDING,
        max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        if fork and tls is not None:
            raise ValueError("--fork and TLS cannot be combined: a forked worker reads the plain socket")
        if max_pending < 1 or max_pending_per_address < 1:
            raise ValueError("--max-pending and --max-pending-per-address must be at least 1")
        self.fork = fork
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.forked: Dict[int, str] = {}  # live (not yet reaped) forked workers: pid -> client
        self.token = token
        self.bootstrap = bootstrap
        self.python = python
        self.tls = tls
        self.log = log or _log_to_stderr
        self.sock = socket.create_server((host, port))
        self.address = self.sock.getsockname()[:2]
        self.children: List[subprocess.Popen[bytes]] = []
        self._closed = False
        self._pending: Dict[Any, _Pending] = {}
        self._per_address: Dict[str, int] = {}
        self._sel: Any = None
        self._refused = 0  # connections closed at once (per-address limit) since the last log line
        self._evicted = 0  # pending handshakes closed to make room since the last log line
        self._last_note: Dict[str, float] = {}

    def serve_forever(self) -> None:
        mode = "forking" if self.fork else "one interpreter per connection"
        self.log(
            "execpool serve: listening on %s:%d (pid %d, %s)" % (self.address[0], self.address[1], os.getpid(), mode)
        )
        self.sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        listening = True
        resume_at = 0.0
        backoff = 0.05
        try:
            while not self._closed:
                now = time.monotonic()
                if not listening and now >= resume_at:
                    self._sel.register(self.sock, selectors.EVENT_READ, None)
                    listening = True
                wait = 0.5
                if self._pending:
                    wait = min(wait, min(p.deadline for p in self._pending.values()) - now)
                if not listening:
                    wait = min(wait, resume_at - now)
                for key, _ in self._sel.select(max(0.0, wait)):
                    if key.data is None:
                        problem = self._accept_some()
                        if problem is not None and not self._closed:
                            # out of file descriptors or kernel memory (or another accept error):
                            # stop accepting for a while, never die of it -- handshakes time
                            # out and free their descriptors, workers go on
                            self._sel.unregister(self.sock)
                            listening = False
                            resume_at = time.monotonic() + backoff
                            self._note("fds", "%s; not accepting for %.2f s" % (problem, backoff))
                            backoff = min(backoff * 2, 1.0)
                        else:
                            backoff = 0.05
                    else:
                        self._advance(key.data)
                self._expire(time.monotonic())
                self._reap()
        except OSError:
            if not self._closed:
                raise
        finally:
            for p in list(self._pending.values()):
                self._drop(p)
            self._sel.close()
            self.close()

    def _accept_some(self) -> Optional[str]:
        """Accept what is waiting; None, or why accepting must pause (out of file descriptors)."""
        for _ in range(64):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that connection is gone already
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return "out of file descriptors (%s)" % errno.errorcode[exc.errno]
                if self._closed:
                    return None
                return "accept failed (%s)" % exc
            ip = str(addr[0])
            if self._per_address.get(ip, 0) >= self.max_pending_per_address:
                conn.close()
                self._refused += 1
                self._note(
                    "cap",
                    "closed %d connection(s) at once: too many pending handshakes from one address (at most "
                    "%d; --max-pending-per-address)" % (self._refused, self.max_pending_per_address),
                )
                continue
            if len(self._pending) >= self.max_pending:
                # Full: make room by closing the oldest handshake of the address that holds the
                # most, so that idle connections from a few addresses cannot lock everyone out
                # until they time out (an honest handshake takes one round trip).
                victim = max(self._pending.values(), key=lambda p: (self._per_address[p.ip], -p.deadline))
                self._drop(victim)
                self._evicted += 1
                self._note(
                    "full",
                    "closed the oldest pending handshake of the busiest address %d time(s): too many pending "
                    "handshakes (at most %d; --max-pending)" % (self._evicted, self.max_pending),
                )
            self._start_handshake(conn, "%s:%d" % (ip, addr[1]), ip)
        return None

    def _note(self, what: str, text: str) -> None:
        """A log line about an attack-like condition, at most one a second for each kind."""
        now = time.monotonic()
        if now - self._last_note.get(what, -10.0) >= 1.0:
            self._last_note[what] = now
            if what == "cap":
                self._refused = 0
            elif what == "full":
                self._evicted = 0
            self.log("execpool serve: " + text)

    def _start_handshake(self, conn: Any, who: str, ip: str) -> None:
        p = _Pending(conn, who, ip, time.monotonic() + self.handshake_timeout)
        self._pending[conn] = p
        self._per_address[ip] = self._per_address.get(ip, 0) + 1
        try:
            conn.setblocking(False)
            if self.tls is not None:
                p.conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                del self._pending[conn]
                self._pending[p.conn] = p
            self._sel.register(p.conn, selectors.EVENT_READ, p)
        except Exception as exc:
            self._fail(p, exc)
            return
        self._advance(p)

    def _advance(self, p: _Pending) -> None:
        """Move one handshake on as far as the bytes that have arrived allow."""
        import ssl

        try:
            if not p.greeted:
                if self.tls is not None:
                    p.conn.do_handshake()
                p.conn.send(MAGIC + p.nonce)  # a fresh socket's buffer takes 41 bytes at once
                p.greeted = True
            while len(p.answer) < MAC + NONCE:
                chunk = p.conn.recv(MAC + NONCE - len(p.answer))
                if not chunk:
                    raise EOFError("the connection closed during the handshake")
                p.answer += chunk
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            self._sel.modify(p.conn, selectors.EVENT_READ, p)
            return
        except ssl.SSLWantWriteError:
            self._sel.modify(p.conn, selectors.EVENT_WRITE, p)
            return
        except Exception as exc:  # TLS errors, garbage, early close
            self._fail(p, exc)
            return
        mac, client_nonce = p.answer[:MAC], p.answer[MAC:]
        ok = hmac.compare_digest(mac, client_mac(self.token, p.nonce, client_nonce))
        self._forget(p)
        try:
            if not ok:
                self.log("execpool serve: refused %s: wrong token" % p.who)
                p.conn.send(b"\x00")
                p.conn.close()
                return
            p.conn.setblocking(True)
            p.conn.sendall(b"\x01" + server_mac(self.token, p.nonce, client_nonce))
        except Exception as exc:
            self._fail(p, exc)
            return
        self.log("execpool serve: %s authenticated; starting a worker" % p.who)
        if self.fork:
            self._fork_worker(p.conn, p.who)
        else:
            threading.Thread(target=self._start_worker, args=(p.conn, p.who), daemon=True).start()

    def _forget(self, p: _Pending) -> None:
        if self._pending.pop(p.conn, None) is None:
            return
        n = self._per_address[p.ip] - 1
        if n:
            self._per_address[p.ip] = n
        else:
            del self._per_address[p.ip]
        try:
            self._sel.unregister(p.conn)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        try:
            p.conn.close()
        except OSError:
            pass

    def _fail(self, p: _Pending, exc: BaseException) -> None:
        self.log("execpool serve: refused %s: handshake failed (%s: %s)" % (p.who, type(exc).__name__, exc))
        self._drop(p)

    def _expire(self, now: float) -> None:
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self._fail(p, TimeoutError("no complete handshake within %g s" % self.handshake_timeout))

    def _fork_worker(self, conn: socket.socket, who: str) -> None:
        """--fork: an authenticated client gets a child of this (single-threaded) server as its
        worker -- no new interpreter to start."""
        try:
            pid = os.fork()
        except OSError as exc:
            self.log("execpool serve: cannot fork a worker for %s: %s" % (who, exc))
            conn.close()
            return
        if pid:
            conn.close()
            self.forked[pid] = who
            return
        status = 1
        try:
            self.sock.close()
            self._sel.close()
            for other in self._pending.values():
                other.conn.close()
            self.log("execpool serve: %s: worker pid %d" % (who, os.getpid()))
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

    def _reap(self) -> None:
        """Collect the forked workers that have exited: only an unreaped pid is ever signalled."""
        for pid in list(self.forked):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                who = self.forked.pop(pid)
                self.log("execpool serve: worker %d of %s exited with status %d" % (pid, who, _exit_code(status)))

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self.forked:
            self._reap()
            for pid in list(self.forked):  # not reaped yet: still ours, alive or a zombie
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
                del self.forked[pid]
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()

    def _start_worker(self, conn: Any, who: str) -> None:
        argv = [self.python, "-c", self.bootstrap]
        try:
            if self.tls is None:
                # the plain socket becomes the worker's stdin and stdout
                child = subprocess.Popen(argv, stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.PIPE)
                conn.close()
            else:
                child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                threading.Thread(target=_copy_to_pipe, args=(conn, child), daemon=True).start()
                threading.Thread(target=_copy_to_socket, args=(child, conn), daemon=True).start()
        except OSError as exc:  # out of file descriptors or processes: this client only
            self.log("execpool serve: cannot start a worker for %s: %s" % (who, exc))
            conn.close()
            return
        self.children.append(child)
        assert child.stderr is not None
        for line in child.stderr:
            self.log("[%s pid %d] %s" % (who, child.pid, line.decode("utf-8", "replace").rstrip("\n")))
        status = child.wait()
        self.children.remove(child)
        self.log("execpool serve: worker %d of %s exited with status %d" % (child.pid, who, status))


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else status


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
        # The worker is gone: end the TCP connection.  close() alone does not while the other
        # relay thread is blocked in recv() on it (the kernel keeps the socket until that call
        # returns), so the client would wait for an end that never comes; shutdown() wakes that
        # thread and sends the FIN (no TLS close_notify: it cannot be sent while the other
        # thread reads, and the client takes the TCP end as the end).
        try:
            socket.socket.shutdown(conn, socket.SHUT_RDWR)
        except OSError:
            pass
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
