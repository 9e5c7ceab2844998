"""What travels on the scheduler's event queue: one small typed record per kind of event.

Starter threads post :class:`Ready` and :class:`StartFailed`; channel callbacks
(the gateways' reader threads) post :class:`Message` and :class:`Lost`;
caller threads post :class:`Submitted` and :class:`Wake`; stream consumers post
:class:`Consumed`, and whichever thread drops a stream's last reference posts
:class:`Abandoned`; timers post :class:`RetrySlot`.  Only the scheduler thread
takes them off the queue.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import Job
    from .slots import Slot


@dataclasses.dataclass(frozen=True)
class Submitted:
    """A caller submitted a job."""

    job: Job


@dataclasses.dataclass(frozen=True)
class Consumed:
    """The consumer of a throttled stream took a result: there is room to read ahead again."""

    job: Job


@dataclasses.dataclass(frozen=True)
class Ready:
    """Start number ``gen`` of a slot brought its pool worker up (``info``: its gateway's ``remote_info()``)."""

    slot: Slot
    gen: int
    info: Any


@dataclasses.dataclass(frozen=True)
class StartFailed:
    """Start number ``gen`` of a slot failed with ``error``; ``counted``: it was counted in ``starting``."""

    slot: Slot
    gen: int
    error: BaseException
    counted: bool = True


@dataclasses.dataclass(frozen=True)
class Message:
    """A slot's pool worker sent ``msg``, on the channel of start number ``gen``."""

    slot: Slot
    gen: int
    msg: Any


@dataclasses.dataclass(frozen=True)
class Lost:
    """The task channel of start number ``gen`` of a slot closed: its worker process is gone."""

    slot: Slot
    gen: int


@dataclasses.dataclass(frozen=True)
class Abandoned:
    """Nothing refers to a stream's result iterator any more: the rest of its input is not run."""

    job: Job


@dataclasses.dataclass(frozen=True)
class RetrySlot:
    """Time to try a failed slot's host again."""

    slot: Slot


@dataclasses.dataclass(frozen=True)
class Wake:
    """Look again (the pool's state changed, a host finished expanding)."""


Event = Submitted | Consumed | Abandoned | Ready | StartFailed | Message | Lost | RetrySlot | Wake
