"""Groups and multi-channels: ids, indexing, parallel start, terminate, mixed versions."""

from __future__ import annotations

import threading
import time

import pytest

import execpool
from _helpers import INTERPRETERS, process_gone, wait_until
from execpool.gateway import WorkerOptions


def test_ids_are_allocated_in_order_and_index_by_position_and_id(group: execpool.Group) -> None:
    a, b = group.makegateways(["popen", "popen"])
    c = group.makegateway("popen//id=custom")
    assert [gw.id for gw in group] == ["gw0", "gw1", "custom"]
    assert group[0] is a and group[1] is b and group[-1] is c
    assert group["gw1"] is b and group["custom"] is c
    assert "custom" in group and b in group and "nope" not in group
    assert len(group) == 3
    with pytest.raises(KeyError, match="nope"):
        group["nope"]


def test_duplicate_ids_are_refused(group: execpool.Group) -> None:
    group.makegateway("popen//id=w")
    with pytest.raises(ValueError, match="already exists"):
        group.makegateway("popen//id=w")
    assert len(group) == 1


def test_exited_gateways_leave_the_group(group: execpool.Group) -> None:
    gw = group.makegateway()
    gw.exit()
    assert len(group) == 0 and gw not in group


def test_group_of_every_interpreter_runs_one_remote_exec(group: execpool.Group) -> None:
    if not INTERPRETERS:
        pytest.skip("no interpreters found")
    group.makegateways([i.spec for i in INTERPRETERS])
    mc = group.remote_exec("import sys; channel.send(tuple(sys.version_info[:2])); channel.send(channel.receive() + 1)")
    assert isinstance(mc, execpool.MultiChannel) and len(mc) == len(INTERPRETERS)
    assert mc.receive_each() == [i.version[:2] for i in INTERPRETERS]
    mc.send_each(1)
    pairs = mc.receive_each(withchannel=True)
    assert [item for _, item in pairs] == [2] * len(INTERPRETERS)
    assert [ch for ch, _ in pairs] == list(mc)
    mc.waitclose(10)


def test_make_receive_queue_collects_from_all_channels_with_endmarkers(group: execpool.Group) -> None:
    group.makegateways(["popen"] * 3)
    mc = group.remote_exec("channel.send(channel.gateway.id)")
    q = mc.make_receive_queue(endmarker=-1)
    got = [q.get(timeout=10) for _ in range(6)]
    items = sorted(item for _, item in got if item != -1)
    ends = [ch for ch, item in got if item == -1]
    assert items == ["gw0", "gw1", "gw2"]
    assert sorted(ch.gateway.id for ch in ends) == ["gw0", "gw1", "gw2"]


def test_multichannel_waitclose_raises_a_remote_error_after_all_closed(group: execpool.Group) -> None:
    group.makegateways(["popen", "popen"])
    mc = group.remote_exec("if channel.gateway.id == 'gw1': raise KeyError('only gw1')")
    with pytest.raises(execpool.RemoteError, match="only gw1"):
        mc.waitclose(10)
    assert all(ch.isclosed() for ch in mc)


def test_terminate_ends_all_workers_within_the_timeout_even_stuck_ones(group: execpool.Group) -> None:
    gws = group.makegateways(["popen"] * 3)
    pids = [gw.remote_info().pid for gw in gws]
    stuck = gws[0].remote_exec(
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); channel.send(1)\nwhile True: pass"
    )
    assert stuck.receive(10) == 1
    start = time.monotonic()
    group.terminate(timeout=1.0)
    assert time.monotonic() - start < 20  # hang guard
    assert all(process_gone(pid) for pid in pids)
    assert len(group) == 0


def test_a_failing_spec_in_a_parallel_start_ends_the_others(group: execpool.Group) -> None:
    with pytest.raises(execpool.InterpreterNotFound):
        group.makegateways(["popen", "popen//python=python9", "popen"])
    assert len(group) == 0


def test_group_constructor_starts_the_specs() -> None:
    g = execpool.Group(["popen", "popen//id=two"])
    try:
        assert [gw.id for gw in g] == ["gw0", "two"]
        assert all(gw.alive for gw in g)
    finally:
        g.terminate()


def test_default_group_and_makegateway() -> None:
    gw = execpool.makegateway()
    try:
        assert gw in execpool.default_group
        assert gw.remote_exec("channel.send(7)").receive(10) == 7
    finally:
        gw.exit()


def test_group_repr_lists_ids(group: execpool.Group) -> None:
    group.makegateway("popen//id=x")
    assert repr(group) == "<Group ['x']>"


def test_multichannel_waitclose_timeout_bounds_the_whole_wait(group: execpool.Group) -> None:
    group.makegateways(["popen"] * 4)
    mc = group.remote_exec("channel.receive()")
    start = time.monotonic()
    with pytest.raises(execpool.TimeoutError):
        mc.waitclose(0.5)
    assert time.monotonic() - start < 1.5  # one 0.5 s budget, not 4 x 0.5 s = 2 s
    mc.send_each(None)
    mc.waitclose(10)


def test_terminate_while_a_gateway_starts_ends_it_at_once_and_its_start_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from execpool import gateway

    started = threading.Event()
    spawn = gateway.Gateway._spawn

    def slow_spawn(self: gateway.Gateway) -> None:
        started.set()
        time.sleep(0.5)  # terminate() runs in this window: the gateway is in the group, no process yet
        spawn(self)

    monkeypatch.setattr(gateway.Gateway, "_spawn", slow_spawn)
    g = execpool.Group()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            g.makegateway()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=start)
    t.start()
    assert started.wait(30)
    t0 = time.monotonic()
    g.terminate(timeout=60)
    assert time.monotonic() - t0 < 30  # a hang guard: it used to wait out the whole timeout
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], execpool.GatewayStartError)
    assert "exited" in str(errors[0])
    assert len(g) == 0


# -- the hooks a layer on top (execpool.compat) adapts a group's gateways with ------------------


def test_start_hooks_run_on_each_new_gateway_before_makegateway_returns(group: execpool.Group) -> None:
    seen: list[tuple[str, bool]] = []
    group.start_hooks.append(lambda gw: seen.append((gw.id, gw.alive)))
    a, b = group.makegateways(["popen", "popen"])
    assert seen == [("gw0", True), ("gw1", True)]
    assert [a.id, b.id] == ["gw0", "gw1"]


def test_a_start_hook_that_raises_fails_the_start_and_ends_the_gateways(group: execpool.Group) -> None:
    started: list[execpool.Gateway] = []

    def hook(gw: execpool.Gateway) -> None:
        started.append(gw)
        raise RuntimeError("the hook refuses")

    group.start_hooks.append(hook)
    with pytest.raises(RuntimeError, match="the hook refuses"):
        group.makegateway("popen")
    assert len(group) == 0
    pid = started[0].remote_info().pid
    assert not started[0].alive
    assert wait_until(lambda: process_gone(pid), timeout=20)


def test_worker_options_and_gateway_class_come_from_the_group() -> None:
    class Quiet(execpool.Gateway):
        pass

    class QuietGroup(execpool.Group):
        gateway_class = Quiet
        worker_options = WorkerOptions(discard_stdout=True, drain=1.0)

    g = QuietGroup()
    try:
        gw = g.makegateway("popen")
        assert isinstance(gw, Quiet)
        ch = gw.remote_exec("import os; channel.send(os.path.samestat(os.fstat(1), os.stat(os.devnull)))")
        assert ch.receive(30) is True
    finally:
        g.terminate(timeout=10)
