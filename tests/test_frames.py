"""Unit and fuzz tests of the wire format (``execpool._shipped.frames``).

A frame is a 9-byte header -- type (1 byte), channel (4 bytes, big-endian),
payload length (4 bytes, big-endian) -- followed by the payload.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import execpool
from execpool import DataFormatError, ProtocolError
from execpool._shipped.frames import (
    CLOSE,
    CLOSE_ERROR,
    DATA,
    DEFAULT_MAX_FRAME,
    EXEC,
    HEADER_SIZE,
    HELLO,
    LIMIT_MAX_FRAME,
    STATUS,
    TERMINATE,
    FrameParser,
    default_max_frame,
    frame_header,
    parse_size,
    type_name,
)

TYPES = [EXEC, DATA, CLOSE, CLOSE_ERROR, STATUS, TERMINATE, HELLO]


def encode(mtype: int, channel: int, payload: bytes) -> bytes:
    return frame_header(mtype, channel, len(payload)) + payload


# -- constants and header layout ---------------------------------------------------


def _take_some(p: FrameParser, got: list[Any], attempts: int) -> None:
    """Ask the parser for up to ``attempts`` frames, collecting those that are complete."""
    for _ in range(attempts):
        frame = p.next_frame()
        if frame is not None:
            got.append(frame)


def test_message_type_constants_are_the_wire_values() -> None:
    assert (EXEC, DATA, CLOSE, CLOSE_ERROR, STATUS, TERMINATE, HELLO) == (1, 2, 3, 4, 5, 6, 7)


def test_type_name_names_known_and_unknown_types() -> None:
    assert [type_name(t) for t in TYPES] == ["EXEC", "DATA", "CLOSE", "CLOSE_ERROR", "STATUS", "TERMINATE", "HELLO"]
    assert type_name(99) == "type-99"


def test_frame_header_is_type_channel_length_big_endian() -> None:
    assert HEADER_SIZE == 9
    assert frame_header(DATA, 0x01020304, 0x0A0B0C0D) == b"\x02\x01\x02\x03\x04\x0a\x0b\x0c\x0d"
    assert frame_header(HELLO, 0, 0) == b"\x07" + b"\x00" * 8
    assert frame_header(EXEC, 2**32 - 1, 2**32 - 1) == b"\x01" + b"\xff" * 8


def test_default_max_frame_is_256_mib_and_limit_is_the_u32_maximum() -> None:
    assert DEFAULT_MAX_FRAME == 256 * 1024 * 1024
    assert LIMIT_MAX_FRAME == 2**32 - 1
    assert FrameParser().max_frame == DEFAULT_MAX_FRAME


# -- FrameParser: decoding -----------------------------------------------------------


def test_parser_decodes_one_frame_fed_whole() -> None:
    p = FrameParser()
    p.feed(encode(DATA, 5, b"hello"))
    assert p.next_frame() == (DATA, 5, b"hello")
    assert p.next_frame() is None
    assert p.pending() == 0


def test_parser_returns_payload_as_bytes() -> None:
    p = FrameParser()
    p.feed(bytearray(encode(DATA, 5, b"hello")))
    frame = p.next_frame()
    assert frame is not None
    assert type(frame[2]) is bytes


def test_parser_decodes_one_frame_fed_one_byte_at_a_time() -> None:
    data = encode(CLOSE_ERROR, 123456, b"Traceback: boom\n")
    p = FrameParser()
    for i, byte in enumerate(data):
        assert p.next_frame() is None, "frame returned after only %d bytes" % i
        p.feed(bytes([byte]))
    assert p.next_frame() == (CLOSE_ERROR, 123456, b"Traceback: boom\n")
    assert p.next_frame() is None


def test_parser_decodes_many_frames_from_one_feed_in_order() -> None:
    frames = [(TYPES[i % len(TYPES)], i, bytes([i % 256]) * (i % 17)) for i in range(200)]
    p = FrameParser()
    p.feed(b"".join(encode(*f) for f in frames))
    assert p.frames() == frames
    assert p.frames() == []
    assert p.pending() == 0


def test_parser_decodes_frames_split_at_every_point() -> None:
    frames = [(DATA, 1, b"abcdef"), (CLOSE, 2, b""), (EXEC, 3, b"x" * 20)]
    data = b"".join(encode(*f) for f in frames)
    for cut in range(len(data) + 1):
        p = FrameParser()
        p.feed(data[:cut])
        got = p.frames()
        p.feed(data[cut:])
        got += p.frames()
        assert got == frames, "split at %d" % cut


def test_parser_decodes_a_frame_split_in_three_at_every_pair_of_points() -> None:
    frame = (DATA, 9, b"payload!")
    data = encode(*frame)
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            p = FrameParser()
            got = []
            for piece in (data[:i], data[i:j], data[j:]):
                p.feed(piece)
                got += p.frames()
            assert got == [frame], (i, j)


def test_parser_decodes_empty_payload_frames() -> None:
    p = FrameParser()
    p.feed(encode(CLOSE, 7, b"") + encode(TERMINATE, 0, b""))
    assert p.next_frame() == (CLOSE, 7, b"")
    assert p.next_frame() == (TERMINATE, 0, b"")
    assert p.next_frame() is None


def test_parser_empty_payload_frame_needs_only_its_header() -> None:
    p = FrameParser()
    p.feed(frame_header(STATUS, 3, 0)[:8])
    assert p.next_frame() is None
    p.feed(frame_header(STATUS, 3, 0)[8:])
    assert p.next_frame() == (STATUS, 3, b"")


def test_parser_accepts_every_known_type_and_the_extreme_channel_ids() -> None:
    frames = [(t, ch, b"p") for t in TYPES for ch in (0, 1, 2**31, 2**32 - 1)]
    p = FrameParser()
    p.feed(b"".join(encode(*f) for f in frames))
    assert p.frames() == frames


def test_parser_roundtrips_a_5_mib_payload_exactly() -> None:
    payload = os.urandom(5 * 1024 * 1024)
    data = encode(DATA, 42, payload)
    p = FrameParser()
    # in uneven pieces, as a socket would deliver them
    step = 65_537
    got = []
    for i in range(0, len(data), step):
        p.feed(data[i : i + step])
        got += p.frames()
    assert len(got) == 1
    assert got[0][:2] == (DATA, 42)
    assert got[0][2] == payload
    assert p.pending() == 0


def test_parser_interleaved_feeds_and_reads_keep_the_stream_intact() -> None:
    # exercises the internal buffer compaction between feeds
    rnd = random.Random(1234)
    frames = [(rnd.choice(TYPES), rnd.randrange(2**32), rnd.randbytes(rnd.randrange(0, 300))) for _ in range(300)]
    data = b"".join(encode(*f) for f in frames)
    p = FrameParser()
    got: list[Any] = []
    pos = 0
    while pos < len(data):
        n = rnd.randrange(1, 300)
        p.feed(data[pos : pos + n])
        pos += n
        _take_some(p, got, rnd.randrange(0, 5))
    got += p.frames()
    assert got == frames
    assert p.pending() == 0


# -- need() and pending() ----------------------------------------------------------


def test_need_on_an_empty_parser_is_the_header_size() -> None:
    assert FrameParser().need() == HEADER_SIZE


def test_need_with_a_partial_header_is_the_rest_of_the_header() -> None:
    header = frame_header(DATA, 1, 100)
    for n in range(HEADER_SIZE):
        p = FrameParser()
        p.feed(header[:n])
        assert p.need() == HEADER_SIZE - n


def test_need_with_a_partial_payload_is_the_rest_of_the_payload() -> None:
    data = encode(DATA, 1, b"z" * 100)
    for n in range(HEADER_SIZE, len(data)):
        p = FrameParser()
        p.feed(data[:n])
        assert p.need() == len(data) - n


def test_need_is_at_least_one_when_a_whole_frame_is_buffered() -> None:
    p = FrameParser()
    p.feed(encode(DATA, 1, b"abc"))
    assert p.need() == 1
    p.feed(encode(CLOSE, 1, b""))
    assert p.need() == 1
    p = FrameParser()
    p.feed(encode(CLOSE, 1, b""))
    assert p.need() == 1


def test_need_after_a_frame_is_consumed_is_for_the_next_frame() -> None:
    p = FrameParser()
    p.feed(encode(DATA, 1, b"abc") + encode(DATA, 2, b"0123456789")[:12])
    assert p.next_frame() == (DATA, 1, b"abc")
    assert p.need() == HEADER_SIZE + 10 - 12
    assert p.next_frame() is None
    p.feed(b"3456789")
    assert p.need() == 1
    assert p.next_frame() == (DATA, 2, b"0123456789")
    assert p.need() == HEADER_SIZE


def test_feeding_exactly_need_bytes_completes_header_then_frame() -> None:
    data = encode(HELLO, 8, b"info" * 10)
    p = FrameParser()
    pos = 0
    p.feed(data[pos : pos + p.need()])
    pos = HEADER_SIZE
    assert p.next_frame() is None
    n = p.need()
    assert n == 40
    p.feed(data[pos : pos + n])
    assert p.next_frame() == (HELLO, 8, b"info" * 10)


def test_pending_counts_bytes_not_yet_returned_as_frames() -> None:
    a = encode(DATA, 1, b"abc")
    b = encode(DATA, 2, b"defgh")
    p = FrameParser()
    assert p.pending() == 0
    p.feed(a[:5])
    assert p.pending() == 5
    p.feed(a[5:] + b[:4])
    assert p.pending() == len(a) + 4
    assert p.next_frame() == (DATA, 1, b"abc")
    assert p.pending() == 4
    assert p.next_frame() is None
    assert p.pending() == 4
    p.feed(b[4:])
    assert p.pending() == len(b)
    assert p.frames() == [(DATA, 2, b"defgh")]
    assert p.pending() == 0


def test_frames_returns_all_complete_frames_and_keeps_the_partial_one() -> None:
    p = FrameParser()
    p.feed(encode(DATA, 1, b"a") + encode(DATA, 2, b"b") + encode(DATA, 3, b"cc")[:-1])
    assert p.frames() == [(DATA, 1, b"a"), (DATA, 2, b"b")]
    assert p.pending() == HEADER_SIZE + 1
    p.feed(b"c")
    assert p.frames() == [(DATA, 3, b"cc")]


# -- FrameParser: errors -----------------------------------------------------------


def test_protocolerror_is_a_dataformaterror_and_public() -> None:
    assert issubclass(ProtocolError, DataFormatError)
    assert execpool.ProtocolError is ProtocolError
    assert execpool.DataFormatError is DataFormatError


@pytest.mark.parametrize("mtype", [0, 9, 10, 0x7F, 0x80, 0xFF])
def test_parser_refuses_unknown_message_type(mtype: int) -> None:
    p = FrameParser()
    p.feed(frame_header(mtype, 3, 4) + b"abcd")
    with pytest.raises(ProtocolError, match="unknown type %d" % mtype):
        p.next_frame()


def test_parser_refuses_unknown_type_from_the_header_alone() -> None:
    p = FrameParser()
    p.feed(frame_header(0x42, 1, 10))
    with pytest.raises(ProtocolError):
        p.next_frame()


def test_parser_refuses_unknown_type_after_good_frames_but_returns_those_first() -> None:
    p = FrameParser()
    p.feed(encode(DATA, 1, b"ok") + frame_header(200, 1, 0))
    assert p.next_frame() == (DATA, 1, b"ok")
    with pytest.raises(ProtocolError):
        p.next_frame()


def test_parser_refuses_length_above_max_frame_from_the_header_alone() -> None:
    p = FrameParser(max_frame=1024)
    p.feed(frame_header(DATA, 1, 1025))  # just the 9-byte header, no payload
    with pytest.raises(ProtocolError, match="1025") as info:
        p.next_frame()
    assert "1024" in str(info.value)
    assert "DATA" in str(info.value)


def test_parser_refuses_length_above_the_default_cap_from_the_header_alone() -> None:
    p = FrameParser()
    p.feed(frame_header(DATA, 1, DEFAULT_MAX_FRAME + 1))
    with pytest.raises(ProtocolError):
        p.next_frame()


@pytest.mark.parametrize("max_frame", [1024, DEFAULT_MAX_FRAME, LIMIT_MAX_FRAME])
def test_parser_accepts_length_equal_to_max_frame_and_waits_for_the_payload(max_frame: int) -> None:
    p = FrameParser(max_frame=max_frame)
    p.feed(frame_header(DATA, 1, max_frame))
    assert p.next_frame() is None
    assert p.need() == max_frame


def test_parser_accepts_a_payload_of_exactly_max_frame() -> None:
    p = FrameParser(max_frame=1024)
    p.feed(encode(DATA, 1, b"q" * 1024))
    assert p.next_frame() == (DATA, 1, b"q" * 1024)


def test_parser_with_max_frame_from_parse_size_refuses_one_byte_more() -> None:
    cap = parse_size("1K", "max_frame")
    p = FrameParser(max_frame=cap)
    p.feed(encode(DATA, 1, b"q" * cap))
    assert p.frames() == [(DATA, 1, b"q" * cap)]
    p.feed(frame_header(DATA, 1, cap + 1))
    with pytest.raises(ProtocolError):
        p.frames()


@pytest.mark.parametrize(
    "bad",
    [frame_header(0, 1, 0), frame_header(DATA, 1, 2000)],
    ids=["unknown-type", "too-long"],
)
def test_parser_keeps_raising_after_an_error(bad: bytes) -> None:
    p = FrameParser(max_frame=1024)
    p.feed(bad)
    with pytest.raises(ProtocolError):
        p.next_frame()
    p.feed(encode(DATA, 1, b"perfectly valid"))
    for _ in range(3):
        with pytest.raises(ProtocolError):
            p.next_frame()
        with pytest.raises(ProtocolError):
            p.frames()


# -- parse_size and default_max_frame -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("1024", 1024),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("1K", 1024),
        ("64M", 64 * 1024**2),
        ("64m", 64 * 1024**2),
        ("64mb", 64 * 1024**2),
        ("64MB", 64 * 1024**2),
        ("512KB", 512 * 1024),
        ("1G", 1024**3),
        ("3g", 3 * 1024**3),
        ("  64M  ", 64 * 1024**2),
        ("4294967295", 2**32 - 1),
    ],
)
def test_parse_size_reads_byte_counts_with_suffixes(text: str, expected: int) -> None:
    assert parse_size(text, "EXECPOOL_MAX_FRAME_SIZE") == expected


@pytest.mark.parametrize("value", [1024, 1048576, 2**32 - 1])
def test_parse_size_accepts_ints_in_range(value: int) -> None:
    assert parse_size(value, "max_frame") == value


@pytest.mark.parametrize("text", ["abc", "", "   ", "M", "KB", "1.5M", "12Q", "1KK", "0x400", "ten"])
def test_parse_size_refuses_non_numbers_naming_the_setting(text: str) -> None:
    with pytest.raises(ValueError, match="EXECPOOL_MAX_FRAME_SIZE") as info:
        parse_size(text, "EXECPOOL_MAX_FRAME_SIZE")
    assert "not a byte count" in str(info.value)


@pytest.mark.parametrize("value", ["0", "1", "1023", "-1K", "5G", "4294967296", 0, 1023, -5, 2**32, 2**40])
def test_parse_size_refuses_out_of_range_naming_the_setting(value: str | int) -> None:
    with pytest.raises(ValueError, match="max_frame=") as info:
        parse_size(value, "max_frame=")
    assert "out of range" in str(info.value)


def test_parse_size_upper_bound_is_the_one_its_error_message_names() -> None:
    assert parse_size("4294967295", "max_frame") == 2**32 - 1
    with pytest.raises(ValueError, match="4294967295") as info:
        parse_size("4G", "max_frame")
    assert "out of range" in str(info.value)


def test_default_max_frame_without_the_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECPOOL_MAX_FRAME_SIZE", raising=False)
    assert default_max_frame() == DEFAULT_MAX_FRAME
    monkeypatch.setenv("EXECPOOL_MAX_FRAME_SIZE", "")
    assert default_max_frame() == DEFAULT_MAX_FRAME


@pytest.mark.parametrize(("text", "expected"), [("64M", 64 * 1024**2), ("1048576", 1048576), ("2g", 2 * 1024**3)])
def test_default_max_frame_honours_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: int
) -> None:
    monkeypatch.setenv("EXECPOOL_MAX_FRAME_SIZE", text)
    assert default_max_frame() == expected


@pytest.mark.parametrize("text", ["garbage", "0", "12Q", "9G"])
def test_default_max_frame_refuses_a_bad_environment_variable(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("EXECPOOL_MAX_FRAME_SIZE", text)
    with pytest.raises(ValueError, match="EXECPOOL_MAX_FRAME_SIZE"):
        default_max_frame()


# -- feeding from a reused buffer, take_large ----------------------------------------------


def test_feed_copies_a_memoryview_so_the_callers_buffer_can_be_reused() -> None:
    data = encode(DATA, 1, b"first") + encode(DATA, 2, b"second")[:7]
    block = bytearray(64)
    view = memoryview(block)
    block[: len(data)] = data
    p = FrameParser()
    p.feed(view[: len(data)])
    block[:] = b"\xee" * 64  # the reader reuses its block for the next read
    rest = encode(DATA, 2, b"second")[7:]
    block[: len(rest)] = rest
    p.feed(view[: len(rest)])
    assert p.frames() == [(DATA, 1, b"first"), (DATA, 2, b"second")]


def test_take_large_hands_over_a_partial_large_frame_and_forgets_its_bytes() -> None:
    payload = bytes(range(256)) * 8  # 2048 bytes
    p = FrameParser()
    p.feed(encode(CLOSE, 1, b"") + encode(DATA, 7, payload)[:100])
    assert p.next_frame() == (CLOSE, 1, b"")
    assert p.next_frame() is None
    assert p.take_large(1000) == (DATA, 7, 2048, payload[: 100 - HEADER_SIZE])
    assert p.pending() == 0
    assert p.need() == HEADER_SIZE
    # the caller read the rest of the payload itself; the stream continues with the next frame
    p.feed(encode(CLOSE, 7, b"") + encode(DATA, 8, b"x"))
    assert p.frames() == [(CLOSE, 7, b""), (DATA, 8, b"x")]


def test_take_large_with_only_the_header_received_hands_over_an_empty_part() -> None:
    p = FrameParser()
    p.feed(frame_header(EXEC, 3, 5000))
    assert p.take_large(5000) == (EXEC, 3, 5000, b"")
    assert p.pending() == 0


@pytest.mark.parametrize(
    "fed",
    [
        b"",
        frame_header(DATA, 1, 5000)[:8],  # header incomplete
        encode(DATA, 1, b"s" * 10)[:12],  # partial, but below the threshold
        encode(DATA, 1, b"w" * 5000),  # large, but complete: next_frame returns it
        frame_header(DATA, 1, 999) + b"abc",  # just below the threshold
    ],
    ids=["empty", "partial-header", "small", "complete", "below-threshold"],
)
def test_take_large_returns_none_and_keeps_the_bytes_otherwise(fed: bytes) -> None:
    p = FrameParser()
    p.feed(fed)
    assert p.take_large(1000) is None
    assert p.pending() == len(fed)


@pytest.mark.parametrize(
    "header",
    [frame_header(0xEE, 1, 5000), frame_header(DATA, 1, 4096)],
    ids=["unknown-type", "above-max-frame"],
)
def test_take_large_leaves_an_invalid_header_for_next_frame_to_report(header: bytes) -> None:
    p = FrameParser(max_frame=2048)
    p.feed(header + b"abc")
    assert p.take_large(1000) is None
    with pytest.raises(ProtocolError):
        p.next_frame()
    assert p.take_large(1000) is None  # and nothing after the error


# -- hypothesis ----------------------------------------------------------------------

_frames = st.lists(
    st.tuples(st.sampled_from(TYPES), st.integers(0, 2**32 - 1), st.binary(max_size=200)),
    max_size=12,
)


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for pt in points:
        out.append(data[prev:pt])
        prev = pt
    out.append(data[prev:])
    return out


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames, st.lists(st.integers(min_value=0), max_size=40), st.randoms(use_true_random=False))
def test_frames_in_random_chunkings_decode_to_the_same_list(
    frames: list[tuple[int, int, bytes]], cuts: list[int], rnd: random.Random
) -> None:
    data = b"".join(encode(*f) for f in frames)
    p = FrameParser()
    got: list[Any] = []
    for piece in _chunk(data, cuts):
        p.feed(piece)
        assert p.need() >= 1
        # read some, none or all of the complete frames before the next piece
        _take_some(p, got, rnd.randrange(0, 4))
    got += p.frames()
    assert got == frames
    assert p.pending() == 0
    assert p.need() == HEADER_SIZE


@settings(max_examples=300, deadline=None)
@given(_frames)
def test_feeding_need_bytes_at_a_time_never_overshoots_a_frame(frames: list[tuple[int, int, bytes]]) -> None:
    data = b"".join(encode(*f) for f in frames)
    p = FrameParser()
    got: list[Any] = []
    pos = 0
    while pos < len(data):
        n = p.need()
        assert n >= 1
        p.feed(data[pos : pos + n])
        pos += n
        frames_now = p.frames()
        assert len(frames_now) <= 1
        got += frames_now
        # after a frame completes, nothing of the next one has been fed yet
        if frames_now:
            assert p.pending() == 0
    assert got == frames


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400),
    st.lists(st.integers(min_value=0), max_size=20),
    st.sampled_from([1024, 4096, DEFAULT_MAX_FRAME]),
)
def test_random_bytes_yield_frames_or_protocolerror_only(data: bytes, cuts: list[int], max_frame: int) -> None:
    p = FrameParser(max_frame=max_frame)
    failed = False
    total = 0
    for piece in _chunk(data, cuts):
        p.feed(piece)
        try:
            frames = p.frames()
        except ProtocolError:
            failed = True
            break
        for mtype, _channel, payload in frames:
            assert mtype in TYPES
            assert len(payload) <= max_frame
            total += HEADER_SIZE + len(payload)
    if failed:
        with pytest.raises(ProtocolError):
            p.next_frame()
    else:
        assert total + p.pending() == len(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames, st.lists(st.integers(min_value=0), max_size=30), st.integers(0, 250))
def test_reader_using_take_large_decodes_the_same_frames(
    frames: list[tuple[int, int, bytes]], cuts: list[int], threshold: int
) -> None:
    # what the connection's reader does: next_frame, else take_large and read the rest directly
    data = b"".join(encode(*f) for f in frames)
    pieces = _chunk(data, cuts)
    p = FrameParser()
    got: list[Any] = []
    while pieces:
        p.feed(pieces.pop(0))
        while True:
            frame = p.next_frame()
            if frame is None:
                large = p.take_large(threshold)
                if large is None:
                    break
                mtype, channel, length, part = large
                assert length >= threshold
                assert len(part) < length
                rest = b"".join(pieces)
                need = length - len(part)
                payload = part + rest[:need]
                pieces = [rest[need:]] if rest[need:] else []
                frame = (mtype, channel, payload)
            got.append(frame)
    assert got == frames
    assert p.pending() == 0
