"""The shape the architecture page promises, checked on the sources: sizes and where names live."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from _sourcegraph import PACKAGE

SOURCES = sorted(PACKAGE.rglob("*.py"))
#: A module past this many lines probably owns several things (STYLE.md); a class past CLASS_LINES too.
MODULE_LINES = 600
CLASS_LINES = 400


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_a_module_stays_small_enough_to_own_one_thing(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MODULE_LINES, "%s has %d lines (at most %d): split it by concern" % (
        _rel(path),
        lines,
        MODULE_LINES,
    )


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_a_class_stays_under_the_size_limit(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    big = [
        "%s (%d lines)" % (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and (node.end_lineno or node.lineno) - node.lineno + 1 > CLASS_LINES
    ]
    assert not big, "%s: classes over %d lines: %s" % (_rel(path), CLASS_LINES, ", ".join(big))


def _identifiers(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.append((node.id, node.lineno))
        elif isinstance(node, ast.Attribute):
            found.append((node.attr, node.lineno))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append((node.name, node.lineno))
        elif isinstance(node, ast.arg):
            found.append((node.arg, node.lineno))
        elif isinstance(node, ast.alias):
            found.append((node.asname or node.name, getattr(node, "lineno", 0)))
        elif isinstance(node, ast.keyword) and node.arg:
            found.append((node.arg, node.value.lineno))
    return found


def test_execnet_names_live_only_in_the_compat_layer() -> None:
    leaks = []
    for path in SOURCES:
        if "compat" in path.relative_to(PACKAGE).parts:
            continue
        for name, line in _identifiers(ast.parse(path.read_text(encoding="utf-8"))):
            if "execnet" in name.lower():
                leaks.append("%s:%d %s" % (_rel(path), line, name))
    assert not leaks, "execpool.compat owns every execnet name; found outside it:\n" + "\n".join(leaks)


def test_the_identifier_check_sees_names_of_every_kind() -> None:
    tree = ast.parse("import a as execnet_x\ndef execnet_f(execnet_arg): obj.execnet_attr(execnet_kw=1)\n")
    names = {name for name, _ in _identifiers(tree)}
    assert {"execnet_x", "execnet_f", "execnet_arg", "execnet_attr", "execnet_kw"} <= names
