"""Host sync: the pool's ``rsync=`` directories, synced once per host before its pool workers take tasks.

An ordinary client of the public API: :func:`hostkey.probe` runs in the
worker process (``gateway.remote_exec``) and says which host it is on and
whether it sees the master's own directories (same host key, device and
inode: nothing to sync, the parent goes on ``sys.path``); the others are sent
with :class:`execpool.RSync` into one directory per pool and host under
``~/.cache/execpool/sync/``.  Starter threads of several slots on one host
share the work: the first syncs, the others wait for it.
"""

from __future__ import annotations

import hashlib
import os
import threading

from .._shipped import hostkey as _hostkey
from .._shipped.errors import GatewayStartError
from ..gateway import Gateway

#: Seconds a worker process may take to answer the probe.
PROBE_TIMEOUT = 60.0


def local_hostkey() -> str:
    """What names the master's filesystem: the same function a worker process runs in the probe."""
    return _hostkey.host_key()


class HostSync:
    """The ``rsync=`` directories of one pool and which hosts have them."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = [os.path.abspath(p) for p in paths]
        self.hostkey = local_hostkey()
        self.base = (
            "~/.cache/execpool/sync/"
            + hashlib.sha256(("%s\0%s" % (self.hostkey, "\0".join(self.paths))).encode()).hexdigest()[:16]
        )
        self.lock = threading.Lock()
        #: (host key, directory) -> set once synced (removed again when the sync failed)
        self.synced: dict[tuple[str, str], threading.Event] = {}

    def add(self, path: str) -> str:
        """Add a directory (checked to exist on the master); return its absolute path."""
        p = os.path.abspath(path)
        if not os.path.isdir(p):
            raise ValueError("Pool.rsync: %r is not a directory on the master" % path)
        if p not in self.paths:
            self.paths.append(p)
        return p

    def prepare(self, gw: Gateway, paths: list[str] | None = None) -> tuple[list[str], str | None]:
        """Sync directories (default: all of them) to the gateway's host, once per host and directory.

        Returns the directories to put on the pool worker's ``sys.path`` and the working
        directory to give it (None when nothing had to be synced).  Raises what RSync raised,
        or :class:`GatewayStartError` when another slot's sync of the same directory failed.
        """
        paths = self.paths if paths is None else paths
        if not paths:
            return [], None
        items = []
        for p in paths:
            st = os.stat(p)
            items.append((p, st.st_dev, st.st_ino))
        probe = gw.remote_exec(_hostkey.probe)
        probe.send((items, self.base, self.hostkey))
        hostkey, shared, base = probe.receive(PROBE_TIMEOUT)
        dirs = [os.path.dirname(p) for p, s in zip(paths, shared, strict=True) if s]
        todo = [p for p, s in zip(paths, shared, strict=True) if not s]
        for p in todo:
            self._sync_once(gw, hostkey, base, p)
        if not todo:
            return dirs, None
        return [base, *dirs], base

    def _sync_once(self, gw: Gateway, hostkey: str, base: str, path: str) -> None:
        key = (hostkey, path)
        with self.lock:
            ev = self.synced.get(key)
            mine = ev is None
            if mine:
                ev = self.synced[key] = threading.Event()
        assert ev is not None
        if not mine:
            ev.wait()
            if key not in self.synced:
                raise GatewayStartError("syncing %s to %s failed for another pool worker" % (path, hostkey))
            return
        try:
            from ..rsync import RSync

            rs = RSync(path, verbose=False)
            rs.add_target(gw, base + "/" + os.path.basename(path.rstrip(os.sep)))
            rs.send()
        except BaseException:
            with self.lock:
                del self.synced[key]
            raise
        finally:
            ev.set()
