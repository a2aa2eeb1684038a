"""The `recipe` command. It only composes the parts: data, pipeline, checks, training, report.

`main` parses the options (checks/cli/parser.py) and hands them to one command: check.py, train.py
(train, run), report.py (report, diff), or `recipe warm` (recipe/warm.py). Exit codes: see
checks/cli/__init__.py.
"""
from __future__ import annotations

import argparse
import sys

from checks.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, clock
from checks.cli.check import cmd_check
from checks.cli.loading import load_pipeline
from checks.cli.parser import build_parser, suggest_flags
from checks.cli.report import cmd_diff, cmd_report
from checks.cli.train import cmd_run, cmd_train
from recipe.errors import RecipeError


def set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise RecipeError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


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
        args.started = clock.command_started()
        # the options typed (not defaulted): data-specific defaults may fill only the others (cli/loading.py)
        args.given = {token.split("=", 1)[0][2:].replace("-", "_") for token in argv if token.startswith("--")}
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

    code = warm.run_warm(sys.argv[1:], clock.STARTED)  # None: no warm process serves this code; run it here
    if code is None:
        code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
