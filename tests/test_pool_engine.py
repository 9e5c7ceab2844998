"""The pool engine's parts that need no process: the slot and job transition table, the check of
every message a pool worker sends (execpool._shipped.poolmsg.from_worker), jobs and their sinks."""

from __future__ import annotations

from typing import Any

import pytest

from execpool._pool.jobs import Job, ProgressSink
from execpool._pool.states import TRANSITIONS, IllegalTransition, JobState, SlotState, Trigger, advance
from execpool._shipped import poolmsg

PACK = (None, "builtins.ValueError", "bad", "Traceback ...")


def test_every_state_is_reachable_or_initial() -> None:
    reached = set(TRANSITIONS.values())
    assert set(SlotState) - reached == {SlotState.NEW}
    assert set(JobState) - reached == {JobState.OPEN}


@pytest.mark.parametrize(
    ("state", "trigger", "expected"),
    [
        (SlotState.NEW, Trigger.START, SlotState.STARTING),
        (SlotState.STARTING, Trigger.STARTED, SlotState.READY),
        (SlotState.READY, Trigger.LOST, SlotState.DEAD),
        (SlotState.DEAD, Trigger.START, SlotState.STARTING),
        (SlotState.READY, Trigger.RETIRE, SlotState.RETIRING),
        (SlotState.FAILED, Trigger.START, SlotState.STARTING),
        (JobState.OPEN, Trigger.INPUT_END, JobState.EXHAUSTED),
        (JobState.EXHAUSTED, Trigger.END, JobState.ENDED),
        (JobState.OPEN, Trigger.STOP, JobState.STOPPED),
    ],
)
def test_advance_follows_the_table(state: Any, trigger: Trigger, expected: Any) -> None:
    assert advance(state, trigger, "slot w0") is expected


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        (SlotState.NEW, Trigger.STARTED),  # ready without a start
        (SlotState.READY, Trigger.START),  # started twice
        (SlotState.DEAD, Trigger.RETIRE),
        (JobState.ENDED, Trigger.STOP),  # failing a finished job
        (JobState.ENDED, Trigger.END),
        (JobState.OPEN, Trigger.LOST),  # a slot's trigger on a job
    ],
)
def test_an_illegal_transition_raises_naming_what_state_and_trigger(state: Any, trigger: Trigger) -> None:
    with pytest.raises(IllegalTransition, match="slot w7.*%s.*%s" % (state.name, trigger.name)):
        advance(state, trigger, "slot w7")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (("ready", {"python": (3, 8, 18), "pid": 1}), poolmsg.Ready((3, 8, 18), {"python": (3, 8, 18), "pid": 1})),
        (("init_error", PACK), poolmsg.InitError(PACK)),
        (("begun", 4), poolmsg.Begun(4)),
        (("results", 4, b"data", 0, None, []), poolmsg.Results(4, b"data", 0.0, None)),
        (("results", 4, b"data", 0.5, [(1, PACK)], []), poolmsg.Results(4, b"data", 0.5, [(1, PACK)])),
    ],
)
def test_well_formed_messages_become_typed_records(message: Any, expected: Any) -> None:
    assert poolmsg.from_worker(message) == expected


@pytest.mark.parametrize(
    ("message", "names"),
    [
        (None, "non-empty tuple"),
        ((), "non-empty tuple"),
        (["results", 1, b"", 0.0, None, []], "non-empty tuple"),
        (("r", 1, b"", 0.0, None, []), "unknown pool message kind 'r'"),
        ((7,), "unknown pool message kind 7"),
        (("results", 1, b"", 0.0, None), "has 5 fields, not 6"),
        (("results", True, b"", 0.0, None, []), "field cid"),
        (("results", 1, "text", 0.0, None, []), "field data"),
        (("results", 1, b"", -1.0, None, []), "field busy"),
        (("results", 1, b"", float("nan"), None, []), "field busy"),
        (("results", 1, b"", 0.0, {}, []), "field errors"),
        (("results", 1, b"", 0.0, [1], []), "an errors entry"),
        (("results", 1, b"", 0.0, [("0", PACK)], []), "field errors[].i"),
        (("results", 1, b"", 0.0, [(0, ("x",))], []), "field errors[].pack"),
        (("results", 1, b"", 0.0, [(0, (1, "a", "b", "c"))], []), "field errors[].pack"),
        (("results", 1, b"", 0.0, None, "buffers"), "field buffers"),
        (("results", 1, b"", 0.0, None, [b"", 7]), "field buffers"),
        (("begun", "4"), "field cid"),
        (("init_error", "boom"), "field pack"),
        (("ready", []), "field info"),
        (("ready", {}), "field info['python']"),
        (("ready", {"python": ("3", "8")}), "field info['python']"),
    ],
)
def test_a_malformed_message_names_the_field(message: Any, names: str) -> None:
    with pytest.raises(poolmsg.MalformedMessage) as info:
        poolmsg.from_worker(message)
    assert names in str(info.value)


def test_a_huge_field_is_shown_shortened() -> None:
    with pytest.raises(poolmsg.MalformedMessage) as info:
        poolmsg.from_worker(("begun", "x" * 10_000))
    assert len(str(info.value)) < 200


# -- jobs and their sinks ----------------------------------------------------------------------------


class RecordingSink:
    def __init__(self, wants_more: bool = True) -> None:
        self.calls: list[Any] = []
        self.wants_more = wants_more

    def deliver(self, indices: Any, values: list[Any], errors: dict[int, BaseException]) -> bool:
        self.calls.append(("deliver", list(indices), values, errors))
        return self.wants_more

    def fail(self, exc: BaseException) -> None:
        self.calls.append(("fail", exc))

    def finish(self) -> None:
        self.calls.append(("finish",))


def make_job(items: Any, total: int | None, sink: Any) -> Job:
    return Job(abs, iter(items), total, poolmsg.MODE_MAP, None, sink)


def test_a_job_pulls_its_input_lazily_and_is_done_when_every_result_is_delivered() -> None:
    sink = RecordingSink()
    job = make_job(range(5), 5, sink)
    assert job.pull(3) == [0, 1, 2] and job.state is JobState.OPEN
    assert job.pull(3) == [3, 4] and job.state is JobState.EXHAUSTED
    assert not job.done()
    job.deliver(range(0, 5), [0, 1, 2, 3, 4], {})
    assert job.done()
    job.end()
    job.end()  # once only
    assert sink.calls == [("deliver", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], {}), ("finish",)]
    assert job.state is JobState.ENDED


def test_a_sink_that_wants_no_more_stops_the_job_and_every_sink_still_gets_the_delivery() -> None:
    first, progress = RecordingSink(wants_more=False), ProgressSink(None, 4, "abs")
    job = make_job(range(4), 4, first)
    job.sinks.append(progress)
    job.pull(2)
    job.deliver(range(0, 2), [None, None], {0: ValueError("x")})
    assert job.state is JobState.STOPPED and job.ended and not job.wants_input()
    assert progress.done == 2
    assert job.pull(2) == []  # a stopped job reads no more input


def test_an_input_iterator_that_raises_fails_the_job_with_its_exception() -> None:
    def items() -> Any:
        yield 1
        raise KeyError("broken input")

    sink = RecordingSink()
    job = make_job(items(), None, sink)
    assert job.pull(5) == []
    assert job.state is JobState.STOPPED
    assert sink.calls[0][0] == "fail" and isinstance(sink.calls[0][1], KeyError)


def test_a_stream_job_counts_what_its_consumer_took_and_says_when_the_scheduler_waits() -> None:
    job = Job(abs, iter(range(10)), None, poolmsg.MODE_MAP, None, RecordingSink(), limit=4)
    job.next_index = 4
    assert job.outstanding() == 4
    assert job.consumed_one() is False
    job.throttled = True
    assert job.consumed_one() is True and job.throttled is False
    assert job.outstanding() == 2


def test_a_progress_callback_sees_running_counts() -> None:
    seen: list[tuple[int, int | None]] = []
    sink = ProgressSink(lambda done, total: seen.append((done, total)), 5, "abs")
    sink.deliver(range(0, 2), [0, 1], {})
    sink.deliver([4], [4], {})
    assert seen == [(2, 5), (3, 5)]
