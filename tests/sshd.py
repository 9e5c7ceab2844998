"""A real OpenSSH server for the tests, on loopback addresses, with keys made for the run.

``SshServer.start(directory)`` generates a host key and a user key, writes an
``sshd_config`` that listens on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (three
"hosts") on one free port, and a client ``ssh_config`` with the aliases
``host-a``, ``host-b``, ``host-c``, the user key and a ``known_hosts`` file, so
that ``ssh -F <ssh_config> host-a`` works without touching ``~/.ssh`` or the
system's configuration.  Nothing here needs a network beyond loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
ALIASES = ("host-a", "host-b", "host-c")


def sshd_missing_reason() -> str | None:
    """Why the ssh tests cannot run here, or None."""
    if not os.path.exists(SSHD):
        return "no OpenSSH server (%s): install Debian's openssh-server (apt-get install openssh-server)" % SSHD
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "no %s binary: install Debian's openssh-client" % tool
    if os.geteuid() != 0:
        return "the test sshd needs root (privilege separation)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESSES[0], 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    directory: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # alias -> address

    @property
    def ssh_config(self) -> Path:
        return self.directory / "ssh_config"

    @property
    def user_key(self) -> Path:
        return self.directory / "user_key"

    def spec(self, alias: str = "host-a", extra: str = "") -> str:
        """An xspec for ``alias`` through this server."""
        return "ssh=%s//ssh_config=%s%s" % (alias, self.ssh_config, extra)

    @classmethod
    def start(cls, directory: Path) -> SshServer:
        server = cls(directory)
        server._configure()
        server._launch()
        return server

    def _configure(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        for name in ("host_key", "user_key", "other_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)], check=True)
        (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        self.port = _free_port()
        listen = "".join("ListenAddress %s:%d\n" % (addr, self.port) for addr in ADDRESSES)
        (d / "sshd_config").write_text(
            listen
            + "HostKey %s\n" % (d / "host_key")
            + "AuthorizedKeysFile %s\n" % (d / "authorized_keys")
            + "PidFile %s\n" % (d / "sshd.pid")
            + "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            + "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nX11Forwarding no\n"
            + "MaxStartups 100:30:200\nMaxSessions 100\nLogLevel ERROR\n"
        )
        host_pub = (d / "host_key.pub").read_text().split()
        known = ""
        for alias, addr in zip(ALIASES, ADDRESSES, strict=True):
            self.hosts[alias] = addr
            known += "[%s]:%d %s %s\n" % (addr, self.port, host_pub[0], host_pub[1])
        (d / "known_hosts").write_text(known)
        config = ""
        for alias, addr in self.hosts.items():
            config += "Host %s\n  HostName %s\n  Port %d\n" % (alias, addr, self.port)
        config += (
            "Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  GlobalKnownHostsFile /dev/null\n"
            % (d / "user_key", d / "known_hosts")
        )
        self.ssh_config.write_text(config)

    def _launch(self) -> None:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "sshd.log", "wb"),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sshd exited: %s" % (self.directory / "sshd.log").read_text())
            if all(_accepts(addr, self.port) for addr in ADDRESSES):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("sshd did not listen within 20 s: %s" % (self.directory / "sshd.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _accepts(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False
