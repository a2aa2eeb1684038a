"""pytest wiring for the preflight: options, the session's pipeline, gating, and result collection.

`pytest checks/` runs every check in `checks.registry` on the pipeline named by `--pipeline`
(default: the recipe's linear classifier) as one test each. FAIL/ERROR fail the test, WARN warns,
SKIP skips ("blocked by <stage>"). The results are kept in `config.stash` and written as a report
once, at session finish.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields

import pytest
import torch

from checks.result import STAGES, CheckResult, Verdict, run_check

RESULTS_KEY = pytest.StashKey["PreflightState"]()


@dataclass
class PreflightState:
    pipeline: object = None
    spec: str = ""
    data_load_s: float = 0.0
    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    report_path: object = None
    data_reported_by_caller: bool = False  # the CLI already said which data it loaded


def pytest_addoption(parser: pytest.Parser) -> None:
    from recipe.options import data_options, training_options

    group = parser.getgroup("recipe", "recipe preflight checks")
    for flag, spec in data_options() + training_options():
        group.addoption(flag, **spec)
    group.addoption("--no-report", action="store_true", help="do not write a report")
    group.addoption("--run-dir", default=None, help=argparse_suppress())
    group.addoption("--no-gate", action="store_true", help="run later stages even if an earlier stage FAILed")


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS  # --run-dir: the CLI's way to put the preflight into its own run folder


def pytest_configure(config: pytest.Config) -> None:
    for stage in STAGES:
        config.addinivalue_line("markers", f"{stage}: checks of the '{stage}' stage")
    config.stash[RESULTS_KEY] = PreflightState(spec=config.getoption("--pipeline"))


def build_session_pipeline(config: pytest.Config):
    """Load the data once and build the pipeline; a user error becomes one clear usage line."""
    from recipe.config import TrainConfig
    from recipe.data import load_data
    from recipe.errors import RecipeError
    from recipe.pipeline import make_pipeline, resolve_device

    state = config.stash[RESULTS_KEY]
    for plugin in config.pluginmanager.get_plugins():  # `recipe check/run/train` built it already
        if getattr(plugin, "prebuilt_pipeline", None) is not None:
            state.pipeline, state.data_load_s = plugin.prebuilt_pipeline, plugin.data_load_s
            state.data_reported_by_caller = True
            return state.pipeline
    started = time.perf_counter()
    threads = config.getoption("--threads")
    if threads < 1:
        raise pytest.UsageError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        train_config = TrainConfig(**{f.name: config.getoption(f"--{f.name.replace('_', '-')}")
                                      for f in fields(TrainConfig)})
        device = resolve_device(config.getoption("--device"))
        data = load_data(config.getoption("--data"), config.getoption("--data-dir"), device,
                         download=not config.getoption("--no-download"))
        state.pipeline = make_pipeline(state.spec, train_config, data)
    except RecipeError as err:
        raise pytest.UsageError(str(err)) from None
    state.data_load_s = time.perf_counter() - started
    return state.pipeline


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.items and not session.config.option.collectonly:
        build_session_pipeline(session.config)


@pytest.fixture(scope="session")
def pipeline(request: pytest.FixtureRequest):
    state = request.config.stash[RESULTS_KEY]
    return state.pipeline if state.pipeline is not None else build_session_pipeline(request.config)


def blocking_stage(results: list[CheckResult], stage: str) -> str | None:
    """The first stage before `stage` with a FAIL or ERROR, if any."""
    earlier = STAGES[:STAGES.index(stage)]
    for candidate in earlier:
        if any(r.stage == candidate and r.verdict.blocks for r in results):
            return candidate
    return None


@pytest.fixture
def preflight(request: pytest.FixtureRequest, pipeline):
    """Run one check through the runner, record it, and turn its verdict into the test outcome."""
    state = request.config.stash[RESULTS_KEY]
    gate = not request.config.getoption("--no-gate")

    def run(check, stage: str) -> CheckResult:
        blocked_by = blocking_stage(state.results, stage) if gate else None
        result = run_check(check, pipeline, stage, blocked_by)
        state.results.append(result)
        summary = f"{result.name}: {result.message}"
        if result.verdict is Verdict.SKIP:
            pytest.skip(result.message)
        if result.verdict.blocks:
            pytest.fail(f"{result.verdict.value} {summary}", pytrace=False)
        if result.verdict is Verdict.WARN:
            warnings.warn(summary, UserWarning, stacklevel=1)
        return result

    return run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(RESULTS_KEY, None)
    if state is None or not state.results or session.config.getoption("--no-report"):
        return
    from checks.session_report import write_preflight_report

    state.report_path = write_preflight_report(session.config, state)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(RESULTS_KEY, None)
    if state is None or state.pipeline is None:
        return
    if not state.data_reported_by_caller:
        data = state.pipeline.data
        terminalreporter.write_line(f"data: {data.source} ({len(data.train)} train / {len(data.val)} val / "
                                    f"{len(data.test)} test) - {data.reason}")
    if state.report_path is not None:
        terminalreporter.write_line(f"preflight report: {state.report_path}")
