"""The rules the code keeps, besides the import contracts `lint-imports` checks.

No import circle anywhere in the package or the benchmarks, counting the imports made only
for type checking and those inside functions (a package importing its module and the module
importing the package is a circle too); no module of the package over 700 lines and no class
over 400, so that a file holds one job a reader can take in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("callflow", "benchmarks")
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 400


def _modules(package: str) -> dict[str, Path]:
    modules = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module of ``known`` that ``name`` imports, wherever the import statement is."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here[: len(here) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            for candidate in (base, *(f"{base}.{alias.name}" for alias in node.names)):
                if candidate in known and candidate != name:
                    yield candidate
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.name != name:
                    yield alias.name


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles_type_only_ones_included(package: str) -> None:
    """No module of the package imports, directly or through others, a module that imports
    it back, even for type checking only."""
    known = _modules(package)
    graph = {name: set(_imports(name, path, known)) for name, path in known.items()}
    assert _circles(graph) == []


def test_the_circle_finder_finds_circles() -> None:
    """The check above can fail: a type-only import back up is a circle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_modules_and_classes_stay_small() -> None:
    """No module of the package over 700 lines and no class over 400."""
    too_big = []
    for name, path in sorted(_modules("callflow").items()):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{name}: {lines} lines")
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    assert too_big == []
