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

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import (
    RECEIVE_TIMEOUT,
    Gateways,
    MiB,
    Scenario,
    Target,
    alternate,
    bench_parser,
    chosen,
    execpool_description,
    grouped_table,
    import_execpool,
    leftover_children,
    medians_ms,
    print_footer,
    print_header,
    results_row,
    run_latency,
    run_oneway,
    running_sshd,
    source_revision,
    sshd_missing,
)

HERE = Path(__file__).resolve().parent

execpool = import_execpool()

try:
    import execnet
except ImportError:
    execnet = None

try:
    import paramiko
except ImportError:
    paramiko = None

WINDOW = 4  # bulk messages in flight
PHASES = ("make", "first", "exit")
SCENARIOS = ("startup", "bulk", "latency")

# -- the variants --------------------------------------------------------------------------


class Variant(Gateways):
    """A library's gateways to the ssh host; counts the paramiko connections exit() left open."""

    def __init__(self, name: str, mod: Any, spec: str) -> None:
        super().__init__(name, mod, spec)
        self.left_open = 0  # paramiko connections exit() left open (closed here)

    def exit(self, gw: Any) -> None:
        """End the gateway and wait until its worker (and local ssh client, if any) is gone."""
        super().exit(gw)
        if self.mod.__name__ == "execpool":
            # A paramiko connection still open after exit() is counted (and closed): execpool used
            # to leak one per exit; the count must now stay 0.
            client = getattr(gw._transport, "client", None)
            transport = client.get_transport() if client is not None else None
            if transport is not None and transport.is_active():
                self.left_open += 1
                client.close()


# -- start-up ------------------------------------------------------------------------------


def start_command(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, check=True, timeout=RECEIVE_TIMEOUT)
    return time.perf_counter() - t0


def bench_startup(
    commands: dict[str, list[str]], libs: list[Variant], reps: int, warmup: bool
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """Plain ssh commands and the libraries' start-up, alternated; the libraries' phases too.
    ``warmup``: one untimed run each first (sshd, page caches, lazy imports)."""
    runners: dict[str, Callable[[], Any]] = {name: (lambda a=argv: start_command(a)) for name, argv in commands.items()}
    runners.update({v.name: v.startup for v in libs})
    runs = alternate(list(runners), reps, lambda name, rep: runners[name](), warmup=warmup)
    times = {name: [sum(r) if isinstance(r, tuple) else r for r in vals] for name, vals in runs.items()}
    phases = {v.name: {k: [r[i] for r in runs[v.name]] for i, k in enumerate(PHASES)} for v in libs}
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
    results: dict[str, dict[str, list[float]]] = {}
    gws: dict[str, Any] = {}
    try:
        for v in libs:
            gws[v.name] = v.make_ready()
            if warmup is not None:
                warmup(gws[v.name])
        for scenario, (fns, reps) in runs.items():
            results[scenario] = alternate(list(fns), reps, lambda name, rep, fns=fns: fns[name](gws.get(name)))
        info = {name: paramiko_cipher(gw) for name, gw in gws.items() if "paramiko" in name}
    finally:
        for v in libs:
            v.exit_all()
    return results, info


def paramiko_cipher(gw: Any) -> str:
    """The cipher and MAC paramiko negotiated (private attributes; for the header only)."""
    try:
        t = gw._transport.client.get_transport()
        return "%s / %s" % (t.local_cipher, t.local_mac)
    except Exception:
        return "?"


# -- reporting -----------------------------------------------------------------------------


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
    parser = bench_parser(__doc__, "few repetitions and small sizes: a smoke test", SCENARIOS)
    parser.add_argument(
        "--python", default="python3", help="the remote interpreter, for every variant (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    only = chosen(parser, args.only, SCENARIOS)

    reason = sshd_missing()
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
    libs: list[Variant] = []
    scenarios: list[Scenario] = []
    notes: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench_ssh-", ignore_cleanup_errors=True) as tmp,
        running_sshd(Path(tmp) / "sshd") as sshd,
    ):
        try:
            host = "host-a"
            cfg = sshd.server.ssh_config
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

            gw = libs[0].make()
            try:
                info = gw.remote_info()
                worker = "python=%s -> %s (%s %s)" % (args.python, info.executable, info.implementation, info.version)
            finally:
                libs[0].exit(gw)
            ep_dir = os.path.dirname(execpool.__file__)
            fields = [
                ("sshd", "%s, %s" % (sshd.describe(host), ssh_version())),
                ("worker", worker),
                *[("spec", "%-18s %s" % (v.name, v.spec)) for v in libs],
                ("execpool", execpool_description(ep_dir)),
            ]
            if execnet is not None:
                fields.append(("execnet", "%s (runs `ssh -C`: compression on)" % execnet.__version__))
            if paramiko is not None:
                fields.append(("paramiko", paramiko.__version__))
            fields.append(("cipher", "openssh %s" % openssh_cipher(cfg, host)))
            print_header("bench_ssh", fields, quick=args.quick)

            if "startup" in only:
                baseline = "ssh %s -c pass" % args.python
                commands = {baseline: [*ssh_cmd, args.python, "-c", "pass"], "ssh true": [*ssh_cmd, "true"]}
                times, phases = bench_startup(commands, libs, p["startup_reps"], warmup=not args.quick)
                scenarios.append(
                    Scenario(
                        "gateway start-up",
                        times,
                        reference=baseline,
                        targets={"execpool/openssh": Target("<=", 1.15)},
                        unit="ms",
                        scale=1000,
                        labels={"ssh true": "ssh true (login, no python)", baseline: baseline + " (baseline)"},
                    )
                )
                for v in libs:
                    notes.append(
                        "start-up phases, median ms, %-17s: makegateway %.1f, first remote_exec result %.1f, exit %.1f"
                        % (v.name, *medians_ms(phases[v.name], PHASES))
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
                warm = (lambda gw: run_oneway(gw, block, 8)) if "bulk" in runs else None
                res, ciphers = bench_channels(libs, runs, warm)
                for name, cipher in ciphers.items():
                    notes.append("%s negotiated cipher / mac: %s" % (name, cipher))
                if "bulk" in res:
                    scenarios.append(
                        Scenario(
                            "bulk %d MiB one-way" % p["bulk_mib"],
                            res["bulk"],
                            reference=baseline_bulk,
                            targets={"execpool/openssh": Target(">=", 0.85)},
                            unit="MiB/s",
                            lower_better=False,
                            labels={baseline_bulk: baseline_bulk + " (baseline)"},
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
                    scenarios.append(Scenario("round-trip latency", res["latency"], ref, unit="us", scale=1e6))
                    notes.append(
                        "latency: %d round trips of an int per repetition, after 200 warm-up ones" % p["lat_n"]
                    )
        finally:
            for v in libs:
                v.exit_all()

    grouped_table(scenarios, 36, "figure", unit=True, skip_empty=True).print(
        "ratio = variant / reference (time for start-up and latency, MiB/s for bulk); best = min time or max rate\n"
        "over the reps; 'met' is judged on the median ratio."
    )
    for v in libs:
        if v.left_open:
            notes.append(
                "%s: exit() left the ssh connection open %d times (closed by this script; see RESULTS.md)"
                % (v.name, v.left_open)
            )
    notes.append("RESULTS.md row: %s" % results_row(args.python, source_revision(ep_dir), scenarios))
    left = print_footer(
        notes, {"local child processes": leftover_children(), "sshd sessions or workers": sshd.left}, t_start
    )
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
