"""The process environment is read (by config) and never written: no module sets a variable
for a library or a child process to find (issue 12, "small truths")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tokometer

PACKAGE = Path(tokometer.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
_WRITING_METHODS = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__"}


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def _stores_into_environ(node: ast.AST) -> bool:
    targets = (node.targets if isinstance(node, ast.Assign | ast.Delete)
               else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
    return any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets)


def _calls_a_writer(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    owner, name = node.func.value, node.func.attr
    return ((_is_environ(owner) and name in _WRITING_METHODS)
            or (isinstance(owner, ast.Name) and owner.id == "os"
                and name in ("putenv", "unsetenv")))


def environment_writes(source: str) -> list[int]:
    """Lines that assign, delete or mutate os.environ, or call os.putenv / os.unsetenv."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if _stores_into_environ(node) or _calls_a_writer(node)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_writes_the_environment(path):
    assert environment_writes(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("line", [
    'os.environ["X"] = "1"',
    'os.environ.setdefault("X", "1")',
    'os.environ.update(X="1")',
    'del os.environ["X"]',
    'os.putenv("X", "1")',
])
def test_the_check_finds_each_way_of_writing(line):
    assert environment_writes(f"import os\n{line}\n") == [2]


def test_the_check_lets_reads_pass():
    assert environment_writes('import os\nx = os.environ["X"]\ny = os.environ.get("Y")\n') == []
