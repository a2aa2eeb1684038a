"""Placeholder until the report layer lands: writes results.json for a pytest preflight run."""
from __future__ import annotations

import json
from pathlib import Path

from recipe.files import atomic_write_text
from recipe.runs import new_run_dir, point_latest


def write_preflight_report(config, state) -> Path:
    report_dir = Path(config.getoption("--report-dir"))
    run_dir = new_run_dir(report_dir)
    record = {"checks": [r.to_json() for r in state.results]}
    path = atomic_write_text(run_dir / "results.json", json.dumps(record, indent=2, default=str))
    point_latest(report_dir, run_dir)
    return path
