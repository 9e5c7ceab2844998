"""Hostile peers against a real ``execpool serve``: floods, slow handshakes, TLS exit, fork reaping.

Each test plays the attacker with raw sockets on loopback (floods come from 127.0.0.2 and
up, so the legitimate client on 127.0.0.1 is a different address) against a server started
here, under a hang guard (``pytest.mark.timeout``) and, for the fd flood, a low
RLIMIT_NOFILE in the server, so a regression fails with a message instead of freezing.
The key property throughout: an authenticated client's channel keeps working.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import execpool
from _helpers import process_gone, stop_serve_process, wait_until
from execpool._server import MAC, MAGIC, NONCE, recv_exact

TOKEN = "t0ken-for-the-hostile-tests-0123456789"


class Serve:
    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log: Path) -> None:
        self.proc, self.host, self.port, self.log = proc, host, port, log

    @property
    def spec(self) -> str:
        return "socket=%s:%d" % (self.host, self.port)

    def log_text(self) -> str:
        return self.log.read_text()

    def children(self) -> list[int]:
        with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
            return [int(p) for p in f.read().split()]


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Serve]]:
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    started: list[Serve] = []

    def start(*extra: str, nofile: int | None = None) -> Serve:
        n = len(started)
        ready, log = tmp_path / ("ready%d" % n), tmp_path / ("serve%d.log" % n)

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen(
            [sys.executable, "-m", "execpool", "serve", "--port", "0", "--ready-file", str(ready), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
            preexec_fn=limits,
        )
        assert wait_until(lambda: ready.exists() or proc.poll() is not None, timeout=30), "server did not start"
        assert proc.poll() is None, log.read_text()
        host, port = ready.read_text().split()
        s = Serve(proc, host, int(port), log)
        started.append(s)
        return s

    yield start
    for s in started:
        stop_serve_process(s.proc)


def _idle_connections(s: Serve, count: int, addresses: int = 1, first: int = 2) -> list[socket.socket]:
    """``count`` connections that never answer, from 127.0.0.<first>, <first+1>, ... in turn."""
    socks = []
    for i in range(count):
        c = socket.socket()
        c.bind(("127.0.0.%d" % (first + i % addresses), 0))
        c.settimeout(2)
        try:
            c.connect((s.host, s.port))
        except OSError:
            c.close()
            continue
        socks.append(c)
    return socks


def _closed_at_once(c: socket.socket) -> bool:
    """True if the server closed ``c`` without a hello (refused by a limit)."""
    c.settimeout(2)
    try:
        return c.recv(64) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _still_pending(c: socket.socket) -> bool:
    """True if the server still holds ``c`` (greeted, not closed); reads nothing it keeps."""
    c.settimeout(0.2)
    try:
        while True:
            data = c.recv(64)
            if not data:
                return False
    except (ConnectionResetError, OSError) as exc:
        return isinstance(exc, TimeoutError) or isinstance(exc, socket.timeout)


def _echo_works(ch: execpool.Channel, n: int = 3) -> bool:
    for i in range(n):
        ch.send(i)
        if ch.receive(10) != i:
            return False
    return True


@pytest.mark.timeout(60)
def test_an_fd_flood_does_not_kill_the_server_nor_its_authenticated_workers(
    serve: Callable[..., Serve], group: execpool.Group
) -> None:
    # limits as high as the flood, so that file descriptors (64) run out before any cap
    s = serve("--handshake-timeout", "3", "--max-pending", "1000", "--max-pending-per-address", "1000", nofile=64)
    gw = group.makegateway(s.spec)
    echo = gw.remote_exec("for x in channel: channel.send(x)")
    flood = _idle_connections(s, 150)
    try:
        assert wait_until(lambda: "out of file descriptors" in s.log_text(), timeout=10), s.log_text()
        assert s.proc.poll() is None, "the server died of the flood:\n" + s.log_text()
        assert _echo_works(echo), "the authenticated client's channel stopped during the flood"
    finally:
        for c in flood:
            c.close()
    assert _echo_works(echo)
    # once the flood is gone the server accepts again
    later = group.makegateway(s.spec)
    assert later.remote_exec("channel.send(7)").receive(20) == 7
    assert s.proc.poll() is None


@pytest.mark.timeout(60)
def test_pending_handshakes_are_capped_globally_and_per_address(
    serve: Callable[..., Serve], group: execpool.Group
) -> None:
    s = serve("--max-pending", "12", "--max-pending-per-address", "4", "--handshake-timeout", "20")
    echo = group.makegateway(s.spec).remote_exec("for x in channel: channel.send(x)")
    one_address = _idle_connections(s, 10)  # 4 may wait, 6 are closed at once
    greeted = [c for c in one_address if not _closed_at_once(c)]
    assert len(greeted) == 4
    # 40 more from 10 addresses: each is greeted, and once 12 are pending each new one takes the
    # place of the oldest handshake of the address that holds the most
    many = _idle_connections(s, 40, addresses=10, first=3)
    assert not any(_closed_at_once(c) for c in many)
    assert wait_until(lambda: sum(_still_pending(c) for c in greeted + many) == 12, timeout=10)
    # the busiest address loses first: of 127.0.0.2's four, at most one (the last, once every
    # address holds about as many) is left
    assert sum(_still_pending(c) for c in greeted) <= 1, "the busiest address's handshakes were not closed first"
    assert _echo_works(echo), "the authenticated client's channel stopped during the flood"
    for c in one_address + many:
        c.close()
    assert wait_until(lambda: "too many pending handshakes from one address" in s.log_text(), timeout=10)
    assert wait_until(lambda: "closed the oldest pending handshake of the busiest" in s.log_text(), timeout=10)
    assert s.log_text().count("too many pending handshakes") <= 6, "the log lines are not rate-limited"
    assert group.makegateway(s.spec).remote_exec("channel.send(1)").receive(20) == 1  # freed again


@pytest.mark.timeout(60)
def test_a_full_handshake_table_still_lets_a_legitimate_client_in(
    serve: Callable[..., Serve], group: execpool.Group
) -> None:
    # 12 idle connections from three addresses fill the table for the next 30 s; before, every
    # new client was refused until they timed out
    s = serve("--max-pending", "12", "--max-pending-per-address", "4", "--handshake-timeout", "30")
    idle = _idle_connections(s, 12, addresses=3)
    try:
        assert not any(_closed_at_once(c) for c in idle)
        started = time.monotonic()
        gw = group.makegateway(s.spec)
        assert gw.remote_exec("channel.send(5)").receive(20) == 5
        assert time.monotonic() - started < 10
        assert sum(_still_pending(c) for c in idle) == 11  # one made room, the rest still wait
    finally:
        for c in idle:
            c.close()


@pytest.mark.timeout(60)
def test_a_forking_server_forks_nothing_for_unauthenticated_connections(
    serve: Callable[..., Serve], group: execpool.Group
) -> None:
    s = serve("--fork")
    flood = _idle_connections(s, 30, addresses=10)
    try:
        time.sleep(0.5)
        assert s.children() == []
        gw = group.makegateway(s.spec)
        assert s.children() == [gw.remote_info().pid]
    finally:
        for c in flood:
            c.close()


def test_the_defaults_are_64_pending_and_8_per_address() -> None:
    from execpool.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.max_pending, args.max_pending_per_address) == (64, 8)


@pytest.mark.timeout(30)
def test_a_one_byte_at_a_time_handshake_gets_one_deadline(serve: Callable[..., Serve]) -> None:
    s = serve("--handshake-timeout", "1")
    with socket.create_connection((s.host, s.port), timeout=10) as c:
        recv_exact(c, len(MAGIC) + NONCE)
        start = time.monotonic()
        closed = False
        for _ in range(MAC + NONCE - 1):  # never completes; each byte came well within the timeout
            try:
                c.sendall(b"x")
            except OSError:
                closed = True
                break
            c.settimeout(0.2)
            try:
                if c.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            if time.monotonic() - start > 5:
                break
        held = time.monotonic() - start
    assert closed and held < 2.5, "a dripping client held its slot for %.1f s (timeout 1 s)" % held
    assert "handshake failed" in s.log_text()


@pytest.mark.timeout(60)
def test_a_forking_server_reaps_each_worker_and_records_its_exit(
    serve: Callable[..., Serve], group: execpool.Group
) -> None:
    s = serve("--fork")
    gw = group.makegateway(s.spec)
    pid = gw.remote_info().pid
    gw.exit()
    assert wait_until(lambda: not os.path.exists("/proc/%d" % pid), timeout=10), "worker %d was not reaped" % pid
    assert wait_until(lambda: "worker %d of" % pid in s.log_text(), timeout=10)
    assert s.children() == []


def test_shutdown_signals_only_live_unreaped_children(monkeypatch: pytest.MonkeyPatch) -> None:
    from execpool._shipped.server import Server

    server = Server(TOKEN.encode(), "", fork=True)
    done = subprocess.Popen(["true"])
    live = subprocess.Popen(["sleep", "30"])
    server.forked = {done.pid: "done", live.pid: "live"}
    assert wait_until(lambda: process_gone(done.pid), timeout=10)  # exited: its pid may be reused once reaped
    signalled: list[int] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        signalled.append(pid)
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    server.close()
    assert signalled == [live.pid]
    assert server.forked == {}
    assert not os.path.exists("/proc/%d" % live.pid)  # killed and reaped
    done.returncode = live.returncode = 0  # reaped by the server, not by Popen


def _self_signed_pem(tmp_path: Path) -> Path:
    """A certificate for 127.0.0.1 and its key in one PEM file, made with the openssl binary."""
    if shutil.which("openssl") is None:
        pytest.skip("TLS test needs the openssl binary to make a certificate, and there is none")
    pem = tmp_path / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(pem), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    pem.write_text(pem.read_text() + (tmp_path / "cert.pem").read_text())
    return pem


@pytest.mark.timeout(60)
def test_exit_of_a_tls_gateway_takes_under_a_second(
    serve: Callable[..., Serve], group: execpool.Group, tmp_path: Path
) -> None:
    pem = _self_signed_pem(tmp_path)
    s = serve("--tls-cert", str(pem))
    gw = group.makegateway("%s//tls//tls_ca=%s" % (s.spec, pem))
    pid = gw.remote_info().pid
    assert _echo_works(gw.remote_exec("for x in channel: channel.send(x)"))
    start = time.monotonic()
    gw.exit()
    took = time.monotonic() - start
    assert took < 1.0, "gw.exit() of a TLS gateway took %.2f s" % took
    assert wait_until(lambda: process_gone(pid), timeout=10)
    assert s.proc.poll() is None
