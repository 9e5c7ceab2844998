"""Preparing what ``remote_exec`` sends: the source, the function to call, and a filename.

:func:`prepare` turns the three kinds of ``remote_exec`` argument into
``(source, call_name, filename)`` for the EXEC message:

- a string of Python code: dedented, run as is (no keyword arguments);
- a module: its source file's text, run as is (no keyword arguments);
- a function ``f(channel, **kwargs)``: its source, padded so that line numbers
  in remote tracebacks match the file on the master, then called as
  ``f(channel, **kwargs)``.  Only the function's own source travels, so it
  must be self-contained: no lambda, no closure, no decorator, no global name
  besides builtins; the keyword arguments must fit its signature.  Each rule
  is checked here, on the master, with an error that says what to change.
- a function of ``execpool._shipped``: every worker process already has it (as
  ``_execpool.NAME``), so only a reference is sent: ``from _execpool.NAME import f``.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import textwrap
import types
from typing import Any

#: Functions of these modules are already in every worker process (as ``_execpool.NAME``).
SHIPPED_PREFIX = "execpool._shipped."

_BUILTIN_NAMES = frozenset(dir(builtins)) | {"__name__", "__file__", "__builtins__"}


def prepare(source: object, kwargs: dict[str, Any], gateway_id: str) -> tuple[str, str | None, str]:
    """``(source text, name of the function to call or None, filename)`` for ``remote_exec(source, **kwargs)``."""
    if isinstance(source, str):
        if kwargs:
            raise TypeError("remote_exec(source_string) takes no keyword arguments; send data over the channel")
        return textwrap.dedent(source), None, "<remote_exec %s>" % gateway_id
    if isinstance(source, types.ModuleType):
        if kwargs:
            raise TypeError("remote_exec(module) takes no keyword arguments; send data over the channel")
        filename = getattr(source, "__file__", None) or "<module %s>" % source.__name__
        return module_source(source), None, filename
    if isinstance(source, types.FunctionType) and (source.__module__ or "").startswith(SHIPPED_PREFIX):
        # an entry point of the worker-side folder: the worker already has it, so send a reference
        module = "_execpool." + source.__module__[len(SHIPPED_PREFIX) :]
        src = "from %s import %s" % (module, source.__name__)
        return src, source.__name__, "<remote_exec %s of %s>" % (gateway_id, module)
    if isinstance(source, types.FunctionType):
        src, filename = function_source(source, kwargs)
        return src, source.__name__, filename
    raise TypeError("remote_exec takes a source string, a function or a module, not %s" % type(source).__name__)


def module_source(module: types.ModuleType) -> str:
    """The source text of ``module``; ValueError if it has none (a C or frozen module)."""
    try:
        return inspect.getsource(module)
    except (OSError, TypeError) as exc:
        raise ValueError("cannot send module %s: its source is not available (%s)" % (module.__name__, exc)) from None


def global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` (and the code nested in it) loads, stores or deletes."""
    names = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"):
            names.add(str(ins.argval).replace(" + NULL", "").replace("NULL + ", ""))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return names


def function_source(func: types.FunctionType, kwargs: dict[str, Any]) -> tuple[str, str]:
    """The source to send for ``func`` and its filename, checked to be self-contained."""
    what = "function %s" % func.__qualname__
    if func.__name__ == "<lambda>":
        raise ValueError("cannot remote_exec a lambda: write a def f(channel, ...) at module level")
    if func.__closure__:
        raise ValueError(
            "cannot remote_exec %s: it is a closure over %s from an enclosing function; "
            "pass those values as keyword arguments instead" % (what, ", ".join(func.__code__.co_freevars))
        )
    missing = sorted(global_names(func.__code__) - _BUILTIN_NAMES - {func.__name__})
    if missing:
        raise ValueError(
            "cannot remote_exec %s: it uses the global name(s) %s, which do not exist in the worker process "
            "(only its own source is sent); import or define them inside the function, or pass "
            "values as keyword arguments" % (what, ", ".join(missing))
        )
    try:
        lines, firstline = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise ValueError("cannot remote_exec %s: its source is not available (%s)" % (what, exc)) from None
    src = textwrap.dedent("".join(lines))
    if src.lstrip().startswith("@"):
        raise ValueError("cannot remote_exec %s: it is decorated; send an undecorated function" % what)
    try:
        inspect.signature(func).bind(None, **kwargs)
    except TypeError as exc:
        raise TypeError("remote_exec(%s, ...): %s; it is called as f(channel, **kwargs)" % (what, exc)) from None
    filename = inspect.getsourcefile(func) or "<function %s>" % func.__qualname__
    # Pad so that line numbers in remote tracebacks match the file on the master.
    return "\n" * (firstline - 1) + src, filename
