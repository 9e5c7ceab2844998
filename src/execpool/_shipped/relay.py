"""The relaying end of ``popen//via=GWID``: runs in the via gateway's worker process.

:func:`serve` is sent by reference with ``remote_exec`` (see ``execpool._relay``,
the master's end).  It receives ``(argv, env, stderr_channel)``, starts
``argv`` (``PYTHON -c BOOTSTRAP``) as a child process in a session of its own,
and copies bytes: relay channel -> child stdin, child stdout -> relay channel,
child stderr -> the stderr channel.  Control items on the relay channel are
tuples (data is always ``bytes``): it sends ``("pid", n)`` once the child
runs, ``("error", text)`` if it could not start, ``("status", code)`` when it
exits; it obeys ``("eof",)`` (close the child's stdin) and ``("kill",)``
(SIGKILL the child's process group).

Stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

#: Bytes read from the child's stdout or stderr at a time.
BLOCK = 262144


def start_child(argv: List[str], env: Optional[Dict[str, str]]) -> "subprocess.Popen[bytes]":
    """Start a worker process's interpreter with unbuffered pipes, in a session of its own.

    ``env`` adds to (or overrides) this process's environment.  The popen transport on the
    master starts its interpreters the same way.
    """
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        close_fds=True,
        start_new_session=True,
        env=full_env,
    )


def serve(channel: Any) -> None:
    """Start the relayed child process and copy its bytes until it ends (or the channel does)."""
    argv, env, errch = channel.receive()
    try:
        proc = start_child(argv, env)
    except OSError as exc:
        channel.send(("error", "%s: %s" % (type(exc).__name__, exc)))
        errch.close()
        return
    channel.send(("pid", proc.pid))
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def stdout_done() -> None:
        status = proc.wait()
        try:
            channel.send(("status", status))
        except OSError:
            pass

    threading.Thread(target=_pump, args=(proc.stderr.fileno(), errch, errch.close), daemon=True).start()
    out = threading.Thread(target=_pump, args=(proc.stdout.fileno(), channel, stdout_done), daemon=True)
    out.start()
    stdin = proc.stdin.fileno()
    try:
        for item in channel:
            if type(item) is bytes:
                view = memoryview(item)
                try:
                    while view:
                        view = view[os.write(stdin, view) :]
                except OSError:
                    pass
            elif item == ("eof",):
                proc.stdin.close()
            elif item == ("kill",):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
    finally:
        if proc.poll() is None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        out.join(30)


def _pump(fd: int, out: Any, end: Callable[[], None]) -> None:
    """Send what ``fd`` yields on the channel ``out`` until EOF (or the channel closes), then ``end()``."""
    while True:
        try:
            data = os.read(fd, BLOCK)
        except OSError:
            data = b""
        if not data:
            break
        try:
            out.send(data)
        except OSError:
            break
    end()
