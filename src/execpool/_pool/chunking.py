"""Chunk sizing: pure functions of what the scheduler measured (no state, no I/O).

Without a ``chunksize`` the first chunk of a job is one task (unless an
earlier job of the same function says how long its tasks take, and then
at most ``UNMEASURED_TASKS`` until this job's own arguments were measured); then the
size follows the measured time per task (a chunk should take
``CHUNK_SECONDS`` or four round trips, whichever is longer) and shrinks
towards the end of a job of known length, down to ``CHUNK_FLOOR`` seconds of
work, so that slots finish together.  A slot holds up to ``WINDOW`` chunks,
but a second one only when its running chunk is short next to a round trip
(:func:`wants_another_chunk`): long chunks do not queue behind each other
while another pool worker could take them.
"""

from __future__ import annotations

import math

#: Chunks a slot holds at once (one running, the next already there).
WINDOW = 2
#: Seconds of work an automatic chunk aims at, and the least a chunk shrinks to at a job's end.
CHUNK_SECONDS = 0.05
CHUNK_FLOOR = 0.002
#: Bytes of pickled arguments an automatic chunk aims to stay under.
CHUNK_BYTES = 4 * 1024 * 1024
#: The most tasks an automatic chunk gets while its job's argument sizes are not yet measured
#: (its function's time per task may be known from an earlier job; its arguments' size is not).
UNMEASURED_TASKS = 8
#: A busy slot is sent its next chunk ahead of time when the running one is expected to take
#: less than this many seconds, or less than PREFETCH_RTTS round trips to its pool worker.
PREFETCH_BELOW = 0.005
PREFETCH_RTTS = 50


def chunk_size(
    *,
    per_task: float | None,
    rtt: float | None,
    remaining: int | None,
    slots: int,
    chunksize: int | None = None,
    bytes_per_task: float = 0.0,
    read_ahead: int | None = None,
    budget: int | None = None,
    one_at_a_time: bool = False,
    sizes_unmeasured: bool = False,
) -> int:
    """How many tasks the next chunk of a job gets.

    ``per_task``: measured seconds per task (None: unknown); ``rtt``: the slot's
    round trip in seconds (None: unknown); ``remaining``: tasks of the job not yet
    pulled (None: unknown length); ``slots``: ready slots; ``chunksize``: the
    caller's fixed size; ``bytes_per_task``: pickled argument bytes per task;
    ``read_ahead``: an imap's bound on tasks ahead of its consumer; ``budget``:
    tasks the slot may still take (``maxtasksperchild``); ``one_at_a_time``:
    tasks have a ``timeout`` and travel alone; ``sizes_unmeasured``: no chunk of
    this job was pickled yet, so its arguments' size is unknown (the time per task
    may come from an earlier job of the function: its arguments may have been tiny).
    """
    if one_at_a_time:
        return 1
    if chunksize:
        n = chunksize
    elif per_task is None:
        n = 1  # nothing known yet: one task, and a first result soon
    else:
        per = max(per_task, 1e-7)
        target = max(CHUNK_SECONDS, 4 * (rtt or 0.0))
        n = max(1, int(target / per))
        if remaining is not None:
            # Towards the end, smaller chunks so that the slots finish together; but never below
            # CHUNK_FLOOR seconds of work, where messages would cost more than balance gains.
            floor = max(1, int(CHUNK_FLOOR / per))
            n = min(n, max(floor, math.ceil(remaining / (2 * max(1, slots)))))
        if bytes_per_task > 0:
            n = min(n, max(1, int(CHUNK_BYTES / bytes_per_task)))
        elif sizes_unmeasured:
            n = min(n, UNMEASURED_TASKS)
        if read_ahead is not None:  # an imap: stay well inside its read-ahead bound
            n = min(n, max(1, read_ahead // (2 * WINDOW * max(1, slots))))
    if budget is not None:
        n = min(n, budget)
    return max(1, n)


def wants_another_chunk(in_flight: int, running_tasks: int, per_task: float | None, rtt: float | None) -> bool:
    """Whether a slot with ``in_flight`` chunks should get one more now.

    An idle slot always does; a full one (``WINDOW``) never.  A busy one gets the
    next chunk ahead of time only when its running chunk (``running_tasks`` tasks
    of ``per_task`` seconds each, None: unknown) is expected to be short next to a
    round trip: then waiting for its result before sending more would leave the
    pool worker idle for a noticeable share of the time.
    """
    if in_flight >= WINDOW:
        return False
    if in_flight == 0:
        return True
    if per_task is None:
        return False
    return per_task * running_tasks < max(PREFETCH_BELOW, PREFETCH_RTTS * (rtt or 0.0))


def next_rtt(previous: float | None, sample: float) -> float:
    """The smoothed round trip after one more measurement."""
    return sample if previous is None else 0.8 * previous + 0.2 * sample


def next_bytes_per_task(previous: float, payload_bytes: int, tasks: int) -> float:
    """The smoothed pickled bytes per task after one more chunk (``previous`` 0: none yet)."""
    sample = payload_bytes / tasks
    return 0.7 * previous + 0.3 * sample if previous else sample
