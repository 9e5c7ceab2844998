"""The worker's process group, and the guard that ends it once the worker process is gone.

A worker process leads a process group of its own (the popen transport and the
``via=`` relay start it in a new session; over ssh it is the session leader
sshd made, or it makes itself a group leader here).  What its code starts --
a task's ``subprocess.Popen``, a shell pipeline -- joins that group.

:func:`guard_group` forks a small *guard* process that stays in the group,
holds no file descriptor but the read end of a pipe whose write end only the
worker process holds, and waits: when the pipe reports EOF (or the guard's
parent is no longer the worker: a task that forked copied the write end), the
worker process has ended -- by exiting, by ``os._exit``, by SIGKILL -- and
the guard SIGKILLs the whole group, itself included.  So nothing the worker's
code left behind keeps the worker's stdout or stderr open (an ssh session, a
relay or the master would wait for their EOF), locally, over ssh and behind
``via=`` alike, and on every POSIX system (no ``waitid`` needed).

The guard being a member is what makes the signal safe: a process group id
cannot be reused while the group has a member, so the group the guard
signals is always the worker's.  Processes that left the group on purpose
(``start_new_session=True``, ``setsid``, a daemon) are not touched.  Only a
SIGKILL of the guard itself (``kill -9 -PGID`` kills the whole group anyway)
leaves the group to itself.

Stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

#: Seconds between the guard's checks that its parent is still the worker process.
POLL = 0.1


def lead_group() -> bool:
    """Make this process lead a process group (unless it does, or leads a session); True if it does."""
    pid = os.getpid()
    try:
        if os.getpgid(0) != pid:
            os.setpgid(0, 0)
        return os.getpgid(0) == pid
    except OSError:
        return False


def guard_group() -> Optional[int]:
    """Lead a process group and fork its guard (see the module docstring); return the guard's pid.

    Call it before the process starts threads.  Returns None (and changes nothing else) where
    the group cannot be led or the guard cannot be forked.
    """
    if not hasattr(os, "fork") or not lead_group():
        return None
    worker = os.getpid()
    r, w = os.pipe()  # not inheritable: the worker's children do not hold the write end
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the guard
        try:
            _watch(r, worker)
        finally:
            os._exit(0)
    os.close(r)
    _kept.append(w)  # open until the worker process ends, whatever way it ends
    return pid


_kept: List[int] = []


def _watch(r: int, worker: int) -> None:
    import select

    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # a signal meant for the worker is not the guard's end
    os.closerange(0, r)
    os.closerange(r + 1, 65536)  # hold nothing the master, sshd or a relay waits on
    while os.getppid() == worker:
        try:
            ready, _, _ = select.select([r], [], [], POLL)
        except InterruptedError:
            continue
        if ready and not os.read(r, 1):
            break
    try:
        os.killpg(worker, signal.SIGKILL)
    except OSError:
        pass
