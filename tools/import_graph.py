"""The import structure of the packages, layer by layer: which module imports which.

    python tools/import_graph.py            # gtp_ref and complexity, this checkout
    python tools/import_graph.py --root DIR # another checkout (e.g. a git worktree of an older commit)

Reads the imports as text (``tests/house/test_layout.py``'s reading: module level and inside functions,
``if TYPE_CHECKING:`` blocks left out) and prints, for each module, the modules of the packages it
imports; then the layers: each module's depth (0: imports none of the packages' modules), so an
arrow always points to a lower layer where there is no circle.  Runs nothing of the packages.
"""

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout to read"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.house import test_layout

    test_layout.ROOT = Path(args.root).resolve()
    graph = test_layout.graph()
    depth: dict[str, int] = {}

    def layer(name: str, seen: tuple[str, ...] = ()) -> int:
        if name not in depth:
            deps = [d for d in graph[name] if d not in seen]
            depth[name] = 1 + max((layer(d, seen + (name,)) for d in deps), default=-1)
        return depth[name]

    for name in sorted(graph):
        print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
    print()
    for level in range(max(map(layer, graph)) + 1):
        print(f"layer {level}: {', '.join(sorted(n for n in graph if depth[n] == level))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
