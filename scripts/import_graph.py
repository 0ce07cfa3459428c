"""Counts the package's import graph: modules, direct import edges and cycles.

    python scripts/import_graph.py [--package openseg_r]

Imports inside functions count too (grimp reads every import statement). Two
views: between modules, and between the package's parts (``openseg_r.graph``,
``openseg_r.nodes``, a top-level module such as ``openseg_r.model``), where a
cycle means two parts that each reach into the other.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import grimp


def strongly_connected(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; only components of more than one node (the cycles)."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in adjacency.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(adjacency):
        if node not in index:
            visit(node)
    return found


def part_of(module: str, package: str) -> str:
    """``openseg_r.nodes.segmentation`` -> ``openseg_r.nodes``; a top-level module stays itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="openseg_r")
    args = parser.parse_args()
    graph = grimp.build_graph(args.package)
    modules = sorted(graph.modules)
    adjacency = {m: set(graph.find_modules_directly_imported_by(m)) for m in modules}
    edges = sum(len(targets) for targets in adjacency.values())
    parts: dict[str, set[str]] = {}
    for source, targets in adjacency.items():
        for target in targets:
            a, b = part_of(source, args.package), part_of(target, args.package)
            if a != b:
                parts.setdefault(a, set()).add(b)
            parts.setdefault(b, set())
    module_cycles = strongly_connected(adjacency)
    part_cycles = strongly_connected(parts)
    print(f"modules: {len(modules)}")
    print(f"import edges: {edges}")
    print(f"module cycles: {len(module_cycles)}")
    for cycle in module_cycles:
        print("  " + " <-> ".join(cycle))
    print(f"parts: {len(parts)}, edges between parts: {sum(len(t) for t in parts.values())}")
    root = sorted(p.split(".", 1)[1] for p in parts if "." in p and not _is_package(p))
    print(f"modules at the package root: {len(root)} ({', '.join(root)})")
    print(f"part cycles: {len(part_cycles)}")
    for cycle in part_cycles:
        print("  " + " <-> ".join(cycle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
