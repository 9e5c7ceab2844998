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

_NAMES = {
    EXEC: "EXEC",
    DATA: "DATA",
    CLOSE: "CLOSE",
    CLOSE_ERROR: "CLOSE_ERROR",
    STATUS: "STATUS",
    TERMINATE: "TERMINATE",
    HELLO: "HELLO",
}

HEADER = struct.Struct("!BII")
HEADER_SIZE = HEADER.size

#: Largest payload a connection accepts unless configured otherwise (256 MiB).
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
#: The largest cap that the 4-byte length field can express.
LIMIT_MAX_FRAME = 2**32 - 1


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
