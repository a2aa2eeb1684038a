"""Turn results into files: results.json, figures.json and one self-contained index.html.

`write_report` draws every Figure once, stores the PNGs in figures.json and the record in
results.json, then renders index.html from those two stored files. `rerender` (behind
`recipe report`) renders index.html again from the same two files: nothing is re-run, and both
paths produce the same page.

The record (results.json), schema_version 1; see checks/report/SCHEMA.md for every field:

    {"schema_version": 1, "overall": "PASS|WARN|FAIL|ERROR|SKIP", "created_utc": str, "command": str,
     "forced": bool, "fingerprint": str,
     "pipeline": {"name": str, "spec": str},
     "data": {"source": str, "reason": str, "sizes": {"train": n, "val": n, "test": n}, "class_names": [str]},
     "config": {...TrainConfig.as_dict()},
     "environment": {"python", "torch", "torchvision", "numpy", "platform", "device", "seed", "git_commit"},
     "timings": {"data_load_s": float, "checks_s": float, "training_s": float | null, "report_s": float,
                 "total_s": float, "figures_wait_s": float (check: the figures worker finishing after the
                 checks), "process": "cold" | "warm" (recipe/warm.py)},
     "checks": [CheckResult.to_json(), ...],
     "training": null | {"epochs": [...], "val_accuracy", "val_ci95", "test_accuracy", "test_ci95",
                         "stopped", "per_class", "anchors", ...}}

Numbers that are not finite (a NaN loss) are stored as the strings "NaN", "Infinity" and
"-Infinity", so results.json stays strict JSON that any parser reads.
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jinja2

from checks.report import sections
from checks.engine.result import CheckResult, Figure, worst
from recipe.errors import RecipeError
from recipe.files import atomic_write_text

SCHEMA_VERSION = 1
RESULTS_NAME, FIGURES_NAME, INDEX_NAME = "results.json", "figures.json", "index.html"
TEMPLATE_NAME = "template.html.j2"
REQUIRED_KEYS = ("schema_version", "overall", "created_utc", "command", "forced", "fingerprint", "pipeline",
                 "data", "config", "environment", "timings", "checks", "training")

# How each verdict reads without colour: a word and a symbol.
SYMBOLS = {"PASS": "✓", "WARN": "⚠", "FAIL": "✗", "ERROR": "✗", "SKIP": "–", "N/A": "∅"}


# ---------------------------------------------------------------- building the record

def command_line() -> str:
    """The command as typed (sys.argv), shell-quoted: `recipe run ...` or `python -m checks.cli run ...`."""
    argv = list(sys.argv) or ["python"]
    original = list(getattr(sys, "orig_argv", []))
    if "-m" in original[:-1]:  # `python -m pkg.mod`: argv[0] is the module's file path, which nobody typed
        head = ["python", "-m", original[original.index("-m") + 1]]
    else:
        head = [Path(argv[0]).name]
    return " ".join(head + [shlex.quote(a) for a in argv[1:]])


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the git repository around `cwd` (the user's project), or None outside one."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def environment_info(device: Any, seed: int) -> dict[str, Any]:
    """Versions, platform, device, seed and git commit: what it takes to reproduce the run."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": version("torch"), "torchvision": version("torchvision"),
            "numpy": version("numpy"), "platform": platform.platform(), "device": str(device), "seed": seed,
            "git_commit": git_commit()}


def data_info(data: Any) -> dict[str, Any]:
    """The "data" block from a recipe.data.DataBundle."""
    return {"source": data.source, "reason": data.reason,
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "class_names": list(data.class_names)}


def build_record(results: Iterable[CheckResult], *, pipeline_name: str, pipeline_spec: str, data: Any,
                 config: Any, environment: Mapping[str, Any], timings: Mapping[str, Any],
                 training: Mapping[str, Any] | None = None, forced: bool = False, fingerprint: str = "",
                 command: str | None = None, created_utc: str | None = None,
                 preflight: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the results.json record (schema_version 1).

    `data` is a recipe.data.DataBundle (or an already built "data" dict, or None when loading
    failed); `config` a TrainConfig (or its dict); `training` the dict from `training_summary`, or
    None when training did not run. The overall verdict is the worst check verdict (PASS if none).
    """
    results = list(results)
    if data is not None and not isinstance(data, Mapping):
        data = data_info(data)
    if config is not None and not isinstance(config, Mapping):
        config = config.as_dict()
    return {
        "schema_version": SCHEMA_VERSION,
        "overall": worst(r.verdict for r in results).value,
        "created_utc": created_utc or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if command is not None else command_line(),
        "forced": bool(forced),
        "fingerprint": fingerprint,
        "pipeline": {"name": pipeline_name, "spec": pipeline_spec},
        "data": dict(data) if data is not None else None,
        "config": dict(config) if config is not None else {},
        "environment": dict(environment),
        "timings": {"data_load_s": None, "checks_s": None, "training_s": None, "total_s": None, **timings},
        "checks": [r.to_json() for r in results],
        "training": dict(training) if training is not None else None,
        "preflight": dict(preflight) if preflight is not None else None,
    }


def figures_of(results: Iterable[CheckResult], training_figures: list[Figure] | None = None) -> dict[str, list[Figure]]:
    """The `figures` argument of write_report: each check's figures under its name, plus training."""
    figures = {r.name: list(r.figures) for r in results if r.figures}
    if training_figures:
        figures[sections.TRAINING] = list(training_figures)
    return figures


# ---------------------------------------------------------------- writing and re-rendering

def write_report(run_dir: Path, record: dict, figures: dict[str, list[Figure]],
                 stored: Mapping[str, list[dict]] | None = None, drawn: Mapping[str, list[dict]] | None = None,
                 clock: Callable[[], float] | None = None) -> Path:
    """Write figures.json, results.json and index.html into `run_dir`, each atomically; return index.html.

    `drawn`: figures already drawn (a `Painter` drew them while the checks ran), keyed like
    `figures`; the rest are drawn here. `clock`: seconds since the command started, read after the
    drawing, so `timings.total_s` counts the report too. A figure whose data cannot be drawn is
    stored with an "error" instead of a PNG, and the page says so beside its check: one malformed
    figure must not cost the whole report.
    """
    from checks.report.painter import draw_entry

    run_dir = Path(run_dir)
    started = time.perf_counter()
    stored_figures: dict[str, list[dict]] = {k: list(v) for k, v in (stored or {}).items()
                                             if k != sections.TRAINING}  # already drawn: kept as they are
    drawn = drawn or {}
    for name, group in figures.items():
        ready = list(drawn.get(name, []))
        stored_figures[str(name)] = ready if len(ready) == len(group) else [draw_entry(f) for f in group]
    timings = record.setdefault("timings", {})
    timings["report_s"] = time.perf_counter() - started  # drawing what was left, after the checks
    if clock is not None:
        timings["total_s"] = clock()
    stored_record = to_jsonable(record)
    atomic_write_text(run_dir / FIGURES_NAME, json.dumps(stored_figures, allow_nan=False))
    atomic_write_text(run_dir / RESULTS_NAME, json.dumps(stored_record, indent=2, allow_nan=False) + "\n")
    return atomic_write_text(run_dir / INDEX_NAME, render_html(stored_record, stored_figures))


def read_record(run_dir: Path) -> dict:
    """A run's stored results.json, checked to be one this tool wrote (else a one-line RecipeError)."""
    run_dir = Path(run_dir)
    record = _read_json(run_dir / RESULTS_NAME, "run `recipe check` or `recipe run` to make one")
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        raise RecipeError(f"{run_dir / RESULTS_NAME} is not a schema_version {SCHEMA_VERSION} results file")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise RecipeError(f"{run_dir / RESULTS_NAME} lacks {', '.join(missing)}; was it written by this tool?")
    return record


def rerender(run_dir: Path) -> Path:
    """Rebuild index.html from the stored results.json and figures.json alone (`recipe report`)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    notice = None
    if (run_dir / FIGURES_NAME).exists():
        figures = _read_json(run_dir / FIGURES_NAME, "")
        if not isinstance(figures, dict):
            raise RecipeError(f"{run_dir / FIGURES_NAME} must hold an object of figure lists")
    else:
        figures, notice = {}, f"{FIGURES_NAME} is missing from {run_dir}: the figures are not shown."
    return atomic_write_text(run_dir / INDEX_NAME, render_html(record, figures, notice))


def _read_json(path: Path, hint: str) -> Any:
    if not path.is_file():
        where = f"{path.parent} is not a folder" if not path.parent.is_dir() else f"no {path.name} in {path.parent}"
        raise RecipeError(f"cannot re-render the report: {where}" + (f"; {hint}" if hint else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecipeError(f"{path} is not valid JSON ({err}); it was probably cut short or edited by hand") from None


def to_jsonable(value: Any) -> Any:
    """A strict-JSON copy: tuples to lists, numpy/torch scalars to numbers, NaN/Inf to strings."""
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return to_jsonable(value.tolist())
    return str(value)


# ---------------------------------------------------------------- the page

def render_html(record: dict, figures: Mapping[str, list[dict]], notice: str | None = None) -> str:
    """index.html from a stored record and stored figures (PNG as base64)."""
    checks = record.get("checks") or []
    training = record.get("training")
    named = {c.get("name") for c in checks} | {sections.TRAINING}
    view = {
        "record": record,
        "headline": headline(record),
        "checks": [dict(c, anchor=c.get("name") or f"check-{i + 1}", shown_value=shown_value(c))
                   for i, c in enumerate(checks)],
        "counts": _counts(checks),
        "figures": figures,
        "training_figures": figures.get(sections.TRAINING, []),
        "by_title": {f.get("title"): f for f in figures.get(sections.TRAINING, [])},
        "other_figures": {k: v for k, v in figures.items() if k not in named},
        "sections": sections,
        "notice": notice,
        "symbols": SYMBOLS,
        "training": training,
        "monitors": [dict(m, shown_value=shown_value(m)) for m in _monitors(training)],
        "monitor_titles": [t for m in _monitors(training) for t in m.get("figures") or []],
        # the lab's questions are about handwritten digits: asked only when the data is digits
        "digits": (record.get("data") or {}).get("source") in ("mnist", "sample"),
    }
    return _environment().get_template(TEMPLATE_NAME).render(**view)


def headline(record: Mapping[str, Any]) -> dict[str, str]:
    """The verdict in words and what to do next."""
    overall = str(record.get("overall", "ERROR"))
    training = record.get("training")
    stopped = training.get("stopped") if isinstance(training, Mapping) else None
    if record.get("forced") and training is not None:
        text = ("FORCED: training ran despite failing checks. Its numbers cannot be trusted: fix the failing "
                "checks below, then train again without forcing.")
    elif overall in ("FAIL", "ERROR"):
        text = ("A check crashed (ERROR): fix the check or the pipeline it reads, then run again before training."
                if overall == "ERROR" and not any(c.get("verdict") == "FAIL" for c in record.get("checks", []))
                else "Fix the failing checks below before training.")
        if training is None:
            text += " Training did not run."
    elif training is not None:
        text = "All checks passed: training ran." if overall != "WARN" else \
            "Checks passed with warnings: training ran. Read the warnings below."
    elif overall == "WARN":
        text = "Checks passed with warnings: training is allowed, but read the warnings below first."
    else:
        text = "All checks passed: ready to train (recipe train)."
    if stopped:
        text += f" Training stopped early: {stopped}."
    failed = [m.get("name") for m in _monitors(training) if m.get("verdict") in ("FAIL", "ERROR")]
    if failed:
        text += f" A training monitor failed ({', '.join(map(str, failed))}): the run trained, but went wrong; see Training."
    return {"verdict": overall, "symbol": SYMBOLS.get(overall, "?"), "text": text,
            "forced": bool(record.get("forced"))}


def _monitors(training: Any) -> list[Mapping[str, Any]]:
    """The training monitors' results (results.json `training.monitors`), or none."""
    monitors = training.get("monitors") if isinstance(training, Mapping) else None
    return [m for m in monitors or [] if isinstance(m, Mapping)]


def shown_value(check: Mapping[str, Any]) -> str:
    """"0.0031 <= 0.05": the measured value against its threshold, or just the value."""
    value, threshold, comparison = check.get("value"), check.get("threshold"), check.get("comparison") or ""
    if value is None:
        return "—"
    if comparison and threshold is not None:
        return f"{number(value)} {comparison} {number(threshold)}"
    return number(value)


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _counts(checks: list[Mapping[str, Any]]) -> list[tuple[str, int]]:
    order = ["PASS", "WARN", "FAIL", "ERROR", "SKIP", "N/A"]
    tally = {v: sum(1 for c in checks if c.get("verdict") == v) for v in order}
    return [(v, n) for v, n in tally.items() if n]


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, Mapping) for row in value)


def _columns(rows: list[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(map(str, row)))
    return list(seen)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
                             autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["pct"] = lambda v: "—" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%"
    env.tests["table"] = _is_table
    env.tests["mapping"] = lambda v: isinstance(v, Mapping)
    env.globals["columns"] = _columns
    return env
