"""The `recipe` command line: its parser, its one-line errors with did-you-mean suggestions, and
`--version`. Nothing here imports torch: `recipe --help`, `report`, `diff` and typos answer at once.
"""
from __future__ import annotations

import argparse
from functools import partial

from recipe.errors import RecipeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other user error
        raise RecipeError(f"{suggest_choice(message)} (see `{self.prog} --help`)")


def suggest_choice(message: str) -> str:
    """argparse's "invalid choice" message, with the closest choice offered ("did you mean 'adam'?")."""
    import re
    from difflib import get_close_matches

    found = re.search(r"argument (?P<arg>\S+): invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)$",
                      message)
    if found is None:
        return message
    choices = [c.strip().strip("'") for c in found["choices"].split(",")]
    close = get_close_matches(found["value"], choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = "unknown command" if found["arg"] == "COMMAND" else f"argument {found['arg']}: invalid choice:"
    return f"{what} {found['value']!r}{hint} (choose from {', '.join(choices)})"


def suggest_flags(extras: list[str], command: str, commands: dict[str, argparse.ArgumentParser]) -> str:
    """"unrecognized arguments: --epochz 3; did you mean --epochs?", or which command takes the flag."""
    from difflib import get_close_matches

    def flags(parser: argparse.ArgumentParser) -> list[str]:
        return [flag for action in parser._actions for flag in action.option_strings]

    mine = flags(commands[command])
    hints = []
    for token in (t.split("=", 1)[0] for t in extras if t.startswith("-")):
        others = [name for name, parser in commands.items() if name != command and token in flags(parser)]
        close = get_close_matches(token, mine, n=1)
        if token in RETIRED_FLAGS:
            hints.append(RETIRED_FLAGS[token])
        elif others:
            hints.append(f"{token} is an option of `recipe {' / '.join(others)}`, not of `recipe {command}`")
        elif close:
            hints.append(f"did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extras)}" + "".join(f"; {h}" for h in hints)


class _Version(argparse.Action):
    """--version, read from the installed distribution only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"recipe {version()}")
        parser.exit()


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(version unknown: not installed; run `pip install -e .`)"


DISTRIBUTION = "recipe-harness"
RETIRED_FLAGS = {  # options that are gone, and what replaced them (recipe.config.RETIRED says why, for config files)
    "--check-budget": "--check-budget (seconds) is gone: the checks train a number of steps chosen from the model's "
                      "forward FLOPs, never from the clock, so the same fingerprint gives the same results on any "
                      "machine; use --check-steps N to set the length yourself",
}
SUMMARIES = {  # one line each: the command list of `recipe --help`, and the first line of `recipe X --help`
    "check": "run the preflight checks and write their report",
    "train": "train, gated on a complete passing preflight of the same code, data, config and device",
    "run": "the main job: the preflight checks, then training if they pass, into one report",
    "report": "re-render a run's index.html from its saved results.json and figures.json; runs nothing",
    "diff": "compare two runs: flipped verdicts, moved values, accuracy and time",
    "warm": "keep torch loaded in a background process, so that check/train/run start at once",
}


def build_parser(light: bool = False) -> argparse.ArgumentParser:
    """The whole command line. `light` leaves out the options of check/train/run, whose choices come
    from modules that import torch (2 s): `recipe report`, `diff`, `--help` and typos answer at once."""
    from recipe.options import REPORT_DIR, data_options, training_options

    parser = _Parser(prog="recipe", allow_abbrev=False,
                     description="Sanity-check, train and report an image classifier.",
                     epilog="Exit codes: 0 passed, 1 a check failed or training stopped (diff: a verdict got "
                            "worse), 2 usage or data error, 130 interrupted. `recipe COMMAND --help` lists a "
                            "command's options.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=partial(_Parser, allow_abbrev=False))
    subs = {name: commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
            for name, summary in SUMMARIES.items()}
    check, train, run, report, diff, warm = (subs[name] for name in SUMMARIES)
    warm.add_argument("--stop", action="store_true", help="stop the warm process of this code and environment")
    for sub in (check, train, run):
        for flag, spec in ([] if light else data_options() + training_options()):
            sub.add_argument(flag, **spec)
        sub.add_argument("--no-gate", action="store_true", help="run later check stages even after a FAIL")
    for sub in (train, run):
        sub.add_argument("--force", action="store_true", help="train even though the checks failed (reported loudly)")
        sub.add_argument("--nproc", type=int, default=1, help="train on N processes with torch.distributed (DDP; gloo "
                         "on CPU, nccl on CUDA); --batch-size stays the global batch. Default 1")
        sub.add_argument("--no-monitors", action="store_true", help="do not watch the training run (loss spikes, "
                         "gradient norms, update/weight ratios, dead units, overfitting); saves a few %% of its time")
    train.add_argument("--out", default=None, help="run folder (default: a new <report-dir>/<UTC time>/)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out "
                       "(default: <report-dir>/latest)")
    report.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                        help="run folder (default: <report-dir>/latest)")
    diff.add_argument("run_a", metavar="RUN_A", help="the earlier run: its folder, or its name in --report-dir")
    diff.add_argument("run_b", metavar="RUN_B", nargs="?", default="latest",
                      help="the later run (default: latest)")
    diff.add_argument("--noise", type=float, default=0.10,
                      help="a value has moved when it changed by more than this fraction of itself (default 0.10) "
                           "and by more than 1%% of its threshold; smaller changes count as run-to-run noise")
    for sub in (report, diff):
        sub.add_argument(REPORT_DIR[0], **REPORT_DIR[1])
    for sub in subs.values():
        sub.add_argument("--quiet", action="store_true", help="no progress lines or chatter")
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.commands = subs
    return parser
