"""The layout the README promises: `shared/` holds only what several processes use (the API, the workers, the
webhook deliverer, `make run`'s stack), the rest lives with the one that uses it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.python_source import parse

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ("api", "worker", "webhooks", "stack")


def _shared_imports(path: Path) -> set[str]:
    """The `shared` modules a file imports (`shared.x`, `from shared import x`, `from shared.x import y`)."""
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("shared.")}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "shared":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("shared."):
                found.add(node.module.split(".")[1])
    return found


def test_every_shared_module_serves_several_processes() -> None:
    modules = {path.stem for path in (ROOT / "shared").glob("*.py") if path.stem != "__init__"}
    inside = {name: _shared_imports(ROOT / "shared" / f"{name}.py") for name in modules}
    users: dict[str, set[str]] = {name: set() for name in modules}
    for process in PROCESSES:
        reached: set[str] = set()
        pending = [found for path in (ROOT / process).rglob("*.py") for found in _shared_imports(path)]
        while pending:
            name = pending.pop()
            if name in modules and name not in reached:
                reached.add(name)
                pending.extend(inside[name])
        for name in reached:
            users[name].add(process)

    alone = {f"shared/{name}.py": sorted(used) for name, used in users.items() if len(used) < 2}

    assert alone == {}, "used by one process at most: move it under that process's folder"
