#!/usr/bin/env python
"""RSync benchmark: execpool.RSync against execnet.RSync and the rsync binary, in one run.

Builds a source tree in a temporary directory (about 2,000 files and 100 MB of
mixed sizes: many small text files, some medium ones, a few large ones, plus
one 50 MB file), then syncs it with every variant, each to its own
destination, in four scenarios:

  initial     empty destination
  no-change   the same tree again
  touched     10 % of the files changed in place (sizes kept)
  delta       the 50 MB file with 1 % of its bytes changed, in 5 contiguous
              regions: time and bytes sent

Local variants: execpool.RSync and execnet.RSync on ``popen`` gateways
(started once, untimed), and ``rsync -a`` (each run a new process, as a user
runs it).  Over ssh (the tests' sshd, ``tests/sshd.py``, alias host-a), if it
can run here: execpool with the OpenSSH backend (on a gateway started once,
and a second time with the gateway's start-up and exit inside the timing),
execnet, and ``rsync -a -e "ssh -F CONFIG"``.  Variants are alternated per
repetition (the order rotates) so that noise on a shared machine hits all
alike.  After every sync the destination is compared with the source (the
file list with every size, and the content of a sample of files plus every
file changed for the scenario); a sync that does not verify reports no time.

Run from the repository root::

    python benchmarks/bench_rsync.py            # full run, about 2.5-3 minutes
    python benchmarks/bench_rsync.py --quick    # smoke test (smaller tree, 1 rep), about 20-30 s
    python benchmarks/bench_rsync.py --no-ssh   # local variants only

Needs execnet (``pip install -e '.[bench]'``) and /usr/bin/rsync; the ssh part
needs /usr/sbin/sshd and root (skipped with a note otherwise).
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _harness import (
    Column,
    Gateways,
    MiB,
    Scenario,
    SshdRun,
    Target,
    alternate,
    bench_parser,
    default_remote_python,
    execpool_description,
    grouped_table,
    import_execpool,
    leftover_children,
    print_footer,
    print_header,
    results_row,
    running_sshd,
    source_revision,
    sshd_missing,
)

HERE = Path(__file__).resolve().parent

execpool = import_execpool()

try:
    import execnet
except ImportError:
    print(
        "bench_rsync: execnet is not installed; it is one of the references this benchmark compares against.\n"
        "Install the benchmark extra:  pip install -e '.[bench]'",
        file=sys.stderr,
    )
    sys.exit(2)

RSYNC = shutil.which("rsync", path="/usr/bin:" + os.environ.get("PATH", "")) or "/usr/bin/rsync"
MB = 1000 * 1000
SCENARIOS = ("initial", "nochange", "touched", "delta")
TITLES = {
    "initial": "initial sync (empty destination)",
    "nochange": "no-change re-sync",
    "touched": "10% of files touched (sizes kept)",
    "delta": "big file, 1% changed in 5 regions",
}

FULL = {
    "small": 1805,  # text, 0.2-12 KB
    "medium": 190,  # text, 50-430 KB
    "large": 5,  # random bytes, 6-12 MB
    "big_mb": 50,
    "reps": {"initial": 5, "nochange": 5, "touched": 4, "delta": 4},
    "ssh_reps": {"initial": 2, "nochange": 3, "touched": 3, "delta": 3},
}
QUICK = {
    "small": 360,
    "medium": 38,
    "large": 2,
    "big_mb": 10,
    "reps": dict.fromkeys(SCENARIOS, 1),
    "ssh_reps": dict.fromkeys(SCENARIOS, 1),
}


# -- the source tree ---------------------------------------------------------------------------


def text_pool(rng: random.Random, size: int) -> bytes:
    """Text-like bytes: lines of words, about ``size`` bytes."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(2000)]
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, k=rng.randint(3, 14))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def build_tree(root: Path, p: dict[str, Any], seed: int = 1) -> tuple[list[str], str]:
    """Write the source tree; return its file paths (relative, '/'-separated) and the big file's."""
    rng = random.Random(seed)
    pool = text_pool(rng, 2 * MiB)
    dirs = ["d%02d/s%d" % (i, j) for i in range(20) for j in range(5)]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def write(rel: str, data: bytes) -> None:
        with open(root / rel, "wb") as f:
            f.write(data)
        files.append(rel)

    for i in range(p["small"]):
        size = rng.randint(200, 12000)
        off = rng.randrange(len(pool) - size)
        write("%s/f%04d.txt" % (dirs[i % len(dirs)], i), pool[off : off + size])
    for i in range(p["medium"]):
        size = rng.randint(50_000, 430_000)
        off = rng.randrange(len(pool) - size)
        write("%s/m%03d.dat" % (dirs[(7 * i) % len(dirs)], i), pool[off : off + size])
    for i in range(p["large"]):
        write("d%02d/large%d.bin" % (i, i), rng.randbytes(rng.randint(6 * MB, 12 * MB)))
    big = "big.bin"
    write(big, rng.randbytes(p["big_mb"] * MB))
    return files, big


def touch_files(root: Path, files: list[str], big: str, rng: random.Random, fraction: float = 0.1) -> list[str]:
    """Change ``fraction`` of the files (not the big one) in place, sizes kept; return them."""
    chosen = rng.sample([f for f in files if f != big], int(len(files) * fraction))
    for rel in chosen:
        path = root / rel
        size = path.stat().st_size
        n = min(size, 4096)
        off = rng.randrange(size - n + 1)
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(rng.randbytes(n))
    return chosen


def change_big(path: Path, rng: random.Random, fraction: float = 0.01, regions: int = 5) -> int:
    """Overwrite ``fraction`` of the file in ``regions`` evenly spread contiguous regions; return bytes changed."""
    size = path.stat().st_size
    region = int(size * fraction / regions)
    with open(path, "r+b") as f:
        for i in range(regions):
            f.seek((2 * i + 1) * size // (2 * regions) - region // 2 + rng.randrange(-region, region))
            f.write(rng.randbytes(region))
    return region * regions


# -- verification ------------------------------------------------------------------------------


def listing(root: str) -> tuple[dict[str, int], set[str]]:
    """Regular files (relative path -> size) and directories under ``root``."""
    files: dict[str, int] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        for d in dirnames:
            dirs.add(prefix + d)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files[prefix + name] = st.st_size if not os.path.islink(os.path.join(dirpath, name)) else -1
    return files, dirs


def same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(MiB)
            if x != fb.read(MiB):
                return False
            if not x:
                return True


def verify(src: str, dest: str, check: list[str]) -> tuple[str | None, int]:
    """None if ``dest`` holds the source's files (every path and size; the content of ``check``),
    else what differs; plus the number of files compared by content."""
    sfiles, sdirs = listing(src)
    dfiles, ddirs = listing(dest)
    if sfiles.keys() != dfiles.keys():
        missing = sorted(sfiles.keys() - dfiles.keys())
        extra = sorted(dfiles.keys() - sfiles.keys())
        return "file lists differ: %d missing %s, %d extra %s" % (len(missing), missing[:3], len(extra), extra[:3]), 0
    if sdirs != ddirs:
        return "directory lists differ: %s" % sorted(sdirs ^ ddirs)[:3], 0
    sizes = [rel for rel in sfiles if sfiles[rel] != dfiles[rel]]
    if sizes:
        return "%d files of another size, e.g. %s" % (len(sizes), sizes[:3]), 0
    for rel in check:
        if not same_content(os.path.join(src, rel), os.path.join(dest, rel)):
            return "content differs: %s" % rel, 0
    return None, len(check)


# -- the variants ------------------------------------------------------------------------------


class SyncResult:
    def __init__(self, seconds: float, sent: int, info: dict[str, Any] | None = None, problems: Any = None):
        self.seconds = seconds
        self.sent = sent
        self.info = info or {}
        self.problems = problems


class Variant:
    """One way of syncing the source to its own destination."""

    kind = ""

    def __init__(self, name: str, dest: str, scenarios: tuple[str, ...] = SCENARIOS) -> None:
        self.name = name
        self.dest = dest  # a local path: the ssh "host" is this machine too
        self.scenarios = scenarios
        self.startup: float | None = None  # seconds to start its gateway (untimed)

    def setup(self) -> None:
        pass

    def sync(self, src: str) -> SyncResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ExecpoolVariant(Variant):
    kind = "execpool"

    def __init__(self, name: str, dest: str, spec: str, fresh: bool = False) -> None:
        super().__init__(name, dest)
        self.spec = spec
        self.fresh = fresh  # True: each sync starts and exits its own gateway, inside the timing
        self.gateways = Gateways(name, execpool, spec)
        self.gw: Any = None

    def setup(self) -> None:
        if not self.fresh:
            t0 = time.perf_counter()
            self.gw = self.gateways.make_ready()
            self.startup = time.perf_counter() - t0

    def sync(self, src: str) -> SyncResult:
        t0 = time.perf_counter()
        gw = self.gateways.make() if self.fresh else self.gw
        try:
            rs = execpool.RSync(src, verbose=False)
            rs.add_target(gw, self.dest)
            rs.send()
        finally:
            if self.fresh:
                self.gateways.exit(gw)
        t = time.perf_counter() - t0
        stats = dict(rs.stats.get(gw.id, {}))
        # after the block-level delta: "literal" = bytes sent as new data, "copied" = reused at the target
        sent = stats.get("literal", stats.get("bytes", 0))
        return SyncResult(t, sent, stats, list(rs.problems))

    def close(self) -> None:
        self.gateways.exit_all()


class CountingRSync(execnet.RSync):
    """execnet.RSync that adds up the size of the files it really sends (whole files)."""

    sent = 0
    files = 0

    def _report_send_file(self, gateway: Any, modified_rel_path: str) -> None:
        self.sent += self._paths.get(modified_rel_path, 0)
        self.files += 1
        super()._report_send_file(gateway, modified_rel_path)


class ExecnetVariant(Variant):
    kind = "execnet"

    def __init__(self, name: str, dest: str, spec: str) -> None:
        super().__init__(name, dest)
        self.gateways = Gateways(name, execnet, spec)
        self.gw: Any = None

    def setup(self) -> None:
        t0 = time.perf_counter()
        self.gw = self.gateways.make_ready()
        self.startup = time.perf_counter() - t0

    def sync(self, src: str) -> SyncResult:
        t0 = time.perf_counter()
        rs = CountingRSync(src, verbose=False)  # one send() per instance
        rs.add_target(self.gw, self.dest)
        rs.send()
        t = time.perf_counter() - t0
        return SyncResult(t, rs.sent, {"files": rs.files})

    def close(self) -> None:
        self.gw = None
        self.gateways.exit_all()  # as execnet's Group.terminate(): exit, join, wait for the process


RSYNC_STATS = {
    "files": r"Number of regular files transferred: ([\d,]+)",
    "literal": r"Literal data: ([\d,]+)",
    "matched": r"Matched data: ([\d,]+)",
    "total_sent": r"Total bytes sent: ([\d,]+)",
}


class RsyncVariant(Variant):
    kind = "rsync"

    def __init__(
        self,
        name: str,
        dest: str,
        extra: tuple[str, ...] = (),
        host: str = "",
        rsh: str = "",
        scenarios: tuple[str, ...] = SCENARIOS,
    ) -> None:
        super().__init__(name, dest, scenarios)
        self.extra = extra
        self.host = host
        self.rsh = rsh

    def argv(self, src: str) -> list[str]:
        argv = [RSYNC, "-a", "--stats", *self.extra]
        if self.rsh:
            argv += ["-e", self.rsh]
        return [*argv, src.rstrip("/") + "/", (self.host + ":" if self.host else "") + self.dest + "/"]

    def sync(self, src: str) -> SyncResult:
        argv = self.argv(src)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        t = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError("rsync exited with %d: %s" % (proc.returncode, proc.stderr.strip()[-500:]))
        info = {}
        for key, pattern in RSYNC_STATS.items():
            m = re.search(pattern, proc.stdout)
            if m:
                info[key] = int(m.group(1).replace(",", ""))
        return SyncResult(t, info.get("literal", 0), info)


# -- running the scenarios --------------------------------------------------------------------


class Outcome:
    """What one variant did in one scenario: verified runs, failed runs."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.sent: list[int] = []
        self.failures: list[str] = []
        self.last_info: dict[str, Any] = {}
        self.compared = 0  # files compared by content over all runs


def run_scenarios(
    src: Path,
    files: list[str],
    big: str,
    variants: list[Variant],
    reps: dict[str, int],
    seed: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, Outcome]]:
    rng = random.Random(seed)  # the changes
    pick = random.Random(seed + 1)  # the verification samples
    results: dict[str, dict[str, Outcome]] = {}
    srcs = str(src)
    present: set[str] = set()  # variants whose destination is in sync with the source
    changed: list[str] = []  # the files the current repetition changed
    for key in SCENARIOS:
        taking = [v for v in variants if key in v.scenarios]
        results[key] = {v.name: Outcome() for v in taking}
        t_scen = time.perf_counter()
        for v in taking:  # a variant joining late starts from an up-to-date copy (untimed)
            if key != "initial" and v.name not in present:
                subprocess.run([RSYNC, "-a", srcs + "/", v.dest + "/"], check=True)
                present.add(v.name)

        def change(rep: int, key: str = key) -> None:
            """The repetition's change, made once and synced by every variant (untimed)."""
            changed.clear()
            if key == "touched":
                changed.extend(touch_files(src, files, big, rng))
            elif key == "delta":
                change_big(src / big, rng)
                changed.append(big)

        def run(v: Variant, rep: int, key: str = key) -> None:
            out = results[key][v.name]
            if key == "initial":
                shutil.rmtree(v.dest, ignore_errors=True)
            os.sync()  # the previous run's writes are not this run's cost
            try:
                res = v.sync(srcs)
            except Exception as exc:
                out.failures.append("rep %d: %s: %s" % (rep, type(exc).__name__, exc))
                return
            present.add(v.name)
            check = sorted(set(pick.sample(files, min(25, len(files))) + changed))
            if key == "initial" and big not in check:
                check.append(big)
            err, n = verify(srcs, v.dest, check)
            if err is None and res.problems:
                err = "RSync reported problems: %s" % res.problems[:3]
            if err is not None:
                out.failures.append("rep %d: %s" % (rep, err))
                return
            out.times.append(res.seconds)
            out.sent.append(res.sent)
            out.last_info = res.info
            out.compared += n

        alternate(taking, reps[key], run, before_rep=change)
        parts = []
        for v in taking:
            out = results[key][v.name]
            ok = len(out.times)
            parts.append("%s %d/%d" % (v.name, ok, reps[key]))
        bad = [v.name for v in taking if results[key][v.name].failures]
        log(
            "  %-36s %s (%s; every file list and size, and %s files by content)  [%.1f s]"
            % (
                TITLES[key],
                "verified" if not bad else "VERIFICATION FAILED for " + ", ".join(bad),
                ", ".join(parts),
                "/".join(str(results[key][v.name].compared) for v in taking),
                time.perf_counter() - t_scen,
            )
        )
    return results


# -- reporting ---------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    if n >= MB:
        return "%.1f MB" % (n / MB)
    if n >= 1000:
        return "%.0f kB" % (n / 1000)
    return "%d B" % n


def scenarios_of(
    results: dict[str, dict[str, Outcome]],
    variants: list[Variant],
    reference: str,
    time_targets: list[str],
    bytes_target: str,
    big_size: int,
    labels: dict[str, str],
) -> list[Scenario]:
    """The table's scenarios: verified sync times (a variant with a failed run has none), the bytes
    sent; time targets (<= 1.0x the reference) on the initial and no-change syncs, the bytes target
    (< 5 % of the big file sent) on the delta."""
    scenarios = []
    for key in SCENARIOS:
        res = results.get(key)
        if not res:
            continue
        names = [v.name for v in variants if v.name in res]
        failed = {n for n in names if res[n].failures or not res[n].times}
        sent: dict[str, str] = {}
        for n in set(names) - failed:
            med = statistics.median(res[n].sent)
            sent[n] = fmt_bytes(med) + (" (%.1f%%)" % (100.0 * med / big_size) if key == "delta" else "")
        sc = Scenario(
            TITLES[key],
            {n: [] if n in failed else res[n].times for n in names},
            reference,
            scale=1000,
            labels=labels,
            failed=failed,
            extra={"sent (median)": sent},
        )
        if key in ("initial", "nochange"):
            sc.targets = {n: Target("<=", 1.0) for n in time_targets if n in res}
        elif key == "delta" and bytes_target in res and bytes_target not in failed:
            ok = statistics.median(res[bytes_target].sent) < 0.05 * big_size
            sc.other_targets[bytes_target] = ("sent < 5%", "yes" if ok else "NO")
        scenarios.append(sc)
    return scenarios


def print_table(scenarios: list[Scenario], results: dict[str, dict[str, Outcome]]) -> list[str]:
    """Print the table; return the verdicts ("scenario variant: yes/NO ...") for the summary."""
    key_of = {TITLES[k]: k for k in SCENARIOS}

    def failed_line(sc: Scenario, name: str) -> str:
        out = results[key_of[sc.title]][name]
        reps = len(out.times) + len(out.failures)
        return "%-36s %4d | FAILED verification or sync (%d of %d runs): no time reported" % (
            "  " + sc.label(name),
            reps,
            len(out.failures),
            reps,
        )

    grouped_table(
        scenarios, 36, "time, ms", extra=[Column("sent (median)", 18, left=True)], failed_line=failed_line
    ).print(
        "ratio = time / the reference's time; best = min, median over the reps; 'met' is judged on the median\n"
        "ratio.  sent: execpool stats 'literal' if present, else 'bytes'; rsync --stats 'Literal data';\n"
        "execnet: the size of the files it sent (always whole files)."
    )
    verdicts = []
    for sc in scenarios:
        for name in sc.values:
            if name in sc.failed:
                out = results[key_of[sc.title]][name]
                first = out.failures[0] if out.failures else "no run"
                verdicts.append("%s / %s: FAILED (%s)" % (sc.title, name, first))
                continue
            target, met = sc.target_cells(name)
            if target:
                verdicts.append("%s / %s: %s %s" % (sc.title, name, target, met))
    return verdicts


def print_notes(
    results: dict[str, dict[str, Outcome]], variants: list[Variant], labels: dict[str, str], remark: str
) -> None:
    """The notes under a table: each variant's stats of its last runs, its gateway's start-up, ``remark``."""
    notes = []
    for v in variants:
        if v.kind == "execnet":
            continue
        parts = []
        for key in SCENARIOS:
            out = results.get(key, {}).get(v.name)
            if out is None or not out.last_info:
                continue
            parts.append("%s %s" % (key, " ".join("%s=%s" % kv for kv in sorted(out.last_info.items()))))
        if parts:
            notes.append("%s stats of the last run: %s" % (labels.get(v.name, v.name), "; ".join(parts)))
    for v in variants:
        if v.startup is not None:
            notes.append("%s: gateway start-up (untimed) %.0f ms" % (labels[v.name], v.startup * 1000))
    for n in [*notes, remark]:
        print("  " + n)


# -- processes ---------------------------------------------------------------------------------


def code_fingerprint() -> str:
    """A hash of execpool's RSync sources as they are on disk now (every ``*rsync*.py`` of the package,
    wherever it lives: the receiver moves with the worker-side folder): RSync.send() ships the receiver's
    file text at every call, so an edit during the run would mix versions."""
    import hashlib

    h = hashlib.sha256()
    here = Path(execpool.__file__).parent
    for path in sorted(here.rglob("*rsync*.py")):
        try:
            h.update(path.relative_to(here).as_posix().encode() + b"\0" + path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "smaller tree, 1 repetition: a smoke test")
    parser.add_argument("--no-ssh", action="store_true", help="local variants only")
    parser.add_argument(
        "--python",
        default=default_remote_python(),
        help="the remote interpreter of the ssh gateways (default: %(default)s)",
    )
    parser.add_argument("--tmp", default=None, help="where to make the temporary directory (default: the system's)")
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL

    if not os.access(RSYNC, os.X_OK):
        print(
            "bench_rsync: no rsync binary (%s); it is one of the references.  Debian: apt-get install rsync" % RSYNC,
            file=sys.stderr,
        )
        return 2

    t_start = time.perf_counter()
    ep_dir = os.path.dirname(execpool.__file__)
    fingerprint = code_fingerprint()
    rsync_version = subprocess.run([RSYNC, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print_header(
        "bench_rsync",
        [
            ("execpool", execpool_description(ep_dir, "; rsync sources %s" % fingerprint)),
            ("execnet", "%s (%s)" % (execnet.__version__, os.path.dirname(execnet.__file__))),
            ("rsync", "%s (%s)" % (rsync_version.strip(), RSYNC)),
        ],
        quick=args.quick,
    )

    tmp = tempfile.mkdtemp(prefix="bench_rsync-", dir=args.tmp)
    status = 0
    verdicts: list[str] = []
    local: list[Variant] = []
    sshv: list[Variant] = []
    scenarios: list[Scenario] = []
    stack = ExitStack()  # the test sshd, if it runs
    sshd: SshdRun | None = None
    try:
        src = Path(tmp) / "src"
        t0 = time.perf_counter()
        files, big = build_tree(src, p)
        total = sum((src / f).stat().st_size for f in files)
        big_size = (src / big).stat().st_size
        print(
            "tree   : %d files in %d directories, %.1f MB (%.1f MB without the big file; %d small text 0.2-12 kB, "
            "%d medium 50-430 kB, %d large 6-12 MB random, big.bin %.0f MB random); built in %.1f s"
            % (
                len(files),
                len(listing(str(src))[1]),
                total / MB,
                (total - big_size) / MB,
                p["small"],
                p["medium"],
                p["large"],
                big_size / MB,
                time.perf_counter() - t0,
            )
        )
        print("tmp    : %s (%s)" % (tmp, "same filesystem for source and every destination"))
        print(flush=True)

        # -- local -------------------------------------------------------------------------
        local = [
            ExecpoolVariant("execpool", str(Path(tmp) / "dst-execpool"), "popen"),
            ExecnetVariant("execnet", str(Path(tmp) / "dst-execnet"), "popen"),
            RsyncVariant("rsync", str(Path(tmp) / "dst-rsync")),
            RsyncVariant(
                "rsync-nowhole", str(Path(tmp) / "dst-rsync-nw"), extra=("--no-whole-file",), scenarios=("delta",)
            ),
        ]
        labels = {
            "rsync": "rsync -a",
            "rsync-nowhole": "rsync -a --no-whole-file",
            "execpool": "execpool.RSync (popen)",
            "execnet": "execnet.RSync (popen)",
        }
        print("== local (popen gateways started once, untimed; rsync -a: a new process per sync) ==")
        for v in local:
            v.setup()
        results = run_scenarios(src, files, big, local, p["reps"], 7, print)
        print()
        scs = scenarios_of(results, local, "rsync", ["execpool"], "execpool", big_size, labels)
        verdicts += ["local: " + x for x in print_table(scs, results)]
        scenarios += scs
        print_notes(
            results,
            local,
            labels,
            "rsync copies whole files between local paths by default (-W); 'rsync -a --no-whole-file' shows its "
            "delta algorithm on the same machine (delta scenario only)",
        )
        print(flush=True)
        if any(out.failures for res in results.values() for out in res.values()):
            status = 1
        for v in local:
            v.close()

        # -- ssh ---------------------------------------------------------------------------
        reason = "--no-ssh given" if args.no_ssh else sshd_missing()
        if reason:
            print("== over ssh: skipped (%s) ==" % reason)
        else:
            sshd = stack.enter_context(running_sshd(Path(tmp) / "sshd"))
            server = sshd.server
            host = "host-a"
            cfg = server.ssh_config
            ep_spec = server.spec(host, "//python=%s//sshbackend=openssh" % args.python)
            en_spec = "ssh=%s//ssh_config=%s//python=%s" % (host, cfg, args.python)
            rsync_ssh = RsyncVariant("rsync/ssh", str(Path(tmp) / "ssh-rsync"), host=host, rsh="ssh -F %s" % cfg)
            sshv = [
                ExecpoolVariant("execpool/openssh", str(Path(tmp) / "ssh-execpool"), ep_spec),
                ExecpoolVariant("execpool/openssh+start", str(Path(tmp) / "ssh-execpool-fresh"), ep_spec, fresh=True),
                ExecnetVariant("execnet/ssh", str(Path(tmp) / "ssh-execnet"), en_spec),
                rsync_ssh,
            ]
            labels = {
                "execpool/openssh": "execpool/openssh (gateway up)",
                "execpool/openssh+start": "execpool/openssh + start-up, exit",
                "execnet/ssh": "execnet (ssh -C, gateway up)",
                "rsync/ssh": "rsync -a -e ssh",
            }
            print("== over ssh: %s, same machine; remote python %s ==" % (sshd.describe(host), args.python))
            print("spec   : execpool %s" % ep_spec)
            print("spec   : execnet  %s" % en_spec)
            print("rsync  : %s" % shlex.join(rsync_ssh.argv(str(src))))
            for v in sshv:
                v.setup()
            results = run_scenarios(src, files, big, sshv, p["ssh_reps"], 11, print)
            print()
            scs = scenarios_of(
                results,
                sshv,
                "rsync/ssh",
                ["execpool/openssh", "execpool/openssh+start"],
                "execpool/openssh",
                big_size,
                labels,
            )
            verdicts += ["ssh: " + x for x in print_table(scs, results)]
            scenarios += scs
            print_notes(
                results,
                sshv,
                labels,
                "rsync over ssh: each run is a new ssh connection (key exchange, the remote shell's ~/.bashrc) "
                "and uses its delta algorithm; compare with 'execpool/openssh + start-up, exit'",
            )
            if any(out.failures for res in results.values() for out in res.values()):
                status = 1
    finally:
        for v in local + sshv:
            try:
                v.close()
            except Exception as exc:  # pragma: no cover - best effort
                print("warning: closing %s failed: %r" % (v.name, exc), file=sys.stderr)
        # sessions (sshd children, their shells, workers, remote rsyncs) outlive the listener:
        # running_sshd checks that none is left and ends any that is, before it stops sshd
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    summary: list[str] = []
    if code_fingerprint() != fingerprint:
        summary.append(
            "WARNING: execpool's rsync sources changed on disk during the run (%s -> %s, git %s): the master\n"
            "  kept the code it imported while each send() shipped the receiver's current text; the figures may\n"
            "  mix versions.  Run again." % (fingerprint, code_fingerprint(), source_revision(ep_dir))
        )
        status = 1
    summary += verdicts
    notes = ["RESULTS.md row: %s" % results_row("quick" if args.quick else "full", source_revision(ep_dir), scenarios)]
    left = print_footer(
        notes,
        {
            "local child processes": leftover_children(),
            "sshd sessions or workers": sshd.left if sshd is not None else None,
        },
        t_start,
        summary=summary,
    )
    return 1 if status or left else 0


if __name__ == "__main__":
    sys.exit(main())
