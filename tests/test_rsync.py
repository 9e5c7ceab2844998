"""RSync: trees arrive equal (content, modes, mtimes, links), only changes travel, nothing escapes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import execpool
from execpool.rsync import RSync, RSyncError
from sshd import SshServer


def make_tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "pkg" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "pkg" / "run.sh").chmod(0o755)
    (root / "readonly.txt").write_text("r/o\n")
    (root / "readonly.txt").chmod(0o444)
    os.symlink("../a.txt", root / "pkg" / "link-to-a")
    return root


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Everything RSync promises to carry: kind, content, mode, mtime (files), link targets."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if rel.startswith(skip):
                continue
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("f", full.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


def sync(src: Path, *targets: tuple[execpool.Gateway, Path], **kw: object) -> RSync:
    delete = bool(kw.pop("delete", False))
    r = RSync(src, verbose=False, **kw)  # type: ignore[arg-type]
    for gw, dest in targets:
        r.add_target(gw, dest, delete=delete)
    r.send()
    return r


def test_initial_sync_to_two_targets_makes_equal_trees(src: Path, tmp_path: Path, group: execpool.Group) -> None:
    gws = group.makegateways(["popen", "popen"])
    r = sync(src, (gws[0], tmp_path / "d1"), (gws[1], tmp_path / "d2"))
    assert snapshot(tmp_path / "d1") == snapshot(src)
    assert snapshot(tmp_path / "d2") == snapshot(src)
    assert r.stats["gw0"]["files"] == 5 and r.stats["gw0"]["links"] == 1


def test_two_targets_on_one_gateway_each_have_their_stats(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    sync(src, (gw, tmp_path / "d1"))
    r = sync(src, (gw, tmp_path / "d1"), (gw, tmp_path / "d2"))  # d1 is up to date, d2 is new
    assert snapshot(tmp_path / "d2") == snapshot(src)
    one, two = r.stats_by_target[(gw.id, str(tmp_path / "d1"))], r.stats_by_target[(gw.id, str(tmp_path / "d2"))]
    assert one["files"] == 0 and two["files"] == 5
    assert r.stats[gw.id] == {key: one[key] + two[key] for key in one}  # per gateway: summed, none lost


def test_sync_works_with_a_worker_of_every_python(
    src: Path, tmp_path: Path, group: execpool.Group, interpreter: execpool.Interpreter
) -> None:
    gw = group.makegateway(interpreter.spec)
    sync(src, (gw, tmp_path / "dest"))
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_a_second_sync_without_changes_sends_nothing(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    sync(src, (gw, tmp_path / "dest"))
    r = sync(src, (gw, tmp_path / "dest"))
    assert r.stats[gw.id] == dict.fromkeys(r.stats[gw.id], 0)


def test_only_changed_files_travel_and_equal_content_is_only_touched(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    sync(src, (gw, tmp_path / "dest"))
    (src / "a.txt").write_text("ALPHA\n")  # same size, new content
    os.utime(src / "pkg" / "__init__.py", ns=(10**18, 10**18))  # new mtime, same content
    sent: list[object] = []
    r = RSync(src, callback=lambda cmd, path, ch: sent.append((cmd, path)), verbose=False)
    r.add_target(gw, tmp_path / "dest")
    r.send()
    assert sent == [("send", "a.txt")]
    assert r.stats[gw.id]["touched"] == 1 and r.stats[gw.id]["files"] == 1
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_delete_removes_what_the_source_no_longer_has(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    dest = tmp_path / "dest"
    sync(src, (gw, dest))
    (dest / "stale.txt").write_text("old")
    (dest / "stale-dir" / "inner").mkdir(parents=True)
    (src / "pkg" / "run.sh").unlink()
    sync(src, (gw, dest))  # without delete: extras stay
    assert (dest / "stale.txt").exists() and (dest / "pkg" / "run.sh").exists()
    sync(src, (gw, dest), delete=True)
    assert snapshot(dest) == snapshot(src)


def test_excludes_are_gitignore_like(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    (src / "pkg" / "mod.pyc").write_bytes(b"\x00")
    (src / "pkg" / "__pycache__").mkdir()
    (src / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    sync(src, (gw, tmp_path / "dest"), exclude=["*.pyc", "__pycache__/", ".git/"])
    got = snapshot(tmp_path / "dest")
    assert not [p for p in got if p.endswith(".pyc") or "__pycache__" in p or p.startswith(".git")]
    assert "pkg/__init__.py" in got


def test_filter_can_be_overridden(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    class OnlyPython(RSync):
        def filter(self, path: str) -> bool:
            return os.path.isdir(path) or path.endswith(".py")

    r = OnlyPython(src, verbose=False)
    r.add_target(gw, tmp_path / "dest")
    r.send()
    files = [p for p, v in snapshot(tmp_path / "dest").items() if v[0] == "f"]
    assert files == ["pkg/__init__.py"]


def test_symlinks_leading_out_of_the_source_follow_the_links_option(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    os.symlink("/etc/passwd", src / "absolute")
    os.symlink("../../outside", src / "pkg" / "escaping")
    r = sync(src, (gw, tmp_path / "safe"))
    assert not (tmp_path / "safe" / "absolute").is_symlink()
    assert len([p for p in r.problems if "outside the source" in p]) == 2
    sync(src, (gw, tmp_path / "keep"), links="keep")
    assert os.readlink(tmp_path / "keep" / "absolute") == "/etc/passwd"
    r = sync(src, (gw, tmp_path / "skip"), links="skip")
    assert r.problems == [] and not (tmp_path / "skip" / "absolute").exists()


def test_readonly_files_and_dirs_at_the_target_are_replaced(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    dest = tmp_path / "dest"
    sync(src, (gw, dest))
    (src / "readonly.txt").chmod(0o644)
    (src / "readonly.txt").write_text("changed, longer\n")
    sync(src, (gw, dest))
    assert (dest / "readonly.txt").read_text() == "changed, longer\n"
    assert snapshot(dest) == snapshot(src)


def test_files_vanishing_during_the_walk_are_reported_not_fatal(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    class Vanishing(RSync):
        def filter(self, path: str) -> bool:
            if path.endswith("data.bin"):
                os.unlink(path)  # gone after the walk saw it
            return True

    r = Vanishing(src, verbose=False)
    r.add_target(gw, tmp_path / "dest")
    r.send()
    assert any("data.bin" in p and "vanished" in p for p in r.problems)
    assert (tmp_path / "dest" / "a.txt").read_text() == "alpha\n"
    assert not (tmp_path / "dest" / "pkg" / "sub" / "data.bin").exists()


def test_bad_inputs_get_clear_errors(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    with pytest.raises(OSError, match="no targets"):
        RSync(src).send()
    r = RSync(tmp_path / "missing", verbose=False)
    r.add_target(gw, tmp_path / "dest")
    with pytest.raises(RSyncError, match="not a directory"):
        r.send()
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = RSync(src, verbose=False)
    r.add_target(gw, afile)
    with pytest.raises(RSyncError, match="is not a directory") as info:
        r.send()
    assert gw.id in str(info.value)
    with pytest.raises(ValueError, match="links="):
        RSync(src, links="follow")


@pytest.mark.parametrize("evil", ["../escaped", "/tmp/abs", "a/../../escaped", "a//b", ".", "ok/./x"])
def test_the_receiver_refuses_paths_that_leave_its_target(tmp_path: Path, gw: execpool.Gateway, evil: str) -> None:
    from execpool._shipped import rsync_receiver as _rsync_receiver

    ch = gw.remote_exec(_rsync_receiver.serve)
    ch.send(("start", str(tmp_path / "dest"), {}))
    assert ch.receive(10)[0] == "ready"
    ch.send(("list", [(evil, "f", 1, 0, 0o644, None)]))
    with pytest.raises(execpool.RemoteError, match="refused path"):
        ch.receive(10)
    assert not (tmp_path / "escaped").exists()


def test_a_symlink_at_the_target_cannot_redirect_writes(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "pkg")  # someone replaced pkg/ at the target with a link out
    sync(src, (gw, dest))  # the sync owns pkg/: the link itself is replaced, never followed
    assert list(outside.iterdir()) == []
    assert not (dest / "pkg").is_symlink() and snapshot(dest) == snapshot(src)


def test_delete_never_follows_links_out_of_the_target(src: Path, tmp_path: Path, gw: execpool.Gateway) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "link-out")
    sync(src, (gw, dest), delete=True)
    assert (outside / "precious").read_text() == "keep me"
    assert not (dest / "link-out").exists()


def test_sync_over_ssh(src: Path, tmp_path: Path, sshd_server: SshServer, group: execpool.Group) -> None:
    gw = group.makegateway(sshd_server.spec("host-a"))
    sync(src, (gw, tmp_path / "dest"))
    assert snapshot(tmp_path / "dest") == snapshot(src)


def _big(path: Path, size: int = 5 * 1024 * 1024) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _edit(path: Path, data: bytes, regions: list[int], length: int = 10_000) -> None:
    buf = bytearray(data)
    for start in regions:
        buf[start : start + length] = os.urandom(length)
    path.write_bytes(bytes(buf))


def test_large_file_changed_in_place_travels_as_a_block_delta(src: Path, tmp_path: Path, group: execpool.Group) -> None:
    gws = group.makegateways(["popen", "popen"])
    data = _big(src / "big.bin")
    sync(src, (gws[0], tmp_path / "old"))  # gw0 has an old copy, gw1's target is empty
    _edit(src / "big.bin", data, [100_000, 2_000_000, 4_500_000])
    r = sync(src, (gws[0], tmp_path / "old"), (gws[1], tmp_path / "new"))
    assert snapshot(tmp_path / "old") == snapshot(src) == snapshot(tmp_path / "new")
    size = len(data)
    assert r.stats["gw0"]["literal"] < 0.05 * size  # three 10 KB edits: a few 32 KiB blocks
    assert r.stats["gw0"]["copied"] > 0.9 * size
    assert r.stats["gw1"]["literal"] >= size and r.stats["gw1"]["copied"] == 0


@pytest.mark.parametrize(
    "change", ["append", "truncate", "insert-at-start", "delete-in-middle", "same-content-new-mtime"]
)
def test_block_delta_is_correct_for_every_kind_of_change(
    src: Path, tmp_path: Path, gw: execpool.Gateway, change: str
) -> None:
    big = src / "big.bin"
    data = _big(big, 1_000_000 + 123)
    dest = tmp_path / "dest"
    sync(src, (gw, dest))
    if change == "append":
        big.write_bytes(data + os.urandom(70_000))
    elif change == "truncate":
        big.write_bytes(data[:555_555])
    elif change == "insert-at-start":
        big.write_bytes(b"x" + data)
    elif change == "delete-in-middle":
        big.write_bytes(data[:400_000] + data[400_017:])
    else:
        os.utime(big, ns=(10**18, 10**18))
    r = sync(src, (gw, dest))
    assert snapshot(dest) == snapshot(src)
    stats = r.stats[gw.id]
    if change == "append":
        assert stats["copied"] >= len(data) - 32 * 1024 and stats["literal"] < 150_000
    elif change in ("insert-at-start", "delete-in-middle"):
        # the rolling checksum finds the shifted blocks again: about one block travels
        assert stats["literal"] < 3 * 32 * 1024 and stats["copied"] > len(data) - 3 * 32 * 1024
    elif change == "same-content-new-mtime":
        assert stats["touched"] == 1 and stats["literal"] == 0


def test_compress_and_progress_options(
    src: Path, tmp_path: Path, gw: execpool.Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    (src / "text.txt").write_text("compressible " * 50_000)
    r = RSync(src, verbose=False, compress=True, progress=True)
    r.add_target(gw, tmp_path / "dest")
    r.send()
    assert snapshot(tmp_path / "dest") == snapshot(src)
    assert "rsync src" in capsys.readouterr().err  # the tqdm bar


def test_rsync_command_line(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from execpool.cli import main

    dest1, dest2 = tmp_path / "c1", tmp_path / "c2"
    assert main(["rsync", str(src), "popen:%s" % dest1, "popen//id=second:%s" % dest2, "--exclude", "*.bin"]) == 0
    out = capsys.readouterr().out
    assert "popen: 4 files" in out and "popen//id=second: 4 files" in out
    expected = {k: v for k, v in snapshot(src).items() if not k.endswith(".bin")}
    assert snapshot(dest1) == expected == snapshot(dest2)
    assert main(["rsync", str(src), "no-colon-here"]) == 2
    assert main(["rsync", str(tmp_path / "missing"), "popen:%s" % dest1]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_readonly_directories_arrive_readonly_and_can_be_updated(
    src: Path, tmp_path: Path, gw: execpool.Gateway
) -> None:
    (src / "pkg" / "sub").chmod(0o555)
    try:
        dest = tmp_path / "dest"
        sync(src, (gw, dest))
        assert stat.S_IMODE((dest / "pkg" / "sub").stat().st_mode) == 0o555
        (src / "pkg" / "sub").chmod(0o755)
        (src / "pkg" / "sub" / "new.txt").write_text("new")
        (src / "pkg" / "sub").chmod(0o555)
        sync(src, (gw, dest))  # the target directory is read-only now, yet receives new.txt
        assert snapshot(dest) == snapshot(src)
    finally:
        (src / "pkg" / "sub").chmod(0o755)
        for d in (tmp_path / "dest" / "pkg" / "sub",):
            if d.exists():
                d.chmod(0o755)


def test_a_target_that_cannot_be_created_is_a_clear_error(src: Path, gw: execpool.Gateway) -> None:
    r = RSync(src, verbose=False)
    r.add_target(gw, "/proc/execpool-cannot-exist/dest")
    with pytest.raises(RSyncError, match=r"gw\d+:/proc/execpool-cannot-exist/dest"):
        r.send()


def test_delta_delete_and_links_over_ssh_to_two_hosts(
    src: Path, tmp_path: Path, sshd_server: SshServer, group: execpool.Group
) -> None:
    a, b = group.makegateways([sshd_server.spec("host-a"), sshd_server.spec("host-b", "//sshbackend=paramiko")])
    data = _big(src / "big.bin", 2 * 1024 * 1024)
    sync(src, (a, tmp_path / "a"), (b, tmp_path / "b"))
    _edit(src / "big.bin", data, [1_000_000])
    (src / "a.txt").unlink()
    os.symlink("pkg/run.sh", src / "runner")
    r = sync(src, (a, tmp_path / "a"), (b, tmp_path / "b"), delete=True)
    for dest, gw in ((tmp_path / "a", a), (tmp_path / "b", b)):
        assert snapshot(dest) == snapshot(src)
        assert r.stats[gw.id]["literal"] < 0.05 * len(data)
        assert r.stats[gw.id]["deleted"] == 1
