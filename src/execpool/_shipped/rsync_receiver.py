"""The receiving side of RSync: runs in a worker via ``remote_exec`` (stdlib-only, 3.8+).

Conversation on the channel, master (M) and this receiver (R)::

    M: ("start", destdir, options)       R: ("ready", realpath of destdir) or an error
    M: ("list", entries)                 entries: (relpath, kind, size, mtime_ns, mode, link)
                                         kind "d" directory, "f" file, "l" symlink
    R: ("need", [(relpath, sha256 of the file here or None, block signature or None), ...])
                                         signature: BLOCK-sized blocks' digests, concatenated,
                                         for large files this side already has a version of
    M: ("touch", relpath, mtime_ns, mode)  same content: only the metadata changes
    M: ("file", relpath), ("data", bytes)*, ("end", mtime_ns, mode)   one file, streamed
       (("zdata", zlib-compressed bytes) instead of "data" when the master compresses);
       with a signature also ("copy", first_block, nblocks): reuse blocks of the old copy
    M: ("abort",)                          instead of "end": the source changed while sent; keep
                                           what is here (the temporary file is removed)
    M: ("skip", relpath)                   the source file vanished or failed: keep what is here
    M: ("finish",)                       R: ("done", stats)

Every relpath is checked before use: no absolute paths, no ``..``, no empty
or dot components, and no path that leads through a symlink -- so nothing is
ever written or deleted outside ``destdir``, whatever the master sends.  Files
are written to a temporary name in their directory and renamed into place, so
a reader never sees a half-written file.
"""

from __future__ import annotations

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
#: endian; the sender rolls it) and a 16-byte BLAKE2b digest: SIG bytes per block.
BLOCK = 32 * 1024
DIGEST = 16
SIG = 4 + DIGEST


class RSyncError(Exception):
    pass


def _check_rel(rel: str) -> List[str]:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\x00" in rel:
        raise RSyncError("refused path %r: not a relative path" % (rel,))
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise RSyncError("refused path %r: empty, '.' or '..' component" % (rel,))
    return parts


class Receiver:
    def __init__(self, channel: Any, destdir: str, options: Optional[Dict[str, Any]]) -> None:
        self.channel = channel
        self.options = options or {}
        self.root = os.path.realpath(os.path.expanduser(destdir))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise RSyncError("target %s exists and is not a directory" % self.root)
        os.makedirs(self.root, exist_ok=True)
        self._safe_dirs = {self.root}  # directories checked to be real (not symlinks) this run
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

    def path(self, rel: str) -> str:
        """The path of ``rel`` under the root, refusing any way out of it."""
        parts = _check_rel(rel)
        current = self.root
        safe = self._safe_dirs
        for part in parts[:-1]:
            current = os.path.join(current, part)
            if current in safe:
                continue
            if os.path.islink(current):
                raise RSyncError("refused path %r: %s is a symlink at the target" % (rel, current))
            if os.path.isdir(current):
                safe.add(current)  # checked once; this receiver replaces nothing by a link
        return os.path.join(current, parts[-1])

    def run(self) -> None:
        ch = self.channel
        ch.send(("ready", self.root))
        cmd, entries = ch.receive()
        assert cmd == "list", cmd
        wanted: Dict[str, Any] = {}
        for rel, kind, size, mtime, mode, link in entries:
            self.path(rel)  # validate every name first
            wanted[rel] = (kind, size, mtime, mode, link)
        if self.options.get("delete"):
            self._delete_extra(wanted)
        need: List[Any] = []
        for rel in sorted(wanted, key=lambda r: r.count("/")):
            kind, size, mtime, mode, link = wanted[rel]
            target = self.path(rel)
            if kind == "d":
                self._ensure_dir(target, mode)
            elif kind == "l":
                self._ensure_link(target, link)
        for rel, (kind, size, mtime, mode, _link) in wanted.items():
            if kind != "f":
                continue
            target = self.path(rel)
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                need.append((rel, None, None))
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                self._remove(target)
                need.append((rel, None, None))
            elif st.st_size != size or st.st_mtime_ns != mtime:
                same_size = st.st_size == size
                big = max(st.st_size, size) >= DELTA_MIN
                if same_size or big:
                    sha, sig = _digests(target, same_size, big)
                    need.append((rel, sha, sig))
                else:
                    need.append((rel, None, None))
            elif stat.S_IMODE(st.st_mode) != stat.S_IMODE(mode):
                os.chmod(target, stat.S_IMODE(mode))
        ch.send(("need", need))
        out: Any = None
        tmp: Any = None
        old: Any = None
        current = ""
        while True:
            msg = ch.receive()
            cmd = msg[0]
            if cmd == "finish":
                break
            if cmd == "touch":
                _, rel, mtime, mode = msg
                target = self.path(rel)
                os.chmod(target, stat.S_IMODE(mode))
                os.utime(target, ns=(mtime, mtime))
                self.stats["touched"] += 1
            elif cmd == "file":
                current = self.path(msg[1])
                tmp = "%s.execpool-tmp-%d" % (current, os.getpid())
                out = open(tmp, "wb")
            elif cmd == "data":
                out.write(msg[1])
                self.stats["literal"] += len(msg[1])
            elif cmd == "zdata":  # compress=True: literal data, zlib-compressed
                block = zlib.decompress(msg[1])
                out.write(block)
                self.stats["literal"] += len(block)
            elif cmd == "copy":
                _, first, count = msg
                if old is None:
                    old = open(current, "rb")
                old.seek(first * BLOCK)
                block = old.read(count * BLOCK)
                out.write(block)
                self.stats["copied"] += len(block)
            elif cmd == "end":
                _, mtime, mode = msg
                if old is not None:
                    old.close()
                    old = None
                out.close()
                os.chmod(tmp, stat.S_IMODE(mode))
                os.utime(tmp, ns=(mtime, mtime))
                if os.path.isdir(current) and not os.path.islink(current):
                    self._remove(current)
                os.replace(tmp, current)
                out = tmp = None
                self.stats["files"] += 1
            elif cmd == "abort":
                if old is not None:
                    old.close()
                    old = None
                out.close()
                os.unlink(tmp)
                out = tmp = None
                self.stats["skipped"] += 1
            elif cmd == "skip":
                self.stats["skipped"] += 1
            else:
                raise RSyncError("unknown command %r" % (cmd,))
        # directories last, deepest first: writing inside changes their times, and a
        # read-only directory must stay writable until everything in it is in place
        for rel in sorted(wanted, key=lambda r: -r.count("/")):
            kind, _size, mtime, mode, _link = wanted[rel]
            if kind == "d":
                target = self.path(rel)
                try:
                    os.utime(target, ns=(mtime, mtime))
                    os.chmod(target, stat.S_IMODE(mode))
                except OSError:
                    pass
        ch.send(("done", self.stats))

    def _ensure_dir(self, target: str, mode: int) -> None:
        if os.path.islink(target) or (os.path.exists(target) and not os.path.isdir(target)):
            self._remove(target)
        if not os.path.isdir(target):
            os.mkdir(target)
            self.stats["dirs"] += 1
        os.chmod(target, stat.S_IMODE(mode) | stat.S_IWUSR | stat.S_IXUSR)

    def _ensure_link(self, target: str, link: str) -> None:
        self._safe_dirs.discard(target)
        if os.path.islink(target) and os.readlink(target) == link:
            return
        if os.path.lexists(target):
            self._remove(target)
        os.symlink(link, target)
        self.stats["links"] += 1

    def _remove(self, target: str) -> None:
        self._safe_dirs = {d for d in self._safe_dirs if d != target and not d.startswith(target + os.sep)}
        if os.path.isdir(target) and not os.path.islink(target):
            for dirpath, dirnames, filenames in os.walk(target, topdown=False):
                for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    os.unlink(os.path.join(dirpath, name))
                for name in dirnames:
                    p = os.path.join(dirpath, name)
                    if not os.path.islink(p):
                        os.chmod(p, 0o700)
                        os.rmdir(p)
            os.chmod(target, 0o700)
            os.rmdir(target)
        else:
            os.unlink(target)

    def _delete_extra(self, wanted: Dict[str, Any]) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root, topdown=True):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            for name in list(dirnames):
                rel = rel_dir + name
                full = os.path.join(dirpath, name)
                if rel not in wanted or wanted[rel][0] != "d":
                    if rel not in wanted:
                        self._remove(full)
                        self.stats["deleted"] += 1
                    dirnames.remove(name)  # never descend into what is not ours
            for name in filenames:
                rel = rel_dir + name
                if rel not in wanted and ".execpool-tmp-" not in name:
                    os.unlink(os.path.join(dirpath, name))
                    self.stats["deleted"] += 1


def _digests(path: str, want_sha: bool, want_sig: bool) -> Any:
    """(sha256 hex or None, block signature bytes or None) of ``path``, in one read."""
    sha = hashlib.sha256() if want_sha else None
    sig = []
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            if sha is not None:
                sha.update(block)
            if want_sig:
                sig.append(zlib.adler32(block).to_bytes(4, "big") + hashlib.blake2b(block, digest_size=DIGEST).digest())
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
