"""Out-of-band buffers: PARTS frames, what they deliver, and what a hostile peer can do with them.

A large ``pickle.PickleBuffer`` (and a top-level ``bytes`` of at least ``OOB_MIN`` bytes) leaves
the pickle of a channel message and is written after it (``os.writev``); the receiver reads each
buffer into an allocation of its own.  The pool's arguments and results use this for every large
buffer pickle protocol 5 hands out (numpy arrays, bytearray, ...).  The hostile cases play a peer
that writes PARTS frames by hand: a table that does not add up, too many buffers, a pickle that
asks for more buffers than the frame has.  Each fails its one message; the connection goes on.
"""

from __future__ import annotations

import gc
import pickle
import weakref
from typing import Any

import pytest

import execpool
from execpool._shipped import frames, poolmsg, serial
from execpool._shipped.frames import BUF_BYTES, BUF_READONLY, BUF_WRITABLE, MAX_PARTS, parts_prefix, read_parts_prefix

MiB = 1024 * 1024

ECHO = """
while True:
    item = channel.receive()
    if item is None:
        break
    channel.send(item)
"""


# -- the frame layer -------------------------------------------------------------------------


def test_parts_prefix_round_trips() -> None:
    prefix = parts_prefix(10, [(100, BUF_WRITABLE), (7, BUF_BYTES), (0, BUF_READONLY)])
    length = len(prefix) + 10 + 107
    assert read_parts_prefix(prefix, length) == (len(prefix), 10, [(100, 0), (7, 1), (0, 2)])


@pytest.mark.parametrize(
    ("payload", "length", "names"),
    [
        (b"\x00\x00", 2, "shorter than its 8-byte head"),
        (frames.PARTS_HEAD.pack(0, MAX_PARTS + 1), 10**6, "more than the limit"),
        (frames.PARTS_HEAD.pack(0, 1000), 100, "whose table alone is longer"),
        (parts_prefix(5, [(10, BUF_WRITABLE)]), 100, "add up to"),
        (parts_prefix(0, [(2**63, BUF_WRITABLE), (2**63, BUF_WRITABLE)]), 26, "add up to"),
        (parts_prefix(0, [(1, 3)]), 18, "buffer kind 3"),
    ],
)
def test_parts_prefix_that_breaks_the_format_is_refused(payload: bytes, length: int, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        read_parts_prefix(payload, length)


def test_dumps_parts_leaves_large_buffers_out_of_the_pickle() -> None:
    big = bytearray(b"a" * serial.OOB_MIN)
    small = bytearray(b"b" * 100)
    data, bufs = serial.dumps_parts([pickle.PickleBuffer(big), pickle.PickleBuffer(small), 1])
    assert len(data) < 1000 and [b.nbytes for b in bufs] == [serial.OOB_MIN]
    assert serial.loads(data, buffers=[bytearray(bufs[0])]) == [big, small, 1]
    with pytest.raises(execpool.DumpError, match="PickleBuffer"):
        execpool.dumps(pickle.PickleBuffer(big))  # the plain serializer still refuses them


def test_dumps_oob_takes_large_buffers_out_of_the_pickle() -> None:
    big, small = bytearray(b"b" * poolmsg.OOB_MIN), bytearray(10)
    pb = pickle.PickleBuffer(bytearray(b"p" * poolmsg.OOB_MIN))
    items = [big, small, (1, bytes(big)), pb]
    data, bufs = poolmsg.dumps_oob(items, 5)
    assert [b.raw().nbytes for b in bufs] == [poolmsg.OOB_MIN] * 3 and len(data) < 1000
    # what the channel hands the other side: bytes for a bytes source, else a bytearray
    arrived = [bytes(b.raw()) if b.raw().readonly else bytearray(b.raw()) for b in bufs]
    assert pickle.loads(data, buffers=arrived) == [big, small, (1, bytes(big)), bytearray(pb.raw())]
    assert type(pickle.loads(data, buffers=arrived)[2][1]) is bytes
    assert poolmsg.dumps_oob([bytearray(poolmsg.OOB_MIN)], 4)[1] == []  # protocol 4: all in band
    assert poolmsg.dumps_oob(list(range(10)), 5)[1] == []


# -- channels ------------------------------------------------------------------------------------


@pytest.fixture
def echo(anygw: execpool.Gateway) -> Any:
    ch = anygw.remote_exec(ECHO)
    yield ch
    ch.send(None)
    ch.waitclose(10)


def test_buffers_arrive_as_the_type_their_source_had_on_every_python(echo: Any) -> None:
    writable = bytearray(range(256)) * 1024  # 256 KiB
    echo.send(pickle.PickleBuffer(writable))
    got = echo.receive(10)
    assert type(got) is bytearray and got == writable
    echo.send(pickle.PickleBuffer(bytes(writable)))
    got = echo.receive(10)
    assert type(got) is bytes and got == writable
    big = bytes(writable) * 8  # 2 MiB top-level bytes: out of band, still bytes at the other end
    echo.send(big)
    got = echo.receive(10)
    assert type(got) is bytes and got == big
    echo.send([pickle.PickleBuffer(bytearray(b"x" * 100)), {"k": pickle.PickleBuffer(writable)}, 3])
    assert echo.receive(10) == [bytearray(b"x" * 100), {"k": writable}, 3]


def test_read_only_buffers_arrive_as_read_only_memoryviews(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(
        "import pickle; channel.send(pickle.PickleBuffer(memoryview(bytearray(b'r' * 200000)).toreadonly()))"
    )
    got = ch.receive(10)
    assert type(got) is memoryview and got.readonly and got.tobytes() == b"r" * 200000


def test_many_buffers_beyond_the_table_limit_travel_in_band(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(ECHO)
    items = [pickle.PickleBuffer(bytearray(serial.OOB_MIN)) for _ in range(serial.OOB_MAX + 3)]
    _, bufs = serial.dumps_parts(items)
    assert len(bufs) == serial.OOB_MAX
    ch.send(items[:20])
    assert ch.receive(10) == [bytearray(serial.OOB_MIN)] * 20
    ch.send(None)


def test_the_frame_cap_counts_the_buffers(tmp_path: Any) -> None:
    gw = execpool.makegateway("popen//max_frame=1M")
    try:
        ch = gw.remote_exec(ECHO)
        with pytest.raises(execpool.DumpError, match="larger than the frame cap"):
            ch.send(pickle.PickleBuffer(bytearray(2 * MiB)))
        ch.send(pickle.PickleBuffer(bytearray(MiB // 2)))
        assert len(ch.receive(10)) == MiB // 2  # nothing half-written: the channel goes on
        ch.send(None)
    finally:
        gw.exit()


# -- a hostile peer --------------------------------------------------------------------------------

# The worker plays the attacker: it writes PARTS frames by hand on its own channel, then a good item.
HOSTILE = """
import struct
from execpool._shipped import frames
payload = channel.receive()
channel.gateway._send(frames.PARTS, channel.id, payload)
channel.send("still here")
"""


def _parts(pickle_bytes: bytes, buffers: list[tuple[bytes, int]], pad: int = 0) -> bytes:
    return (
        parts_prefix(len(pickle_bytes), [(len(b), kind) for b, kind in buffers])
        + pickle_bytes
        + b"".join(b for b, _ in buffers)
        + b"\0" * pad
    )


_GOOD_PICKLE = b"\x80\x05\x97."  # PROTO 5, NEXT_BUFFER, STOP
_BIG = 300 * 1024  # over the reader's 128 KiB threshold: the buffers are read straight into place


@pytest.mark.parametrize("size", [16, _BIG], ids=["in-buffer", "streamed"])
@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda n: _parts(_GOOD_PICKLE, [(b"x" * n, BUF_WRITABLE)], pad=5), "add up to"),
        (lambda n: frames.PARTS_HEAD.pack(0, MAX_PARTS + 1) + b"\0" * n, "more than the limit"),
        (lambda n: _parts(_GOOD_PICKLE, [(b"x" * n, 7)]), "buffer kind 7"),
        (lambda n: _parts(_GOOD_PICKLE, []) + b"", "malformed channel data"),  # no buffer for NEXT_BUFFER
        (lambda n: _parts(b"\x80\x05\x97\x97.", [(b"x" * n, BUF_WRITABLE)]), "malformed channel data"),
        (lambda n: _parts(b"\x80\x05cos\nsystem\n.", [(b"x" * n, BUF_WRITABLE)]), "refused to load os.system"),
    ],
    ids=["sizes-off", "too-many", "bad-kind", "no-buffer", "fewer-buffers", "global"],
)
def test_a_broken_parts_frame_fails_its_one_message(gw: execpool.Gateway, make: Any, names: str, size: int) -> None:
    ch = gw.remote_exec(HOSTILE)
    ch.send(make(size))
    with pytest.raises(execpool.DataFormatError, match=names):
        ch.receive(10)
    assert ch.receive(10) == "still here"  # the connection and the channel go on
    ch.waitclose(10)
    assert gw.remote_exec("channel.send(1)").receive(10) == 1


def test_a_parts_frame_declaring_the_cap_allocates_no_more_than_the_cap(gw: execpool.Gateway) -> None:
    # A buffer as large as the frame cap lets a peer make this side allocate that much, and no more:
    # the buffer lengths must add up to the frame's length, itself capped before anything is read.
    cap = gw._max_frame
    prefix = parts_prefix(len(_GOOD_PICKLE), [(cap + 1, BUF_WRITABLE)])
    with pytest.raises(ValueError, match="add up to"):
        read_parts_prefix(prefix + _GOOD_PICKLE, cap)


# -- the pool --------------------------------------------------------------------------------------


def test_pool_arguments_and_results_travel_out_of_band(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(2)
    cleanup.append(pool)
    blocks = [bytearray([i]) * (MiB + i) for i in range(6)]
    assert pool.map(len, blocks, chunksize=2) == [MiB + i for i in range(6)]
    assert pool.map(bytearray, [MiB, 5], chunksize=1) == [bytearray(MiB), bytearray(5)]
    data, bufs, by_value = execpool._payload.dumps_items(blocks)
    assert len(data) < 4096 and len(bufs) == 6 and not by_value  # what map sent: buffers, not copies
    assert sum(w.bytes_sent for w in pool.stats()) >= 6 * MiB


def test_a_finished_maps_results_go_when_the_caller_drops_them(cleanup: list[execpool.Pool]) -> None:
    pool = execpool.Pool(1)
    cleanup.append(pool)
    gc.disable()
    try:
        values = pool.map(bytearray, [10, 20])
        async_result = pool.map_async(bytearray, [30])
        async_result.get(30)
        probe = weakref.ref(async_result)
        del async_result
        assert probe() is None  # no cycle between the result object and its job
        assert values == [bytearray(10), bytearray(20)]
    finally:
        gc.enable()
