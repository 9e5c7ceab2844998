"""Reads execpool's own sources as text: the import graph, for the layering and boundary tests.

A plain module (not conftest) so that any test can import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "execpool"
SHIPPED = PACKAGE / "_shipped"


def module_name(path: Path) -> str:
    """``src/execpool/_shipped/frames.py`` -> ``execpool._shipped.frames``."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, include_type_checking: bool = True) -> list[tuple[str, int]]:
    """The absolute names a module imports, with line numbers (relative imports resolved).

    ``from . import x`` yields ``package.x``; ``from .m import y`` yields ``package.m``.
    Imports inside ``if TYPE_CHECKING:`` blocks are left out unless asked for.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    skipped: set[int] = set()
    if not include_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            if node.module is None or (node.level and _is_package(prefix)):
                # from . import a, b  /  from .pkg import mod: each name may be a module
                for alias in node.names:
                    candidate = prefix + "." + alias.name
                    found.append((candidate if _exists(candidate) else prefix, node.lineno))
            else:
                found.append((prefix, node.lineno))
    return found


def _path_of(name: str) -> Path | None:
    if not name.startswith("execpool"):
        return None
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    for candidate in (PACKAGE / rel.with_suffix(".py") if name != "execpool" else None, PACKAGE / rel / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _exists(name: str) -> bool:
    return _path_of(name) is not None


def _is_package(name: str) -> bool:
    path = _path_of(name)
    return path is not None and path.name == "__init__.py"


def package_graph(*, include_type_checking: bool = True) -> dict[str, set[str]]:
    """Module -> the execpool modules it imports, for every module under ``src/execpool``."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        deps = {name for name, _ in imports(path, include_type_checking=include_type_checking)}
        graph[module_name(path)] = {d for d in deps if _exists(d) and d != module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def startup_modules() -> set[str]:
    """The shipped modules a worker imports before its hello: ``worker`` and what it imports."""
    graph = package_graph(include_type_checking=False)
    seen: set[str] = set()
    todo = ["execpool._shipped.worker"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(d for d in graph[name] if d.startswith("execpool._shipped.") and d != "execpool._shipped")
    return {name.rpartition(".")[2] for name in seen}
