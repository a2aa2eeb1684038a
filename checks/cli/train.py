"""`recipe run` (the preflight, then training if it passes) and `recipe train` (training on the word of
a matching preflight, run first when there is none), into one report.

Exit codes (checks/cli/__init__.py): 0 trained, 1 a check or a training monitor FAILed, or training
stopped, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

from checks.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, clock
from checks.cli.check import (INDEX_NAME, painted_figures, previous_preflight, print_failures, run_checks,
                              run_timings, verdict_line, write_checks_only)
from checks.cli.loading import load_pipeline, say


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the checks, then training if they pass, into one report."""
    pipeline = load_pipeline(args)
    preflight = run_checks(args, pipeline)
    print_failures(preflight.results)
    if not preflight.passed and not args.force:
        index = write_checks_only(args, pipeline, preflight)
        print(f"preflight {verdict_line(preflight.results)}: not training. Fix the failing checks "
              f"(or pass --force); report: {index}", file=sys.stderr)
        return EXIT_FAILED
    say(args, f"preflight {verdict_line(preflight.results)}: " +
        ("training despite failing checks (--force); the report will say so" if not preflight.passed else
         f"training {pipeline.config.epochs} epochs"))
    return train_and_report(args, pipeline, preflight, forced=not preflight.passed)


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the word of the newest complete, passing preflight of exactly this code, data, config
    and device; run one first when there is none."""
    from checks.engine.gate import find_preflight, newest_for_pipeline, refusal
    from checks.engine.preflight import Preflight, identify
    from recipe.identity import changed_parts, fingerprint
    from recipe.runs import check_out, resume_folder
    from recipe.train import CHECKPOINT_NAME

    report_dir = Path(args.report_dir)
    out = Path(args.out) if args.out else None
    resume_dir = resume_folder(report_dir, out, CHECKPOINT_NAME) if args.resume else None
    if out is not None and not args.resume:
        check_out(out)  # before the slow part
    pipeline = load_pipeline(args)  # before making a run folder: a bad flag must not leave an empty one
    parts = identify(args.pipeline, pipeline)
    earlier = find_preflight(report_dir, fingerprint(parts))
    reused_figures = None
    if earlier is None:
        previous = newest_for_pipeline(report_dir, args.pipeline)
        changed = changed_parts(((previous.record.get("preflight") or {}).get("fingerprint_parts")
                                 if previous else None), parts)
        say(args, f"the {', '.join(changed)} changed since the preflight in {previous.run_dir}: running the checks again"
            if changed else "no complete preflight for this code, data, config and device yet: running it first")
        preflight = run_checks(args, pipeline, parts)
        print_failures(preflight.results)
    else:
        say(args, f"preflight: using {earlier.run_dir} ({earlier.record.get('overall')}; same code, data, config "
                  "and device)")
        preflight = Preflight([_result_from_json(row) for row in earlier.record["checks"]], args.pipeline, parts,
                              relied_on=earlier.summary())
        reused_figures = _stored_figures(earlier.run_dir)
    if not preflight.passed and not args.force:
        if earlier is not None:
            print(f"recipe: {refusal(earlier, f'recipe check --pipeline {args.pipeline}')}", file=sys.stderr)
            return EXIT_FAILED
        index = write_checks_only(args, pipeline, preflight)
        print(f"recipe: the preflight FAILED, so training will not start: fix the failing checks above (or pass "
              f"--force); report: {index}", file=sys.stderr)
        return EXIT_FAILED
    if not preflight.passed:
        print("recipe: --force: training despite failing checks; the report will say so", file=sys.stderr)
    return train_and_report(args, pipeline, preflight, forced=not preflight.passed, reused_figures=reused_figures,
                            existing=resume_dir)


def _stored_figures(run_dir: Path) -> dict | None:
    import json

    try:
        return json.loads((run_dir / "figures.json").read_text())
    except (OSError, ValueError):
        return None


def _result_from_json(row: dict):
    from checks.engine.result import CheckResult, Verdict

    known = {"name", "stage", "value", "threshold", "comparison", "message", "details", "duration_s"}
    return CheckResult(verdict=Verdict(row["verdict"]), **{k: v for k, v in row.items() if k in known})


def train_and_report(args: argparse.Namespace, pipeline, preflight, forced: bool,
                     reused_figures: dict | None = None, existing: Path | None = None) -> int:
    """Train into a new run folder (or continue `existing`), evaluate, and write the run's report.

    What finished is kept: if training is interrupted or crashes, the report still holds the preflight
    and whatever epochs ran (with the last checkpoint), and says training stopped."""
    from checks.training.distributed_checks import distributed_block
    from checks.training.monitor_checks import judge_training
    from checks.engine.preflight import write_run_report
    from checks.report.training import training_summary
    from recipe.evaluate import Evaluation, evaluate_trained
    from recipe.monitors import TrainingMonitor
    from recipe.distributed import trainer
    from recipe.runs import finish_before_ctrl_c, run_folder

    out = Path(args.out) if getattr(args, "out", None) else None
    crash = None
    with run_folder(Path(args.report_dir), out, existing) as run:
        started = time.perf_counter()
        result = None
        monitor = None if getattr(args, "no_monitors", False) else TrainingMonitor()
        try:
            result = trainer(args)(pipeline, run.path, resume=existing is not None, quiet=args.quiet, monitor=monitor)
            evaluation = evaluate_trained(pipeline, result)
        except (KeyboardInterrupt, Exception) as err:
            if existing is not None and result is None and not isinstance(err, KeyboardInterrupt):
                raise  # e.g. a checkpoint from another config: the run folder keeps its earlier report
            crash = None if isinstance(err, KeyboardInterrupt) else err
            result, evaluation = _stopped(result, err, run.path), Evaluation()
        training_s = time.perf_counter() - started
        monitors = judge_training(monitor.log) if monitor is not None else None  # what the run showed
        ranks = distributed_block(result.distributed) if getattr(result, "distributed", None) is not None else None
        summary = training_summary(pipeline, result, evaluation, monitors, monitor.log if monitor else None, ranks)
        timings = run_timings(args, checks_s=preflight.checks_s, training_s=training_s)
        with finish_before_ctrl_c():
            write_run_report(run.path, preflight, pipeline, timings, summary, forced, reused_figures,
                             drawn=painted_figures(args), clock=partial(clock.since, args.started),
                             previous=previous_preflight(args, preflight, run.final))
    if crash is not None:
        raise crash
    code = report_training(args, result, run.final / INDEX_NAME)
    if monitors and any(m.verdict.blocks for m in monitors):
        print("recipe: a training monitor FAILed (the run trained, but went wrong):", file=sys.stderr)
        print_failures(monitors)
        code = EXIT_FAILED if code == EXIT_OK else code
    return EXIT_FAILED if forced and code == EXIT_OK else code  # trained, but the checks did fail


def _stopped(result, err: BaseException, run_dir: Path):
    """The FitResult of a run that `fit` did not see to its end (Ctrl-C or a crash outside its epochs)."""
    from recipe.train import CHECKPOINT_NAME, FitResult

    what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"crashed ({type(err).__name__}: {err})"
    when = "while evaluating the trained model" if result is not None else "during training"
    kept = "the last checkpoint is kept" if (run_dir / CHECKPOINT_NAME).is_file() else "no checkpoint was saved"
    stopped = result if result is not None else FitResult(model=None)
    stopped.stopped, stopped.test = f"{what} {when}; {kept}", None
    return stopped


def report_training(args: argparse.Namespace, result, index: Path) -> int:
    if result.stopped:
        print(f"recipe: training stopped: {result.stopped}; report: {index}", file=sys.stderr)
        return EXIT_INTERRUPTED if result.stopped.startswith("interrupted") else EXIT_FAILED
    last = result.history[-1]
    print(f"val accuracy {last['val_accuracy']:.4f}, test accuracy {result.test['accuracy']:.4f}; "
          f"report: {index}")
    return EXIT_OK
