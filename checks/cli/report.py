"""`recipe report` (redraw a run's page from its stored numbers and figures) and `recipe diff` (compare
two runs). Neither runs a model nor imports torch's models: they read run folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from checks.cli import EXIT_FAILED, EXIT_OK
from recipe.errors import RecipeError


def cmd_diff(args: argparse.Namespace) -> int:
    """Exit 0 when no verdict got worse from RUN_A to RUN_B, 1 when one did: usable as a CI gate."""
    from checks.report.diff import compare, format_diff, resolve_run
    from checks.report.record import read_record

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
