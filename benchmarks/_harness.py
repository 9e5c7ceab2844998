"""The benchmark harness: everything the ``bench_*.py`` scripts share, so that each keeps only its workloads.

It owns, in this order:

* **the command line**: :func:`bench_parser` (description, ``--quick``, ``--only``) and
  :func:`import_execpool` (installed, or the source tree);
* **timing**: the alternated repetitions (:func:`alternate`: every variant once per repetition, in an
  order that rotates, ``gc.collect()`` before each run, an optional untimed warm-up round, failures
  recorded and the variant dropped), and the statistics (:func:`figure`: best = min time or max rate,
  and the median);
* **the side-by-side ratio table**: :class:`Scenario` (one workload's figures per variant, its
  reference and target), :class:`Target` (a ratio bound and whether it is met, on the median ratio,
  saying so when the best ratio disagrees), :class:`Table` (fixed-width columns in groups), and the two
  layouts built from them: :func:`pair_table` (one row per scenario, two libraries side by side) and
  :func:`grouped_table` (a block per scenario, a row per variant, ratios to the reference row);
* **the RESULTS.md formatting**: :func:`results_row` (the "all runs at a glance" row of median ratios),
  and with ``--markdown`` (:data:`OUTPUT`) the header as a "When, where, what" list and every table
  again as Markdown (:meth:`Table.markdown`);
* **the header and footer**: :func:`print_header` (script, date, machine, master interpreter, execpool
  checkout, load, mode) and :func:`print_footer` (notes, left-over processes, load, total time);
* **process checks**: :func:`descendants`, :func:`wait_gone`, :func:`leftover_children`,
  :func:`end_sessions` and :func:`running_sshd` (the tests' OpenSSH server, stopped with no session left);
* **the shared channel workloads** of bench_lowlevel and bench_ssh (echo / acknowledge loops, latency,
  one-way bulk) and :class:`Gateways`, which ends execpool and execnet gateways at the same point.

Only the standard library is imported at the top: bench_pool's spawned workers re-import the scripts'
modules.  The scripts run from the repository root with this directory on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

T = TypeVar("T", bound=Hashable)
R = TypeVar("R")

MiB = 1024 * 1024
RECEIVE_TIMEOUT = 120.0
EXIT_TIMEOUT = 10.0
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# -- command line and imports -------------------------------------------------------------------


@dataclass
class Output:
    """How this run reports, beyond the text tables (set from the command line by :class:`BenchParser`)."""

    markdown: bool = False  # also print the header and every table as Markdown, for RESULTS.md


OUTPUT = Output()


class BenchParser(argparse.ArgumentParser):
    """An ArgumentParser with ``--markdown``, whose parse_args() sets :data:`OUTPUT`."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        OUTPUT.markdown = bool(parsed.markdown)
        return parsed


def bench_parser(doc: str, quick_help: str = "", only: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser a script starts from: its docstring's first paragraph as the description, ``--quick``
    (if ``quick_help``), ``--only`` (if ``only`` names the scenarios; see :func:`chosen`) and ``--markdown``."""
    parser = BenchParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print the header and the tables as Markdown (for RESULTS.md)",
    )
    if quick_help:
        parser.add_argument("--quick", action="store_true", help=quick_help)
    if only:
        parser.add_argument("--only", default=",".join(only), help="comma-separated subset of: %s" % ",".join(only))
    return parser


def chosen(parser: argparse.ArgumentParser, text: str, only: Sequence[str], what: str = "scenario") -> set[str]:
    """The scenarios named in ``--only`` (a parser error for an unknown one)."""
    picked = {s.strip() for s in text.split(",") if s.strip()}
    unknown = picked - set(only)
    if unknown:
        parser.error("unknown %s(s): %s" % (what, ", ".join(sorted(unknown))))
    return picked


def import_execpool() -> Any:
    """The execpool under test: the installed one, or else the source tree next to this directory."""
    try:
        import execpool
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        import execpool
    return execpool


# -- timing ------------------------------------------------------------------------------------


def rotate(items: Sequence[T], rep: int) -> list[T]:
    """The order of the variants in repetition ``rep``: each takes every position in turn."""
    items = list(items)
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


def alternate(
    variants: Sequence[T],
    reps: int,
    run: Callable[[T, int], R],
    *,
    warmup: bool = False,
    on_error: Callable[[T, int, Exception], None] | None = None,
    before_rep: Callable[[int], None] | None = None,
) -> dict[T, list[R]]:
    """Run every variant once per repetition, ``reps`` times, in a rotating order (A B C, B C A, ...),
    with ``gc.collect()`` before each run, so that noise on a shared machine falls on all alike.

    ``run(variant, rep)`` does one timed run and returns its figure(s); with ``warmup`` one untimed
    round (``rep`` = -1, results dropped) comes first.  ``before_rep(rep)`` prepares a repetition
    (untimed, once for all variants).  Without ``on_error`` an exception ends the whole loop; with it,
    ``on_error(variant, rep, exc)`` is told and the variant is left out of the later repetitions.
    Returns variant -> the figures of its runs, in order."""
    out: dict[T, list[R]] = {v: [] for v in variants}
    broken: set[T] = set()
    for rep in range(-1 if warmup else 0, reps):
        if before_rep is not None and rep >= 0:
            before_rep(rep)
        for v in rotate(variants, max(rep, 0)):
            if v in broken:
                continue
            gc.collect()
            try:
                value = run(v, rep)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(v, rep, exc)
                broken.add(v)
                continue
            if rep >= 0:
                out[v].append(value)
    return out


@dataclass(frozen=True)
class Figure:
    """One variant's figure over the repetitions."""

    best: float  # min time or max rate
    median: float
    reps: int


def figure(values: Sequence[float], lower_better: bool = True, scale: float = 1.0) -> Figure | None:
    """Best (min for times, max for rates) and median of ``values`` x ``scale``; None if there are none."""
    if not values:
        return None
    scaled = [v * scale for v in values]
    return Figure(min(scaled) if lower_better else max(scaled), statistics.median(scaled), len(scaled))


def medians_ms(phases: dict[str, list[float]], keys: Sequence[str]) -> tuple[float, ...]:
    """The median of each phase (seconds), in ms."""
    return tuple(1000 * statistics.median(phases[k]) for k in keys)


def fmt(v: float) -> str:
    """A figure with about four significant digits, for the tables."""
    if v >= 1000:
        return "%.0f" % v
    if v >= 100:
        return "%.1f" % v
    if v >= 10:
        return "%.2f" % v
    return "%.3f" % v


# -- targets and scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``op`` is "<=", "<" or ">="."""

    op: str
    limit: float

    def ok(self, ratio: float) -> bool:
        if self.op == "<=":
            return ratio <= self.limit
        if self.op == "<":
            return ratio < self.limit
        return ratio >= self.limit

    def text(self) -> str:
        return "%s %gx" % (self.op, self.limit)

    def met_text(self, median_ratio: float, best_ratio: float) -> str:
        """'yes' / 'NO', judged on the median ratio, plus '(best: ...)' when the best ratio disagrees."""
        met = "yes" if self.ok(median_ratio) else "NO"
        if self.ok(median_ratio) != self.ok(best_ratio):
            met += " (best: %s)" % ("yes" if self.ok(best_ratio) else "no")
        return met


@dataclass
class Scenario:
    """One workload's figures: variant name -> raw values (seconds, or rates), shown x ``scale``;
    ratios are variant / ``reference``; ``targets``: variant judged -> its bound on that ratio;
    ``other_targets``: variant -> (target text, met text) judged by the script on something else."""

    title: str
    values: dict[str, list[float]]
    reference: str = ""
    targets: dict[str, Target] = field(default_factory=dict)
    unit: str = ""
    scale: float = 1.0
    lower_better: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # column -> variant -> text
    other_targets: dict[str, tuple[str, str]] = field(default_factory=dict)

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def figure(self, name: str) -> Figure | None:
        return figure(self.values.get(name) or [], self.lower_better, self.scale)

    def ratios(self, name: str) -> tuple[float, float] | None:
        """(best ratio, median ratio) of ``name`` to the reference, if both were measured."""
        row, ref = self.figure(name), self.figure(self.reference)
        if row is None or ref is None:
            return None
        return row.best / ref.best, row.median / ref.median

    def verdict(self, name: str) -> tuple[bool, bool, float, float] | None:
        """(met on the median ratio, met on the best, median ratio, best ratio) of the target of ``name``,
        if it has one and it was measured."""
        target, r = self.targets.get(name), self.ratios(name)
        if target is None or r is None or name == self.reference:
            return None
        return target.ok(r[1]), target.ok(r[0]), r[1], r[0]

    def ratio_cells(self, name: str) -> tuple[str, str]:
        if name == self.reference and self.figure(name) is not None:
            return "ref", "ref"
        r = self.ratios(name)
        return ("%.2fx" % r[0], "%.2fx" % r[1]) if r else ("-", "-")

    def target_cells(self, name: str) -> tuple[str, str]:
        """The target and met columns of ``name``'s row."""
        if name in self.other_targets:
            return self.other_targets[name]
        v = self.verdict(name)
        if v is None:
            return "", ""
        return self.targets[name].text(), self.targets[name].met_text(v[2], v[3])

    def summary(self, name: str, unit: str = "ms") -> str:
        """'title: A x unit vs ref y unit (medians) = r (best b), target <= t: met', for ``name``'s target."""
        v, row, ref = self.verdict(name), self.figure(name), self.figure(self.reference)
        if v is None or row is None or ref is None:
            return "%s: not measured (failed)" % self.title
        return "%s: %s %s %s vs %s %s %s (medians) = %.2fx (best %.2fx), target %s: %s" % (
            self.title,
            self.label(name),
            fmt(row.median),
            unit,
            self.label(self.reference),
            fmt(ref.median),
            unit,
            v[2],
            v[3],
            self.targets[name].text(),
            "met" if v[0] else "MISSED",
        )


# -- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: header, width, alignment, and the group whose header spans it ('\\n': two lines)."""

    head: str
    width: int
    left: bool = False
    group: str = ""


class Table:
    """Fixed-width rows under grouped headers, groups separated by ' | '; title lines in between."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.rows: list[list[str] | str] = []  # cells, or a line printed as it is

    def row(self, *cells: object) -> None:
        assert len(cells) == len(self.columns), (cells, self.columns)
        self.rows.append([str(c) for c in cells])

    def line(self, text: str) -> None:
        self.rows.append(text)

    def _runs(self) -> list[list[int]]:
        runs: list[list[int]] = []
        for i, c in enumerate(self.columns):
            if runs and self.columns[runs[-1][0]].group == c.group:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def _format(self, cells: Sequence[str]) -> str:
        parts = []
        for run in self._runs():
            fields = []
            for i in run:
                c = self.columns[i]
                fields.append(cells[i].ljust(c.width) if c.left else cells[i].rjust(c.width))
            parts.append(" ".join(fields))
        return " | ".join(parts).rstrip()

    def render(self, footer: str = "") -> str:
        runs = self._runs()
        widths = [sum(self.columns[i].width for i in run) + len(run) - 1 for run in runs]
        groups = [self.columns[run[0]].group.split("\n") for run in runs]
        depth = max(len(g) for g in groups)
        lines = []
        if any(g != [""] for g in groups):
            for k in range(depth):
                spans = [(g[k] if k < len(g) else "").ljust(w) for g, w in zip(groups[:-1], widths, strict=False)]
                lines.append(" | ".join(spans) + " |")
        head = self._format([c.head for c in self.columns])
        lines += [head, "-" * len(head)]
        lines += [r if isinstance(r, str) else self._format(r) for r in self.rows]
        lines.append("-" * len(head))
        if footer:
            lines.append(footer)
        return "\n".join(lines)

    def print(self, footer: str = "", out: TextIO | None = None) -> None:
        """Print the table (and, with ``--markdown``, the same as Markdown after it)."""
        print(self.render(footer), file=out or sys.stdout)
        if OUTPUT.markdown:
            print("\nMarkdown:\n\n" + self.markdown() + "\n", file=out or sys.stdout)

    def markdown(self) -> str:
        """The same table as Markdown (for RESULTS.md): title lines become rows with the title in bold."""
        heads = [(c.group.replace("\n", " ") + " " + c.head).strip() for c in self.columns]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in self.rows:
            cells = ["**%s**" % r.strip()] + [""] * (len(heads) - 1) if isinstance(r, str) else [x.strip() for x in r]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _columns(
    head: str, label_width: int, unit_width: int, groups: Sequence[str], ratio_head: str, extra: Sequence[Column]
) -> list[Column]:
    """label [unit] reps | best median (per group) | ratio best median | extra | target met."""
    cols = [Column(head, label_width, left=True)]
    if unit_width:
        cols.append(Column("unit", unit_width, left=True))
    cols.append(Column("reps", 4))
    for g in groups:
        cols += [Column("best", 9, group=g), Column("median", 9, group=g)]
    cols += [Column("best", 6, group=ratio_head), Column("median", 6, group=ratio_head), *extra]
    return [*cols, Column("target", 8, left=True, group=" "), Column("met", 0, left=True, group=" ")]


def pair_table(
    scenarios: Sequence[Scenario],
    sides: Sequence[tuple[str, str]],
    ratio_head: str,
    label_width: int = 22,
    unit: bool = False,
    head: str = "scenario",
) -> Table:
    """One row per scenario: the best and median of the two variants of ``sides`` ((name, column
    group) each), the ratio of the one that is not the scenario's reference to the reference, the
    target and whether it is met."""
    (a_name, a_group), (b_name, b_group) = sides
    table = Table(_columns(head, label_width, 6 if unit else 0, [a_group, b_group], ratio_head, ()))
    for sc in scenarios:
        a, b = sc.figure(a_name), sc.figure(b_name)
        units = [sc.unit] if unit else []
        if a is None or b is None:
            table.row(sc.title, *units, 0, "-", "-", "-", "-", "-", "-", "", "")
            continue
        judged = a_name if sc.reference == b_name else b_name
        table.row(
            sc.title,
            *units,
            min(a.reps, b.reps),
            fmt(a.best),
            fmt(a.median),
            fmt(b.best),
            fmt(b.median),
            *sc.ratio_cells(judged),
            *sc.target_cells(judged),
        )
    return table


def grouped_table(
    scenarios: Sequence[Scenario],
    label_width: int,
    figure_group: str,
    *,
    unit: bool = False,
    extra: Sequence[Column] = (),
    skip_empty: bool = False,
    failed_line: Callable[[Scenario, str], str] | None = None,
) -> Table:
    """A block per scenario ("title (ref: ...)"), a row per variant: reps, best, median, the ratios
    to the reference row, the ``extra`` columns (texts from ``Scenario.extra``), target and met.

    A variant without figures gets a "-" row (none with ``skip_empty``), or "FAILED" if it is in
    ``Scenario.failed`` (``failed_line(scenario, name)`` makes that row's text instead, if given)."""
    table = Table(_columns("scenario / variant", label_width, 5 if unit else 0, [figure_group], "ratio vs ref", extra))
    for sc in scenarios:
        table.line("%s (ref: %s)" % (sc.title, sc.label(sc.reference)))
        for name in sc.values:
            label = "  " + sc.label(name)
            units = [sc.unit] if unit else []
            more = [sc.extra.get(c.head, {}).get(name, "-") for c in extra]
            if name in sc.failed and failed_line is not None:
                table.line(failed_line(sc, name))
                continue
            fig = sc.figure(name)
            if fig is None:
                if name in sc.failed or not skip_empty:
                    state = "FAILED" if name in sc.failed else "-"
                    table.row(label, *units, 0, state, "-", "-", "-", *more, "", "")
                continue
            table.row(
                label,
                *units,
                fig.reps,
                fmt(fig.best),
                fmt(fig.median),
                *sc.ratio_cells(name),
                *more,
                *sc.target_cells(name),
            )
    return table


# -- RESULTS.md ------------------------------------------------------------------------------


def results_row(run: str, revision: str, scenarios: Sequence[Scenario]) -> str:
    """The RESULTS.md "all runs at a glance" row: run, commit, the median ratio of every scenario with
    a target (and the best ratio where it gives the other verdict)."""
    cells = [run, revision or "?"]
    for sc in scenarios:
        for name in sc.targets:
            v = sc.verdict(name)
            cells.append("-" if v is None else "%.2fx" % v[2] + (" (best %.2fx)" % v[3] if v[0] != v[1] else ""))
    return "| " + " | ".join(cells) + " |"


# -- header and footer ---------------------------------------------------------------------------


def source_revision(path: str) -> str:
    """git commit of the checkout holding ``path`` (+ '-dirty' if it has local changes there), or ''."""
    try:
        top = subprocess.run(
            ["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if top.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
        )
        return top.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_description() -> str:
    """CPUs, CPU model, memory, OS and kernel of this machine (Linux /proc; less elsewhere), for headers."""
    model = "?"
    mem = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = ", %.1f GiB RAM" % (int(line.split()[1]) / 1024 / 1024)
                    break
    except OSError:
        pass
    return "%s CPUs (%s)%s, %s %s (%s)" % (
        os.cpu_count(),
        model,
        mem,
        platform.system(),
        platform.release(),
        platform.node(),
    )


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def execpool_description(ep_dir: str, extra: str = "") -> str:
    """'0.1.0 (DIR, git REV[; extra])' of the execpool found at ``ep_dir``."""
    rev = source_revision(ep_dir)
    return "%s (%s%s%s)" % (package_version("execpool"), ep_dir, ", git " + rev if rev else "", extra)


def load_text() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else "?"


def print_header(
    bench: str, fields: Sequence[tuple[str, str]], quick: bool | None = None, out: TextIO | None = None
) -> str:
    """Print the run's header: script and date (UTC), machine, master interpreter, ``fields``
    (label, text), the load average and the mode (``quick``: None for no mode line).  Returns the date."""
    out = out or sys.stdout
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        ("machine", machine_description()),
        ("master", "%s %s (%s)" % (platform.python_implementation(), platform.python_version(), sys.executable)),
        *fields,
        ("load", "%s (1/5/15 min) on %s CPUs" % (load_text(), os.cpu_count())),
    ]
    if quick is not None:
        lines.append(("mode", "quick (smoke test; figures not meaningful)" if quick else "full"))
    print("%s  %s" % (bench, date), file=out)
    for label, text in lines:
        print("%-7s: %s" % (label, text), file=out)
    if OUTPUT.markdown:  # the "When, where, what" list of RESULTS.md
        print("\nMarkdown:\n\n* **Date:** %s (`%s`)" % (date, bench), file=out)
        for label, text in lines:
            print("* **%s:** %s" % (label[:1].upper() + label[1:], text), file=out)
    print(file=out, flush=True)
    return date


def print_footer(
    notes: Sequence[str],
    leftovers: dict[str, dict[int, str] | None],
    t_start: float,
    out: TextIO | None = None,
    summary: Sequence[str] | None = None,
) -> bool:
    """Print the notes, the ``summary`` lines (under "summary:"), each kind of left-over process
    (None: not checked), the load and the total time; returns whether anything was left over."""
    out = out or sys.stdout
    for n in notes:
        print("  " + n, file=out)
    if summary is not None:
        print("summary:", file=out)
        for line in summary:
            print("  " + line, file=out)
    left = False
    for what, procs in leftovers.items():
        if procs is None:
            continue
        print("  leftover %s: %s" % (what, procs or "none"), file=out)
        left = left or bool(procs)
    print("  load at the end: %s" % load_text(), file=out)
    print("  total benchmark time: %.1f s" % (time.perf_counter() - t_start), file=out)
    return left


# -- processes ---------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process (Linux /proc; empty elsewhere)."""
    out: dict[int, tuple[int, str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            out[int(entry)] = (int(fields[1]), cmdline[:100])
    return out


def process_state(pid: int) -> str:
    """The state letter of a process (R, S, Z...; Linux /proc) or 'gone'."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2 :].split()[0].decode()
    except (OSError, IndexError):
        return "gone"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    return process_state(pid) not in ("gone", "Z", "X")


def descendants(pid: int, keep: Callable[[int, str], bool] | None = None) -> dict[int, str]:
    """The processes below ``pid`` (children, grandchildren, ...) that ``keep(pid, cmd)`` accepts:
    pid -> command line."""
    table = _proc_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, (pp, cmd) in table.items():
            if pp == parent and p not in found:
                found[p] = cmd
                frontier.append(p)
    return {p: cmd for p, cmd in found.items() if keep is None or keep(p, cmd)}


def wait_gone(
    pid: int, seconds: float, keep: Callable[[int, str], bool] | None = None, poll: float = 0.1
) -> dict[int, str]:
    """Descendants of ``pid`` (those ``keep`` accepts) still there after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    left = descendants(pid, keep)
    while left and time.monotonic() < deadline:
        time.sleep(poll)
        left = descendants(pid, keep)
    return left


def leftover_children(grace: float = 0.5, keep: Callable[[int, str], bool] | None = None) -> dict[int, str]:
    """This process's descendants still there ``grace`` seconds after a first look finds any
    (a just-exited process may not have been reaped yet)."""
    return wait_gone(os.getpid(), grace, keep)


def end_sessions(server_pid: int) -> dict[int, str]:
    """Sessions left under the test sshd (its children, their shells and workers): report
    them, then end them by pid -- while the listener still runs, so that it reaps them (the
    init here does not reap orphans).  Returns what was left before the clean-up."""
    left = wait_gone(server_pid, 5.0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in descendants(server_pid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not wait_gone(server_pid, 5.0):
            break
    return left


def sshd_missing() -> str | None:
    """Why the tests' sshd cannot run here, or None."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from sshd import sshd_missing_reason

    reason: str | None = sshd_missing_reason()
    return reason


@dataclass
class SshdRun:
    """The tests' sshd for one run; ``left``: its sessions found at the end (filled on exit)."""

    server: Any
    left: dict[int, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.server.proc.pid if self.server.proc is not None else None

    def describe(self, host: str = "host-a") -> str:
        proc = self.server.proc
        binary = proc.args[0] if proc else "sshd"
        return "%s on %s:%d (alias %s)" % (binary, self.server.hosts[host], self.server.port, host)


@contextmanager
def running_sshd(directory: Path) -> Iterator[SshdRun]:
    """Start the tests' sshd (``tests/sshd.py``) in ``directory``; at the end check that no session,
    shell or worker is left below it (ending any by pid while the listener still runs, so that it
    reaps them), then stop it."""
    sshd_missing()  # puts tests/ on sys.path
    from sshd import SshServer

    run = SshdRun(SshServer.start(directory))
    try:
        yield run
    finally:
        if run.pid is not None:
            run.left = end_sessions(run.pid)
        run.server.stop()


# -- gateways and the shared channel workloads ------------------------------------------------------

# Worker code, run with remote_exec by both libraries (kept Python 3.8-compatible): echo items /
# acknowledge them with their length, until None.
HELLO = "channel.send(1)"

ECHO = """
while True:
    x = channel.receive()
    if x is None:
        break
    channel.send(x)
"""

ACK = """
while True:
    x = channel.receive()
    if x is None:
        break
    channel.send(len(x))
"""


def exit_execnet(gw: Any, timeout: float = EXIT_TIMEOUT) -> None:
    """End an execnet gateway as its Group.terminate() does -- exit(), join the receiver,
    wait for the process -- bounded, with a kill at the end, so that a stuck worker cannot
    hang a run and both libraries are timed to the same point: the worker is gone."""
    gw.exit()
    gw.join(timeout)
    popen = getattr(gw._io, "popen", None)
    if popen is None:
        gw._io.wait()
    else:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


class Gateways:
    """The gateways of one library (execpool, or execnet: ``mod.__name__``) under test: made on a
    spec, ended until the worker is gone, any left ended by :meth:`exit_all` (in finally blocks)."""

    def __init__(self, name: str, mod: Any, spec: str = "") -> None:
        self.name = name
        self.mod = mod
        self.spec = spec
        self.live: list[Any] = []

    def make(self, spec: str | None = None) -> Any:
        gw = self.mod.makegateway(spec or self.spec)
        self.live.append(gw)
        return gw

    def make_ready(self, spec: str | None = None) -> Any:
        """A gateway that has run its first remote_exec."""
        gw = self.make(spec)
        assert gw.remote_exec(HELLO).receive(RECEIVE_TIMEOUT) == 1
        return gw

    def exit(self, gw: Any) -> None:
        """End the gateway and wait until its worker process is gone."""
        if self.mod.__name__ == "execnet":
            # execnet's exit() only starts the shutdown: complete it as Group.terminate() does
            exit_execnet(gw, EXIT_TIMEOUT)
        else:
            gw.exit(EXIT_TIMEOUT)  # execpool: returns once the worker is gone (killed after the timeout)
        if gw in self.live:
            self.live.remove(gw)

    def exit_all(self) -> None:
        for gw in list(self.live):
            try:
                self.exit(gw)
            except Exception as exc:  # pragma: no cover - best effort clean-up
                print("warning: exiting a %s gateway failed: %r" % (self.name, exc), file=sys.stderr)
        self.live.clear()

    def startup(self, spec: str | None = None) -> tuple[float, float, float]:
        """makegateway, first remote_exec result, exit until the worker is gone: seconds for each."""
        t0 = time.perf_counter()
        gw = self.make(spec)
        t1 = time.perf_counter()
        assert gw.remote_exec(HELLO).receive(RECEIVE_TIMEOUT) == 1
        t2 = time.perf_counter()
        self.exit(gw)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2


def finish(ch: Any) -> None:
    """End an ECHO/ACK loop and wait for its channel to close."""
    ch.send(None)
    ch.waitclose(RECEIVE_TIMEOUT)


def run_latency(gw: Any, iterations: int) -> float:
    """Seconds per round trip of an int (mean over ``iterations``, after a warm-up)."""
    ch = gw.remote_exec(ECHO)
    send, receive = ch.send, ch.receive
    for i in range(min(200, iterations)):  # warm-up: channel open, code running, caches hot
        send(i)
        receive(RECEIVE_TIMEOUT)
    t0 = time.perf_counter()
    for i in range(iterations):
        send(i)
        receive(RECEIVE_TIMEOUT)
    t = time.perf_counter() - t0
    finish(ch)
    return t / iterations


def run_window(gw: Any, code: str, block: bytes, total: int, window: int = 4) -> tuple[float, Any]:
    """Send ``block`` ``total`` times to ``code`` running remotely, ``window`` in flight, after 2 warm-up
    messages; seconds, and the replies (summed if they are lengths, else the last)."""
    ch = gw.remote_exec(code)
    send, receive = ch.send, ch.receive
    for _ in range(2):  # warm-up
        send(block)
        receive(RECEIVE_TIMEOUT)
    t0 = time.perf_counter()
    outstanding = 0
    acked: Any = 0
    for _ in range(total):
        send(block)
        outstanding += 1
        if outstanding >= window:
            got = receive(RECEIVE_TIMEOUT)
            acked = acked + got if isinstance(got, int) else got
            outstanding -= 1
    while outstanding:
        got = receive(RECEIVE_TIMEOUT)
        acked = acked + got if isinstance(got, int) else got
        outstanding -= 1
    t = time.perf_counter() - t0
    finish(ch)
    return t, acked


def run_oneway(gw: Any, block: bytes, total_mib: int, window: int = 4) -> float:
    """MiB/s of ``total_mib`` messages of ``block`` (1 MiB) to the worker, each acknowledged
    with its length, ``window`` in flight."""
    t, acked = run_window(gw, ACK, block, total_mib, window)
    assert acked == total_mib * len(block), (acked, total_mib)
    return total_mib * len(block) / MiB / t


def run_echo(gw: Any, total_mib: int, window: int = 4) -> float:
    """MiB/s of 1 MiB messages echoed back (payload counted one way)."""
    t, last = run_window(gw, ECHO, b"x" * MiB, total_mib, window)
    assert len(last) == MiB
    return total_mib / t


def default_remote_python() -> str:
    """A real interpreter path for remote workers (not pyenv's shim, which costs 0.1-0.25 s per start)."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    return base if os.path.exists(base) else "python3"
