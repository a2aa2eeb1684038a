"""The data stage in a forked copy (checks/engine/forked_stage.py) yields exactly what one process yields:
the same results, in the same order, under the same gate; and it falls back where a fork cannot help."""
from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from checks.data import data_checks
from checks.skeleton import skeleton_checks
from checks.engine import forked_stage
from checks.engine.forked_stage import SERIAL_ENV, fork_helps, iter_forked
from checks.engine.registry import CHECKS_BY_STAGE
from checks.engine.result import CheckResult, Verdict
from checks.engine.runner import iter_results, run_check
from tests.zoo.bugs import init_100x, leaked_test_images

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork runs on Linux only")


def forked(pipeline, stages=CHECKS_BY_STAGE, gate=True, started=None, done=None):
    on_start = None if started is None else lambda name, stage: started.append(name)
    on_done = None if done is None else lambda result: done.append(result.name)
    return list(iter_forked(pipeline, stages, gate, lambda check: True, on_start, on_done, run_check))


def comparable(results: list[CheckResult]) -> list[tuple]:
    return [(r.name, r.stage, r.verdict, r.value, r.threshold, r.message, repr(r.details)) for r in results]


@pytest.mark.parametrize("bug", [None, leaked_test_images, init_100x], ids=["clean", "data_fail", "skeleton_fail"])
@pytest.mark.slow
def test_forked_data_stage_gives_what_one_process_gives(linear, bug):
    pipeline = linear if bug is None else bug(linear)
    started, done = [], []
    one_process = list(iter_results(pipeline))
    assert comparable(forked(pipeline, started=started, done=done)) == comparable(one_process)
    assert started == [r.name for r in one_process]  # the live display sees them in registry order
    assert set(done) == {r.name for r in one_process}  # every result reaches on_done
    if bug is None:
        assert len(done) == len(one_process)  # once
    verdicts = {r.name: r.verdict for r in one_process}
    if bug is leaked_test_images:  # the gate: every later check SKIPped, as in one process
        assert verdicts["duplicates_and_leakage"] is Verdict.FAIL
        assert {r.message for r in one_process if r.stage != "data"} == {"blocked by data"}
    if bug is init_100x:
        assert any(r.verdict.blocks for r in one_process if r.stage == "skeleton")
        assert {r.message for r in one_process if r.stage == "baselines"} == {"blocked by skeleton"}


def _planted(verdict: Verdict, details=None):
    def planted(pipeline):
        return CheckResult("planted", "data", verdict, 1.0, 0.0, "==", "planted", details=details or {})
    return planted


@pytest.mark.slow
def test_a_later_result_reaches_on_done_before_the_data_stage_is_yielded(linear):
    import time

    def slow_data_check(pipeline):
        time.sleep(1.0)
        return CheckResult("slow_data_check", "data", Verdict.PASS, 1.0, 2.0, "<=", "slow")

    events = []
    stages = {"data": [slow_data_check], "skeleton": [skeleton_checks.output_sanity]}
    for result in iter_forked(linear, stages, True, lambda check: True, None,
                              lambda result: events.append(("done", result.name)), run_check):
        events.append(("yielded", result.name))
    assert events.index(("done", "output_sanity")) < events.index(("yielded", "slow_data_check"))
    assert [e for e in events if e[0] == "yielded"] == [("yielded", "slow_data_check"), ("yielded", "output_sanity")]


def test_ungated_runs_every_later_check_after_a_data_fail(linear):
    stages = {"data": [_planted(Verdict.FAIL), data_checks.integrity], "skeleton": [skeleton_checks.output_sanity]}
    assert [r.verdict for r in forked(linear, stages, gate=False)] == [Verdict.FAIL, Verdict.PASS, Verdict.PASS]
    gated = forked(linear, stages)
    assert [r.verdict for r in gated] == [Verdict.FAIL, Verdict.PASS, Verdict.SKIP]
    assert gated[-1].message == "blocked by data"


def test_a_result_that_does_not_pickle_is_run_here(linear):
    stages = {"data": [_planted(Verdict.PASS, {"lock": __import__("threading").Lock()}), data_checks.integrity],
              "skeleton": [skeleton_checks.output_sanity]}
    results = forked(linear, stages)
    assert [r.verdict for r in results] == [Verdict.PASS] * 3
    assert "lock" in results[0].details  # the parent's own run of it


def test_a_copy_that_dies_leaves_its_checks_to_this_process(linear):
    parent = os.getpid()

    def dies_in_the_copy(pipeline):
        if os.getpid() != parent:
            os._exit(3)
        return CheckResult("dies_in_the_copy", "data", Verdict.WARN, 1.0, 0.0, "==", "ran in the parent")

    stages = {"data": [data_checks.integrity, dies_in_the_copy, data_checks.split_sizes],
              "skeleton": [skeleton_checks.output_sanity]}
    results = forked(linear, stages)
    assert [r.name for r in results] == ["integrity", "dies_in_the_copy", "split_sizes", "output_sanity"]
    assert results[1].message == "ran in the parent"
    assert all(r.verdict is not Verdict.ERROR for r in results)


def test_fork_is_declined_where_it_cannot_help(linear, monkeypatch):
    monkeypatch.setenv(SERIAL_ENV, "1")
    assert not fork_helps(linear)
    monkeypatch.delenv(SERIAL_ENV)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not fork_helps(linear)  # one core: nothing to run beside
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert not fork_helps(linear)  # CUDA does not survive a fork
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(forked_stage, "FORK_FROM_IMAGES", len(linear.data.train) + 1)
    assert not fork_helps(linear)  # a short data stage: nothing to gain
    monkeypatch.setattr(forked_stage, "FORK_FROM_IMAGES", len(linear.data.train))
    assert fork_helps(linear) is (threading.active_count() == 1)


@pytest.mark.slow
def test_recipe_check_asks_for_the_fork(monkeypatch, tmp_path, fast_sample):
    """`recipe check` runs the stages side by side where it can (run_preflight(..., fork=True))."""
    import checks.engine.forked_stage as forked_stage
    from checks.cli.main import main

    asked = []
    monkeypatch.setattr(forked_stage, "fork_helps", lambda pipeline: asked.append(pipeline) or False)
    assert main(["check", "--data", "sample", "--quiet", "--report-dir", str(tmp_path)]) == 0
    assert len(asked) == 1
