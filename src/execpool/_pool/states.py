"""The states of slots and jobs, the one table of their transitions, and the function that applies it.

In the manner of h11's state machine: a transition is a row of
:data:`TRANSITIONS`, ``(state, trigger) -> next state``; :func:`advance` looks
it up and raises :class:`IllegalTransition` for anything not in the table, so
that a scheduling bug shows as an error naming the slot or job, the state and
the trigger, instead of a silently wrong state.

Slots (the scheduler's record of one pool worker)::

    NEW ─START─> STARTING ─STARTED─> READY ─RETIRE─> RETIRING ─LOST─> DEAD ─START─> STARTING
     │              │ └─LOST─> DEAD    └─LOST─> DEAD     └─START─> STARTING (maxtasksperchild)
     │              └─START_FAILED─> FAILED ─START─> STARTING (its host is tried again)
     └─START_FAILED─> FAILED (its host's relay could not start)

    (a LOST of a slot already DEAD or FAILED leaves it so)

Jobs (one call of map/imap/apply/submit)::

    OPEN ──INPUT_END──> EXHAUSTED ──END──> ENDED
      └──STOP──> STOPPED ──END──> ENDED     (EXHAUSTED ──STOP──> STOPPED; OPEN ──END──> ENDED)
"""

from __future__ import annotations

import enum
from typing import TypeVar, cast

from .._shipped.errors import ExecpoolError


class SlotState(enum.Enum):
    NEW = "new"  # recorded, no start attempted yet
    STARTING = "starting"  # a starter thread is bringing its worker process and pool worker up
    READY = "ready"  # its pool worker takes chunks
    RETIRING = "retiring"  # takes no more work; its gateway is ending
    DEAD = "dead"  # its worker process is gone (a replacement may be starting)
    FAILED = "failed"  # its start failed (it may be tried again)


class JobState(enum.Enum):
    OPEN = "open"  # input may have more tasks
    EXHAUSTED = "exhausted"  # every task pulled; results outstanding
    STOPPED = "stopped"  # failed, or its sink wants no more results; not finished yet
    ENDED = "ended"  # finished: its sinks were told


class Trigger(enum.Enum):
    # slots
    START = "start"
    STARTED = "started"
    START_FAILED = "start failed"
    LOST = "lost"
    RETIRE = "retire"
    # jobs
    INPUT_END = "input end"
    STOP = "stop"
    END = "end"


State = SlotState | JobState

_S, _J, _T = SlotState, JobState, Trigger

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (_S.NEW, _T.START): _S.STARTING,
    (_S.NEW, _T.START_FAILED): _S.FAILED,  # its host's relay could not start
    (_S.STARTING, _T.STARTED): _S.READY,
    (_S.STARTING, _T.START_FAILED): _S.FAILED,
    (_S.STARTING, _T.LOST): _S.DEAD,  # its end arrived before its start was handled
    (_S.READY, _T.LOST): _S.DEAD,
    (_S.READY, _T.RETIRE): _S.RETIRING,
    (_S.RETIRING, _T.LOST): _S.DEAD,
    (_S.RETIRING, _T.START): _S.STARTING,
    (_S.DEAD, _T.LOST): _S.DEAD,
    (_S.DEAD, _T.START): _S.STARTING,
    (_S.FAILED, _T.LOST): _S.FAILED,
    (_S.FAILED, _T.START): _S.STARTING,
    (_J.OPEN, _T.INPUT_END): _J.EXHAUSTED,
    (_J.OPEN, _T.STOP): _J.STOPPED,
    (_J.OPEN, _T.END): _J.ENDED,
    (_J.EXHAUSTED, _T.STOP): _J.STOPPED,
    (_J.EXHAUSTED, _T.END): _J.ENDED,
    (_J.STOPPED, _T.STOP): _J.STOPPED,
    (_J.STOPPED, _T.END): _J.ENDED,
}

S = TypeVar("S", SlotState, JobState)


class IllegalTransition(ExecpoolError):
    """The pool engine tried a state change its transition table does not have (a bug in execpool)."""


def advance(state: S, trigger: Trigger, what: str) -> S:
    """The state after ``trigger`` happens to ``what`` (a slot's or job's name) in ``state``."""
    try:
        return cast(S, TRANSITIONS[(state, trigger)])
    except KeyError:
        raise IllegalTransition(
            "%s: no transition from state %s on %s (a bug in execpool's pool engine; please report it)"
            % (what, state.name, trigger.name)
        ) from None
