"""The layers of regatta.common import one way: the data and Redis layers know nothing of HTTP,
and statements are built in the data layer only.

``data/`` (engine, repositories, idempotency) and ``redis/`` (cache, events) raise their own
exceptions (data/errors.py) and take plain values; ``http/`` turns those into problems and
requests into calls. A module of ``data/`` or ``redis/`` importing FastAPI, Starlette or
``regatta.common.http`` would tie the layers back together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import regatta.common

COMMON = Path(regatta.common.__file__).parent
FORBIDDEN = ("fastapi", "starlette", "regatta.common.http")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", ["data", "redis"])
def test_the_layer_imports_nothing_of_http(layer: str) -> None:
    modules = sorted((COMMON / layer).glob("*.py"))
    assert modules, f"no modules under {layer}/"
    offending = {
        f"{path.relative_to(COMMON)}: {name}"
        for path in modules
        for name in _imports(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN)
    }
    assert not offending, sorted(offending)


# What builds a statement. Types (Table, ColumnElement) may cross the layers; statements not.
STATEMENT_BUILDERS = frozenset(
    {"select", "insert", "update", "delete", "text", "func", "literal", "bindparam", "case"}
)


def _statement_builders(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.module.startswith("sqlalchemy.dialects"):
            found.add(node.module)
        if node.module.startswith("sqlalchemy"):
            found.update(alias.name for alias in node.names if alias.name in STATEMENT_BUILDERS)
    return found


def test_sql_is_built_in_the_data_layer_only() -> None:
    outside = [path for path in COMMON.rglob("*.py") if path.parent.name != "data"]
    offending = {
        f"{path.relative_to(COMMON)}: {name}"
        for path in outside
        for name in _statement_builders(path)
    }
    assert not offending, sorted(offending)
