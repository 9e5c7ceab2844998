"""RSync: copy a directory tree to one or many gateways, sending only what changed.

Data flow of one :meth:`RSync.send`::

    master: start every target's receiver (remote_exec of rsync_receiver, no install
        needed; it opens its root while the master walks), walk the source once
        --> listing (path, kind, size, mtime, mode, link) to every receiver
    each receiver: compare with its tree, delete extras (delete=True), make dirs and links
        --> "need" list: files missing or of another size (whole), or of another
            mtime (with the sha256 of its copy, so equal content only gets a touch;
            large files with their block signature instead, and a file whose every
            block is found in place gets a touch too)
    master: for each file some target needs: read it once, stream it to every target
        that needs it (literal data in 256 KiB messages; for a target that sent a block
        signature of its old copy, its blocks found anywhere in the file as ("copy", i, n)),
        then mode and mtime; files that vanish or change while read are reported and
        left as they were at the target, never fatal
    receivers: write to a random temporary name, rename into place, all through directory
        descriptors that never follow a link; report stats and the paths that failed

Block deltas follow rsync's algorithm: the target describes its old copy in 32 KiB
blocks (Adler-32 + a truncated SHA-256); the master finds those blocks anywhere in the new file by
rolling the Adler-32 byte by byte -- but only after a mismatch and for at most
ROLL_LIMIT bytes (a pure-Python roll costs about half a microsecond a byte), probing
block-aligned positions beyond that -- so edits, insertions and deletions cost about a
block each, and a wholly new file costs little more than sending it.
"""

from __future__ import annotations

import fnmatch
import mmap
import os
import posixpath
import stat
import zlib
from collections.abc import Callable, Sequence
from hashlib import sha256
from pathlib import Path
from typing import Any

from ._rsync_links import escaping_links, inside
from ._shipped import rsync_receiver
from ._shipped.channel import Channel
from ._shipped.errors import ExecpoolError
from ._shipped.rsync_receiver import BLOCK, DIGEST, SIG, _sha256
from .gateway import Gateway

CHUNK = 256 * 1024
# Read once: the receiver must speak the protocol of the code this process imported,
# even if the files on disk change (an upgrade under a long-running master).


class RSyncError(ExecpoolError):
    """An RSync could not start or a target failed; the message names the target."""


class RSync:
    """Synchronise ``sourcedir`` to directories on one or more gateways.

    ``callback(command, path, channel)`` is called for each file sent
    (``command`` is ``"send"``) and for each source problem (``"error"``).
    ``exclude`` takes gitignore-like patterns: ``"*.pyc"`` (a name anywhere),
    ``"build/"`` (a directory anywhere), ``"docs/*.tmp"`` (relative to the
    source).  Override :meth:`filter` for anything else.  Symlinks are sent as
    links; one whose target, resolved in the tree as synced (through its other
    links: ``esc -> d/..`` with ``d -> .``), can leave it is refused unless
    ``links="keep"`` (send as is) or ``"skip"`` (leave out silently).  ``compress=True``
    sends file data zlib-compressed (for slow links); ``progress=True`` shows a
    tqdm progress bar of the bytes to send.

    An absolute symlink that names a path inside the source becomes a relative link to
    the same place in the target (with ``links="keep"`` it is sent as is).  ``send()``
    may be called again: each call syncs every target added so far.
    """

    #: Forget the targets once send() has synced them (execnet's RSync does).
    _consume_targets = False
    #: Absolute links into the source become links the receiver anchors at its root, i.e.
    #: absolute links into the target (execnet's behaviour), instead of relative links.
    _rooted_absolute_links = False

    def __init__(
        self,
        sourcedir: str | os.PathLike[str],
        callback: Callable[..., Any] | None = None,
        verbose: bool = True,
        exclude: Sequence[str] = (),
        links: str = "safe",
        compress: bool = False,
        progress: bool = False,
    ) -> None:
        self._compress = compress
        self._progress = progress
        self._bar: Any = None
        self._sourcedir = str(Path(sourcedir).absolute())
        self._roots = list(dict.fromkeys([self._sourcedir, os.path.realpath(self._sourcedir)]))
        self._callback = callback
        self._verbose = verbose
        self._exclude = list(exclude)
        if links not in ("safe", "keep", "skip"):
            raise ValueError("links= must be 'safe', 'keep' or 'skip', not %r" % (links,))
        self._links = links
        self._targets: list[tuple[Gateway, str, Callable[[], Any] | None, dict[str, Any]]] = []
        #: What the last send() found wrong in the source (vanished files, unreadable ones, ...).
        self.problems: list[str] = []
        #: Statistics of the last send() per gateway id, summed over that gateway's targets.
        self.stats: dict[str, dict[str, int]] = {}
        #: Statistics of the last send() per target: ``(gateway id, destination directory)``.
        self.stats_by_target: dict[tuple[str, str], dict[str, int]] = {}
        self._ahead: tuple[list[tuple[str, str, int, int, int, str | None]], list[str]] | None = None

    def filter(self, path: str) -> bool:
        """Return False to leave ``path`` (absolute, in the source) out; default: keep it."""
        return True

    def _report_send_file(self, gateway: Gateway, rel: str) -> None:
        """Called for each file sent to ``gateway`` (``rel``: its path in the source).

        Prints ``ID:REL <= SOURCEPATH`` when ``verbose``; execnet's subclasses override it.
        """
        if self._verbose:
            print("%s:%s <= %s" % (gateway.id, rel, os.path.join(self._sourcedir, rel)))

    def add_target(
        self,
        gateway: Gateway,
        destdir: str | os.PathLike[str],
        finishedcallback: Callable[[], Any] | None = None,
        delete: bool = False,
    ) -> None:
        """Sync to ``destdir`` on ``gateway`` (created if missing); ``delete=True``
        removes what the source does not have."""
        self._targets.append((gateway, str(destdir), finishedcallback, {"delete": bool(delete)}))

    # -- the source ------------------------------------------------------------------

    def _excluded(self, rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        for pattern in self._exclude:
            if pattern.endswith("/"):
                if is_dir and (fnmatch.fnmatchcase(name, pattern[:-1]) or fnmatch.fnmatchcase(rel, pattern[:-1])):
                    return True
            elif "/" in pattern:
                if fnmatch.fnmatchcase(rel, pattern.lstrip("/")):
                    return True
            elif fnmatch.fnmatchcase(name, pattern):
                return True
        return False

    def _walk(self) -> list[tuple[str, str, int, int, int, str | None]]:
        root = self._sourcedir
        if not os.path.isdir(root):
            raise RSyncError("RSync source %s is not a directory" % root)
        entries: list[tuple[str, str, int, int, int, str | None]] = []
        for dirpath, dirnames, filenames in os.walk(root, topdown=True, followlinks=False):
            rel_dir = os.path.relpath(dirpath, root)
            prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in sorted(dirnames + filenames):
                rel = prefix + name
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError as exc:
                    self._problem("%s vanished during the walk (%s)" % (rel, exc))
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if self._excluded(rel, is_dir) or not self.filter(full):
                    if is_dir and name in dirnames:
                        dirnames.remove(name)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    entries.append(self._link_entry(rel, os.readlink(full), st.st_mtime_ns))
                elif is_dir:
                    entries.append((rel, "d", 0, st.st_mtime_ns, st.st_mode, None))
                elif stat.S_ISREG(st.st_mode):
                    entries.append((rel, "f", st.st_size, st.st_mtime_ns, st.st_mode, None))
                else:
                    self._problem("%s is not a file, directory or symlink; skipped" % rel)
        return self._safe_links(entries)

    def _link_entry(self, rel: str, link: str, mtime: int) -> tuple[str, str, int, int, int, str | None]:
        """The listing entry of link ``rel``: an absolute link into the source points to the
        same place in the target (relative, or anchored at the receiver's root)."""
        where = inside(link, self._roots) if self._links != "keep" else None
        if where is None:
            return (rel, "l", 0, mtime, 0, link)
        if self._rooted_absolute_links:
            return (rel, "r", 0, mtime, 0, where)
        return (rel, "l", 0, mtime, 0, posixpath.relpath(where or ".", rel.rpartition("/")[0] or "."))

    def _file_synced(self, ch: Channel, rel: str, size: int, sent: bool) -> None:
        """Called for each file brought up to date on ``ch``'s target: its data ``sent``, or
        only its metadata (the content was equal).  Calls ``callback("send", rel, channel)``
        and :meth:`_report_send_file` for a file sent."""
        if sent:
            if self._callback is not None:
                self._callback("send", rel, ch)
            self._report_send_file(ch.gateway, rel)  # type: ignore[arg-type]  # a master's channel

    def _listed(self, ch: Channel, total: int) -> None:
        """Called once per target when it has said what it needs: ``total`` bytes of files."""

    def _safe_links(
        self, entries: list[tuple[str, str, int, int, int, str | None]]
    ) -> list[tuple[str, str, int, int, int, str | None]]:
        """``entries`` without the links that ``links=`` refuses (all of them are kept with "keep")."""
        if self._links == "keep":
            return entries
        bad = escaping_links(entries)
        if self._links == "safe":
            for rel, _kind, _size, _mtime, _mode, link in entries:
                if rel in bad:
                    self._problem(
                        "%s is a symlink to %s, which leads outside the source (resolved in the tree "
                        "as synced, through its other links): not sent (pass links='keep' to send it as is, "
                        "or links='skip' to skip such links silently)" % (rel, link)
                    )
        return [e for e in entries if e[0] not in bad]

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        if self._callback is not None:
            self._callback("error", text, None)

    # -- sending ---------------------------------------------------------------------------

    def send(self, raises: bool = True) -> None:
        """Synchronise every target; returns when all are done.

        Raises :class:`RSyncError` naming the target if one fails, or, once
        everything else is synced, listing the paths a target could not write
        (with ``raises=False`` failures are only recorded in :attr:`problems`).
        Problems of the source (files vanishing or changing during the walk)
        never abort the sync: they are reported in :attr:`problems` and to the
        callback, and the previous copy at the target is kept.  Without targets
        it raises :class:`OSError` (``raises=False``: returns quietly).  It may be
        called again: each call walks the source afresh.
        """
        if not self._targets:
            if not raises:
                return None
            raise OSError("RSync.send(): no targets; call add_target() first")
        try:
            return self._send(raises)
        finally:
            if self._consume_targets:
                self._targets = []

    def walk_ahead(self) -> None:
        """Walk the source now, for the next :meth:`send` (which then does not walk it
        again): ``execpool rsync`` walks while its gateways start.  Safe to run in another
        thread than send()'s, if :meth:`filter` and the callback are; if the walk fails,
        send() walks again and reports it."""
        self._ahead = None
        problems, self.problems = self.problems, []
        try:
            self._ahead = (self._walk(), self.problems)
        except Exception:
            pass
        finally:
            self.problems = problems

    def _send(self, raises: bool) -> None:
        ahead, self._ahead = self._ahead, None
        self.problems = list(ahead[1]) if ahead is not None else []
        self.stats = {}
        self.stats_by_target = {}
        if not os.path.isdir(self._sourcedir):
            raise RSyncError("RSync source %s is not a directory" % self._sourcedir)
        # the receivers start (import, open their root) while the source is walked
        channels: list[tuple[Gateway, str, Channel, Callable[[], Any] | None]] = []
        try:
            for gateway, destdir, finished, options in self._targets:
                ch = gateway.remote_exec(rsync_receiver.serve)
                ch.send(("start", destdir, options))
                channels.append((gateway, destdir, ch, finished))
            entries = ahead[0] if ahead is not None else self._walk()
        except BaseException:
            for _gw, _dest, ch, _fin in channels:  # a receiver never given a listing changes nothing
                ch.close()
            raise
        failed: list[str] = []
        meta = {e[0]: (e[3], e[4], e[2]) for e in entries}  # mtime, mode, size
        needs: dict[str, list[tuple[Channel, str | None, bytes | None]]] = {}
        live: list[tuple[Gateway, str, Channel, Callable[[], Any] | None]] = []
        for gateway, destdir, ch, finished in channels:
            try:
                ch.receive()  # ("ready", root)
                ch.send(("list", entries))
                _, need = ch.receive()
            except (ExecpoolError, EOFError) as exc:
                failed.append("%s:%s: %s" % (gateway.id, destdir, _short(exc)))
                continue
            live.append((gateway, destdir, ch, finished))
            for rel, their_hash, signature in need:
                needs.setdefault(rel, []).append((ch, their_hash, signature))
            self._listed(ch, sum(meta[item[0]][2] for item in need if item[0] in meta))
        if self._progress:
            from tqdm import tqdm

            total = sum(e[2] for e in entries if e[0] in needs)
            self._bar = tqdm(
                total=total, unit="B", unit_scale=True, desc="rsync %s" % os.path.basename(self._sourcedir)
            )
        try:
            for rel in sorted(needs.keys() & meta.keys()):  # (a receiver naming other paths is ignored)
                self._send_file(rel, meta[rel], needs[rel])
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        for gateway, destdir, ch, finished in live:
            try:
                ch.send(("finish",))
                _, stats, failures = ch.receive()
                ch.waitclose()
            except (ExecpoolError, EOFError) as exc:
                failed.append("%s:%s: %s" % (gateway.id, destdir, _short(exc)))
                continue
            self.stats_by_target[(gateway.id, destdir)] = dict(stats)
            summed = self.stats.setdefault(gateway.id, dict.fromkeys(stats, 0))
            for key, value in stats.items():
                summed[key] = summed.get(key, 0) + value
            for text in failures:  # one path that could not be written: the rest was synced
                failed.append("%s:%s: %s" % (gateway.id, destdir, text))
            if finished is not None:
                finished()
        if failed:
            self.problems.extend(failed)
            if raises:
                raise RSyncError("RSync of %s failed on %s" % (self._sourcedir, "; ".join(failed)))

    def _send_file(
        self, rel: str, meta: tuple[int, int, int], targets: list[tuple[Channel, str | None, bytes | None]]
    ) -> None:
        mtime, mode, size = meta
        full = os.path.join(self._sourcedir, rel)
        try:
            ours = _sha256(full) if any(h is not None for _, h, _ in targets) else None
        except OSError as exc:
            return self._skip(rel, [ch for ch, _, _ in targets], "%s could not be read (%s)" % (rel, exc))
        whole: list[_Stream] = []
        for ch, their, signature in targets:
            if their is not None and their == ours:
                ch.send(("touch", rel, mtime, mode))
                self._file_synced(ch, rel, size, False)
            else:
                whole.append(_Stream(ch, rel, signature, self._compress))
        if not whole:
            return None
        try:
            f = open(full, "rb")
        except OSError as exc:
            channels = [s.ch for s in whole]
            return self._skip(rel, channels, "%s vanished before it was sent (%s)" % (rel, exc))
        with f:
            before = os.fstat(f.fileno())
            try:
                plain = [s for s in whole if s.sig is None]
                while plain:
                    block = f.read(CHUNK)
                    if not block:
                        break
                    for s in plain:
                        s.literal(block)
                    if self._bar is not None:
                        self._bar.update(len(block))
                for s in whole:
                    if s.sig is not None:
                        _send_delta(s, f, before.st_size)
                for s in whole:
                    s.flush()
                st = os.fstat(f.fileno())
                changed = (st.st_size, st.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
            except (OSError, ValueError) as exc:
                changed, st = True, before
                self._problem("%s could not be read completely (%s)" % (rel, exc))
        if changed:
            for s in whole:
                # the target keeps its previous copy; the next sync brings it
                s.ch.send(("abort",) if s.started else ("skip", rel))
            self._problem("%s changed while it was sent; not updated this time" % rel)
            return None
        for s in whole:
            if s.identical:  # every block found in place: the same content
                s.ch.send(("touch", rel, st.st_mtime_ns, st.st_mode))
            else:
                s.ch.send(("end", st.st_mtime_ns, st.st_mode))
            self._file_synced(s.ch, rel, st.st_size, not s.identical)
        return None

    def _skip(self, rel: str, channels: list[Channel], text: str) -> None:
        for ch in channels:
            ch.send(("skip", rel))
        self._problem(text)


class _Stream:
    """One target's copy of a file being sent: literal data in CHUNK-sized messages and
    ("copy", first_block, count) runs of blocks the target's old copy already has.

    ("file", rel) goes out with the first of them: a file whose only run is every block
    of the old copy, in place, is that copy, and :meth:`flush` sends nothing but sets
    :attr:`identical` (the caller sends a touch instead)."""

    def __init__(self, ch: Channel, rel: str, signature: bytes | None, compress: bool = False) -> None:
        self.ch = ch
        self.rel = rel
        self.sig = signature
        self.compress = compress
        self.started = False
        self.identical = False
        self._data: list[bytes] = []
        self._size = 0
        self._copy_from = -1
        self._copy_count = 0

    def literal(self, data: bytes) -> None:
        if not data:
            return
        self._send_copy()
        self._data.append(data)
        self._size += len(data)
        if self._size >= CHUNK:
            self._send_data()

    def copy(self, index: int) -> None:
        self._send_data()
        if self._copy_count and self._copy_from + self._copy_count == index:
            self._copy_count += 1
        else:
            self._send_copy()
            self._copy_from, self._copy_count = index, 1

    def flush(self) -> None:
        self._send_data()
        nblocks = len(self.sig) // SIG if self.sig is not None else 0
        if not self.started and nblocks and (self._copy_from, self._copy_count) == (0, nblocks):
            self.identical = True
            self._copy_count = 0
            return
        self._send_copy()
        self._begin()

    def _begin(self) -> None:
        if not self.started:
            self.started = True
            self.ch.send(("file", self.rel))

    def _send_data(self) -> None:
        if self._data:
            self._begin()
            data = b"".join(self._data)
            if self.compress:
                self.ch.send(("zdata", zlib.compress(data, 1)))
            else:
                self.ch.send(("data", data))
            self._data, self._size = [], 0

    def _send_copy(self) -> None:
        if self._copy_count:
            self._begin()
            self.ch.send(("copy", self._copy_from, self._copy_count))
            self._copy_count = 0


#: Bytes the rolling search may scan past the last match before it falls back to probing
#: block-aligned positions only (a pure-Python roll costs about half a microsecond a byte).
ROLL_LIMIT = 256 * 1024
_MOD = 65521


def _send_delta(stream: _Stream, f: Any, size: int) -> None:
    """rsync's algorithm against the target's block signature: find the target's blocks
    anywhere in the source (zlib's Adler-32 rolled byte by byte, confirmed by SHA-256),
    send the rest as literal data.  The roll runs only after a mismatch and for at most
    ROLL_LIMIT bytes; beyond that, only block-aligned positions are tried."""
    sig = stream.sig
    assert sig is not None
    table: dict[int, list[tuple[int, bytes]]] = {}
    nblocks = len(sig) // SIG
    for j in range(nblocks):
        entry = sig[j * SIG : (j + 1) * SIG]
        table.setdefault(int.from_bytes(entry[:4], "big"), []).append((j, entry[4:]))
    if size == 0:
        return
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            n = BLOCK
            p = 0  # window start
            lit = 0  # start of pending literal data
            weak = -1  # Adler-32 of view[p:p+n] while rolling, -1 when not computed
            fresh = True  # no aligned probe tried since the last match
            while p + n <= size:
                if weak < 0:
                    weak = zlib.adler32(view[p : p + n])
                match = _lookup(table, weak, view[p : p + n])
                if match >= 0:
                    stream.literal(bytes(view[lit:p]))
                    stream.copy(match)
                    p += n
                    lit = p
                    weak = -1
                    fresh = True
                    continue
                if fresh:
                    # a mismatch right after a match (or at the start): an in-place edit keeps
                    # the blocks after it where they were, so try the next few aligned blocks
                    # (cheap: C-speed checksums) before rolling byte by byte
                    fresh = False
                    q = _probe_aligned(table, view, p + n, size, n)
                    if q >= 0:
                        match = _lookup(table, zlib.adler32(view[q : q + n]), view[q : q + n])
                        stream.literal(bytes(view[lit:q]))
                        stream.copy(match)
                        p = q + n
                        lit = p
                        weak = -1
                        fresh = True
                        continue
                if p - lit >= ROLL_LIMIT:  # give up rolling: try the next aligned position
                    p += n
                    weak = -1
                    continue  # (fresh stays False: one check per block until a match)
                if p + n >= size:
                    break
                out, new = view[p], view[p + n]  # roll one byte
                a = ((weak & 0xFFFF) - out + new) % _MOD
                b = ((weak >> 16) - n * out + a - 1) % _MOD
                weak = (b << 16) | a
                p += 1
            # the tail: shorter than a block; the old copy's last block may match it
            if 0 < size - lit < n and nblocks:  # equal digests mean equal bytes, length included
                tail = bytes(view[lit:size])
                if _lookup(table, zlib.adler32(tail), tail) == nblocks - 1:
                    stream.copy(nblocks - 1)
                    return
            for start in range(lit, size, CHUNK):
                stream.literal(bytes(view[start : min(size, start + CHUNK)]))
        finally:
            view.release()


#: How many aligned blocks after a mismatch are tried before the byte-by-byte roll.
PROBE_BLOCKS = 8


def _probe_aligned(table: dict[int, list[tuple[int, bytes]]], view: Any, start: int, size: int, n: int) -> int:
    """The first position start, start+n, ... (at most PROBE_BLOCKS) whose block the
    target has, or -1."""
    q = start
    for _ in range(PROBE_BLOCKS):
        if q + n > size:
            return -1
        if _lookup(table, zlib.adler32(view[q : q + n]), view[q : q + n]) >= 0:
            return q
        q += n
    return -1


def _lookup(table: dict[int, list[tuple[int, bytes]]], weak: int, window: Any) -> int:
    candidates = table.get(weak)
    if candidates:
        strong = sha256(window).digest()[:DIGEST]
        for j, digest in candidates:
            if digest == strong:
                return j
    return -1


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
