"""No logging call passes an ``extra`` key that LogRecord reserves (that raises at run time)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extra_keys(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                for key in keyword.value.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        found.append((node.lineno, key.value))
    return found


def test_log_extras_never_shadow_log_record_attributes() -> None:
    clashes = []
    sources = [*ROOT.glob("operator/**/*.py"), *ROOT.glob("node-agent/**/*.py")]
    assert sources
    for path in sources:
        for line, key in _extra_keys(ast.parse(path.read_text())):
            if key in RESERVED:
                clashes.append(f"{path.relative_to(ROOT)}:{line}: {key}")
    assert clashes == []
