"""Start-failure diagnosis: why a worker process did not start, as an error a user can act on.

A gateway whose worker process exits, writes garbage or stays silent before
its hello calls one of these with the facts it has -- the command line or
address (``command``), the exit status, the worker process's last stderr lines
and, from the transport, a ``diagnose`` hook that knows its own failure modes
(ssh: host unreachable, login refused, interpreter missing).  The error says
what was attempted where, what happened, and what to do:

- :class:`HostUnreachable`, :class:`AuthenticationFailed`: from the transport's hook;
- :class:`InterpreterTooOld`: the bootstrap's version check failed;
- :class:`InterpreterNotFound`: the command is not a Python interpreter;
- :class:`GatewayStartError`: anything else (with the reason, status and stderr).
"""

from __future__ import annotations

from collections.abc import Callable

from ._bootstrap import EXIT_NO_PAYLOAD, EXIT_TOO_OLD
from ._popen import describe_status
from ._shipped.errors import GatewayStartError, InterpreterNotFound, InterpreterTooOld

#: A transport's own diagnosis: ``diagnose(status, stderr)`` -> a specific error, or None.
Diagnose = Callable[[int | None, str], GatewayStartError | None]


def stderr_detail(stderr: str) -> str:
    """The worker process's stderr as an indented tail of a message ("" when there is none)."""
    if not stderr.strip():
        return ""
    return "\n  worker stderr:\n    " + stderr.replace("\n", "\n    ")


def exited_before_start(gateway_id: str, spec: object) -> GatewayStartError:
    """exit() (or a group's terminate) came before the worker process started."""
    return GatewayStartError("gateway %s (%s) was exited before it started" % (gateway_id, spec))


def exited_while_starting(gateway_id: str, spec: object) -> GatewayStartError:
    """exit() (or a group's terminate) came while the worker process started."""
    return GatewayStartError("gateway %s (%s) was exited while it started" % (gateway_id, spec))


def no_hello_in_time(
    gateway_id: str, spec: object, timeout: float | None, command: str, stderr: str
) -> GatewayStartError:
    """The worker process said nothing within the start timeout."""
    return GatewayStartError(
        "gateway %s (%s) did not start within %s seconds: `%s` never answered; "
        "is it a Python interpreter, and does it start this slowly?%s"
        % (gateway_id, spec, timeout, command, stderr_detail(stderr))
    )


def spec_not_applied(gateway_id: str, spec: object, error: str) -> GatewayStartError:
    """The worker process started but could not apply the spec (chdir=, nice=, env:...)."""
    return GatewayStartError(
        "gateway %s (%s): the worker process could not apply the spec: %s" % (gateway_id, spec, error)
    )


def start_failure(
    gateway_id: str,
    spec: object,
    command: str,
    reason: str,
    status: int | None,
    stderr: str,
    diagnose: Diagnose | None = None,
) -> GatewayStartError:
    """The error for a worker process that ended (with ``status``) instead of saying hello."""
    detail = stderr_detail(stderr)
    if diagnose is not None:
        error = diagnose(status, stderr)
        if error is not None:
            return error
    if status == EXIT_TOO_OLD:
        return InterpreterTooOld(
            "gateway %s (%s): `%s` is older than CPython 3.8, which execpool workers need; "
            "point python= at a newer interpreter%s" % (gateway_id, spec, command, detail)
        )
    if status == 127 or (status == EXIT_NO_PAYLOAD and not stderr.strip()):
        return InterpreterNotFound(
            "gateway %s (%s): `%s` could not run a Python interpreter (%s)%s"
            % (gateway_id, spec, command, describe_status(status), detail)
        )
    return GatewayStartError(
        "gateway %s (%s): `%s` did not start an execpool worker process: %s (%s)%s"
        % (gateway_id, spec, command, reason, describe_status(status), detail)
    )
