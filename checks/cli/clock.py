"""When a command started: total_s in a run's timings is what a stopwatch reads, from the start of
the process (interpreter and imports included), or from the client's start in a warm fork."""
from __future__ import annotations

import time
from pathlib import Path


def _process_started() -> float:
    """perf_counter() at the moment this process started: total_s is what a stopwatch reads, interpreter
    start and imports included. From /proc on Linux (10 ms ticks); elsewhere, the import of this module."""
    now = time.perf_counter()
    try:
        import os

        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return now - age if 0 <= age < 60 else now  # implausible (a reused, long-lived process): from here
    except (OSError, ValueError, IndexError):
        return now


STARTED = _process_started()
_unclaimed_start = [STARTED]  # the first command in a process counts from its start; later ones (tests) from their call


def command_started() -> float:
    return _unclaimed_start.pop() if _unclaimed_start else time.perf_counter()


process_kind = ["cold"]  # "warm": forked from a process that had torch loaded (recipe/warm.py)


def warm_start(started: float) -> None:
    """This process is a fork of a warm one: the command began when its client started, not now."""
    _unclaimed_start[:] = [started]
    process_kind[0] = "warm"


def since(started: float) -> float:
    return time.perf_counter() - started
