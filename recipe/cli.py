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
    from recipe.pipeline import make_pipeline, resolve_device

    config = config_from_args(args)  # validate flags before the slow part
    device = resolve_device(args.device)
    started = time.perf_counter()
    data = load_data(args.data, args.data_dir, device, download=not args.no_download)
    say(args, f"data: {data.source} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test) - {data.reason}")
    pipeline = make_pipeline(args.pipeline, config, data)
    args.data_load_s = time.perf_counter() - started  # reported in the run's timings
    return pipeline


def say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr)


def preflight_options(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The same settings as pytest options for checks/conftest.py."""
    from recipe.config import TrainConfig

    options = ["--pipeline", args.pipeline, "--data", args.data, "--data-dir", args.data_dir,
               "--device", args.device, "--report-dir", args.report_dir, "--run-dir", str(run_dir),
               "--threads", str(args.threads)]
    for f in fields(TrainConfig):
        options += [f"--{f.name.replace('_', '-')}", str(getattr(args, f.name))]
    options += ["--no-download"] * args.no_download + ["--no-gate"] * args.no_gate
    return options


def run_checks(args: argparse.Namespace, run_dir: Path, pipeline):
    from checks.preflight import PYTEST_USAGE_ERROR, run_preflight

    say(args, f"preflight: running the checks into {run_dir}")
    outcome = run_preflight(preflight_options(args, run_dir), quiet=args.quiet, pipeline=pipeline,
                            data_load_s=getattr(args, "data_load_s", 0.0))
    if outcome.exit_code == PYTEST_USAGE_ERROR or outcome.pipeline is None:
        _remove_if_empty(run_dir)
        raise RecipeError("the preflight could not start (see the error above)")
    return outcome


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


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


def cmd_check(args: argparse.Namespace) -> int:
    from recipe.runs import new_run_dir, point_latest

    report_dir = Path(args.report_dir)
    pipeline = load_pipeline(args)  # a bad flag, path or pipeline stops here, in one line
    run_dir = new_run_dir(report_dir)
    outcome = run_checks(args, run_dir, pipeline)
    point_latest(report_dir, run_dir)
    _print_failures(outcome.results)
    print(f"preflight {_verdict_line(outcome.results)}; report: {run_dir / 'index.html'}")
    return EXIT_OK if outcome.passed else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the checks, then training if they pass, into one report."""
    from recipe.runs import new_run_dir, point_latest

    report_dir = Path(args.report_dir)
    pipeline = load_pipeline(args)
    run_dir = new_run_dir(report_dir)
    outcome = run_checks(args, run_dir, pipeline)
    point_latest(report_dir, run_dir)
    _print_failures(outcome.results)
    if not outcome.passed and not args.force:
        print(f"preflight {_verdict_line(outcome.results)}: not training. Fix the failing checks "
              f"(or pass --force); report: {run_dir / 'index.html'}", file=sys.stderr)
        return EXIT_FAILED
    timings = {"data_load_s": args.data_load_s, "checks_s": outcome.checks_s}
    return train_and_report(args, pipeline, outcome.results, run_dir, timings, forced=not outcome.passed)


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the word of the newest passing preflight with the same fingerprint (or run one first)."""
    from checks.preflight import find_preflight, fingerprint, passed
    from recipe.runs import latest_run_dir, new_run_dir, point_latest

    report_dir = Path(args.report_dir)
    run_dir = (Path(args.out) if args.out else latest_run_dir(report_dir)) if args.resume else None
    pipeline = load_pipeline(args)  # before making a run folder: a bad flag must not leave an empty one
    if run_dir is None:
        run_dir = Path(args.out) if args.out else new_run_dir(report_dir)
    found = find_preflight(report_dir, fingerprint(args.pipeline, pipeline))
    forced = False
    if found is None:
        say(args, "no preflight for this pipeline, data and config yet: running it first")
        outcome = run_checks(args, run_dir, pipeline)
        results, ok, where = outcome.results, outcome.passed, run_dir
    else:
        where, record = found
        results = [_result_from_json(row) for row in record["checks"]]
        ok = passed(row["verdict"] for row in record["checks"])
        say(args, f"preflight: using {where} ({record.get('overall')})")
    if not ok:
        if not args.force:
            print(f"recipe: the preflight FAILED, so training will not start; see {where / 'index.html'} "
                  "(fix the failing checks, or pass --force)", file=sys.stderr)
            point_latest(report_dir, where)
            return EXIT_FAILED
        forced = True
        print("recipe: --force: training despite failing checks; the report will say so", file=sys.stderr)
    point_latest(report_dir, run_dir)
    return train_and_report(args, pipeline, results, run_dir, {"data_load_s": args.data_load_s}, forced=forced)


def _result_from_json(row: dict):
    from checks.result import CheckResult, Verdict

    known = {"name", "stage", "value", "threshold", "comparison", "message", "details", "duration_s"}
    return CheckResult(verdict=Verdict(row["verdict"]), **{k: v for k, v in row.items() if k in known})


def train_and_report(args: argparse.Namespace, pipeline, results, run_dir: Path, timings: dict,
                     forced: bool) -> int:
    from checks.preflight import write_run_report
    from checks.report.training import training_summary
    from recipe.train import fit

    started = time.perf_counter()
    result = fit(pipeline, run_dir, resume=getattr(args, "resume", False), quiet=args.quiet)
    training_s = time.perf_counter() - started
    timings = {**timings, "training_s": training_s,
               "total_s": sum(timings.get(k, 0.0) for k in ("data_load_s", "checks_s")) + training_s}
    summary = training_summary(pipeline, result)
    index = write_run_report(run_dir, results, pipeline, args.pipeline, timings, summary, forced)
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
