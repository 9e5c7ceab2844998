"""The pool's wire messages: their names, their fields, and the master's check of them.

Both ends import this module: the pool worker loop (``poolworker``) and the
master's pool engine (``execpool._pool``).  A message on the task channel is a
tuple whose first item is one of the kinds below; payloads are pickle bytes.

master -> pool worker:

- the config dict, once, first (see ``poolworker.main``);
- ``(FUNCTION, fid, function)``: ``fid`` an int naming the function in later
  ``TASKS``; ``function`` the pickled callable;
- ``(TASKS, cid, fid, mode, items, buffers)``: ``cid`` an int naming the chunk,
  ``fid`` a function sent before, ``mode`` one of ``MODE_MAP`` (``f(item)``),
  ``MODE_STAR`` (``f(*item)``), ``MODE_APPLY`` (``f(*args, **kwargs)``),
  ``items`` the pickled list of the chunk's items, ``buffers`` its out-of-band
  pickle buffers (a list, usually empty: see :func:`dumps_oob`);
- ``(ADD_PATH, directories)``: a list of str put in front of ``sys.path``;
- ``(FORGET,)``: the worker drops its loaded functions (they are sent again);
- ``(EXIT,)``: the worker loop returns.

pool worker -> master (each field checked by :func:`from_worker`):

- ``(READY, info)``: once, after the initializer; ``info`` a dict whose
  ``"python"`` is the worker's ``sys.version_info[:3]`` (ints), with ``pid``,
  ``cwd`` and ``protocol``;
- ``(INIT_ERROR, pack)``: instead of ``READY`` when the initializer raised;
- ``(BEGUN, cid)``: the worker starts chunk ``cid`` (only when the config
  asked, for ``timeout=``);
- ``(RESULTS, cid, data, busy, errors, buffers)``: chunk ``cid`` is done;
  ``data`` the bytes of its results list, ``busy`` the seconds (a float >= 0)
  it ran; ``errors`` None or a list of ``(i, pack)``, ``i`` the position of the
  item that raised (-1: the whole chunk failed to load); ``buffers`` the
  out-of-band buffers of ``data`` (a list of bytes, bytearray or memoryview).

A ``pack`` is ``(pickled exception or None, type name, message, traceback
text)``, the three texts str.

Stdlib only, valid on CPython 3.8 (this file runs in every pool worker).
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

# -- master -> pool worker
FUNCTION = "function"
TASKS = "tasks"
ADD_PATH = "add_path"
FORGET = "forget"
EXIT = "exit"

# -- pool worker -> master
READY = "ready"
INIT_ERROR = "init_error"
BEGUN = "begun"
RESULTS = "results"

# -- how a task's item becomes a call
MODE_MAP = 0
MODE_STAR = 1
MODE_APPLY = 2

Pack = Tuple[Optional[bytes], str, str, str]


class MalformedMessage(ValueError):
    """A pool worker sent a message that breaks this module's contract; the text names the field."""


class Ready(NamedTuple):
    python: Tuple[int, ...]
    info: Dict[str, Any]


class InitError(NamedTuple):
    pack: Pack


class Begun(NamedTuple):
    cid: int


class Results(NamedTuple):
    cid: int
    data: bytes
    busy: float
    errors: Optional[List[Tuple[int, Pack]]]
    buffers: List[Any] = []


#: Buffers of at least this many bytes (numpy arrays, bytes, bytearray, ...) leave the pickle of
#: a pool's arguments or results and travel out of band, written and read without a copy.
OOB_MIN = 64 * 1024


def dumps_oob(obj: Any, protocol: int, dumps: Any = pickle.dumps) -> Tuple[bytes, List[Any]]:
    """Pickle ``obj`` (``dumps``: pickle's or cloudpickle's) with its large buffers out of band.

    Returns the pickle and its ``PickleBuffer`` list (empty below protocol 5), to be sent
    together; ``pickle.loads(data, buffers=...)`` takes them back.
    """
    if protocol < 5:
        return dumps(obj, protocol), []
    bufs: List[Any] = []

    def keep(buf: Any) -> bool:
        if buf.raw().nbytes < OOB_MIN:
            return True  # small: in band
        bufs.append(buf)
        return False

    data = dumps(obj, protocol, buffer_callback=keep)
    if len(data) >= OOB_MIN and type(obj) is list and len(data) >= 1024 * len(obj):
        # pickle writes bytes and bytearray in band: wrap the large ones among the items (and
        # the items' arguments) in PickleBuffer, and pickle again; they load as they were.
        # Only for items of 1 KiB and more on average: the walk then costs nothing beside
        # the pickling, and among many small items a few large ones copy little.
        wrapped = _wrap_buffers(obj)
        if wrapped is not None:
            bufs = []
            data = dumps(wrapped, protocol, buffer_callback=keep)
    return data, bufs


_BUFFER_WRAPPED = (bytes, bytearray)


def _wrap_buffers(items: List[Any]) -> Optional[List[Any]]:
    """``items`` with each bytes or bytearray of at least OOB_MIN bytes, there or in a tuple
    item, as a ``PickleBuffer`` (None if there is none)."""
    out = list(items)
    found = False
    for i, item in enumerate(out):
        tp = type(item)
        if tp in _BUFFER_WRAPPED:
            if len(item) >= OOB_MIN:
                out[i] = pickle.PickleBuffer(item)
                found = True
        elif tp is tuple and any(type(x) in _BUFFER_WRAPPED and len(x) >= OOB_MIN for x in item):
            out[i] = tuple(
                pickle.PickleBuffer(x) if type(x) in _BUFFER_WRAPPED and len(x) >= OOB_MIN else x for x in item
            )
            found = True
    return out if found else None


def size_of(data: bytes, buffers: List[Any]) -> int:
    """Bytes a pickle and its out-of-band buffers take on the wire."""
    return len(data) + sum(memoryview(b).nbytes for b in buffers)


WorkerMessage = Union[Ready, InitError, Begun, Results]

_ARITY = {READY: 2, INIT_ERROR: 2, BEGUN: 2, RESULTS: 6}
_BUFFER_TYPES = (bytes, bytearray, memoryview)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(kind: str, field: str, value: Any) -> int:
    if type(value) is not int:
        raise MalformedMessage("%s message: field %s is %s, not an int" % (kind, field, _short(value)))
    return value


def _pack(kind: str, field: str, value: Any) -> Pack:
    ok = (
        isinstance(value, tuple)
        and len(value) == 4
        and (value[0] is None or isinstance(value[0], bytes))
        and all(isinstance(v, str) for v in value[1:])
    )
    if not ok:
        raise MalformedMessage(
            "%s message: field %s is %s, not (bytes or None, str, str, str)" % (kind, field, _short(value))
        )
    return value  # type: ignore[no-any-return]


def from_worker(msg: Any) -> WorkerMessage:
    """The typed record of a message a pool worker sent; :class:`MalformedMessage` names what is wrong."""
    if not isinstance(msg, tuple) or not msg:
        raise MalformedMessage("a pool message is a non-empty tuple, not %s" % _short(msg))
    kind = msg[0]
    arity = _ARITY.get(kind) if isinstance(kind, str) else None
    if arity is None:
        raise MalformedMessage("unknown pool message kind %s" % _short(kind))
    if len(msg) != arity:
        raise MalformedMessage("%s message has %d fields, not %d" % (kind, len(msg), arity))
    if kind == RESULTS:
        _, cid, data, busy, errors, buffers = msg
        _int(kind, "cid", cid)
        if not isinstance(buffers, list) or not all(type(b) in _BUFFER_TYPES for b in buffers):
            raise MalformedMessage(
                "%s message: field buffers is %s, not a list of bytes-like" % (kind, _short(buffers))
            )
        if not isinstance(data, bytes):
            raise MalformedMessage("%s message: field data is %s, not bytes" % (kind, _short(data)))
        if type(busy) not in (int, float) or not math.isfinite(busy) or busy < 0:
            raise MalformedMessage("%s message: field busy is %s, not seconds >= 0" % (kind, _short(busy)))
        if errors is not None:
            if not isinstance(errors, list):
                raise MalformedMessage("%s message: field errors is %s, not a list" % (kind, _short(errors)))
            for entry in errors:
                if not isinstance(entry, tuple) or len(entry) != 2:
                    raise MalformedMessage("%s message: an errors entry is %s, not (i, pack)" % (kind, _short(entry)))
                _int(kind, "errors[].i", entry[0])
                _pack(kind, "errors[].pack", entry[1])
        return Results(cid, data, float(busy), errors, buffers)
    if kind == BEGUN:
        return Begun(_int(kind, "cid", msg[1]))
    if kind == INIT_ERROR:
        return InitError(_pack(kind, "pack", msg[1]))
    info = msg[1]
    if not isinstance(info, dict):
        raise MalformedMessage("%s message: field info is %s, not a dict" % (kind, _short(info)))
    python = info.get("python")
    if not isinstance(python, tuple) or len(python) < 2 or not all(type(v) is int for v in python):
        raise MalformedMessage("%s message: field info['python'] is %s, not a version tuple" % (kind, _short(python)))
    return Ready(python, info)
