"""``python -m execpool.compat [--] PROGRAM [ARGS...]``: run a Python program with execnet on execpool.

``PROGRAM`` is a console script on PATH (``pytest``), a Python file, or ``-m
MODULE``.  It runs in this interpreter after :func:`execpool.compat.install`,
so its ``import execnet`` gives execpool.  For pytest, ``-p
execpool.compat.xdist`` is also added to ``PYTEST_ADDOPTS`` so that pytest
processes the program starts use execpool too (not those of pytest's
``pytester`` fixture, which removes ``PYTEST_ADDOPTS`` from their environment).
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys

from . import install

USAGE = "usage: python -m execpool.compat [--] PROGRAM [ARGS...]   (or: -m MODULE [ARGS...])"


def _is_python_file(path: str) -> bool:
    if path.endswith(".py"):
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _find_program(name: str) -> str | None:
    """``name`` next to this interpreter (its venv's bin), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(here):
        return here
    return shutil.which(name)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    install()
    addopts = os.environ.get("PYTEST_ADDOPTS", "")
    if "execpool.compat.xdist" not in addopts:
        os.environ["PYTEST_ADDOPTS"] = ("-p execpool.compat.xdist " + addopts).strip()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    program = argv[0]
    path = program if os.sep in program or os.path.isfile(program) else _find_program(program)
    if path is None:
        print("execpool.compat: %r is neither a file nor a program on PATH" % program, file=sys.stderr)
        return 2
    if not os.path.isfile(path):
        print("execpool.compat: %s: no such file" % path, file=sys.stderr)
        return 2
    if not _is_python_file(path):
        print(
            "execpool.compat: %s is not a Python program; it must run in this interpreter to use "
            "execpool in place of execnet" % path,
            file=sys.stderr,
        )
        return 2
    sys.argv = [path, *argv[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    runpy.run_path(path, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
