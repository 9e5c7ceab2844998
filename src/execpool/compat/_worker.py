"""The execnet stand-in of a compat worker process: what ``import execnet`` gives remote code there.

:func:`install_standin` runs inside each worker process that a compat group
starts, before any of the client's code: the group's start hook sends it with
``remote_exec`` (as source: it is self-contained, and imports only the
standard library and the worker's own ``_execpool`` package).  It puts the
modules ``execnet`` and ``execnet.gateway_base`` into the worker's
``sys.modules``, carrying execpool's worker-side ``dumps``, ``loads``,
``Channel``, ``DumpError``, ... under execnet's names.
"""

from __future__ import annotations

from typing import Any


def install_standin(channel: Any, version: str) -> None:
    """Make ``import execnet`` in this worker process give execpool's worker-side API.

    ``version`` is the execnet release the compat layer follows (its ``__version__``).
    Names that only a master has (``Group``, ``makegateway``, ``XSpec``, ``RSync``, ...)
    come, on first use, from the execpool installed in this worker's interpreter, if any:
    code here may start gateways of its own (a pytest-xdist run inside an xdist worker).
    """
    import sys

    from _execpool import channel as _channel  # type: ignore[import-not-found,unused-ignore]
    from _execpool import errors as _errors  # type: ignore[import-not-found,unused-ignore]
    from _execpool import execmodel as _execmodel  # type: ignore[import-not-found,unused-ignore]
    from _execpool import serial as _serial  # type: ignore[import-not-found,unused-ignore]
    from _execpool import worker as _worker  # type: ignore[import-not-found,unused-ignore]

    def module(name: str, **names: Any) -> Any:
        m = type(sys)(name)
        m.__dict__.update(names)
        m.__dict__["__execpool_compat__"] = True
        sys.modules[name] = m
        return m

    base = dict(
        Channel=_channel.Channel,
        RemoteError=_errors.RemoteError,
        TimeoutError=_errors.TimeoutError,
        DumpError=_errors.DumpError,
        DataFormatError=_errors.DataFormatError,
        LoadError=_errors.DataFormatError,
        dumps=_serial.dumps,
        loads=_serial.loads,
        ExecModel=_execmodel.ExecModel,
        get_execmodel=_execmodel.get_execmodel,
        WorkerGateway=_worker.WorkerGateway,
    )
    gateway_base = module("execnet.gateway_base", **base)
    top = module("execnet", gateway_base=gateway_base, **base)
    top.__path__ = []
    top.__doc__ = "execpool's worker-side stand-in for execnet (set up by execpool.compat)"
    top.__version__ = version

    def master_side(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            from execpool import compat
        except ImportError:
            raise AttributeError(
                "module 'execnet' has no attribute %r: execpool is not installed in this worker "
                "process's interpreter, so only the worker-side API (dumps, loads, Channel, ...) is here" % name
            ) from None
        value = getattr(compat, name)
        setattr(top, name, value)
        return value

    top.__getattr__ = master_side
