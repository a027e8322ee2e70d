"""House rules on size (issue #14): no product module over 400 lines, no product function over 60.

Product code is what ships: ``registry/``, ``crawler/``, ``signer/``, ``plugins/`` (migrations are
generated, self-contained history and are left out). A function counts from its ``def`` line to
its last line; decorators are not counted. The limits keep each module one job and each function
one readable step; when one is hit, split along a real seam rather than compress lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("registry", "crawler", "signer", "plugins")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _product_modules() -> list[Path]:
    found = []
    for root in PRODUCT:
        for path in sorted((REPO / root).rglob("*.py")):
            if "migrations" not in path.relative_to(REPO).parts:
                found.append(path)
    return found


def test_product_code_is_found():
    names = {p.relative_to(REPO).as_posix() for p in _product_modules()}
    assert {"registry/cli.py", "crawler/sync.py", "signer/engine.py"} <= names


def test_no_product_module_is_over_400_lines():
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in _product_modules()
        if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_product_function_is_over_60_lines():
    long = {}
    for path in _product_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO).as_posix()}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
