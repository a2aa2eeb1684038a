"""The painter draws check figures in a worker while the checks run; the report must not change for it,
lose a figure when the worker dies, or re-run the user's script; and total_s is the command's wall time."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import pytest

from checks.report.painter import Painter, draw_entry
from checks.engine.result import Figure

REPO = Path(__file__).resolve().parents[1]


def some_figures() -> list[Figure]:
    rng = np.random.default_rng(0)
    return [Figure("images", "digits", {"images": torch.rand(6, 1, 12, 12), "captions": list("abcdef")}),
            Figure("lines", "loss", {"series": {"train": [3.0, 2.0, 1.5]}, "xlabel": "step"}),
            Figure("matrix", "confusion", {"values": rng.integers(0, 9, (3, 3)), "rows": list("xyz"),
                                           "cols": list("xyz")}),
            Figure("bogus", "cannot be drawn", {})]


@pytest.mark.slow
def test_the_worker_draws_exactly_what_this_process_would():
    figures = some_figures()
    with Painter(workers=1) as painter:
        painter.submit("check_a", figures[:2])
        painter.submit("check_b", figures[2:])
        drawn = painter.drawn()
    here = [draw_entry(f) for f in figures]
    assert drawn["check_a"] + drawn["check_b"] == here  # same PNG bytes, same error entry
    assert here[0]["png_base64"] and here[-1]["png_base64"] is None and "bogus" in here[-1]["error"]


@pytest.mark.slow
def test_a_long_backlog_is_drawn_from_both_ends_in_order():
    figures = [f for _ in range(4) for f in some_figures()[:2]]  # 8 figures at once: the worker cannot keep up
    painter = Painter(workers=1)
    painter.submit("many", figures)
    drawn = painter.drawn()
    assert painter.drawn_here >= 1  # this process took part of the backlog
    assert painter.drawn_here < len(figures)  # and the worker the rest
    assert drawn["many"] == [draw_entry(f) for f in figures]  # each in its place, the same bytes


def test_a_dead_worker_costs_no_figure():
    painter = Painter(workers=1)
    assert not painter._threads_started  # they start with the first figure: a fork before copies no thread
    painter.submit("check_a", some_figures()[:1])
    painter._child.kill()
    painter.submit("check_a", some_figures()[1:2])
    drawn = painter.drawn()
    assert [e["title"] for e in drawn["check_a"]] == ["digits", "loss"]
    assert all(e["png_base64"] for e in drawn["check_a"])


@pytest.mark.slow
def test_a_stuck_worker_is_killed_and_costs_no_figure():
    import signal

    painter = Painter(workers=1)
    painter.CLOSE_WAIT_S = 1.0
    painter.submit("check_a", some_figures()[:1])
    painter._child.send_signal(signal.SIGSTOP)  # alive, but it never answers again
    painter.submit("check_a", some_figures()[1:2])
    drawn = painter.drawn()
    assert [e["title"] for e in drawn["check_a"]] == ["digits", "loss"]
    assert all(e["png_base64"] for e in drawn["check_a"])


def test_no_worker_draws_in_this_process():
    painter = Painter(workers=0)
    painter.submit("check_a", some_figures()[1:2])
    assert painter.drawn()["check_a"] == [draw_entry(some_figures()[1])]


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_once_and_total_s_is_its_wall_time(tmp_path):
    # multiprocessing's spawn would import this script again in the worker and run a second preflight
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from checks.cli.main import main
        sys.exit(main(["check", "--data", "sample", "--no-download", "--quiet", "--report-dir", {str(tmp_path / 'r')!r}]))
    """))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    runs = sorted((tmp_path / "r").glob("2*"))
    assert len(runs) == 1, [r.name for r in runs]
    timings = json.loads((runs[0] / "results.json").read_text())["timings"]
    # counted from the process start (interpreter, imports) to the report: what a stopwatch reads, less
    # interpreter start-up before /proc's tick and the exit after the report
    assert 0.75 * wall <= timings["total_s"] <= wall, (timings, wall)
    assert timings["report_s"] < timings["total_s"]
