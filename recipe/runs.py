"""Run folders: every run gets a new `<report-dir>/<UTC timestamp>/`; `latest` points at the newest.

A run folder is all or nothing. A new run is written into a hidden `.<name>.partial` folder beside
where it will end up (training checkpoints included, so a Ctrl-C'd run still has them), and renamed
to its real name, with `latest` moved to it, only once its report (results.json, index.html) is
complete. A run that ends with no report leaves nothing behind. Continuing a run (`recipe train
--resume`) writes into the existing folder, whose files are each replaced atomically.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from recipe.errors import RecipeError

LATEST = "latest"
PARTIAL = ".partial"                              # suffix of a run folder still being written
COMPLETE_WHEN = ("results.json", "index.html")  # written last by the report: a run with both is complete


@dataclass
class Run:
    """One run folder: `path` is where to write now, `final` where the run is seen once published."""
    report_dir: Path
    final: Path
    path: Path

    @property
    def complete(self) -> bool:
        return all((self.path / name).is_file() for name in COMPLETE_WHEN)

    def publish(self) -> Path:
        if self.path != self.final:
            os.replace(self.path, self.final)  # onto nothing, or an empty folder: one rename
            self.path = self.final
        point_latest(self.report_dir, self.final)
        return self.final

    def discard(self) -> None:
        if self.path != self.final:  # a continued run's folder was complete before: never removed
            shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def run_folder(report_dir: Path, out: Path | None = None, existing: Path | None = None) -> Iterator[Run]:
    """Write one run inside the block; publish it when the block ends.

    New runs go to a hidden folder first (see the module docstring). If the block raises (Ctrl-C, a
    crash), the run is still published when its report is complete, and removed otherwise.
    `existing` continues that run folder in place instead.
    """
    run = Run(report_dir, existing, existing) if existing is not None else _new_run(report_dir, out)
    try:
        yield run
    except BaseException:
        if run.complete:
            run.publish()
        else:
            run.discard()
        raise
    run.publish()


def _new_run(report_dir: Path, out: Path | None) -> Run:
    if out is not None:
        check_out(out)
        return Run(report_dir, out, _reserve(out.parent, f".{out.name}{PARTIAL}"))
    return new_run_dir(report_dir)


def check_out(out: Path) -> None:
    """A new run may go to `out` only if nothing is there yet (or an empty folder): runs are never mixed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecipeError(f"--out {out} already exists and is not an empty folder; pass --resume to continue "
                          "its training, or choose a new --out")


def _reserve(parent: Path, name: str) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        (parent / name).mkdir()
    except FileExistsError:
        raise RecipeError(f"{parent / name} exists: another run is writing there (or a killed one left it); "
                          "wait for it, or delete that folder") from None
    except OSError as err:
        raise RecipeError(f"cannot create a run folder in {parent}: {err.strerror}; pass a writable --report-dir") \
            from None
    return parent / name


def new_run_dir(report_dir: Path) -> Run:
    """A new run `<report-dir>/<UTC time>/`, reserved as its hidden partial folder; earlier runs are never
    overwritten."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        for suffix in [""] + [f"-{i}" for i in range(1, 100)]:
            name = f"{stamp}{suffix}"
            if (report_dir / name).exists():
                continue
            try:
                (report_dir / f".{name}{PARTIAL}").mkdir()
                return Run(report_dir, report_dir / name, report_dir / f".{name}{PARTIAL}")
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
        raise RecipeError(f"no earlier run in {report_dir} (no {link}): run `recipe check` or `recipe run` first, "
                          "or name a run folder")
    return link.resolve()


def run_dirs(report_dir: Path) -> list[Path]:
    """The published run folders in `report_dir`, newest first (no partial ones, no `latest`)."""
    if not report_dir.is_dir():
        return []
    return sorted((p for p in report_dir.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")),
                  reverse=True)


def resume_folder(report_dir: Path, out: Path | None, checkpoint_name: str) -> Path:
    """The run `--resume` continues (`out`, or `latest`), checked to hold a checkpoint; if it has none, the
    error names the runs that do."""
    with_one = [p for p in run_dirs(report_dir) if (p / checkpoint_name).is_file()]
    if out is None and not (report_dir / LATEST).exists():
        where = f"no earlier run in {report_dir} (no {report_dir / LATEST})"
    else:
        run_dir = out if out is not None else latest_run_dir(report_dir)
        if (run_dir / checkpoint_name).is_file():
            return run_dir
        where = f"no {checkpoint_name} in {run_dir}" + ("" if run_dir.is_dir() else " (no such folder)")
    if not with_one:
        raise RecipeError(f"--resume: {where}, and no run in {report_dir} has one; run without --resume first")
    names = ", ".join(str(p) for p in with_one[:5]) + (f" and {len(with_one) - 5} more" if len(with_one) > 5 else "")
    raise RecipeError(f"--resume: {where}; runs with a checkpoint: {names} (continue one with --resume --out RUN)")


@contextmanager
def finish_before_ctrl_c() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C arrives, then raise the KeyboardInterrupt: a report is
    written whole or not at all. A second Ctrl-C interrupts the block at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []

    def defer(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


@contextmanager
def ctrl_c_noted() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also noted in the list this yields. Python cannot
    raise it everywhere: landing in a finaliser (a generator closed by the garbage collector, a __del__)
    it is printed as "Exception ignored" and lost, and a training loop would run on. The loop reads the
    note at each step and raises it again (`raise_if_pressed`), so Ctrl-C always stops training."""
    pressed: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # ignored, or the user's own
        yield pressed
        return

    def note(signum, frame):
        pressed.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def raise_if_pressed(pressed: list[int] | None) -> None:
    """Raise the KeyboardInterrupt `ctrl_c_noted` noted (a safe point of the loop: between two steps)."""
    if pressed:
        raise KeyboardInterrupt
