"""The ``execpool serve`` command: the master-side front of the socket server.

The server and its handshake live in :mod:`execpool._shipped.server` (the same
code runs in a worker process for ``installvia=``); this module owns what only
the command needs -- the token from a file or ``$EXECPOOL_TOKEN``, TLS set-up,
the ready file -- and re-exports the handshake's names for the client side.
"""

from __future__ import annotations

import os
import sys

from ._shipped.server import (
    HANDSHAKE_TIMEOUT,
    MAC,
    MAGIC,
    MAX_PENDING,
    MAX_PENDING_PER_ADDRESS,
    NONCE,
    Server,
    client_mac,
    recv_exact,
    server_mac,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAC",
    "MAGIC",
    "MAX_PENDING",
    "MAX_PENDING_PER_ADDRESS",
    "NONCE",
    "TOKEN_ENV",
    "Server",
    "client_mac",
    "read_token",
]
__all__ += ["recv_exact", "run", "server_mac"]

TOKEN_ENV = "EXECPOOL_TOKEN"


def read_token(path: str | None) -> bytes:
    """The shared secret from ``path`` or, without one, from ``$EXECPOOL_TOKEN``."""
    if path:
        with open(path, "rb") as f:
            token = f.read().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip().encode()
    if len(token) < 16:
        raise ValueError(
            "a token of at least 16 characters is needed (token file, or the %s environment variable); "
            "make one with: python3 -c 'import secrets; print(secrets.token_hex(32))'" % TOKEN_ENV
        )
    return token


def run(
    token_file: str | None,
    host: str,
    port: int,
    python: str,
    cert: str | None,
    key: str | None,
    bootstrap: str,
    ready_file: str | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    fork: bool = False,
    max_pending: int = MAX_PENDING,
    max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
) -> int:
    """The ``execpool serve`` command."""
    try:
        token = read_token(token_file)
    except (OSError, ValueError) as exc:
        sys.stderr.write("execpool serve: %s\n" % exc)
        return 2
    if fork and cert:
        sys.stderr.write("execpool serve: --fork and TLS cannot be combined: a forked worker reads the plain socket\n")
        return 2
    tls = None
    if cert:
        import ssl

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
    try:
        server = Server(
            token,
            bootstrap,
            host,
            port,
            python,
            tls,
            handshake_timeout=handshake_timeout,
            fork=fork,
            max_pending=max_pending,
            max_pending_per_address=max_pending_per_address,
        )
    except (OSError, ValueError) as exc:
        sys.stderr.write("execpool serve: %s\n" % exc)
        return 2
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%s %d\n" % server.address)
        os.replace(tmp, ready_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
