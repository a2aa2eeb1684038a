"""Part 3: `recipe check` end to end on full Fashion-MNIST, data load and report included.

Per-check durations come from the run folder's results.json
(`checks: [{name, stage, verdict, duration_s, ...}]`), so each check's share of the wall time is
what the check runner itself measured.
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from bench.measure import Row, median

TARGET_S = 10.0


def check_available() -> bool:
    """Whether `recipe` has a `check` subcommand yet."""
    import argparse

    from checks.cli.parser import build_parser

    return any(isinstance(action, argparse._SubParsersAction) and "check" in action.choices
               for action in build_parser()._actions)


def _results_json(report_dir: Path) -> Path | None:
    found = sorted(p for p in report_dir.glob("*/results.json") if p.parent.name != "latest")
    return found[-1] if found else None


def run_once(device: str) -> tuple[float, int, list[dict]]:
    from checks.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["check", "--data", "fashion-mnist", "--quiet", "--report-dir", tmp]
        if device != "cpu":
            argv += ["--device", device]
        out = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        seconds = time.perf_counter() - started
        path = _results_json(Path(tmp))
        checks = json.loads(path.read_text()).get("checks", []) if path else []
    return seconds, code, checks


def run(device: str, repeats: int) -> dict:
    if not check_available():
        print("preflight: skipped: recipe check not available")
        return {"skipped": "recipe check not available",
                "rows": [Row("preflight", "skipped: recipe check not available", None, "")]}
    runs = [run_once(device) for _ in range(repeats)]
    wall = median([seconds for seconds, _, _ in runs])
    codes = [code for _, code, _ in runs]
    # per-check shares from the run whose wall time is the median one
    seconds, _, checks = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    rows = [Row("preflight", "recipe check (end to end)", wall, "s", target=f"<= {TARGET_S:g} s",
                met=wall <= TARGET_S, note=f"exit codes {codes}; {len(checks)} checks")]
    in_checks = 0.0
    for check in sorted(checks, key=lambda c: -(c.get("duration_s") or 0)):
        duration = check.get("duration_s") or 0.0
        in_checks += duration
        rows.append(Row("preflight", f"  {check.get('stage', '?')}/{check.get('name', '?')}", duration, "s",
                        note=f"{100 * duration / seconds:.1f}% of the run, {check.get('verdict', '?')}"))
    rows.append(Row("preflight", "  outside checks (data load, pytest, report)", seconds - in_checks, "s",
                    note=f"{100 * (seconds - in_checks) / seconds:.1f}% of the run"))
    return {"rows": rows, "wall_s": [s for s, _, _ in runs], "exit_codes": codes, "checks": checks}
