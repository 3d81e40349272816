"""The package's shape, as the README's layout section states it: rooms depend
only on rooms below them, and functions and modules stay short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Lowest first: a room may import only rooms before it (README, *Layout*).
ROOMS = ("fcn_model", "pipeline", "training", "gis", "synthetic", "demo", "jobs")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
#: Exceptions the README's layout section explains (path: reason).
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def modules() -> list[Path]:
    return [
        f for room in ROOMS if (ROOT / room).is_dir() for f in sorted((ROOT / room).rglob("*.py"))
    ]


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function, its docstring not counted (numpydoc sections are
    documentation, not code to read through)."""
    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            lines -= body[0].end_lineno - body[0].lineno + 1  # type: ignore[operator]
    return lines


def imported_rooms(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "fcnrs" and len(parts) > 1 and parts[1] in ROOMS:
                found.add(parts[1])
    return found


def test_rooms_import_only_rooms_below_them():
    wrong = []
    for path in modules():
        room = path.relative_to(ROOT).parts[0]
        for other in imported_rooms(ast.parse(path.read_text())):
            if ROOMS.index(other) > ROOMS.index(room):
                wrong.append(f"{path.relative_to(ROOT)} imports fcnrs.{other}")
    assert wrong == []


@pytest.mark.parametrize("kind", ["modules", "functions"])
def test_modules_and_functions_are_short(kind):
    long = {}
    for path in modules():
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        if kind == "modules":
            n = len(text.splitlines())
            if n > MAX_MODULE_LINES and rel not in LONG_MODULES:
                long[rel] = n
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{rel}:{node.name}"
                n = function_lines(node)
                if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = n
    assert long == {}
