"""How a pool's functions, arguments, results and exceptions travel (the master side).

- A function importable by module and name travels *by reference* (plain
  pickle); the worker imports it, served by the master's :class:`ModuleServer`
  if the worker lacks the module.  Lambdas, closures, nested functions and
  functions of ``__main__`` travel *by value* with cloudpickle, which only a
  worker of the master's Python (major, minor) can load.
- Arguments are pickled on the master (cloudpickle when plain pickle refuses
  them); the worker trusts its master.
- Results come back as pickle, loaded with :func:`pickle.loads` when the pool
  trusts its workers, else with the restricted channel loader, which never
  imports or calls anything.
- A task's exception is rebuilt with its own type when it can be (else
  :class:`RemoteError`), with the worker's traceback as ``__cause__``.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import pickle
import site
import sys
import sysconfig
import types
from collections.abc import Callable
from typing import Any

from ._shipped import poolmsg as _msg
from ._shipped import serial as _serial
from ._shipped.errors import RemoteError

#: Pickle protocol for what the master sends (every CPython 3.8+ reads 5).
PROTOCOL = 5


class RemoteTraceback(Exception):
    """The traceback of a task's exception on its worker (set as the exception's ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def needs_by_value(func: Callable[..., Any]) -> str | None:
    """Why ``func`` cannot travel by reference (None when it can)."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if module is None or qualname is None:
        return "it has no importable module and name"
    if module == "__main__":
        return "it is defined in __main__"
    if "<lambda>" in qualname:
        return "it is a lambda"
    if "<locals>" in qualname:
        return "it is defined inside another function"
    mod = sys.modules.get(module)
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not func and not (isinstance(func, types.MethodType) and obj == func):
        return "%s.%s does not name it" % (module, qualname)
    return None


def describe_function(func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", None) or repr(func)
    code = getattr(func, "__code__", None)
    if code is not None:
        return "%s (%s:%d)" % (name, code.co_filename, code.co_firstlineno)
    return name


def dumps_function(func: Callable[..., Any]) -> tuple[bytes, bool]:
    """Pickle ``func``; return (bytes, by_value)."""
    if needs_by_value(func) is None:
        try:
            return pickle.dumps(func, PROTOCOL), False
        except Exception:
            pass
    import cloudpickle

    return cloudpickle.dumps(func, PROTOCOL), True


def dumps_items(items: Any) -> tuple[bytes, list[Any], bool]:
    """Pickle task arguments; return (bytes, out-of-band buffers, by_value).

    Buffers of at least :data:`~execpool._shipped.poolmsg.OOB_MIN` bytes (numpy arrays,
    bytes, ...) stay out of the pickle: they are written to the worker as they are.
    """
    try:
        data, bufs = _msg.dumps_oob(items, PROTOCOL)
        return data, bufs, False
    except Exception:
        pass
    import cloudpickle

    data, bufs = _msg.dumps_oob(items, PROTOCOL, cloudpickle.dumps)
    return data, bufs, True


def loads_results(data: bytes, trusted: bool, buffers: Any = ()) -> Any:
    """Load a RESULTS message's data: pickle when the pool trusts its workers, else the
    restricted loader (which builds no object but builtin values)."""
    if trusted:
        return pickle.loads(data, buffers=buffers)
    return _serial.loads(data, buffers=list(buffers) if buffers else None)


def rebuild_exception(pack: Any, trusted: bool, where: str) -> BaseException:
    """Turn a worker's exception pack into an exception to raise on the master."""
    try:
        pickled, name, message, tb = pack
        name, message, tb = str(name), str(message), str(tb)
    except (TypeError, ValueError):
        return RemoteError("malformed error report (a %s)" % type(pack).__name__, None)
    cause = RemoteTraceback('\n"""\non %s\n%s"""' % (where, tb.rstrip("\n") + "\n"))
    exc: BaseException | None = None
    if trusted and isinstance(pickled, bytes):
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    elif not trusted and name.startswith("builtins."):
        etype = getattr(builtins, name[len("builtins.") :], None)
        if isinstance(etype, type) and issubclass(etype, Exception):
            try:
                exc = etype(message)
            except Exception:
                exc = None
    if exc is None:
        exc = RemoteError("%s: %s\n%s" % (name, message, tb.rstrip("\n")), where)
    exc.__cause__ = cause
    if hasattr(exc, "add_note"):
        exc.add_note("raised on %s" % where)
    if isinstance(exc, (StopIteration, StopAsyncIteration)):
        # raised from next() on the master it would end the caller's loop as if the results
        # had run out: wrap it as PEP 479 does for generators
        wrapped = RuntimeError("the task raised %s on %s" % (type(exc).__name__, where))
        wrapped.__cause__ = exc
        return wrapped
    return exc


# -- serving modules to workers ---------------------------------------------------------


def _stdlib_dirs() -> tuple[list[str], list[str]]:
    paths = sysconfig.get_paths()
    std = [os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths]
    sites = [os.path.realpath(p) for p in site.getsitepackages()]
    user = site.getusersitepackages()
    if isinstance(user, str):
        sites.append(os.path.realpath(user))
    sites += [os.path.realpath(paths[k]) for k in ("purelib", "platlib") if k in paths]
    return std, sites


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


class ModuleServer:
    """Answers a worker's request for a module's source.

    Serves pure-Python modules and packages the master can find, never the
    standard library (a worker of another Python has its own) and never
    ``__main__``.  Looking a module up never imports anything on the master:
    a submodule is only served when its parent package is already imported.
    """

    def __init__(self) -> None:
        self._std, self._sites = _stdlib_dirs()
        self.served: dict[str, int] = {}

    def answer(self, name: Any) -> tuple[str, str, bool] | None:
        if not isinstance(name, str) or not name or name.startswith(".") or name == "__main__":
            return None
        parent, _, _ = name.rpartition(".")
        if parent and parent not in sys.modules:
            return None
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            return None
        if spec is None or not spec.has_location or not isinstance(spec.origin, str):
            return None
        origin = spec.origin
        if not origin.endswith(".py"):
            return None  # extension modules and bytecode-only files cannot travel as source
        real = os.path.realpath(origin)
        if _under(real, self._std) and not _under(real, self._sites):
            return None
        try:
            with open(origin, "rb") as f:
                raw = f.read()
            source = importlib.util.decode_source(raw)
        except (OSError, UnicodeDecodeError, SyntaxError):
            return None
        self.served[name] = len(raw)
        return (source, origin, spec.submodule_search_locations is not None)
