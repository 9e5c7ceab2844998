"""The channel-data serializer: restricted pickle, safe to load from an untrusted peer.

What travels: ``None``, ``bool``, ``int`` (any size), ``float``, ``complex``,
``str``, ``bytes``, ``bytearray``, ``tuple``, ``list``, ``dict``, ``set``,
``frozenset`` and channels, nested freely.  Exact types only: a subclass
(an ``IntEnum``, an ``OrderedDict``) is refused, as is every other object.

How: the C pickler does the work (pickle protocol 5, which every CPython
3.8+ reads).  Dumping uses ``reducer_override`` -- the hook the C pickler
calls for every object that is not one of its built-in fast-path types -- to
refuse anything else with a :class:`DumpError` naming the type.  Loading uses
an unpickler whose ``find_class`` refuses every global except ``complex``
(so no module is imported and nothing but ``complex()`` is ever called) and
whose ``persistent_load`` turns channel references back into channels of the
receiving gateway.  A channel is written as a persistent id; since the C
pickler calls ``persistent_id`` for *every* object when it is defined, a
second pickler class with that hook is used only for data that holds a
channel (the first pass notices and retries).

This module is shipped to remote interpreters as source: stdlib only,
CPython 3.8+.
"""

from __future__ import annotations

import io

try:
    import _pickle as _cpickle
except ImportError:  # pragma: no cover - non-CPython
    import pickle as _cpickle  # type: ignore[no-redef]

from ._errors import DataFormatError, DumpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Pickle protocol of every message; 5 is readable by CPython 3.8 and later.
PROTOCOL = 5

_complex = complex


class _HasChannel(Exception):
    """Raised inside the fast pickler when the data holds a channel."""


def _refuse(obj: object) -> DumpError:
    tp = type(obj)
    name = "%s.%s" % (tp.__module__, tp.__qualname__)
    return DumpError(
        "cannot send an object of type %s over a channel: only None, bool, int, float, "
        "complex, str, bytes, bytearray, tuple, list, dict, set, frozenset and channels "
        "travel (exact types, not subclasses); convert it to one of those first" % name
    )


class _Pickler(_cpickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        tp = type(obj)
        if tp is _complex:
            return (_complex, (obj.real, obj.imag))  # type: ignore[attr-defined]
        if obj is _complex:
            return NotImplemented  # the callable of the tuple above, saved as a global
        if getattr(tp, "_execpool_channel", False):
            raise _HasChannel()
        raise _refuse(obj)


class _ChannelPickler(_Pickler):
    channel_id: Callable[[Any], int] | None = None

    def reducer_override(self, obj: object) -> Any:
        if getattr(type(obj), "_execpool_channel", False):
            return NotImplemented  # not reached: persistent_id handles it first
        return super().reducer_override(obj)

    def persistent_id(self, obj: object) -> object:
        if getattr(type(obj), "_execpool_channel", False):
            if self.channel_id is None:
                raise DumpError(
                    "a channel can only be sent over a channel of the same gateway, "
                    "not serialized with execpool.dumps()"
                )
            return ("ch", self.channel_id(obj))
        return None


def dumps(obj: object, channel_id: Callable[[Any], int] | None = None) -> bytes:
    """Serialize ``obj`` to bytes; raise :class:`DumpError` for what cannot travel.

    ``channel_id`` maps a channel to the id it has on the connection the bytes
    will travel over; without it, data holding a channel is refused.
    """
    f = io.BytesIO()
    try:
        _Pickler(f, PROTOCOL).dump(obj)
    except _HasChannel:
        f = io.BytesIO()
        p = _ChannelPickler(f, PROTOCOL)
        p.channel_id = channel_id
        _dump_checked(p, obj)
    except DumpError:
        raise
    except RecursionError:
        raise DumpError("cannot send data nested this deeply over a channel") from None
    return f.getvalue()


def _dump_checked(p: _ChannelPickler, obj: object) -> None:
    try:
        p.dump(obj)
    except DumpError:
        raise
    except RecursionError:
        raise DumpError("cannot send data nested this deeply over a channel") from None


class _Unpickler(_cpickle.Unpickler):
    channel_for_id: Callable[[int], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name == "complex":
            return _complex
        raise DataFormatError(
            "refused to load %s.%s: channel data may only hold builtin values, "
            "it never imports or calls anything" % (module, name)
        )

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 2 and pid[0] == "ch" and type(pid[1]) is int and 0 < pid[1] < 2**31:
            if self.channel_for_id is None:
                raise DataFormatError("channel reference found outside a gateway connection")
            return self.channel_for_id(pid[1])
        raise DataFormatError("malformed channel reference %r" % (pid,))


def loads(data: bytes | bytearray | memoryview, channel_for_id: Callable[[int], Any] | None = None) -> Any:
    """Load bytes made by :func:`dumps`; raise :class:`DataFormatError` for anything else.

    Loading never imports a module and never calls anything but ``complex``;
    channel references are resolved with ``channel_for_id`` (refused without it).
    """
    u = _Unpickler(io.BytesIO(data))
    if channel_for_id is not None:
        u.channel_for_id = channel_for_id
    try:
        return u.load()
    except DataFormatError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, MemoryError, ...
        raise DataFormatError("malformed channel data (%s: %s)" % (type(exc).__name__, exc)) from None
