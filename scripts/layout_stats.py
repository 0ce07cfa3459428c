"""The package's layout in numbers: modules at the package root, rooms (the root's modules
and sub-packages), import arrows between modules and between rooms, and circles between rooms.

    python scripts/layout_stats.py
"""

from __future__ import annotations

import sys

import grimp


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def main() -> int:
    graph = grimp.build_graph("openseg_r")
    modules = graph.modules - {"openseg_r"}
    edges = {(a, b) for a in modules for b in graph.find_modules_directly_imported_by(a) if b in modules}
    rooms = {room(m) for m in modules}
    room_edges = {(room(a), room(b)) for a, b in edges if room(a) != room(b)}
    circles = sorted({tuple(sorted((a, b))) for a, b in room_edges if (b, a) in room_edges})
    root_modules = sorted(m for m in rooms if m not in {room(x) for x in modules if x.count(".") > 1})
    print(f"modules at the package root: {len(root_modules)} ({', '.join(r.split('.')[1] for r in root_modules)})")
    print(f"rooms: {len(rooms)}")
    print(f"import arrows between modules: {len(edges)}")
    print(f"import arrows between rooms: {len(room_edges)}")
    print(f"rooms that import each other: {len(circles)} {circles if circles else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
