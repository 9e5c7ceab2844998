"""Reading a message's opcodes and a loaded value's shape, without loading or hashing.

What the serializer asks before it loads a message: does it build a dict or set, how many of
its opcodes make a key that can share its hash with many others, how many make a container
(``needs_guard``, from ``scan`` and C-speed byte counts); and after: does the value nest
deeper than the limit (``shallow_by_levels`` quickly, ``deeper_than`` exactly), does it
hold a memoryview.  Nothing here hashes a value from the peer or recurses on it.

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import itertools
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

_ALL_BYTES = bytes(range(256))
#: Bytes of the opcodes that make a container that can hold another: tuple, list, dict, set, frozenset.
CONTAINER_OPS = b"t\x85\x86\x87]l}d\x8f\x91"
#: Of those, the opcodes that make a dict, a set or a frozenset: only they hash anything.
_HASHING_OPS = b"}d\x8f\x91"
_NOT_CONTAINER_OPS = bytes(b for b in _ALL_BYTES if b not in CONTAINER_OPS)
_NOT_HASHING_OPS = bytes(b for b in _ALL_BYTES if b not in _HASHING_OPS)
CONTAINER_TYPES = frozenset((tuple, list, dict, set, frozenset))
#: Opcodes that make a value which can share its hash with many others as a dict key or set
#: member: big ints, floats, tuples, frozensets, complex numbers (a persistent id).  Small
#: ints hash to themselves; str and bytes hashes are keyed at random per process -- unless
#: PYTHONHASHSEED fixes the key, and then their opcodes count too.
CAPABLE_OPS = b"\x8a\x8bGt\x85\x86\x87\x91Q"
if os.environ.get("PYTHONHASHSEED", "random") != "random":
    CAPABLE_OPS += b"\x8cX\x8dCB\x8eUT"
_NOT_CAPABLE_OPS = bytes(b for b in _ALL_BYTES if b not in CAPABLE_OPS)
#: A message with at most this many such opcodes goes to the C unpickler even when it builds
#: dicts or sets: no more keys than that can collide, so inserting costs at most this many
#: comparisons per key (a few hundred ns per byte of the message in the worst case).
CAPABLE_MAX = 32


def needs_guard(data: bytes, depth: int) -> Any:
    """(whether loading ``data`` needs the guarded loader, whether its nesting must be
    measured after loading, whether it may hold a READONLY_BUFFER opcode).  Cheapest test
    first: a few opcodes around large values (a bulk message), read exactly; then C-speed
    over-estimates that count every byte that could be an opcode of a kind (letters in
    strings count too); then, only when those cannot tell, every opcode read exactly."""
    few = scan(data, _FEW)
    if few is None:
        marks = data.translate(None, _NOT_CONTAINER_OPS)
        check_depth = len(marks) >= depth  # fewer container opcodes cannot nest that deep
        if not marks.translate(None, _NOT_HASHING_OPS):
            return False, check_depth, True  # nothing is hashed
        if len(data.translate(None, _NOT_CAPABLE_OPS)) <= CAPABLE_MAX:
            return False, check_depth, True  # too few keys that can collide, none deep
        few = scan(data, None)
        if few is None:
            return True, check_depth, True  # an opcode the reader does not know: the guarded loader reads it
    hashing, capable, containers, readonly = few
    return hashing and capable > CAPABLE_MAX, containers >= depth, readonly


#: Argument sizes of the opcodes ``scan`` knows, by opcode byte: a fixed size, or (negative)
#: the size of the little-endian length that precedes the argument.  None: an opcode it does
#: not read (the text opcodes, ended by a newline, and unknown bytes).
_ARG: List[Optional[int]] = [None] * 256
for _op in b"(.0 12NRabd}el]ost)uQ\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98":
    _ARG[_op] = 0
for _size, _ops in ((1, b"\x80Khq\x82"), (2, b"M\x83"), (4, b"Jjr\x84"), (8, b"G\x95")):
    for _op in _ops:
        _ARG[_op] = _size
for _size, _ops in ((-1, b"\x8cUC\x8a"), (-4, b"XTB\x8b"), (-8, b"\x8d\x8e\x96")):
    for _op in _ops:
        _ARG[_op] = _size
_FEW = 64


def scan(data: bytes, limit: Optional[int]) -> Any:
    """(builds a dict or set, opcodes that make collision-capable keys, container opcodes,
    holds READONLY_BUFFER) of the stream up to its STOP, read exactly as the C unpickler reads
    it (the same bytes in the same order: a FRAME is an opcode with an 8-byte argument here);
    None for a stream of more than ``limit`` opcodes, one with an opcode this reader does not
    know, or without a STOP.  Stops early, answering that the guard is needed, once the
    opcodes read so far show it."""
    pos = 0
    n = len(data)
    arg = _ARG
    kinds = bytearray()  # the opcodes read since the last look at them
    add = kinds.append
    count = 0
    hashing = False
    capable = containers = 0
    readonly = False
    while pos < n:
        op = data[pos]
        size = arg[op]
        if size is None:
            return None
        add(op)
        count += 1
        if op == 0x2E or not count & 255:  # STOP, or a look at what was read so far
            if limit is not None and count > limit:
                return None
            hashing = hashing or bool(kinds.translate(None, _NOT_HASHING_OPS))
            capable += len(kinds.translate(None, _NOT_CAPABLE_OPS))
            containers += len(kinds.translate(None, _NOT_CONTAINER_OPS))
            readonly = readonly or 0x98 in kinds
            if op == 0x2E:
                return (hashing, capable, containers, readonly)
            if hashing and capable > CAPABLE_MAX:
                # the guard is needed: no need to read on (every byte left might be a container)
                return (True, capable, containers + n - pos, True)
            del kinds[:]
        elif limit is not None and count > limit:
            return None
        if size >= 0:
            pos += size + 1
        elif size == -1:
            pos += data[pos + 1] + 2 if pos + 1 < n else n
        else:
            pos += int.from_bytes(data[pos + 1 : pos + 1 - size], "little") + 1 - size
    return None


def too_deep_message(limit: int) -> str:
    return (
        "refused channel data nested more than %d containers deep (the nesting limit: raise it with "
        "EXECPOOL_MAX_DEPTH on the loading side, or loads(max_depth=...))" % limit
    )


def shallow_by_levels(value: Any, limit: int) -> bool:
    """True if ``value`` surely nests at most ``limit`` containers deep; False if this quick
    test cannot tell (then the exact one runs).  Level by level, each level the containers
    held by the one before (once each per level), found with C-level iteration only; it
    gives up on a level count over ``limit`` (deep data, or a cycle) or on more work than
    ``_LEVEL_WORK`` containers (shared references can make levels repeat containers)."""
    level = [value]
    seen = 0
    compress, flat = itertools.compress, itertools.chain.from_iterable
    contains, is_dict, not_dict = CONTAINER_TYPES.__contains__, _DICT_ONLY.__contains__, _NOT_DICT.__contains__
    values = dict.values
    for _ in range(limit):
        types = list(map(type, level))
        dicts = list(compress(level, map(is_dict, types)))
        items = list(flat(compress(level, map(not_dict, types))))
        if dicts:
            items.extend(flat(dicts))
            items.extend(flat(map(values, dicts)))
        level = list(compress(items, map(contains, map(type, items))))
        if not level:
            return True
        if len(level) > 1:
            level = list(dict(zip(map(id, level), level)).values())  # noqa: B905 (3.8 has no strict=)
        seen += len(level)
        if seen > _LEVEL_WORK:
            return False
    return False


#: Containers the level-by-level test may visit before it leaves a message to the exact one.
_LEVEL_WORK = 1 << 20
_DICT_ONLY = frozenset((dict,))
_NOT_DICT = frozenset((tuple, list, set, frozenset))


def deeper_than(value: Any, limit: int, follow: Any, heights: Dict[int, Any]) -> bool:
    """True if a chain of nested containers of the types ``follow`` in ``value`` is longer
    than ``limit``.  Iterative (no recursion), each container measured once: ``heights``
    maps id() to (container, height) and keeps what it measured alive.  A container met
    again on its own path (a cycle) counts as a leaf there."""
    if type(value) not in follow:
        return False
    hit = heights.get(id(value))
    if hit is not None:
        return bool(hit[1] > limit)
    path = [[value, _kids(value, follow), 0]]
    onpath = {id(value)}
    while path:
        top = path[-1]
        for child in top[1]:
            if type(child) not in follow:
                continue
            known = heights.get(id(child))
            if known is not None:
                if known[1] > top[2]:
                    top[2] = known[1]
                continue
            if id(child) in onpath:
                continue
            if len(path) >= limit:
                return True
            onpath.add(id(child))
            path.append([child, _kids(child, follow), 0])
            break
        else:
            path.pop()
            onpath.discard(id(top[0]))
            height = top[2] + 1
            if height > limit:
                return True
            heights[id(top[0])] = (top[0], height)
            if path and height > path[-1][2]:
                path[-1][2] = height
    return False


def _kids(container: Any, follow: Any) -> Any:
    """An iterator over what ``container`` holds, empty at C speed when it holds no container."""
    if type(container) is dict:
        if follow.isdisjoint(map(type, container)) and follow.isdisjoint(map(type, container.values())):
            return iter(())
        return itertools.chain(container, container.values())
    if follow.isdisjoint(map(type, container)):
        return iter(())
    return iter(container)


TUPLE_ONLY = frozenset((tuple,))


def holds_memoryview(value: Any) -> bool:
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
