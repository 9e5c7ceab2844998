"""Finding the CPython interpreters installed on this machine.

Looks at ``pythonX.Y`` (and ``python3``) on ``PATH`` -- skipping pyenv's
shims, which are slow wrappers -- and at ``$PYENV_ROOT/versions/*/bin``
(``~/.pyenv`` by default).  Each candidate is asked for its version (all in
parallel); one interpreter per ``major.minor`` is kept, preferring the
newest patch release.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import re
import subprocess
from pathlib import Path

_NAME = re.compile(r"^python3(\.\d+)?$")
_PROBE = "import sys; print(sys.implementation.name, *sys.version_info[:3])"


@dataclasses.dataclass(frozen=True, order=True)
class Interpreter:
    """A local interpreter: its version and the path that runs it."""

    version: tuple[int, int, int]
    path: str

    @property
    def spec(self) -> str:
        """The xspec that starts a gateway on it."""
        return "popen//python=%s" % self.path

    @property
    def short_version(self) -> str:
        return "%d.%d" % self.version[:2]


def _candidates() -> list[str]:
    seen: list[str] = []
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for bindir in os.environ.get("PATH", "").split(os.pathsep):
        if not bindir or "shims" in Path(bindir).parts:
            continue
        try:
            names = os.listdir(bindir)
        except OSError:
            continue
        for name in names:
            if _NAME.match(name):
                seen.append(os.path.join(bindir, name))
    versions = pyenv_root / "versions"
    if versions.is_dir():
        for entry in sorted(versions.iterdir()):
            exe = entry / "bin" / "python3"
            if exe.exists():
                seen.append(str(exe))
    unique: dict[str, str] = {}
    for path in seen:
        try:
            real = os.path.realpath(path)
        except OSError:
            continue
        if os.access(real, os.X_OK):
            unique.setdefault(real, path)
    return list(unique.values())


def _probe(path: str) -> Interpreter | None:
    try:
        out = subprocess.run(
            [path, "-S", "-c", _PROBE], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 4 or parts[0] != "cpython":
        return None
    version = (int(parts[1]), int(parts[2]), int(parts[3]))
    return Interpreter(version, path)


@functools.lru_cache(maxsize=1)
def _find_all() -> tuple[Interpreter, ...]:
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        found = [i for i in ex.map(_probe, _candidates()) if i is not None]
    best: dict[tuple[int, int], Interpreter] = {}
    for interp in sorted(found):
        best[interp.version[:2]] = interp  # the newest patch release wins
    return tuple(sorted(best.values()))


def find_interpreters(minimum: tuple[int, int] = (3, 8)) -> list[Interpreter]:
    """Every CPython >= ``minimum`` found on this machine, one per minor version, oldest first."""
    return [i for i in _find_all() if i.version[:2] >= minimum]
