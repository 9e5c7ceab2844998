"""Start-up payload: bytecode for workers of other Python versions, cached and trusted only from local workers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import execpool
from _helpers import INTERPRETERS
from _sourcegraph import startup_modules
from execpool import _bootstrap
from sshd import SshServer


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("EXECPOOL_CACHE_DIR", str(tmp_path / "cache"))
    _bootstrap._bytecode.clear()
    _bootstrap._magic_of.clear()
    _bootstrap.payload.cache_clear()
    yield tmp_path / "cache"
    _bootstrap._bytecode.clear()
    _bootstrap._magic_of.clear()
    _bootstrap.payload.cache_clear()


def _other_version() -> execpool.Interpreter:
    others = [i for i in INTERPRETERS if i.version[:2] != sys.version_info[:2]]
    if not others:
        pytest.skip("no interpreter of another Python version on this machine")
    return others[0]


def test_a_worker_of_another_version_compiles_once_then_reuses_the_bytecode(
    fresh_cache: Path, group: execpool.Group
) -> None:
    other = _other_version()
    first = group.makegateway(other.spec)
    assert first._hello is not None and first._hello["compiled"] == len(startup_modules())
    assert list(fresh_cache.glob("*-code-*"))  # kept on disk for the next process
    second = group.makegateway(other.spec)
    assert second._hello is not None and second._hello["compiled"] == 0
    assert second.remote_exec("channel.send(21 * 2)").receive(10) == 42


def test_a_worker_of_the_same_version_never_compiles(fresh_cache: Path, group: execpool.Group) -> None:
    gw = group.makegateway("popen")
    assert gw._hello is not None and gw._hello["compiled"] == 0
    assert not list(fresh_cache.glob("*"))


def test_the_disk_cache_serves_a_new_process(fresh_cache: Path, group: execpool.Group) -> None:
    other = _other_version()
    group.makegateway(other.spec)
    _bootstrap._bytecode.clear()  # as if this were a new master process
    _bootstrap._magic_of.clear()
    _bootstrap.payload.cache_clear()
    gw = group.makegateway(other.spec)
    assert gw._hello is not None and gw._hello["compiled"] == 0


def test_a_damaged_cache_entry_costs_a_compile_not_a_failure(fresh_cache: Path, group: execpool.Group) -> None:
    other = _other_version()
    group.makegateway(other.spec)
    for path in fresh_cache.glob("*-code-*"):
        path.write_bytes(b"\x00garbage, not marshal data")
    _bootstrap._bytecode.clear()
    _bootstrap.payload.cache_clear()
    gw = group.makegateway(other.spec)
    assert gw._hello is not None and gw._hello["compiled"] == len(startup_modules())
    assert gw.remote_exec("channel.send('fine')").receive(10) == "fine"


def test_remote_and_relayed_workers_are_never_asked_for_bytecode(
    fresh_cache: Path, sshd_server: SshServer, group: execpool.Group
) -> None:
    other = _other_version()
    ssh = group.makegateway(sshd_server.spec("host-a", "//python=%s" % other.path))
    relayed = group.makegateway("popen//via=%s//python=%s" % (ssh.id, other.path))
    for gw in (ssh, relayed):
        assert gw._hello is not None and gw._hello["compiled"] == len(startup_modules())
        assert "bytecode" not in gw._hello
    assert not list(fresh_cache.glob("*"))
