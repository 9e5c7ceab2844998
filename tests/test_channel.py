"""Channels: ordering, closing, errors, callbacks, file views, channels over channels."""

from __future__ import annotations

import threading

import pytest

import execpool
from _helpers import wait_until

ECHO = "for item in channel: channel.send(item)"


def test_items_arrive_in_order_and_intact(anygw: execpool.Gateway) -> None:
    ch = anygw.remote_exec(ECHO)
    items = [None, True, False, 0, -1, 2**100, -(2**100), 1.5, 2j, "ü", b"\x00b", bytearray(b"ba"), (1, (2,)), [3],
             {"k": {1, 2}}, frozenset({4}), {1: [2, {3: (4,)}]}]  # fmt: skip
    for item in items:
        ch.send(item)
    got = [ch.receive(10) for _ in items]
    assert got == items
    assert [type(x) for x in got] == [type(x) for x in items]
    ch.close()


def test_iteration_ends_when_the_remote_side_closes(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("for i in range(5): channel.send(i)")
    assert list(ch) == [0, 1, 2, 3, 4]


def test_receive_after_a_normal_close_raises_eoferror_every_time(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send(1)")
    assert ch.receive(10) == 1
    for _ in range(2):
        with pytest.raises(EOFError):
            ch.receive(10)
    assert ch.isclosed()


def test_receive_times_out_with_a_clear_error(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.receive()")
    with pytest.raises(execpool.TimeoutError, match=r"within 0\.05 seconds") as info:
        ch.receive(timeout=0.05)
    assert isinstance(info.value, TimeoutError)  # the builtin, too
    ch.send("go")
    ch.waitclose(10)


def test_remote_exception_arrives_as_remote_error_on_receive_and_waitclose(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send('before'); raise ValueError('remote boom')")
    assert ch.receive(10) == "before"
    with pytest.raises(execpool.RemoteError, match="remote boom") as info:
        ch.receive(10)
    assert "ValueError: remote boom" in info.value.formatted
    assert info.value.gateway_id == gw.id
    with pytest.raises(execpool.RemoteError):
        ch.waitclose(10)
    assert ch.RemoteError is execpool.RemoteError


def test_waitclose_returns_after_a_normal_end_and_times_out_otherwise(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.receive()")
    with pytest.raises(execpool.TimeoutError):
        ch.waitclose(0.05)
    ch.send(None)
    ch.waitclose(10)


def test_send_on_a_closed_channel_raises_oserror(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.receive()")
    ch.close()
    with pytest.raises(execpool.ChannelClosedError, match="closed by this side") as info:
        ch.send(1)
    assert isinstance(info.value, OSError)
    ch.close()  # twice is harmless


def test_send_after_the_remote_side_closed_raises_oserror(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("pass")
    ch.waitclose(10)
    with pytest.raises(OSError, match="other side closed it"):
        ch.send(1)


def test_local_close_ends_the_remote_iteration(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("n = 0\nfor x in channel: n += x\nimport sys; sys.stderr.write('sum %d\\n' % n)")
    for i in range(4):
        ch.send(i)
    ch.close()
    with pytest.raises(EOFError, match="closed by this side"):
        ch.receive(1)


def test_close_with_error_reaches_the_remote_side_as_remote_error(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(
        """
        result = channel.gateway.newchannel()
        channel.send(result)
        try:
            channel.receive()
        except channel.RemoteError as exc:
            result.send("got: " + exc.formatted)
        """
    )
    result = ch.receive(10)
    ch.close(error="master says no")
    assert result.receive(10) == "got: master says no"


def test_unserializable_item_is_refused_at_send_and_the_channel_stays_usable(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(ECHO)
    with pytest.raises(execpool.DumpError, match=r"_thread\.lock"):
        ch.send([1, threading.Lock()])
    ch.send("fine")
    assert ch.receive(10) == "fine"
    ch.close()


def test_setcallback_delivers_queued_items_first_then_new_ones_in_order(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("for i in range(3): channel.send(i)\nchannel.receive()\nfor i in range(3, 6): channel.send(i)")
    assert wait_until(lambda: ch._items.qsize() >= 3, timeout=10)
    got: list[object] = []
    ch.setcallback(got.append, endmarker="END")
    assert got[:3] == [0, 1, 2]
    ch.send("continue")
    ch.waitclose(10)
    assert wait_until(lambda: got == [0, 1, 2, 3, 4, 5, "END"], timeout=10), got


def test_setcallback_on_an_already_closed_channel_delivers_the_endmarker(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send('x')")
    ch.waitclose(10)
    got: list[object] = []
    ch.setcallback(got.append, endmarker=None)
    assert got == ["x", None]


def test_setcallback_without_endmarker_delivers_only_items(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send('x')")
    got: list[object] = []
    ch.setcallback(got.append)
    ch.waitclose(10)
    assert wait_until(lambda: got == ["x"])
    with pytest.raises(execpool.ExecpoolError, match="already has a callback"):
        ch.setcallback(got.append)
    with pytest.raises(execpool.ExecpoolError, match="has a callback"):
        ch.receive(1)


def test_a_failing_callback_closes_the_channel_with_its_error(
    gw: execpool.Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = gw.remote_exec(
        """
        channel.send(1)
        try:
            channel.receive()
        except channel.RemoteError as exc:
            import sys
            sys.stderr.write("REMOTE SAW " + exc.formatted.strip().splitlines()[-1] + "\\n")
        """
    )

    def bad(item: object) -> None:
        raise RuntimeError("callback failed")

    ch.setcallback(bad)
    ch.waitclose(30)
    seen = ""

    def saw() -> bool:  # accumulate: a line written while readouterr() truncates would be lost
        nonlocal seen
        seen += capsys.readouterr().err
        return "REMOTE SAW RuntimeError: callback failed" in seen

    assert wait_until(saw, timeout=30), seen


def test_callback_runs_in_the_reader_thread_for_live_items(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.receive(); channel.send(1)")
    threads: list[str] = []
    ch.setcallback(lambda item: threads.append(threading.current_thread().name))
    ch.send("go")
    ch.waitclose(10)
    assert wait_until(lambda: threads == ["execpool-reader-%s" % gw.id])


def test_makefile_write_and_read_as_a_stream(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(
        """
        out = channel.makefile("w")
        out.write("line one\\nline ")
        out.write("two\\n")
        out.write("tail")
        """
    )
    f = ch.makefile("r")
    assert f.readline() == "line one\n"
    assert f.read(4) == "line"
    assert f.readline() == " two\n"
    assert f.read() == "tail"
    assert f.read() == ""
    assert f.readline() == ""


def test_makefile_reads_bytes_and_iterates_lines(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("f = channel.makefile('w')\nf.write(b'a\\nb')\nf.write(b'\\nc')")
    assert list(ch.makefile("r")) == [b"a\n", b"b\n", b"c"]


def test_makefile_readlines_reads_to_the_end(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("f = channel.makefile('w')\nf.write('one\\ntwo\\n')\nf.write('three')")
    assert ch.makefile("r").readlines() == ["one\n", "two\n", "three"]


def test_makefile_with_proxyclose_closes_the_channel(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send(list(channel))")
    f = ch.makefile("w", proxyclose=True)
    f.write("x")
    f.write("y")
    f.close()
    assert ch.isclosed()
    with pytest.raises(ValueError, match="closed"):
        f.write("z")


def test_makefile_without_proxyclose_leaves_the_channel_open(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(ECHO)
    with ch.makefile("w") as f:
        f.write("x")
    assert not ch.isclosed()
    assert ch.receive(10) == "x"
    with pytest.raises(ValueError, match="mode"):
        ch.makefile("rw")
    ch.close()


def test_makefile_read_refuses_non_text_items(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("channel.send(42)")
    with pytest.raises(TypeError, match="only str or bytes"):
        ch.makefile("r").read()


def test_channels_travel_over_channels_both_ways(anygw: execpool.Gateway) -> None:
    ch = anygw.remote_exec(
        """
        sub = channel.receive()
        sub.send("over the master's channel")
        mine = channel.gateway.newchannel()
        channel.send(mine)
        mine.send(mine.receive() * 2)
        """
    )
    sub = anygw.newchannel()
    ch.send(sub)
    assert sub.receive(10) == "over the master's channel"
    theirs = ch.receive(10)
    assert isinstance(theirs, execpool.Channel)
    assert theirs.gateway is anygw
    assert theirs.id % 2 == 0  # allocated by the worker
    theirs.send(21)
    assert theirs.receive(10) == 42


def test_a_channel_cannot_be_sent_over_another_gateway(group: execpool.Group) -> None:
    gw1, gw2 = group.makegateways(["popen", "popen"])
    ch = gw1.remote_exec("channel.receive()")
    with pytest.raises(execpool.DumpError, match="belongs to gateway"):
        ch.send(gw2.newchannel())
    ch.send(None)


def test_a_channel_cannot_be_pickled(gw: execpool.Gateway) -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(gw.newchannel())


def test_channel_repr_shows_id_gateway_and_state(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec("pass")
    assert repr(ch).startswith("<Channel id=%d %s" % (ch.id, gw.id))
    ch.waitclose(10)
    assert "closed" in repr(ch)


def test_bulk_data_round_trips(gw: execpool.Gateway) -> None:
    ch = gw.remote_exec(ECHO)
    blob = bytes(range(256)) * 4096 * 4  # 4 MiB
    for _ in range(3):
        ch.send(blob)
    for _ in range(3):
        assert ch.receive(30) == blob
    ch.close()


def test_many_small_messages_from_several_threads_arrive_complete(gw: execpool.Gateway) -> None:
    counter = gw.remote_exec(
        """
        total = count = 0
        while True:
            x = channel.receive()
            if x is None:
                break
            total += x
            count += 1
        channel.send((count, total))
        """
    )

    def worker() -> None:
        for i in range(2000):
            counter.send(i % 7)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counter.send(None)
    assert counter.receive(30) == (8000, 4 * sum(i % 7 for i in range(2000)))


def test_channel_data_cannot_set_attributes_of_a_channel(gw: execpool.Gateway) -> None:
    ch = gw.newchannel()
    # PROTO 2; ("ch", id) BINPERSID -> the channel; {"id": 7} BUILD -> must not touch the channel
    crafted = b"\x80\x02X\x02\x00\x00\x00chJ" + ch.id.to_bytes(4, "little") + b"\x86Q}X\x02\x00\x00\x00idK\x07sb."
    with pytest.raises(execpool.DataFormatError, match="set the state of a channel"):
        execpool.loads(crafted, gw._channel_for_id)
    assert ch.id % 2 == 1 and not ch.isclosed()
