"""Chunk sizing (execpool._pool.chunking): pure functions, checked table by table without a process."""

from __future__ import annotations

from typing import Any

import pytest

from execpool._pool import chunking
from execpool._pool.chunking import (
    CHUNK_BYTES,
    CHUNK_FLOOR,
    CHUNK_SECONDS,
    PREFETCH_BELOW,
    PREFETCH_RTTS,
    UNMEASURED_TASKS,
    WINDOW,
    chunk_size,
    next_bytes_per_task,
    next_rtt,
    wants_another_chunk,
)

BASE: dict[str, Any] = {"per_task": None, "rtt": None, "remaining": None, "slots": 1}

CHUNK_SIZES = [
    # (what, arguments over BASE, expected size)
    ("nothing measured: one task, a first result soon", {}, 1),
    ("the caller's chunksize wins over measurements", {"chunksize": 7, "per_task": 1e-6}, 7),
    ("the caller's chunksize with nothing measured", {"chunksize": 7}, 7),
    ("timeout=: always one task", {"chunksize": 7, "per_task": 1e-6, "one_at_a_time": True}, 1),
    ("measured: CHUNK_SECONDS of work", {"per_task": 0.001}, int(CHUNK_SECONDS / 0.001)),
    ("a slow task: one per chunk", {"per_task": 10.0}, 1),
    ("a long round trip: four of them of work", {"per_task": 0.001, "rtt": 0.1}, int(0.4 / 0.001)),
    ("a short round trip does not shrink below CHUNK_SECONDS", {"per_task": 0.001, "rtt": 0.001}, 50),
    ("tiny tasks are floored at 1e-7 s", {"per_task": 0.0}, int(CHUNK_SECONDS / 1e-7)),
    (
        "known length: half the remaining work per slot",
        {"per_task": 1e-5, "remaining": 400, "slots": 2},
        max(int(CHUNK_FLOOR / 1e-5), 100),
    ),
    (
        "the end of a job: not below CHUNK_FLOOR seconds of work",
        {"per_task": 1e-5, "remaining": 10, "slots": 4},
        int(CHUNK_FLOOR / 1e-5),
    ),
    ("the end of a job of slow tasks: one", {"per_task": 1.0, "remaining": 3, "slots": 4}, 1),
    ("big arguments: under CHUNK_BYTES", {"per_task": 1e-6, "bytes_per_task": CHUNK_BYTES / 10}, 10),
    ("huge arguments: still one task", {"per_task": 1e-6, "bytes_per_task": CHUNK_BYTES * 10.0}, 1),
    (
        "a stream: well inside its read-ahead bound",
        {"per_task": 1e-6, "read_ahead": 1000, "slots": 5},
        1000 // (2 * WINDOW * 5),
    ),
    ("maxtasksperchild: the slot's budget caps the chunk", {"chunksize": 50, "budget": 3}, 3),
    ("a spent budget still gives one task", {"chunksize": 50, "budget": 0}, 1),
    (
        "a known function with arguments not yet measured: a probe chunk",
        {"per_task": 1e-6, "sizes_unmeasured": True},
        UNMEASURED_TASKS,
    ),
    (
        "measured sizes lift the probe cap",
        {"per_task": 1e-5, "sizes_unmeasured": True, "bytes_per_task": 10.0},
        int(CHUNK_SECONDS / 1e-5),
    ),
    ("the probe cap leaves a caller's chunksize alone", {"chunksize": 50, "sizes_unmeasured": True}, 50),
    ("no ready slot counted as one", {"per_task": 1e-5, "remaining": 400, "slots": 0}, 200),
]


@pytest.mark.parametrize(("what", "args", "expected"), CHUNK_SIZES, ids=[c[0] for c in CHUNK_SIZES])
def test_chunk_size(what: str, args: dict[str, Any], expected: int) -> None:
    assert chunk_size(**{**BASE, **args}) == expected


FAST = PREFETCH_BELOW / 10  # seconds per task far below the prefetch threshold

PREFETCH = [
    # (what, in_flight, running_tasks, per_task, rtt, expected)
    ("an idle slot always wants a chunk", 0, 0, None, None, True),
    ("a full window never does", WINDOW, 1, FAST, 1.0, False),
    ("unknown task time: no second chunk", 1, 1, None, 1.0, False),
    ("a short running chunk: the next goes ahead", 1, 1, FAST, None, True),
    ("a long running chunk: the next waits", 1, 1, 1.0, None, False),
    ("a long chunk next to a long round trip: ahead", 1, 1, 0.2, 0.01, True),
    ("exactly at the threshold: waits", 1, 1, PREFETCH_RTTS * 0.01, 0.01, False),
    ("many short tasks add up: waits", 1, 100, FAST, None, False),
]


@pytest.mark.parametrize(
    ("what", "in_flight", "running", "per_task", "rtt", "expected"), PREFETCH, ids=[c[0] for c in PREFETCH]
)
def test_wants_another_chunk(
    what: str, in_flight: int, running: int, per_task: float | None, rtt: float | None, expected: bool
) -> None:
    assert wants_another_chunk(in_flight, running, per_task, rtt) is expected


@pytest.mark.parametrize(
    ("previous", "sample", "expected"),
    [(None, 0.5, 0.5), (1.0, 0.0, 0.8), (0.1, 0.1, 0.1)],
)
def test_next_rtt_smooths_round_trips(previous: float | None, sample: float, expected: float) -> None:
    assert next_rtt(previous, sample) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("previous", "payload", "tasks", "expected"),
    [(0.0, 100, 4, 25.0), (100.0, 0, 1, 70.0), (10.0, 20, 2, 10.0)],
)
def test_next_bytes_per_task_smooths_argument_sizes(previous: float, payload: int, tasks: int, expected: float) -> None:
    assert next_bytes_per_task(previous, payload, tasks) == pytest.approx(expected)


def test_the_module_is_pure() -> None:
    # no process, thread or clock: what it imports is math, nothing more
    assert {name for name in vars(chunking) if name in ("time", "threading", "os", "socket")} == set()
