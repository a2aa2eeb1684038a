"""Turn results into files: results.json, figures.json and one self-contained index.html.

`write_report` draws every Figure once, stores the PNGs in figures.json and the record in
results.json, then renders index.html from those two stored files. `rerender` (behind
`recipe report`) renders index.html again from the same two files: nothing is re-run, and both
paths produce the same page.

The record itself (results.json: what it holds, built and read back) is checks/report/record.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jinja2

from checks.report import sections
from checks.report.record import FIGURES_NAME, INDEX_NAME, RESULTS_NAME, read_json, read_record, to_jsonable
from checks.engine.result import Figure
from recipe.errors import RecipeError
from recipe.files import atomic_write_text

TEMPLATE_NAME = "template.html.j2"

# How each verdict reads without colour: a word and a symbol.
SYMBOLS = {"PASS": "✓", "WARN": "⚠", "FAIL": "✗", "ERROR": "✗", "SKIP": "–", "N/A": "∅"}


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


def rerender(run_dir: Path) -> Path:
    """Rebuild index.html from the stored results.json and figures.json alone (`recipe report`)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    notice = None
    if (run_dir / FIGURES_NAME).exists():
        figures = read_json(run_dir / FIGURES_NAME, "")
        if not isinstance(figures, dict):
            raise RecipeError(f"{run_dir / FIGURES_NAME} must hold an object of figure lists")
    else:
        figures, notice = {}, f"{FIGURES_NAME} is missing from {run_dir}: the figures are not shown."
    return atomic_write_text(run_dir / INDEX_NAME, render_html(record, figures, notice))


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
