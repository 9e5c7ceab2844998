"""Channels: one id on one connection, with a receive queue, a callback or a file view.

A channel is created by either side (``gateway.newchannel()``, ``remote_exec``)
or on first sight of its id in an incoming frame.  Items arrive from the
connection's reader thread, which either queues them (``receive`` takes them
in order) or, after ``setcallback``, calls the callback itself.

Closing is symmetric: each side sends exactly one CLOSE (or CLOSE_ERROR) per
channel -- when its user closes it, when its remote_exec ends, or as the
answer to the peer's CLOSE -- and forgets the channel once it has both sent
and received one.  There is no closing by reference counting: a channel is
open until one side says otherwise or the connection ends.

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import threading
from _queue import Empty, SimpleQueue

from . import trace as _trace
from .errors import (
    ChannelClosedError,
    DataFormatError,
    ExecpoolError,
    GatewayLostError,
    RemoteError,
    TimeoutError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Optional, Protocol, Union

    class BaseGateway(Protocol):
        """What a channel needs of its gateway (``connection.BaseGateway`` provides it)."""

        id: str

        def _send_item(self, channel_id: int, item: Any) -> None: ...

        def _close_channel(self, channel: Channel, error: Optional[str]) -> None: ...


_RemoteError = RemoteError


class _NoEndMarker:
    def __repr__(self) -> str:
        return "NO_ENDMARKER"


#: Default ``endmarker`` of :meth:`Channel.setcallback`: deliver nothing at the end.
NO_ENDMARKER: Any = _NoEndMarker()


class _Signal:
    """A non-data entry of a receive queue: the end of the stream, or bad data."""

    __slots__ = ("kind", "text")

    def __init__(self, kind: str, text: Optional[str] = None) -> None:
        self.kind = kind  # "remote", "local", "lost" or "bad"
        self.text = text


class Channel:
    """A bidirectional, ordered message stream between the two sides of a gateway.

    Items are the values :func:`execpool.dumps` accepts, channels included.
    ``send`` never blocks for the peer to receive; ``receive`` waits for the
    next item.
    """

    _execpool_channel = True  # how the serializer recognises a channel
    RemoteError = RemoteError
    TimeoutError = TimeoutError

    def __init__(self, gateway: BaseGateway, id: int) -> None:
        self.gateway = gateway
        self.id = id
        self._items: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False  # this side sent CLOSE
        self._remote_closed = False  # the peer sent CLOSE
        self._remote_error: Optional[str] = None
        self._error_seen = False
        self._lost: Optional[str] = None
        self._done = threading.Event()  # closed either way, or the connection ended
        self._callback: Optional[Callable[[Any], Any]] = None
        self._endmarker: Any = NO_ENDMARKER

    def __repr__(self) -> str:
        if self._lost is not None:
            state = "lost"
        elif self._closed or self._remote_closed:
            state = "closed"
        else:
            state = "open"
        return "<Channel id=%d %s %s>" % (self.id, self.gateway.id, state)

    def __setstate__(self, state: object) -> None:
        raise DataFormatError("channel data tried to set the state of a channel")

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError("a Channel cannot be pickled; send it over a channel of its gateway instead")

    # -- sending ---------------------------------------------------------------

    def send(self, item: Any) -> None:
        """Send ``item`` to the other side.

        Raises :class:`DumpError` (at once, nothing sent) if ``item`` holds
        something that cannot travel, and :class:`ChannelClosedError` (an
        ``OSError``) if either side closed the channel or the connection is gone.
        """
        if self._closed or self._remote_closed or self._lost is not None:
            raise ChannelClosedError("cannot send to %r: %s" % (self, self._why_closed()))
        self.gateway._send_item(self.id, item)

    def _why_closed(self) -> str:
        if self._lost is not None:
            return "the connection ended (%s)" % self._lost
        if self._remote_closed:
            return "the other side closed it"
        return "it was closed by this side"

    # -- receiving ---------------------------------------------------------------

    def receive(self, timeout: Optional[float] = None) -> Any:
        """Return the next item; wait at most ``timeout`` seconds (forever if None).

        Raises :class:`TimeoutError` when the time runs out,
        :class:`RemoteError` when the other side closed the channel with an
        error (its remote_exec raised), :class:`GatewayLostError` when the
        connection ended, and ``EOFError`` when the channel was closed
        normally.  The end condition is raised again on every later call.
        """
        if self._callback is not None:
            raise ExecpoolError("%r has a callback; receive() cannot be used on it" % self)
        try:
            if timeout is None:
                item = self._items.get()
            else:
                item = self._items.get(timeout=timeout)
        except Empty:
            raise TimeoutError("no item arrived on %r within %s seconds" % (self, timeout)) from None
        if type(item) is _Signal:
            if item.kind != "bad":
                self._items.put(item)  # the end stays the end
            raise self._signal_error(item)
        return item

    def _signal_error(self, sig: _Signal) -> BaseException:
        if sig.kind == "remote":
            if self._remote_error is not None:
                self._error_seen = True
                return RemoteError(self._remote_error, self.gateway.id)
            return EOFError("%r was closed by the other side" % self)
        if sig.kind == "local":
            return EOFError("%r was closed by this side" % self)
        if sig.kind == "lost":
            return GatewayLostError("%r: the connection ended: %s" % (self, sig.text))
        return DataFormatError("%r received data it could not load: %s" % (self, sig.text))

    def __iter__(self) -> Channel:
        return self

    def __next__(self) -> Any:
        try:
            return self.receive()
        except GatewayLostError:
            raise
        except EOFError:
            raise StopIteration from None

    next = __next__

    def setcallback(self, callback: Callable[[Any], Any], endmarker: Any = NO_ENDMARKER) -> None:
        """Deliver every item to ``callback`` instead of the receive queue.

        Items already queued are delivered first, in this thread; later ones
        are delivered in the connection's reader thread, in order.  When the
        channel ends (closed by the peer, or the connection lost) ``callback``
        is called once more with ``endmarker``, unless it is left out.  If the
        callback raises, the channel is closed with that error.
        """
        with self._lock:
            if self._callback is not None:
                raise ExecpoolError("%r already has a callback" % self)
            ended = False
            while True:
                try:
                    item = self._items.get_nowait()
                except Empty:
                    break
                if type(item) is _Signal:
                    if item.kind != "bad":
                        ended = True
                    continue
                self._call(callback, item)
            self._callback = callback
            self._endmarker = endmarker
            if ended:
                if endmarker is not NO_ENDMARKER:
                    self._call(callback, endmarker)
                self._items.put(_Signal("local" if self._closed else "remote"))

    def _call(self, callback: Callable[[Any], Any], item: Any) -> None:
        try:
            callback(item)
        except Exception:
            import traceback

            text = traceback.format_exc()
            _trace.trace("callback of", self, "raised:", text)
            import sys

            sys.stderr.write("[%s] callback of %r raised; closing the channel:\n%s" % (self.gateway.id, self, text))
            self.close(error=text)

    # -- called by the connection's reader thread -----------------------------------

    def _deliver(self, item: Any) -> None:
        if self._closed:
            _trace.trace("dropped an item for", self, "(closed by this side)")
            return
        cb = self._callback
        if cb is None:
            with self._lock:
                cb = self._callback
                if cb is None:
                    self._items.put(item)
                    return
        self._call(cb, item)

    def _deliver_bad(self, text: str) -> None:
        if self._callback is None:
            self._deliver(_Signal("bad", text))
            return
        import sys

        sys.stderr.write("[%s] %r dropped an item it could not load: %s\n" % (self.gateway.id, self, text))

    def _on_remote_close(self, error: Optional[str]) -> bool:
        """The peer sent CLOSE; return True if this side still has to send its own."""
        with self._lock:
            self._remote_closed = True
            self._remote_error = error
            cb = self._callback
            if cb is None and not self._closed:
                self._items.put(_Signal("remote"))
            reply = not self._closed
            self._closed = True
        self._done.set()
        if cb is not None and self._endmarker is not NO_ENDMARKER:
            self._call(cb, self._endmarker)
        return reply

    def _on_lost(self, reason: str) -> None:
        with self._lock:
            if self._remote_closed or self._lost is not None:
                return
            self._lost = reason
            cb = self._callback
            if cb is None and not self._closed:
                self._items.put(_Signal("lost", reason))
        self._done.set()
        if cb is not None and self._endmarker is not NO_ENDMARKER:
            self._call(cb, self._endmarker)

    # -- closing -----------------------------------------------------------------------

    def close(self, error: Optional[str] = None) -> None:
        """Close this side: the peer's ``receive`` ends (with ``error`` as a
        :class:`RemoteError` if given); this side receives nothing more.
        Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._callback is None:
                self._items.put(_Signal("local"))
        self._done.set()
        self.gateway._close_channel(self, error)

    def isclosed(self) -> bool:
        """True once either side closed the channel or its connection ended."""
        return self._closed or self._remote_closed or self._lost is not None

    def waitclose(self, timeout: Optional[float] = None) -> None:
        """Wait until the channel is closed (by either side) or its connection ends.

        Raises :class:`RemoteError` if the other side closed it with an error,
        :class:`GatewayLostError` if the connection ended first and
        :class:`TimeoutError` if ``timeout`` seconds pass first.
        """
        if not self._done.wait(timeout):
            raise TimeoutError("%r was not closed within %s seconds" % (self, timeout))
        if self._remote_error is not None:
            self._error_seen = True
            raise RemoteError(self._remote_error, self.gateway.id)
        if self._lost is not None and not self._remote_closed:
            raise GatewayLostError("%r: the connection ended: %s" % (self, self._lost))

    def _getremoteerror(self) -> Optional[BaseException]:
        """execnet's semi-private accessor: why the channel ended, if not normally.

        A :class:`RemoteError` when the peer closed it with an error, a
        :class:`GatewayLostError` (an ``EOFError``) when the connection ended
        first, else None.
        """
        if self._remote_error is None:
            if self._lost is not None and not self._remote_closed:
                return GatewayLostError("%r: the connection ended: %s" % (self, self._lost))
            return None
        self._error_seen = True
        return RemoteError(self._remote_error, self.gateway.id)

    def __del__(self) -> None:
        try:
            if self._remote_error is not None and not self._error_seen:
                RemoteError(self._remote_error, self.gateway.id).warn()
        except Exception:
            pass

    # -- file views ----------------------------------------------------------------------

    def makefile(self, mode: str = "w", proxyclose: bool = False) -> Union[ChannelFileWrite, ChannelFileRead]:
        """A file-like view: ``'w'`` sends each write as an item, ``'r'`` reads
        str or bytes items as one stream.  With ``proxyclose=True`` closing the
        file closes the channel."""
        if mode == "w":
            return ChannelFileWrite(self, proxyclose)
        if mode == "r":
            return ChannelFileRead(self, proxyclose)
        raise ValueError("makefile mode must be 'r' or 'w', not %r" % (mode,))


class _ChannelFile:
    def __init__(self, channel: Channel, proxyclose: bool) -> None:
        self.channel = channel
        self._proxyclose = proxyclose
        self.closed = False

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._proxyclose:
            self.channel.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<%s of %r>" % (type(self).__name__, self.channel)


class ChannelFileWrite(_ChannelFile):
    """Write end of :meth:`Channel.makefile`: each ``write`` sends one item."""

    def write(self, data: Union[str, bytes]) -> int:
        if self.closed:
            raise ValueError("write to a closed channel file")
        self.channel.send(data)
        return len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


class ChannelFileRead(_ChannelFile):
    """Read end of :meth:`Channel.makefile`: str or bytes items read as one stream.

    The first item decides whether the file reads ``str`` or ``bytes``; an item
    of the other type, or of any other type, raises ``TypeError``.
    """

    def __init__(self, channel: Channel, proxyclose: bool) -> None:
        super().__init__(channel, proxyclose)
        self._buffer: Any = None
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            item = self.channel.receive()
        except EOFError:
            self._eof = True
            return False
        item_any: Any = item
        if not isinstance(item, (str, bytes)):
            raise TypeError("channel file read an item of type %s; only str or bytes can be read" % type(item).__name__)
        if self._buffer is None:
            self._buffer = item
        elif type(item) is not type(self._buffer):
            raise TypeError("channel file mixes str and bytes items")
        else:
            self._buffer = self._buffer + item_any
        return True

    def _empty(self) -> Any:
        return self._buffer[:0] if self._buffer is not None else ""

    def read(self, size: int = -1) -> Any:
        """Read ``size`` characters/bytes, or everything until the channel closes."""
        if self.closed:
            raise ValueError("read from a closed channel file")
        while size < 0 or self._buffer is None or len(self._buffer) < size:
            if not self._fill():
                break
        if self._buffer is None:
            return ""
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def readline(self, size: int = -1) -> Any:
        """Read up to and including the next newline (or to the end)."""
        if self.closed:
            raise ValueError("read from a closed channel file")
        while True:
            buf = self._buffer
            if buf is not None:
                nl = buf.find("\n" if isinstance(buf, str) else b"\n")
                if nl >= 0 and (size < 0 or nl < size):
                    return self.read(nl + 1)
                if 0 <= size <= len(buf):
                    return self.read(size)
            if not self._fill():
                return self.read()

    def readlines(self) -> list:  # type: ignore[type-arg]
        """All remaining lines, read until the channel closes."""
        return list(self)

    def __iter__(self) -> Any:
        while True:
            line = self.readline()
            if not line:
                return
            yield line
