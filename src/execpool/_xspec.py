"""XSpec: the ``key=value//key//...`` strings that say where and how a gateway runs."""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any

#: Keys execpool acts on.  Others are kept (clients may carry their own) but warned about.
KNOWN_KEYS = frozenset(
    {
        "popen",
        "ssh",
        "socket",
        "via",
        "python",
        "chdir",
        "nice",
        "id",
        "dont_write_bytecode",
        "execmodel",
        "installvia",
        "max_frame",
        "ssh_config",
        "sshbackend",
        "hostkeys",
        "token_file",
        "tls",
        "tls_ca",
        "workers",
    }
)
#: The spec of a gateway made without one: a local interpreter like this one.
DEFAULT_SPEC = "popen"
#: The interpreter a remote host (ssh) runs when the spec has no ``python=``.
DEFAULT_REMOTE_PYTHON = "python3"

_RESERVED = frozenset({"env", "keys", "unknown_keys", "transport"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class XSpec:
    """A parsed gateway specification.

    ``XSpec("popen//python=python3.9//chdir=work//env:FOO=1//id=w1")`` has
    ``popen == True``, ``python == "python3.9"``, ``chdir == "work"``,
    ``env == {"FOO": "1"}`` and ``id == "w1"``; a key that is not given reads
    as ``None``.  A key without ``=`` is ``True``.  Keys are kept whether or not
    execpool knows them; a key given twice is an error.  Two specs are equal
    when their strings are.
    """

    popen: Any = None
    ssh: Any = None
    socket: Any = None
    via: Any = None
    python: Any = None
    chdir: Any = None
    nice: Any = None
    id: Any = None
    dont_write_bytecode: Any = None
    execmodel: Any = None
    installvia: Any = None
    max_frame: Any = None
    ssh_config: Any = None
    sshbackend: Any = None
    hostkeys: Any = None
    token_file: Any = None
    tls: Any = None
    tls_ca: Any = None
    workers: Any = None

    def __init__(self, string: str) -> None:
        if not isinstance(string, str):
            raise TypeError("an xspec is a string such as 'popen//python=python3.9', not %r" % (string,))
        self._spec = string
        self.env: dict[str, str] = {}
        self._keys: list[str] = []
        if not string:
            raise ValueError("empty xspec: name a transport, for example 'popen' or 'popen//python=python3.9'")
        for part in string.split("//"):
            if not part:
                raise ValueError("xspec %r has an empty part (two '//' in a row, or one at an end)" % string)
            key, eq, value = part.partition("=")
            if key.startswith("env:"):
                name = key[4:]
                if not name or not eq:
                    raise ValueError("xspec %r: write environment variables as env:NAME=value" % string)
                if name in self.env:
                    raise ValueError("xspec %r sets env:%s twice" % (string, name))
                self.env[name] = value
                continue
            if not _KEY.match(key):
                raise ValueError("xspec %r: %r is not a valid key" % (string, key))
            if key in _RESERVED:
                raise ValueError("xspec %r: %r is reserved and cannot be used as a key" % (string, key))
            if key in self._keys:
                raise ValueError("xspec %r gives the key %r twice" % (string, key))
            self._keys.append(key)
            object.__setattr__(self, key, value if eq else True)
        if self.nice is not None:
            try:
                int(self.nice)
            except (TypeError, ValueError):
                raise ValueError("xspec %r: nice= takes an integer, not %r" % (string, self.nice)) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return None

    def keys(self) -> list[str]:
        """The keys given in the string, in order (``env:`` entries excluded)."""
        return list(self._keys)

    def unknown_keys(self) -> list[str]:
        """Keys given that execpool does not act on."""
        return [k for k in self._keys if k not in KNOWN_KEYS]

    @property
    def transport(self) -> str | None:
        """``"popen"``, ``"ssh"`` or ``"socket"``, whichever the spec names."""
        for name in ("popen", "ssh", "socket"):
            if getattr(self, name) is not None:
                return name
        return None

    def _samefilesystem(self) -> bool:
        """True for a local worker without ``chdir=``: it sees this process's files where they are.

        (execnet's semi-private method, which pytest-xdist's tests call.)
        """
        return self.popen is not None and self.chdir is None

    def __repr__(self) -> str:
        return "<XSpec %r>" % self._spec

    def __str__(self) -> str:
        return self._spec

    def __hash__(self) -> int:
        return hash(self._spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, XSpec):
            return self._spec == other._spec
        if isinstance(other, str):
            return self._spec == other
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result


def local_python(spec: XSpec) -> str:
    """The interpreter command of a local worker process: ``python=``, else this interpreter."""
    return spec.python if isinstance(spec.python, str) else sys.executable


def remote_python(spec: XSpec) -> str:
    """The interpreter command on a remote host: ``python=``, else :data:`DEFAULT_REMOTE_PYTHON`."""
    return spec.python if isinstance(spec.python, str) and spec.python else DEFAULT_REMOTE_PYTHON


def warn_unknown_keys(spec: XSpec) -> None:
    """Warn (once per call) about keys of ``spec`` that execpool does not act on."""
    unknown = spec.unknown_keys()
    if unknown:
        warnings.warn(
            "xspec %r: execpool ignores the key(s) %s" % (str(spec), ", ".join(unknown)),
            stacklevel=4,
        )


def popen_xspec(python: str | None = None) -> str:
    """The xspec string of a local worker process running ``python`` (default: this interpreter)."""
    return "popen//python=%s" % python if python else "popen"


def ssh_xspec(sshaddress: str, remotepython: str | None = None, ssh_config: str | None = None) -> str:
    """The xspec string of a worker process on the ssh host ``sshaddress``."""
    spec = "ssh=%s" % sshaddress
    if remotepython:
        spec += "//python=%s" % remotepython
    if ssh_config:
        spec += "//ssh_config=%s" % ssh_config
    return spec
