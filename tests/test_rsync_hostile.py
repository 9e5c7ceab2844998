"""RSync against a hostile target and a hostile source: nothing outside the target ever changes.

Every test keeps a sentinel tree outside the target and checks it for any change of
content, mode or mtime.  The receivers are real (popen gateways; one test on the oldest
local CPython).  The attacker is another local user who can write into the target: links
planted before the sync, directories swapped for links while it runs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import execpool
from _helpers import INTERPRETERS
from execpool._shipped import rsync_receiver
from execpool.rsync import RSync, RSyncError, escaping_links

OLD = 1_000_000_000 * 10**9  # 2001: an mtime no sync ever sets by accident


def snap(root: Path) -> dict[str, tuple[object, ...]]:
    """Kind, content, mode and mtime of ``root`` and everything under it (links not followed)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = ("f", full.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a sync carries, for comparing a target with its source."""
    got = snap(root)
    return {k: v[:-1] if v[0] == "f" else v[:1] if v[0] == "d" else v for k, v in got.items() if k != "."}


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """The sentinel: files and a directory outside every target, checked after the test."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "secret").write_text("do not touch")
    (out / "dir" / "inner").write_text("inner")
    (out / "big").write_bytes(os.urandom(600_000))
    for p in (out / "secret", out / "dir" / "inner", out / "big"):
        p.chmod(0o600)
    for p in (out / "secret", out / "dir" / "inner", out / "big", out / "dir", out):
        os.utime(p, ns=(OLD, OLD))
    before = snap(out)
    yield out
    assert snap(out) == before, "something outside the target changed"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    (s / "pkg" / "sub").mkdir(parents=True)
    (s / "a.txt").write_text("alpha\n")
    (s / "pkg" / "b.txt").write_text("beta\n")
    (s / "pkg" / "sub" / "c.txt").write_text("gamma\n")
    (s / "big.bin").write_bytes(os.urandom(600_000))  # over DELTA_MIN: updated by block delta
    return s


def sync(src: Path, gw: execpool.Gateway, dest: Path, **kw: object) -> RSync:
    delete = bool(kw.pop("delete", False))
    r = RSync(src, verbose=False, **kw)  # type: ignore[arg-type]
    r.add_target(gw, dest, delete=delete)
    r.send(raises=False)
    return r


def change_everything(src: Path) -> None:
    """New content, a new mode and a new mtime (same content): every kind of update."""
    (src / "a.txt").chmod(0o640)
    os.utime(src / "pkg" / "b.txt", ns=(OLD + 5, OLD + 5))  # touch only
    (src / "pkg" / "sub" / "c.txt").write_text("GAMMA\n")  # same size, new content
    data = bytearray((src / "big.bin").read_bytes())
    data[1000:1010] = b"0123456789"
    (src / "big.bin").write_bytes(bytes(data))


def plant(dest: Path, outside: Path) -> None:
    """Links out of the target in place of a file, a touched file, a dir, a delta basis."""
    for rel, to in [
        ("a.txt", outside / "secret"),
        ("pkg/b.txt", outside / "dir" / "inner"),
        ("big.bin", outside / "big"),
    ]:
        (dest / rel).unlink()
        os.symlink(to, dest / rel)
    for p in (dest / "pkg" / "sub").iterdir():
        p.unlink()
    (dest / "pkg" / "sub").rmdir()
    os.symlink(outside / "dir", dest / "pkg" / "sub")


def oldest_gateway(group: execpool.Group) -> execpool.Gateway:
    oldest = min(INTERPRETERS, key=lambda i: i.version)
    return group.makegateway(oldest.spec)


@pytest.mark.parametrize("worker", ["popen", "oldest"])
def test_links_planted_in_the_target_are_replaced_never_followed(
    src: Path, tmp_path: Path, outside: Path, group: execpool.Group, worker: str
) -> None:
    gw = group.makegateway("popen") if worker == "popen" else oldest_gateway(group)
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    change_everything(src)
    plant(dest, outside)
    r = sync(src, gw, dest)
    assert r.problems == []
    assert tree(dest) == tree(src)
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert r.stats[gw.id]["copied"] == 0  # the delta basis was not read through the link


def test_links_planted_under_a_file_whose_mode_or_mtime_only_changes(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway
) -> None:
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    (src / "a.txt").chmod(0o600)  # mode only
    os.utime(src / "pkg" / "b.txt", ns=(OLD + 7, OLD + 7))  # mtime only, same content
    for rel, to in [("a.txt", outside / "secret"), ("pkg/b.txt", outside / "dir" / "inner")]:
        (dest / rel).unlink()
        os.symlink(to, dest / rel)
    r = sync(src, gw, dest)
    assert r.problems == [] and tree(dest) == tree(src)


def test_hard_links_and_fifos_planted_in_the_target_are_replaced_not_changed(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway
) -> None:
    """A hard link to an outside file where the sync changes a mode, an mtime or the content;
    a FIFO where a file or a delta basis is (opening it would hang the receiver)."""
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    change_everything(src)
    (dest / "a.txt").unlink()
    os.link(outside / "secret", dest / "a.txt")  # mode changes
    (dest / "pkg" / "b.txt").unlink()
    os.link(outside / "dir" / "inner", dest / "pkg" / "b.txt")  # mtime changes
    (dest / "big.bin").unlink()
    os.mkfifo(dest / "big.bin")  # the delta basis
    (dest / "pkg" / "sub" / "c.txt").unlink()
    os.mkfifo(dest / "pkg" / "sub" / "c.txt")
    r = sync(src, gw, dest)
    assert r.problems == [] and tree(dest) == tree(src)


def test_a_planted_link_at_a_temporary_name_is_never_written_through(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    # the old, predictable names: name + ".execpool-tmp-" + pid, for every plausible pid
    pid = gw.remote_exec("import os; channel.send(os.getpid())").receive(10)
    for name in ("a.txt", "big.bin"):
        os.symlink(outside / "secret", dest / ("%s.execpool-tmp-%d" % (name, pid)))
    r = sync(src, gw, dest)
    assert r.problems == [] and (dest / "a.txt").read_text() == "alpha\n"
    # the new names are random; a link under the very name drawn is refused by O_EXCL
    names = iter([b"\x00" * 8, b"\x01" * 8])
    monkeypatch.setattr(rsync_receiver.os, "urandom", lambda n: next(names))
    os.symlink(outside / "secret", dest / (rsync_receiver.TMP_PREFIX + "00" * 8))
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name, tfd = rsync_receiver._new_temp(fd)
        os.write(tfd, b"x")
        os.close(tfd)
        assert name == rsync_receiver.TMP_PREFIX + "01" * 8
        assert (dest / name).read_bytes() == b"x" and not (dest / name).is_symlink()
    finally:
        os.close(fd)


def test_delete_removes_planted_links_without_following_them(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway
) -> None:
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    os.symlink(outside, dest / "pkg" / "extra-dir-link")
    os.symlink(outside / "secret", dest / "extra-file-link")
    r = sync(src, gw, dest, delete=True)
    assert r.problems == [] and tree(dest) == tree(src) and r.stats[gw.id]["deleted"] == 2


HOSTILE_TREES = {
    "through-a-dot-link": ({"d": ".", "esc": "d/.."}, {"esc"}),
    "chain": ({"a": "b/../..", "b": "c", "c": "."}, {"a"}),
    "into-a-subdir-link": ({"s": "pkg/sub", "up": "s/../../.."}, {"up"}),
    "loop": ({"l1": "l2", "l2": "l1"}, {"l1", "l2"}),
    "absolute": ({"abs": "/etc"}, {"abs"}),
    "through-a-refused-link": ({"x": "/tmp", "y": "x/.."}, {"x", "y"}),
    "harmless": ({"d": ".", "ok": "d/pkg/b.txt", "up": "pkg/sub/../.."}, set()),
}


@pytest.mark.parametrize("links", ["safe", "skip", "keep"])
@pytest.mark.parametrize("case", sorted(HOSTILE_TREES))
def test_a_hostile_source_tree_cannot_make_a_link_that_leads_out(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway, case: str, links: str
) -> None:
    made, refused = HOSTILE_TREES[case]
    for name, target in made.items():
        os.symlink(target, src / name)
    dest = tmp_path / "dest"
    r = sync(src, gw, dest, links=links)
    real = os.path.realpath(dest)
    arrived = {p.name for p in dest.iterdir() if p.is_symlink()}
    if links == "keep":
        assert arrived == set(made)  # sent as they are: the user asked for it
        return
    assert arrived == set(made) - refused
    for name in arrived:  # every link that arrived resolves inside the target
        resolved = os.path.realpath(dest / name)
        assert resolved == real or resolved.startswith(real + os.sep), name
    if links == "safe":
        assert sorted(p.split(" ")[0] for p in r.problems) == sorted(refused)
    else:
        assert r.problems == []


def test_escaping_links_resolves_through_the_trees_other_links() -> None:
    def entries(links: dict[str, str], dirs: tuple[str, ...] = ()) -> list[tuple[str, str, int, int, int, str | None]]:
        out: list[tuple[str, str, int, int, int, str | None]] = [(d, "d", 0, 0, 0o755, None) for d in dirs]
        return out + [(k, "l", 0, 0, 0, v) for k, v in links.items()]

    assert escaping_links(entries({"d": ".", "esc": "d/.."})) == {"esc"}
    assert escaping_links(entries({"a/l": "..", "a/m": "l/.."}, dirs=("a",))) == {"a/m"}
    assert escaping_links(entries({"a/l": "../a", "a/m": "l/../.."}, dirs=("a",))) == {"a/m"}
    assert escaping_links(entries({"a/l": "../..", "a/m": "l"}, dirs=("a",))) == {"a/l", "a/m"}
    assert escaping_links(entries({"x": "d/../../y"})) == {"x"}  # unknown names: lexically
    assert escaping_links(entries({"x": "d/../y", "f": "x"})) == set()


RACER = """
import os, sys, time
dest, outside, stop = sys.argv[1:4]
n = swaps = 0
while not os.path.exists(stop):
    for rel, to in (("pkg", outside), ("pkg/sub", os.path.join(outside, "dir"))):
        n += 1
        here, moved = os.path.join(dest, rel), os.path.join(dest, "moved-%d" % n)
        try:
            os.rename(here, moved)
            os.symlink(to, here)
            time.sleep(0.0005)
            os.unlink(here)
            os.rename(moved, here)
            swaps += 1
        except OSError:
            pass
print(swaps)
"""


@pytest.mark.parametrize("racer", ["thread", "process"])
def test_a_directory_swapped_for_a_link_while_syncs_run_lets_nothing_out(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway, racer: str
) -> None:
    """Another user swaps pkg/ (and pkg/sub/) for links out of the target in a loop, from
    a thread or a child process, while 30 syncs run, each of which rewrites the files there."""
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    stopfile = tmp_path / "stop"
    argv = [sys.executable, "-c", RACER, str(dest), str(outside), str(stopfile)]
    if racer == "thread":
        out: list[str] = []
        thread = threading.Thread(target=lambda: out.append(_run_racer(argv)), daemon=True)
        thread.start()
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    met = 0  # syncs that met a swapped-in link (and refused it there): reported, not asserted
    try:
        for i in range(30):
            for rel in ("a.txt", "pkg/b.txt", "pkg/sub/c.txt", "pkg/new-%d.txt" % i):
                (src / rel).write_text("round %d of %s\n" % (i, rel))
            os.utime(src / "pkg", ns=(OLD + i, OLD + i))  # the final chmod/utime of dirs too
            r = RSync(src, verbose=False)
            r.add_target(gw, dest)
            r.send(raises=False)
            met += any("symlink" in p for p in r.problems)
    finally:
        stopfile.write_text("")
        if racer == "thread":
            thread.join(20)
            swaps = int(out[0]) if out else 0
        else:
            try:
                swaps = int(proc.communicate(timeout=20)[0])
            finally:
                proc.kill()
    assert swaps > 30  # the race really ran (the outside sentinel is checked by its fixture)
    print("%s racer: 30 syncs, %d swaps, %d syncs met a link" % (racer, swaps, met))


def _run_racer(argv: list[str]) -> str:
    """The racer's loop in this process (a thread): the same script, exec'd here."""
    import contextlib
    import io

    buf = io.StringIO()
    saved = sys.argv
    sys.argv = ["racer", *argv[3:]]
    try:
        with contextlib.redirect_stdout(buf):
            exec(RACER, {})
    finally:
        sys.argv = saved
    return buf.getvalue()


@pytest.mark.parametrize("length", [237, 250, 255])
def test_names_up_to_255_bytes_sync(tmp_path: Path, outside: Path, gw: execpool.Gateway, length: int) -> None:
    src = tmp_path / "src"
    (src / ("d" * length)).mkdir(parents=True)
    (src / ("f" * length)).write_text("long")
    (src / ("d" * length) / ("g" * length)).write_text("longer")
    (src / ("é" * (length // 2))).write_text("two bytes a character")
    os.symlink("f" * length, src / ("l" * length))
    dest = tmp_path / "dest"
    r = sync(src, gw, dest)
    assert r.problems == [] and tree(dest) == tree(src)
    (src / ("f" * length)).write_text("changed")
    r = sync(src, gw, dest)
    assert r.problems == [] and tree(dest) == tree(src)


def _receiver_session(gw: execpool.Gateway, dest: Path, files: dict[str, bytes]) -> tuple[object, list[str]]:
    """Talk to a receiver directly: send ``files`` whole, return (stats, failures)."""
    ch = gw.remote_exec(rsync_receiver.serve)
    ch.send(("start", str(dest), {}))
    assert ch.receive(10)[0] == "ready"
    ch.send(("list", [(rel, "f", len(data), OLD, 0o644, None) for rel, data in files.items()]))
    _, need = ch.receive(10)
    for rel, _sha, _sig in need:
        ch.send(("file", rel))
        ch.send(("data", files[rel]))
        ch.send(("end", OLD, 0o100644))
    ch.send(("finish",))
    _, stats, failures = ch.receive(10)
    ch.waitclose(10)
    return stats, failures


def test_a_file_the_filesystem_refuses_fails_alone(tmp_path: Path, outside: Path, gw: execpool.Gateway) -> None:
    dest = tmp_path / "dest"
    stats, failures = _receiver_session(gw, dest, {"ok.txt": b"fine", "x" * 256: b"too long a name", "z.txt": b"z"})
    assert (dest / "ok.txt").read_bytes() == b"fine" and (dest / "z.txt").read_bytes() == b"z"
    assert len(failures) == 1 and failures[0].startswith("x" * 256) and "name too long" in failures[0].lower()
    assert stats["files"] == 2  # type: ignore[index]
    assert [p.name for p in dest.iterdir() if p.name.startswith(".execpool-tmp-")] == []


def test_a_file_that_cannot_be_written_is_reported_and_the_rest_syncs(
    src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway
) -> None:
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    os.symlink(outside / "dir", dest / "pkg" / "sub-link")  # not the sync's: refused, not replaced
    (src / "pkg" / "b.txt").write_text("beta, new\n")
    (src / "a.txt").write_text("alpha, new\n")

    class Hostile(RSync):
        """A listing with a file under that link (a master's own listing never has one)."""

        def _walk(self) -> list[tuple[str, str, int, int, int, str | None]]:
            return [*super()._walk(), ("pkg/sub-link/evil", "f", 5, OLD, 0o644, None)]

    r = Hostile(src, verbose=False)
    r.add_target(gw, dest)
    with pytest.raises(RSyncError, match=r"pkg/sub-link/evil: .*symlink") as info:
        r.send()
    assert "pkg/sub-link/evil" in str(info.value)
    assert (dest / "a.txt").read_text() == "alpha, new\n"  # the rest went on
    assert (dest / "pkg" / "b.txt").read_text() == "beta, new\n"
    r = Hostile(src, verbose=False)
    r.add_target(gw, dest)
    r.send(raises=False)
    assert len(r.problems) == 1 and "symlink" in r.problems[0] and r.problems[0].startswith(gw.id)


def _fd_count(gw: execpool.Gateway) -> int:
    return int(gw.remote_exec("import os; channel.send(len(os.listdir('/proc/self/fd')))").receive(10))


def test_the_receiver_leaks_no_file_descriptor(src: Path, tmp_path: Path, outside: Path, gw: execpool.Gateway) -> None:
    for i in range(60):
        (src / "pkg" / ("d%02d" % i)).mkdir()  # more directories than MAX_DIR_FDS
        (src / "pkg" / ("d%02d" % i) / "f").write_text(str(i))
    dest = tmp_path / "dest"
    sync(src, gw, dest)
    before = _fd_count(gw)
    for _ in range(3):
        change_everything(src)
        sync(src, gw, dest, delete=True)
        plant(dest, outside)
        sync(src, gw, dest)
    _receiver_session(gw, tmp_path / "dest2", {"ok": b"1", "y" * 300: b"2"})
    assert _fd_count(gw) == before


def test_a_platform_without_dir_fd_support_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    rsync_receiver.check_platform()  # this one has it all
    monkeypatch.setattr(os, "supports_dir_fd", set())
    with pytest.raises(rsync_receiver.RSyncError, match=r"refuses to sync.*os\.open\(dir_fd=\)"):
        rsync_receiver.check_platform()
    monkeypatch.undo()
    monkeypatch.delattr(os, "O_NOFOLLOW")
    with pytest.raises(rsync_receiver.RSyncError, match="O_NOFOLLOW"):
        rsync_receiver.check_platform()
