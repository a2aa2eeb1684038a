"""The dependency rule, checked on the source (imports inside functions included: a lazy import is
still a dependency). Folders layer one way: the library recipe/, then the harness checks/, then the
command line checks/cli/ on top:

- recipe/ never imports checks/;
- the engine (checks/engine/) reaches the stage folders only through its registry;
- the report (checks/report/) imports no stage folder and no measurement code: it runs no model;
- nothing in recipe/ or the rest of checks/ imports the command line (checks/cli/);
- no module of recipe/ or checks/ is part of an import cycle;
- no module is over MAX_LINES lines; the zoo is not shipped in checks/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("recipe", "checks")
STAGES = ("checks.data", "checks.skeleton", "checks.baselines", "checks.training")  # one folder per stage
MEASURE = "checks.measure"  # the measurement code the checks share (it trains short runs)
CLI = "checks.cli"
PYTEST_SHIM = ("conftest.py", "test_preflight.py", "pytest_plugin.py")
MAX_LINES = 320  # modules read top to bottom in one pass (docs/STYLE: about 300 lines)


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


def within(module: str, *folders: str) -> bool:
    return any(module == folder or module.startswith(folder + ".") for folder in folders)


def offenders(graph, importer, imported) -> dict[str, list[str]]:
    """{module: the modules it imports that it must not}, for the modules `importer` selects."""
    found = {m: sorted(d for d in deps if imported(d)) for m, deps in graph.items() if importer(m)}
    return {m: deps for m, deps in found.items() if deps}


def test_recipe_never_imports_checks(graph):
    assert offenders(graph, lambda m: within(m, "recipe"), lambda d: within(d, "checks")) == {}


def test_the_engine_reaches_the_stages_only_through_the_registry(graph):
    engine = lambda m: within(m, "checks.engine") and m != "checks.engine.registry"  # noqa: E731
    assert offenders(graph, engine, lambda d: within(d, *STAGES)) == {}


def test_the_report_runs_no_model(graph):
    """It turns results into files: it imports no check and no code that trains (the measurements)."""
    assert offenders(graph, lambda m: within(m, "checks.report"), lambda d: within(d, *STAGES, MEASURE)) == {}


def test_the_measurements_sit_below_the_stages(graph):
    """checks/measure/ is what the checks share (batches, reference runs, probes): it judges nothing, so it
    imports no stage folder, and every stage may use it."""
    assert offenders(graph, lambda m: within(m, MEASURE), lambda d: within(d, *STAGES)) == {}


def test_the_command_line_is_on_top(graph):
    """checks/cli/ is the composition root: it imports every part, and no part imports it."""
    assert offenders(graph, lambda m: not within(m, CLI), lambda d: within(d, CLI)) == {}
    everything = set().union(*(graph[m] for m in graph if within(m, CLI)))
    assert {"checks.engine.preflight", "checks.engine.gate", "checks.report.render", "recipe.train"} <= everything


def test_checks_top_level_holds_only_the_pytest_shim():
    """Checks go in a stage folder, the rest in engine/, measure/, report/ or cli/: nothing loose."""
    loose = {p.name for p in (REPO / "checks").glob("*.py")} - {"__init__.py", *PYTEST_SHIM}
    assert loose == set()
    assert {"data", "skeleton", "baselines", "training", "engine", "measure", "report", "cli"} <= {
        p.name for p in (REPO / "checks").iterdir() if (p / "__init__.py").is_file()}


def test_no_module_is_over_max_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
               for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    too_long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert too_long == {}


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


def test_no_child_is_started_with_a_preexec_fn():
    """preexec_fn runs Python between fork and exec; in a multi-threaded process (a pytest-xdist worker, a
    torch program) the subprocess docs warn it may deadlock, and Popen then waits for the exec forever.
    Children that must take Ctrl-C restore SIGINT after exec (tests/conftest.py: interruptible_cli).
    tests/test_ctrl_c_hang.py uses one on purpose, in a parent of its own, to reproduce the hang."""
    exempt = {"test_architecture.py", "test_ctrl_c_hang.py"}
    users = [str(path.relative_to(REPO)) for folder in ("recipe", "checks", "tests", "bench") for path in
             (REPO / folder).rglob("*.py") if "preexec_fn=" in path.read_text() and path.name not in exempt]
    assert users == []


def test_a_missing_system_package_skips_locally_and_fails_in_ci(monkeypatch):
    """The Fashion-MNIST and chromium tests cannot pass CI by skipping: .ci/run sets RECIPE_CI=1."""
    from tests.conftest import needs_system_package

    monkeypatch.delenv("RECIPE_CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        needs_system_package("no chromium")
    monkeypatch.setenv("RECIPE_CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no chromium"):
        needs_system_package("no chromium")
    assert "export RECIPE_CI=1" in (REPO / ".ci" / "run").read_text()
