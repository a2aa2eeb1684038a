"""The `recipe` command. It only composes the parts: data, pipeline, checks, training, report.

Exit codes: 0 all passed (WARN allowed), 1 a check FAILed/ERRORed or training stopped,
2 a usage or data error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from recipe.errors import RecipeError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other user error
        raise RecipeError(f"{self.prog}: {message} (see --help)")


def _common_options() -> argparse.ArgumentParser:
    from recipe.data import SOURCES
    from recipe.pipeline import DEFAULT_PIPELINE

    common = _Parser(add_help=False)
    common.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                        help="factory 'module:build' or 'file.py:build' returning a Pipeline (imports your code)")
    common.add_argument("--data", default="auto", choices=SOURCES, help="data source (default: auto)")
    common.add_argument("--data-dir", default="data", help="folder with the IDX files (default: ./data)")
    common.add_argument("--no-download", action="store_true", help="never try to download data")
    common.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    common.add_argument("--report-dir", default="reports", help="where run folders go (default: ./reports)")
    common.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--seed", type=int, default=0)
    return common


def _training_options(parser: argparse.ArgumentParser) -> None:
    from recipe.config import OPTIMIZERS, SCHEDULES, TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS)
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--augment", default=defaults.augment, help="none or shift-rotate")


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(prog="recipe", description="Sanity-check, train and report an MNIST-style classifier.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", parents=[common], help="train (gated on the checks)")
    _training_options(train)
    train.add_argument("--out", default=None, help="run folder (default: a new <report-dir>/<UTC time>/)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out "
                       "(default: <report-dir>/latest)")
    return parser


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
    data = load_data(args.data, args.data_dir, device, download=not args.no_download)
    say(args, f"data: {data.source} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test) - {data.reason}")
    return make_pipeline(args.pipeline, config, data)


def say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr)


def new_run_dir(report_dir: str | Path) -> Path:
    from recipe.runs import new_run_dir as make

    return make(Path(report_dir))


def cmd_train(args: argparse.Namespace) -> int:
    from recipe.runs import latest_run_dir, point_latest
    from recipe.train import fit

    if args.resume and args.out is None:
        out = latest_run_dir(Path(args.report_dir))
    else:
        out = Path(args.out) if args.out else new_run_dir(args.report_dir)
    pipeline = load_pipeline(args)
    result = fit(pipeline, out, resume=args.resume, quiet=args.quiet)
    point_latest(Path(args.report_dir), out)
    return report_training(args, result, out)


def report_training(args: argparse.Namespace, result, out: Path) -> int:
    if result.stopped:
        print(f"recipe: training stopped: {result.stopped} ({out})", file=sys.stderr)
        return EXIT_INTERRUPTED if result.stopped.startswith("interrupted") else EXIT_FAILED
    last = result.history[-1] if result.history else {}
    print(f"val accuracy {last.get('val_accuracy', float('nan')):.4f}, "
          f"test accuracy {result.test['accuracy']:.4f}; artefacts in {out}")
    return EXIT_OK


COMMANDS = {"train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
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
