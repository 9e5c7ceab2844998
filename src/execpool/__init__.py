"""execpool: run Python code on many interpreters at once, over channels.

The low-level API: :func:`makegateway` starts a worker interpreter described by
an xspec string and returns a :class:`Gateway`; :meth:`Gateway.remote_exec`
runs code there and returns a :class:`Channel` to talk to it; a :class:`Group`
manages several gateways.  See the documentation's "Gateways and channels" guide.
"""

from __future__ import annotations

from ._channel import NO_ENDMARKER, Channel, ChannelFileRead, ChannelFileWrite
from ._discover import Interpreter, find_interpreters
from ._errors import (
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
from ._execmodel import ExecModel
from ._serial import dumps, loads
from ._xspec import XSpec
from .executor import Executor
from .gateway import Gateway, RemoteInfo, RemoteStatus
from .group import Group, MultiChannel, PopenGateway, SshGateway, default_group, makegateway
from .pool import AsyncResult, IMapIterator, Pool, PoolTerminated, WorkerStats
from .rsync import RSync, RSyncError

__version__ = "0.1.0"

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
    "WorkerStats",
    "XSpec",
    "__version__",
    "default_group",
    "dumps",
    "find_interpreters",
    "loads",
    "makegateway",
]
