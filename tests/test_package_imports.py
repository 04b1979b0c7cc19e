"""Every module of the package imports on its own, and no two modules import each other, even indirectly.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` statement, wherever it is
(module level, inside a function, under ``TYPE_CHECKING``), is an edge to the module it names. ``from package
import name`` is an edge to the submodule when ``name`` is one, else to the package's ``__init__``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import galvatron_hf

PACKAGE_DIR = Path(galvatron_hf.__file__).parent


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module in the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    targets = set()
    for name in found:
        while name and name not in modules:  # "pkg.module.function" -> "pkg.module"
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
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
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_the_import_graph_has_no_cycle():
    modules = package_modules()
    edges = {name: imported_names(name, path, modules) for name, path in modules.items()}
    assert import_cycles(edges) == [], "modules that import each other (directly or through others)"


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_planner_path_does_not_import_torch():
    """adapters, constants and every planner module load without torch (``galvatron-hf search`` on a laptop)."""
    import subprocess
    import sys

    planner = [name for name in package_modules() if name.startswith("galvatron_hf.planner")]
    code = (
        "import importlib, sys\n"
        f"for name in {['galvatron_hf.adapters', 'galvatron_hf.constants', *planner]!r}:\n"
        "    importlib.import_module(name)\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
