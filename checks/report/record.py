"""The record of a run, results.json: built from the results (`build_record`), made strict JSON
(`to_jsonable`) and read back (`read_record`). checks/report/render.py writes it with the figures and
the page.

The record (results.json), schema_version 1; see checks/report/SCHEMA.md for every field:

    {"schema_version": 1, "overall": "PASS|WARN|FAIL|ERROR|SKIP", "created_utc": str, "command": str,
     "forced": bool, "fingerprint": str,
     "pipeline": {"name": str, "spec": str},
     "data": {"source": str, "reason": str, "sizes": {"train": n, "val": n, "test": n}, "class_names": [str]},
     "config": {...TrainConfig.as_dict()},
     "environment": {"python", "torch", "torchvision", "numpy", "platform", "device", "seed", "git_commit"},
     "timings": {"data_load_s": float, "checks_s": float, "training_s": float | null, "report_s": float,
                 "total_s": float, "figures_wait_s": float (check: the figures worker finishing after the
                 checks), "process": "cold" | "warm" (recipe/warm.py)},
     "checks": [CheckResult.to_json(), ...],
     "training": null | {"epochs": [...], "val_accuracy", "val_ci95", "test_accuracy", "test_ci95",
                         "stopped", "per_class", "anchors", ...}}

Numbers that are not finite (a NaN loss) are stored as the strings "NaN", "Infinity" and
"-Infinity", so results.json stays strict JSON that any parser reads.
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from checks.engine.result import CheckResult, Figure, worst
from checks.report import sections
from recipe.errors import RecipeError

SCHEMA_VERSION = 1
RESULTS_NAME, FIGURES_NAME, INDEX_NAME = "results.json", "figures.json", "index.html"
REQUIRED_KEYS = ("schema_version", "overall", "created_utc", "command", "forced", "fingerprint", "pipeline",
                 "data", "config", "environment", "timings", "checks", "training")


# ---------------------------------------------------------------- building the record

def command_line() -> str:
    """The command as typed (sys.argv), shell-quoted: `recipe run ...` or `python -m checks.cli run ...`."""
    argv = list(sys.argv) or ["python"]
    original = list(getattr(sys, "orig_argv", []))
    if "-m" in original[:-1]:  # `python -m pkg.mod`: argv[0] is the module's file path, which nobody typed
        head = ["python", "-m", original[original.index("-m") + 1]]
    else:
        head = [Path(argv[0]).name]
    return " ".join(head + [shlex.quote(a) for a in argv[1:]])


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the git repository around `cwd` (the user's project), or None outside one."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def environment_info(device: Any, seed: int) -> dict[str, Any]:
    """Versions, platform, device, seed and git commit: what it takes to reproduce the run."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": version("torch"), "torchvision": version("torchvision"),
            "numpy": version("numpy"), "platform": platform.platform(), "device": str(device), "seed": seed,
            "git_commit": git_commit()}


def data_info(data: Any) -> dict[str, Any]:
    """The "data" block from a recipe.data.DataBundle."""
    return {"source": data.source, "reason": data.reason,
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "class_names": list(data.class_names)}


def build_record(results: Iterable[CheckResult], *, pipeline_name: str, pipeline_spec: str, data: Any,
                 config: Any, environment: Mapping[str, Any], timings: Mapping[str, Any],
                 training: Mapping[str, Any] | None = None, forced: bool = False, fingerprint: str = "",
                 command: str | None = None, created_utc: str | None = None,
                 preflight: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the results.json record (schema_version 1).

    `data` is a recipe.data.DataBundle (or an already built "data" dict, or None when loading
    failed); `config` a TrainConfig (or its dict); `training` the dict from `training_summary`, or
    None when training did not run. The overall verdict is the worst check verdict (PASS if none).
    """
    results = list(results)
    if data is not None and not isinstance(data, Mapping):
        data = data_info(data)
    if config is not None and not isinstance(config, Mapping):
        config = config.as_dict()
    return {
        "schema_version": SCHEMA_VERSION,
        "overall": worst(r.verdict for r in results).value,
        "created_utc": created_utc or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if command is not None else command_line(),
        "forced": bool(forced),
        "fingerprint": fingerprint,
        "pipeline": {"name": pipeline_name, "spec": pipeline_spec},
        "data": dict(data) if data is not None else None,
        "config": dict(config) if config is not None else {},
        "environment": dict(environment),
        "timings": {"data_load_s": None, "checks_s": None, "training_s": None, "total_s": None, **timings},
        "checks": [r.to_json() for r in results],
        "training": dict(training) if training is not None else None,
        "preflight": dict(preflight) if preflight is not None else None,
    }


def figures_of(results: Iterable[CheckResult], training_figures: list[Figure] | None = None) -> dict[str, list[Figure]]:
    """The `figures` argument of write_report: each check's figures under its name, plus training."""
    figures = {r.name: list(r.figures) for r in results if r.figures}
    if training_figures:
        figures[sections.TRAINING] = list(training_figures)
    return figures


# ---------------------------------------------------------------- reading back

def read_record(run_dir: Path) -> dict:
    """A run's stored results.json, checked to be one this tool wrote (else a one-line RecipeError)."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / RESULTS_NAME, "run `recipe check` or `recipe run` to make one")
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        raise RecipeError(f"{run_dir / RESULTS_NAME} is not a schema_version {SCHEMA_VERSION} results file")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise RecipeError(f"{run_dir / RESULTS_NAME} lacks {', '.join(missing)}; was it written by this tool?")
    return record


def read_json(path: Path, hint: str) -> Any:
    if not path.is_file():
        where = f"{path.parent} is not a folder" if not path.parent.is_dir() else f"no {path.name} in {path.parent}"
        raise RecipeError(f"cannot re-render the report: {where}" + (f"; {hint}" if hint else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecipeError(f"{path} is not valid JSON ({err}); it was probably cut short or edited by hand") from None


def to_jsonable(value: Any) -> Any:
    """A strict-JSON copy: tuples to lists, numpy/torch scalars to numbers, NaN/Inf to strings."""
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return to_jsonable(value.tolist())
    return str(value)
