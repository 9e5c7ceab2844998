"""RSync's semantics beside the copying itself: links into the source, repeated send(), no
targets, the callbacks -- execpool's own, and execnet's under execpool.compat."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import execpool
import execpool.compat as compat
from execpool.rsync import RSync


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "a.txt").write_text("a" * 100)
    (root / "pkg" / "b.txt").write_text("b" * 10)
    return root


def test_absolute_link_into_the_source_becomes_a_relative_link_to_the_same_place(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    os.symlink(src / "a.txt", src / "pkg" / "abs-a")
    os.symlink(src, src / "pkg" / "abs-root")
    os.symlink(os.path.realpath(src / "pkg"), src / "abs-pkg")  # through the source's real path
    os.symlink("/etc/hostname", src / "outside")
    r = RSync(src, verbose=False)
    r.add_target(gw, tmp_path / "dest")
    r.send(raises=False)
    dest = tmp_path / "dest"
    assert os.readlink(dest / "pkg" / "abs-a") == "../a.txt"
    assert os.readlink(dest / "pkg" / "abs-root") == ".."
    assert os.readlink(dest / "abs-pkg") == "pkg"
    assert (dest / "pkg" / "abs-a").read_text() == "a" * 100
    assert not os.path.lexists(dest / "outside")  # absolute and elsewhere: refused (links="safe")
    assert any("outside" in p for p in r.problems)


def test_links_keep_sends_an_absolute_link_into_the_source_as_it_is(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    os.symlink(src / "a.txt", src / "abs-a")
    r = RSync(src, verbose=False, links="keep")
    r.add_target(gw, tmp_path / "dest")
    r.send()
    assert os.readlink(tmp_path / "dest" / "abs-a") == str(src / "a.txt")


def test_send_can_be_called_again_and_syncs_every_target_again(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    r = RSync(src, verbose=False)
    r.add_target(gw, tmp_path / "one")
    r.send()
    (src / "a.txt").write_text("changed")
    (src / "new.txt").write_text("new")
    r.send()
    assert (tmp_path / "one" / "a.txt").read_text() == "changed"
    assert (tmp_path / "one" / "new.txt").read_text() == "new"
    r.add_target(gw, tmp_path / "two")
    r.send()
    assert (tmp_path / "two" / "new.txt").read_text() == "new"


def test_send_without_targets_raises_unless_raises_is_false(src: Path) -> None:
    r = RSync(src, verbose=False)
    with pytest.raises(OSError, match="no targets"):
        r.send()
    assert r.send(raises=False) is None


def test_native_callback_gets_send_and_error_events(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    os.symlink("/etc/hostname", src / "outside")
    events: list[tuple[Any, ...]] = []
    r = RSync(src, verbose=False, callback=lambda *args: events.append(args))
    r.add_target(gw, tmp_path / "dest")
    r.send()
    sent = sorted((cmd, path) for cmd, path, ch in events if cmd == "send")
    assert sent == [("send", "a.txt"), ("send", "pkg/b.txt")]
    assert all(ch is not None and ch.gateway is gw for cmd, _, ch in events if cmd == "send")
    assert [cmd for cmd, _, ch in events if cmd == "error" and ch is None] == ["error"]


# -- execnet's RSync (execpool.compat) ---------------------------------------------------------


def test_compat_absolute_link_into_the_source_points_into_the_target_as_execnet_does(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    os.symlink(src / "a.txt", src / "pkg" / "abs-a")
    os.symlink("a.txt", src / "rel-a")
    r = compat.RSync(src, verbose=False)
    r.add_target(gw, tmp_path / "dest")
    r.send()
    dest = os.path.realpath(tmp_path / "dest")
    assert os.readlink(os.path.join(dest, "pkg", "abs-a")) == os.path.join(dest, "a.txt")
    assert os.readlink(os.path.join(dest, "rel-a")) == "a.txt"
    assert Path(dest, "pkg", "abs-a").read_text() == "a" * 100


def test_compat_send_forgets_its_targets_as_execnet_does(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    r = compat.rsync.RSync(src, verbose=False)
    r.add_target(gw, tmp_path / "one")
    r.send()
    assert (tmp_path / "one" / "a.txt").exists()
    with pytest.raises(OSError):
        r.send()
    assert r.send(raises=False) is None
    r.add_target(gw, tmp_path / "two")
    r.send()
    assert (tmp_path / "two" / "pkg" / "b.txt").read_text() == "b" * 10
    assert r.send(raises=False) is None


def test_compat_callback_gets_list_and_ack_with_sizes_as_execnet_passes_them(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    calls: list[tuple[str, int, Any]] = []
    r = compat.RSync(src, callback=lambda cmd, length, ch: calls.append((cmd, length, ch)), verbose=False)
    finished: list[bool] = []
    r.add_target(gw, tmp_path / "dest", finishedcallback=lambda: finished.append(True))
    r.send()
    assert sorted((cmd, n) for cmd, n, _ in calls) == [("ack", 10), ("ack", 100), ("list", 110)]
    assert calls[0][0] == "list"
    assert all(ch.gateway is gw for _, _, ch in calls)
    assert finished == [True]


def test_compat_verbose_report_names_gateway_and_path(
    src: Path, tmp_path: Path, gw: execpool.Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    r = compat.RSync(src)
    r.add_target(gw, tmp_path / "dest")
    r.send()
    out = capsys.readouterr().out
    assert "<= a.txt" in out and "<= pkg/b.txt" in out


def test_root_anchored_links_are_resolved_from_the_root_when_checked_for_escapes() -> None:
    from execpool.rsync import escaping_links

    def entry(rel: str, kind: str, link: str | None = None) -> tuple[str, str, int, int, int, str | None]:
        return (rel, kind, 0, 0, 0o755 if kind == "d" else 0, link)

    entries = [
        entry("a", "d"),
        entry("a/b", "d"),
        entry("a/b/ok", "r", "a"),  # DEST/a: inside, though "a" from a/b would be a/b/a
        entry("a/b/up", "r", "a/.."),  # DEST: inside
        entry("a/b/esc", "r", "a/../.."),  # leaves DEST
        entry("a/b/via", "l", "ok/../../.."),  # through ok (DEST/a): DEST/.. -- leaves
    ]
    assert escaping_links(entries) == {"a/b/esc", "a/b/via"}


def test_walk_ahead_serves_the_next_send_once_with_its_problems(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    os.symlink("/etc/hostname", src / "outside")
    r = RSync(src, verbose=False)
    r.add_target(gw, tmp_path / "dest")
    r.walk_ahead()
    (src / "late.txt").write_text("after the walk")  # not in the listing walked ahead
    r.send()
    assert not (tmp_path / "dest" / "late.txt").exists()
    assert any("outside" in p for p in r.problems)
    r.send()  # walks again
    assert (tmp_path / "dest" / "late.txt").read_text() == "after the walk"


@pytest.mark.parametrize("evil", ["../escaped", "/etc", "a/../../escaped", "a//b", "."])
def test_the_receiver_refuses_a_root_anchored_link_that_leaves_its_target(
    tmp_path: Path, gw: execpool.Gateway, evil: str
) -> None:
    from execpool._shipped import rsync_receiver

    ch = gw.remote_exec(rsync_receiver.serve)
    ch.send(("start", str(tmp_path / "dest"), {}))
    assert ch.receive(10)[0] == "ready"
    ch.send(("list", [("lnk", "r", 0, 0, 0, evil)]))
    with pytest.raises(execpool.RemoteError, match="refused path"):
        ch.receive(10)
    assert not os.path.lexists(tmp_path / "dest" / "lnk")
