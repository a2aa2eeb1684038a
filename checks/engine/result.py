"""CheckResult, Verdict and Figure: what a check returns (checks/engine/runner.py runs them).

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
    NA = "N/A"       # the check does not apply to this pipeline (e.g. augmentation is off)

    @property
    def severity(self) -> int:
        # N/A ranks below PASS: a check that does not apply must not turn an all-PASS run into "N/A".
        return {"N/A": -1, "PASS": 0, "SKIP": 1, "WARN": 2, "FAIL": 3, "ERROR": 4}[self.value]

    @property
    def blocks(self) -> bool:
        return self in (Verdict.FAIL, Verdict.ERROR)


@dataclass
class Figure:
    """Data for one figure; `checks/report/figures.py` draws it. Check code never touches matplotlib.

    kinds and their `data`:
      images:    images (N, H, W) or (N, C, H, W) array-like: uint8 0..255 or float in [0, 1] (3 channels
                 drawn in colour, else the first in grey, stretched per image), captions [str]*N,
                 optional cmap ("gray" | "signed"), ncols
      lines:     series {name: [y, ...]}, optional x [..], xlabel, ylabel, hline (float)
      bars:      categories [str], series {name: [value per category]}, optional ylabel, hline
      histogram: values (1-D array-like), optional bins, xlabel
      matrix:    values (R, C) array-like, rows [str], cols [str], optional xlabel, ylabel
      text:      lines [str] (decoded samples), drawn one a row in a fixed-width font
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


def holds(value: float, comparison: str, threshold: float) -> bool:
    """Whether `value <comparison> threshold` (NaN never holds)."""
    return {"<=": value <= threshold, ">=": value >= threshold, "<": value < threshold,
            ">": value > threshold, "==": value == threshold}[comparison]


def measured(name: str, stage: str, value: float, threshold: float, comparison: str, ok_message: str,
             fail_message: str, *, warn_threshold: float | None = None, warn_message: str = "",
             **extra: Any) -> CheckResult:
    """A result whose verdict follows from `value <comparison> threshold`: PASS when it holds, FAIL when not.

    The rule every result keeps (tests/test_verdicts.py): the shown comparison holds exactly when
    the verdict does not block. `warn_threshold`, a stricter limit on the same side, turns a value
    that meets `threshold` but not `warn_threshold` into WARN; the shown threshold stays the
    blocking one, and the crossed soft limit goes into `details["warn_threshold"]` and the message.
    """
    if not holds(value, comparison, threshold):
        verdict, message = Verdict.FAIL, fail_message
    elif warn_threshold is not None and not holds(value, comparison, warn_threshold):
        verdict, message = Verdict.WARN, warn_message
    else:
        verdict, message = Verdict.PASS, ok_message
    if warn_threshold is not None:
        extra["details"] = {**extra.get("details", {}), "warn_threshold": warn_threshold}
    return CheckResult(name, stage, verdict, float(value), float(threshold), comparison, message, **extra)


def not_applicable(name: str, stage: str, why: str, **extra: Any) -> CheckResult:
    """N/A: the check has nothing to judge on this pipeline (not a PASS, and never blocking)."""
    return CheckResult(name, stage, Verdict.NA, None, None, "", why, **extra)


def worst(verdicts) -> Verdict:
    verdicts = list(verdicts)
    return max(verdicts, key=lambda v: v.severity) if verdicts else Verdict.PASS
