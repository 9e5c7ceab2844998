"""ssh gateways, through the OpenSSH client and through paramiko, against a real sshd on loopback."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import execpool
from _helpers import INTERPRETERS, process_gone, wait_until
from execpool._ssh import split_target
from sshd import ALIASES, SshServer

Spec = Callable[..., str]


@pytest.fixture(params=["openssh", "paramiko"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each ssh backend in turn."""
    return str(request.param)


@pytest.fixture
def spec(sshd_server: SshServer, backend: str) -> Spec:
    """spec(alias, extra, config) -> an xspec for the test sshd through the backend under test."""

    def make(alias: str = "host-a", extra: str = "", config: Path | None = None) -> str:
        return "ssh=%s//ssh_config=%s//sshbackend=%s%s" % (alias, config or sshd_server.ssh_config, backend, extra)

    return make


@pytest.fixture
def sshgw(spec: Spec, group: execpool.Group) -> execpool.Gateway:
    return group.makegateway(spec("host-a"))


def sever(gw: execpool.Gateway) -> None:
    """Cut the connection the way a network failure would, whatever the backend."""
    transport: Any = gw._transport
    if getattr(transport, "proc", None) is not None:
        os.kill(transport.proc.pid, signal.SIGKILL)  # the OpenSSH client process
    else:
        transport.sever()  # paramiko: shut the TCP socket down


def test_remote_exec_runs_on_the_ssh_host(sshgw: execpool.Gateway, sshd_server: SshServer) -> None:
    ch = sshgw.remote_exec("import os; channel.send((os.getpid(), os.environ.get('SSH_CONNECTION', '')))")
    pid, connection = ch.receive(20)
    assert pid == sshgw.remote_info().pid
    assert connection.split()[2:] == [sshd_server.hosts["host-a"], str(sshd_server.port)]


def test_a_group_reaches_three_distinct_hosts(sshd_server: SshServer, spec: Spec, group: execpool.Group) -> None:
    group.makegateways([spec(alias) for alias in ALIASES])
    mc = group.remote_exec("import os; channel.send(os.environ['SSH_CONNECTION'].split()[2])")
    assert mc.receive_each() == [sshd_server.hosts[a] for a in ALIASES]


def test_channels_carry_all_types_and_bulk_data_over_ssh(sshgw: execpool.Gateway) -> None:
    ch = sshgw.remote_exec("for item in channel: channel.send(item)")
    items = [None, True, -(2**80), 1.5, 2j, "ü", b"\x00", bytearray(b"x"), (1,), [2], {3: {4}}, frozenset({5})]
    for item in items:
        ch.send(item)
    assert [ch.receive(20) for _ in items] == items
    blob = os.urandom(4 * 1024 * 1024)
    ch.send(blob)
    assert ch.receive(60) == blob
    ch.close()


def test_python_chdir_and_env_apply_on_the_remote_side(spec: Spec, group: execpool.Group, tmp_path: Path) -> None:
    interp = INTERPRETERS[0] if INTERPRETERS else None
    python = "//python=%s" % interp.path if interp else ""
    gw = group.makegateway(spec("host-b", "%s//chdir=%s//env:EXECPOOL_SSH=yes" % (python, tmp_path / "w")))
    ch = gw.remote_exec("import os, sys; channel.send((os.getcwd(), os.environ['EXECPOOL_SSH'], sys.version_info[:3]))")
    cwd, env, version = ch.receive(20)
    assert cwd == str(tmp_path / "w") and env == "yes"
    if interp:
        assert version == interp.version


def test_user_at_host_form(spec: Spec, group: execpool.Group) -> None:
    gw = group.makegateway(spec("root@host-c"))
    assert gw.remote_exec("import os; channel.send(os.getuid())").receive(20) == 0


def test_exit_ends_the_remote_worker_and_the_connection(sshgw: execpool.Gateway) -> None:
    remote_pid = sshgw.remote_info().pid
    transport: Any = sshgw._transport
    sshgw.exit()
    assert wait_until(lambda: process_gone(remote_pid), timeout=20)
    if getattr(transport, "proc", None) is not None:
        assert transport.proc.poll() is not None  # the ssh client process is gone
    else:
        assert transport.client.get_transport() is None  # paramiko: the connection is closed


def test_losing_the_connection_mid_transfer_ends_channels_without_hanging(sshgw: execpool.Gateway) -> None:
    remote_pid = sshgw.remote_info().pid
    ch = sshgw.remote_exec("import os\nwhile True: channel.send(os.urandom(65536))")
    ended: list[object] = []
    other = sshgw.remote_exec("channel.receive()")
    other.setcallback(ended.append, endmarker="END")
    for _ in range(5):
        ch.receive(20)
    sever(sshgw)
    with pytest.raises(execpool.GatewayLostError):
        while True:
            ch.receive(20)
    assert wait_until(lambda: ended == ["END"], timeout=20)
    # the remote worker notices (EOF / SIGHUP from sshd) and exits by itself
    assert wait_until(lambda: process_gone(remote_pid), timeout=30)


def test_proxycommand_jump_through_another_host(
    sshd_server: SshServer, spec: Spec, group: execpool.Group, tmp_path: Path
) -> None:
    # "hidden" has a name nobody can resolve: only a ProxyCommand tunnelling through host-a
    # (ssh -W to host-b's address) reaches it, for both backends
    addr, port = sshd_server.hosts["host-b"], sshd_server.port
    known = tmp_path / "known_hosts"
    key = sshd_server.ssh_config.parent.joinpath("host_key.pub").read_text().split()
    known.write_text(
        sshd_server.ssh_config.parent.joinpath("known_hosts").read_text()
        + "[hidden.invalid]:%d %s %s\n" % (port, key[0], key[1])
    )
    jump = "ssh -F %s -W %s:%d host-a" % (sshd_server.ssh_config, addr, port)
    text = sshd_server.ssh_config.read_text().replace(str(sshd_server.directory / "known_hosts"), str(known))
    config = tmp_path / "ssh_config"
    config.write_text("Host hidden\n  HostName hidden.invalid\n  Port %d\n  ProxyCommand %s\n" % (port, jump) + text)
    gw = group.makegateway(spec("hidden", config=config))
    got = gw.remote_exec("import os; channel.send(os.environ['SSH_CONNECTION'].split())").receive(20)
    assert got[2] == addr


def test_missing_remote_interpreter_is_named(spec: Spec, group: execpool.Group) -> None:
    with pytest.raises(execpool.InterpreterNotFound, match="python9"):
        group.makegateway(spec("host-a", "//python=python9"))


def test_wrong_port_is_host_unreachable(spec: Spec, group: execpool.Group) -> None:
    with pytest.raises(execpool.HostUnreachable, match=r"(?i)connection refused|unable to connect"):
        group.makegateway(spec("127.0.0.2:1"))


def test_unresolvable_name_is_host_unreachable(spec: Spec, group: execpool.Group) -> None:
    with pytest.raises(execpool.HostUnreachable, match=r"resolve|not known"):
        group.makegateway(spec("no-such-host.invalid"))


def _variant_config(server: SshServer, tmp_path: Path, old: str, new: str) -> Path:
    config = tmp_path / "ssh_config"
    text = server.ssh_config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    return config


def test_wrong_key_is_an_authentication_failure(
    sshd_server: SshServer, spec: Spec, group: execpool.Group, tmp_path: Path
) -> None:
    config = _variant_config(sshd_server, tmp_path, str(sshd_server.user_key), str(sshd_server.directory / "other_key"))
    with pytest.raises(execpool.AuthenticationFailed, match="refused"):
        group.makegateway(spec("host-a", config=config))


def test_unknown_host_key_is_refused(sshd_server: SshServer, spec: Spec, group: execpool.Group, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = _variant_config(sshd_server, tmp_path, str(sshd_server.directory / "known_hosts"), str(empty))
    with pytest.raises(execpool.AuthenticationFailed, match=r"[Hh]ost key|known_hosts"):
        group.makegateway(spec("host-a", config=config))


def test_paramiko_accept_new_records_an_unknown_host_key(
    sshd_server: SshServer, group: execpool.Group, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = _variant_config(sshd_server, tmp_path, str(sshd_server.directory / "known_hosts"), str(empty))
    gw = group.makegateway("ssh=host-a//ssh_config=%s//sshbackend=paramiko//hostkeys=accept-new" % config)
    assert gw.remote_exec("channel.send(1)").receive(20) == 1
    assert "ssh-ed25519" in empty.read_text()


def test_unknown_backend_and_hostkey_policy_are_refused(sshd_server: SshServer, group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError, match="not one of openssh, paramiko"):
        group.makegateway(sshd_server.spec("host-a", "//sshbackend=libssh"))
    with pytest.raises(execpool.GatewayStartError, match="hostkeys=sometimes"):
        group.makegateway(sshd_server.spec("host-a", "//sshbackend=paramiko//hostkeys=sometimes"))


def test_paramiko_is_used_when_there_is_no_ssh_binary(
    sshd_server: SshServer, group: execpool.Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    gw = group.makegateway(sshd_server.spec("host-a"))
    assert type(gw._transport).__name__ == "ParamikoTransport"
    assert gw.remote_exec("channel.send(2)").receive(20) == 2


def test_ssh_stderr_of_the_worker_is_relayed_with_the_gateway_id(
    sshgw: execpool.Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    sshgw.remote_exec("print('hello over ssh')").waitclose(20)
    assert wait_until(lambda: "[%s] hello over ssh" % sshgw.id in capsys.readouterr().err, timeout=20)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("host", ("host", None)),
        ("user@host", ("user@host", None)),
        ("host:2222", ("host", "2222")),
        ("user@host:22", ("user@host", "22")),
        ("[::1]:22", ("::1", "22")),
        ("user@[fe80::1]", ("user@fe80::1", None)),
    ],
)
def test_ssh_targets_are_split_into_host_and_port(target: str, expected: tuple[str, str | None]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["host:", "host:port", ":22", "a:b:c"])
def test_malformed_ssh_targets_are_refused(target: str) -> None:
    with pytest.raises(execpool.GatewayStartError, match=r"\[user@\]host\[:port\]"):
        split_target(target)


@pytest.mark.parametrize("version", ["3.7", "3.6"])
def test_too_old_remote_interpreter_is_refused(spec: Spec, group: execpool.Group, version: str) -> None:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates = sorted(root.glob(version + ".*/bin/python3"))
    if not candidates:
        pytest.skip("no Python %s installed under %s" % (version, root))
    with pytest.raises(execpool.InterpreterTooOld, match=r"3\.8"):
        group.makegateway(spec("host-a", "//python=%s" % candidates[0]))


def test_ssh_gateway_helper_of_the_seed_api(sshd_server: SshServer) -> None:
    gw = execpool.SshGateway("host-c", ssh_config=str(sshd_server.ssh_config))
    try:
        assert gw in execpool.default_group
        assert (
            gw.remote_exec("import os; channel.send(os.environ['SSH_CONNECTION'].split()[2])").receive(20)
            == (sshd_server.hosts["host-c"])
        )
    finally:
        gw.exit()
