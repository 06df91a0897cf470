"""Parsing the project's own Python files in tests."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse(path: Path) -> ast.Module:
    """`ast.parse` with the garbage collector paused: on CPython 3.11.7 a finaliser that runs while the AST is
    built (an earlier test's abandoned coroutine, say) breaks it with "AST constructor recursion depth mismatch"
    (CPython gh-106905)."""
    gc.collect()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        gc.enable()
