"""The report a `pytest checks/` session leaves behind (written once, at session finish)."""
from __future__ import annotations

import time
from pathlib import Path

from checks.preflight import write_run_report
from recipe.runs import new_run_dir, point_latest


def write_preflight_report(config, state) -> Path | None:
    if state.pipeline is None:
        return None
    report_dir = Path(config.getoption("--report-dir"))
    chosen = config.getoption("--run-dir")
    run_dir = Path(chosen) if chosen else new_run_dir(report_dir)
    checks_s = sum(r.duration_s for r in state.results)
    timings = {"data_load_s": state.data_load_s, "checks_s": checks_s,
               "total_s": time.perf_counter() - state.started}
    path = write_run_report(run_dir, state.results, state.pipeline, state.spec, timings)
    if not chosen:
        point_latest(report_dir, run_dir)
    return path
