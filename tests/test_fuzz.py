"""Fuzz tests of the protocol layer and the channel-data serializer (the hardening issue).

Each layer gets what a broken or hostile peer could send, and each guarantee is a test
that fails when it breaks:

* ``FrameParser``: random bytes and mutated frame streams (bit flips, truncation,
  insertion, deletion, length fields set to huge values, unknown types), read the way the
  connection's reader reads them, decode to exactly what a reference decoder of the
  format says -- the frames, then a :class:`ProtocolError` at the first bad header or a
  wait for the rest of an unfinished frame -- every parser call makes progress (a reader
  cannot loop), and a header declaring more than the cap allocates nothing near it.
* ``loads``: random bytes, opcode soup and mutated ``dumps`` output of generated values
  load to supported builtin values or raise :class:`DataFormatError`, nothing else; no
  module is imported, no audit event is raised, no Python function but the loader's own
  runs, and memory stays linear in the input.  Code-running gadgets planted at random
  opcode boundaries of valid data are refused by ``find_class``, with no side effect.
* a real gateway whose worker writes garbage to its protocol stream: the master does not
  hang, ends that connection, every open channel sees :class:`GatewayLostError` (a
  callback its endmarker), the worker exits, and the master's memory does not jump.

Every hypothesis test runs a few examples by default and many more under ``pytest --long``
(the ``long_run`` fixture picks ``max_examples``); each prints how many it ran (see them
with ``-rP``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import importlib.util
import io
import itertools
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import execpool
from _helpers import process_gone, wait_until
from execpool import DataFormatError, GatewayLostError, ProtocolError, dumps, loads
from execpool._shipped import loadcheck as _loadcheck
from execpool._shipped import serial as _serial
from execpool._shipped.connection import LARGE
from execpool._shipped.frames import (
    CLOSE,
    CLOSE_ERROR,
    DATA,
    EXEC,
    HEADER_SIZE,
    HELLO,
    STATUS,
    TERMINATE,
    FrameParser,
    frame_header,
    type_name,
)

TYPES = (EXEC, DATA, CLOSE, CLOSE_ERROR, STATUS, TERMINATE, HELLO)
#: The frame cap of these tests: small, so that "beyond the cap" is cheap to reach.
CAP = 64 * 1024
U32 = 2**32 - 1
KIB = 1024
MIB = 1024 * 1024

Frame = tuple[int, int, bytes]


# -- running hypothesis with a size chosen at run time ------------------------------------


def fuzz(
    long_run: bool,
    short: int,
    long: int,
    strategy: st.SearchStrategy[tuple[Any, ...]],
    check: Callable[..., None],
    examples: Iterable[tuple[Any, ...]] = (),
) -> None:
    """Run ``check(*args)`` for ``short`` generated examples (``long`` under ``--long``).

    ``examples`` always run first.  Prints how many examples ran.
    """
    ran = 0

    def run(args: tuple[Any, ...]) -> None:
        nonlocal ran
        ran += 1
        check(*args)

    n = long if long_run else short
    test = given(strategy)(run)
    for args in examples:
        test = example(args)(test)
    settings(
        max_examples=n,
        deadline=None,
        database=None,  # every test here runs the same inner function: a shared database key would mix them
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )(test)()
    print("%s: %d examples run (max_examples=%d)" % (check.__name__, ran, n))
    assert ran > 0


@contextlib.contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Measure with tracemalloc (every thread): the list receives, at the end, the peak
    traced allocation above what was allocated at the start."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out: list[int] = []
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1] - base)
        if not was_tracing:
            tracemalloc.stop()


def encode(mtype: int, channel: int, payload: bytes) -> bytes:
    return frame_header(mtype, channel, len(payload)) + payload


def chunk(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the points ``cuts`` name (modulo its length), empty pieces dropped."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def mutate(data: bytes, mutations: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Apply byte-level mutations: flip a bit, set a byte, insert, delete, truncate, duplicate."""
    out = bytearray(data)
    for kind, where, blob in mutations:
        i = where % (len(out) + 1)
        if kind in ("flip", "set"):
            if not out:
                continue
            i %= len(out)
            if kind == "flip":
                out[i] ^= 1 << (blob[0] % 8)
            else:
                out[i] = blob[0]
        elif kind == "insert":
            out[i:i] = blob
        elif kind == "delete":
            del out[i : i + len(blob)]
        elif kind == "truncate":
            del out[i:]
        else:  # duplicate a stretch in place
            out[i:i] = out[i : i + 8 * len(blob)]
    return bytes(out)


_byte_mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]),
        st.integers(min_value=0, max_value=2**24),
        st.binary(min_size=1, max_size=12),
    ),
    max_size=4,
)


# == 1. the frame parser ===================================================================


def reference_decode(data: bytes, cap: int) -> tuple[list[Frame], str, int]:
    """What the wire format says ``data`` is: ``(frames, end, pos)``.

    ``end`` is ``"error"`` (the header at ``pos`` has an unknown type or declares more
    than ``cap``), ``"partial"`` (an unfinished frame starts at ``pos``) or ``"clean"``.
    Written from the format's description (9-byte header ``!BII``), not from the parser.
    """
    frames = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        mtype, channel, length = struct.unpack_from("!BII", data, pos)
        if mtype not in TYPES or length > cap:
            return frames, "error", pos
        end = pos + HEADER_SIZE + length
        if end > len(data):
            break
        frames.append((mtype, channel, data[pos + HEADER_SIZE : end]))
        pos = end
    return frames, ("clean" if pos == len(data) else "partial"), pos


@dataclasses.dataclass
class Reading:
    frames: list[Frame]
    end: str  # "clean", "partial" or "error"
    error: BaseException | None
    parser: FrameParser
    unfinished: int  # bytes of an unfinished frame at the end of the stream


def read_like_the_connection(data: bytes, cuts: Iterable[int], cap: int, threshold: int | None) -> Reading:
    """Feed ``data`` in the pieces ``cuts`` make, as ``BaseGateway._read_loop`` reads:
    every complete frame, else ``take_large(threshold)`` and the rest of that payload read
    straight from the stream (``threshold=None``: never).  Any exception but
    ProtocolError propagates.  Checks, on every call, that the parser makes progress:
    a frame consumes exactly its bytes, and ``need()`` is never 0 (a reader asking for 0
    bytes would spin)."""
    parser = FrameParser(cap)
    pieces = collections.deque(chunk(data, cuts))
    frames: list[Frame] = []
    calls = 0
    # each call returns a frame (>= 9 bytes consumed), hands over a large one, or waits for a piece
    budget = 2 * len(pieces) + 2 * (len(data) // HEADER_SIZE) + 4
    try:
        while pieces:
            parser.feed(pieces.popleft())
            while True:
                calls += 1
                assert calls <= budget, "the parser stopped making progress: a reader would loop forever"
                held = parser.pending()
                assert parser.need() >= 1
                frame = parser.next_frame()
                if frame is not None:
                    mtype, _, payload = frame
                    assert type(payload) is bytes
                    assert mtype in TYPES and len(payload) <= cap
                    assert parser.pending() == held - HEADER_SIZE - len(payload)
                    frames.append(frame)
                    continue
                large = parser.take_large(threshold) if threshold is not None else None
                if large is None:
                    break
                mtype, channel, length, part = large
                assert mtype in TYPES and threshold is not None and threshold <= length <= cap
                assert len(part) == held - HEADER_SIZE < length and parser.pending() == 0
                body = bytearray(part)  # the reader allocates `length` here: bounded by the cap
                while len(body) < length and pieces:
                    piece = pieces.popleft()
                    take = length - len(body)
                    body += piece[:take]
                    if len(piece) > take:
                        pieces.appendleft(piece[take:])
                if len(body) < length:  # the stream ended inside this frame
                    return Reading(frames, "partial", None, parser, HEADER_SIZE + len(body))
                frames.append((mtype, channel, bytes(body)))
    except ProtocolError as exc:
        return Reading(frames, "error", exc, parser, 0)
    held = parser.pending()
    return Reading(frames, "partial" if held else "clean", None, parser, held)


def check_stream(data: bytes, cuts: list[int], cap: int, threshold: int | None) -> None:
    want_frames, want_end, pos = reference_decode(data, cap)
    got = read_like_the_connection(data, cuts, cap, threshold)
    assert got.frames == want_frames
    assert got.end == want_end
    if want_end == "error":
        assert type(got.error) is ProtocolError
        mtype, _, length = struct.unpack_from("!BII", data, pos)
        if mtype not in TYPES:
            assert "unknown type %d" % mtype in str(got.error)
        else:
            assert "declaring %d bytes" % length in str(got.error)
        for _ in range(2):  # the stream cannot be trusted after the error: the parser keeps saying so
            with pytest.raises(ProtocolError):
                got.parser.next_frame()
            assert got.parser.take_large(0) is None
        return
    assert got.unfinished == len(data) - pos
    held = got.parser.pending()
    if held:  # what is left is the start of a frame, and need() says how much of it is missing
        assert held == len(data) - pos
        if held < HEADER_SIZE:
            assert got.parser.need() == HEADER_SIZE - held
        else:
            length = struct.unpack_from("!BII", data, pos)[2]
            assert got.parser.need() == HEADER_SIZE + length - held


def build_stream(frames: list[Frame], header_mutations: list[tuple[str, int, int]]) -> bytes:
    """Encode ``frames``, then rewrite header fields: ``("length", k, n)`` sets frame k's
    length field to n, ``("type", k, t)`` its type byte."""
    out = bytearray()
    starts = []
    for frame in frames:
        starts.append(len(out))
        out += encode(*frame)
    for field, k, value in header_mutations:
        if not starts:
            break
        at = starts[k % len(starts)]
        if field == "length":
            out[at + 5 : at + 9] = struct.pack("!I", value)
        else:
            out[at] = value
    return bytes(out)


_channels = st.sampled_from([0, 1, 2, 3, 2**31, U32]) | st.integers(0, U32)
_payloads = st.one_of(
    st.binary(max_size=48),
    st.binary(max_size=48),
    st.sampled_from([1023, 1024, 1025, CAP - 1, CAP]).map(lambda n: b"\xa5" * n),
)
_frame_lists = st.lists(st.tuples(st.sampled_from(TYPES), _channels, _payloads), max_size=8)
_lengths = st.one_of(
    st.sampled_from([0, 1, CAP - 1, CAP, CAP + 1, 2**31 - 1, 2**31, U32]),
    st.integers(CAP + 1, U32),
    st.integers(0, CAP),
)
_header_mutations = st.lists(
    st.tuples(st.just("length"), st.integers(0, 63), _lengths)
    | st.tuples(st.just("type"), st.integers(0, 63), st.integers(0, 255)),
    max_size=3,
)
_streams = st.one_of(
    st.builds(mutate, st.builds(build_stream, _frame_lists, _header_mutations), _byte_mutations),
    st.binary(max_size=512),
    st.builds(lambda frames, tail: b"".join(encode(*f) for f in frames) + tail, _frame_lists, st.binary(max_size=32)),
)


@pytest.mark.timeout(900)  # the --long variant runs for minutes
def test_fuzz_parser_decodes_random_and_mutated_streams_as_the_format_says(long_run: bool) -> None:
    fuzz(
        long_run,
        300,
        30_000,
        st.tuples(
            _streams,
            st.lists(st.integers(min_value=0), max_size=24),
            st.sampled_from([1024, CAP]),
            st.none() | st.integers(0, 300) | st.just(1024),
        ),
        check_stream,
        examples=[
            (frame_header(DATA, 1, U32) + b"x" * 100, [3, 50], CAP, None),
            (encode(DATA, 1, b"ok") + frame_header(0xEE, 2, 0), [], CAP, 0),
            (encode(DATA, 1, b"\xa5" * 600)[:-1], [1, 9, 10, 300], CAP, 100),
            (b"\x02\x00", [1], CAP, 0),
        ],
    )


def check_huge_header(prefix: list[Frame], mtype: int, declared: int, tail: int, read: int) -> None:
    """A stream of good frames, then a header declaring ``declared`` (> CAP) bytes and
    ``tail`` more bytes, read ``read`` bytes at a time: refused, nothing near ``declared``
    (or even the cap) allocated."""
    head = b"".join(encode(*f) for f in prefix)
    data = head + frame_header(mtype, 7, declared) + b"\x5a" * tail  # built before measuring
    view = memoryview(data)
    parser = FrameParser(CAP)
    parser.feed(head)  # the good frames, untraced
    assert len(parser.frames()) == len(prefix)
    pos = len(head)
    with traced_peak() as peak, pytest.raises(ProtocolError, match="declaring %d bytes" % declared):
        while pos < len(data):
            parser.feed(view[pos : pos + read])
            pos += read
            parser.frames()
        parser.frames()  # a tail of 0 bytes: the header alone is enough to refuse
    assert peak[0] < CAP + 16 * KIB, "feeding a header declaring %d bytes allocated %d bytes" % (declared, peak[0])


@pytest.mark.timeout(900)  # the --long variant runs for minutes
def test_fuzz_parser_a_header_declaring_more_than_the_cap_allocates_nothing_near_it(long_run: bool) -> None:
    fuzz(
        long_run,
        40,
        3_000,
        st.tuples(
            st.lists(st.tuples(st.sampled_from(TYPES), _channels, _payloads), max_size=4),
            st.sampled_from(TYPES),
            st.sampled_from([CAP + 1, 2**31, U32]) | st.integers(CAP + 1, U32),
            st.sampled_from([0, 1, 4 * KIB, 2 * CAP, MIB]),
            st.sampled_from([1, 9, 4 * KIB, 16 * KIB]) | st.integers(1, 16 * KIB),
        ),
        check_huge_header,
        examples=[([], DATA, U32, MIB, 4 * KIB), ([(DATA, 1, b"\xa5" * CAP)], EXEC, 2**31, 2 * CAP, 16 * KIB)],
    )


def check_unfinished_frame(declared: int, missing: int, read: int) -> None:
    """A header declaring ``declared`` <= CAP bytes and all but ``missing`` of them, read
    ``read`` bytes at a time: the parser waits, holding the frame's bytes and at most one
    read more (plus bytearray's growth slack of an eighth)."""
    missing = min(missing, declared)
    data = frame_header(DATA, 1, declared) + b"\x5a" * (declared - missing)
    view = memoryview(data)
    parser = FrameParser(CAP)
    with traced_peak() as peak:
        for pos in range(0, len(data), read):
            parser.feed(view[pos : pos + read])
            assert parser.next_frame() is None
    assert parser.need() == missing
    assert peak[0] < declared + HEADER_SIZE + read + declared // 8 + 16 * KIB
    assert peak[0] < CAP + read + CAP // 8 + 16 * KIB


@pytest.mark.timeout(900)  # the --long variant runs for minutes
def test_fuzz_parser_an_unfinished_frame_up_to_the_cap_holds_only_its_own_bytes(long_run: bool) -> None:
    fuzz(
        long_run,
        25,
        2_000,
        st.tuples(
            st.sampled_from([CAP, CAP - 1]) | st.integers(1, CAP),
            st.sampled_from([1, 2, 4 * KIB]) | st.integers(1, CAP),
            st.sampled_from([512, 4 * KIB, 16 * KIB]) | st.integers(512, 16 * KIB),
        ),
        check_unfinished_frame,
        examples=[(CAP, 1, 4 * KIB), (CAP, 1, 16 * KIB)],
    )


# == 2. the serializer =====================================================================

# -- known gaps, kept out of the fuzz input ---------------------------------------------------
#
# CPython's C unpickler (before gh-115952) has two memory amplifications that ``loads`` does
# not guard against yet; fuzzing straight into them would only rediscover them, each time at
# a cost of up to gigabytes:
#
# * a PUT / LONG_BINPUT with a huge memo index grows the memo table to twice that index:
#   tests/test_serial.py::test_loads_memo_index_does_not_amplify_memory (strict xfail);
# * BINBYTES / BINBYTES8 / BYTEARRAY8 allocate their declared length before reading it, so
#   a message of a few bytes declaring gigabytes allocates them (virtual memory: untouched,
#   then freed): test_loads_declared_length_allocates_no_more_than_the_input below (strict
#   xfail); when that allocation fails for a BYTEARRAY8, CPython also calls sys.excepthook:
#   test_loads_of_a_bytearray_too_large_to_allocate_calls_no_hook below (strict xfail).
#
# ``without_known_gaps`` takes them out of fuzz input while keeping its length and the
# opcodes the unpickler reads: memo indices become small, and a counted-bytes opcode whose
# data runs past the end declares one byte more than there is (still truncated, but small).
# READONLY_BUFFER (once a known gap, now refused by loads) stays in the fuzz input.

_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_COUNT_WIDTH = {
    pickletools.TAKEN_FROM_ARGUMENT1: 1,
    pickletools.TAKEN_FROM_ARGUMENT4: 4,
    pickletools.TAKEN_FROM_ARGUMENT4U: 4,
    pickletools.TAKEN_FROM_ARGUMENT8U: 8,
}
_READ_INTO = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"})


class UnpicklerInput:
    """Where the C unpickler (CPython 3.8-3.13) reads each argument from, reading a BytesIO.

    It reads from a buffer that ends at the stream position: bytes between ``i`` and
    ``pos`` are buffered but unread.  Without FRAME the buffer is always used up (every
    read takes exactly what it needs from the stream).  FRAME reads its length's worth
    into the buffer, unless that much is buffered already.  A read that the buffer cannot
    satisfy whole drops the rest of the buffer and reads afresh from the stream (so in a
    FRAME whose length is wrong, an argument can come from other bytes than a straight
    reading suggests); only the payloads of the BINBYTES family and BYTEARRAY8 (read with
    readinto) take the rest of the buffer and continue in the stream.  Methods return
    where the bytes came from, or None when the stream ends first (the unpickler fails).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = self.pos = 0

    def read(self, n: int) -> int | None:
        if n <= self.pos - self.i:
            self.i += n
            return self.i - n
        if self.pos + n > len(self.data):
            return None
        self.pos = self.i = self.pos + n
        return self.pos - n

    def readline(self) -> tuple[int, int] | None:
        newline = self.data.find(b"\n", self.i, self.pos)
        if newline >= 0:  # in the buffer
            start, self.i = self.i, newline + 1
            return start, self.i
        newline = self.data.find(b"\n", self.pos)
        if newline < 0:
            return None
        start, self.pos = self.pos, newline + 1
        self.i = self.pos
        return start, self.pos

    def frame(self, n: int) -> bool:
        if n <= self.pos - self.i:
            return True
        if self.pos + n > len(self.data):
            return False
        self.i = self.pos
        self.pos += n
        return True

    def readinto(self, n: int) -> bool:
        if n <= self.pos - self.i:
            self.i += n
            return True
        rest = n - (self.pos - self.i)
        if self.pos + rest > len(self.data):
            return False
        self.pos += rest
        self.i = self.pos
        return True


def unpickler_reads(data: bytes) -> Iterator[tuple[str, tuple[int, int], int]]:
    """``(opcode name, (start, end) of its argument or count bytes, count)`` for each opcode
    the C unpickler reads from ``data``, until it must stop (unknown opcode, the stream ends
    first, STOP); a count is -1 for opcodes without one.  Values (the stack, the memo) are
    not checked, so this may go on where the unpickler would already have failed."""
    src = UnpicklerInput(data)
    while True:
        at = src.read(1)
        op = None if at is None else _OPCODES.get(data[at : at + 1])
        if op is None:
            return
        arg = op.arg
        if arg is None:
            yield op.name, (at + 1, at + 1), -1
            if op.name == "STOP":
                return
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if op.name in ("GLOBAL", "INST") else 1):
                line = src.readline()
                if line is None:
                    return
                yield op.name, line, -1
        elif arg.n >= 0:
            at = src.read(arg.n)
            if at is None:
                return
            yield op.name, (at, at + arg.n), -1
            if op.name == "FRAME" and not src.frame(int.from_bytes(data[at : at + 8], "little")):
                return
        else:
            width = _COUNT_WIDTH[arg.n]
            at = src.read(width)
            if at is None:
                return
            count = int.from_bytes(data[at : at + width], "little", signed=arg.n == pickletools.TAKEN_FROM_ARGUMENT4)
            yield op.name, (at, at + width), count
            if count < 0 or not (src.readinto(count) if op.name in _READ_INTO else src.read(count) is not None):
                return


def without_known_gaps(data: bytes) -> bytes:
    """``data`` with the known memory gaps of the C unpickler taken out (see above)."""
    out = bytearray(data)
    for name, (start, end), count in unpickler_reads(data):
        if name == "LONG_BINPUT":
            out[start:end] = (int.from_bytes(data[start:end], "little") % 4096).to_bytes(4, "little")
        elif name == "PUT":
            out[start : end - 1] = bytes(48 if 48 <= b <= 57 else b for b in data[start : end - 1])  # digits -> "0"
        elif name in ("BINBYTES", "BINBYTES8", "BYTEARRAY8") and count > len(data) - end:
            # more than follows the count (in the buffer and the stream): truncated, so make it small
            out[start:end] = (len(data) - end + 1).to_bytes(end - start, "little")
    return bytes(out)


def test_without_known_gaps_takes_out_exactly_the_gaps() -> None:
    # the fuzz tests rely on it: it must defuse what it claims to, and leave the rest alone
    assert without_known_gaps(b"\x80\x05Nr\x00\x00\x00\x40.") == b"\x80\x05Nr\x00\x00\x00\x00."
    assert without_known_gaps(b"\x80\x05Np1_000_000\n.") == b"\x80\x05Np0_000_000\n."
    assert without_known_gaps(b"\x80\x05B\xff\xff\xff\xffabc") == b"\x80\x05B\x04\x00\x00\x00abc"
    assert without_known_gaps(b"\x96" + struct.pack("<Q", 2**40) + b"ab") == b"\x96\x03" + bytes(7) + b"ab"
    for harmless in [dumps([1, "r", b"\x98B", bytearray(b"p9\n"), {2**70: (1.5, 2j)}]), b"S'r\x00\x00\x00\x40'\n."]:
        assert without_known_gaps(harmless) == harmless
    assert loads(without_known_gaps(dumps([bytearray(b"x" * 300)] * 2))) == [bytearray(b"x" * 300)] * 2


@pytest.mark.parametrize(
    "data",
    [
        # found by the fuzz test: inside a FRAME 8 bytes too short, a count straddles the frame's end, and
        # the unpickler takes it from the 4 bytes after the frame instead (1.6 GB for BINBYTES, 7e18 for
        # BYTEARRAY8)
        b"\x80\x05\x95\x13\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94GC`\xfaOE\x9elZaB\x05\x00\x00\x00h\x01e.",
        b"\x80\x05\x95.\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94(\x96\x01\x00\x00\x00\x00\x00\x00\x00j\x94\x96\x01"
        b"\x00\x00\x00\x00\x00\x00\x00j\x94\x8c\x02chJ\x01\x00\x00\x00\x86Q\x96\x01\x00\x00\x00\x00\x00\x00\x00\x00\x94h\x01eh"
        b"\x01e.",
        # a LONG_BINPUT whose index is read from after a FRAME that ends inside it
        b"\x80\x05\x95\x03\x00\x00\x00\x00\x00\x00\x00Nr\x00\x00\x00\x00\x01.",
    ],
    ids=["BINBYTES-count-across-a-frame", "BYTEARRAY8-count-across-a-frame", "LONG_BINPUT-across-a-frame"],
)
def test_without_known_gaps_reads_arguments_where_the_unpickler_does(data: bytes) -> None:
    w = watched_loads(without_known_gaps(data), ChannelStub)
    assert w.peak < 256 * KIB, "the known gap is still in the data: %d bytes allocated" % w.peak


# -- what one loads call did ----------------------------------------------------------------

_watch_local = threading.local()
_audit_hook_installed = False


#: Audit events the loader's own code raises: id() (its check for memoryviews walks the value).
_HARMLESS_EVENTS = frozenset({"builtins.id"})


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    log = getattr(_watch_local, "audit", None)
    if log is not None and event not in _HARMLESS_EVENTS:
        log.append(event)


@dataclasses.dataclass
class Watched:
    value: Any
    error: DataFormatError | None
    new_modules: set[str]
    audit_events: list[str]
    foreign_calls: list[str]
    peak: int


_LOADER_FILES = {
    _serial.__file__,
    _loadcheck.__file__,
    pickletools.__file__,
    pickle.__file__,
}  # pickletools: loads' EXT check, when copyreg has a cache; pickle: the guarded loader of messages that may hash


def watched_loads(data: bytes, channel_for_id: Callable[[int], Any] | None = None) -> Watched:
    """``loads(data)``, recording for this thread the modules it added to ``sys.modules``,
    the audit events it raised (``os.system``, ``exec``, ``import``, ``open``, ...), the
    Python functions it ran other than the loader's own and ``channel_for_id``, and its
    peak traced memory.  Exceptions other than DataFormatError propagate."""
    global _audit_hook_installed
    if not _audit_hook_installed:
        sys.addaudithook(_audit_hook)  # permanent, but records only while a thread watches
        _audit_hook_installed = True
    allowed = {ChannelStub.__init__.__code__}
    if isinstance(channel_for_id, type(watched_loads)):
        allowed.add(channel_for_id.__code__)
    audit: list[str] = []
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            _watch_local.audit = None  # reading frame.f_code raises an audit event of its own
            code = frame.f_code
            if code not in allowed and code.co_filename not in _LOADER_FILES:
                calls.append("%s (%s:%d)" % (code.co_qualname, code.co_filename, code.co_firstlineno))
            _watch_local.audit = audit

    modules = set(sys.modules)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no finalizer of unrelated garbage may run inside the watch
    value = error = None
    try:
        with traced_peak() as peak:
            sys.setprofile(profile)
            _watch_local.audit = audit
            try:
                value = loads(data, channel_for_id)
            except DataFormatError as exc:
                error = exc
            finally:
                _watch_local.audit = None
                sys.setprofile(None)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Watched(value, error, set(sys.modules) - modules, audit, calls, peak[0])


_BUILTIN_TYPES = frozenset(
    {type(None), bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset}
)


def assert_builtin_value(value: Any, extra: tuple[type, ...] = ()) -> None:
    """Every node of ``value`` (dict keys and set members too) is of a supported type."""
    allowed = _BUILTIN_TYPES | set(extra)
    stack = [value]
    seen = set()
    while stack:
        v = stack.pop()
        assert type(v) in allowed, "loads returned a %s inside its value" % type(v).__name__
        if type(v) in (tuple, list, set, frozenset, dict) and id(v) not in seen:
            seen.add(id(v))
            if type(v) is dict:
                stack.extend(v.keys())
                stack.extend(v.values())
            else:
                stack.extend(v)


class ChannelStub:
    """What ``channel_for_id`` hands back in these tests: no methods the unpickler could call."""

    __slots__ = ("id",)
    _execpool_channel = True

    def __init__(self, id: int) -> None:
        self.id = id


def assert_loads_is_safe(data: bytes, with_channels: bool) -> None:
    resolved: list[Any] = []

    def channel_for_id(cid: Any) -> ChannelStub:
        resolved.append(cid)
        return ChannelStub(cid)

    w = watched_loads(data, channel_for_id if with_channels else None)
    assert w.new_modules == set(), "loads imported %s" % sorted(w.new_modules)
    assert w.audit_events == [], "loads raised audit events %s" % w.audit_events
    assert w.foreign_calls == [], "loads ran Python code: %s" % w.foreign_calls
    # linear in the input: no single opcode may make the loader allocate far more than it read
    assert w.peak <= 300 * len(data) + 256 * KIB, "a %d-byte input made loads allocate %d bytes" % (len(data), w.peak)
    assert all(type(c) is int and 0 < c < 2**31 for c in resolved), resolved
    if w.error is not None:
        assert isinstance(w.error, DataFormatError) and not isinstance(w.error, ProtocolError)
        return
    assert_builtin_value(w.value, (ChannelStub,) if with_channels else ())


# -- what to feed loads -------------------------------------------------------------------------


def _with_self(items: list[Any]) -> list[Any]:
    items.append(items)
    return items


_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**2000), max_value=2**2000),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**4000, -(2**4000)]),
    st.floats(),  # nan and infinities included
    st.complex_numbers(),
    st.text(max_size=16),
    st.binary(max_size=16),
)
_hashables = _atoms | st.lists(_atoms, max_size=3).map(tuple) | st.frozensets(_atoms, max_size=3)
_values = st.recursive(
    _atoms | st.binary(max_size=16).map(bytearray),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_hashables, inner, max_size=4),
        st.sets(_hashables, max_size=4),
        st.frozensets(_hashables, max_size=4),
        inner.map(lambda v: [v, v]),  # shared: memo GETs in the stream
        st.lists(inner, max_size=3).map(_with_self),  # self-referential
    ),
    max_leaves=12,
)


def _short_unicode(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw


_NO_ARGUMENT = [op.code.encode("latin-1") for op in pickletools.opcodes if op.arg is None]
_u8 = st.integers(0, 255).map(lambda n: bytes([n]))
_u32 = st.sampled_from([0, 1, 255, 2**16, 2**31 - 1, U32]) | st.integers(0, U32)
_u64 = st.sampled_from([0, 3, 2**32, 2**62, 2**64 - 1]) | st.integers(0, 2**64 - 1)
_texts = st.text(max_size=12)
_MODULES = ["os", "posix", "subprocess", "builtins", "__builtin__", "copyreg", "importlib", "execpool_fuzz_planted"]
_NAMES = ["system", "call", "Popen", "exec", "eval", "__import__", "getattr", "_reconstructor", "import_module", "f"]
_globals = st.tuples(st.sampled_from(_MODULES), st.sampled_from(_NAMES))
_snippets = st.one_of(
    st.sampled_from(_NO_ARGUMENT),
    st.builds(lambda o, b: o + b, st.sampled_from([pickle.BININT1, pickle.BINGET, pickle.BINPUT, pickle.EXT1]), _u8),
    st.builds(lambda n: pickle.BININT2 + struct.pack("<H", n), st.integers(0, 2**16 - 1)),
    st.builds(lambda n: pickle.BININT + struct.pack("<i", n), st.integers(-(2**31), 2**31 - 1)),
    st.builds(lambda n: pickle.LONG_BINGET + struct.pack("<I", n), _u32),
    st.builds(lambda n: pickle.EXT2 + struct.pack("<H", n), st.integers(0, 2**16 - 1)),
    st.builds(lambda n: pickle.EXT4 + struct.pack("<i", n), st.integers(-(2**31), 2**31 - 1)),
    st.builds(lambda b: pickle.LONG1 + bytes([len(b)]) + b, st.binary(max_size=20)),
    st.builds(
        lambda n, b: pickle.LONG4 + struct.pack("<i", n) + b,
        st.sampled_from([0, 3, 2**31 - 1, -1]),
        st.binary(max_size=8),
    ),
    st.builds(lambda s: pickle.INT + s.encode() + b"\n", st.sampled_from(["0", "00", "01", "-7", "1_0", "9" * 30])),
    st.builds(lambda s: pickle.LONG + s.encode() + b"\n", st.sampled_from(["0L", "12345678901234567890L", "x"])),
    st.builds(lambda s: pickle.FLOAT + s.encode() + b"\n", st.sampled_from(["1.5", "nan", "-inf", "1e999", "?"])),
    st.builds(lambda f: pickle.BINFLOAT + struct.pack(">d", f), st.floats()),
    st.builds(_short_unicode, _texts),
    st.builds(lambda n, t: pickle.BINUNICODE + struct.pack("<I", n) + t.encode(), _u32, _texts),
    st.builds(lambda n, t: pickle.BINUNICODE8 + struct.pack("<Q", n) + t.encode(), _u64, _texts),
    st.builds(
        lambda t: pickle.UNICODE + t.encode("raw-unicode-escape") + b"\n", _texts.filter(lambda t: "\n" not in t)
    ),
    st.builds(lambda b: pickle.SHORT_BINBYTES + bytes([len(b)]) + b, st.binary(max_size=20)),
    st.builds(lambda n, b: pickle.BINBYTES + struct.pack("<I", n) + b, _u32, st.binary(max_size=8)),
    st.builds(lambda n, b: pickle.BINBYTES8 + struct.pack("<Q", n) + b, _u64, st.binary(max_size=8)),
    st.builds(lambda n, b: pickle.BYTEARRAY8 + struct.pack("<Q", n) + b, _u64, st.binary(max_size=8)),
    st.builds(lambda b: pickle.SHORT_BINSTRING + bytes([len(b)]) + b, st.binary(max_size=20)),
    st.builds(
        lambda n, b: pickle.BINSTRING + struct.pack("<i", n) + b, st.integers(-5, 2**31 - 1), st.binary(max_size=8)
    ),
    st.sampled_from([b"S'abc'\n", b'S"x"\n', b"S'unterminated\n", b"Snoquotes\n"]),
    st.builds(lambda n: pickle.GET + str(n).encode() + b"\n", st.integers(-3, 2**40)),
    st.builds(lambda n: pickle.PUT + str(n).encode() + b"\n", st.integers(-3, 4095)),
    st.builds(lambda mn: pickle.GLOBAL + ("%s\n%s\n" % mn).encode(), _globals),
    st.builds(lambda mn: pickle.INST + ("%s\n%s\n" % mn).encode(), _globals),
    st.builds(lambda mn: _short_unicode(mn[0]) + _short_unicode(mn[1]) + pickle.STACK_GLOBAL, _globals),
    st.builds(lambda t: pickle.PERSID + t.encode("ascii", "replace") + b"\n", _texts.filter(lambda t: "\n" not in t)),
    st.builds(  # ("ch", n) and ("c", x, y): the persistent ids loads resolves, with good and bad arguments
        lambda n: _short_unicode("ch") + pickle.BININT + struct.pack("<i", n) + pickle.TUPLE2 + pickle.BINPERSID,
        st.sampled_from([0, 1, 2**31 - 1, -1]) | st.integers(-(2**31), 2**31 - 1),
    ),
    st.builds(
        lambda x, y: (
            _short_unicode("c")
            + pickle.BINFLOAT
            + struct.pack(">d", x)
            + pickle.BINFLOAT
            + struct.pack(">d", y)
            + pickle.TUPLE3
            + pickle.BINPERSID
        ),
        st.floats(),
        st.floats(),
    ),
    st.builds(lambda n: pickle.FRAME + struct.pack("<Q", n), _u64),
    st.builds(lambda n: pickle.PROTO + bytes([n]), st.integers(0, 255)),
)


def mutate_pickle(value: Any, inserts: list[tuple[int, bytes]], mutations: list[tuple[str, int, bytes]]) -> bytes:
    """``dumps(value)`` with opcode snippets inserted at opcode boundaries, then byte mutations."""
    data = dumps(value)
    boundaries = [pos for _, _, pos in pickletools.genops(data)]
    for k, snippet in sorted(inserts, key=lambda ins: -boundaries[ins[0] % len(boundaries)]):
        at = boundaries[k % len(boundaries)]
        data = data[:at] + snippet + data[at:]
    return mutate(data, mutations)


_pickles = st.one_of(
    st.builds(
        mutate_pickle,
        _values,
        st.lists(st.tuples(st.integers(0, 1000), _snippets), max_size=3),
        _byte_mutations,
    ),
    st.lists(_snippets, max_size=24).map(lambda ops: pickle.PROTO + b"\x05" + b"".join(ops) + pickle.STOP),
    st.builds(mutate, _values.map(dumps), _byte_mutations),
    st.binary(max_size=200),
)


def check_loads(data: bytes, with_channels: bool) -> None:
    assert_loads_is_safe(without_known_gaps(data), with_channels)


@pytest.mark.timeout(900)  # the --long variant runs for minutes
def test_fuzz_loads_returns_builtin_values_or_raises_dataformaterror_and_never_imports_or_calls(
    long_run: bool,
) -> None:
    fuzz(
        long_run,
        400,
        40_000,
        st.tuples(_pickles, st.booleans()),
        check_loads,
        examples=[
            (
                pickle.PROTO
                + b"\x05"
                + pickle.BYTEARRAY8
                + struct.pack("<Q", 2)
                + b"ab"
                + pickle.READONLY_BUFFER
                + b".",
                False,
            ),
            (_after_first(dumps({"k": [bytearray(b"x")]}), "BYTEARRAY8", pickle.READONLY_BUFFER), True),
            (pickle.dumps([1, 2j, "x"], protocol=5), False),
            (dumps([(1, 2), 3.5, {4}]) + b"\xff" * 8, True),
            (pickle.PROTO + b"\x05N" + pickle.LONG_BINPUT + struct.pack("<I", 2**30) + pickle.STOP, False),
            (pickle.PROTO + b"\x05" + pickle.BINBYTES + struct.pack("<I", U32) + b"abc" + pickle.STOP, False),
        ],
    )


def _after_first(data: bytes, name: str, insert: bytes) -> bytes:
    """``data`` with ``insert`` right after the first opcode called ``name``."""
    end = next(end + max(count, 0) for op, (_, end), count in unpickler_reads(data) if op == name)
    return data[:end] + insert + data[end:]


# -- code-running gadgets planted in valid data -----------------------------------------------

PLANTED = "execpool_fuzz_planted"


def write_planted_module(where: Path) -> Path:
    """Write the module ``PLANTED`` into ``where``: importing it, or calling its ``f``, leaves
    a file in the directory it returns."""
    markers = where / "markers"
    markers.mkdir()
    (where / (PLANTED + ".py")).write_text(
        "open(%r, 'w').close()\ndef f(*args):\n    open(%r, 'w').close()\n"
        % (str(markers / "imported"), str(markers / "called"))
    )
    return markers


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The planted module, importable in this process; yields its marker directory."""
    where = tmp_path_factory.mktemp("planted")
    markers = write_planted_module(where)
    sys.path.insert(0, str(where))
    importlib.invalidate_caches()
    try:
        assert importlib.util.find_spec(PLANTED) is not None  # importable: the tests below are not vacuous
        yield markers
    finally:
        sys.path.remove(str(where))
        sys.modules.pop(PLANTED, None)


def _arguments_for(module: str, name: str, markers: Path) -> tuple[Any, ...]:
    """Arguments that make ``module.name`` leave a marker in ``markers`` if it is ever called."""
    mark = str(markers / ("ran-%s.%s" % (module, name)))
    if name == "system":
        return ("touch %s" % mark,)
    if name in ("call", "Popen"):
        return (["touch", mark],)
    if name in ("exec", "eval"):
        return ("open(%r, 'w').close()" % mark,)
    if name in ("__import__", "import_module"):
        return (PLANTED,)
    return ()


def _push(obj: Any) -> bytes:
    """Opcodes pushing a str or a list of str."""
    if type(obj) is str:
        raw = obj.encode("utf-8")
        return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(_push(x) for x in obj) + pickle.APPENDS


_TARGETS = [
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "call"),
    ("subprocess", "Popen"),
    ("builtins", "exec"),
    ("builtins", "eval"),
    ("__builtin__", "eval"),
    ("builtins", "__import__"),
    ("importlib", "import_module"),
    ("copyreg", "_reconstructor"),
    (PLANTED, "f"),
    ("execpool_fuzz_no_such_module", "f"),
]
_FORMS = ["GLOBAL+REDUCE", "STACK_GLOBAL+REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"]


def gadget(form: str, module: str, name: str, markers: Path) -> bytes:
    """Opcodes that, under a plain unpickler, import ``module`` and use its ``name``: call it
    (REDUCE, INST, OBJ), instantiate it (NEWOBJ, NEWOBJ_EX) or set its state (BUILD)."""
    items = b"".join(_push(a) for a in _arguments_for(module, name, markers))
    args = pickle.MARK + items + pickle.TUPLE
    names = ("%s\n%s\n" % (module, name)).encode()
    glob = pickle.GLOBAL + names
    return {
        "GLOBAL+REDUCE": glob + args + pickle.REDUCE,
        "STACK_GLOBAL+REDUCE": _push(module) + _push(name) + pickle.STACK_GLOBAL + args + pickle.REDUCE,
        "INST": pickle.MARK + items + pickle.INST + names,
        "OBJ": pickle.MARK + glob + items + pickle.OBJ,
        "NEWOBJ": glob + args + pickle.NEWOBJ,
        "NEWOBJ_EX": glob + args + pickle.EMPTY_DICT + pickle.NEWOBJ_EX,
        "BUILD": glob + pickle.EMPTY_DICT + _push("x") + args + pickle.SETITEM + pickle.BUILD,
    }[form]


def plant(value: Any, snippet: bytes, where: int) -> bytes:
    """``dumps(value)`` with ``snippet`` inserted at one of its opcode boundaries (before
    STOP), the enclosing FRAME grown to hold it: a well-formed stream up to the snippet."""
    data = bytearray(dumps(value))
    ops = list(pickletools.genops(data))
    boundaries = [pos for op, _, pos in ops if op.name != "STOP"]
    at = boundaries[where % len(boundaries)]
    for op, length, pos in ops:
        if op.name == "FRAME" and pos + 9 <= at < pos + 9 + length:
            data[pos + 1 : pos + 9] = struct.pack("<Q", length + len(snippet))
    data[at:at] = snippet
    return bytes(data)


_PROBE = r"""
import pickle, sys
data = sys.stdin.buffer.read()
try:
    pickle.loads(data)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("form", ["GLOBAL+REDUCE", "STACK_GLOBAL+REDUCE", "INST", "OBJ"])
@pytest.mark.parametrize("target", [("os", "system"), ("builtins", "exec"), (PLANTED, "f")], ids="{0[0]}.{0[1]}".format)
def test_the_gadgets_do_run_code_under_a_plain_unpickler(tmp_path: Path, form: str, target: tuple[str, str]) -> None:
    # what makes the next test meaningful: in a separate process, the stdlib unpickler runs them
    markers = write_planted_module(tmp_path)
    data = plant([1, {"a": (2.5, b"x")}], gadget(form, *target, markers), 4)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    subprocess.run([sys.executable, "-c", _PROBE], input=data, env=env, capture_output=True, timeout=60, check=True)
    want = {"imported", "called"} if target[0] == PLANTED else {"ran-%s.%s" % target}
    assert want <= {p.name for p in markers.iterdir()}


@pytest.mark.timeout(900)  # the --long variant runs for minutes
def test_fuzz_code_running_gadgets_in_valid_data_are_refused_by_find_class_without_side_effects(
    long_run: bool, planted: Path
) -> None:
    def check_gadget(value: Any, form: str, target: tuple[str, str], where: int, with_channels: bool) -> None:
        module, name = target
        data = plant(value, gadget(form, module, name, planted), where)
        w = watched_loads(data, ChannelStub if with_channels else None)
        # the unpickler reached the gadget (the data before it is valid) and find_class refused it
        assert w.error is not None, "loads returned %r" % (w.value,)
        assert "refused to load %s.%s" % (module, name) in str(w.error)
        assert sorted(p.name for p in planted.iterdir()) == []
        assert PLANTED not in sys.modules
        assert w.new_modules == set(), "loads imported %s" % sorted(w.new_modules)
        assert w.audit_events == [], "loads raised audit events %s" % w.audit_events
        assert w.foreign_calls == [], "loads ran Python code: %s" % w.foreign_calls

    fuzz(
        long_run,
        150,
        10_000,
        st.tuples(_values, st.sampled_from(_FORMS), st.sampled_from(_TARGETS), st.integers(0, 1000), st.booleans()),
        check_gadget,
        examples=[
            ([1, {"a": b"b"}], "GLOBAL+REDUCE", ("os", "system"), 3, False),
            ("x", "STACK_GLOBAL+REDUCE", ("os", "system"), 0, True),
            ((2j, bytearray(b"y")), "INST", (PLANTED, "f"), 5, True),
            ({1: [None]}, "NEWOBJ", ("builtins", "__import__"), 4, False),
        ],
    )


@pytest.mark.xfail(
    strict=True,
    reason="BUG (CPython gh-115952, second half): loads lets the C unpickler allocate the length a "
    "BINBYTES/BINBYTES8/BYTEARRAY8 opcode declares before reading it: an 11-byte message declaring "
    "256 MiB allocates 256 MiB (and up to the address space for 8-byte lengths), beyond any frame cap",
)
@pytest.mark.parametrize(
    "opcode", [pickle.BINBYTES, pickle.BINBYTES8, pickle.BYTEARRAY8], ids=["BINBYTES", "BINBYTES8", "BYTEARRAY8"]
)
def test_loads_declared_length_allocates_no_more_than_the_input(opcode: bytes) -> None:
    size = 256 * MIB
    length = struct.pack("<I", size) if opcode == pickle.BINBYTES else struct.pack("<Q", size)
    data = pickle.PROTO + b"\x05" + opcode + length + b"abc" + pickle.STOP
    with traced_peak() as peak, pytest.raises(DataFormatError) as info:
        loads(data)
    if "MemoryError" in str(info.value):
        pytest.skip("inconclusive: the allocation failed (a memory limit is in force)")
    assert peak[0] < 16 * MIB, "a %d-byte message made loads allocate %d MiB" % (len(data), peak[0] // MIB)


@pytest.mark.xfail(
    strict=True,
    reason="BUG (CPython 3.8-3.13.0, reached through loads): when the allocation a BYTEARRAY8 declares fails, "
    "PyByteArray_FromStringAndSize frees its half-made object before setting its export count, and the "
    "deallocator, reading a nonzero leftover count, reports a SystemError through PyErr_Print: loading a "
    "12-byte message calls sys.excepthook (and sets sys.last_value)",
)
def test_loads_of_a_bytearray_too_large_to_allocate_calls_no_hook() -> None:
    data = pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + struct.pack("<Q", 2**62) + pickle.STOP
    hooked: list[type[BaseException]] = []
    saved = {
        name: getattr(sys, name)
        for name in ("excepthook", "last_type", "last_value", "last_traceback")
        if hasattr(sys, name)
    }
    sys.excepthook = lambda *exc: hooked.append(exc[0])
    try:
        for _ in range(10):
            # free blocks of a bytearray object's size class, filled with 1s: the next bytearray takes one
            junk = [bytes([1]) * 28 for _ in range(64)]
            del junk
            with pytest.raises(DataFormatError, match="MemoryError"):
                loads(data)
    finally:
        for name in ("last_type", "last_value", "last_traceback"):
            if name not in saved and hasattr(sys, name):
                delattr(sys, name)
        for name, value in saved.items():
            setattr(sys, name, value)
    assert hooked == [], "loads called sys.excepthook with %s" % hooked


# == 3. a real gateway whose worker writes garbage ===========================================

# Runs in the worker: receives raw bytes (in pieces, then None) and whether to close the
# stream after them, and writes them straight to its protocol stream, under the write lock so
# that none of the worker's own frames lands inside them.  The worker itself stays alive.
_WRITE_RAW = """
import os
pieces = []
for piece in channel:
    if piece is None:
        break
    pieces.append(piece)
then_eof = channel.receive()
gateway = channel.gateway
with gateway._wlock:
    view = memoryview(b"".join(pieces))
    while view:
        view = view[os.write(gateway._io.wfd, view):]
    if then_eof:
        gateway._write_closed = "the test closed the stream after raw bytes"
        gateway._io.close_write()
"""


def send_raw(writer: execpool.Channel, garbage: bytes, then_eof: bool) -> None:
    for pos in range(0, len(garbage), 16 * KIB):  # pieces: the garbage may exceed the frame cap
        writer.send(garbage[pos : pos + 16 * KIB])
    writer.send(None)
    writer.send(then_eof)


_END = "END"


def _channel_reference(cid: int) -> bytes:
    """Channel data holding a reference to channel ``cid``, as dumps() writes one."""

    class Referring(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("ch", cid) if obj is _END else None

    out = io.BytesIO()
    Referring(out, 5).dump(["look", _END])
    return out.getvalue()


_SURVIVING_TYPES = (DATA, CLOSE, CLOSE_ERROR)  # what a worker may send; EXEC, STATUS, TERMINATE, HELLO: error


def expected_end(stream: bytes, cap: int, next_id: int = 1) -> str:
    """How the master must describe the end of a connection whose worker wrote ``stream``
    and then closed it (the start of ``Gateway._lost``).  The master has opened the odd
    channel ids below ``next_id``; a frame naming an odd id it never opened ends the
    connection."""
    frames, end, pos = reference_decode(stream, cap)
    for mtype, channel, _ in frames:
        if mtype not in _SURVIVING_TYPES:
            return "protocol error: unexpected %s frame on channel %d" % (type_name(mtype), channel)
        if channel % 2 and channel >= next_id:
            return "protocol error: the peer named channel %d on " % channel
    if end == "error":
        return "protocol error: received a"
    if end == "partial":
        length = struct.unpack_from("!BII", stream, pos)[2] if len(stream) - pos >= HEADER_SIZE else 0
        if cap >= length >= LARGE:
            return "the connection ended in the middle of a %d-byte frame" % length
        return "the connection ended in the middle of a frame (%d bytes)" % (len(stream) - pos)
    return "the other side closed the connection"


def force_protocol_error(stream: bytes, cap: int) -> bytes:
    """``stream``, finished so that the master must end the connection with a protocol
    error while the worker stays alive: the unfinished frame completed with zeros, then a
    header of an unknown type."""
    while True:
        frames, end, pos = reference_decode(stream, cap)
        if end == "error" or any(f[0] not in _SURVIVING_TYPES for f in frames):
            return stream
        if end == "clean":
            return stream + frame_header(0xEE, 0, 0)
        held = len(stream) - pos
        length = struct.unpack_from("!BII", stream, pos)[2] if held >= HEADER_SIZE else 0
        stream += bytes(max(HEADER_SIZE, HEADER_SIZE + length) - held)


def defuse(stream: bytes, cap: int, ours: set[int]) -> bytes:
    """Keep generated garbage off the test's own channels (their ids move out of the way)
    and out of the loader's known memory gaps (DATA payloads); the layout stays the same."""
    out = bytearray(stream)
    pos = 0
    while len(stream) - pos >= HEADER_SIZE:
        mtype, channel, length = struct.unpack_from("!BII", stream, pos)
        if mtype not in TYPES or length > cap:
            break
        if mtype in _SURVIVING_TYPES and channel in ours:
            out[pos + 1 : pos + 5] = struct.pack("!I", channel | 2**31)
        end = pos + HEADER_SIZE + length
        if end > len(stream):
            break
        if mtype == DATA:
            out[pos + HEADER_SIZE : end] = without_known_gaps(stream[pos + HEADER_SIZE : end])
        pos = end
    return bytes(out)


def spoil_a_gateway(
    spec: str,
    make_garbage: Callable[[set[int]], bytes],
    then_eof: bool,
    expect: str | Callable[[], str],
    max_peak: int = 32 * MIB,
) -> None:
    """Start a gateway, open channels of every kind, make the worker write garbage to its
    protocol stream, and check how the connection ends (``expect``: the start of the
    reason, or a function called once the garbage is made that returns it)."""
    group = execpool.Group()
    try:
        gw = group.makegateway(spec)
        pid = gw.remote_info().pid
        waiting = gw.remote_exec("channel.receive()")  # the worker's main thread waits on it
        with_callback = gw.remote_exec("channel.receive()")
        delivered: list[Any] = []
        with_callback.setcallback(delivered.append, endmarker=_END)
        local = gw.newchannel()  # no remote code behind it
        writer = gw.remote_exec(_WRITE_RAW)
        garbage = make_garbage({waiting.id, with_callback.id, local.id, writer.id})
        with traced_peak() as peak:
            send_raw(writer, garbage, then_eof)
            gw.join(timeout=30)  # hang guard: TimeoutError if the master never ends the connection
        assert not gw.alive
        if callable(expect):
            expect = expect()
        assert gw._lost is not None and gw._lost.startswith(expect), gw._lost
        reader = gw._reader
        assert reader is not None and wait_until(lambda: not reader.is_alive(), timeout=10)
        for ch in (waiting, local, writer):
            with pytest.raises(GatewayLostError):
                ch.receive(timeout=10)
            with pytest.raises(GatewayLostError):
                ch.waitclose(timeout=10)
        assert wait_until(lambda: delivered == [_END], timeout=10), delivered
        with pytest.raises(execpool.ChannelClosedError):
            gw.remote_exec("pass")
        assert wait_until(lambda: process_gone(pid), timeout=20), "worker %d outlived its connection" % pid
        assert peak[0] < max_peak, "the master allocated %d MiB while the worker wrote garbage" % (peak[0] // MIB)
        gw.exit(timeout=10)
    finally:
        group.terminate(timeout=10)


_garbage = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.builds(
        lambda frames, tail: b"".join(encode(*f) for f in frames) + tail,
        st.lists(
            st.tuples(
                st.sampled_from(_SURVIVING_TYPES) | st.integers(0, 255),
                st.sampled_from([0, 1, 2, 3, 4, 5, 7, 2**31 + 1]) | st.integers(0, U32),
                st.binary(max_size=40) | st.builds(dumps, _values),
            ),
            min_size=1,
            max_size=4,
        ),
        st.binary(max_size=12),
    ),
)


@pytest.mark.timeout(900)  # the --long variant runs for minutes
def test_fuzz_a_worker_writing_random_garbage_loses_its_connection_cleanly(long_run: bool) -> None:
    cap = CAP

    def check_garbage(raw: bytes, then_eof: bool) -> None:
        made: list[str] = []

        def make(ours: set[int]) -> bytes:
            stream = defuse(raw if then_eof else force_protocol_error(raw, cap), cap, ours)
            # the writer's channel is the last one the master opened
            made.append(expected_end(stream, cap, next_id=max(ours) + 2))
            return stream

        spoil_a_gateway("popen//max_frame=64K", make, then_eof, lambda: made[0])

    fuzz(long_run, 5, 200, st.tuples(_garbage, st.booleans()), check_garbage)


@pytest.mark.parametrize(
    ("spec", "garbage", "then_eof", "expect", "max_peak_mib"),
    [
        ("popen", frame_header(DATA, 1, U32), False, "protocol error: received a DATA frame declaring 4294967295", 16),
        ("popen", frame_header(EXEC, 2, U32) + b"x" * 100, True, "protocol error: received a EXEC frame declaring", 16),
        (
            "popen",
            frame_header(0xEE, 1, 4) + b"abcd",
            False,
            "protocol error: received a frame of unknown type 238",
            16,
        ),
        ("popen", bytes(64), True, "protocol error: received a frame of unknown type 0", 16),
        ("popen", encode(EXEC, 9, dumps(("1", None, {}, "f"))), False, "protocol error: unexpected EXEC frame", 16),
        (
            "popen",
            encode(HELLO, 0, dumps({"pid": 1})),
            False,
            "protocol error: unexpected HELLO frame on channel 0",
            16,
        ),
        ("popen", encode(STATUS, 1, b""), True, "protocol error: unexpected STATUS frame on channel 1", 16),
        ("popen", frame_header(DATA, 1, 100)[:5], True, "the connection ended in the middle of a frame (5 bytes)", 16),
        (
            "popen",
            encode(DATA, 1, dumps("x" * 100))[:40],
            True,
            "the connection ended in the middle of a frame (40",
            16,
        ),
        (
            "popen",
            frame_header(DATA, 1, MIB) + b"x" * 1000,
            True,
            "the connection ended in the middle of a 1048576-",
            16,
        ),
        (
            "popen//max_frame=16M",
            frame_header(DATA, 1, 16 * MIB) + b"x",
            True,
            "the connection ended in the middle",
            24,
        ),
        (
            "popen",
            encode(DATA, 2**31 + 1, dumps(1)),
            True,
            "protocol error: the peer named channel 2147483649 on gw0, an id of this side that was never opened",
            16,
        ),
        (
            "popen",
            encode(CLOSE_ERROR, 2**31 - 1, b"boom"),
            False,
            "protocol error: the peer named channel 2147483647 on gw0, an id of this side that was never opened",
            16,
        ),
        (
            "popen",
            encode(DATA, 2, _channel_reference(2**30 + 1)),
            False,
            "protocol error: the peer named channel 1073741825 on gw0, an id of this side that was never opened",
            16,
        ),
        ("popen", encode(DATA, 2**31, dumps(1)), True, "the other side closed the connection", 16),
    ],
    ids=[
        "4GiB-header",
        "4GiB-header-then-EOF",
        "unknown-type",
        "zeros-then-EOF",
        "EXEC-from-the-worker",
        "second-HELLO",
        "STATUS-from-the-worker-then-EOF",
        "truncated-header-then-EOF",
        "truncated-frame-then-EOF",
        "truncated-large-frame-then-EOF",
        "frame-at-the-cap-then-EOF",
        "never-opened-channel-then-EOF",
        "close-of-a-never-opened-channel",
        "reference-to-a-never-opened-channel",
        "valid-frame-then-EOF",
    ],
)
def test_a_worker_writing_nasty_bytes_loses_its_connection_cleanly(
    spec: str, garbage: bytes, then_eof: bool, expect: str, max_peak_mib: int
) -> None:
    # the master's peak memory stays far below what any header announced: a frame it accepted
    # (up to the cap) costs its size, nothing else more than a few MiB
    spoil_a_gateway(spec, lambda ours: garbage, then_eof, expect, max_peak=max_peak_mib * MIB)


def test_valid_frames_for_unknown_channels_leave_the_connection_usable() -> None:
    # A worker may name a channel first (its own ids are even); late frames for channels the
    # master opened and that are finished (odd ids) are dropped.  Neither is a protocol error.
    group = execpool.Group()
    try:
        gw = group.makegateway("popen")
        pid = gw.remote_info().pid
        finished = []
        for _ in range(5):
            done = gw.remote_exec("pass")
            done.waitclose(timeout=10)
            finished.append(done.id)
        unknown = [finished[0], finished[1], 2, 0, 2**32 - 2]
        garbage = b"".join(encode(DATA, cid, dumps(["stray", cid])) for cid in unknown)
        # (a CLOSE for an even id would be answered, and the worker, which never opened it, would
        # rightly end the connection: test_a_close_for_a_channel_never_opened_ends_the_connection)
        garbage += encode(CLOSE, finished[2], b"") + encode(CLOSE_ERROR, finished[3], b"boom")
        garbage += encode(CLOSE_ERROR, finished[1], b"\xff\xfe not utf-8")
        garbage += encode(DATA, finished[4], b"\x80\x05 not a pickle")
        waiting = gw.remote_exec("channel.send(channel.receive() + 1)")
        delivered: list[Any] = []
        with_callback = gw.remote_exec("channel.send(channel.receive() * 2)")
        with_callback.setcallback(delivered.append, endmarker=_END)
        with traced_peak() as peak:
            writer = gw.remote_exec(_WRITE_RAW)
            send_raw(writer, garbage, False)
            writer.waitclose(timeout=20)
        assert gw.alive, gw._lost
        waiting.send(41)
        assert waiting.receive(timeout=10) == 42
        with_callback.send(21)
        assert wait_until(lambda: delivered == [42, _END], timeout=10), delivered
        assert gw.remote_exec("channel.send('still here')").receive(timeout=10) == "still here"
        assert peak[0] < 16 * MIB
        gw.exit(timeout=10)
        assert wait_until(lambda: process_gone(pid), timeout=20)
    finally:
        group.terminate(timeout=10)


@pytest.mark.parametrize("mtype", [CLOSE, CLOSE_ERROR, DATA])
def test_a_close_for_a_channel_never_opened_ends_the_connection(mtype: int) -> None:
    # The worker's side of the rule: a master naming an even id the worker never opened breaks
    # the protocol; the worker ends that connection (and exits) instead of keeping state for it.
    group = execpool.Group()
    try:
        gw = group.makegateway("popen")
        pid = gw.remote_info().pid
        payload = dumps("stray") if mtype == DATA else b"boom" if mtype == CLOSE_ERROR else b""
        gw._send(mtype, 2**20, payload)
        gw.join(timeout=20)  # hang guard: TimeoutError if the worker kept the connection
        assert not gw.alive
        assert wait_until(lambda: process_gone(pid), timeout=20)
    finally:
        group.terminate(timeout=10)
