"""Task functions for tests/test_pool.py: module-level, stdlib-only, so they travel by reference."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def kw(a: int, b: int = 0, *, c: int = 0) -> tuple[int, int, int]:
    return a, b, c


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError("task got %d" % x)
    return x


def version_after(x: int, delay: float = 0.1) -> tuple[int, tuple[int, int]]:
    time.sleep(delay)
    return x, tuple(sys.version_info[:2])  # type: ignore[return-value]


def whoami(_: Any = None) -> tuple[int, str, list[str]]:
    return os.getpid(), os.getcwd(), list(sys.path)


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


def import_and_call(module: str, attr: str, *args: Any) -> Any:
    import importlib

    return getattr(importlib.import_module(module), attr)(*args)


class Custom:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.value == self.value


def make_custom(x: int) -> Custom:
    return Custom(x)


class CustomError(Exception):
    pass


def raise_custom(_: Any) -> None:
    raise CustomError("custom failure")


def return_unpicklable(_: Any) -> Any:
    import threading

    return threading.Lock()


def send_crafted_result(sentinel: str) -> int:
    """Play a compromised worker: make the pool worker send a pickle that runs code when loaded."""
    import gc
    import pickle

    class Payload:
        def __reduce__(self) -> Any:
            return (os.system, ("touch %s" % sentinel,))

    crafted = pickle.dumps([Payload()])
    for obj in gc.get_objects():
        if type(obj).__name__ == "Worker" and hasattr(obj, "dump_results"):
            obj.dump_results = lambda results: (crafted, [])  # type: ignore[method-assign]
    return 0


def count(n: int) -> int:
    return n


def module_attr(module: str, attr: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), attr)


def stop_at_five(x: int) -> int:
    """``x``, but ``x == 5`` raises StopIteration (a task that leaks it from a next() call)."""
    if x == 5:
        raise StopIteration("ran out at %d" % x)
    return x


def log_and_fail_on_three(item: tuple[str, int]) -> int:
    """Append ``x`` to the file ``path`` (one line per call), then fail on 3 and 6."""
    path, x = item
    with open(path, "a") as f:
        f.write("%d\n" % x)
    if x in (3, 6):
        raise ValueError("task %d fails" % x)
    return x * 10
