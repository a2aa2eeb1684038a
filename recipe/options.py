"""The options every entry point shares, declared once: the `recipe` CLI (argparse) and the
`pytest checks/` preflight (pytest's parser, which takes the same keyword arguments)."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

Option = tuple[str, dict[str, Any]]
REPORT_DIR: Option = ("--report-dir", {"default": "reports", "help": "where run folders go (default: ./reports)"})


def data_options() -> list[Option]:
    from recipe.all_sources import SOURCES
    from recipe.pipeline import DEFAULT_PIPELINE

    return [
        ("--pipeline", {"default": DEFAULT_PIPELINE,
                        "help": "factory 'module:build' or 'file.py:build' returning a Pipeline (imports your code)"}),
        ("--data", {"default": "auto", "choices": SOURCES, "help": "data source (default: auto)"}),
        ("--data-dir", {"default": "data", "help": "folder with the IDX files, or the file for --data text "
                                                  "(default: ./data)"}),
        ("--no-download", {"action": "store_true", "help": "never try to download data"}),
        ("--device", {"default": "cpu", "help": "cpu, cuda or auto (default: cpu)"}),
        REPORT_DIR,
        ("--threads", {"type": int, "default": 1, "help": "CPU threads for torch (default 1: the models are tiny, "
                                                          "and extra threads only add overhead, ~100x on a busy "
                                                          "2-core machine)"}),
    ]


def training_options() -> list[Option]:
    """One option per TrainConfig field (--epochs, --batch-size, --lr, ..., --seed)."""
    from recipe.augment import AUGMENTATIONS
    from recipe.config import OPTIMIZERS, SCHEDULES, TrainConfig

    defaults = TrainConfig()
    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": tuple(AUGMENTATIONS)}
    options = []
    for field in fields(TrainConfig):
        default = getattr(defaults, field.name)
        spec = {"type": type(default), "default": default,
                "help": "; ".join(filter(None, [field.metadata.get("help"), f"default: {default}"]))}
        if field.name in choices:
            spec["choices"] = choices[field.name]
        options.append((f"--{field.name.replace('_', '-')}", spec))
    return options
