"""The one training gate: may `recipe train` train on the word of an earlier preflight?

Only a complete preflight (every registered check ran: no -k/-m subset) whose fingerprint matches
what would train now (the user's code, the harness, the data bytes, the config, the device) counts.
If it passed, training may start; if it failed, training is refused with the failing checks named
and the command that re-runs them. Anything else (no preflight, a partial one, changed code or
data) means a new preflight must run first.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from checks.engine.result import Verdict, worst
from checks.engine.runner import is_complete
from recipe.runs import run_dirs


@dataclass
class Earlier:
    run_dir: Path
    record: dict

    @property
    def passed(self) -> bool:
        checks = self.record.get("checks") or []
        return bool(checks) and not worst(Verdict(c["verdict"]) for c in checks).blocks

    @property
    def failing(self) -> list[dict]:
        return [c for c in self.record.get("checks") or [] if Verdict(c["verdict"]).blocks]

    def summary(self) -> dict:
        """What a train report shows of the preflight it relied on."""
        return {"run_dir": str(self.run_dir), "overall": self.record.get("overall"),
                "created_utc": self.record.get("created_utc"),
                "checks": [{"name": c["name"], "stage": c["stage"], "verdict": c["verdict"]}
                           for c in self.record.get("checks") or []]}


def _records(report_dir: Path):
    for run_dir in run_dirs(report_dir):  # published runs only: a `.partial` one is still being written
        try:
            record = json.loads((run_dir / "results.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("checks"):
            yield run_dir, record


def complete_record(record: dict) -> bool:
    return is_complete(c.get("name") for c in record.get("checks") or [])


def find_preflight(report_dir: Path, wanted: str) -> Earlier | None:
    """The newest complete preflight in `report_dir` with fingerprint `wanted`."""
    for run_dir, record in _records(Path(report_dir)):
        if record.get("fingerprint") == wanted and complete_record(record):
            return Earlier(run_dir, record)
    return None


def newest_for_pipeline(report_dir: Path, spec: str) -> Earlier | None:
    """The newest complete preflight of the same pipeline spec, whatever its fingerprint (to say what changed)."""
    for run_dir, record in _records(Path(report_dir)):
        if (record.get("pipeline") or {}).get("spec") == spec and complete_record(record):
            return Earlier(run_dir, record)
    return None


def refusal(earlier: Earlier, rerun: str) -> str:
    """One line: why training will not start, which checks failed, and how to re-check."""
    names = ", ".join(f"{c['name']} ({c['verdict']})" for c in earlier.failing) or "?"
    return (f"the preflight FAILED, so training will not start: {earlier.run_dir} failed on this same code, data "
            f"and config: {names}. Fix them and "
            f"run `recipe train` again (changed code or data is re-checked automatically), re-run the checks with "
            f"`{rerun}`, or pass --force")
