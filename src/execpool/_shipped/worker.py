"""The worker side: what runs inside a remote interpreter after the bootstrap.

Threads and queues of a worker process::

    stdin (protocol fd) --> reader thread --> EXEC  --> main-thread job queue (if the
                                          |             main thread is idle) or a new thread
                                          |--> STATUS --> answered from the reader thread
                                          `--> TERMINATE / EOF --> shutdown
    main thread: runs jobs from its queue until shutdown, then returns; the process
                 then exits normally (atexit handlers run).  A watchdog thread ends the
                 process with os._exit if that takes longer than the grace period.

The first remote_exec (and any that arrives while the main thread is idle)
runs in the main thread, so code that needs it (signals) works; others run
concurrently in threads of their own.  Each job runs its source in a fresh
namespace with ``channel`` and ``__name__ == "__channelexec__"``, then closes
its channel: normally, or with the formatted traceback if it raised.

Standard streams: the protocol uses duplicates of fds 0 and 1; fd 0 is then
``/dev/null`` and fd 1 a copy of fd 2, so ``print`` and any write to fd 1 or 2
goes to the worker's stderr, which the master relays prefixed with the gateway id.

Process group: the worker process leads one, and a guard process ends it once the worker
process is gone, so what its code started does not outlive it (see ``procgroup``).

Shipped to remote interpreters as source: stdlib only, CPython 3.8+.
"""

from __future__ import annotations

import os
import sys
import threading
from _queue import SimpleQueue

from . import procgroup as _procgroup
from . import trace as _trace
from .connection import BaseGateway, FdIO, enlarge_pipe
from .errors import DataFormatError, ProtocolError
from .execmodel import get_execmodel
from .frames import EXEC, HELLO, STATUS, TERMINATE, type_name
from .serial import dumps, loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional


#: Exit status of a worker whose shutdown overran the grace period.
EXIT_OVERRUN = 70


def _cpu_count() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        return os.cpu_count()


def _format_exception(source: str, filename: str) -> str:
    """The current exception's traceback, without the worker's own frame on top."""
    import linecache
    import traceback

    lines = source.splitlines(True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    _register_own_sources()
    etype, value, tb = sys.exc_info()
    if tb is not None and tb.tb_next is None:
        # raised by compile() itself (a SyntaxError in the sent source): the error says it all
        return "".join(traceback.format_exception_only(etype, value))
    return "".join(traceback.format_exception(etype, value, tb.tb_next if tb is not None else None))


def _register_own_sources() -> None:
    sources = getattr(sys.modules.get("_execpool"), "_sources", None)
    if not sources:
        return
    import linecache

    for name, text in sources.items():
        fn = "<execpool %s>" % name
        if fn not in linecache.cache:
            linecache.cache[fn] = (len(text), None, text.splitlines(True), fn)


class WorkerGateway(BaseGateway):
    """The worker's end of the connection; ``channel.gateway`` in remote code."""

    _first_channel_id = 2
    # The master runs code here at will, so the bounds that protect a loader from its peer's
    # data (nesting, hash collisions) would protect nothing, and cost C speed on large messages.
    _guard_loads = False

    def __init__(self, config: Dict[str, Any]) -> None:
        super().__init__(config["id"], config["max_frame"])
        self.config = config
        self._exec_lock = threading.Lock()
        self._main_busy = False
        self._main_jobs: SimpleQueue[Any] = SimpleQueue()
        self._numexecuting = 0
        self._shutting_down = False
        self._grace = float(config.get("grace", 2.0))
        #: Seconds running code may go on after the master asks the worker to exit (0: none).
        self._drain = float(config.get("drain", 0.0))
        #: Locks, events and queues for remote code (``channel.gateway.execmodel``).
        self.execmodel = get_execmodel(config.get("execmodel"))

    def __repr__(self) -> str:
        return "<WorkerGateway %s pid=%d>" % (self.id, os.getpid())

    # -- frames from the master ---------------------------------------------------------

    def _handle(self, mtype: int, cid: int, payload: bytes) -> None:
        if mtype == EXEC:
            self._schedule(cid, payload)
        elif mtype == STATUS:
            status = self._status()
            ch = self._channel_for_id(cid)
            try:
                ch.send(status)
                ch.close()
            except OSError:
                pass
        elif mtype == TERMINATE:
            self._shutdown("the master asked the worker to exit")
        else:
            raise ProtocolError("unexpected %s frame from the master" % type_name(mtype))

    def _status(self) -> Dict[str, Any]:
        return {
            "numexecuting": self._numexecuting,
            "numchannels": self._numchannels(),
            "execqsize": self._main_jobs.qsize(),
            "numthreads": threading.active_count(),
            "pid": os.getpid(),
        }

    def _schedule(self, cid: int, payload: bytes) -> None:
        channel = self._channel_for_id(cid)
        try:
            source, call_name, kwargs, filename = loads(payload, self._channel_for_id, guard=False)
        except ProtocolError:
            raise  # a channel id the master may not use: the connection ends
        except (DataFormatError, ValueError, TypeError) as exc:
            channel.close(error="execpool: the worker could not load the remote_exec request: %s" % exc)
            return
        job = (channel, source, call_name, kwargs, filename)
        with self._exec_lock:
            if self._shutting_down:
                channel.close(error="execpool: the worker is shutting down")
                return
            self._numexecuting += 1
            if not self._main_busy:
                self._main_busy = True
                self._main_jobs.put(job)
                return
        threading.Thread(target=self._run_job, args=(job,), name="execpool-exec-%d" % cid, daemon=True).start()

    def _run_job(self, job: Any, in_main: bool = False) -> None:
        channel, source, call_name, kwargs, filename = job
        _trace.trace("exec start on channel", channel.id, "in", threading.current_thread().name)
        ns = {"channel": channel, "__name__": "__channelexec__"}
        error = None
        interrupted = False
        try:
            exec(compile(source, filename, "exec"), ns)
            if call_name is not None:
                ns[call_name](channel, **kwargs)
        except KeyboardInterrupt:
            if self._shutting_down:
                # Interrupted by our own shutdown: the master asked for it and sees the
                # connection end; reporting it as the code's failure would mislead.
                _trace.trace("exec on channel", channel.id, "interrupted by shutdown")
                interrupted = True
            else:
                error = _format_exception(source, filename)
        except BaseException:
            error = _format_exception(source, filename)
            _trace.trace("exec on channel", channel.id, "raised:", error)
        finally:
            with self._exec_lock:
                self._numexecuting -= 1
                if in_main:
                    self._main_busy = False  # before the close, so the next exec finds it idle
        if not interrupted:
            channel.close(error=error)
        _trace.trace("exec done on channel", channel.id)

    # -- lifetime ------------------------------------------------------------------------

    def serve_main(self) -> None:
        """Run main-thread jobs until shutdown."""
        while True:
            try:
                job = self._main_jobs.get()
                if job is None:
                    return
                self._run_job(job, in_main=True)
            except KeyboardInterrupt:
                if self._shutting_down:
                    return
                raise

    def _connection_ended(self, reason: str) -> None:
        self._shutdown(reason)

    def _shutdown(self, reason: str) -> None:
        with self._exec_lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            busy = self._main_busy
            running = self._numexecuting
        _trace.trace("worker shutting down:", reason)
        self._main_jobs.put(None)
        if running and self._drain > 0:
            # a drain time (a group's worker option): running code gets a while to finish first.
            threading.Thread(target=self._drain_then_stop, name="execpool-drain", daemon=True).start()
        else:
            self._stop(busy)

    def _drain_then_stop(self) -> None:
        import time

        deadline = time.monotonic() + self._drain
        while self._numexecuting and time.monotonic() < deadline:
            time.sleep(0.01)
        _trace.trace("worker drained" if not self._numexecuting else "worker still running code; interrupting it")
        self._stop(self._main_busy)

    def _stop(self, busy: bool) -> None:
        # The watchdog first: whatever happens below, the process ends within the grace period.
        t = threading.Thread(target=self._watchdog, name="execpool-watchdog", daemon=True)
        t.start()
        if busy:
            _interrupt_main_thread()

    def _watchdog(self) -> None:
        import time

        time.sleep(self._grace)
        _trace.trace("worker did not exit within %.1fs; forcing exit" % self._grace)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(EXIT_OVERRUN)


def _install_sigint_handler() -> None:
    """Make shutdown's SIGINT reliable: never let it land where Python swallows it.

    A KeyboardInterrupt raised while the main thread runs a weakref callback of the
    import machinery (an import lock's clean-up) is printed as "Exception ignored"
    and lost, so the worker would print a traceback and hang until its watchdog.
    There, the handler asks again a moment later instead of raising.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            t = threading.Timer(0.02, _interrupt_main_thread)
            t.daemon = True
            t.start()
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _interrupt_main_thread() -> None:
    """Raise KeyboardInterrupt in the main thread, also out of a blocking call (sleep, read)."""
    try:
        import signal

        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]
    except (AttributeError, ValueError, OSError):
        import _thread

        _thread.interrupt_main()


def _apply_config(config: Dict[str, Any]) -> None:
    env = config.get("env") or {}
    for name, value in env.items():
        os.environ[name] = value
    if config.get("dont_write_bytecode"):
        sys.dont_write_bytecode = True
    chdir = config.get("chdir")
    if chdir:
        path = os.path.expanduser(chdir)
        os.makedirs(path, exist_ok=True)
        os.chdir(path)
    nice = config.get("nice")
    if nice:
        os.nice(int(nice))


def _info() -> Dict[str, Any]:
    """Facts about this worker process: what its hello carries (see ``RemoteInfo``)."""
    uname = os.uname()
    return {
        "executable": sys.executable,
        "version_info": tuple(sys.version_info),
        "implementation": sys.implementation.name,
        "platform": sys.platform,
        "machine": uname.machine,
        "hostname": uname.nodename,
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "cpu_count": _cpu_count(),
    }


def report_info(channel: Any) -> None:
    """An entry point for ``remote_exec``: send this worker process's facts, as now (its cwd may
    have changed since the hello)."""
    channel.send(_info())


def main(config: Dict[str, Any]) -> None:
    """Entry point, called by the bootstrap with the master's configuration."""
    _procgroup.guard_group()  # first: before any thread starts
    _trace.configure(config.get("debug", 0), "worker %s" % config.get("id"))
    rfd = os.dup(0)
    wfd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if config.get("stdout") == "devnull":
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    else:
        os.dup2(2, 1)
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except Exception:
        pass
    enlarge_pipe(wfd)
    _install_sigint_handler()
    gateway = WorkerGateway(config)
    gateway._io = FdIO(rfd, wfd)
    try:
        _apply_config(config)
        hello = _info()
    except Exception as exc:
        hello = {"error": "%s: %s" % (type(exc).__name__, exc)}
    compiled = getattr(sys.modules.get("_execpool"), "_compiled", None) or {}
    if "error" not in hello:
        hello["compiled"] = len(compiled)
        if compiled and config.get("return_bytecode"):
            import marshal
            from _frozen_importlib_external import MAGIC_NUMBER

            hello["bytecode"] = (MAGIC_NUMBER, marshal.dumps(compiled))
    gateway._send(HELLO, 0, dumps(hello))
    if "error" in hello:
        return
    _trace.trace("worker started:", hello)
    try:
        gateway._start_reader()
        # The first compile() in a process costs milliseconds of one-time set-up; pay it while
        # the master is still reading the hello rather than in the first remote_exec.
        compile("pass", "<warm-up>", "exec")
        gateway.serve_main()
        _trace.trace("worker main loop ended")
    except KeyboardInterrupt:
        # the master's shutdown interrupted the main thread before its loop ran (a gateway
        # ended right after its hello): that is the shutdown, not a failure to report
        _trace.trace("worker interrupted before its main loop: shutting down")
    _exit_now()


def _exit_now() -> None:
    """End the worker quickly: run atexit handlers, flush, and skip interpreter teardown.

    Threads still running (those of remote_execs that outlived the shutdown)
    end with the process, as they would when a connection is cut.
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)
