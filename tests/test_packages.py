"""The package layering: no two of lmprof's packages import each other, directly or round a
longer loop (an import inside a function counts: it is a dependency all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmprof"


def _imports(path: Path) -> set[str]:
    """The absolute lmprof module names a file imports, relative imports resolved."""
    # The package a relative import starts from: the file's folder (also for an __init__.py).
    package = list(path.relative_to(SRC.parent).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found |= {f"{module}.{a.name}" for a in node.names} if not node.module else {module}
    return {m for m in found if m.startswith("lmprof.")}


def package_graph() -> dict[str, set[str]]:
    """lmprof.<pkg> -> the other lmprof packages its modules import (top-level modules such as
    config.py are not packages and are left out)."""
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    graph: dict[str, set[str]] = {p: set() for p in packages}
    for p in packages:
        for path in (SRC / p).rglob("*.py"):
            for module in _imports(path):
                target = module.split(".")[1]
                if target in packages and target != p:
                    graph[p].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop between packages, or None (depth-first search, linear in the edges)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_sees_a_loop() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_two_packages_import_each_other() -> None:
    graph = package_graph()
    # The walk sees the layering it is meant to pin (the trainer uses profiling, not back).
    assert {"train", "profiling", "analysis", "data", "ops"} <= graph.keys()
    assert "profiling" in graph["train"]
    loop = _cycle(graph)
    assert loop is None, "packages import each other: " + " -> ".join(loop or [])
