"""via= gateways: workers started and relayed by another gateway (locally and over ssh)."""

from __future__ import annotations

import os
import signal

import pytest

import execpool
from _helpers import INTERPRETERS, process_gone, wait_until
from sshd import SshServer


def test_a_via_worker_is_a_child_of_the_via_worker(group: execpool.Group) -> None:
    via = group.makegateway("popen")
    sub = group.makegateway("popen//via=%s" % via.id)
    assert sub.remote_info().pid != via.remote_info().pid
    assert sub.remote_exec("import os; channel.send(os.getppid())").receive(10) == via.remote_info().pid


def test_channels_and_bulk_data_work_through_the_relay(group: execpool.Group) -> None:
    group.makegateway("popen")
    sub = group.makegateway("popen//via=gw0")
    ch = sub.remote_exec("for x in channel: channel.send(x)")
    blob = os.urandom(3 * 1024 * 1024 + 17)
    for item in (1, "two", [3.0, 4j], blob):
        ch.send(item)
        assert ch.receive(30) == item
    ch.close()


def test_via_workers_may_run_another_python(group: execpool.Group) -> None:
    if not INTERPRETERS:
        pytest.skip("no interpreters found")
    group.makegateway("popen")
    subs = group.makegateways(["popen//via=gw0//python=%s" % i.path for i in INTERPRETERS])
    assert [s.remote_info().version_info[:3] for s in subs] == [i.version for i in INTERPRETERS]


def test_stderr_of_a_via_worker_is_relayed_with_its_own_id(
    group: execpool.Group, capsys: pytest.CaptureFixture[str]
) -> None:
    group.makegateway("popen")
    sub = group.makegateway("popen//via=gw0//id=relayed")
    sub.remote_exec("print('through the relay')").waitclose(10)
    assert wait_until(lambda: "[relayed] through the relay" in capsys.readouterr().err, timeout=10)


def test_exit_of_a_via_worker_ends_its_process_only(group: execpool.Group) -> None:
    via = group.makegateway("popen")
    sub = group.makegateway("popen//via=gw0")
    pid = sub.remote_info().pid
    sub.exit()
    assert process_gone(pid) or wait_until(lambda: process_gone(pid), timeout=10)
    assert via.remote_exec("channel.send('still here')").receive(10) == "still here"


def test_losing_the_via_gateway_ends_the_relayed_ones(group: execpool.Group) -> None:
    via = group.makegateway("popen")
    sub = group.makegateway("popen//via=gw0")
    pid = sub.remote_info().pid
    ch = sub.remote_exec("channel.receive()")
    via.exit()
    with pytest.raises(execpool.GatewayLostError):
        ch.receive(20)
    assert wait_until(lambda: process_gone(pid), timeout=20)


def test_killing_a_stuck_via_worker(group: execpool.Group) -> None:
    group.makegateway("popen")
    sub = group.makegateway("popen//via=gw0")
    pid = sub.remote_info().pid
    stuck = sub.remote_exec(
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); channel.send(1)\nwhile 1: pass"
    )
    assert stuck.receive(10) == 1
    sub.exit(timeout=1.0)
    assert wait_until(lambda: process_gone(pid), timeout=20)


def test_via_errors_are_clear(group: execpool.Group) -> None:
    with pytest.raises(execpool.GatewayStartError, match="names no other gateway"):
        group.makegateway("popen//via=gw7")
    group.makegateway("popen//id=base")
    with pytest.raises(execpool.InterpreterNotFound, match="python9"):
        group.makegateway("popen//via=base//python=python9")
    with pytest.raises(execpool.GatewayStartError, match="popen//via=GWID"):
        group.makegateway("ssh=somewhere//via=base")


def test_several_workers_on_one_ssh_host_share_one_connection(sshd_server: SshServer, group: execpool.Group) -> None:
    ssh = group.makegateway(sshd_server.spec("host-b"))
    subs = group.makegateways(["popen//via=%s" % ssh.id] * 3)
    hosts = group.remote_exec("import os; channel.send(os.environ.get('SSH_CONNECTION', '').split()[2:3])")
    assert hosts.receive_each() == [[sshd_server.hosts["host-b"]]] * 4
    # one ssh client process for all four workers
    assert ssh._transport is not None and all(s._transport is not ssh._transport for s in subs)
    assert sum(type(gw._transport).__name__ == "PopenTransport" for gw in group) == 1


def test_the_via_gateway_keeps_no_relay_behind_for_workers_that_ended() -> None:
    g = execpool.Group()
    try:
        relay = g.makegateway("popen//id=relay")
        for _ in range(3):
            w = g.makegateway("popen//via=relay")
            os.kill(w.remote_info().pid, signal.SIGKILL)
            with pytest.raises(execpool.GatewayLostError, match=r"exit status|killed"):
                w.remote_exec("channel.receive()").receive(30)
        assert wait_until(lambda: relay.remote_status().numexecuting == 0)
    finally:
        g.terminate(5)
