#!/usr/bin/env python
"""ssh benchmark: execpool (OpenSSH and paramiko backends) and execnet against plain ssh, in one run.

Starts the tests' real OpenSSH server (``tests/sshd.py``: an sshd on 127.0.0.2-4
with keys made for the run, a client config with the alias ``host-a``) in a
temporary directory, measures every variant against it over loopback, and
stops it again.  The variants of each scenario are alternated per repetition
(the order rotates: A B C D, B C D A, ...) so that noise on a shared machine
hits all alike.  Scenarios:

  start-up    makegateway + first remote_exec result + exit, until the worker is
              gone; baseline: ``ssh -F CONFIG host-a python3 -c pass``
  bulk        64 MiB as 1 MiB ``bytes`` messages master -> worker, each
              acknowledged with its length (4 in flight), MiB/s; baseline:
              ``ssh -F CONFIG host-a 'cat >/dev/null'`` fed the same bytes
  latency     remote echo loop: send an int, wait for it to come back

Run from the repository root (needs root, for sshd's privilege separation)::

    python benchmarks/bench_ssh.py            # full run, about 2-2.5 minutes
    python benchmarks/bench_ssh.py --quick    # smoke test, about 15-20 s

Needs /usr/sbin/sshd (Debian: ``apt-get install openssh-server``); execnet
(``pip install -e '.[bench]'``) is optional: without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    RECEIVE_TIMEOUT,
    MiB,
    descendants,
    end_sessions,
    exit_execnet,
    fmt,
    rotate,
    run_latency,
    run_oneway,
    source_revision,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' sshd helper

from sshd import SshServer, sshd_missing_reason  # noqa: E402

try:
    import execpool
except ImportError:  # not installed: use the source tree next to this file
    sys.path.insert(0, str(HERE.parent / "src"))
    import execpool

try:
    import execnet
except ImportError:
    execnet = None

try:
    import paramiko
except ImportError:
    paramiko = None

EXIT_TIMEOUT = 10.0
WINDOW = 4  # bulk messages in flight

# -- remote code (kept Python 3.8-compatible) --------------------------------------------


HELLO = "channel.send(1)"


# -- the variants --------------------------------------------------------------------------


class Variant:
    """One way of reaching the ssh host: plain ssh (baseline) or a library gateway."""

    def __init__(self, name: str, mod: Any = None, spec: str = "") -> None:
        self.name = name
        self.mod = mod
        self.spec = spec
        self.live: list[Any] = []  # gateways not yet exited (ended in finally blocks)
        self.left_open = 0  # paramiko connections exit() left open (closed here)

    def makegateway(self) -> Any:
        gw = self.mod.makegateway(self.spec)
        self.live.append(gw)
        return gw

    def exit(self, gw: Any) -> None:
        """End the gateway and wait until its worker (and local ssh client, if any) is gone."""
        if execnet is not None and self.mod is execnet:
            # execnet's exit() only starts the shutdown; Group.terminate() then does join()
            # and _io.wait().  Do the same, bounded, so both libraries stop the clock at the
            # same point: the local ssh process is gone.
            exit_execnet(gw, EXIT_TIMEOUT)
        else:
            gw.exit(EXIT_TIMEOUT)  # execpool: returns once the worker is gone
            # A paramiko connection still open after exit() is counted (and closed): execpool used
            # to leak one per exit; the count must now stay 0.
            client = getattr(gw._transport, "client", None)
            transport = client.get_transport() if client is not None else None
            if transport is not None and transport.is_active():
                self.left_open += 1
                client.close()
        if gw in self.live:
            self.live.remove(gw)

    def exit_all(self) -> None:
        for gw in list(self.live):
            try:
                self.exit(gw)
            except Exception as exc:  # pragma: no cover - best effort clean-up
                print("warning: exiting a %s gateway failed: %r" % (self.name, exc), file=sys.stderr)
        self.live.clear()


# -- start-up ------------------------------------------------------------------------------


def start_library(v: Variant) -> tuple[float, float, float]:
    """makegateway, first remote_exec result, exit: seconds for each phase."""
    t0 = time.perf_counter()
    gw = v.makegateway()
    t1 = time.perf_counter()
    ch = gw.remote_exec(HELLO)
    assert ch.receive(RECEIVE_TIMEOUT) == 1
    t2 = time.perf_counter()
    v.exit(gw)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def start_command(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, check=True, timeout=RECEIVE_TIMEOUT)
    return time.perf_counter() - t0


def bench_startup(
    commands: dict[str, list[str]], libs: list[Variant], reps: int, warmup: bool
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    names = list(commands) + [v.name for v in libs]
    runners: dict[str, Callable[[], Any]] = {name: (lambda a=argv: start_command(a)) for name, argv in commands.items()}
    runners.update({v.name: (lambda v=v: start_library(v)) for v in libs})
    times: dict[str, list[float]] = {name: [] for name in names}
    phases: dict[str, dict[str, list[float]]] = {v.name: {"make": [], "first": [], "exit": []} for v in libs}
    if warmup:  # one untimed run each: sshd, page caches, lazy imports
        for name in names:
            runners[name]()
    for rep in range(reps):
        for name in rotate(names, rep):
            gc.collect()
            out = runners[name]()
            if isinstance(out, tuple):
                times[name].append(sum(out))
                for key, value in zip(("make", "first", "exit"), out, strict=True):
                    phases[name][key].append(value)
            else:
                times[name].append(out)
    return times, phases


# -- channel scenarios ---------------------------------------------------------------------


def run_ssh_cat(ssh_cmd: list[str], block: bytes, total_mib: int, warm_mib: int = 4) -> float:
    """MiB/s through plain ssh into ``cat >/dev/null``, timed from the remote shell's "ready" to its "done".

    ``warm_mib`` MiB go first into ``head -c``, untimed: the first data on a new ssh connection
    stalls for 0.1-0.3 s here, which the libraries' gateways (started and warmed up once) do
    not pay in their timed part either.
    """
    remote = "head -c %d >/dev/null; echo ready; cat >/dev/null; echo done" % (warm_mib * len(block))
    proc = subprocess.Popen([*ssh_cmd, remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for _ in range(warm_mib):
            proc.stdin.write(block)
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line == b"ready\n", line
        t0 = time.perf_counter()
        for _ in range(total_mib):
            proc.stdin.write(block)
        proc.stdin.close()
        line = proc.stdout.readline()
        t = time.perf_counter() - t0
        assert line == b"done\n", line
        proc.wait(RECEIVE_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return total_mib * len(block) / MiB / t


def bench_channels(
    libs: list[Variant],
    runs: dict[str, tuple[dict[str, Callable[[Any], float]], int]],
    warmup: Callable[[Any], Any] | None = None,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Run the channel scenarios, each library on one gateway started once.

    ``runs``: scenario -> ({variant name: fn(gateway or None) -> figure}, repetitions); a
    name that is not a library (the ssh baseline) gets None.  ``warmup(gw)`` runs once on
    each gateway after its start.
    """
    results: dict[str, dict[str, list[float]]] = {s: {n: [] for n in fns} for s, (fns, _) in runs.items()}
    gws: dict[str, Any] = {}
    try:
        for v in libs:
            gw = v.makegateway()
            ch = gw.remote_exec(HELLO)
            assert ch.receive(RECEIVE_TIMEOUT) == 1
            gws[v.name] = gw
            if warmup is not None:
                warmup(gw)
        for scenario, (fns, reps) in runs.items():
            names = list(fns)
            for rep in range(reps):
                for name in rotate(names, rep):
                    gc.collect()
                    results[scenario][name].append(fns[name](gws.get(name)))
        info = {name: paramiko_cipher(gw) for name, gw in gws.items() if "paramiko" in name}
    finally:
        for v in libs:
            if v.name in gws:
                v.exit(gws[v.name])
    return results, info


def paramiko_cipher(gw: Any) -> str:
    """The cipher and MAC paramiko negotiated (private attributes; for the header only)."""
    try:
        t = gw._transport.client.get_transport()
        return "%s / %s" % (t.local_cipher, t.local_mac)
    except Exception:
        return "?"


# -- reporting -----------------------------------------------------------------------------


class Row:
    def __init__(self, name: str, vals: list[float], scale: float, lower_better: bool) -> None:
        self.name = name
        self.reps = len(vals)
        vals = [v * scale for v in vals]
        self.best = min(vals) if lower_better else max(vals)
        self.median = statistics.median(vals)


class Scenario:
    def __init__(
        self,
        title: str,
        unit: str,
        scale: float,
        lower_better: bool,
        values: dict[str, list[float]],
        reference: str,
        target: tuple[str, float] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.title = title
        self.unit = unit
        self.lower_better = lower_better
        self.reference = reference
        self.target = target  # (variant name, ratio)
        self.labels = labels or {}
        self.rows = [Row(name, vals, scale, lower_better) for name, vals in values.items() if vals]

    def met(self, ratio: float) -> bool:
        assert self.target is not None
        return ratio <= self.target[1] if self.lower_better else ratio >= self.target[1]

    def target_text(self) -> str:
        assert self.target is not None
        return ("<= %gx" if self.lower_better else ">= %gx") % self.target[1]


def print_table(scenarios: list[Scenario]) -> None:
    line = "%-36s %-5s %4s | %9s %9s | %6s %6s | %-8s %s"
    head = line % ("scenario / variant", "unit", "reps", "best", "median", "best", "median", "target", "met")
    print("%-48s | %-19s | %-13s |" % ("", "figure", "ratio vs ref"))
    print(head)
    print("-" * len(head))
    for sc in scenarios:
        print("%s (ref: %s)" % (sc.title, sc.labels.get(sc.reference, sc.reference)))
        ref = next((r for r in sc.rows if r.name == sc.reference), None)
        for r in sc.rows:
            label = "  " + sc.labels.get(r.name, r.name)
            if ref is None:
                rb_text = rm_text = "-"
            elif r is ref:
                rb_text = rm_text = "ref"
            else:
                rb, rm = r.best / ref.best, r.median / ref.median
                rb_text, rm_text = "%.2fx" % rb, "%.2fx" % rm
            target = met = ""
            if sc.target is not None and r.name == sc.target[0] and ref is not None and r is not ref:
                target = sc.target_text()
                met = "yes" if sc.met(rm) else "NO"
                if sc.met(rm) != sc.met(rb):
                    met += " (best: %s)" % ("yes" if sc.met(rb) else "no")
            print(line % (label, sc.unit, r.reps, fmt(r.best), fmt(r.median), rb_text, rm_text, target, met))
    print("-" * len(head))
    print(
        "ratio = variant / reference (time for start-up and latency, MiB/s for bulk); best = min time or max rate\n"
        "over the reps; 'met' is judged on the median ratio."
    )


def ssh_version() -> str:
    try:
        return subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def openssh_cipher(config: Path, host: str) -> str:
    """The OpenSSH client's first cipher and MAC choice for ``host`` (``ssh -G``; no connection)."""
    try:
        out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    opts = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return "%s / %s (first choices)" % (opts.get("ciphers", "?").split(",")[0], opts.get("macs", "?").split(",")[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions and small sizes: a smoke test")
    parser.add_argument(
        "--python", default="python3", help="the remote interpreter, for every variant (default: %(default)s)"
    )
    parser.add_argument(
        "--only", default="startup,bulk,latency", help="comma-separated subset of: startup,bulk,latency"
    )
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"startup", "bulk", "latency"}
    if unknown:
        parser.error("unknown scenario(s): %s" % ", ".join(sorted(unknown)))

    reason = sshd_missing_reason()
    if reason is not None:
        print(
            "bench_ssh: cannot start the test sshd: %s.\n"
            "It needs the OpenSSH server and client (Debian: apt-get install openssh-server openssh-client) "
            "and root." % reason,
            file=sys.stderr,
        )
        return 2

    if args.quick:
        p = dict(startup_reps=2, bulk_reps=2, bulk_mib=16, lat_reps=2, lat_n=300)
    else:
        p = dict(startup_reps=15, bulk_reps=9, bulk_mib=64, lat_reps=7, lat_n=1000)

    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench_ssh-")
    server: SshServer | None = None
    libs: list[Variant] = []
    scenarios: list[Scenario] = []
    notes: list[str] = []
    left_remote: dict[int, str] = {}
    try:
        server = SshServer.start(Path(tmp) / "sshd")
        host = "host-a"
        cfg = server.ssh_config
        ssh_cmd = ["ssh", "-F", str(cfg), host]
        base = "ssh=%s//ssh_config=%s//python=%s" % (host, cfg, args.python)
        libs = [
            Variant("execpool/openssh", execpool, base + "//sshbackend=openssh"),
            Variant("execpool/paramiko", execpool, base + "//sshbackend=paramiko"),
        ]
        if paramiko is None:
            libs.pop()
            notes.append("paramiko is not installed: its rows are skipped")
        if execnet is not None:
            # execnet takes ssh_config= as an xspec key and passes it as `ssh -F PATH`
            libs.append(Variant("execnet", execnet, base))
        else:
            notes.append("execnet is not installed (pip install -e '.[bench]'): its rows are skipped")
        by_name = {v.name: v for v in libs}

        print("bench_ssh  %s" % datetime.datetime.now().isoformat(timespec="seconds"))
        print("master : %s %s (%s)" % (platform.python_implementation(), platform.python_version(), sys.executable))
        print(
            "sshd   : %s on %s:%d (alias %s), %s"
            % (server.proc.args[0] if server.proc else "?", server.hosts[host], server.port, host, ssh_version())
        )
        gw = by_name["execpool/openssh"].makegateway()
        try:
            info = gw.remote_info()
            print(
                "worker : python=%s -> %s (%s %s)" % (args.python, info.executable, info.implementation, info.version)
            )
        finally:
            by_name["execpool/openssh"].exit(gw)
        for v in libs:
            print("spec   : %-18s %s" % (v.name, v.spec))
        ep_dir = os.path.dirname(execpool.__file__)
        rev = source_revision(ep_dir)
        print("execpool %s (%s%s)" % (execpool.__version__, ep_dir, ", git " + rev if rev else ""))
        if execnet is not None:
            print("execnet  %s (runs `ssh -C`: compression on)" % execnet.__version__)
        if paramiko is not None:
            print("paramiko %s" % paramiko.__version__)
        print("cipher : openssh %s" % openssh_cipher(cfg, host))
        if hasattr(os, "getloadavg"):
            print("load   : %.2f %.2f %.2f (1/5/15 min) on %s CPUs" % (*os.getloadavg(), os.cpu_count()))
        print("mode   : %s" % ("quick (smoke test; figures not meaningful)" if args.quick else "full"))
        print(flush=True)

        if "startup" in only:
            baseline = "ssh %s -c pass" % args.python
            commands = {baseline: [*ssh_cmd, args.python, "-c", "pass"], "ssh true": [*ssh_cmd, "true"]}
            times, phases = bench_startup(commands, libs, p["startup_reps"], warmup=not args.quick)
            scenarios.append(
                Scenario(
                    "gateway start-up",
                    "ms",
                    1000,
                    True,
                    times,
                    baseline,
                    ("execpool/openssh", 1.15),
                    {"ssh true": "ssh true (login, no python)", baseline: baseline + " (baseline)"},
                )
            )
            for v in libs:
                ph = phases[v.name]
                notes.append(
                    "start-up phases, median ms, %-17s: makegateway %.1f, first remote_exec result %.1f, exit %.1f"
                    % (v.name, *(1000 * statistics.median(ph[k]) for k in ("make", "first", "exit")))
                )
            notes.append(
                "start-up: %d runs per variant%s"
                % (p["startup_reps"], "" if args.quick else ", after one untimed warm-up run each")
            )

        runs: dict[str, tuple[dict[str, Callable[[Any], float]], int]] = {}
        block = os.urandom(MiB)  # incompressible: ssh -C (execnet) gains nothing from the payload
        baseline_bulk = "ssh 'cat >/dev/null'"
        if "bulk" in only:
            fns: dict[str, Callable[[Any], float]] = {
                baseline_bulk: lambda _: run_ssh_cat(ssh_cmd, block, p["bulk_mib"])
            }
            for v in libs:
                fns[v.name] = lambda gw: run_oneway(gw, block, p["bulk_mib"])
            runs["bulk"] = (fns, p["bulk_reps"])
        if "latency" in only:
            runs["latency"] = ({v.name: (lambda gw: run_latency(gw, p["lat_n"])) for v in libs}, p["lat_reps"])
        if runs:
            res, info = bench_channels(libs, runs, (lambda gw: run_oneway(gw, block, 8)) if "bulk" in runs else None)
            for name, cipher in info.items():
                notes.append("%s negotiated cipher / mac: %s" % (name, cipher))
            if "bulk" in res:
                scenarios.append(
                    Scenario(
                        "bulk %d MiB one-way" % p["bulk_mib"],
                        "MiB/s",
                        1,
                        False,
                        res["bulk"],
                        baseline_bulk,
                        ("execpool/openssh", 0.85),
                        {baseline_bulk: baseline_bulk + " (baseline)"},
                    )
                )
                notes.append(
                    "bulk: %d x 1 MiB random bytes per repetition; libraries: one message each, acked with its "
                    "length, %d in flight, on a gateway warmed up with 8 MiB; baseline: a new ssh per repetition, "
                    "4 MiB untimed into `head -c`, then the figure's bytes written to ssh's stdin, timed from the "
                    "remote shell's 'ready' to its 'done' after cat ends" % (p["bulk_mib"], WINDOW)
                )
            if "latency" in res:
                ref = "execnet" if execnet is not None else "execpool/openssh"
                scenarios.append(Scenario("round-trip latency", "us", 1e6, True, res["latency"], ref))
                notes.append("latency: %d round trips of an int per repetition, after 200 warm-up ones" % p["lat_n"])
    finally:
        for v in libs:
            v.exit_all()
        if server is not None:
            if server.proc is not None:
                # sessions (sshd children, their shells and workers) outlive the listener:
                # check that none is left, and end any that is, by pid
                # (ended while the listener still runs, so that it reaps them: the init here
                # does not reap orphans)
                left_remote = end_sessions(server.proc.pid)
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(scenarios)
    for v in libs:
        if v.left_open:
            notes.append(
                "%s: exit() left the ssh connection open %d times (closed by this script; see RESULTS.md)"
                % (v.name, v.left_open)
            )
    for n in notes:
        print("  " + n)
    left_local = descendants(os.getpid())
    if left_local:
        time.sleep(0.5)  # a just-exited process may still be reaped
        left_local = descendants(os.getpid())
    print("  leftover local child processes: %s" % (left_local or "none"))
    print("  leftover sshd sessions or workers: %s" % (left_remote or "none"))
    if hasattr(os, "getloadavg"):
        print("  load at the end: %.2f %.2f %.2f" % os.getloadavg())
    print("  total benchmark time: %.1f s" % (time.perf_counter() - t_start))
    return 1 if left_local or left_remote else 0


if __name__ == "__main__":
    sys.exit(main())
