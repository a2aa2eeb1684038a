"""The preflight as a whole, for every entry point: run the checks, fingerprint them, write the run.

`run_preflight` is what `recipe check/run/train` and `pytest checks/` both do: the one runner
(checks/engine/runner.py) over the pipeline, plus what the training gate (checks/engine/gate.py) needs to trust
the result later: the fingerprint of the code, data, config and device it vouches for, and whether
every registered check ran.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from checks.engine.result import CheckResult, worst
from checks.engine.runner import expected_count, is_complete, iter_results
from recipe.identity import fingerprint, fingerprint_parts


@dataclass
class Preflight:
    results: list[CheckResult]
    spec: str
    parts: dict[str, str]          # code / harness / data / config / device hashes
    checks_s: float = 0.0
    relied_on: dict | None = None  # for a train run that reused an earlier preflight: where, and its summary

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.parts)

    @property
    def complete(self) -> bool:
        return is_complete(r.name for r in self.results)

    @property
    def passed(self) -> bool:
        return bool(self.results) and not worst(r.verdict for r in self.results).blocks

    def block(self) -> dict:
        """The "preflight" block of results.json."""
        return {"complete": self.complete, "checks_run": len(self.results), "checks_expected": expected_count(),
                "fingerprint_parts": dict(self.parts), "relied_on": self.relied_on}


def identify(spec: str, pipeline) -> dict[str, str]:
    return fingerprint_parts(spec, pipeline)


def run_preflight(pipeline, spec: str, *, gate: bool = True, only: Collection[str] | None = None,
                  on_start: Callable | None = None, on_result: Callable | None = None,
                  parts: dict[str, str] | None = None, fork: bool = False,
                  on_done: Callable | None = None) -> Preflight:
    """Run the checks (all, or `only` those) through the one runner and identify what they vouch for.
    `fork`, `on_done`: see `checks.engine.runner.iter_results`."""
    parts = parts if parts is not None else identify(spec, pipeline)
    started = time.perf_counter()
    results = []
    for result in iter_results(pipeline, gate=gate, only=only, on_start=on_start, fork=fork,
                               on_done=on_done):
        results.append(result)
        if on_result is not None:
            on_result(result)
    return Preflight(results, spec, parts, time.perf_counter() - started)


def write_run_report(run_dir: Path, preflight: Preflight, pipeline, timings: dict,
                     training: tuple[dict, list] | None = None, forced: bool = False,
                     reused_figures: dict | None = None, drawn: dict | None = None,
                     clock: Callable[[], float] | None = None, previous: tuple[Path, dict] | None = None) -> Path:
    """Write index.html, results.json and figures.json for one run (checks, and training if it ran).

    `reused_figures`: the stored check figures of the earlier preflight a train run relied on;
    `drawn` and `clock`: see `checks.report.render.write_report`; `previous`: the folder and record of
    the previous complete preflight of this pipeline, compared with this run on the page."""
    from checks.report.record import build_record, environment_info, figures_of
    from checks.report.render import write_report

    summary, training_figures = training if training is not None else (None, None)
    record = build_record(preflight.results, pipeline_name=pipeline.name, pipeline_spec=preflight.spec,
                          data=pipeline.data, config=pipeline.config,
                          environment=environment_info(pipeline.device, pipeline.config.seed),
                          timings=timings, training=summary, forced=forced, fingerprint=preflight.fingerprint,
                          preflight=preflight.block())
    if previous is not None:
        from checks.report.diff import comparison_block
        from checks.report.record import to_jsonable

        record["compared_with"] = comparison_block(previous[0], previous[1], to_jsonable(record))
    return write_report(run_dir, record, figures_of(preflight.results, training_figures), reused_figures,
                        drawn, clock)
