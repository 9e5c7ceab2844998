#!/usr/bin/env python
"""RSync over ssh, cold and warm: execpool against ``rsync -a -e ssh`` as a user types them.

Cold means what a user waits for at the prompt: a fresh process each time, gateway
start-up over ssh and exit included --

    execpool   python -m execpool rsync SRC ssh=host-a//ssh_config=CFG//python=PY:DEST
    rsync      rsync -a -e "ssh -F CFG" SRC/ host-a:DEST/

The cold process runs with its bytecode cached, as after ``pip install`` (in a
temporary ``PYTHONPYCACHEPREFIX``; an untimed first run writes it).

Warm means execpool's gateway is already up (``RSync(...).send()`` in this process);
rsync has no warm form, so its cold time stays the reference.  Both go through the
tests' sshd (``tests/sshd.py``) with the same ssh_config and no compression on either
side (neither ``-z`` nor ``-C``; the config sets no ``Compression``).

Scenarios (the tree of bench_rsync.py: about 2,000 files, 157 MB, with a 50 MB file):

  initial     empty destination
  nochange    the same tree again
  delta       the 50 MB file with 1 % of its bytes changed in 5 regions

Variants alternate per repetition (rotating order); each sync's destination is
verified (every path and size, the content of a sample and of every changed file);
medians are printed with their ratios to rsync side by side.  The script also
times the fixed costs a cold run pays (interpreter start, ``import execpool``, an
ssh login running ``true``, a gateway's start and exit) so that the table can be
read as "fixed cost + work".

Run from the repository root::

    python benchmarks/bench_rsync_cold.py            # about 1.5-2 minutes
    python benchmarks/bench_rsync_cold.py --quick    # small tree, 1 rep
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    Gateways,
    alternate,
    bench_parser,
    default_remote_python,
    import_execpool,
    running_sshd,
    sshd_missing,
)
from bench_rsync import FULL, QUICK, RSYNC, build_tree, change_big, verify

execpool = import_execpool()

SCENARIOS = ("initial", "nochange", "delta")
REPS = {"initial": 3, "nochange": 5, "delta": 4}


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    t = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError("%s exited with %d: %s" % (argv[0], proc.returncode, proc.stderr.strip()[-800:]))
    return t


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "smaller tree, 1 repetition: a smoke test")
    parser.add_argument("--python", default=default_remote_python(), help="remote interpreter (default: %(default)s)")
    parser.add_argument("--tmp", default=None, help="where to make the temporary directory")
    args = parser.parse_args(argv)
    reason = sshd_missing()
    if reason:
        print("bench_rsync_cold: %s" % reason, file=sys.stderr)
        return 2
    p = QUICK if args.quick else FULL
    reps = dict.fromkeys(SCENARIOS, 1) if args.quick else REPS
    tmp = Path(tempfile.mkdtemp(prefix="bench_rsync_cold-", dir=args.tmp))
    status = 0
    env = dict(os.environ)
    src_dir = str(Path(execpool.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src_dir + os.pathsep + env.get("PYTHONPATH", "")
    # as installed by pip: bytecode compiled once and cached (kept out of the source tree);
    # PYTHONDONTWRITEBYTECODE=1 would make every cold run compile execpool again (~50 ms)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    try:
        src = tmp / "src"
        files, big = build_tree(src, p)
        srcs = str(src)
        print("bench_rsync_cold  %s  (execpool %s)" % (time.strftime("%Y-%m-%dT%H:%M:%S"), src_dir))
        print("load   : %s" % " ".join("%.2f" % x for x in os.getloadavg()))
        print("tree   : %d files, %.1f MB" % (len(files), sum((src / f).stat().st_size for f in files) / 1e6))
        with running_sshd(tmp / "sshd") as sshd:
            cfg = str(sshd.server.ssh_config)
            host = "host-a"
            spec = sshd.server.spec(host, "//python=%s//sshbackend=openssh" % args.python)
            dests = {
                "cold": str(tmp / "dst-cold"),
                "warm": str(tmp / "dst-warm"),
                "rsync": str(tmp / "dst-rsync"),
            }
            cold_argv = [sys.executable, "-m", "execpool", "rsync", srcs, "%s:%s" % (spec, dests["cold"])]
            rsync_argv = [RSYNC, "-a", "-e", "ssh -F %s" % cfg, srcs + "/", "%s:%s/" % (host, dests["rsync"])]
            print("cold   : %s" % " ".join(cold_argv))
            print("rsync  : %s" % " ".join(rsync_argv))
            gws = Gateways("warm", execpool, spec)
            gw = gws.make_ready()
            timed([*cold_argv[:-1], "%s:%s" % (spec, tmp / "warm-up")], env)  # untimed: writes the bytecode
            try:
                times: dict[str, dict[str, list[float]]] = {}
                sent: dict[str, int] = {}
                rng = random.Random(3)
                pick = random.Random(4)
                changed: list[str] = []

                def run_one(name: str, key: str) -> float:
                    if name == "cold":
                        return timed(cold_argv, env)
                    if name == "rsync":
                        return timed(rsync_argv)
                    t0 = time.perf_counter()
                    rs = execpool.RSync(srcs, verbose=False)
                    rs.add_target(gw, dests["warm"])
                    rs.send()
                    t = time.perf_counter() - t0
                    sent[key] = rs.stats[gw.id].get("literal", 0)
                    return t

                for key in SCENARIOS:
                    times[key] = {n: [] for n in dests}

                    def change(rep: int, key: str = key) -> None:
                        changed.clear()
                        if key == "delta":
                            change_big(src / big, rng)
                            changed.append(big)

                    def run(name: str, rep: int, key: str = key) -> None:
                        nonlocal status
                        if key == "initial":
                            shutil.rmtree(dests[name], ignore_errors=True)
                        os.sync()
                        t = run_one(name, key)
                        check = sorted(set(pick.sample(files, min(25, len(files))) + changed + [big]))
                        err, _ = verify(srcs, dests[name], check)
                        if err is not None:
                            print("  %s %s rep %d: VERIFICATION FAILED: %s" % (key, name, rep, err))
                            status = 1
                            return
                        times[key][name].append(t)

                    alternate(list(dests), reps[key], run, before_rep=change)

                # fixed costs of a cold run
                fixed = {
                    "python -c pass": [sys.executable, "-c", "pass"],
                    "python -c 'import execpool'": [sys.executable, "-c", "import execpool"],
                    "ssh host-a true": ["ssh", "-F", cfg, host, "true"],
                    "python -m execpool: gateway start+exit": [
                        sys.executable,
                        "-c",
                        "import execpool; execpool.makegateway(%r).exit()" % spec,
                    ],
                }
                fixed_t = {k: statistics.median(timed(a, env) for _ in range(5)) for k, a in fixed.items()}
            finally:
                gws.exit_all()
        print()
        print(
            "%-10s %5s | %9s %9s %9s | %8s %8s" % ("scenario", "reps", "rsync ms", "cold ms", "warm ms", "cold", "warm")
        )
        print("-" * 72)
        for key in SCENARIOS:
            med = {n: statistics.median(v) if v else float("nan") for n, v in times[key].items()}
            print(
                "%-10s %5d | %9.0f %9.0f %9.0f | %7.2fx %7.2fx"
                % (
                    key,
                    reps[key],
                    med["rsync"] * 1000,
                    med["cold"] * 1000,
                    med["warm"] * 1000,
                    med["cold"] / med["rsync"],
                    med["warm"] / med["rsync"],
                )
            )
        print("-" * 72)
        print("ratio = median time / median time of rsync -a -e ssh; cold: a fresh `python -m execpool rsync`")
        print("per sync; warm: RSync.send() on a gateway already up.  delta: warm sent %s bytes" % sent.get("delta"))
        print()
        print("fixed costs (median of 5):")
        for k, t in fixed_t.items():
            print("  %-42s %7.0f ms" % (k, t * 1000))
        print("load   : %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
