"""execpool: run Python code on many interpreters at once, over channels.

The low-level API: :func:`makegateway` starts a worker interpreter described by
an xspec string and returns a :class:`Gateway`; :meth:`Gateway.remote_exec`
runs code there and returns a :class:`Channel` to talk to it; a :class:`Group`
manages several gateways.  See the documentation's "Gateways and channels" guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._shipped.channel import NO_ENDMARKER, Channel, ChannelFileRead, ChannelFileWrite
from ._shipped.errors import (
    AuthenticationFailed,
    ChannelClosedError,
    DataFormatError,
    DumpError,
    ExecpoolError,
    GatewayLostError,
    GatewayStartError,
    HostUnreachable,
    InterpreterNotFound,
    InterpreterTooOld,
    ProtocolError,
    RemoteError,
    TimeoutError,
    WorkerLost,
)
from ._shipped.execmodel import ExecModel
from ._shipped.serial import dumps, loads
from ._xspec import XSpec, popen_xspec, ssh_xspec
from .gateway import Gateway, RemoteInfo, RemoteStatus, WorkerOptions
from .group import Group, MultiChannel, default_group, makegateway

if TYPE_CHECKING:
    from ._discover import Interpreter, find_interpreters
    from .executor import Executor
    from .pool import AsyncResult, IMapIterator, Pool, PoolTerminated, WorkerStats
    from .rsync import RSync, RSyncError

# The pool, the executor, RSync and interpreter discovery are imported on first use: a program
# that only makes gateways (an execnet client through execpool.compat, pytest-xdist's workers
# among them) does not pay for concurrent.futures, the scheduler and friends.
_LAZY = {
    "AsyncResult": ".pool",
    "IMapIterator": ".pool",
    "Pool": ".pool",
    "PoolTerminated": ".pool",
    "WorkerStats": ".pool",
    "Executor": ".executor",
    "Interpreter": "._discover",
    "find_interpreters": "._discover",
    "RSync": ".rsync",
    "RSyncError": ".rsync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'execpool' has no attribute %r" % name)
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"


# Shorthands of the seed API, kept for the programs and documentation that use them.
def PopenGateway(python: str | None = None) -> Gateway:  # noqa: N802 - the seed API's name
    """A local worker process: ``PopenGateway("python3.9")`` is ``makegateway("popen//python=python3.9")``."""
    return makegateway(popen_xspec(python))


def SshGateway(  # noqa: N802 - the seed API's name
    sshaddress: str, remotepython: str | None = None, ssh_config: str | None = None
) -> Gateway:
    """A worker process on an ssh host: ``SshGateway("user@host", "python3.12")`` is
    ``makegateway("ssh=user@host//python=python3.12")``."""
    return makegateway(ssh_xspec(sshaddress, remotepython, ssh_config))


__all__ = [
    "NO_ENDMARKER",
    "AsyncResult",
    "AuthenticationFailed",
    "Channel",
    "ChannelClosedError",
    "ChannelFileRead",
    "ChannelFileWrite",
    "DataFormatError",
    "DumpError",
    "ExecModel",
    "ExecpoolError",
    "Executor",
    "Gateway",
    "GatewayLostError",
    "GatewayStartError",
    "Group",
    "HostUnreachable",
    "IMapIterator",
    "Interpreter",
    "InterpreterNotFound",
    "InterpreterTooOld",
    "MultiChannel",
    "Pool",
    "PoolTerminated",
    "PopenGateway",
    "ProtocolError",
    "RSync",
    "RSyncError",
    "RemoteError",
    "RemoteInfo",
    "RemoteStatus",
    "SshGateway",
    "TimeoutError",
    "WorkerLost",
    "WorkerOptions",
    "WorkerStats",
    "XSpec",
    "__version__",
    "default_group",
    "dumps",
    "find_interpreters",
    "loads",
    "makegateway",
]
