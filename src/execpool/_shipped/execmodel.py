"""Execution models: the concurrency primitives a gateway hands to code that runs with it.

``gateway.execmodel`` (on the master, and ``channel.gateway.execmodel`` in remote
code) is an :class:`ExecModel`.  Code written for execnet asks it for locks,
events and queues instead of importing :mod:`threading` itself, so the same code
could run under another concurrency library.  execpool runs every worker with
operating-system threads, so both models it accepts hand out :mod:`threading`
objects; they differ only in where a worker runs remote code:

``thread``
    the first ``remote_exec`` (and any that arrives while the main thread is
    idle) runs in the worker's main thread, others in threads of their own.
``main_thread_only``
    the same placement; the name is accepted so that execnet clients, which ask
    for it to keep their code in the main thread, run unchanged.

execnet's ``eventlet`` and ``gevent`` models are refused with an error that
says so.

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import queue
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict

#: The models execpool accepts, by name.
MODELS = ("thread", "main_thread_only")


class ExecModel:
    """Locks, events, queues and threads for code running with a gateway."""

    def __init__(self, name: str) -> None:
        self.backend = name
        self.queue = queue

    @property
    def socket(self) -> Any:
        import socket

        return socket

    @property
    def subprocess(self) -> Any:
        import subprocess

        return subprocess

    def __repr__(self) -> str:
        return "<ExecModel %r>" % self.backend

    @property
    def name(self) -> str:
        return self.backend

    def RLock(self) -> Any:  # noqa: N802 - execnet's name
        return threading.RLock()

    def Lock(self) -> Any:  # noqa: N802 - execnet's name
        return threading.Lock()

    def Event(self) -> threading.Event:  # noqa: N802 - execnet's name
        return threading.Event()

    def get_ident(self) -> int:
        return threading.get_ident()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def start(self, func: Callable[..., Any], args: tuple = ()) -> None:  # type: ignore[type-arg]
        """Run ``func(*args)`` in a new daemon thread."""
        threading.Thread(target=func, args=args, daemon=True).start()

    def fdopen(self, fd: int, mode: str, bufsize: int = 1, closefd: bool = True) -> Any:
        return os.fdopen(fd, mode, bufsize, closefd=closefd)


_models: Dict[str, ExecModel] = {}


def get_execmodel(name: Any) -> ExecModel:
    """The :class:`ExecModel` called ``name`` (an ExecModel is returned as it is)."""
    if isinstance(name, ExecModel):
        return name
    if name is None or name is True:
        name = "thread"
    if name not in MODELS:
        raise ValueError(
            "execmodel %r is not supported: execpool runs workers with threads; use %s"
            % (name, " or ".join(repr(m) for m in MODELS))
        )
    model = _models.get(name)
    if model is None:
        model = _models[name] = ExecModel(name)
    return model
