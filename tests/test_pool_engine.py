"""The pool engine's pure parts without a process: the slot and job transition table, and the check
of every message a pool worker sends (execpool._shipped.poolmsg.from_worker)."""

from __future__ import annotations

from typing import Any

import pytest

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
        (("results", 4, b"data", 0, None), poolmsg.Results(4, b"data", 0.0, None)),
        (("results", 4, b"data", 0.5, [(1, PACK)]), poolmsg.Results(4, b"data", 0.5, [(1, PACK)])),
    ],
)
def test_well_formed_messages_become_typed_records(message: Any, expected: Any) -> None:
    assert poolmsg.from_worker(message) == expected


@pytest.mark.parametrize(
    ("message", "names"),
    [
        (None, "non-empty tuple"),
        ((), "non-empty tuple"),
        (["results", 1, b"", 0.0, None], "non-empty tuple"),
        (("r", 1, b"", 0.0, None), "unknown pool message kind 'r'"),
        ((7,), "unknown pool message kind 7"),
        (("results", 1, b"", 0.0), "has 4 fields, not 5"),
        (("results", True, b"", 0.0, None), "field cid"),
        (("results", 1, "text", 0.0, None), "field data"),
        (("results", 1, b"", -1.0, None), "field busy"),
        (("results", 1, b"", float("nan"), None), "field busy"),
        (("results", 1, b"", 0.0, {}), "field errors"),
        (("results", 1, b"", 0.0, [1]), "an errors entry"),
        (("results", 1, b"", 0.0, [("0", PACK)]), "field errors[].i"),
        (("results", 1, b"", 0.0, [(0, ("x",))]), "field errors[].pack"),
        (("results", 1, b"", 0.0, [(0, (1, "a", "b", "c"))]), "field errors[].pack"),
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
