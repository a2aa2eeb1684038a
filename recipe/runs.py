"""Run folders: every run gets a new `<report-dir>/<UTC timestamp>/`; `latest` points at the newest."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from recipe.errors import RecipeError

LATEST = "latest"


def new_run_dir(report_dir: Path) -> Path:
    """Create a fresh run folder; earlier runs are never overwritten."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        for suffix in [""] + [f"-{i}" for i in range(1, 100)]:
            candidate = report_dir / f"{stamp}{suffix}"
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except PermissionError:
        raise RecipeError(f"cannot write to report dir {report_dir}: permission denied; "
                          "pass a writable --report-dir") from None
    except OSError as err:
        raise RecipeError(f"cannot create a run folder in {report_dir}: {err.strerror}; "
                          "pass a writable --report-dir") from None
    raise RecipeError(f"could not find a free run folder name in {report_dir}")


def check_report_dir(report_dir: Path) -> None:
    """Fail fast, before any slow work, when run folders cannot be made in `report_dir`."""
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecipeError(f"cannot create a run folder in {report_dir}: {err.strerror}; "
                          "pass a writable --report-dir") from None
    if not os.access(report_dir, os.W_OK | os.X_OK):
        raise RecipeError(f"cannot write to report dir {report_dir}: permission denied; pass a writable --report-dir")


def point_latest(report_dir: Path, run_dir: Path) -> None:
    """Make `<report-dir>/latest` a symlink to `run_dir`, swapped in atomically."""
    link = report_dir / LATEST
    tmp = report_dir / f".{LATEST}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        target = os.path.relpath(run_dir.resolve(), report_dir.resolve())
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        pass  # `latest` is a convenience; the run folder itself is what matters


def latest_run_dir(report_dir: Path) -> Path:
    link = report_dir / LATEST
    if not link.exists():
        raise RecipeError(f"no earlier run in {report_dir} (no {link}); pass --out or run without --resume")
    return link.resolve()
