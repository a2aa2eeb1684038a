"""The dependency rule, checked on the source: recipe/ never imports checks/, the zoo is not shipped
in checks/, and no module of recipe/ or checks/ is part of an import cycle (imports inside
functions included: a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("recipe", "checks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")
             if p.name not in ("conftest.py",) and not p.name.startswith("test_")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def test_recipe_never_imports_checks(graph):
    offenders = {m: sorted(d for d in deps if d.startswith("checks")) for m, deps in graph.items()
                 if m.startswith("recipe") and m != "checks.cli.main" and any(d.startswith("checks") for d in deps)}
    assert offenders == {}  # checks.cli.main is the composition root: the one module that knows every part


def test_no_import_cycles(graph):
    package_inits = {m for m in graph if m in PACKAGES}  # `import checks` itself is fine to reach from anywhere
    edges = {m: {d for d in deps if d not in package_inits} for m, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, path):
        if node in visiting:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        visiting.add(node)
        for dep in sorted(edges.get(node, ())):
            visit(dep, path + [node])
        visiting.discard(node)
        done.add(node)

    for module in sorted(edges):
        visit(module, [])
    assert cycles == []


def test_the_zoo_is_test_material_not_in_the_checks_package():
    assert not list((REPO / "checks").rglob("*zoo*"))
    assert (REPO / "tests" / "zoo" / "catalogue.py").is_file()
