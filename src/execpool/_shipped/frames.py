"""The wire format: frames in, frames out, no I/O.

A connection carries a stream of frames.  Each frame is a 9-byte header --
message type (1 byte), channel id (4 bytes, big-endian), payload length
(4 bytes, big-endian) -- followed by the payload.  :class:`FrameParser` turns
bytes (in whatever pieces they arrive) into ``(type, channel, payload)``
tuples and rejects, before allocating anything, a header with an unknown
type or a length above the connection's cap.  :func:`frame_header` builds the
header for a payload.  Nothing here touches a file descriptor, so every edge
case is a unit test (see ``tests/test_frames.py``).

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import struct

from .errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Tuple, Union

    Frame = Tuple[int, int, bytes]

# Message types.  Payload formats are given beside each one.
EXEC = 1  # master -> worker: dumps((source, call_name, kwargs, filename)); channel = new exec channel
DATA = 2  # either way: dumps(item)
CLOSE = 3  # either way: empty; the sender will send nothing more on this channel
CLOSE_ERROR = 4  # either way: utf-8 traceback text; as CLOSE, with an error
STATUS = 5  # master -> worker: empty; the reply (a dict, then CLOSE) goes to the channel id
TERMINATE = 6  # master -> worker: empty; shut down
HELLO = 7  # worker -> master, first frame: dumps(info dict)
PARTS = 8  # either way: as DATA, with out-of-band buffers after the pickle (see parts_prefix)

_NAMES = {
    EXEC: "EXEC",
    DATA: "DATA",
    CLOSE: "CLOSE",
    CLOSE_ERROR: "CLOSE_ERROR",
    STATUS: "STATUS",
    TERMINATE: "TERMINATE",
    HELLO: "HELLO",
    PARTS: "PARTS",
}

HEADER = struct.Struct("!BII")
HEADER_SIZE = HEADER.size

#: Largest payload a connection accepts unless configured otherwise (256 MiB).
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
#: The largest cap that the 4-byte length field can express.
LIMIT_MAX_FRAME = 2**32 - 1


#: A PARTS payload starts with the pickle's length and the buffer count, then one
#: (length, kind) entry per buffer; the pickle follows, then the buffers in order.
PARTS_HEAD = struct.Struct("!II")
PARTS_ENTRY = struct.Struct("!QB")
#: What a buffer becomes on the receiving side: a bytearray (the sender's buffer was
#: writable), bytes (it was a bytes object), or a read-only memoryview (any other read-only one).
BUF_WRITABLE = 0
BUF_BYTES = 1
BUF_READONLY = 2
#: Most buffers one PARTS frame may carry.
MAX_PARTS = 4096


def parts_prefix(pickle_len: int, buffers: List[Tuple[int, int]]) -> bytes:
    """The start of a PARTS payload: the pickle's length, then (length, kind) per buffer."""
    out = [PARTS_HEAD.pack(pickle_len, len(buffers))]
    out.extend(PARTS_ENTRY.pack(n, kind) for n, kind in buffers)
    return b"".join(out)


def read_parts_prefix(data: Union[bytes, bytearray, memoryview], length: int) -> Tuple[int, int, List[Tuple[int, int]]]:
    """Check the prefix of a ``length``-byte PARTS payload that starts with ``data``.

    Returns ``(prefix size, pickle length, [(buffer length, kind), ...])``, or raises
    ValueError with what is wrong (the lengths must add up to the frame's exactly).
    ``data`` must hold at least ``PARTS_HEAD.size`` bytes; if it does not hold the whole
    table, the returned prefix size says how many bytes are needed.
    """
    if length < PARTS_HEAD.size:
        raise ValueError("a PARTS payload of %d bytes is shorter than its %d-byte head" % (length, PARTS_HEAD.size))
    pickle_len, count = PARTS_HEAD.unpack_from(data, 0)
    if count > MAX_PARTS:
        raise ValueError("a PARTS payload declares %d buffers, more than the limit of %d" % (count, MAX_PARTS))
    size = PARTS_HEAD.size + count * PARTS_ENTRY.size
    if size > length:
        raise ValueError(
            "a PARTS payload of %d bytes declares %d buffers, whose table alone is longer" % (length, count)
        )
    if len(data) < size:
        return size, pickle_len, []
    entries = [PARTS_ENTRY.unpack_from(data, PARTS_HEAD.size + i * PARTS_ENTRY.size) for i in range(count)]
    total = size + pickle_len
    for n, kind in entries:
        if kind > BUF_READONLY:
            raise ValueError("a PARTS payload names buffer kind %d (known: 0, 1, 2)" % kind)
        total += n
    if total != length:
        raise ValueError("a PARTS payload's parts add up to %d bytes, not the frame's %d" % (total, length))
    return size, pickle_len, entries


def type_name(mtype: int) -> str:
    return _NAMES.get(mtype, "type-%d" % mtype)


def default_max_frame() -> int:
    """The frame cap from ``EXECPOOL_MAX_FRAME_SIZE`` (bytes; K/M/G suffix allowed)."""
    value = os.environ.get("EXECPOOL_MAX_FRAME_SIZE")
    if not value:
        return DEFAULT_MAX_FRAME
    return parse_size(value, "EXECPOOL_MAX_FRAME_SIZE")


def parse_size(value: str | int, what: str) -> int:
    """Parse a byte count such as ``1048576``, ``512K``, ``64M`` or ``1G``."""
    if isinstance(value, int):
        n = value
    else:
        text = value.strip().upper().rstrip("B")
        factor = 1
        if text and text[-1] in "KMG":
            factor = 1024 ** ("KMG".index(text[-1]) + 1)
            text = text[:-1]
        try:
            n = int(text) * factor
        except ValueError:
            raise ValueError("%s: %r is not a byte count (examples: 1048576, 64M, 1G)" % (what, value)) from None
    if not 1024 <= n <= LIMIT_MAX_FRAME:
        raise ValueError("%s: %r is out of range; use 1K up to 4G minus one byte (4294967295)" % (what, value))
    return n


def frame_header(mtype: int, channel: int, length: int) -> bytes:
    return HEADER.pack(mtype, channel, length)


class FrameParser:
    """Incremental frame decoder for one direction of one connection.

    Call :meth:`feed` with bytes as they arrive, then :meth:`next_frame` until
    it returns ``None``.  A header that breaks the format raises
    :class:`ProtocolError`; after that the stream cannot be trusted and the
    parser keeps raising.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: Optional[ProtocolError] = None

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        buf = self._buf
        if self._pos and self._pos >= len(buf) // 2:
            del buf[: self._pos]
            self._pos = 0
        buf += data

    def pending(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def need(self) -> int:
        """How many more bytes complete the frame being received (at least 1)."""
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            return HEADER_SIZE - avail
        length: int = HEADER.unpack_from(self._buf, self._pos)[2]
        return max(1, HEADER_SIZE + length - avail)

    def next_frame(self) -> Optional[Frame]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        mtype, channel, length = HEADER.unpack_from(buf, pos)
        if mtype not in _NAMES:
            self._error = ProtocolError(
                "received a frame of unknown type %d (channel %d, length %d): the peer does not "
                "speak execpool's protocol or the stream is corrupt" % (mtype, channel, length)
            )
            raise self._error
        if length > self.max_frame:
            self._error = ProtocolError(
                "received a %s frame declaring %d bytes, more than this connection's cap of %d "
                "bytes: refusing it (raise the cap with max_frame= in the spec or "
                "EXECPOOL_MAX_FRAME_SIZE if such messages are intended)" % (type_name(mtype), length, self.max_frame)
            )
            raise self._error
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            payload = bytes(view[pos + HEADER_SIZE : end])
        if end == len(buf):
            del buf[:]
            self._pos = 0
        else:
            self._pos = end
        return (mtype, channel, payload)

    def take_large(self, threshold: int) -> Optional[Tuple[int, int, int, bytes]]:
        """Hand over a large frame whose payload has only partly arrived.

        If the buffer starts with a valid header of a frame whose payload is at
        least ``threshold`` bytes and is not complete yet, return ``(type,
        channel, length, received_part)`` and forget those bytes: the caller
        reads the rest of the payload itself, straight into a buffer of its own
        (saving copies of large messages).  Otherwise return ``None``.
        """
        if self._error is not None or len(self._buf) - self._pos < HEADER_SIZE:
            return None
        mtype, channel, length = HEADER.unpack_from(self._buf, self._pos)
        if mtype not in _NAMES or length > self.max_frame or length < threshold:
            return None  # an invalid header is reported by next_frame()
        start = self._pos + HEADER_SIZE
        if len(self._buf) - start >= length:
            return None
        with memoryview(self._buf) as view:
            part = bytes(view[start:])
        del self._buf[:]
        self._pos = 0
        return (mtype, channel, length, part)

    def frames(self) -> List[Frame]:
        """All complete frames received so far."""
        out: List[Frame] = []
        while True:
            frame = self.next_frame()
            if frame is None:
                return out
            out.append(frame)
