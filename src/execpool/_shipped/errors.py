"""The exceptions execpool raises, shared by the master and the worker side.

This module is shipped to remote interpreters as source (see ``_bootstrap``),
so it must stay stdlib-only and run on CPython 3.8+.
"""

from __future__ import annotations

import builtins


class ExecpoolError(Exception):
    """Base class of every error execpool defines."""


class RemoteError(ExecpoolError):
    """Code running on the other side of a channel raised an exception.

    ``formatted`` holds the remote traceback as text; ``gateway_id`` names the
    gateway it came from (when known).
    """

    def __init__(self, formatted: str, gateway_id: str | None = None) -> None:
        super().__init__(formatted)
        self.formatted = formatted
        self.gateway_id = gateway_id

    def __str__(self) -> str:
        where = " on %s" % self.gateway_id if self.gateway_id else ""
        return "remote error%s:\n%s" % (where, self.formatted.rstrip("\n"))

    def warn(self) -> None:
        """Write the remote traceback to ``sys.stderr`` (the seed API's name)."""
        import sys

        sys.stderr.write("[%s] Warning: unhandled %s\n" % (self.gateway_id or "?", self))


class DumpError(ExecpoolError, TypeError):
    """An object given to ``send``/``dumps`` cannot travel over a channel."""


class DataFormatError(ExecpoolError, ValueError):
    """Bytes given to ``loads`` (or received from a peer) are not valid channel data."""


class ProtocolError(DataFormatError):
    """The byte stream of a connection broke the frame format; the connection is closed."""


class TimeoutError(ExecpoolError, builtins.TimeoutError):
    """A wait (``receive``, ``waitclose``, start-up, ``remote_status``) ran out of time."""


class ChannelClosedError(ExecpoolError, OSError):
    """``send`` on a channel that is closed, or whose gateway lost its connection."""


class GatewayLostError(ExecpoolError, EOFError):
    """The connection to a gateway ended while a channel was still waiting on it."""


class GatewayStartError(ExecpoolError, OSError):
    """A gateway could not be started: the message says what was run and why it failed."""


class HostUnreachable(GatewayStartError):
    """The host of an ssh gateway could not be reached: unknown name, refused or timed-out connection."""


class AuthenticationFailed(GatewayStartError):
    """The ssh login was refused: no usable key, wrong user, or an unknown or changed host key."""


class InterpreterNotFound(GatewayStartError):
    """The command named by ``python=`` (or the default) could not be executed."""


class InterpreterTooOld(GatewayStartError):
    """The remote interpreter is older than the oldest CPython execpool supports (3.8)."""


class WorkerLost(ExecpoolError):
    """A pool task's worker died while running it, more often than the pool's ``retries`` allow."""
