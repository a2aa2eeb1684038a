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

from checks.cli.parser import build_parser, suggest_flags
from recipe.errors import RecipeError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
INDEX_NAME = "index.html"  # the page of a run folder (checks/report/render.py writes it)


def _process_started() -> float:
    """perf_counter() at the moment this process started: total_s is what a stopwatch reads, interpreter
    start and imports included. From /proc on Linux (10 ms ticks); elsewhere, the import of this module."""
    now = time.perf_counter()
    try:
        import os

        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return now - age if 0 <= age < 60 else now  # implausible (a reused, long-lived process): from here
    except (OSError, ValueError, IndexError):
        return now


STARTED = _process_started()
_unclaimed_start = [STARTED]  # the first command in a process counts from its start; later ones (tests) from their call


def _command_started() -> float:
    return _unclaimed_start.pop() if _unclaimed_start else time.perf_counter()


_process_kind = ["cold"]  # "warm": forked from a process that had torch loaded (recipe/warm.py)


def warm_start(started: float) -> None:
    """This process is a fork of a warm one: the command began when its client started, not now."""
    _unclaimed_start[:] = [started]
    _process_kind[0] = "warm"


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
    if args.data == "auto" and data.source == "sample":  # fell back: say what --data-dir held, and why not used
        from recipe.unused_data import why_not_used

        note = why_not_used(Path(args.data_dir))
        if note:
            say(args, f"data dir: {note}")
    pipeline = make_pipeline(args.pipeline, config, data)
    used = pipeline.data  # what the factory returned: a pipeline may bring or subsample its own data
    say(args, f"data: {used.source} ({len(used.train)} train / {len(used.val)} val / {len(used.test)} test) - "
              f"{used.reason}")
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


def _verdict_line(results) -> str:
    from collections import Counter

    from checks.engine.result import worst

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
            "total_s": time.perf_counter() - args.started, "process": _process_kind[0]}


def cmd_check(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args)  # a bad flag, path or pipeline stops here, in one line
    preflight = run_checks(args, pipeline)
    index = write_checks_only(args, pipeline, preflight)
    _print_failures(preflight.results)
    print(f"preflight {_verdict_line(preflight.results)}; report: {index}")
    return EXIT_OK if preflight.passed else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the checks, then training if they pass, into one report."""
    pipeline = load_pipeline(args)
    preflight = run_checks(args, pipeline)
    _print_failures(preflight.results)
    if not preflight.passed and not args.force:
        index = write_checks_only(args, pipeline, preflight)
        print(f"preflight {_verdict_line(preflight.results)}: not training. Fix the failing checks "
              f"(or pass --force); report: {index}", file=sys.stderr)
        return EXIT_FAILED
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
    return train_and_report(args, pipeline, preflight, forced=not preflight.passed, reused_figures=reused_figures,
                            existing=resume_dir)


def write_checks_only(args: argparse.Namespace, pipeline, preflight) -> Path:
    """A run folder holding the preflight's report (no training), made `latest` once complete."""
    from checks.engine.preflight import write_run_report
    from recipe.runs import finish_before_ctrl_c, run_folder

    with run_folder(Path(args.report_dir)) as run, finish_before_ctrl_c():
        waited = time.perf_counter()
        drawn = _drawn(args)
        timings = _timings(args, checks_s=preflight.checks_s, figures_wait_s=time.perf_counter() - waited)
        write_run_report(run.path, preflight, pipeline, timings, drawn=drawn, clock=partial(_since, args.started),
                         previous=_previous(args, preflight))
    return run.final / INDEX_NAME


def _drawn(args: argparse.Namespace) -> dict | None:
    """The check figures the painter drew while the checks ran (None when no checks ran here); waits for
    the ones it still draws (timings.figures_wait_s)."""
    painter = getattr(args, "painter", None)
    return painter.drawn() if painter is not None else None


def _previous(args: argparse.Namespace, preflight, this_run: Path | None = None) -> tuple[Path, dict] | None:
    """The previous complete preflight of this pipeline, for the report's comparison (not the one this
    run relied on, nor this run itself when resumed)."""
    from checks.engine.gate import newest_for_pipeline

    earlier = newest_for_pipeline(Path(args.report_dir), args.pipeline)
    if earlier is None:
        return None
    skip = {Path(p).resolve() for p in (this_run, (preflight.relied_on or {}).get("run_dir")) if p}
    return None if Path(earlier.run_dir).resolve() in skip else (earlier.run_dir, earlier.record)


def _since(started: float) -> float:
    return time.perf_counter() - started


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
        timings = _timings(args, checks_s=preflight.checks_s, training_s=training_s)
        with finish_before_ctrl_c():
            write_run_report(run.path, preflight, pipeline, timings, summary, forced, reused_figures,
                             drawn=_drawn(args), clock=partial(_since, args.started),
                             previous=_previous(args, preflight, run.final))
    if crash is not None:
        raise crash
    code = report_training(args, result, run.final / INDEX_NAME)
    if monitors and any(m.verdict.blocks for m in monitors):
        print("recipe: a training monitor FAILed (the run trained, but went wrong):", file=sys.stderr)
        _print_failures(monitors)
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


def cmd_diff(args: argparse.Namespace) -> int:
    """Exit 0 when no verdict got worse from RUN_A to RUN_B, 1 when one did: usable as a CI gate."""
    from checks.report.diff import compare, format_diff, resolve_run
    from checks.report.render import read_record

    report_dir = Path(args.report_dir)
    a_dir, b_dir = resolve_run(args.run_a, report_dir), resolve_run(args.run_b, report_dir)
    a, b = read_record(a_dir), read_record(b_dir)
    diff = compare(a, b, a_dir, b_dir, args.noise)
    text = format_diff(diff, a, b)
    print(text.splitlines()[-1] if args.quiet else text)
    return EXIT_FAILED if diff.got_worse else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from checks.report.render import rerender
    from recipe.runs import latest_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else latest_run_dir(Path(args.report_dir))
    if not run_dir.is_dir():
        raise RecipeError(f"{run_dir} is not a run folder")
    print(f"report: {rerender(run_dir)}")
    return EXIT_OK


def cmd_warm(args: argparse.Namespace) -> int:
    from recipe.warm import command

    return command(args)


COMMANDS = {"check": cmd_check, "train": cmd_train, "run": cmd_run, "report": cmd_report, "diff": cmd_diff,
            "warm": cmd_warm}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    args = None
    try:
        parser = build_parser(light=not set(argv) & {"check", "train", "run"})
        if not argv:  # what a newcomer types first: show what there is
            parser.print_help()
            return EXIT_USAGE
        args, extras = parser.parse_known_args(argv)
        if args.command is None:
            raise RecipeError("no command given; choose one of " + ", ".join(COMMANDS) + " (see `recipe --help`)")
        if extras:
            raise RecipeError(f"{suggest_flags(extras, args.command, build_parser().commands)} "
                              f"(see `recipe {args.command} --help`)")
        args.started = _command_started()
        if args.command in ("check", "run"):  # the figures worker starts (and imports matplotlib) on the
            from checks.report.painter import Painter  # other core while this process imports torch

            args.painter = Painter()
        if hasattr(args, "threads"):
            set_threads(args.threads)
        if args.command in ("check", "train", "run"):  # under torchrun, or --nproc N: see recipe/distributed.py
            from recipe.distributed import run_on_ranks, world_of

            world = world_of(args)
            if world is not None:
                return run_on_ranks(args, world, argv, COMMANDS[args.command], load_pipeline, main)
        return COMMANDS[args.command](args)
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else EXIT_OK
    except RecipeError as err:
        if debug:
            raise
        print(f"recipe: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recipe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if getattr(args, "painter", None) is not None:
            args.painter.close()


def preload() -> None:
    """Import what check/train/run need, for a warm process to fork from (recipe/warm.py)."""
    from importlib import import_module

    for name in ("torch._dynamo",  # the first Optimizer.step() imports it: 1 s
                 "checks.engine.preflight", "checks.engine.registry", "checks.report.painter", "checks.report.render",
                 "checks.report.figures",  # matplotlib, for drawing a backlog of figures here
                 "recipe.data", "recipe.pipeline", "recipe.train", "recipe.user_code", "torchvision"):
        try:
            import_module(name)
        except ImportError:  # torchvision is optional
            pass


def entry() -> None:
    """The `recipe` console script: `main`, then a fast exit.

    Unwinding an interpreter that holds torch and torch._dynamo takes ~0.75 s of garbage collection
    and module teardown, a quarter of a `recipe check` on `sample`, and nothing needs it: every file
    is written atomically and closed by then. The atexit handlers (the user's included) still run."""
    import atexit
    import os

    from recipe import warm

    code = warm.run_warm(sys.argv[1:], STARTED)  # None: no warm process serves this code; run it here
    if code is None:
        code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
