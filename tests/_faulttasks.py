"""Task functions for the fault matrix (tests/test_faults.py): importable by name, so they travel by
reference and workers of any Python get this module from the master.  Keep it stdlib-only."""

from __future__ import annotations

import gc
import os
import time

from _pooltasks import square_slowly

#: A frame header starts with its type; 255 is none, so a reader fails at the first byte.
GARBAGE = b"\xff\x00 this is garbage, not a frame \x00\xff" * 4


def square_or_meet_the_fault(item: tuple[int, int, str, bool]) -> int:
    """``square_slowly(x)``; but the task ``x == victim`` first creates ``directory/victim-PID`` (the
    worker's pid), then writes GARBAGE to its worker's protocol stream if ``garbage``, else waits
    (at most 60 s) until ``directory/go`` exists: meanwhile the test kills or stops the worker."""
    x, victim, directory, garbage = item
    if x == victim:
        open(os.path.join(directory, "victim-%d" % os.getpid()), "w").close()
        if garbage:
            (gateway,) = [o for o in gc.get_objects() if type(o).__name__ == "WorkerGateway"]
            os.write(gateway._io.wfd, GARBAGE)
        else:
            go = os.path.join(directory, "go")
            deadline = time.monotonic() + 60
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
    return square_slowly(x)
