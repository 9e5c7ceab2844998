"""The pool engine behind :class:`~execpool.Pool` and :class:`~execpool.Executor`.

One module per concern: :mod:`.scheduler` (the event loop), :mod:`.events`
(what travels on its queue), :mod:`.states` (slot and job states and their
one transition table), :mod:`.jobs` (jobs, chunks and the sinks results go
to), :mod:`.dispatch` (the job queue and sending chunks), :mod:`.chunking`
(chunk sizing, pure functions), :mod:`.slots` (slots and their worker
processes: start, replace, retire, host relays) and :mod:`.hostsync`
(``rsync=``).  The pool's wire messages are in ``_shipped/poolmsg.py``.
"""

from __future__ import annotations

from .jobs import Job, PoolTerminated, Sink
from .scheduler import Scheduler
from .slots import WorkerStats

__all__ = ["Job", "PoolTerminated", "Scheduler", "Sink", "WorkerStats"]
