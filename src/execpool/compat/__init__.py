"""execnet's API on execpool: run code written for execnet without changing it.

This module owns the names and semantics execnet clients use and that
execpool's own API spells differently: ``HostNotFound``, ``LoadError``,
``dump``/``load``, ``set_execmodel``, ``Group.allocate_id`` that stores the id in
the spec, ``Group.execmodel``/``remote_execmodel`` as objects, and the
``execnet.gateway_base``, ``execnet.multi``, ... submodules.  Everything else is
execpool's own class under the same name (``Channel``, ``Gateway``, ``XSpec``,
...), so a client gets execpool's behaviour, not an imitation; ``RSync`` is a
subclass of execpool's with execnet's semantics (targets forgotten after
``send()``, execnet's callback arguments).

Use it in one of three ways:

* ``import execpool.compat as execnet`` in code you can edit;
* :func:`install` (or ``python -m execpool.compat -- PROGRAM ARGS``) so that
  ``import execnet`` anywhere in the process gives this module;
* ``pytest -p execpool.compat.xdist -n 4``: pytest-xdist on execpool.

Gateways made through this module give their workers the same stand-in:
``import execnet`` in remote code gives execpool's worker-side ``dumps``,
``loads``, ``Channel``, ``DumpError``, ... (see :func:`._worker.install_standin`).

The layer plugs into execpool through generic hooks of :class:`execpool.Group`:
its groups make gateways of a subclass with execnet's semi-private methods
(``gateway_class``), give their worker processes execnet's manners -- stdout
discarded, running code drained on exit (``worker_options``) -- and install the
stand-in in each new worker process before it is returned (``start_hooks``).
The documentation's "Migrating from execnet" page lists what differs.
"""

from __future__ import annotations

import struct
import sys
import types
from typing import IO, Any, ClassVar

from .. import __version__ as execpool_version
from .._shipped import worker as _shipped_worker
from .._shipped.channel import Channel
from .._shipped.errors import (
    DataFormatError,
    DumpError,
    GatewayStartError,
    HostUnreachable,
    RemoteError,
    TimeoutError,
)
from .._shipped.execmodel import ExecModel, get_execmodel
from .._shipped.serial import dumps, loads
from .._xspec import XSpec, popen_xspec, ssh_xspec
from ..gateway import DEFAULT_START_TIMEOUT, Gateway, WorkerOptions
from ..group import Group as _Group
from ..group import MultiChannel
from ._rsync import RSync
from ._worker import install_standin

#: The execnet release whose API this module follows.
__version__ = "2.1.2"

#: execnet's name for a host that cannot be reached (ssh failed to connect).
HostNotFound = HostUnreachable
#: execnet's name for data that cannot be loaded.
LoadError = DataFormatError

_DUMP_HEADER = struct.Struct(">Q")

#: Seconds a compat worker process lets running code finish after exit(), as execnet's do.
DRAIN = 5.0


class _CompatGateway(Gateway):
    """An execpool :class:`Gateway` with execnet's semi-private methods (made by compat groups)."""

    _rinfo_cache: types.SimpleNamespace | None = None

    def _rinfo(self, update: bool = False) -> types.SimpleNamespace:
        """execnet's semi-private ``_rinfo()``: executable, version_info, platform, cwd, pid.

        The answer is cached; ``update=True`` asks the worker process again (its cwd may
        have changed since it started).
        """
        if update or self._rinfo_cache is None:
            if update:
                ch = self.remote_exec(_shipped_worker.report_info)
                facts = ch.receive(DEFAULT_START_TIMEOUT)  # a hang guard: the worker answers at once
            else:
                info = self.remote_info()
                facts = info.__dict__
            names = ("executable", "version_info", "platform", "cwd", "pid")
            rinfo = types.SimpleNamespace(**{name: facts[name] for name in names})
            rinfo.version_info = tuple(rinfo.version_info)
            self._rinfo_cache = rinfo
        return self._rinfo_cache

    def hasreceiver(self) -> bool:
        """True while the thread that reads the worker process's messages runs (execnet's name)."""
        return self._reader is not None and self._reader.is_alive()


def _install_standin(gw: Gateway) -> None:
    """The start hook of compat groups: ``import execnet`` in the new worker process gives the stand-in."""
    ch = gw.remote_exec(install_standin, version=__version__)
    try:
        ch.waitclose(DEFAULT_START_TIMEOUT)
    except (RemoteError, TimeoutError) as exc:
        raise GatewayStartError(
            "gateway %s (%s): execpool.compat could not set up execnet's names in the worker process: %s"
            % (gw.id, gw.spec, exc)
        ) from None


class Group(_Group):
    """execpool's :class:`execpool.Group` with execnet's conventions.

    ``execmodel`` and ``remote_execmodel`` are :class:`ExecModel` objects;
    :meth:`allocate_id` stores the id it gives in the spec; workers started by
    the group can ``import execnet``.
    """

    gateway_class: ClassVar[type[Gateway]] = _CompatGateway
    worker_options = WorkerOptions(discard_stdout=True, drain=DRAIN)
    #: The spec :meth:`makegateway` uses when given none.
    defaultspec = "popen"

    def __init__(self, xspecs: Any = (), execmodel: str | ExecModel = "thread") -> None:
        super().__init__((), execmodel=None)
        self.start_hooks.append(_install_standin)
        self._set_models(execmodel, None)
        specs = list(xspecs)
        if specs:
            self.makegateways(specs)

    def _set_models(self, execmodel: str | ExecModel, remote_execmodel: str | ExecModel | None) -> None:
        model = get_execmodel(execmodel)
        self.execmodel = model
        self.remote_execmodel = get_execmodel(remote_execmodel if remote_execmodel is not None else model)

    def set_execmodel(self, execmodel: str | ExecModel, remote_execmodel: str | ExecModel | None = None) -> None:
        """Choose the execution model of gateways made from now on (before the first one)."""
        if len(self):
            raise ValueError("set_execmodel() must come before the group's first gateway is made")
        self._set_models(execmodel, remote_execmodel)

    def allocate_id(self, spec: XSpec) -> str:
        """Give ``spec`` an id (``gwN``) unless it has one, and store it in ``spec.id``."""
        gid = super().allocate_id(spec)
        spec.id = gid
        return gid

    def makegateway(self, spec: str | XSpec | None = None, *, start_timeout: float | None = None) -> Gateway:
        """Start a gateway for ``spec`` (default: :attr:`defaultspec`) in this group."""
        return super().makegateway(spec or self.defaultspec, start_timeout=start_timeout)

    def makegateways(self, specs: Any, *, start_timeout: float | None = None) -> list[Gateway]:
        xspecs = [s if isinstance(s, XSpec) else XSpec(s) for s in specs]
        for spec in xspecs:
            if spec.execmodel is None:
                spec.execmodel = self.remote_execmodel.backend
        return super().makegateways(xspecs, start_timeout=start_timeout)


default_group = Group()


def makegateway(spec: str | XSpec | None = None) -> Gateway:
    """Start a gateway in this module's default group (``"popen"`` when no spec is given)."""
    return default_group.makegateway(spec)


def set_execmodel(execmodel: str | ExecModel, remote_execmodel: str | ExecModel | None = None) -> None:
    """Choose the execution model of the default group (before its first gateway)."""
    default_group.set_execmodel(execmodel, remote_execmodel)


def PopenGateway(python: str | None = None) -> Gateway:  # noqa: N802 - execnet's name
    """``makegateway("popen//python=PYTHON")`` in this module's default group."""
    return makegateway(popen_xspec(python))


def SshGateway(sshaddress: str, remotepython: str | None = None, ssh_config: str | None = None) -> Gateway:  # noqa: N802
    """``makegateway("ssh=ADDRESS//python=PYTHON")`` in this module's default group."""
    return makegateway(ssh_xspec(sshaddress, remotepython, ssh_config))


def dump(file: IO[bytes], obj: object) -> None:
    """Write ``obj`` to a binary file, to be read back with :func:`load`.

    The format is execpool's (an 8-byte length, then :func:`dumps`'s bytes), not execnet's.
    """
    data = dumps(obj)
    file.write(_DUMP_HEADER.pack(len(data)) + data)


def load(file: IO[bytes], **_options: Any) -> Any:
    """Read one object written by :func:`dump`; ``EOFError`` at the end of the file.

    Anything else that is not what :func:`dump` wrote -- a short or oversized header, a
    truncated body, bytes that are not channel data -- raises :class:`DataFormatError`
    naming the offset in the file where that object began.
    """
    try:
        start: int | None = file.tell()
    except Exception:
        start = None
    where = "at offset %d of %s" % (start, _name_of(file)) if start is not None else "in %s" % _name_of(file)
    header = _read_exactly(file, _DUMP_HEADER.size, allow_eof=True, where=where)
    (size,) = _DUMP_HEADER.unpack(header)
    data = _read_exactly(file, size, allow_eof=False, where=where)
    try:
        return loads(data)
    except DataFormatError as exc:
        raise DataFormatError("the object %s is not valid: %s" % (where, exc)) from None


#: Bytes read per call: a header may declare any length, and only what the file holds is read.
_READ_BLOCK = 1024 * 1024


def _name_of(file: IO[bytes]) -> str:
    name = getattr(file, "name", None)
    return repr(name)[:200] if isinstance(name, (str, bytes)) else type(file).__name__


def _read_exactly(file: IO[bytes], size: int, allow_eof: bool, where: str) -> bytes:
    parts = []
    got = 0
    while got < size:
        block = file.read(min(size - got, _READ_BLOCK))
        if not block:
            if allow_eof and not got:
                raise EOFError("no more objects in %s" % _name_of(file))
            raise DataFormatError(
                "truncated data: the object %s declares %d bytes, the file ends after %d" % (where, size, got)
            )
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _submodule(name: str, **names: Any) -> types.ModuleType:
    module = types.ModuleType("execnet." + name)
    module.__dict__.update(names)
    module.__execpool_compat__ = True  # type: ignore[attr-defined]
    return module


gateway_base = _submodule(
    "gateway_base",
    Channel=Channel,
    DataFormatError=DataFormatError,
    DumpError=DumpError,
    ExecModel=ExecModel,
    LoadError=LoadError,
    RemoteError=RemoteError,
    TimeoutError=TimeoutError,
    dump=dump,
    dumps=dumps,
    get_execmodel=get_execmodel,
    load=load,
    loads=loads,
)
gateway = _submodule("gateway", Gateway=Gateway)
gateway_bootstrap = _submodule("gateway_bootstrap", HostNotFound=HostNotFound)
multi = _submodule(
    "multi",
    Group=Group,
    MultiChannel=MultiChannel,
    default_group=default_group,
    makegateway=makegateway,
    set_execmodel=set_execmodel,
)
xspec = _submodule("xspec", XSpec=XSpec)
rsync = _submodule("rsync", RSync=RSync)
_SUBMODULES = ("gateway_base", "gateway", "gateway_bootstrap", "multi", "xspec", "rsync")

#: Marks this module as execpool's stand-in for execnet.
__execpool_compat__ = True


def install() -> None:
    """Make ``import execnet`` (and ``execnet.multi``, ...) in this process give this module.

    Call it before anything imports execnet.  Raises ``RuntimeError`` if the real
    execnet is already imported, since objects made from it would not mix with
    execpool's.
    """
    this = sys.modules[__name__]
    current = sys.modules.get("execnet")
    if current is this:
        return
    if current is not None and not getattr(current, "__execpool_compat__", False):
        raise RuntimeError(
            "execpool.compat.install(): the real execnet (%s) was imported before; call install() "
            "before anything imports execnet (with pytest: put -p execpool.compat.xdist first on the "
            "command line, or use python -m execpool.compat -- pytest ...)" % getattr(current, "__file__", "?")
        )
    if current is not None:
        # Inside an execpool worker, whose own stand-in is already there (and is the one that
        # matches the worker's channels): keep it; it takes the master-side names from this
        # module when asked, and the submodules it lacks are this module's.
        for name in _SUBMODULES:
            sys.modules.setdefault("execnet." + name, getattr(this, name))
        return
    sys.modules["execnet"] = this
    for name in _SUBMODULES:
        sys.modules["execnet." + name] = getattr(this, name)


__all__ = [
    "Channel",
    "DataFormatError",
    "DumpError",
    "ExecModel",
    "Gateway",
    "Group",
    "HostNotFound",
    "LoadError",
    "MultiChannel",
    "PopenGateway",
    "RSync",
    "RemoteError",
    "SshGateway",
    "TimeoutError",
    "XSpec",
    "__version__",
    "default_group",
    "dump",
    "dumps",
    "execpool_version",
    "install",
    "load",
    "loads",
    "makegateway",
    "set_execmodel",
]
