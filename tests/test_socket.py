"""socket= gateways to a real `execpool serve` process, and the server's security checks."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import execpool
from _helpers import process_gone, stop_serve_process, wait_until
from execpool._server import MAC, MAGIC, NONCE, client_mac, recv_exact

TOKEN = "t0ken-for-the-tests-0123456789abcdef"
SERVE = [sys.executable, "-m", "execpool", "serve", "--port", "0", "--handshake-timeout", "2"]


@dataclass
class Served:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def spec(self) -> str:
        return "socket=%s:%d" % (self.host, self.port)

    def log_text(self) -> str:
        return self.log.read_text()


def start_server(tmp_path: Path, *extra: str, env_token: str | None = TOKEN) -> Served:
    ready = tmp_path / "ready"
    log = tmp_path / "serve.log"
    env = dict(os.environ)
    env.pop("EXECPOOL_TOKEN", None)
    if env_token is not None:
        env["EXECPOOL_TOKEN"] = env_token
    proc = subprocess.Popen(
        [*SERVE, "--ready-file", str(ready), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        env=env,
    )
    assert wait_until(lambda: ready.exists() or proc.poll() is not None, timeout=30), "server did not start"
    if proc.poll() is not None:
        raise RuntimeError(log.read_text())
    host, port = ready.read_text().split()
    return Served(host, int(port), proc, log)


def stop_server(served: Served) -> None:
    stop_serve_process(served.proc)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    s = start_server(tmp_path)
    yield s
    stop_server(s)


def test_server_binds_loopback_by_default(served: Served) -> None:
    assert served.host == "127.0.0.1"


def test_socket_gateway_runs_code_in_a_worker_of_the_server(served: Served, group: execpool.Group) -> None:
    gw = group.makegateway(served.spec)
    ch = gw.remote_exec("import os; channel.send(os.getppid())")
    assert ch.receive(20) == served.proc.pid
    echo = gw.remote_exec("for x in channel: channel.send(x)")
    blob = os.urandom(2 * 1024 * 1024)
    echo.send(blob)
    assert echo.receive(30) == blob
    echo.close()
    assert "authenticated" in served.log_text()


def test_each_connection_gets_its_own_interpreter(served: Served, group: execpool.Group) -> None:
    a, b = group.makegateways([served.spec, served.spec])
    assert a.remote_info().pid != b.remote_info().pid


def test_exit_ends_the_servers_worker(served: Served, group: execpool.Group) -> None:
    gw = group.makegateway(served.spec)
    pid = gw.remote_info().pid
    gw.exit()
    assert wait_until(lambda: process_gone(pid), timeout=20)


def test_worker_death_ends_the_clients_channels(served: Served, group: execpool.Group) -> None:
    gw = group.makegateway(served.spec)
    ch = gw.remote_exec("channel.receive()")
    os.kill(gw.remote_info().pid, signal.SIGKILL)
    with pytest.raises(execpool.GatewayLostError):
        ch.receive(20)


def test_wrong_token_is_refused_logged_and_starts_nothing(
    served: Served, group: execpool.Group, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXECPOOL_TOKEN", "not-the-right-token-at-all")
    with pytest.raises(execpool.AuthenticationFailed, match="refused the token"):
        group.makegateway(served.spec)
    assert wait_until(lambda: "wrong token" in served.log_text(), timeout=10)
    assert "starting a worker" not in served.log_text()


def test_token_from_a_file(tmp_path: Path, group: execpool.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    s = start_server(tmp_path, "--token-file", str(token_file), env_token=None)
    try:
        monkeypatch.delenv("EXECPOOL_TOKEN", raising=False)
        gw = group.makegateway("%s//token_file=%s" % (s.spec, token_file))
        assert gw.remote_exec("channel.send(5)").receive(20) == 5
    finally:
        stop_server(s)


def test_client_without_a_token_gets_a_clear_error(
    served: Served, group: execpool.Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXECPOOL_TOKEN", raising=False)
    with pytest.raises(execpool.GatewayStartError, match="EXECPOOL_TOKEN"):
        group.makegateway(served.spec)


def test_server_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="token of at least 16"):
        start_server(tmp_path, env_token=None)


def _raw_handshake(served: Served, answer: bytes | None = None) -> tuple[bytes, bytes]:
    """Connect with a raw socket; send ``answer`` (or a correct one); return (server hello, verdict)."""
    with socket.create_connection((served.host, served.port), timeout=10) as s:
        hello = recv_exact(s, len(MAGIC) + NONCE)
        if answer is None:
            cnonce = os.urandom(NONCE)
            answer = client_mac(TOKEN.encode(), hello[len(MAGIC) :], cnonce) + cnonce
        s.sendall(answer)
        verdict = s.recv(1)
        return hello, verdict + (answer if verdict == b"\x01" else b"")


def test_a_replayed_handshake_is_refused(served: Served) -> None:
    _, first = _raw_handshake(served)
    assert first[:1] == b"\x01"
    recorded = first[1:]
    _, second = _raw_handshake(served, answer=recorded)  # same answer, new server nonce
    assert second[:1] == b"\x00"
    assert wait_until(lambda: "wrong token" in served.log_text(), timeout=10)


def test_code_sent_without_a_handshake_is_never_run(served: Served, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    payload = ("import pathlib; pathlib.Path(%r).write_text('x')\n" % str(sentinel)).encode()
    with socket.create_connection((served.host, served.port), timeout=10) as s:
        s.sendall(payload.ljust(MAC + NONCE, b"#"))
        s.recv(64)
    time.sleep(0.5)
    assert not sentinel.exists()
    assert wait_until(lambda: "refused" in served.log_text(), timeout=10)
    assert "starting a worker" not in served.log_text()


def test_a_silent_client_is_dropped_after_the_handshake_timeout(served: Served) -> None:
    with socket.create_connection((served.host, served.port), timeout=30) as s:
        recv_exact(s, len(MAGIC) + NONCE)
        start = time.monotonic()
        assert s.recv(1) == b""  # the server gives up and closes
        assert time.monotonic() - start < 25
    assert "handshake failed" in served.log_text()


def _fake_server(reply: bytes) -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(reply)
            try:
                conn.recv(MAC + NONCE)
                conn.sendall(b"\x01" + os.urandom(MAC))
            except OSError:
                pass
            time.sleep(0.5)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return listener, t


def test_a_server_that_does_not_know_the_token_is_not_trusted(
    group: execpool.Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    listener, t = _fake_server(MAGIC + os.urandom(NONCE))
    with listener:
        with pytest.raises(execpool.AuthenticationFailed, match="could not prove"):
            group.makegateway("socket=127.0.0.1:%d" % listener.getsockname()[1])
    t.join(5)


def test_something_else_listening_is_reported(group: execpool.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    listener, t = _fake_server(b"SSH-2.0-OpenSSH_9.2\r\n" + b"x" * 64)
    with listener:
        with pytest.raises(execpool.GatewayStartError, match="not an execpool server"):
            group.makegateway("socket=127.0.0.1:%d" % listener.getsockname()[1])
    t.join(5)


def test_nothing_listening_is_host_unreachable(group: execpool.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    with pytest.raises(execpool.HostUnreachable, match="execpool serve"):
        group.makegateway("socket=127.0.0.1:1")


def _self_signed(tmp_path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pem


def test_tls_connection_with_a_pinned_certificate(
    tmp_path: Path, group: execpool.Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography")
    pem = _self_signed(tmp_path)
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    s = start_server(tmp_path, "--tls-cert", str(pem))
    try:
        gw = group.makegateway("%s//tls//tls_ca=%s" % (s.spec, pem))
        echo = gw.remote_exec("for x in channel: channel.send(x)")
        blob = os.urandom(1024 * 1024)
        echo.send(blob)
        assert echo.receive(30) == blob
        echo.close()
        with pytest.raises(execpool.GatewayStartError):
            group.makegateway(s.spec)  # plain TCP against a TLS server: no handshake
        with pytest.raises(execpool.GatewayStartError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            group.makegateway("%s//tls" % s.spec)  # the system CAs do not know this certificate
    finally:
        stop_server(s)


def test_forking_server_runs_workers_in_forked_children(
    tmp_path: Path, group: execpool.Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECPOOL_TOKEN", TOKEN)
    s = start_server(tmp_path, "--fork")
    try:
        gw = group.makegateway(s.spec)
        pid = gw.remote_info().pid
        assert gw.remote_exec("import os; channel.send(os.getppid())").receive(20) == s.proc.pid
        echo = gw.remote_exec("for x in channel: channel.send(x)")
        echo.send(b"x" * 100000)
        assert echo.receive(20) == b"x" * 100000
        echo.close()
        gw.exit()
        assert wait_until(lambda: process_gone(pid), timeout=20)
        monkeypatch.setenv("EXECPOOL_TOKEN", "a-wrong-token-of-some-length")
        with pytest.raises(execpool.AuthenticationFailed):
            group.makegateway(s.spec)
        assert wait_until(lambda: "wrong token" in s.log_text(), timeout=10)
    finally:
        stop_server(s)


def test_fork_and_tls_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--fork and TLS"):
        start_server(tmp_path, "--fork", "--tls-cert", str(tmp_path / "missing.pem"))


def test_installvia_starts_a_server_through_a_gateway(group: execpool.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECPOOL_TOKEN", raising=False)  # installvia makes its own token
    base = group.makegateway("popen//id=base")
    gw = group.makegateway("socket=127.0.0.1:0//installvia=base")
    assert gw.remote_exec("import os; channel.send(os.getppid())").receive(20) == base.remote_info().pid
    pid = gw.remote_info().pid
    gw.exit()
    assert wait_until(lambda: process_gone(pid), timeout=20)
    # the installed server stopped with its gateway: nothing runs in base any more
    assert wait_until(lambda: base.remote_status().numexecuting == 0, timeout=20)


def test_installvia_errors_are_clear(group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError, match="names no other gateway"):
        group.makegateway("socket=127.0.0.1:0//installvia=nope")
    group.makegateway("popen//id=base")
    with socket.create_server(("127.0.0.1", 0)) as taken:  # the server cannot bind a port in use
        with pytest.raises(execpool.GatewayStartError, match="could not start a server through base"):
            group.makegateway("socket=127.0.0.1:%d//installvia=base" % taken.getsockname()[1])
    with pytest.raises(execpool.GatewayStartError, match="socket=HOST:PORT//installvia=GWID"):
        group.makegateway("popen//installvia=base")
