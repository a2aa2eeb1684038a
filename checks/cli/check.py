"""`recipe check`: the preflight, its progress lines and its report (no training). `recipe train` and
`recipe run` run the preflight through `run_checks` here too.

Exit codes (checks/cli/__init__.py): 0 all passed (WARN allowed), 1 a check FAILed/ERRORed.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

from checks.cli import EXIT_FAILED, EXIT_OK, clock
from checks.cli.loading import load_pipeline

INDEX_NAME = "index.html"  # the page of a run folder (checks/report/render.py writes it)


class Progress:
    """One line per check as it finishes ("[ 3/23] data/duplicates_and_leakage  PASS  0.05 s"); on a
    terminal the running check's name shows until its verdict replaces it."""

    def __init__(self, quiet: bool, total: int):
        self.quiet, self.total, self.done = quiet, total, 0
        self.live = not quiet and sys.stderr.isatty()

    def start(self, name: str, stage: str) -> None:
        if self.live:
            print(f"[{self.done + 1:>2}/{self.total}] {stage}/{name} ...", end="\r", file=sys.stderr, flush=True)

    def finish(self, result) -> None:
        self.done += 1
        if not self.quiet:
            line = f"[{self.done:>2}/{self.total}] {result.stage}/{result.name}"
            print(f"{line:<48} {result.verdict.value:<5} {result.duration_s:6.2f} s", file=sys.stderr, flush=True)


def run_checks(args: argparse.Namespace, pipeline, parts: dict | None = None):
    """The preflight. On Ctrl-C, the checks that finished are kept as a partial report (which can never
    open the training gate), then the interrupt goes on."""
    from checks.engine.preflight import Preflight, identify, run_preflight
    from checks.engine.runner import expected_count

    from checks.report.painter import Painter

    progress = Progress(args.quiet, expected_count())
    finished = []
    if getattr(args, "painter", None) is None:
        args.painter = Painter()  # draws each check's figures on the other core while the next check runs

    def on_result(result) -> None:
        finished.append(result)
        progress.finish(result)

    started = time.perf_counter()
    try:
        return run_preflight(pipeline, args.pipeline, gate=not args.no_gate, on_start=progress.start,
                             on_result=on_result, parts=parts, fork=True,
                             on_done=lambda result: args.painter.submit(result.name, result.figures))
    except KeyboardInterrupt:
        if finished:
            partial = Preflight(finished, args.pipeline, parts or identify(args.pipeline, pipeline),
                                time.perf_counter() - started)
            index = write_checks_only(args, pipeline, partial)
            print(f"recipe: interrupted after {len(finished)} of {expected_count()} checks; their results: {index}",
                  file=sys.stderr)
        raise


def verdict_line(results) -> str:
    from collections import Counter

    from checks.engine.result import worst

    counts = Counter(r.verdict.value for r in results)
    spread = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    return f"{worst(r.verdict for r in results).value} ({len(results)} checks: {spread})"


def print_failures(results) -> None:
    """Each FAIL/ERROR in one line, so the cause is on screen without opening the report."""
    for r in results:
        if r.verdict.blocks:
            print(f"  {r.stage}/{r.name} {r.verdict.value}: {r.message}", file=sys.stderr)


def run_timings(args: argparse.Namespace, **more: float) -> dict:
    return {"data_load_s": getattr(args, "data_load_s", 0.0), **more,
            "total_s": time.perf_counter() - args.started, "process": clock.process_kind[0]}


def cmd_check(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args)  # a bad flag, path or pipeline stops here, in one line
    preflight = run_checks(args, pipeline)
    index = write_checks_only(args, pipeline, preflight)
    print_failures(preflight.results)
    print(f"preflight {verdict_line(preflight.results)}; report: {index}")
    return EXIT_OK if preflight.passed else EXIT_FAILED


def write_checks_only(args: argparse.Namespace, pipeline, preflight) -> Path:
    """A run folder holding the preflight's report (no training), made `latest` once complete."""
    from checks.engine.preflight import write_run_report
    from recipe.runs import finish_before_ctrl_c, run_folder

    with run_folder(Path(args.report_dir)) as run, finish_before_ctrl_c():
        waited = time.perf_counter()
        drawn = painted_figures(args)
        timings = run_timings(args, checks_s=preflight.checks_s, figures_wait_s=time.perf_counter() - waited)
        write_run_report(run.path, preflight, pipeline, timings, drawn=drawn,
                         clock=partial(clock.since, args.started), previous=previous_preflight(args, preflight))
    return run.final / INDEX_NAME


def painted_figures(args: argparse.Namespace) -> dict | None:
    """The check figures the painter drew while the checks ran (None when no checks ran here); waits for
    the ones it still draws (timings.figures_wait_s)."""
    painter = getattr(args, "painter", None)
    return painter.drawn() if painter is not None else None


def previous_preflight(args: argparse.Namespace, preflight, this_run: Path | None = None) -> tuple[Path, dict] | None:
    """The previous complete preflight of this pipeline, for the report's comparison (not the one this
    run relied on, nor this run itself when resumed)."""
    from checks.engine.gate import newest_for_pipeline

    earlier = newest_for_pipeline(Path(args.report_dir), args.pipeline)
    if earlier is None:
        return None
    skip = {Path(p).resolve() for p in (this_run, (preflight.relied_on or {}).get("run_dir")) if p}
    return None if Path(earlier.run_dir).resolve() in skip else (earlier.run_dir, earlier.record)
