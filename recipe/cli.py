"""The `recipe` command. It only composes the parts: data, pipeline, checks, training, report.

Exit codes: 0 all passed (WARN allowed), 1 a check FAILed/ERRORed or training stopped,
2 a usage or data error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from functools import partial
from pathlib import Path

from recipe.errors import RecipeError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STARTED = time.perf_counter()  # module import time: total_s counts the command from its start


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other user error
        raise RecipeError(f"{self.prog}: {message} (see --help)")


def _common_options() -> argparse.ArgumentParser:
    from recipe.options import data_options

    common = _Parser(add_help=False, allow_abbrev=False)
    for flag, spec in data_options():
        common.add_argument(flag, **spec)
    common.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    return common


def _training_options(parser: argparse.ArgumentParser) -> None:
    from recipe.options import training_options

    for flag, spec in training_options():
        parser.add_argument(flag, **spec)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(prog="recipe", allow_abbrev=False, description="Sanity-check, train and report an MNIST-style classifier. "
                     "Exit codes: 0 passed, 1 a check failed or training stopped, 2 usage or data error.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=partial(_Parser, allow_abbrev=False))
    check = commands.add_parser("check", parents=[common], help="run the preflight checks and write a report")
    train = commands.add_parser("train", parents=[common], help="train, gated on a passing preflight")
    run = commands.add_parser("run", parents=[common], help="check, then train if the checks pass (the main job)")
    for sub in (check, train, run):
        _training_options(sub)
    for sub in (check, run, train):
        sub.add_argument("--no-gate", action="store_true", help="run later check stages even after a FAIL")
    for sub in (train, run):
        sub.add_argument("--force", action="store_true", help="train even though the checks failed (reported loudly)")
    train.add_argument("--out", default=None, help="run folder (default: a new <report-dir>/<UTC time>/)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out "
                       "(default: <report-dir>/latest)")
    report = commands.add_parser("report", parents=[common], help="re-render a report from its saved results "
                                 "(runs nothing; of the common options only --report-dir matters)")
    report.add_argument("run_dir", nargs="?", default=None, help="run folder (default: <report-dir>/latest)")
    return parser


def set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise RecipeError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def config_from_args(args: argparse.Namespace):
    from recipe.config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values)


def load_pipeline(args: argparse.Namespace):
    """Data once, then the pipeline factory; shared by every command."""
    from recipe.data import load_data
    from recipe.pipeline import resolve_device
    from recipe.user_code import make_pipeline

    from recipe.runs import check_report_dir

    config = config_from_args(args)  # validate flags before the slow part
    device = resolve_device(args.device)
    check_report_dir(Path(args.report_dir))
    started = time.perf_counter()
    data = load_data(args.data, args.data_dir, device, download=not args.no_download)
    pipeline = make_pipeline(args.pipeline, config, data)
    say(args, f"data: {data.source} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test) - {data.reason}")
    args.data_load_s = time.perf_counter() - started  # reported in the run's timings
    return pipeline


def say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr, flush=True)


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
    from checks.preflight import run_preflight
    from checks.runner import expected_count

    progress = Progress(args.quiet, expected_count())
    return run_preflight(pipeline, args.pipeline, gate=not args.no_gate, on_start=progress.start,
                         on_result=progress.finish, parts=parts)


def _verdict_line(results) -> str:
    from collections import Counter

    from checks.result import worst

    counts = Counter(r.verdict.value for r in results)
    spread = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    return f"{worst(r.verdict for r in results).value} ({len(results)} checks: {spread})"


def _print_failures(results) -> None:
    """Each FAIL/ERROR in one line, so the cause is on screen without opening the report."""
    for r in results:
        if r.verdict.blocks:
            print(f"  {r.stage}/{r.name} {r.verdict.value}: {r.message}", file=sys.stderr)


def _timings(args: argparse.Namespace, **more: float) -> dict:
    return {"data_load_s": getattr(args, "data_load_s", 0.0), **more,
            "total_s": time.perf_counter() - args.started}


def cmd_check(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args)  # a bad flag, path or pipeline stops here, in one line
    preflight = run_checks(args, pipeline)
    index = write_checks_only(args, pipeline, preflight)
    _print_failures(preflight.results)
    print(f"preflight {_verdict_line(preflight.results)}; report: {index}")
    return EXIT_OK if preflight.passed else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the checks, then training if they pass, into one report."""
    from recipe.runs import new_run_dir

    pipeline = load_pipeline(args)
    preflight = run_checks(args, pipeline)
    _print_failures(preflight.results)
    if not preflight.passed and not args.force:
        index = write_checks_only(args, pipeline, preflight)
        print(f"preflight {_verdict_line(preflight.results)}: not training. Fix the failing checks "
              f"(or pass --force); report: {index}", file=sys.stderr)
        return EXIT_FAILED
    return train_and_report(args, pipeline, preflight, new_run_dir(Path(args.report_dir)),
                            forced=not preflight.passed)


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the word of the newest complete, passing preflight of exactly this code, data, config
    and device; run one first when there is none."""
    from checks.gate import find_preflight, newest_for_pipeline, refusal
    from checks.preflight import Preflight, identify
    from recipe.identity import changed_parts, fingerprint
    from recipe.runs import latest_run_dir, new_run_dir

    report_dir = Path(args.report_dir)
    resume_dir = (Path(args.out) if args.out else latest_run_dir(report_dir)) if args.resume else None
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
        _print_failures(preflight.results)
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
    run_dir = resume_dir or (Path(args.out) if args.out else new_run_dir(report_dir))
    return train_and_report(args, pipeline, preflight, run_dir, forced=not preflight.passed,
                            reused_figures=reused_figures)


def write_checks_only(args: argparse.Namespace, pipeline, preflight) -> Path:
    """A run folder holding the preflight's report (no training), made `latest`."""
    from checks.preflight import write_run_report
    from recipe.runs import new_run_dir, point_latest

    report_dir = Path(args.report_dir)
    run_dir = new_run_dir(report_dir)
    index = write_run_report(run_dir, preflight, pipeline, _timings(args, checks_s=preflight.checks_s))
    point_latest(report_dir, run_dir)
    return index


def _stored_figures(run_dir: Path) -> dict | None:
    import json

    try:
        return json.loads((run_dir / "figures.json").read_text())
    except (OSError, ValueError):
        return None


def _result_from_json(row: dict):
    from checks.result import CheckResult, Verdict

    known = {"name", "stage", "value", "threshold", "comparison", "message", "details", "duration_s"}
    return CheckResult(verdict=Verdict(row["verdict"]), **{k: v for k, v in row.items() if k in known})


def train_and_report(args: argparse.Namespace, pipeline, preflight, run_dir: Path, forced: bool,
                     reused_figures: dict | None = None) -> int:
    from checks.preflight import write_run_report
    from checks.report.training import training_summary
    from recipe.evaluate import evaluate_trained
    from recipe.runs import point_latest
    from recipe.train import fit

    run_dir.mkdir(parents=True, exist_ok=True)
    point_latest(Path(args.report_dir), run_dir)
    started = time.perf_counter()
    result = fit(pipeline, run_dir, resume=getattr(args, "resume", False), quiet=args.quiet)
    training_s = time.perf_counter() - started
    summary = training_summary(pipeline, result, evaluate_trained(pipeline, result))
    timings = _timings(args, checks_s=preflight.checks_s, training_s=training_s)
    index = write_run_report(run_dir, preflight, pipeline, timings, summary, forced, reused_figures)
    code = report_training(args, result, index)
    return EXIT_FAILED if forced and code == EXIT_OK else code  # trained, but the checks did fail


def report_training(args: argparse.Namespace, result, index: Path) -> int:
    if result.stopped:
        print(f"recipe: training stopped: {result.stopped}; report: {index}", file=sys.stderr)
        return EXIT_INTERRUPTED if result.stopped.startswith("interrupted") else EXIT_FAILED
    last = result.history[-1]
    print(f"val accuracy {last['val_accuracy']:.4f}, test accuracy {result.test['accuracy']:.4f}; "
          f"report: {index}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from checks.report.render import rerender
    from recipe.runs import latest_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else latest_run_dir(Path(args.report_dir))
    if not run_dir.is_dir():
        raise RecipeError(f"{run_dir} is not a run folder")
    print(f"report: {rerender(run_dir)}")
    return EXIT_OK


COMMANDS = {"check": cmd_check, "train": cmd_train, "run": cmd_run, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.started = STARTED
        set_threads(getattr(args, "threads", 1))
        return COMMANDS[args.command](args)
    except RecipeError as err:
        if debug:
            raise
        print(f"recipe: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recipe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
