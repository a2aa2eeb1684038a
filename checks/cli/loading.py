"""From the command line's options to a Pipeline: the config, the data, the user's factory. Every
command that runs checks or trains starts here (recipe/distributed.py is handed `load_pipeline`)."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path


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
