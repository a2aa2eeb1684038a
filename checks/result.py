"""CheckResult, Verdict and Figure: what a check returns (checks/runner.py runs them).

A check is a plain function `check(pipeline) -> CheckResult` that keeps no state and prints
nothing. The measured value is kept apart from the verdict: every result carries the number, the
threshold it was compared with, and a message saying what was measured, what it means and, on a
failure, the likely causes and fixes. Only the runner catches exceptions, turning them into ERROR.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

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
