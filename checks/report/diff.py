"""Compare two runs from their stored results.json (`recipe diff RUN_A RUN_B`); nothing is re-run.

What a reviewer asks of two runs: which verdicts flipped (and whether any got worse, which is what
CI gates on), which measured values moved by more than run-to-run noise, how the accuracy and the
time changed, and what differs between them (code, data, config, device).

Noise: a check's value has *moved* when it changed by more than `noise` (default 10%) of the larger
of the two values *and* by more than 1% of the check's threshold (when it has a non-zero one).
The second rule keeps values that sit near zero, such as a leak rate of 0.000 vs 0.0002 against a
threshold of 0.05, from counting as moves. Two accuracies differ beyond noise only when their 95%
Wilson intervals do not overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from checks.engine.result import Verdict
from recipe.errors import RecipeError

THRESHOLD_SHARE = 0.01  # a move must also exceed 1% of the check's threshold
TIMINGS = ("total_s", "data_load_s", "checks_s", "training_s")
MONITOR_STAGE = "training"  # the stage of the training monitors (checks/training/monitor_checks.py)


@dataclass
class RunDiff:
    a: Path
    b: Path
    noise: float
    differs: list[str] = field(default_factory=list)    # "config: lr 0.001 -> 0.01", "code", ...
    worse: list[dict] = field(default_factory=list)     # {"name", "stage", "a", "b"}: verdict flips, worse
    better: list[dict] = field(default_factory=list)
    moved: list[dict] = field(default_factory=list)     # {"name", "stage", "a", "b", "threshold"}
    only_a: list[str] = field(default_factory=list)     # checks that ran in one run only (a -k subset)
    only_b: list[str] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)  # {"what", "a", "b", "ci_a", "ci_b", "overlap"}
    timings: list[dict] = field(default_factory=list)   # {"what", "a", "b"}

    @property
    def got_worse(self) -> bool:
        return bool(self.worse)


def resolve_run(name: str, report_dir: Path) -> Path:
    """A run folder given as a path, or as a name inside `report_dir` ("latest", "20260101T...Z")."""
    for candidate in (Path(name), Path(report_dir) / name):
        if candidate.is_dir():
            return candidate.resolve()
    raise RecipeError(f"no run folder {name!r} (looked at {name} and {Path(report_dir) / name})")


def compare(a: Mapping[str, Any], b: Mapping[str, Any], a_dir: Path, b_dir: Path, noise: float = 0.10) -> RunDiff:
    """The differences between two results.json records, `a` the earlier run."""
    if not 0 < noise < 1:
        raise RecipeError(f"--noise must be between 0 and 1, got {noise}")
    diff = RunDiff(Path(a_dir), Path(b_dir), noise, differs=_what_differs(a, b))
    checks_a, checks_b = _results(a), _results(b)
    # a monitor missing from a run that did not train (or ran --no-monitors) is no "subset" to report
    diff.only_a = [n for n, c in checks_a.items() if n not in checks_b and c.get("stage") != MONITOR_STAGE]
    diff.only_b = [n for n, c in checks_b.items() if n not in checks_a and c.get("stage") != MONITOR_STAGE]
    for name, old in checks_a.items():
        new = checks_b.get(name)
        if new is None:
            continue
        row = {"name": name, "stage": new.get("stage", old.get("stage")), "a": old.get("verdict"),
               "b": new.get("verdict"), "value_a": old.get("value"), "value_b": new.get("value"),
               "threshold": new.get("threshold")}
        if _severity(row["b"]) > _severity(row["a"]):
            diff.worse.append(row)
        elif _severity(row["b"]) < _severity(row["a"]):
            diff.better.append(row)
        if moved(old.get("value"), new.get("value"), new.get("threshold"), noise):
            diff.moved.append(row)
    diff.accuracy = _accuracy(a.get("training"), b.get("training"))
    timings_a, timings_b = a.get("timings") or {}, b.get("timings") or {}
    diff.timings = [{"what": key, "a": timings_a.get(key), "b": timings_b.get(key)} for key in TIMINGS
                    if _number(timings_a.get(key)) is not None or _number(timings_b.get(key)) is not None]
    return diff


def comparison_block(previous_dir: Path, previous: Mapping[str, Any], record: Mapping[str, Any],
                     noise: float = 0.10) -> dict[str, Any]:
    """results.json's `compared_with`: this run against the previous complete preflight of the same
    pipeline, as `recipe diff` would show it (the report's "Compared with the previous run")."""
    diff = compare(previous, record, Path(previous_dir), Path("."), noise)
    return {"run_dir": str(previous_dir), "created_utc": previous.get("created_utc"),
            "overall": previous.get("overall"), "noise": noise, "differs": diff.differs,
            "worse": diff.worse, "better": diff.better, "moved": diff.moved, "accuracy": diff.accuracy,
            "timings": diff.timings}


def moved(a: Any, b: Any, threshold: Any = None, noise: float = 0.10) -> bool:
    """Whether a measured value changed by more than run-to-run noise (see the module docstring)."""
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return a != b and (x is not None or y is not None)  # NaN appeared, or a value vanished
    change = abs(y - x)
    limit = _number(threshold)
    floor = THRESHOLD_SHARE * abs(limit) if limit else 1e-12
    return change > noise * max(abs(x), abs(y)) and change > floor


def format_diff(diff: RunDiff, a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    lines = [f"A: {diff.a}  ({_describe(a)})", f"B: {diff.b}  ({_describe(b)})"]
    lines.append("what differs: " + ("; ".join(diff.differs) if diff.differs else "nothing recorded "
                                     "(same code, data, config and device)"))
    for title, rows in (("verdicts that got worse", diff.worse), ("verdicts that got better", diff.better)):
        lines.append(f"{title}: {len(rows)}")
        lines += [f"  {_label(r):<44} {r['a']} -> {r['b']}   value {_num(r['value_a'])} -> "
                  f"{_num(r['value_b'])}" + (f" (threshold {_num(r['threshold'])})" if r["threshold"] is not None else "")
                  for r in rows]
    lines.append(f"values that moved beyond noise (changed by > {diff.noise:.0%} and > {THRESHOLD_SHARE:.0%} of "
                 f"the threshold): {len(diff.moved)}")
    lines += [f"  {_label(r):<44} {_num(r['value_a'])} -> {_num(r['value_b'])}"
              + (f" (threshold {_num(r['threshold'])})" if r["threshold"] is not None else "") for r in diff.moved]
    if diff.only_a or diff.only_b:
        lines.append(f"checks in one run only: A {', '.join(diff.only_a) or '-'}; B {', '.join(diff.only_b) or '-'}")
    if diff.accuracy:
        lines.append("accuracy:")
        for r in diff.accuracy:
            verdict = "" if r["a"] is None or r["b"] is None else (
                "  (95% intervals overlap: may be noise)" if r["overlap"] else "  (95% intervals apart)")
            lines.append(f"  {r['what']:<14} {_pct(r['a'], r['ci_a'])} -> {_pct(r['b'], r['ci_b'])}"
                         + (f"  {100 * (r['b'] - r['a']):+.1f} points" if None not in (r["a"], r["b"]) else "")
                         + verdict)
    if diff.timings:
        lines.append("time:")
        for r in diff.timings:
            x, y = _number(r["a"]), _number(r["b"])
            ratio = f"  x{y / x:.2f}" if x and y is not None else ""
            lines.append(f"  {r['what']:<14} {_seconds(x)} -> {_seconds(y)}{ratio}")
    lines.append(f"result: {len(diff.worse)} verdict(s) got worse" if diff.worse else "result: no verdict got worse")
    return "\n".join(lines)


# ---------------------------------------------------------------- pieces

def _results(record: Mapping[str, Any]) -> dict[str, dict]:
    """The checks and the training monitors (stage "training") of one record, by name."""
    training = record.get("training")
    monitors = training.get("monitors") if isinstance(training, Mapping) else None
    return {c["name"]: c for c in [*(record.get("checks") or []), *(monitors or [])]}


def _severity(verdict: Any) -> int:
    """How bad a verdict is, for "got worse": N/A counts as PASS (a check that starts or stops applying,
    say once augmentation is switched on, has not got worse or better)."""
    try:
        return max(Verdict(verdict).severity, 0)
    except ValueError:  # a verdict this version does not know: never counted as a change
        return 0


def _what_differs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    found = []
    pa, pb = a.get("pipeline") or {}, b.get("pipeline") or {}
    if pa.get("spec") != pb.get("spec"):
        found.append(f"pipeline {pa.get('spec')} -> {pb.get('spec')}")
    da, db = a.get("data") or {}, b.get("data") or {}
    for key in ("source", "sizes"):
        if da.get(key) != db.get(key):
            found.append(f"data {key} {da.get(key)} -> {db.get(key)}")
    ca, cb = a.get("config") or {}, b.get("config") or {}
    settings = [f"{k} {ca.get(k)} -> {cb.get(k)}" for k in dict.fromkeys([*ca, *cb]) if ca.get(k) != cb.get(k)]
    if settings:
        found.append("config: " + ", ".join(settings))
    fa = (a.get("preflight") or {}).get("fingerprint_parts") or {}
    fb = (b.get("preflight") or {}).get("fingerprint_parts") or {}
    parts = [k for k in fa if k in fb and fa[k] != fb[k] and k not in ("config",)]
    if parts:
        found.append("fingerprint parts changed: " + ", ".join(parts))
    if a.get("forced") != b.get("forced"):
        found.append(f"forced {a.get('forced')} -> {b.get('forced')}")
    return found


def _accuracy(a: Any, b: Any) -> list[dict]:
    rows = []
    for key, what in (("val_accuracy", "val accuracy"), ("test_accuracy", "test accuracy")):
        x = _number((a or {}).get(key)) if isinstance(a, Mapping) else None
        y = _number((b or {}).get(key)) if isinstance(b, Mapping) else None
        if x is None and y is None:
            continue
        ci_a = (a or {}).get(key.replace("accuracy", "ci95")) if isinstance(a, Mapping) else None
        ci_b = (b or {}).get(key.replace("accuracy", "ci95")) if isinstance(b, Mapping) else None
        overlap = bool(ci_a and ci_b and ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1])
        rows.append({"what": what, "a": x, "b": y, "ci_a": ci_a, "ci_b": ci_b, "overlap": overlap})
    return rows


def _label(row: Mapping[str, Any]) -> str:
    return f"{row['stage']}/{row['name']}"


def _describe(record: Mapping[str, Any]) -> str:
    training = record.get("training")
    kind = "check" if training is None else "train"
    data = (record.get("data") or {}).get("source", "?")
    pipeline = (record.get("pipeline") or {}).get("name", "?")
    return f"{kind}, {record.get('overall')}, pipeline {pipeline}, data {data}, {record.get('created_utc')}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _num(value: Any) -> str:
    number = _number(value)
    return f"{number:.4g}" if number is not None else ("-" if value is None else str(value))


def _pct(value: float | None, interval: Any) -> str:
    if value is None:
        return "not measured"
    return f"{100 * value:.1f}%" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
