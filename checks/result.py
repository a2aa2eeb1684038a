"""CheckResult, Verdict, Figure, and the stage runner.

A check is a plain function `check(pipeline) -> CheckResult` that keeps no state and prints
nothing. The measured value is kept apart from the verdict: every result carries the number, the
threshold it was compared with, and a message saying what was measured, what it means and, on a
failure, the likely causes and fixes. Only the runner catches exceptions, turning them into ERROR.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable

STAGES = ("data", "skeleton", "baselines")


class Verdict(str, Enum):
    PASS = "PASS"
    WARN = "WARN"    # worth a look, does not block training
    FAIL = "FAIL"
    ERROR = "ERROR"  # the check itself crashed
    SKIP = "SKIP"    # blocked by an earlier stage

    @property
    def severity(self) -> int:
        return {"PASS": 0, "SKIP": 1, "WARN": 2, "FAIL": 3, "ERROR": 4}[self.value]

    @property
    def blocks(self) -> bool:
        return self in (Verdict.FAIL, Verdict.ERROR)


@dataclass
class Figure:
    """Data for one figure; `checks/report/figures.py` draws it. Check code never touches matplotlib.

    kinds and their `data`:
      images:    images (N, H, W) array-like, captions [str]*N, optional cmap ("gray" | "signed")
      lines:     series {name: [y, ...]}, optional x [..], xlabel, ylabel, hline (float)
      bars:      categories [str], series {name: [value per category]}, optional ylabel, hline
      histogram: values (1-D array-like), optional bins, xlabel
      matrix:    values (R, C) array-like, rows [str], cols [str], optional xlabel, ylabel
    """
    kind: str
    title: str
    data: dict[str, Any]


@dataclass
class CheckResult:
    name: str
    stage: str
    verdict: Verdict
    value: float | None        # what was measured
    threshold: float | None    # what it was compared with
    comparison: str            # how: "<=", ">=", "==", or "" when there is no single threshold
    message: str               # what was measured, what it means; causes and fixes when it fails
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # small tables (lists of dicts) and extra numbers
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The stable results.json form (figures are rendered into the report, not stored here)."""
        row = asdict(self)
        row.pop("figures")
        row["verdict"] = self.verdict.value
        return row


def measured(name: str, stage: str, value: float, threshold: float, comparison: str, ok_message: str,
             fail_message: str, *, warn: bool = False, **extra: Any) -> CheckResult:
    """A result whose verdict follows from `value <comparison> threshold`.

    `warn=True` turns a miss into WARN instead of FAIL (for soft expectations).
    """
    passed = {"<=": value <= threshold, ">=": value >= threshold, "<": value < threshold,
              ">": value > threshold, "==": value == threshold}[comparison]
    verdict = Verdict.PASS if passed else (Verdict.WARN if warn else Verdict.FAIL)
    return CheckResult(name, stage, verdict, float(value), float(threshold), comparison,
                       ok_message if passed else fail_message, **extra)


def worst(verdicts) -> Verdict:
    verdicts = list(verdicts)
    return max(verdicts, key=lambda v: v.severity) if verdicts else Verdict.PASS


def run_check(check: Callable[..., CheckResult], pipeline: Any, stage: str,
              blocked_by: str | None = None) -> CheckResult:
    """Run one check, timing it; an exception becomes ERROR, a blocked stage becomes SKIP."""
    name = check.__name__
    if blocked_by is not None:
        return CheckResult(name, stage, Verdict.SKIP, None, None, "", f"blocked by {blocked_by}")
    started = time.perf_counter()
    try:
        result = check(pipeline)
    except Exception as err:  # the one place that catches: a crashing check must not stop the others
        frame = traceback.extract_tb(err.__traceback__)[-1]
        result = CheckResult(name, stage, Verdict.ERROR, None, None, "",
                             f"the check crashed: {type(err).__name__}: {err} "
                             f"(at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})")
    result.duration_s = time.perf_counter() - started
    return result


def run_stages(pipeline: Any, checks_by_stage: dict[str, list[Callable[..., CheckResult]]],
               gate: bool = True) -> list[CheckResult]:
    """Run the stages in order. With `gate`, a stage with a FAIL/ERROR SKIPs every later stage."""
    results: list[CheckResult] = []
    blocked_by: str | None = None
    for stage in STAGES:
        stage_results = [run_check(check, pipeline, stage, blocked_by) for check in checks_by_stage.get(stage, [])]
        results.extend(stage_results)
        if gate and blocked_by is None and any(r.verdict.blocks for r in stage_results):
            blocked_by = stage
    return results
