"""Everything that runs inside a worker process: the worker-side boundary of execpool.

Each module in this folder is sent to every new worker interpreter at start-up
(see :mod:`execpool._bootstrap`), where it is importable as ``_execpool.NAME``;
on the master the same files are ``execpool._shipped.NAME``.  One implementation
of the protocol serves both sides.

The rules of the folder, checked by ``tests/test_shipped.py``:

- standard library only: a module here imports nothing but the stdlib and its
  siblings (relative imports), so that a worker needs nothing installed;
- valid on CPython 3.8: no syntax or stdlib names newer than 3.8;
- nothing master-only: a master-side module may import from here, never the
  other way round.

Modules: ``errors`` (exceptions both sides raise), ``trace`` (debug tracing),
``execmodel`` (thread primitives for remote code), ``frames`` (the wire's frame
format, sans-I/O), ``serial`` (channel data), ``channel`` (channels),
``connection`` (the reader thread and frame dispatch), ``worker`` (a worker
process's main loop), ``poolworker`` (the pool worker loop), ``poolmsg`` (the
pool's message names), ``hostkey`` (what names a host's filesystem, and the
host-sync probe), ``rsync_receiver`` (the receiving end of RSync), ``relay``
(the relaying end of ``via=``), ``server`` (the ``execpool serve`` socket
server and its handshake; in a worker for ``installvia=``).

Entry points that the master runs in a worker with ``remote_exec`` are plain
functions of these modules (``poolworker.serve``, ``hostkey.probe``,
``rsync_receiver.serve``, ``relay.serve``, ``server.serve_one_client``,
``worker.report_info``):
:meth:`execpool.Gateway.remote_exec` sends a reference to them, not their source.
"""
