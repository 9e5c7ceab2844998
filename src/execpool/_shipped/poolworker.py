"""The pool worker loop: ordinary ``remote_exec`` code, run in every worker process of a pool.

The pool engine (``execpool._pool``) starts it with
``gateway.remote_exec(poolworker.serve)`` (a reference: the worker already has
this module); being the gateway's first ``remote_exec`` it runs in the worker
process's main thread.  It must stay stdlib-only and run on CPython 3.8+.

The messages on the task channel, their names and fields, are in
:mod:`poolmsg`: a config dict, then ``FUNCTION``/``TASKS``/``ADD_PATH``/
``FORGET``/``EXIT`` from the master; ``READY`` or ``INIT_ERROR``, then
``BEGUN`` (when asked) and ``RESULTS`` from this loop.

Module serving: when the config carries a ``modules`` channel, a finder at the
end of ``sys.meta_path`` asks the master for modules nothing else on the
worker can find (the user's own code, cloudpickle); the master answers with
their source or None, and the answer is cached for the worker's lifetime.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import pickle
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

from . import poolmsg as _msg
from . import serial as _serial
from .poolmsg import MODE_MAP, MODE_STAR


class _ServedLoader(importlib.abc.Loader):
    """Runs a module whose source the master sent."""

    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        module.__file__ = self.filename
        exec(compile(self.source, self.filename, "exec"), module.__dict__)

    def get_source(self, fullname: str) -> str:
        return self.source


class MasterFinder(importlib.abc.MetaPathFinder):
    """Finds modules by asking the master over ``channel`` (last on ``sys.meta_path``).

    With ``only``, it answers just for those top-level packages and goes first: the
    master's cloudpickle must load what the master's cloudpickle wrote, even where
    the worker has another version installed.
    """

    def __init__(self, channel: Any, only: Any = None, answers: Any = None, lock: Any = None) -> None:
        self.channel = channel
        self.only = frozenset(only) if only else None
        self.lock = lock if lock is not None else threading.RLock()
        self.answers: Dict[str, Any] = answers if answers is not None else {}
        self.broken: Optional[BaseException] = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if self.only is not None and fullname.partition(".")[0] not in self.only:
            return None
        with self.lock:
            if fullname in self.answers:
                answer = self.answers[fullname]
            elif self.broken is not None:
                return None
            else:
                try:
                    self.channel.send(fullname)
                    answer = self.channel.receive()
                except Exception as exc:  # the channel is gone: behave as if no master were there
                    self.broken = exc
                    return None
                self.answers[fullname] = answer
        if answer is None:
            return None
        source, filename, is_package = answer
        return importlib.util.spec_from_loader(
            fullname, _ServedLoader(source, filename), origin=filename, is_package=is_package
        )


def pack_exception(exc: BaseException, trusted: bool) -> Tuple[Optional[bytes], str, str, str]:
    """What travels for a task's exception: a ``pack``, see :mod:`poolmsg`."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = "%s.%s" % (type(exc).__module__, type(exc).__qualname__)
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    pickled = None
    if trusted:
        try:
            pickled = pickle.dumps(exc, 4)
            pickle.loads(pickled)  # many exception classes pickle but do not unpickle
        except Exception:
            pickled = None
    return (pickled, name, message, tb)


#: What a generator makes of a StopIteration raised inside it (PEP 479).
_PEP479 = "generator raised StopIteration"

#: Bytes of a results message's frame left for what wraps the pickled results (the errors, the ids).
FRAME_MARGIN = 64 * 1024


class Worker:
    """State of one pool worker: loaded functions and the channel to the master."""

    def __init__(self, channel: Any, config: Dict[str, Any]) -> None:
        self.channel = channel
        self.trusted = config.get("trust", True)
        self.begin = config.get("begin", False)
        self.protocol = min(config.get("protocol", 4), pickle.HIGHEST_PROTOCOL)
        self.funcs: Dict[int, Any] = {}

    def dump_results(self, results: Any) -> Tuple[bytes, List[Any]]:
        """The pickle of ``results`` and its out-of-band buffers (none with trust_workers=False)."""
        if self.trusted:
            return _msg.dumps_oob(results, self.protocol)
        data: bytes = _serial.dumps(results)
        return data, []

    def run_chunk(
        self, fid: int, mode: int, payload: bytes, buffers: Any = ()
    ) -> Tuple[List[Any], Optional[List[Any]]]:
        """Run one chunk; return (results, errors) with errors None or [(i, pack)]."""
        func: Any = self.funcs.get(fid)
        try:
            if isinstance(func, BaseException):
                raise func
            items = pickle.loads(payload, buffers=buffers)
        except Exception as exc:
            pack = pack_exception(exc, self.trusted)
            return [None], [(-1, pack)]
        results: List[Any] = []
        errors: Optional[List[Any]] = None
        append = results.append
        start = 0
        if mode == MODE_MAP:
            # The loop in C: extend() keeps what the tasks before a failing one returned, and
            # the tasks after it run one by one below (each task runs exactly once).
            try:
                results.extend(func(item) for item in items)
                return results, None
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit in a task is that task's failure
                cause = exc.__cause__
                if type(exc) is RuntimeError and isinstance(cause, StopIteration) and str(exc) == _PEP479:
                    exc = cause  # the task raised StopIteration; the generator made it this
                start = len(results)
                append(None)
                errors = [(start, pack_exception(exc, self.trusted))]
                start += 1
        for i, item in enumerate(items[start:], start):
            try:
                if mode == MODE_MAP:
                    append(func(item))
                elif mode == MODE_STAR:
                    append(func(*item))
                else:
                    append(func(*item[0], **item[1]))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit in a task is that task's failure
                append(None)
                if errors is None:
                    errors = []
                errors.append((i, pack_exception(exc, self.trusted)))
        return results, errors

    def encode(self, results: List[Any], errors: Optional[List[Any]]) -> Tuple[Any, Optional[List[Any]]]:
        """Pickle ``results`` (``(data, buffers)``); an item that cannot travel becomes that item's error."""
        try:
            return self.dump_results(results), errors
        except Exception:
            pass
        errors = list(errors or ())
        failed = {i for i, _ in errors}
        for i, value in enumerate(results):
            if i in failed:
                continue
            try:
                self.dump_results(value)
            except Exception as exc:
                what = "trust_workers=False allows only builtin values" if not self.trusted else "it cannot be pickled"
                err = TypeError(
                    "the task's result of type %s cannot be sent to the master: %s (%s)"
                    % (type(value).__name__, what, exc)
                )
                errors.append((i, pack_exception(err, self.trusted)))
                results[i] = None
        errors.sort()
        return self.dump_results(results), errors

    def shrink(
        self, results: List[Any], errors: Optional[List[Any]], size: int, limit: int
    ) -> Tuple[Any, Optional[List[Any]]]:
        """Results that pickle to ``size`` bytes, over ``limit``: make those that cannot fit errors.

        A result too large on its own fails its task; if the rest still does not fit, the
        chunk's other tasks fail too (their results together are too large for one message).
        """
        errors = list(errors or ())
        failed = {i for i, _ in errors}
        advice = (
            "raise the frame cap with max_frame= in the pool's specs or EXECPOOL_MAX_FRAME_SIZE, or "
            "better, have the task write its output to a path the master can read and return the path"
        )
        for i, value in enumerate(results):
            if i in failed:
                continue
            own = _msg.size_of(*self.dump_results(value))
            if own > limit:
                err = ValueError(
                    "the task's result pickles to %d bytes, over the frame cap of %d bytes: %s"
                    % (own, limit + FRAME_MARGIN, advice)
                )
                errors.append((i, pack_exception(err, self.trusted)))
                failed.add(i)
                results[i] = None
        data = self.dump_results(results)
        if _msg.size_of(*data) > limit:
            err = ValueError(
                "the results of the task's chunk (%d tasks) pickle to %d bytes together, over the frame cap "
                "of %d bytes: pass a smaller chunksize=, or %s"
                % (len(results), _msg.size_of(*data), limit + FRAME_MARGIN, advice)
            )
            for i in range(len(results)):
                if i not in failed:
                    errors.append((i, pack_exception(err, self.trusted)))
                    results[i] = None
            data = self.dump_results(results)
        errors.sort()
        return data, errors

    def serve(self) -> None:
        channel = self.channel
        receive = channel.receive
        send = channel.send
        while True:
            msg = receive()
            kind = msg[0]
            if kind == _msg.TASKS:
                _, cid, fid, mode, payload, buffers = msg
                if self.begin:
                    send((_msg.BEGUN, cid))
                t0 = time.perf_counter()
                results, errors = self.run_chunk(fid, mode, payload, buffers)
                del msg, payload, buffers  # the arguments' memory goes before the results are sent
                dumped, errors = self.encode(results, errors)
                limit = getattr(channel.gateway, "_max_frame", 0) - FRAME_MARGIN
                size = _msg.size_of(*dumped)
                if size > limit > 0:
                    dumped, errors = self.shrink(results, errors, size, limit)
                del results
                data, bufs = dumped
                send((_msg.RESULTS, cid, data, time.perf_counter() - t0, errors, bufs))
                del dumped, data, bufs
            elif kind == _msg.FUNCTION:
                _, fid, payload = msg
                try:
                    self.funcs[fid] = pickle.loads(payload)
                except Exception as exc:
                    self.funcs[fid] = exc
            elif kind == _msg.FORGET:
                self.funcs.clear()
            elif kind == _msg.ADD_PATH:
                for d in reversed(msg[1]):
                    if d not in sys.path:
                        sys.path.insert(0, d)
            elif kind == _msg.EXIT:
                return
            else:
                raise ValueError("unknown pool message %r" % (kind,))


def main(channel: Any) -> None:
    config = channel.receive()
    modules = config.get("modules")
    if modules is not None:
        last = MasterFinder(modules)
        sys.meta_path.append(last)
        if config.get("prefer"):  # shares the request lock and the answers with the last one
            sys.meta_path.insert(0, MasterFinder(modules, config["prefer"], last.answers, last.lock))
    for d in reversed(config.get("path", ())):
        if d not in sys.path:
            sys.path.insert(0, d)
    if config.get("chdir"):
        os.chdir(config["chdir"])
    worker = Worker(channel, config)
    init = config.get("init")
    if init is not None:
        try:
            func, args = pickle.loads(init)
            func(*args)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            channel.send((_msg.INIT_ERROR, pack_exception(exc, worker.trusted)))
            return
    channel.send(
        (
            _msg.READY,
            {
                "python": tuple(sys.version_info[:3]),
                "protocol": pickle.HIGHEST_PROTOCOL,
                "pid": os.getpid(),
                "cwd": os.getcwd(),
            },
        )
    )
    worker.serve()


def serve(channel: Any) -> None:
    """The pool worker loop's entry point: ``gateway.remote_exec(poolworker.serve)``."""
    main(channel)
