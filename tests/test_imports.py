"""The library's import graph: no module imports, at any depth and inside functions too, one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import compattr

PACKAGE = Path(compattr.__file__).resolve().parent


def module_name(path: Path) -> str:
    """``compattr.x.y`` of a file in the package (a package's ``__init__`` is the package itself)."""
    parts = ("compattr", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports(path: Path, modules: set[str]) -> set[str]:
    """The library modules a file imports anywhere in it: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from compattr import attributor`` imports a module; ``from compattr.x import f`` imports compattr.x
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each library module and the library modules it imports."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: library_imports(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    assert {"compattr.outputs", "compattr.checkpoints"} <= set(graph)
    assert "compattr.outputs" in graph["compattr.sampling"]  # the walk sees the imports at all
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle_through_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from compattr.models import build_model\n")
    assert library_imports(module, {"compattr.models"}) == {"compattr.models"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
