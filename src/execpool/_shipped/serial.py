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

from .errors import DataFormatError, DumpError, ProtocolError
from .loadcheck import (
    CONTAINER_TYPES,
    TUPLE_ONLY,
    deeper_than,
    holds_memoryview,
    needs_guard,
    shallow_by_levels,
    too_deep_message,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Dict, List, Tuple

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


#: Buffers at least this large travel out of band: after the pickle, never copied into it.
OOB_MIN = 64 * 1024
#: Most out-of-band buffers of one message (more travel in band); the frame layer's limit.
OOB_MAX = 4096


class _Sink:
    """The ``buffer_callback`` of a pickler: refuses ``PickleBuffer`` for :func:`dumps`, and
    for :func:`dumps_parts` takes large ones out of band (returning False keeps them out)."""

    __slots__ = ("bufs",)

    def __init__(self) -> None:
        self.bufs: Any = None

    def __call__(self, buf: Any) -> bool:
        bufs = self.bufs
        if bufs is None:
            raise DumpError("cannot send a pickle.PickleBuffer with dumps(); send bytes or bytearray")
        raw = buf.raw()
        if raw.nbytes < OOB_MIN or len(bufs) >= OOB_MAX:
            return True
        bufs.append(raw)
        return False


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
    return _dump(obj, channel_id, None)[0]


def dumps_parts(obj: object, channel_id: Callable[[Any], int] | None = None) -> Tuple[bytes, List[memoryview]]:
    """As :func:`dumps`, but ``obj`` may hold ``pickle.PickleBuffer`` objects: those of at
    least ``OOB_MIN`` bytes are left out of the pickle and returned as memoryviews, to be
    written after it without a copy (a PARTS frame); :func:`loads` takes them back with
    ``buffers=``.  A writable buffer loads as a bytearray, one over bytes as bytes, any other
    read-only one as a read-only memoryview (as pickle's in-band forms of them do).
    """
    return _dump(obj, channel_id, [])


def _dump(obj: object, channel_id: Callable[[Any], int] | None, bufs: Any) -> Tuple[bytes, List[memoryview]]:
    f: io.BytesIO
    p: _Pickler
    try:
        f, p, sink = _idle.pop()
    except IndexError:
        f = io.BytesIO()
        sink = _Sink()
        p = _Pickler(f, PROTOCOL, buffer_callback=sink)
    sink.bufs = bufs
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
            sink.bufs = None
            _idle.append((f, p, sink))
        return data, bufs
    # The data holds a complex number or a channel: write it again with persistent ids
    # (the pickler that raised is not put back: its state is unknown).
    f = io.BytesIO()
    sink = _Sink()
    sink.bufs = None if bufs is None else []
    slow = _SlowPickler(f, PROTOCOL, buffer_callback=sink)
    slow.channel_id = channel_id
    try:
        slow.dump(obj)
    except RecursionError:
        raise DumpError("cannot send data nested this deeply over a channel") from None
    return f.getvalue(), sink.bufs


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
    if not text:
        return type(exc).__name__
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


def _env_int(name: str, default: int) -> int:
    import os

    value = os.environ.get(name)
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError("%s=%r is not a whole number" % (name, value[:50])) from None
    if n < 1:
        raise ValueError("%s=%d must be at least 1" % (name, n))
    return n


#: Deepest nesting of containers (tuple, list, dict, set, frozenset) that loads() accepts.
#: Far below what the C stack holds when CPython hashes or compares nested tuples.
DEFAULT_MAX_DEPTH = 1000
#: Most keys of one dict, set or frozenset that may share one hash value (mod 2**61-1).
DEFAULT_MAX_COLLISIONS = 64
max_depth = _env_int("EXECPOOL_MAX_DEPTH", DEFAULT_MAX_DEPTH)
max_collisions = _env_int("EXECPOOL_MAX_HASH_COLLISIONS", DEFAULT_MAX_COLLISIONS)

#: Messages up to this long go to the C unpickler unchecked for hashing: they hold too few
#: keys for collisions to cost anything, and no tuple chain deeper than the C stack holds.
_SMALL = 1024
_HASH_MOD = 2**61 - 1
#: CPU seconds that building the dicts and sets of one message may take (the guard behind
#: the collision bound), plus this much per byte of the message.
_HASH_CPU_BASE = 0.1
_HASH_CPU_PER_BYTE = 1e-6


def loads(
    data: bytes | bytearray | memoryview,
    channel_for_id: Callable[[int], Any] | None = None,
    max_depth: int | None = None,
    max_collisions: int | None = None,
    guard: bool = True,
    buffers: Any = None,
) -> Any:
    """Load bytes made by :func:`dumps`; raise :class:`DataFormatError` for anything else.

    Loading never imports a module and never calls anything but ``complex``
    (for complex numbers); channel references are resolved with
    ``channel_for_id`` (refused without it).  Data nested deeper than
    ``max_depth`` containers, or a dict/set with more than ``max_collisions``
    keys of one hash value, is refused (defaults: the module's ``max_depth``
    and ``max_collisions``, from ``EXECPOOL_MAX_DEPTH`` and
    ``EXECPOOL_MAX_HASH_COLLISIONS``).  ``guard=False`` skips those two bounds (never
    the refusal of globals): for data from a peer that may run code here anyway, as a
    worker's master does.  ``buffers``: the out-of-band buffers of a message made by
    :func:`dumps_parts`, in order.
    """
    if type(data) is bytes and len(data) <= _SMALL and max_depth is None and buffers is None:
        # The common case, a small message, without the checks below that it cannot need
        # (its size bounds its nesting and its keys); any failure takes the full path.
        if len(data) <= _module_max_depth() and not copyreg._extension_cache:  # type: ignore[attr-defined]
            u = _Unpickler(io.BytesIO(data))
            if channel_for_id is not None:
                u.channel_for_id = channel_for_id
            try:
                value = u.load()
            except Exception:
                pass
            else:
                if b"\x98" not in data or not holds_memoryview(value):
                    return value
    depth = _module_max_depth() if max_depth is None else max_depth
    if type(data) is not bytes:
        data = bytes(data)  # the C unpickler reads a BytesIO over bytes far faster
    if copyreg._extension_cache:  # type: ignore[attr-defined]
        _check_no_extension_opcodes(data)
    n = len(data)
    guarded = check_depth = False
    readonly = True  # READONLY_BUFFER may occur (its byte is in the data)
    if guard and (n > _SMALL or n > depth):
        guarded, check_depth, readonly = needs_guard(data, depth)
        guarded = guarded and n > _SMALL
    collisions = _module_max_collisions() if max_collisions is None else max_collisions
    try:
        if guarded:
            g = _guarded_unpickler()(io.BytesIO(data), buffers=buffers)
            g.channel_for_id = channel_for_id
            g.setup(depth, collisions, n)
            value = g.load()
        else:
            u = _Unpickler(io.BytesIO(data), buffers=buffers)
            if channel_for_id is not None:
                u.channel_for_id = channel_for_id
            value = u.load()
    except ProtocolError:
        raise  # a channel id the peer may not use: the connection's business, not the data's
    except DataFormatError as exc:
        raise DataFormatError("%s (%s)" % (exc, _where_it_failed(data, depth, collisions))) from None
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, MemoryError, ...
        where = _where_it_failed(data, depth, collisions)
        raise DataFormatError("malformed channel data (%s, %s)" % (where, _error_text(exc))) from None
    if check_depth and not shallow_by_levels(value, depth) and deeper_than(value, depth, CONTAINER_TYPES, {}):
        raise DataFormatError(too_deep_message(depth))
    # READONLY_BUFFER turns a bytes-like value into a memoryview without asking find_class;
    # dumps never writes it.  Its byte is rare enough that looking only then costs nothing.
    if readonly and buffers is None and b"\x98" in data and holds_memoryview(value):
        raise DataFormatError("refused a memoryview (READONLY_BUFFER opcode): channel data holds only builtin values")
    return value


#: Opcodes the error path replays to find where a message fails (about a second at most).
_REPLAY_MAX = 1_000_000


class _ReplayLimit(Exception):
    pass


def _where_it_failed(data: bytes, depth: int, collisions: int) -> str:
    """Where loading ``data`` fails: "at byte N of M", the offset of the opcode that fails
    when the data is loaded again, opcode by opcode, with the pure-Python loader.  Only
    called on the error path, and for at most ``_REPLAY_MAX`` opcodes: a message that fails
    later than that is described as failing beyond the offset reached."""
    g = _guarded_unpickler()(io.BytesIO(data))
    g.setup(depth, collisions, len(data))
    g.channel_for_id = lambda cid: None  # no channel is made twice
    g.dispatch = _Tracked(g, {key: _tracking(op) for key, op in g.dispatch.items()})
    g.at = 0
    g.replayed = 0
    try:
        g.load()
    except _ReplayLimit:
        return "beyond byte %d of %d" % (g.at, len(data))
    except Exception:
        return "at byte %d of %d" % (g.at, len(data))
    return "in %d bytes" % len(data)  # only the C loader refused it


class _Tracked(dict):  # type: ignore[type-arg]
    """The tracking loader's opcode table: an opcode it lacks fails at its own offset."""

    def __init__(self, loader: Any, table: Dict[int, Any]) -> None:
        super().__init__(table)
        self.loader = loader

    def __missing__(self, key: int) -> Any:
        _position(self.loader)
        raise KeyError(key)


def _position(self: Any) -> None:
    frame = self._unframer.current_frame
    outer = self._unframer.file_read.__self__.tell()
    if frame is not None:
        outer += frame.tell() - len(frame.getbuffer())
    self.at = outer - 1  # the opcode's own byte has been read


def _tracking(op: Any) -> Any:
    def tracked(self: Any) -> None:
        _position(self)
        self.replayed += 1
        if self.replayed > _REPLAY_MAX:
            raise _ReplayLimit()
        op(self)

    return tracked


def _module_max_depth() -> int:
    return max_depth


def _module_max_collisions() -> int:
    return max_collisions


_guarded_class: Any = None


def _guarded_unpickler() -> Any:
    """The class that loads messages which may hash: built on first use (it imports pickle)."""
    global _guarded_class
    if _guarded_class is None:
        _guarded_class = _make_guarded_unpickler()
    return _guarded_class


def _make_guarded_unpickler() -> Any:
    import pickle
    import time

    base: Any = pickle._Unpickler
    thread_time = time.thread_time

    class _GuardedUnpickler(base):  # type: ignore[misc]
        """The pure-Python unpickler, with every dict, set and frozenset built under guard.

        Before a key or member is hashed its chain of nested tuples is measured against the
        nesting limit (CPython hashes a tuple recursively, in C); the keys of each container
        are counted by hash value, and more than ``max_collisions`` alike is refused; the
        CPU time spent inserting is capped in proportion to the message (a backstop for
        collisions of the probe sequence rather than of the hash)."""

        dispatch = dict(base.dispatch)
        channel_for_id: Any = None

        def setup(self, depth: int, collisions: int, size: int) -> None:
            self._depth = depth
            self._collisions = collisions
            self._heights: Dict[int, Any] = {}
            self._counts: Dict[int, Any] = {}
            self._spent = 0.0
            self._budget = _HASH_CPU_BASE + _HASH_CPU_PER_BYTE * size

        def find_class(self, module: str, name: str) -> Any:
            return _Unpickler.find_class(self, module, name)

        def persistent_load(self, pid: Any) -> Any:
            return _persistent_value(pid, self.channel_for_id)

        def _insert(self, target: Any, items: Any, pairs: bool) -> None:
            """Put ``items`` (key, value, key, value... if ``pairs``) into ``target``."""
            t0 = thread_time()
            entry = self._counts.get(id(target))
            if entry is None:
                entry = self._counts[id(target)] = (target, {})
            counts: Dict[int, int] = entry[1]
            step = 2 if pairs else 1
            is_dict = type(target) is dict
            for i in range(0, len(items), step):
                key = items[i]
                if type(key) is tuple and deeper_than(key, self._depth, TUPLE_ONLY, self._heights):
                    raise DataFormatError(too_deep_message(self._depth))
                h = hash(key) % _HASH_MOD
                c = counts.get(h, 0) + 1
                if c > self._collisions:
                    raise DataFormatError(
                        "refused channel data: more than %d keys of one %s share a hash value (a hash-"
                        "collision attack costs quadratic time; raise the limit with "
                        "EXECPOOL_MAX_HASH_COLLISIONS on the loading side, or loads(max_collisions=...))"
                        % (self._collisions, type(target).__name__)
                    )
                counts[h] = c
                if pairs:
                    target[key] = items[i + 1]
                elif is_dict or type(target) is not set:
                    raise DataFormatError("malformed channel data: ADDITEMS on a %s" % type(target).__name__)
                else:
                    target.add(key)
                if not i & 255 and thread_time() - t0 + self._spent > self._budget:
                    self._over_budget()
            self._spent += thread_time() - t0
            if self._spent > self._budget:
                self._over_budget()

        def _over_budget(self) -> None:
            raise DataFormatError(
                "refused channel data: building its dicts and sets took more than %.2f s of CPU "
                "(the hashing budget of a message of this size; its keys collide)" % self._budget
            )

        def _setitem(self) -> None:
            stack = self.stack
            value = stack.pop()
            key = stack.pop()
            self._store(stack[-1], [key, value])

        def _setitems(self) -> None:
            items = self.pop_mark()
            self._store(self.stack[-1], items)

        def _store(self, target: Any, items: Any) -> None:
            if len(items) % 2:
                raise DataFormatError("malformed channel data: odd number of items for SETITEMS")
            if type(target) is dict:
                self._insert(target, items, True)
            else:  # a list: item assignment by index hashes nothing
                for i in range(0, len(items), 2):
                    target[items[i]] = items[i + 1]

        def _dict(self) -> None:
            items = self.pop_mark()
            if len(items) % 2:
                raise DataFormatError("malformed channel data: odd number of items for DICT")
            d: Dict[Any, Any] = {}
            self._insert(d, items, True)
            self.append(d)

        def _additems(self) -> None:
            items = self.pop_mark()
            self._insert(self.stack[-1], items, False)

        def _frozenset(self) -> None:
            items = self.pop_mark()
            probe: set = set()  # type: ignore[type-arg]
            self._insert(probe, items, False)
            self.append(frozenset(probe))

        def _build(self) -> None:
            raise DataFormatError("refused a BUILD opcode: channel data never sets the state of an object")

        dispatch[pickle.SETITEM[0]] = _setitem
        dispatch[pickle.SETITEMS[0]] = _setitems
        dispatch[pickle.DICT[0]] = _dict
        dispatch[pickle.ADDITEMS[0]] = _additems
        dispatch[pickle.FROZENSET[0]] = _frozenset
        dispatch[pickle.BUILD[0]] = _build

    return _GuardedUnpickler
