"""The preflight as the CLI uses it: run `pytest checks/` in-process, fingerprint it, find it again.

A preflight's fingerprint names what it vouches for: the pipeline, the data, the config (epochs
excluded: no check depends on them) and the device. `recipe train` trains only on the word of a
passing preflight with the same fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from checks.result import CheckResult, Verdict, worst

CHECKS_DIR = Path(__file__).resolve().parent
PYTEST_USAGE_ERROR = 4


def fingerprint(spec: str, pipeline) -> str:
    config = pipeline.config.as_dict()
    config.pop("epochs", None)
    identity = {"spec": spec, "pipeline": pipeline.name, "data": pipeline.data.source,
                "sizes": [len(pipeline.data.train), len(pipeline.data.val), len(pipeline.data.test)],
                "config": config, "device": pipeline.device.type}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def build_record(results, pipeline, spec: str, timings: dict, training: dict | None = None, forced: bool = False):
    from checks.report.render import build_record as assemble, environment_info

    return assemble(results, pipeline_name=pipeline.name, pipeline_spec=spec, data=pipeline.data,
                    config=pipeline.config, environment=environment_info(pipeline.device, pipeline.config.seed),
                    timings=timings, training=training, forced=forced, fingerprint=fingerprint(spec, pipeline))


def write_run_report(run_dir: Path, results: list[CheckResult], pipeline, spec: str, timings: dict,
                     training: tuple[dict, list] | None = None, forced: bool = False) -> Path:
    """Write index.html, results.json and figures.json for one run (checks, and training if it ran)."""
    from checks.report.render import figures_of, write_report

    summary, training_figures = training if training is not None else (None, None)
    record = build_record(results, pipeline, spec, timings, summary, forced)
    return write_report(run_dir, record, figures_of(results, training_figures))


def find_preflight(report_dir: Path, wanted: str) -> tuple[Path, dict] | None:
    """The newest run folder whose results.json holds checks with fingerprint `wanted`."""
    if not report_dir.is_dir():
        return None
    for run_dir in sorted((p for p in report_dir.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True):
        try:
            record = json.loads((run_dir / "results.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("fingerprint") == wanted and record.get("checks"):
            return run_dir, record
    return None


def passed(verdicts) -> bool:
    return not worst(Verdict(v) if isinstance(v, str) else v for v in verdicts).blocks


@dataclass
class PreflightOutcome:
    exit_code: int                    # pytest's
    results: list[CheckResult] = field(default_factory=list)
    pipeline: object = None
    data_load_s: float = 0.0
    checks_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and bool(self.results) and passed(r.verdict for r in self.results)


class _Collector:
    """A pytest plugin that hands the caller's pipeline to the session and its results back."""

    def __init__(self, pipeline=None, data_load_s: float = 0.0):
        self.prebuilt_pipeline = pipeline  # read by checks/conftest.py instead of loading the data again
        self.data_load_s = data_load_s
        self.state = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        from checks.conftest import RESULTS_KEY

        self.state = session.config.stash.get(RESULTS_KEY, None)


def run_preflight(options: list[str], quiet: bool = False, pipeline=None, data_load_s: float = 0.0) -> PreflightOutcome:
    """Run `pytest checks/ <options>` in this process; `options` are the conftest's (--pipeline, ...).

    A `pipeline` already built from the same options is used as is (the data is loaded once).
    """
    collector = _Collector(pipeline, data_load_s)
    args = [str(CHECKS_DIR), "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(CHECKS_DIR),
            *(["-p", "no:terminal"] if quiet else ["-q"]), *options]  # usage errors still print
    exit_code = int(pytest.main(args, plugins=[collector]))
    state = collector.state
    if state is None:
        return PreflightOutcome(exit_code)
    return PreflightOutcome(exit_code, list(state.results), state.pipeline, state.data_load_s,
                            sum(r.duration_s for r in state.results))
