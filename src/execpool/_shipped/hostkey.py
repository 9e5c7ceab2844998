"""What names a machine's filesystem, and the probe the pool's host sync runs in a worker process.

:func:`host_key` runs on both sides: the master computes its own key with it,
and :func:`probe` (started with ``gateway.remote_exec(hostkey.probe)``) runs it
in the worker process, so that the master can tell whether a worker sees the
master's own directories (same key, same device and inode) or needs them synced.

Stdlib only, valid on CPython 3.8 (this file runs in every worker process).
"""

from __future__ import annotations

import os
import socket
from typing import Any, List


def host_key() -> str:
    """The host name and boot id of this machine (``EXECPOOL_HOSTKEY`` overrides it, for containers)."""
    override = os.environ.get("EXECPOOL_HOSTKEY")
    if override:
        return override
    key = socket.gethostname()
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            key += ":" + f.read().strip()
    except OSError:
        pass
    return key


def probe(channel: Any) -> None:
    """Receive ``(items, base, master_key)`` with items ``(path, st_dev, st_ino)``; send back
    ``(key, shared, base)``: this host's key, for each item whether it is the master's own
    directory, and ``base`` with ``~`` expanded."""
    items, base, master = channel.receive()
    key = host_key()
    shared: List[bool] = []
    for path, dev, ino in items:
        try:
            st = os.stat(path)
            shared.append(key == master and (st.st_dev, st.st_ino) == (dev, ino))
        except OSError:
            shared.append(False)
    channel.send((key, shared, os.path.expanduser(base)))
