"""The receiving side of RSync: runs in a worker via ``remote_exec`` (stdlib-only, 3.8+).

Conversation on the channel, master (M) and this receiver (R)::

    M: ("start", destdir, options)       R: ("ready", realpath of destdir) or an error
    M: ("list", entries)                 entries: (relpath, kind, size, mtime_ns, mode, link)
                                         kind "d" directory, "f" file, "l" symlink, "r" symlink
                                         to a path from the target's root (made absolute here)
    R: ("need", [(relpath, sha256 of the file here or None, block signature or None), ...])
                                         signature: BLOCK-sized blocks' digests, concatenated,
                                         for large files this side already has a version of
                                         (then without the sha256: a file whose every block
                                         the master finds in place gets a "touch")
    M: ("touch", relpath, mtime_ns, mode)  same content: only the metadata changes
    M: ("file", relpath), ("data", bytes)*, ("end", mtime_ns, mode)   one file, streamed
       (("zdata", zlib-compressed bytes) instead of "data" when the master compresses);
       with a signature also ("copy", first_block, nblocks): reuse blocks of the old copy
    M: ("abort",)                          instead of "end": the source changed while sent; keep
                                           what is here (the temporary file is removed)
    M: ("skip", relpath)                   the source file vanished or failed: keep what is here
    M: ("finish",)                       R: ("done", stats, failures)
                                         failures: ["relpath: what went wrong", ...]

Every relpath is checked before use: no absolute paths, no ``..``, no empty or dot
components.  Every operation on the target then goes through directory file
descriptors opened from the target's root down, each component with ``O_NOFOLLOW |
O_DIRECTORY``: a symlink in the target (planted before the sync or swapped in while it
runs) is never followed.  Where the sync owns the name (the listing has a directory or
a file there) the link itself is removed and replaced; anywhere else the path fails.
Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a short random
temporary name, get mode and times through their descriptor, and are renamed into
place; a delta basis is read through an ``O_NOFOLLOW`` descriptor.  A path that cannot
be written fails alone and is reported in ``failures``; the rest of the sync goes on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

CHUNK = 256 * 1024
#: Files at least this large that exist at the target are updated by block delta.
DELTA_MIN = 256 * 1024
#: Block size of the delta.  Each block is described by its zlib.adler32 (4 bytes, big
#: endian; the sender rolls it) and the first 16 bytes of its SHA-256 (CPUs with SHA
#: instructions hash it about twice as fast as BLAKE2b): SIG bytes per block.
BLOCK = 32 * 1024
DIGEST = 16
SIG = 4 + DIGEST
#: Temporary files are TMP_PREFIX + 16 random hex digits: short (any name up to 255
#: bytes syncs) and unpredictable (a link planted under the name cannot be aimed).
TMP_PREFIX = ".execpool-tmp-"
#: At most this many directory descriptors are kept open at once.
MAX_DIR_FDS = 64

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC


class RSyncError(Exception):
    pass


class PathFailed(Exception):
    """One path cannot be synced; the message says why.  The sync of the rest goes on."""


def check_platform() -> None:
    """Refuse a platform on which the receiver could not avoid following links."""
    missing = [name for name in ("O_NOFOLLOW", "O_DIRECTORY") if not hasattr(os, name)]
    for name in ("open", "stat", "mkdir", "rename", "unlink", "rmdir", "symlink", "readlink"):
        if getattr(os, name) not in os.supports_dir_fd:
            missing.append("os.%s(dir_fd=)" % name)
    for name in ("chmod", "utime", "scandir"):
        if getattr(os, name) not in os.supports_fd:
            missing.append("os.%s(fd)" % name)
    if missing:
        raise RSyncError(
            "RSync refuses to sync to this platform: it lacks %s, without which the receiver could "
            "not avoid following symlinks in the target" % ", ".join(missing)
        )


def _check_rel(rel: str) -> List[str]:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\x00" in rel:
        raise RSyncError("refused path %r: not a relative path" % (rel,))
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise RSyncError("refused path %r: empty, '.' or '..' component" % (rel,))
    return parts


def _lstat(name: str, dir_fd: int) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a directory with all it holds, or anything else) without following links."""
    st = _lstat(name, dir_fd)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o700)  # a read-only directory must be writable to be emptied
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        for child in names:
            _remove(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _new_temp(dir_fd: int) -> Any:
    """(name, fd) of a new file with a random name in ``dir_fd``; never opens an existing one."""
    for _ in range(8):
        name = TMP_PREFIX + os.urandom(8).hex()
        try:
            return name, os.open(name, _NEW_FLAGS, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue  # someone guessed or planted it: O_EXCL refused it, take another
    raise PathFailed("could not create a temporary file (every random name taken)")


def _open_regular(name: str, dir_fd: int, writable: bool = False) -> int:
    """A descriptor of the regular file ``name``, never through a link (PathFailed otherwise)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not writable:
            raise
        fd = os.open(name, os.O_WRONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathFailed("is a symlink at the target") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathFailed("is not a regular file at the target")
    return fd


class Receiver:
    def __init__(self, channel: Any, destdir: str, options: Optional[Dict[str, Any]]) -> None:
        check_platform()
        self.channel = channel
        self.options = options or {}
        self.root = os.path.realpath(os.path.expanduser(destdir))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise RSyncError("target %s exists and is not a directory" % self.root)
        os.makedirs(self.root, exist_ok=True)
        self._fds: Dict[str, int] = {"": os.open(self.root, _DIR_FLAGS)}
        self.failures: List[str] = []
        self._failed: Dict[str, bool] = {}
        self.stats = {
            "files": 0,
            "literal": 0,  # bytes received as data
            "copied": 0,  # bytes reused from the old copy (block delta)
            "touched": 0,
            "deleted": 0,
            "links": 0,
            "dirs": 0,
            "skipped": 0,
        }

    # -- directory descriptors --------------------------------------------------------------

    def _dir(self, rel_dir: str) -> int:
        """The descriptor of directory ``rel_dir`` ("" is the root), opened component by
        component without following links; PathFailed if one is a link or no directory."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        if len(self._fds) > MAX_DIR_FDS:
            self._forget("", keep_root=True)
        return self._open_dir(rel_dir)

    def _open_dir(self, rel_dir: str) -> int:
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        head, _, name = rel_dir.rpartition("/")
        parent = self._open_dir(head)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PathFailed("%s is a symlink or not a directory at the target" % rel_dir) from None
            raise PathFailed("%s cannot be opened (%s)" % (rel_dir, _why(exc))) from None
        self._fds[rel_dir] = fd
        return fd

    def _forget(self, rel: str, keep_root: bool = False) -> None:
        """Close the descriptors of ``rel`` and everything under it ("" : all)."""
        for key in list(self._fds):
            if key == rel or not rel or key.startswith(rel + "/"):
                if key == "" and keep_root:
                    continue
                os.close(self._fds.pop(key))

    def close(self) -> None:
        self._forget("")

    def _where(self, rel: str) -> Any:
        """(descriptor of the parent directory, last name) of ``rel``."""
        head, _, name = rel.rpartition("/")
        return self._dir(head), name

    def _fail(self, rel: str, why: str) -> None:
        self._failed[rel] = True
        self.failures.append("%s: %s" % (rel, why))

    # -- the conversation -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.close()

    def _run(self) -> None:
        ch = self.channel
        ch.send(("ready", self.root))
        cmd, entries = ch.receive()
        assert cmd == "list", cmd
        wanted: Dict[str, Any] = {}
        for rel, kind, size, mtime, mode, link in entries:
            _check_rel(rel)  # validate every name first
            wanted[rel] = (kind, size, mtime, mode, link)
        if self.options.get("delete"):
            self._guarded("", self._delete_extra, "", wanted)
        for rel in sorted(wanted, key=lambda r: r.count("/")):
            kind, _size, _mtime, mode, link = wanted[rel]
            if kind == "d":
                self._guarded(rel, self._ensure_dir, rel, mode)
            elif kind == "l":
                self._guarded(rel, self._ensure_link, rel, link)
            elif kind == "r":  # a path in the tree: the link names it under this root
                parts = _check_rel(link) if link else []
                self._guarded(rel, self._ensure_link, rel, os.path.join(self.root, *parts))
        need: List[Any] = []
        for rel, (kind, size, mtime, mode, _link) in wanted.items():
            if kind == "f" and not self._parent_failed(rel):
                self._guarded(rel, self._check_file, rel, size, mtime, mode, need)
        ch.send(("need", need))
        self._receive_files()
        # directories last, deepest first: writing inside changes their times, and a
        # read-only directory must stay writable until everything in it is in place
        for rel in sorted(wanted, key=lambda r: -r.count("/")):
            kind, _size, mtime, mode, _link = wanted[rel]
            if kind == "d" and rel not in self._failed:
                try:
                    fd = self._dir(rel)
                    os.utime(fd, ns=(mtime, mtime))
                    os.fchmod(fd, stat.S_IMODE(mode))
                except (OSError, PathFailed):
                    pass
        ch.send(("done", self.stats, self.failures))

    def _parent_failed(self, rel: str) -> bool:
        head = rel.rpartition("/")[0]
        while head:
            if head in self._failed:
                self._failed[rel] = True
                return True
            head = head.rpartition("/")[0]
        return False

    def _guarded(self, rel: str, func: Any, *args: Any) -> bool:
        """Run ``func``; a failure of this one path is recorded, not raised."""
        try:
            func(*args)
            return True
        except PathFailed as exc:
            self._fail(rel, str(exc))
        except OSError as exc:
            self._fail(rel, "%s (%s)" % (_why(exc), exc.__class__.__name__))
        return False

    def _check_file(self, rel: str, size: int, mtime: int, mode: int, need: List[Any]) -> None:
        dfd, name = self._where(rel)
        st = _lstat(name, dfd)
        if st is None:
            need.append((rel, None, None))
        elif not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            # a link, a directory, a FIFO...: replaced; a hard link: never changed in place
            # (the other name may be outside the target), the new copy is renamed over it
            if not stat.S_ISREG(st.st_mode):
                self._forget(rel)
                _remove(dfd, name)
            need.append((rel, None, None))
        elif st.st_size != size or st.st_mtime_ns != mtime:
            same_size = st.st_size == size
            big = max(st.st_size, size) >= DELTA_MIN
            if same_size or big:
                fd = _open_regular(name, dfd)
                try:
                    # with a signature the master finds equal content itself (every block
                    # matched in place: it sends a touch), so the whole-file hash is not needed
                    sha, sig = _digests(fd, same_size and not big, big)
                finally:
                    os.close(fd)
                need.append((rel, sha, sig))
            else:
                need.append((rel, None, None))
        elif stat.S_IMODE(st.st_mode) != stat.S_IMODE(mode):
            self._set_meta(rel, None, mode)

    def _set_meta(self, rel: str, mtime: Optional[int], mode: int) -> None:
        dfd, name = self._where(rel)
        fd = _open_regular(name, dfd, writable=True)
        try:
            if os.fstat(fd).st_nlink > 1:  # linked here since it was checked: maybe from outside
                raise PathFailed("has other hard links at the target: not changed in place")
            os.fchmod(fd, stat.S_IMODE(mode))
            if mtime is not None:
                os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _receive_files(self) -> None:
        ch = self.channel
        incoming: Optional[Incoming] = None
        while True:
            msg = ch.receive()
            cmd = msg[0]
            if cmd == "finish":
                break
            if cmd == "touch":
                _, rel, mtime, mode = msg
                if self._guarded(rel, self._set_meta, rel, mtime, mode):
                    self.stats["touched"] += 1
            elif cmd == "file":
                incoming = Incoming(self, msg[1])
            elif cmd in ("data", "zdata", "copy"):
                assert incoming is not None, cmd
                incoming.feed(msg)
            elif cmd == "end":
                assert incoming is not None, cmd
                if incoming.finish(msg[1], msg[2]):
                    self.stats["files"] += 1
                incoming = None
            elif cmd == "abort":
                assert incoming is not None, cmd
                incoming.discard()
                incoming = None
                self.stats["skipped"] += 1
            elif cmd == "skip":
                self.stats["skipped"] += 1
            else:
                raise RSyncError("unknown command %r" % (cmd,))

    def _ensure_dir(self, rel: str, mode: int) -> None:
        dfd, name = self._where(rel)
        st = _lstat(name, dfd)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self._forget(rel)
            os.unlink(name, dir_fd=dfd)  # a link or a file where the source has a directory
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=dfd)
            self.stats["dirs"] += 1
        fd = self._dir(rel)
        os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)

    def _ensure_link(self, rel: str, link: str) -> None:
        dfd, name = self._where(rel)
        st = _lstat(name, dfd)
        if st is not None:
            if stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dfd) == link:
                return
            self._forget(rel)
            _remove(dfd, name)
        os.symlink(link, name, dir_fd=dfd)
        self.stats["links"] += 1

    def _delete_extra(self, rel_dir: str, wanted: Dict[str, Any]) -> None:
        fd = self._dir(rel_dir)
        prefix = rel_dir + "/" if rel_dir else ""
        with os.scandir(fd) as it:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in found:
            rel = prefix + name
            if rel not in wanted:
                if name.startswith(TMP_PREFIX):
                    continue  # another receiver's file in progress
                self._forget(rel)
                if self._guarded(rel, _remove, self._dir(rel_dir), name):
                    self.stats["deleted"] += 1
            elif is_dir and wanted[rel][0] == "d":  # never descend into what is not ours
                self._guarded(rel, self._delete_extra, rel, wanted)


class Incoming:
    """One file being received: written to a new temporary file, renamed into place."""

    def __init__(self, receiver: Receiver, rel: str) -> None:
        _check_rel(rel)
        self.r = receiver
        self.rel = rel
        self.fd = -1
        self.old = -1
        self.tmp = ""
        self.dfd = -1
        self.name = ""
        self.error = ""
        try:
            self.dfd, self.name = receiver._where(rel)
            self.tmp, self.fd = _new_temp(self.dfd)
        except PathFailed as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = _why(exc)

    def feed(self, msg: Any) -> None:
        if self.error:
            return  # the file failed: its data is read and dropped
        stats = self.r.stats
        try:
            if msg[0] == "data":
                _write(self.fd, msg[1])
                stats["literal"] += len(msg[1])
            elif msg[0] == "zdata":  # compress=True: literal data, zlib-compressed
                block = zlib.decompress(msg[1])
                _write(self.fd, block)
                stats["literal"] += len(block)
            else:
                _, first, count = msg
                if self.old < 0:
                    self.old = _open_regular(self.name, self.dfd)
                block = os.pread(self.old, count * BLOCK, first * BLOCK)
                _write(self.fd, block)
                stats["copied"] += len(block)
        except PathFailed as exc:
            self._failed("the old copy " + str(exc))
        except OSError as exc:
            self._failed(_why(exc))

    def _failed(self, why: str) -> None:
        self.error = why
        self.discard()

    def _close(self) -> None:
        for attr in ("fd", "old"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def discard(self) -> None:
        self._close()
        if self.tmp:
            try:
                os.unlink(self.tmp, dir_fd=self.dfd)
            except OSError:
                pass
            self.tmp = ""

    def finish(self, mtime: int, mode: int) -> bool:
        if not self.error:
            try:
                os.fchmod(self.fd, stat.S_IMODE(mode))
                os.utime(self.fd, ns=(mtime, mtime))
                self._close()
                st = _lstat(self.name, self.dfd)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self.r._forget(self.rel)
                    _remove(self.dfd, self.name)
                os.rename(self.tmp, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
                self.tmp = ""
                return True
            except OSError as exc:
                self.error = _why(exc)
        self.discard()
        self.r._fail(self.rel, "not written: " + self.error)
        return False


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _digests(fd: int, want_sha: bool, want_sig: bool) -> Any:
    """(sha256 hex or None, block signature bytes or None) of the file at ``fd``, in one read."""
    sha = hashlib.sha256() if want_sha else None
    sig = []
    with open(fd, "rb", closefd=False) as f:
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            if sha is not None:
                sha.update(block)
            if want_sig:
                sig.append(zlib.adler32(block).to_bytes(4, "big") + hashlib.sha256(block).digest()[:DIGEST])
    return (sha.hexdigest() if sha is not None else None, b"".join(sig) if want_sig else None)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                return h.hexdigest()
            h.update(block)


def serve(channel: Any) -> None:
    """The receiver's entry point: ``gateway.remote_exec(rsync_receiver.serve)``."""
    _cmd, destdir, options = channel.receive()
    Receiver(channel, destdir, options).run()
