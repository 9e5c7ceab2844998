"""The task functions of ``bench_pool.py``, in a module of their own.

Module-level functions of an importable module travel by reference (module
and name) with every library measured: multiprocessing, concurrent.futures,
loky and mpire workers import this module (forked workers have it already;
spawned ones get the master's ``sys.path``), execpool's workers get its
source from the master (module serving), locally and over ssh.  Kept Python
3.8-compatible and free of imports, so that importing it costs nothing.
"""


def square(x):
    """The trivial task."""
    return x * x


def spin(n):
    """Pure-Python CPU work: about ``n`` loop iterations (bench_pool calibrates ``n`` to ~5 ms)."""
    s = 0
    for i in range(n):
        s += i & 7
    return s


def nbytes(data):
    """The 1 MiB-argument task: the worker only looks at the size of what it received."""
    return len(data)
