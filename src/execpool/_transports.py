"""The transport registry: which xspec key starts a worker process with which transport.

This module owns the mapping from xspec keys to transports and the small
records a gateway and a transport exchange; the transports themselves live in
their own modules, imported on first use::

    Gateway._spawn ── Launch(spec, gateway id, group lookup) ──> launch()
        launch() ── the first REGISTRY key the spec has ──> MODULE.launch(request)
        MODULE.launch ── Launched(transport, facts for messages and clean-up) ──> Gateway

Keys, in the order they are looked for: ``via`` (``_relay``: a worker started
by another gateway), ``popen`` (``_popen``: a local interpreter; launchers such
as ``srun``, ``docker exec`` or ``kubectl exec`` are ``python=`` command lines
of it), ``ssh`` (``_ssh``: the OpenSSH client, or paramiko with
``sshbackend=paramiko``) and ``socket`` (``_socket``: an ``execpool serve``
server).  Adding a transport is one module with a ``launch`` function and one
entry here (and its keys in :data:`execpool._xspec.KNOWN_KEYS`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, Protocol

from ._shipped.errors import GatewayStartError
from ._xspec import XSpec

#: xspec key -> the module (relative to this package) whose ``launch(Launch) -> Launched`` starts it.
REGISTRY: dict[str, str] = {
    "via": "._relay",
    "popen": "._popen",
    "ssh": "._ssh",
    "socket": "._socket",
}


class Transport(Protocol):
    """What a gateway asks of a transport: move bytes, relay stderr, and own the process's life."""

    #: What relayed stderr lines start with (``"[gw0] "``).
    prefix: str

    @property
    def pid(self) -> int | None:
        """The local process (None when there is none on this machine)."""

    def start(self) -> Any:
        """Start the worker process; return its byte stream (read/readinto/write/close_write/close)."""

    def describe(self) -> str:
        """The command line or address, for messages."""

    def stderr_text(self, wait: float = 0.5) -> str:
        """The last lines the worker process wrote to stderr."""

    def release_stderr(self, emit: bool = True) -> None:
        """Stop holding back stderr lines (the worker process has started)."""

    def drain_stderr(self, timeout: float = 2.0, emit: bool = True) -> None:
        """Relay what is left of stderr once the worker process has ended."""

    def wait(self, timeout: float | None) -> int | None:
        """Wait for the worker process to end; its exit status, or None on timeout."""

    def kill(self) -> None:
        """End the worker process now."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """What a transport is given to start one worker process."""

    spec: XSpec
    #: The gateway's id (``gw0``).
    gateway_id: str
    #: How messages name the gateway: ``"gw0 (popen//python=python3.9)"``.
    where: str
    #: ``member(gid, key)``: the running gateway ``gid`` of the same group, named by the xspec key
    #: ``key`` (``via``, ``installvia``); raises GatewayStartError if there is none.
    member: Callable[[str, str], Any]


@dataclasses.dataclass(frozen=True)
class Launched:
    """A transport ready to start, with what the gateway needs to know about it."""

    transport: Transport
    #: For an interpreter on this machine: its bytecode cache key (its compiled code is trusted).
    interpreter_key: str | None = None
    #: What ``transport.pid`` is, for messages (``"ssh client pid"`` when it is not the worker).
    process: str = "worker pid"
    #: ``diagnose(status, stderr)``: a specific error for a failed start, or None.
    diagnose: Callable[[int | None, str], GatewayStartError | None] | None = None
    #: ``kill_remote(pid)``: end the worker process by its pid where killing ``transport`` does not.
    kill_remote: Callable[[int], None] | None = None


def launch(request: Launch) -> Launched:
    """The transport for ``request.spec``: that of the first :data:`REGISTRY` key the spec has."""
    spec = request.spec
    if spec.installvia is not None and (spec.transport != "socket" or not isinstance(spec.installvia, str)):
        raise GatewayStartError(
            "xspec %r: installvia= starts a socket server; write socket=HOST:PORT//installvia=GWID" % str(spec)
        )
    for key, module in REGISTRY.items():
        if getattr(spec, key) is not None:
            factory: Callable[[Launch], Launched] = importlib.import_module(module, __package__).launch
            return factory(request)
    raise GatewayStartError(_unsupported_transport(spec))


def _unsupported_transport(spec: XSpec) -> str:
    return (
        "xspec %r names no transport: start it with 'popen' (a local interpreter), ssh=HOST or socket=HOST:PORT"
        % str(spec)
    )
