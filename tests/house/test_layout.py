"""The house rules: the library never imports the commands (``gtp_ref.apps``), no module imports
itself back through others (no import circle), the cost model stands on the library's torch-free
base and not the other way round, and no module is longer than 600 lines (of the formatter's,
tests/house/test_style.py)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gtp_ref", "complexity")
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the packages (a package is its __init__)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports, anywhere in it (module level or inside a
    function), ``if TYPE_CHECKING:`` blocks left out (they never run)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from package import submodule" imports the submodule; "from module import name", the module
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def test_the_library_never_imports_the_commands():
    offenders = {
        name: sorted(i for i in deps if i.startswith("gtp_ref.apps"))
        for name, deps in graph().items()
        if not name.startswith("gtp_ref.apps")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_there_is_no_import_circle():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                return path + [node, dep]
            if dep not in state:
                found = visit(dep, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for name in sorted(g):
        if name not in state:
            circle = visit(name, [])
            assert circle is None, " -> ".join(circle[circle.index(circle[-1]) :])


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_longer_than_600_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


BASE = ("gtp_ref.validate", "gtp_ref.schedule", "gtp_ref.config", "gtp_ref.cli", "gtp_ref.style")


def test_the_library_stands_on_its_own_base():
    """The cost model is a client of the library, never the other way round: nothing in gtp_ref
    but its commands imports complexity; the torch-free base imports nothing of gtp_ref but itself."""
    g = graph()
    offenders = {
        name: sorted(d for d in deps if d.startswith("complexity"))
        for name, deps in g.items()
        if name.startswith("gtp_ref") and not name.startswith("gtp_ref.apps")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders
    for name in BASE:
        assert g[name] <= set(BASE) | {"gtp_ref"}, (name, g[name])


def test_the_base_needs_neither_torch_nor_sympy():
    """``import gtp_ref`` and ``import complexity`` load no torch and no sympy, and install no import
    hook; the public names load torch when first used."""
    import subprocess
    import sys

    code = (
        "import sys; hooks = list(sys.meta_path); import gtp_ref, complexity; "
        f"import {', '.join(BASE)}; "
        "print(sorted(m for m in ('torch', 'sympy', 'timm', 'transformers') if m in sys.modules), "
        "sys.meta_path == hooks); "
        "gtp_ref.GTPViT, gtp_ref.from_timm, gtp_ref.from_hf; print('torch' in sys.modules, "
        "sorted(m for m in ('timm', 'transformers') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == ["[] True", "True []"], r.stdout + r.stderr


def test_the_import_graph_tool_draws_the_layers():
    """``python tools/import_graph.py``: every module with what it imports, then the layers, the
    base at the bottom."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "tools/import_graph.py"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    layers = [line for line in r.stdout.splitlines() if line.startswith("layer ")]
    level = {
        name: int(line.split()[1].rstrip(":")) for line in layers for name in line.split(": ")[1].split(", ")
    }
    assert level["gtp_ref.validate"] == 0 and level["gtp_ref.config"] < level["complexity.backbone"]
    assert level["gtp_ref.vit"] < level["gtp_ref.model"] < level["gtp_ref.timm_models"], layers
