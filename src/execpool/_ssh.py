"""The ssh transport through the OpenSSH client: a worker on another host.

``ssh=[user@]host[:port]`` starts ``ssh ... host -- exec PYTHON -c BOOTSTRAP``
as a local process; from then on it is a popen transport whose pipes happen to
reach another machine.  The OpenSSH client does everything ssh users expect:
``~/.ssh/config`` (or ``ssh_config=PATH``), ssh-agent, keys, ProxyJump.  It
runs with ``BatchMode=yes``, so a missing key fails at once instead of waiting
for a password nobody will type, and with keep-alives, so a dead network
ends the connection instead of hanging it.

When the start fails, :func:`classify_failure` turns ssh's exit status and
messages into the error a user can act on: the host cannot be reached, the
login was refused, the remote interpreter does not exist or is too old.
"""

from __future__ import annotations

import re
import shlex
import shutil
from typing import TYPE_CHECKING, Any

from ._bootstrap import BOOTSTRAP
from ._shipped import trace as _trace
from ._shipped.errors import AuthenticationFailed, GatewayStartError, HostUnreachable, InterpreterNotFound
from ._xspec import XSpec, remote_python

if TYPE_CHECKING:
    from ._transports import Launch, Launched

#: Exit status of the OpenSSH client when ssh itself (not the remote command) failed.
SSH_FAILED = 255

_UNREACHABLE = re.compile(
    r"could not resolve hostname|name or service not known|temporary failure in name resolution|"
    r"connection refused|connection timed out|no route to host|network is unreachable|"
    r"connection closed by remote host|operation timed out|connection reset",
    re.IGNORECASE,
)
_REFUSED = re.compile(
    r"permission denied|too many authentication failures|host key verification failed|"
    r"no matching host key|authentication failed|remote host identification has changed",
    re.IGNORECASE,
)


def split_target(target: str) -> tuple[str, str | None]:
    """``user@host:port`` -> (``user@host``, ``port``); IPv6 as ``[::1]:22``."""
    m = re.fullmatch(r"(?P<host>(?:[^@]+@)?(?:\[[^\]]+\]|[^:\[\]]+))(?::(?P<port>\d+))?", target)
    if not m:
        raise GatewayStartError("ssh=%r: write the host as [user@]host[:port]" % target)
    host = m.group("host").replace("[", "").replace("]", "")
    return host, m.group("port")


BACKENDS = ("openssh", "paramiko")


def launch(request: Launch) -> Launched:
    """The ``ssh`` transport: the OpenSSH client as a local process, or a paramiko session."""
    from ._popen import PopenTransport
    from ._transports import Launched

    spec = request.spec
    transport: Any
    if choose_backend(spec) == "openssh":
        argv, display = ssh_argv(spec, BOOTSTRAP)
        transport = PopenTransport(argv, request.where, display=display)
    else:
        from ._paramiko import ParamikoTransport

        target, port = split_target(spec.ssh)
        transport = ParamikoTransport(spec, target, port, remote_command(spec, BOOTSTRAP), request.where)
    where = "gateway %s" % request.where
    python = remote_python(spec)

    def diagnose(status: int | None, stderr: str) -> GatewayStartError | None:
        return classify_failure(status, stderr, where, python)

    def kill_remote(pid: int) -> None:
        kill_remote_worker(spec, transport, pid, request.gateway_id)

    # With the OpenSSH client the local process is ssh itself, not the remote worker process.
    return Launched(transport, process="ssh client pid", diagnose=diagnose, kill_remote=kill_remote)


def kill_remote_worker(spec: XSpec, transport: Any, pid: int, gateway_id: str) -> None:
    """Killing the local ssh client does not end a remote worker process that cannot read (stopped,
    or stuck in C code holding the GIL): sshd does not signal a command without a terminal.
    So over a new login (OpenSSH) or a new channel (paramiko), SIGKILL it by pid."""
    command = kill_remote_worker_command(pid)
    try:
        if choose_backend(spec) == "openssh":
            import subprocess

            ssh = shutil.which("ssh")
            if ssh:
                subprocess.run(ssh_command_argv(ssh, spec, command), capture_output=True, timeout=15)
        else:
            transport.run_command(command, timeout=15)
    except Exception as exc:  # best effort: the local side is killed anyway
        _trace.trace("could not kill the remote worker of", gateway_id, exc)


def choose_backend(spec: XSpec) -> str:
    """``sshbackend=`` if given, else OpenSSH when an ``ssh`` binary exists, else paramiko."""
    if not isinstance(spec.ssh, str) or not spec.ssh:
        raise GatewayStartError("xspec %r: ssh= needs a host, e.g. ssh=user@example.org" % str(spec))
    backend = spec.sshbackend
    if backend is None:
        return "openssh" if shutil.which("ssh") else "paramiko"
    if backend not in BACKENDS:
        raise GatewayStartError("xspec %r: sshbackend=%s is not one of %s" % (str(spec), backend, ", ".join(BACKENDS)))
    return str(backend)


def remote_command(spec: XSpec, bootstrap: str) -> str:
    """What the remote login shell runs: the interpreter with the bootstrap, in place of the shell."""
    return "exec %s -c %s" % (remote_python(spec), shlex.quote(bootstrap))


def ssh_argv(spec: XSpec, bootstrap: str) -> tuple[list[str], str]:
    """The local OpenSSH command line that starts a worker, and a short form for messages."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise GatewayStartError(
            "xspec %r: no `ssh` command on PATH; install the OpenSSH client (Debian: openssh-client) "
            "or use sshbackend=paramiko" % str(spec)
        )
    host, port = split_target(spec.ssh)
    display = "ssh %s%s %s" % (host, " -p " + port if port else "", remote_python(spec))
    return ssh_command_argv(ssh, spec, remote_command(spec, bootstrap)), display


def ssh_command_argv(ssh: str, spec: XSpec, command: str) -> list[str]:
    """The OpenSSH command line that runs ``command`` (a shell command line) on the spec's host."""
    host, port = split_target(spec.ssh)
    argv = [ssh, "-T", "-x", "-e", "none"]
    argv += ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if isinstance(spec.ssh_config, str):
        argv += ["-F", spec.ssh_config]
    if port:
        argv += ["-p", port]
    # ssh joins everything after the host into one command for the remote login shell
    return [*argv, host, "--", command]


def kill_remote_worker_command(pid: int) -> str:
    """A shell command that SIGKILLs remote process ``pid`` only if it still is an execpool worker
    (its command line holds the bootstrap's version check), so a reused pid is left alone."""
    return "grep -q 'sys.version_info<(3,8)' /proc/%d/cmdline 2>/dev/null && kill -9 %d" % (pid, pid)


def classify_failure(status: int | None, stderr: str, where: str, command: str) -> GatewayStartError | None:
    """The specific error for a failed ssh start, or None if nothing specific applies."""
    text = stderr.strip()
    if status == SSH_FAILED:
        if _REFUSED.search(text):
            return AuthenticationFailed(
                "%s: the ssh login was refused (%s); check the user, the key (ssh-agent, IdentityFile) "
                "and the host key in known_hosts -- `ssh` with the same options must work without a prompt"
                % (where, _last_line(text))
            )
        if _UNREACHABLE.search(text):
            return HostUnreachable(
                "%s: the host could not be reached (%s); check the host name, port and network"
                % (where, _last_line(text))
            )
    if status == 127:
        return InterpreterNotFound(
            "%s: the remote interpreter was not found (`%s`: %s); install Python 3.8+ there or point "
            "python= at one that exists" % (where, command, _last_line(text) or "command not found")
        )
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
