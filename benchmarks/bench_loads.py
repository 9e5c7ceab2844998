"""loads() cost per message shape: the bare C unpickler, an older serial.py, and today's.

Usage: PYTHONPATH=src python benchmarks/bench_loads.py [OLD_COMMIT]

With OLD_COMMIT (default: HEAD), that commit's ``_shipped/serial.py`` (and the modules it
imports) is loaded from git into a temporary package for the middle column.  Figures in
benchmarks/RESULTS.md ("Which loader a message takes").
"""

from __future__ import annotations

import os
import pickle
import random
import string
import subprocess
import sys
import tempfile
import timeit

from execpool._shipped import serial as new

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _old_serial(commit: str):  # type: ignore[no-untyped-def]
    pkg = tempfile.mkdtemp()
    os.mkdir(os.path.join(pkg, "old_ep"))
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "src/execpool/_shipped/"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for path in listing:
        if path.endswith(".py"):
            text = subprocess.run(["git", "show", "%s:%s" % (commit, path)], cwd=ROOT, capture_output=True).stdout
            with open(os.path.join(pkg, "old_ep", os.path.basename(path)), "wb") as f:
                f.write(text)
    sys.path.insert(0, pkg)
    from old_ep import serial as old  # type: ignore[import-not-found]

    return old


old = _old_serial(sys.argv[1] if len(sys.argv) > 1 else "HEAD")
random.seed(1)
strs = ["".join(random.choice(string.ascii_letters) for _ in range(8)) for _ in range(1000)]
cases = {
    "bench_lowlevel's small dict": {"a": 1, "b": [1, 2, 3], "c": "hello"},
    "1 MiB bytes": b"x" * (1 << 20),
    "list of 1000 short str": strs,
    "dict of 1000 str -> int": {s: i for i, s in enumerate(strs)},
    "list of 1000 small dicts": [{"a": i, "b": str(i), "c": [i]} for i in range(1000)],
    "list of 10000 floats": [random.random() for _ in range(10000)],
    "dict of 1000 str -> float": {s: random.random() for s in strs},
    "list of 1000 (int, str) tuples": [(i, s) for i, s in enumerate(strs)],
}


def t(f, d):  # type: ignore[no-untyped-def]
    tm = timeit.Timer(lambda: f(d))
    n, _ = tm.autorange()
    return min(tm.repeat(5, n)) / n * 1e6


print("| message | size | C unpickler | guarded before | now | now / C |")
print("|---|---|---|---|---|---|")
for name, v in cases.items():
    d = new.dumps(v)
    assert new.loads(d) == v == old.loads(d)
    c = t(pickle.loads, d)
    o = t(old.loads, d)
    nw = t(new.loads, d)
    print("| %s | %d B | %.1f us | %.1f us | %.1f us | %.1fx |" % (name, len(d), c, o, nw, nw / c))
