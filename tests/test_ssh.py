"""ssh gateways through the OpenSSH client, against a real sshd on loopback addresses."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import execpool
from conftest import INTERPRETERS, process_gone, wait_until
from execpool._ssh import split_target
from sshd import ALIASES, SshServer


@pytest.fixture
def sshgw(sshd_server: SshServer, group: execpool.Group) -> execpool.Gateway:
    return group.makegateway(sshd_server.spec("host-a"))


def test_remote_exec_runs_on_the_ssh_host(sshgw: execpool.Gateway, sshd_server: SshServer) -> None:
    ch = sshgw.remote_exec("import os; channel.send((os.getpid(), os.environ.get('SSH_CONNECTION', '')))")
    pid, connection = ch.receive(20)
    assert pid == sshgw.remote_info().pid
    assert connection.split()[2:] == [sshd_server.hosts["host-a"], str(sshd_server.port)]


def test_a_group_reaches_three_distinct_hosts(sshd_server: SshServer, group: execpool.Group) -> None:
    group.makegateways([sshd_server.spec(alias) for alias in ALIASES])
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


def test_python_chdir_and_env_apply_on_the_remote_side(
    sshd_server: SshServer, group: execpool.Group, tmp_path: Path
) -> None:
    interp = INTERPRETERS[0] if INTERPRETERS else None
    python = "//python=%s" % interp.path if interp else ""
    gw = group.makegateway(sshd_server.spec("host-b", "%s//chdir=%s//env:EXECPOOL_SSH=yes" % (python, tmp_path / "w")))
    got = gw.remote_exec(
        "import os, sys; channel.send((os.getcwd(), os.environ['EXECPOOL_SSH'], sys.version_info[:3]))"
    )
    cwd, env, version = got.receive(20)
    assert cwd == str(tmp_path / "w") and env == "yes"
    if interp:
        assert version == interp.version


def test_user_at_host_form(sshd_server: SshServer, group: execpool.Group) -> None:
    gw = group.makegateway("ssh=root@host-c//ssh_config=%s" % sshd_server.ssh_config)
    assert gw.remote_exec("import os; channel.send(os.getuid())").receive(20) == 0


def test_exit_ends_the_remote_worker(sshgw: execpool.Gateway) -> None:
    remote_pid = sshgw.remote_info().pid
    sshgw.exit()
    assert wait_until(lambda: process_gone(remote_pid), timeout=20)


def test_killing_the_ssh_connection_mid_transfer_ends_channels_without_hanging(sshgw: execpool.Gateway) -> None:
    remote_pid = sshgw.remote_info().pid
    ch = sshgw.remote_exec("import os\nwhile True: channel.send(os.urandom(65536))")
    ended: list[object] = []
    other = sshgw.remote_exec("channel.receive()")
    other.setcallback(ended.append, endmarker="END")
    for _ in range(5):
        ch.receive(20)
    assert sshgw._transport is not None and sshgw._transport.proc is not None
    os.kill(sshgw._transport.proc.pid, signal.SIGKILL)  # the ssh client: the connection is gone
    with pytest.raises(execpool.GatewayLostError):
        while True:
            ch.receive(20)
    assert wait_until(lambda: ended == ["END"], timeout=20)
    # the remote worker notices (EOF / SIGHUP) and exits by itself
    assert wait_until(lambda: process_gone(remote_pid), timeout=30)


def test_missing_remote_interpreter_is_named(sshd_server: SshServer, group: execpool.Group) -> None:
    with pytest.raises(execpool.InterpreterNotFound, match="python9"):
        group.makegateway(sshd_server.spec("host-a", "//python=python9"))


def test_wrong_port_is_host_unreachable(sshd_server: SshServer, group: execpool.Group) -> None:
    with pytest.raises(execpool.HostUnreachable, match="Connection refused"):
        group.makegateway("ssh=127.0.0.2:1//ssh_config=%s" % sshd_server.ssh_config)


def test_unresolvable_name_is_host_unreachable(sshd_server: SshServer, group: execpool.Group) -> None:
    with pytest.raises(execpool.HostUnreachable, match="resolve"):
        group.makegateway("ssh=no-such-host.invalid//ssh_config=%s" % sshd_server.ssh_config)


def _variant_config(server: SshServer, tmp_path: Path, old: str, new: str) -> Path:
    config = tmp_path / "ssh_config"
    text = server.ssh_config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    return config


def test_wrong_key_is_an_authentication_failure(sshd_server: SshServer, group: execpool.Group, tmp_path: Path) -> None:
    config = _variant_config(sshd_server, tmp_path, str(sshd_server.user_key), str(sshd_server.directory / "other_key"))
    with pytest.raises(execpool.AuthenticationFailed, match="Permission denied"):
        group.makegateway("ssh=host-a//ssh_config=%s" % config)


def test_unknown_host_key_is_refused(sshd_server: SshServer, group: execpool.Group, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = _variant_config(sshd_server, tmp_path, str(sshd_server.directory / "known_hosts"), str(empty))
    with pytest.raises(execpool.AuthenticationFailed, match=r"[Hh]ost key"):
        group.makegateway("ssh=host-a//ssh_config=%s" % config)


def test_paramiko_backend_is_refused_clearly_for_now(sshd_server: SshServer, group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError, match="sshbackend=paramiko is not available"):
        group.makegateway(sshd_server.spec("host-a", "//sshbackend=paramiko"))


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


def test_ssh_stderr_of_the_worker_is_relayed_with_the_gateway_id(
    sshgw: execpool.Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    sshgw.remote_exec("print('hello over ssh')").waitclose(20)
    assert wait_until(lambda: "[%s] hello over ssh" % sshgw.id in capsys.readouterr().err, timeout=20)
