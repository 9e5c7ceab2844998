"""The worker-side boundary: what ``execpool/_shipped/`` may contain, and that it is what a worker runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import execpool
from _helpers import wait_until
from _sourcegraph import PACKAGE, SHIPPED, find_cycle, imports, module_name, package_graph
from execpool import _bootstrap

SHIPPED_FILES = sorted(p for p in SHIPPED.glob("*.py") if p.name != "__init__.py")


def _stdlib_names() -> frozenset[str]:
    # the names of this interpreter's stdlib, plus the private C modules the shipped code uses
    return frozenset(sys.stdlib_module_names) | {"_queue", "_pickle", "_frozen_importlib_external"}


def test_the_folder_is_what_a_worker_is_sent() -> None:
    assert sorted(_bootstrap._sources()) == sorted(p.stem for p in SHIPPED_FILES)


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_a_shipped_module_imports_only_the_stdlib_and_its_siblings(path: Path) -> None:
    foreign = []
    for name, line in imports(path):
        top = name.split(".")[0]
        if name.startswith("execpool._shipped"):
            continue
        if top in _stdlib_names() and top != "execpool":
            continue
        foreign.append("%s:%d imports %s" % (path.name, line, name))
    assert not foreign, "shipped modules run in workers with nothing installed:\n" + "\n".join(foreign)


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_a_shipped_module_parses_as_python_3_8(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 8))


def test_the_shipped_folder_compiles_on_the_oldest_local_python() -> None:
    # feature_version misses some newer forms (parenthesised context managers, for one); a real
    # 3.8 compiler does not
    oldest = min(execpool.find_interpreters(), key=lambda i: i.version, default=None)
    if oldest is None or oldest.version[:2] > (3, 8):
        pytest.skip("no CPython 3.8 on this machine")
    code = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p).read(), p, 'exec')\n"
    result = subprocess.run(
        [oldest.path, "-c", code, *map(str, SHIPPED_FILES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_no_master_side_module_is_imported_by_the_folder() -> None:
    graph = package_graph()
    for name, deps in graph.items():
        if name.startswith("execpool._shipped"):
            outside = sorted(d for d in deps if not d.startswith("execpool._shipped"))
            assert not outside, "%s imports master-side %s" % (name, outside)


def test_execpool_has_no_import_cycle() -> None:
    # TYPE_CHECKING imports count: a cycle of types is a cycle of design
    cycle = find_cycle(package_graph(include_type_checking=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_resolves_relative_imports() -> None:
    graph = package_graph()
    assert "execpool._shipped.frames" in graph["execpool._shipped.connection"]
    assert module_name(PACKAGE / "_shipped" / "__init__.py") == "execpool._shipped"


def test_a_worker_runs_the_shipped_modules_not_an_installed_execpool(group: execpool.Group) -> None:
    gw = group.makegateway("popen")
    names = gw.remote_exec(
        "import sys; channel.send(sorted(m for m in sys.modules if m.startswith(('_execpool', 'execpool'))))"
    ).receive(10)
    assert "_execpool.worker" in names
    assert not [n for n in names if n.startswith("execpool")]


def test_an_entry_point_of_the_folder_is_sent_by_reference(group: execpool.Group) -> None:
    from execpool._shipped import poolworker

    gw = group.makegateway("popen")
    ch = gw.remote_exec(poolworker.serve)

    # the worker imported the module it already had instead of compiling a sent copy (the check
    # runs in a thread of its own, concurrently with the import in the main thread: ask until then)
    def imported() -> bool:
        return gw.remote_exec("import sys; channel.send('_execpool.poolworker' in sys.modules)").receive(10) is True

    assert wait_until(imported, timeout=10)
    ch.close()
