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
    from recipe.all_sources import load_source
    from recipe.pipeline import resolve_device
    from recipe.user_code import make_pipeline, pipeline_spec_for

    from recipe.runs import check_report_dir

    config = config_from_args(args)  # validate flags before the slow part
    device = resolve_device(args.device)
    check_report_dir(Path(args.report_dir))
    started = time.perf_counter()
    data = load_source(args.data, args.data_dir, device, download=not args.no_download)
    if args.data == "auto" and data.source == "sample":  # fell back: say what --data-dir held, and why not used
        from recipe.unused_data import why_not_used

        note = why_not_used(Path(args.data_dir))
        if note:
            say(args, f"data dir: {note}")
    args.pipeline = pipeline_spec_for(args.pipeline, data)  # token data on the default pipeline: the tiny GPT
    if data.kind == "features":
        config = _table_defaults(args, config)
    pipeline = make_pipeline(args.pipeline, config, data)
    used = pipeline.data  # what the factory returned: a pipeline may bring or subsample its own data
    say(args, f"data: {used.source} ({len(used.train)} train / {len(used.val)} val / {len(used.test)} test) - "
              f"{used.reason}")
    args.data_load_s = time.perf_counter() - started  # reported in the run's timings
    return pipeline


def _table_defaults(args: argparse.Namespace, config):
    """A table of feature vectors (a few hundred rows) trains with recipe.features.TABLE_DEFAULTS in place of
    the image defaults, for each of those options the command line did not give (`args.given`, set by
    main). The namespace is updated too, so every reader of the options (the fingerprint) sees one value."""
    from recipe.features import TABLE_DEFAULTS

    given = getattr(args, "given", set())
    changed = {name: value for name, value in TABLE_DEFAULTS.items()
               if name not in given and getattr(args, name, value) != value}
    if not changed:
        return config
    for name, value in changed.items():
        setattr(args, name, value)
    say(args, "feature table: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changed.items()) +
        " (the table defaults; give the options to choose your own)")
    return config_from_args(args)


def say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr, flush=True)
