"""pytest wiring for the preflight: a thin shim over checks/engine/runner.py and checks/engine/preflight.py.

`pytest checks/` builds the pipeline named by `--pipeline` (default: the recipe's linear
classifier) once, then streams the one runner's results: each test takes its check's result as the
runner produces it, in stage order, with the runner's stage gate. FAIL/ERROR fail the test, WARN
warns, SKIP skips ("blocked by <stage>"). A `-k`/`-m` selection runs only those checks; its report
says "partial" and it can never open the training gate. The report is written once, at session
finish, by the same function the CLI uses.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields
from typing import Iterator

import pytest

from checks.engine.registry import CHECKS
from checks.engine.result import STAGES, CheckResult, Verdict

RESULTS_KEY = pytest.StashKey["PreflightState"]()


@dataclass
class PreflightState:
    spec: str = ""
    pipeline: object = None
    data_load_s: float = 0.0
    only: list[str] | None = None          # the -k/-m selection, or None for every check
    stream: Iterator[CheckResult] | None = None
    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    report_path: object = None

    def result_for(self, name: str) -> CheckResult:
        """Advance the runner until it has produced `name`'s result."""
        for result in self.results:
            if result.name == name:
                return result
        for result in self.stream:
            self.results.append(result)
            if result.name == name:
                return result
        raise LookupError(f"the runner produced no result for {name}")


def pytest_addoption(parser: pytest.Parser) -> None:
    from recipe.options import data_options, training_options

    group = parser.getgroup("recipe", "recipe preflight checks")
    for flag, spec in data_options() + training_options():
        group.addoption(flag, **spec)
    group.addoption("--no-report", action="store_true", help="do not write a report")
    group.addoption("--no-gate", action="store_true", help="run later stages even if an earlier stage FAILed")


def pytest_configure(config: pytest.Config) -> None:
    for stage in STAGES:
        config.addinivalue_line("markers", f"{stage}: checks of the '{stage}' stage")
    config.stash[RESULTS_KEY] = PreflightState(spec=config.getoption("--pipeline"))


def build_session_pipeline(config: pytest.Config):
    """Load the data once and build the pipeline; a user error becomes one clear usage line."""
    import torch

    from recipe.config import TrainConfig
    from recipe.all_sources import load_source
    from recipe.errors import RecipeError
    from recipe.pipeline import resolve_device
    from recipe.user_code import make_pipeline, pipeline_spec_for

    state = config.stash[RESULTS_KEY]
    started = time.perf_counter()
    threads = config.getoption("--threads")
    if threads < 1:
        raise pytest.UsageError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        train_config = TrainConfig(**{f.name: config.getoption(f"--{f.name.replace('_', '-')}")
                                      for f in fields(TrainConfig)})
        device = resolve_device(config.getoption("--device"))
        data = load_source(config.getoption("--data"), config.getoption("--data-dir"), device,
                         download=not config.getoption("--no-download"))
        state.spec = pipeline_spec_for(state.spec, data)  # token data on the default pipeline: the tiny GPT
        state.pipeline = make_pipeline(state.spec, train_config, data)
    except RecipeError as err:
        raise pytest.UsageError(str(err)) from None
    state.data_load_s = time.perf_counter() - started
    return state.pipeline


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.items or session.config.option.collectonly:
        return
    from checks.engine.runner import iter_results

    state = session.config.stash[RESULTS_KEY]
    selected = [item.callspec.params["name"] for item in session.items
                if hasattr(item, "callspec") and "name" in item.callspec.params]
    state.only = None if set(selected) >= set(CHECKS) else selected
    from recipe.errors import RecipeError

    build_session_pipeline(session.config)
    try:
        state.stream = iter_results(state.pipeline, gate=not session.config.getoption("--no-gate"), only=state.only,
                                    fork=True)  # the data stage beside the others, where a fork is safe
    except RecipeError as err:  # the pipeline breaks its contract: one usage line, no check runs
        raise pytest.UsageError(str(err)) from None


@pytest.fixture
def preflight(request: pytest.FixtureRequest):
    """Take one check's result from the runner and turn its verdict into the test outcome."""
    state = request.config.stash[RESULTS_KEY]

    def outcome(name: str) -> CheckResult:
        result = state.result_for(name)
        summary = f"{result.name}: {result.message}"
        if result.verdict is Verdict.SKIP:
            pytest.skip(result.message)
        if result.verdict is Verdict.NA:  # does not apply: a skip with the reason, never a failure
            pytest.skip(f"N/A: {result.message}")
        if result.verdict.blocks:
            pytest.fail(f"{result.verdict.value} {summary}", pytrace=False)
        if result.verdict is Verdict.WARN:
            warnings.warn(summary, UserWarning, stacklevel=1)
        return result

    return outcome


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach each check's verdict, value, threshold and message to the JUnit XML as properties.

    On the item, like the `record_property` fixture: --junitxml writes the properties of the
    teardown report, which copies them from the item."""
    if call.when != "call" or not hasattr(item, "callspec") or "name" not in item.callspec.params:
        return
    state = item.config.stash[RESULTS_KEY]
    result = next((r for r in state.results if r.name == item.callspec.params["name"]), None)
    if result is not None:
        item.user_properties += [("verdict", result.verdict.value), ("value", result.value),
                                 ("threshold", result.threshold), ("comparison", result.comparison),
                                 ("message", result.message)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(RESULTS_KEY, None)
    if state is None or state.pipeline is None or not state.results or session.config.getoption("--no-report"):
        return
    from pathlib import Path

    from checks.engine.preflight import identify, Preflight, write_run_report
    from recipe.runs import run_folder

    preflight = Preflight(list(state.results), state.spec, identify(state.spec, state.pipeline),
                          sum(r.duration_s for r in state.results))
    timings = {"data_load_s": state.data_load_s, "checks_s": preflight.checks_s,
               "total_s": time.perf_counter() - state.started}
    with run_folder(Path(session.config.getoption("--report-dir"))) as run:  # seen, and `latest`, once complete
        write_run_report(run.path, preflight, state.pipeline, timings)
    state.report_path = run.final / "index.html"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(RESULTS_KEY, None)
    if state is None or state.pipeline is None:
        return
    data = state.pipeline.data
    terminalreporter.write_line(f"data: {data.source} ({len(data.train)} train / {len(data.val)} val / "
                                f"{len(data.test)} test) - {data.reason}")
    if state.only is not None:
        terminalreporter.write_line(f"partial preflight: {len(state.results)} of {len(CHECKS)} checks; it cannot "
                                    "open the training gate (run every check for that)")
    if state.report_path is not None:
        terminalreporter.write_line(f"preflight report: {state.report_path}")
