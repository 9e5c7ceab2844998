"""The ``execpool`` command line.

``execpool demo [SPEC ...]`` runs a parallel map over a pool of those specs
(default: one worker per local CPython found) with a progress bar and prints
the per-worker statistics (see ``_demo``).

``execpool info [SPEC ...]`` starts a gateway per spec (all at once), prints a
row per gateway -- spec, Python version, platform, CPUs, pid, start-up time --
and exits them.  Without specs it uses every local CPython 3.8+ it finds
(``--local`` adds them to given specs).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from . import __version__
from ._shipped.errors import ExecpoolError
from .group import Group


def _info(args: argparse.Namespace) -> int:
    specs = list(args.specs)
    if args.local or not specs:
        from ._discover import find_interpreters  # (only here: `execpool rsync` starts faster)

        found = find_interpreters()
        if not found and not specs:
            print("execpool: no CPython 3.8+ interpreter found on PATH or in pyenv", file=sys.stderr)
            return 1
        specs += [i.spec for i in found]
    try:
        group = Group(specs)
    except (ExecpoolError, ValueError) as exc:
        print("execpool: %s" % exc, file=sys.stderr)
        return 1
    rows = [("id", "spec", "python", "platform", "cpus", "pid", "start-up")]
    try:
        for gw in group:
            info = gw.remote_info()
            rows.append(
                (
                    gw.id,
                    str(gw.spec),
                    "%s %s" % (info.implementation, info.version),
                    "%s-%s" % (info.platform, info.machine),
                    str(info.cpu_count),
                    str(info.pid),
                    "%.0f ms" % (1000 * (gw.startup_seconds or 0.0)),
                )
            )
    finally:
        group.terminate()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import _demo

    if args.tasks < 1:
        print("execpool demo: --tasks must be at least 1", file=sys.stderr)
        return 2
    return _demo.run(args.specs, args.local, args.tasks, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="execpool", description="Run Python code on many interpreters at once.")
    parser.add_argument("--version", action="version", version="execpool %s" % __version__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="start gateways and print what they run on")
    info.add_argument("specs", nargs="*", metavar="SPEC", help="xspecs, e.g. popen popen//python=python3.9")
    info.add_argument("--local", action="store_true", help="add every local CPython 3.8+ found")
    info.set_defaults(func=_info)
    demo = sub.add_parser(
        "demo",
        help="run a parallel map on every local Python (and given specs) and print per-worker stats",
        description="Map CPU-bound tasks over a pool: one worker per local CPython 3.8+ found, or SPECs.",
    )
    demo.add_argument("specs", nargs="*", metavar="SPEC", help="xspecs, e.g. ssh=node1//workers=auto")
    demo.add_argument("--local", action="store_true", help="add every local CPython 3.8+ found to SPECs")
    demo.add_argument("--tasks", type=int, default=240, help="number of tasks (default 240)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    rs = sub.add_parser(
        "rsync",
        help="copy a directory to gateways, sending only what changed",
        description="Synchronise SOURCE to DEST on each gateway SPEC (SPEC:DEST, split at the last ':').",
    )
    rs.add_argument("source")
    rs.add_argument("targets", nargs="+", metavar="SPEC:DEST")
    rs.add_argument("--delete", action="store_true", help="remove what SOURCE does not have")
    rs.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="gitignore-like; repeatable")
    rs.add_argument("--compress", action="store_true", help="compress file data (slow links)")
    rs.add_argument("--progress", action="store_true", help="show a progress bar")
    rs.add_argument("-v", "--verbose", action="store_true", help="list every file sent")
    rs.set_defaults(func=_rsync)
    serve = sub.add_parser(
        "serve",
        help="accept socket= gateways (token-authenticated)",
        description="Start an interpreter for every client that proves it knows the token "
        "(from --token-file or $EXECPOOL_TOKEN). Binds 127.0.0.1 unless told otherwise.",
    )
    serve.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--token-file", help="file holding the shared token (else $EXECPOOL_TOKEN)")
    serve.add_argument("--python", default=sys.executable, help="interpreter to start per connection")
    serve.add_argument("--tls-cert", help="certificate (PEM) to serve TLS with")
    serve.add_argument("--tls-key", help="private key of --tls-cert (default: in the same file)")
    serve.add_argument(
        "--handshake-timeout", type=float, default=10.0, help="seconds a client has to authenticate (default 10)"
    )
    serve.add_argument(
        "--max-pending",
        type=int,
        default=64,
        help="unauthenticated connections at once; when full, the busiest address's oldest is closed (default 64)",
    )
    serve.add_argument(
        "--max-pending-per-address",
        type=int,
        default=8,
        help="unauthenticated connections at once from one address (default 8)",
    )
    serve.add_argument(
        "--fork",
        action="store_true",
        help="fork this server for each client instead of starting an interpreter (faster; no TLS)",
    )
    serve.add_argument("--ready-file", help=argparse.SUPPRESS)  # tests: where to write "host port"
    serve.set_defaults(func=_serve)
    return parser


def _rsync(args: argparse.Namespace) -> int:
    from .rsync import RSync, RSyncError

    targets = []
    for item in args.targets:
        spec, sep, dest = item.rpartition(":")
        if not sep or not spec or not dest:
            print("execpool rsync: write each target as SPEC:DEST, e.g. ssh=host:/srv/code", file=sys.stderr)
            return 2
        targets.append((spec, dest))
    specs = list(dict.fromkeys(spec for spec, _ in targets))
    rsync = RSync(
        args.source, verbose=args.verbose, exclude=args.exclude, compress=args.compress, progress=args.progress
    )
    # the source is walked while the gateways start (an ssh login leaves this process idle)
    walker = threading.Thread(target=rsync.walk_ahead, name="execpool-rsync-walk", daemon=True)
    walker.start()
    try:
        group = Group(specs)
    except (ExecpoolError, ValueError) as exc:
        print("execpool rsync: %s" % exc, file=sys.stderr)
        return 1
    finally:
        walker.join()
    try:
        by_spec = dict(zip(specs, group, strict=True))
        for spec, dest in targets:
            rsync.add_target(by_spec[spec], dest, delete=args.delete)
        try:
            rsync.send()
        except (RSyncError, OSError) as exc:
            print("execpool rsync: %s" % exc, file=sys.stderr)
            return 1
        finally:
            for problem in rsync.problems:
                print("execpool rsync: %s" % problem, file=sys.stderr)
        for gw in group:
            s = rsync.stats.get(gw.id, {})
            print(
                "%s: %d files (%d bytes sent, %d reused), %d touched, %d deleted"
                % (gw.spec, s.get("files", 0), s.get("literal", 0), s.get("copied", 0), s.get("touched", 0),
                   s.get("deleted", 0))
            )  # fmt: skip
        return 0
    finally:
        group.terminate()


def _serve(args: argparse.Namespace) -> int:
    from ._bootstrap import BOOTSTRAP
    from ._server import run

    return run(
        args.token_file,
        args.bind,
        args.port,
        args.python,
        args.tls_cert,
        args.tls_key,
        BOOTSTRAP,
        args.ready_file,
        args.handshake_timeout,
        args.fork,
        args.max_pending,
        args.max_pending_per_address,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``execpool`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))
