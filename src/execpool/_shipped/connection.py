"""One connection between a master and a worker: I/O, reader thread, channel table.

``BaseGateway`` is the part of a gateway that both sides share::

    user threads --send_item/_send--> [write lock] --> io.write --> peer
    peer --> io.read (reader thread, large blocks) --> FrameParser
         --> DATA: loads() --> channel queue or callback
         --> CLOSE/CLOSE_ERROR: channel end, CLOSE sent back if not yet sent
         --> anything else: _handle() of the side (master: HELLO; worker: EXEC,
             STATUS, TERMINATE)
    EOF / error --> every open channel ends (GatewayLostError / endmarker)
                --> _connection_ended() of the side

Channel ids: the master allocates odd ids, the worker even ones, so the two
never collide; an id of the peer's parity first seen in an incoming frame
creates the channel, up to ``max_channels`` open channels the peer opened
(``EXECPOOL_MAX_CHANNELS``, default 1024): one beyond that cap is a protocol
error that ends the connection.  An id of this side's parity that is not in the
table is a finished channel if this side opened it once (what arrives for it is
late data: dropped, and no state is kept for it) and a protocol error that ends
the connection if this side never opened it.

An ``io`` object moves bytes and nothing else: ``read(n)`` (``b""`` at EOF),
``write(header, payload)``, ``close_write()``, ``close()``.  :class:`FdIO`
wraps a pair of pipe file descriptors.

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import threading

from . import trace as _trace
from .channel import Channel
from .errors import ChannelClosedError, DataFormatError, DumpError, ProtocolError
from .frames import (
    BUF_BYTES,
    BUF_READONLY,
    BUF_WRITABLE,
    CLOSE,
    CLOSE_ERROR,
    DATA,
    HEADER,
    PARTS,
    PARTS_HEAD,
    FrameParser,
    parts_prefix,
    read_parts_prefix,
    type_name,
)
from .serial import OOB_MIN, dumps_parts, loads

try:
    from _pickle import PickleBuffer
except ImportError:  # pragma: no cover - non-CPython
    from pickle import PickleBuffer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

_pack_header = HEADER.pack
READ_SIZE = 256 * 1024
#: Payloads at least this large are read straight into their own buffer.
LARGE = 128 * 1024
_SMALL = 64 * 1024
_F_SETPIPE_SZ = 1031  # Linux fcntl command
#: Most buffers one writev() call takes (Linux's IOV_MAX is 1024).
_IOV_MAX = 1024
#: Channels the peer may have open at once on one connection (``EXECPOOL_MAX_CHANNELS``).
DEFAULT_MAX_CHANNELS = 1024


#: Most bytes of a peer's error text (a remote traceback) kept when a channel closes with one.
MAX_ERROR_TEXT = 256 * 1024


def _error_text(payload: bytes) -> str:
    """The text of a CLOSE_ERROR frame, cut to ``MAX_ERROR_TEXT`` bytes (its tail kept: the
    end of a traceback names the exception)."""
    if len(payload) <= MAX_ERROR_TEXT:
        return bytes(payload).decode("utf-8", "replace")
    half = MAX_ERROR_TEXT // 2
    cut = len(payload) - 2 * half
    return "%s\n[... %d bytes of the remote error left out ...]\n%s" % (
        bytes(payload[:half]).decode("utf-8", "replace"),
        cut,
        bytes(payload[-half:]).decode("utf-8", "replace"),
    )


def default_max_channels() -> int:
    value = os.environ.get("EXECPOOL_MAX_CHANNELS")
    if not value:
        return DEFAULT_MAX_CHANNELS
    try:
        n = int(value)
    except ValueError:
        raise ValueError("EXECPOOL_MAX_CHANNELS=%r is not a whole number" % value[:50]) from None
    if n < 1:
        raise ValueError("EXECPOOL_MAX_CHANNELS=%d must be at least 1" % n)
    return n


def enlarge_pipe(fd: int, size: int = 1024 * 1024) -> None:
    """Ask the OS for a larger pipe buffer (Linux); silently keep the default elsewhere."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except Exception:
        pass


def _as_kind(buf: bytearray, kind: int) -> Any:
    if kind == BUF_BYTES:
        return bytes(buf)
    if kind == BUF_READONLY:
        return memoryview(buf).toreadonly()
    return buf


def _split_parts(payload: Any) -> Any:
    """``(pickle, buffers)`` of a PARTS payload: as read by ``_read_parts``, or whole bytes."""
    if type(payload) is tuple:
        return payload
    if type(payload) is str:  # _read_parts found the table broken
        raise DataFormatError("malformed PARTS message: %s" % payload)
    try:
        size, pickle_len, entries = read_parts_prefix(payload, len(payload))
    except ValueError as exc:
        raise DataFormatError("malformed PARTS message: %s" % exc) from None
    view = memoryview(payload)
    pos = size + pickle_len
    bufs = []
    for n, kind in entries:
        bufs.append(_as_kind(bytearray(view[pos : pos + n]), kind))
        pos += n
    return bytes(view[size : size + pickle_len]), bufs


class FdIO:
    """Blocking byte transport over a read fd and a write fd (pipes, sockets)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._wclosed = False
        self._rclosed = False

    def read(self, n: int) -> bytes:
        return os.read(self.rfd, n)

    def readinto(self, buf: Any) -> int:
        return os.readv(self.rfd, [buf])

    def write(self, header: bytes, payload: bytes = b"", extra: Any = None) -> None:
        """Write a frame: ``header``, ``payload``, then the buffers of ``extra`` (scatter-gather)."""
        fd = self.wfd
        if extra is None and len(payload) < _SMALL:
            data = header + payload
            n = os.write(fd, data)
            if n < len(data):
                view = memoryview(data)[n:]
                while view:
                    view = view[os.write(fd, view) :]
            return
        parts = [memoryview(header), memoryview(payload)]
        if extra:
            parts.extend(extra)
        i = 0
        while i < len(parts):
            n = os.writev(fd, parts[i : i + _IOV_MAX])
            while i < len(parts) and n >= parts[i].nbytes:
                n -= parts[i].nbytes
                i += 1
            if n:
                parts[i] = parts[i][n:]

    def close_write(self) -> None:
        if not self._wclosed:
            self._wclosed = True
            try:
                os.close(self.wfd)
            except OSError:
                pass

    def close(self) -> None:
        self.close_write()
        if self._rclosed:  # closing a number twice could close an unrelated file that reused it
            return
        self._rclosed = True
        try:
            os.close(self.rfd)
        except OSError:
            pass


class BaseGateway:
    """The shared half of a gateway: see the module docstring for the data flow."""

    _first_channel_id = 1
    #: Load the peer's data under the nesting and hash-collision bounds (a worker does not:
    #: its master runs code there anyway).
    _guard_loads = True

    def __init__(self, id: str, max_frame: int) -> None:
        self.id = id
        self._max_frame = max_frame
        self._io: Any = None
        self._wlock = threading.Lock()
        self._chan_lock = threading.Lock()
        self._channels: Dict[int, Channel] = {}
        self._next_id = self._first_channel_id
        self._lost: Optional[str] = None
        self._write_closed: Optional[str] = None  # why this side stopped writing, once it has
        self._ended = threading.Event()
        self._reader: Optional[threading.Thread] = None
        #: Most channels the peer may have open at once here; more is a protocol error.
        self.max_channels = default_max_channels()

    # -- channels ------------------------------------------------------------------

    def newchannel(self) -> Channel:
        """A new channel on this connection; send it over another channel to share it."""
        with self._chan_lock:
            cid = self._next_id
            self._next_id += 2
            ch = Channel(self, cid)
            if self._lost is None:
                self._channels[cid] = ch
        if self._lost is not None:
            ch._on_lost(self._lost)
        return ch

    def _channel_for_id(self, cid: int) -> Channel:
        """The channel with this id, created if the peer names it first."""
        with self._chan_lock:
            ch = self._channels.get(cid)
            if ch is None:
                first = self._first_channel_id
                peers = (cid - first) % 2 != 0
                if peers and self._lost is None and len(self._channels) >= self.max_channels:
                    opened = sum(1 for c in self._channels if (c - first) % 2)
                    if opened >= self.max_channels:
                        raise ProtocolError(
                            "the peer opened more than %d channels at once on %s (the per-connection "
                            "limit: raise it with EXECPOOL_MAX_CHANNELS on this side, or the gateway's "
                            "max_channels attribute)" % (self.max_channels, self.id)
                        )
                elif not peers and self._lost is None and not self._first_channel_id <= cid < self._next_id:
                    raise ProtocolError(self._never_opened(cid))
                ch = Channel(self, cid)
                if self._lost is None and peers:
                    self._channels[cid] = ch  # a peer-allocated id seen for the first time
                else:
                    ch._closed = ch._remote_closed = True  # one of ours that is already finished
                    ch._done.set()
        return ch

    def _never_opened(self, cid: int) -> str:
        return (
            "the peer named channel %d on %s, an id of this side that was never opened (this side has "
            "opened %d channels): a peer may only use channels that exist or open its own"
            % (cid, self.id, (self._next_id - self._first_channel_id) // 2)
        )

    def _channel_id(self, ch: Channel) -> int:
        if ch.gateway is not self:
            raise DumpError("%r belongs to gateway %s and cannot be sent over %s" % (ch, ch.gateway.id, self.id))
        return ch.id

    def _numchannels(self) -> int:
        with self._chan_lock:
            return len(self._channels)

    # -- sending -------------------------------------------------------------------

    def _send_item(self, cid: int, item: Any) -> None:
        if type(item) is bytes and len(item) >= OOB_MIN:
            item = PickleBuffer(item)  # written after the pickle, not copied into it
        data, bufs = dumps_parts(item, self._channel_id)
        if not bufs:
            self._send(DATA, cid, data)
            return
        kinds = [
            (b.nbytes, BUF_BYTES if type(b.obj) is bytes else BUF_READONLY if b.readonly else BUF_WRITABLE)
            for b in bufs
        ]
        self._send(PARTS, cid, parts_prefix(len(data), kinds) + data, extra=bufs)

    def _send(self, mtype: int, cid: int, payload: bytes = b"", lock_timeout: float = -1, extra: Any = None) -> None:
        """Write one frame (``extra``: buffers written after ``payload``, part of it).  With
        ``lock_timeout`` >= 0, give up (ChannelClosedError) if another sender holds the write
        lock that long, e.g. blocked on a peer that stopped."""
        length = len(payload)
        if extra:
            length += sum(b.nbytes for b in extra)
        if length > self._max_frame:
            what = "channel" if mtype == DATA or mtype == PARTS else type_name(mtype)
            raise DumpError(
                "a %s message of %d bytes is larger than the frame cap of %d bytes on %s: "
                "send it in pieces, or raise the cap with max_frame= in the spec (both sides) "
                "or EXECPOOL_MAX_FRAME_SIZE" % (what, length, self._max_frame, self.id)
            )
        header = _pack_header(mtype, cid, length)
        if not self._wlock.acquire(timeout=lock_timeout):
            raise ChannelClosedError("cannot send to %s: another sender is blocked writing to it" % self.id)
        try:
            if self._lost is not None:
                raise ChannelClosedError("cannot send to %s: the connection ended (%s)" % (self.id, self._lost))
            if self._write_closed is not None:
                raise ChannelClosedError("cannot send to %s: %s" % (self.id, self._write_closed))
            try:
                if extra:
                    self._io.write(header, payload, extra)
                else:
                    self._io.write(header, payload)
            except OSError as exc:
                raise ChannelClosedError("cannot send to %s: the connection is broken (%s)" % (self.id, exc)) from exc
        finally:
            self._wlock.release()
        if _trace._level:
            _trace.trace("sent", type_name(mtype), "channel", cid, "bytes", length)

    def _close_write(self, reason: str, timeout: float = 2.0) -> bool:
        """Stop writing: close the write side under the write lock, so that no sender can
        write into a file descriptor that was closed (and maybe reused) under it.

        Returns False if a sender held the lock for ``timeout`` seconds (blocked on a
        peer that does not read); the caller must then end the peer, which unblocks it.
        """
        if not self._wlock.acquire(timeout=timeout):
            return False
        try:
            if self._write_closed is None:
                self._write_closed = reason
                if self._io is not None:
                    self._io.close_write()
        finally:
            self._wlock.release()
        return True

    def _close_channel(self, ch: Channel, error: Optional[str]) -> None:
        """Send this side's CLOSE for ``ch`` (called once per channel)."""
        with self._chan_lock:
            if ch._remote_closed:
                self._channels.pop(ch.id, None)
        if self._lost is not None:
            return
        try:
            if error is None:
                self._send(CLOSE, ch.id)
            else:
                self._send(CLOSE_ERROR, ch.id, str(error).encode("utf-8", "replace"))
        except ChannelClosedError:
            pass

    # -- receiving -------------------------------------------------------------------

    def _start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read_loop, name="execpool-reader-%s" % self.id, daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        parser = FrameParser(self._max_frame)
        reason = "the other side closed the connection"
        io = self._io
        block = bytearray(READ_SIZE)
        view = memoryview(block)
        try:
            while True:
                n = io.readinto(block)
                if not n:
                    if parser.pending():
                        reason = "the connection ended in the middle of a frame (%d bytes)" % parser.pending()
                    break
                parser.feed(view[:n])
                while True:
                    frame = parser.next_frame()
                    if frame is None:
                        large = parser.take_large(LARGE)
                        if large is None:
                            break
                        frame = self._read_parts(*large) if large[0] == PARTS else self._read_rest(*large)
                        if frame is None:
                            reason = "the connection ended in the middle of a %d-byte frame" % large[2]
                            return
                    self._dispatch(*frame)
        except ProtocolError as exc:
            reason = "protocol error: %s" % exc
        except OSError as exc:
            reason = "reading failed: %s" % exc
        except BaseException as exc:  # a bug: end the connection loudly rather than hang
            import traceback

            reason = "internal error in the reader thread: %s" % repr(exc)[:300]
            _trace.trace(reason, traceback.format_exc())
        finally:
            self._end_connection(reason)

    def _read_rest(self, mtype: int, cid: int, length: int, part: bytes) -> Any:
        """Read the rest of a large payload straight into its own buffer (or None at EOF)."""
        payload = bytearray(length)
        payload[: len(part)] = part
        view = memoryview(payload)
        got = len(part)
        while got < length:
            n = self._io.readinto(view[got:])
            if not n:
                return None
            got += n
        view.release()
        return (mtype, cid, payload)

    def _read_parts(self, mtype: int, cid: int, length: int, part: bytes) -> Any:
        """Read the rest of a large PARTS payload: the pickle, then each buffer straight into
        its own bytearray (None at EOF).  A payload whose table does not add up is read to
        its end and becomes a bad item of its channel, as undecodable DATA does."""
        io = self._io
        head = bytearray(part)

        def fill(n: int) -> bool:
            while len(head) < n:
                more = io.read(min(n - len(head), READ_SIZE))
                if not more:
                    return False
                head.extend(more)
            return True

        try:
            if not fill(PARTS_HEAD.size):
                return None
            size = read_parts_prefix(head, length)[0]
            if not fill(size):
                return None
            size, pickle_len, entries = read_parts_prefix(head, length)
        except ValueError as exc:
            if not self._skip(length - len(head)):
                return None
            return (PARTS, cid, str(exc))
        if not fill(min(size + pickle_len, length)):
            return None
        data = bytes(head[size : size + pickle_len])
        rest = memoryview(head)[size + pickle_len :]
        bufs = []
        for n, kind in entries:
            buf = bytearray(n)
            have = min(n, len(rest))
            buf[:have] = rest[:have]
            rest = rest[have:]
            view = memoryview(buf)
            while have < n:
                got = io.readinto(view[have:])
                if not got:
                    return None
                have += got
            view.release()
            bufs.append(_as_kind(buf, kind))
        return (PARTS, cid, (data, bufs))

    def _skip(self, n: int) -> bool:
        while n > 0:
            got = len(self._io.read(min(n, READ_SIZE)))
            if not got:
                return False
            n -= got
        return True

    def _dispatch(self, mtype: int, cid: int, payload: Any) -> None:
        if mtype == DATA or mtype == PARTS:
            ch = self._channels.get(cid) or self._channel_for_id(cid)
            try:
                bufs = None
                if mtype == PARTS:
                    payload, bufs = _split_parts(payload)
                item = loads(payload, self._channel_for_id, guard=self._guard_loads, buffers=bufs)
            except ProtocolError:
                raise  # a channel id the peer may not use: the connection ends
            except DataFormatError as exc:
                _trace.trace("bad data on channel", cid, exc)
                ch._deliver_bad(str(exc))
            else:
                ch._deliver(item)
        elif mtype == CLOSE or mtype == CLOSE_ERROR:
            error = _error_text(payload) if mtype == CLOSE_ERROR else None
            self._on_close_frame(cid, error)
        else:
            if _trace.enabled():
                _trace.trace("received", type_name(mtype), "channel", cid, "bytes", len(payload))
            self._handle(mtype, cid, payload)

    def _on_close_frame(self, cid: int, error: Optional[str]) -> None:
        with self._chan_lock:
            ch = self._channels.get(cid)
        if ch is None:
            if (cid - self._first_channel_id) % 2 != 0:
                # The peer closed a channel of its own that never carried data here: answer once.
                self._send_quietly(CLOSE, cid)
            elif self._lost is None and not self._first_channel_id <= cid < self._next_id:
                raise ProtocolError(self._never_opened(cid))
            return
        reply = ch._on_remote_close(error)
        with self._chan_lock:
            self._channels.pop(cid, None)
        if reply:
            self._send_quietly(CLOSE, cid)

    def _send_quietly(self, mtype: int, cid: int) -> None:
        try:
            self._send(mtype, cid)
        except ChannelClosedError:
            pass

    def _handle(self, mtype: int, cid: int, payload: bytes) -> None:
        raise ProtocolError("unexpected %s frame on channel %d" % (type_name(mtype), cid))

    def _end_connection(self, reason: str) -> None:
        reason = self._describe_end(reason)
        _trace.trace("connection", self.id, "ended:", reason)
        try:
            with self._chan_lock:
                self._lost = reason
                channels = list(self._channels.values())
                self._channels.clear()
            for ch in channels:
                try:
                    ch._on_lost(reason)
                except BaseException as exc:  # one channel's callback must not keep the rest from ending
                    _trace.trace("ending", ch, "raised", repr(exc))
        finally:
            self._ended.set()
            self._connection_ended(reason)  # on a worker: shutdown, which must happen whatever failed above

    def _describe_end(self, reason: str) -> str:
        return reason

    def _connection_ended(self, reason: str) -> None:
        pass
