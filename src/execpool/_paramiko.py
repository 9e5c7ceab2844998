"""The ssh transport through paramiko: ssh without an ``ssh`` binary.

Used for ``ssh=HOST//sshbackend=paramiko``, and for every ``ssh=`` spec on a
machine that has no OpenSSH client.  It reads the same ssh client
configuration (``ssh_config=PATH`` or ``~/.ssh/config``: HostName, Port, User,
IdentityFile, UserKnownHostsFile, ProxyCommand, ProxyJump is not supported by
paramiko's config object and is refused), uses ssh-agent and the default keys,
and checks host keys strictly: a host missing from known_hosts is refused
unless the spec says ``hostkeys=accept-new`` (record it) or
``hostkeys=ignore`` (no check at all; only for throw-away test hosts).

The worker runs as an ssh "exec" session: its stdin/stdout carry the protocol
and its stderr is relayed like a local worker's.  There is no local process:
"killing" the worker closes the session, which makes sshd end the remote
command; the exit status comes from the session.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ._popen import StderrRelay
from ._shipped import trace as _trace
from ._shipped.errors import AuthenticationFailed, GatewayStartError, HostUnreachable
from ._xspec import remote_python

HOSTKEY_POLICIES = ("strict", "accept-new", "ignore")
KEEPALIVE_SECONDS = 15


class ChannelIO:
    """The gateway's byte transport over a paramiko session channel."""

    def __init__(self, chan: Any, client: Any = None) -> None:
        self.chan = chan
        self.client = client  # closed with the channel: one connection per gateway
        self._wclosed = False

    def read(self, n: int) -> bytes:
        return bytes(self.chan.recv(n))

    def readinto(self, buf: Any) -> int:
        data = self.chan.recv(len(buf))
        n = len(data)
        buf[:n] = data
        return n

    def write(self, header: bytes, payload: bytes = b"", extra: Any = None) -> None:
        if self._wclosed:
            raise OSError("the ssh session's input is closed")
        try:
            if len(payload) < 65536:
                self.chan.sendall(header + payload)
            else:
                self.chan.sendall(header)
                self.chan.sendall(payload)
            for buf in extra or ():
                self.chan.sendall(bytes(buf))  # paramiko slices what it sends: give it bytes
        except OSError:
            raise
        except Exception as exc:  # paramiko.SSHException and friends
            raise OSError(str(exc)) from exc

    def close_write(self) -> None:
        if not self._wclosed:
            self._wclosed = True
            try:
                self.chan.shutdown_write()
            except Exception:
                pass

    def close(self) -> None:
        self.close_write()
        _close_quietly(self.chan, self.client)


class ParamikoTransport(StderrRelay):
    """A worker on an ssh host, reached through paramiko."""

    def __init__(self, spec: Any, target: str, port: str | None, remote_command: str, gateway_id: str) -> None:
        super().__init__(gateway_id)
        self.spec = spec
        self.target = target
        self.port = port
        self.remote_command = remote_command
        self.client: Any = None
        self.chan: Any = None
        self._killed = False
        self._python = remote_python(spec)

    pid = None  # no local process

    def describe(self) -> str:
        return "paramiko ssh %s%s %s" % (self.target, " -p " + self.port if self.port else "", self._python)

    def _options(self) -> dict[str, Any]:
        import paramiko

        user, _, host = self.target.rpartition("@")
        path = self.spec.ssh_config if isinstance(self.spec.ssh_config, str) else os.path.expanduser("~/.ssh/config")
        config = paramiko.SSHConfig()
        if os.path.exists(path):
            config = paramiko.SSHConfig.from_path(path)
        elif isinstance(self.spec.ssh_config, str):
            raise GatewayStartError("gateway %s: ssh_config file %s does not exist" % (self.gateway_id, path))
        entry = config.lookup(host)
        if "proxyjump" in entry:
            raise GatewayStartError(
                "gateway %s: ProxyJump in the ssh configuration is not supported by the paramiko backend; "
                "use the OpenSSH backend (the default) or a ProxyCommand" % self.gateway_id
            )
        return {
            "hostname": entry.get("hostname", host),
            "port": int(self.port or entry.get("port", 22)),
            "username": user or entry.get("user") or None,
            "key_filename": [os.path.expanduser(p) for p in entry.get("identityfile", [])] or None,
            "known_hosts": [os.path.expanduser(p) for p in entry.get("userknownhostsfile", "").split()],
            "proxycommand": entry.get("proxycommand"),
            "identities_only": entry.get("identitiesonly", "no").lower() == "yes",
        }

    def start(self) -> ChannelIO:
        try:
            import paramiko
        except ImportError:  # pragma: no cover - a declared dependency
            raise GatewayStartError("gateway %s: the paramiko backend needs `pip install paramiko`" % self.gateway_id)
        policy_name = self.spec.hostkeys or "strict"
        if policy_name not in HOSTKEY_POLICIES:
            raise GatewayStartError(
                "gateway %s: hostkeys=%s is not one of %s" % (self.gateway_id, policy_name, ", ".join(HOSTKEY_POLICIES))
            )
        opts = self._options()
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        for path in opts["known_hosts"]:
            if os.path.exists(path):
                client.load_host_keys(path)
        if policy_name == "strict":
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif policy_name == "accept-new":
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        sock = paramiko.ProxyCommand(opts["proxycommand"]) if opts["proxycommand"] else None
        where = "gateway %s" % self.gateway_id
        try:
            client.connect(
                opts["hostname"],
                port=opts["port"],
                username=opts["username"],
                key_filename=opts["key_filename"],
                allow_agent=not opts["identities_only"],
                look_for_keys=not opts["identities_only"],
                sock=sock,
                timeout=30,
                banner_timeout=30,
                auth_timeout=30,
            )
        except paramiko.BadHostKeyException as exc:
            raise AuthenticationFailed("%s: the host key has changed (%s); check known_hosts" % (where, exc)) from None
        except paramiko.AuthenticationException as exc:
            raise AuthenticationFailed(
                "%s: the ssh login was refused (%s); check the user and the key (ssh-agent, IdentityFile)"
                % (where, exc)
            ) from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise AuthenticationFailed(
                    "%s: %s; add the host key to known_hosts (e.g. by logging in once with ssh), or use "
                    "hostkeys=accept-new in the spec" % (where, exc)
                ) from None
            raise HostUnreachable("%s: ssh failed: %s" % (where, exc)) from None
        except (OSError, socket.gaierror, paramiko.ssh_exception.NoValidConnectionsError) as exc:
            raise HostUnreachable(
                "%s: the host could not be reached (%s); check the host name, port and network" % (where, exc)
            ) from None
        if policy_name == "accept-new" and opts["known_hosts"]:
            try:
                client.save_host_keys(opts["known_hosts"][0])
            except OSError as exc:
                _trace.trace("could not record the host key:", exc)
        transport = client.get_transport()
        transport.set_keepalive(KEEPALIVE_SECONDS)
        chan = transport.open_session()
        chan.exec_command(self.remote_command)
        self.client, self.chan = client, chan
        self._start_relay(lambda n: bytes(chan.recv_stderr(n)))
        _trace.trace("paramiko session to", opts["hostname"], opts["port"], "for", self.gateway_id)
        return ChannelIO(chan, client)

    def poll(self) -> int | None:
        if self.chan is None:
            return None
        if self.chan.exit_status_ready():
            return int(self.chan.recv_exit_status())
        if self._killed or self.chan.closed:
            return -9
        return None

    def wait(self, timeout: float | None) -> int | None:
        """The remote command's exit status, or None if it is still running after ``timeout``."""
        if self.chan is None:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        # the status arrives as an event; a severed or closed session never sends one
        while not (self._killed or self.chan.closed or self.chan.status_event.is_set()):
            remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if remaining <= 0:
                break
            self.chan.status_event.wait(remaining)
        return self.poll()

    def run_command(self, command: str, timeout: float) -> None:
        """Run a shell command on the host over a new channel of this connection (while it lasts)."""
        client = self.client
        if client is None:
            return
        _, stdout, _ = client.exec_command(command, timeout=timeout)
        stdout.channel.recv_exit_status()

    def kill(self) -> None:
        """Close the session and connection: sshd then ends the remote command."""
        self._killed = True
        _close_quietly(self.chan, self.client)
        _trace.trace("closed the paramiko session of", self.gateway_id)

    def sever(self) -> None:
        """Cut the network connection abruptly (for tests of connection loss)."""
        sock = self.client.get_transport().sock if self.client is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _close_quietly(*objs: Any) -> None:
    """Close paramiko channels and clients, ignoring what is already closed or broken."""
    for obj in objs:
        try:
            if obj is not None:
                obj.close()
        except Exception:
            pass
