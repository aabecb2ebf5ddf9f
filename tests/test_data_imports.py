"""sim/data/ has no import circles, counting the imports made inside functions too.

A lazy import inside a function hides a circle from Python at import time but not from the reader:
the two modules still depend on each other. The graph here takes every ``import`` / ``from ... import``
of a module in the package, wherever it sits, and refuses any cycle.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sim" / "data"


def import_graph(package: Path) -> dict[str, set[str]]:
    """``module -> modules of the same package it imports`` (module level and inside functions)."""
    dotted = ".".join(package.relative_to(package.parents[1]).parts)  # "sim.data"
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1:
                    names = [base] if base else [a.name for a in node.names]
                elif node.level == 0 and base.startswith(dotted + "."):
                    names = [base[len(dotted) + 1 :]]
                elif node.level == 0 and base == dotted:
                    names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name[len(dotted) + 1 :] for a in node.names if a.name.startswith(dotted + ".")]
            found.update(n.split(".")[0] for n in names if n.split(".")[0] in modules)
        graph[path.stem] = found - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's members, once each (sorted), by depth-first search from each module."""
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                found.add(tuple(sorted(path)))
            elif nxt not in path and nxt > path[0]:  # each cycle from its smallest member only
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return [list(c) for c in sorted(found)]


def test_the_cycle_finder_sees_lazy_and_long_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_sim_data_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "pool" in graph["npz"] and "flwr_run" in graph["flwr_partition"]  # the graph sees the imports
    assert cycles(graph) == []
