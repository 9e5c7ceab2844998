"""The channel-data serializer: restricted pickle, safe to load from an untrusted peer.

What travels: ``None``, ``bool``, ``int`` (any size), ``float``, ``complex``,
``str``, ``bytes``, ``bytearray``, ``tuple``, ``list``, ``dict``, ``set``,
``frozenset`` and channels, nested freely.  Exact types only: a subclass
(an ``IntEnum``, an ``OrderedDict``) is refused, as is every other object.

How: the C pickler does the work (pickle protocol 5, which every CPython
3.8+ reads).  Dumping uses ``reducer_override`` -- the hook the C pickler
calls for every object that is not one of its built-in fast-path types -- to
refuse anything else with a :class:`DumpError` naming the type
(``buffer_callback`` refuses ``PickleBuffer``, which skips that hook).
Loading uses an unpickler whose ``find_class`` refuses every global, so no
module is imported and nothing is called, and whose ``persistent_load``
turns the two persistent ids we write back into values: complex numbers
(``complex(real, imag)`` of two floats) and channels of the receiving
gateway.  Since the C pickler calls ``persistent_id`` for *every* object once
it is defined, a second pickler class with that hook is used only for data
that holds a complex number or a channel (the first pass notices and retries).

Known gaps (CPython's C unpickler, documented in SECURITY.md): a crafted
stream can make ``loads`` allocate more memory than the frame it came in (a
huge memo index, or a declared length of BINBYTES8/BYTEARRAY8); neither runs
code.

This module is shipped to remote interpreters as source: stdlib only,
CPython 3.8+.
"""

from __future__ import annotations

import copyreg
import io

try:
    import _pickle as _cpickle
except ImportError:  # pragma: no cover - non-CPython
    import pickle as _cpickle  # type: ignore[no-redef]

from .errors import DataFormatError, DumpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Pickle protocol of every message; 5 is readable by CPython 3.8 and later.
PROTOCOL = 5

_complex = complex
_DESCRIBE_HEAD = 40
_ERROR_TEXT_MAX = 300


class _NeedsSlowPath(Exception):
    """Raised inside the fast pickler for data holding a channel or a complex number."""


def _refuse(obj: object) -> DumpError:
    tp = type(obj)
    name = "%s.%s" % (tp.__module__, tp.__qualname__)
    return DumpError(
        "cannot send an object of type %s over a channel: only None, bool, int, float, "
        "complex, str, bytes, bytearray, tuple, list, dict, set, frozenset and channels "
        "travel (exact types, not subclasses); convert it to one of those first" % name
    )


def _refuse_buffer(buf: object) -> bool:
    raise DumpError("cannot send a pickle.PickleBuffer over a channel; send bytes or bytearray")


class _Pickler(_cpickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        tp = type(obj)
        if tp is _complex or getattr(tp, "_execpool_channel", False):
            raise _NeedsSlowPath()
        raise _refuse(obj)


class _SlowPickler(_cpickle.Pickler):
    """Writes complex numbers and channels as persistent ids, so that loading needs no global."""

    channel_id: Callable[[Any], int] | None = None

    def reducer_override(self, obj: object) -> Any:
        raise _refuse(obj)  # only reached for what persistent_id() did not take

    def persistent_id(self, obj: object) -> object:
        tp = type(obj)
        if tp is _complex:
            return ("c", obj.real, obj.imag)  # type: ignore[attr-defined]
        if getattr(tp, "_execpool_channel", False):
            if self.channel_id is None:
                raise DumpError(
                    "a channel can only be sent over a channel of the same gateway, "
                    "not serialized with execpool.dumps()"
                )
            return ("ch", self.channel_id(obj))
        return None


# Idle (BytesIO, pickler) pairs for reuse: building a pickler costs more than most dumps.
# list.pop() and list.append() are atomic, so threads share the pool without a lock.
_idle: list = []  # type: ignore[type-arg]
_POOL_MAX = 8
_REUSE_MAX = 64 * 1024


def dumps(obj: object, channel_id: Callable[[Any], int] | None = None) -> bytes:
    """Serialize ``obj`` to bytes; raise :class:`DumpError` for what cannot travel.

    ``channel_id`` maps a channel to the id it has on the connection the bytes
    will travel over; without it, data holding a channel is refused.
    """
    f: io.BytesIO
    p: _Pickler
    try:
        f, p = _idle.pop()
    except IndexError:
        f = io.BytesIO()
        p = _Pickler(f, PROTOCOL, buffer_callback=_refuse_buffer)
    try:
        p.dump(obj)
    except _NeedsSlowPath:
        pass
    except RecursionError:
        raise DumpError("cannot send data nested this deeply over a channel") from None
    else:
        data: bytes = f.getvalue()
        if len(data) <= _REUSE_MAX and len(_idle) < _POOL_MAX:
            f.seek(0)
            f.truncate()
            p.clear_memo()
            _idle.append((f, p))
        return data
    # The data holds a complex number or a channel: write it again with persistent ids
    # (the pickler that raised is not put back: its state is unknown).
    f = io.BytesIO()
    slow = _SlowPickler(f, PROTOCOL, buffer_callback=_refuse_buffer)
    slow.channel_id = channel_id
    try:
        slow.dump(obj)
    except RecursionError:
        raise DumpError("cannot send data nested this deeply over a channel") from None
    return f.getvalue()


class _Unpickler(_cpickle.Unpickler):
    channel_for_id: Callable[[int], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        raise DataFormatError(
            "refused to load %s.%s: channel data may only hold builtin values, "
            "it never imports or calls anything" % (str(module)[:100], str(name)[:100])
        )

    def persistent_load(self, pid: Any) -> Any:
        return _persistent_value(pid, self.channel_for_id)


def _persistent_value(pid: Any, channel_for_id: Callable[[int], Any] | None) -> Any:
    if type(pid) is tuple:
        if len(pid) == 3 and pid[0] == "c" and type(pid[1]) is float and type(pid[2]) is float:
            return _complex(pid[1], pid[2])
        if len(pid) == 2 and pid[0] == "ch" and type(pid[1]) is int and 0 < pid[1] < 2**31:
            if channel_for_id is None:
                raise DataFormatError("channel reference found outside a gateway connection")
            return channel_for_id(pid[1])
    raise DataFormatError("malformed persistent reference (%s) in channel data" % describe(pid))


def describe(value: object) -> str:
    """A short description of a value from a peer, safe to put in an error message.

    Never ``repr()`` of the whole value: a small message can hold a structure whose repr
    is gigabytes (shared references).  Type name, length, and for text and bytes the first
    few characters.
    """
    tp = type(value)
    name = tp.__name__
    if tp in (str, bytes, bytearray):
        head = value[:_DESCRIBE_HEAD]  # type: ignore[index]
        more = "..." if len(value) > _DESCRIBE_HEAD else ""  # type: ignore[arg-type]
        return "%s of length %d: %s%s" % (name, len(value), repr(head)[:100], more)  # type: ignore[arg-type]
    if tp in (int, float, bool, complex) or value is None:
        text = repr(value) if tp is not int or value.bit_length() < 256 else "a %d-bit int" % value.bit_length()  # type: ignore[attr-defined]
        return "%s %s" % (name, text[:100])
    try:
        return "%s of length %d" % (name, len(value))  # type: ignore[arg-type]
    except Exception:
        return name


def _error_text(exc: BaseException) -> str:
    """``exc`` as "Type: message", cut to a bounded length (messages can quote peer data)."""
    text = str(exc)
    if len(text) > _ERROR_TEXT_MAX:
        text = text[:_ERROR_TEXT_MAX] + "... (%d characters)" % len(text)
    return "%s: %s" % (type(exc).__name__, text)


def _check_no_extension_opcodes(data: bytes) -> None:
    """Refuse EXT1/EXT2/EXT4: the C unpickler answers them from copyreg's cache
    without asking find_class.  Only needed while that cache holds anything."""
    import pickletools

    try:
        for op, _, _ in pickletools.genops(data):
            if op.name in ("EXT1", "EXT2", "EXT4"):
                raise DataFormatError("refused a copyreg extension code: channel data never calls anything")
    except DataFormatError:
        raise
    except Exception as exc:
        raise DataFormatError("malformed channel data (%s)" % _error_text(exc)) from None


def loads(data: bytes | bytearray | memoryview, channel_for_id: Callable[[int], Any] | None = None) -> Any:
    """Load bytes made by :func:`dumps`; raise :class:`DataFormatError` for anything else.

    Loading never imports a module and never calls anything but ``complex``
    (for complex numbers); channel references are resolved with
    ``channel_for_id`` (refused without it).
    """
    if type(data) is not bytes:
        data = bytes(data)  # the C unpickler reads a BytesIO over bytes far faster
    if copyreg._extension_cache:  # type: ignore[attr-defined]
        _check_no_extension_opcodes(data)
    u = _Unpickler(io.BytesIO(data))
    if channel_for_id is not None:
        u.channel_for_id = channel_for_id
    try:
        value = u.load()
    except DataFormatError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, MemoryError, ...
        raise DataFormatError("malformed channel data (%s)" % _error_text(exc)) from None
    # READONLY_BUFFER turns a bytes-like value into a memoryview without asking find_class;
    # dumps never writes it.  Its byte is rare enough that looking only then costs nothing.
    if b"\x98" in data and _holds_memoryview(value):
        raise DataFormatError("refused a memoryview (READONLY_BUFFER opcode): channel data holds only builtin values")
    return value


def _holds_memoryview(value: Any) -> bool:
    stack = [value]
    seen = set()
    while stack:
        v = stack.pop()
        t = type(v)
        if t is memoryview:
            return True
        if t in (list, tuple, set, frozenset, dict):
            if id(v) in seen:
                continue
            seen.add(id(v))
            if t is dict:
                stack.extend(v.keys())
                stack.extend(v.values())
            else:
                stack.extend(v)
    return False
