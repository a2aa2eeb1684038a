"""How long the checks train is a pure function of model + config (checks/measure/step_budget.py): never the
clock, so the same fingerprint gives the same results on a busy machine and an idle one."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from checks.measure import step_budget
from checks.measure.reference_run import REFERENCE_STEPS, budgeted_training
from checks.measure.step_budget import FLOPS_PER_CHECK, plan_steps
from recipe.config import MIN_CHECK_STEPS, TrainConfig
from recipe.errors import RecipeError
from recipe.pipeline import default_pipeline, mlp_pipeline
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env
from tests.pipelines.pytorch_examples_mnist import Net
from tests.pipelines.pytorch_examples_mnist import build as pytorch_examples_cnn


def fresh_plan(pipeline, asked=REFERENCE_STEPS):
    step_budget._COUNTED.clear()  # count again: a cached count would make "the same on two calls" trivial
    return plan_steps(pipeline, asked)


def test_the_forward_flops_match_the_closed_form_of_the_pytorch_examples_cnn(sample_data):
    """The oracle: 2 FLOPs per multiply-add of each conv and linear layer, counted by hand."""
    conv1 = 2 * 26 * 26 * 32 * (1 * 3 * 3)    # 1x28x28 -> 32x26x26
    conv2 = 2 * 24 * 24 * 64 * (32 * 3 * 3)   # -> 64x24x24
    fc1, fc2 = 2 * 9216 * 128, 2 * 128 * 10
    plan = fresh_plan(pytorch_examples_cnn(TrainConfig(), sample_data))
    assert plan.forward_flops_per_example == conv1 + conv2 + fc1 + fc2
    assert plan.batch_size == TrainConfig().batch_size
    assert plan.steps == FLOPS_PER_CHECK // (3 * plan.forward_flops_per_example * plan.batch_size)
    assert MIN_CHECK_STEPS < plan.steps < REFERENCE_STEPS  # a CNN gets fewer steps, still a real run


@pytest.mark.parametrize("make", [default_pipeline, mlp_pipeline], ids=["linear", "mlp"])
def test_the_tiny_default_models_get_the_full_reference_run(sample_data, make):
    plan = fresh_plan(make(TrainConfig(), sample_data))
    assert plan.steps == REFERENCE_STEPS and plan.chosen_by == "flops"
    assert plan.forward_flops_per_example > 0


def test_a_costly_model_gets_the_floor_and_the_note_says_why(sample_data, monkeypatch):
    monkeypatch.setattr(step_budget, "FLOPS_PER_CHECK", 1e6)  # a linear step (3 MFLOP) is now over budget
    plan = fresh_plan(default_pipeline(TrainConfig(), sample_data))
    assert plan.steps == MIN_CHECK_STEPS
    assert f"{MIN_CHECK_STEPS} of {REFERENCE_STEPS} steps" in plan.note and "15.7 kFLOP forward" in plan.note
    details = plan.details()
    assert details["forward_flops_per_example"] == 784 * 10 * 2 and details["steps_asked"] == REFERENCE_STEPS


class SleepyNet(Net):
    """The pytorch/examples CNN on a slow machine: every forward takes 30 ms longer."""

    def forward(self, x):
        time.sleep(0.03)
        return super().forward(x)


def test_the_steps_are_the_same_on_two_calls_and_ignore_the_clock(sample_data, monkeypatch):
    pipeline = pytorch_examples_cnn(TrainConfig(), sample_data)
    first = fresh_plan(pipeline)
    assert fresh_plan(pipeline) == first
    slow = replace(pipeline, make_model=lambda: SleepyNet())
    ticks = iter(range(0, 10**9, 60))  # a clock that jumps a minute at every look
    for clock in ("perf_counter", "monotonic", "time"):
        monkeypatch.setattr(time, clock, lambda: float(next(ticks)))
    assert fresh_plan(slow) == first


def test_a_budgeted_run_trains_the_planned_steps_whatever_the_clock_says(sample_data, monkeypatch):
    pipeline = default_pipeline(TrainConfig(), sample_data)
    expected = budgeted_training(pipeline, 80)
    ticks = iter(range(0, 10**9, 60))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))  # what the old budget read
    again = budgeted_training(pipeline, 80)
    assert again.steps == expected.steps == 80
    assert again.losses == expected.losses


def test_counting_leaves_no_trace_in_the_random_state(sample_data):
    pipeline = replace(mlp_pipeline(TrainConfig(), sample_data),
                       make_model=lambda: nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    fresh_plan(pipeline)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_check_steps_sets_the_length_outright(sample_data):
    plan = fresh_plan(pytorch_examples_cnn(TrainConfig(check_steps=200), sample_data), 200)
    assert plan.steps == 200 and plan.chosen_by == "--check-steps"
    assert plan.note == "200 steps (--check-steps 200)"
    with pytest.raises(RecipeError, match=f"at least {MIN_CHECK_STEPS}"):
        TrainConfig(check_steps=20)


def test_the_retired_seconds_budget_is_a_clear_error():
    with pytest.raises(RecipeError, match="check_budget .seconds. is gone.*check_steps"):
        TrainConfig.from_dict({"check_budget": 8.0})


def test_when_the_flops_cannot_be_counted_the_check_trains_what_it_asked(sample_data, monkeypatch):
    class Refusing:
        def __init__(self, display):
            pass

        def __enter__(self):
            raise RuntimeError("an op the counter cannot dispatch")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(step_budget, "FlopCounterMode", Refusing)
    plan = fresh_plan(pytorch_examples_cnn(TrainConfig(), sample_data))
    assert plan.steps == REFERENCE_STEPS and plan.chosen_by == "flops unknown"
    assert "an op the counter cannot dispatch" in plan.note


def test_a_transformer_is_counted_as_it_trains(sample_data):
    """In eval mode without gradients nn.TransformerEncoderLayer runs one fused op the counter misses."""
    layer = nn.TransformerEncoderLayer(d_model=28, nhead=4, dim_feedforward=64, batch_first=True)
    model = nn.Sequential(nn.Flatten(1, 2), nn.TransformerEncoder(layer, num_layers=2), nn.Flatten(), nn.Linear(784, 10))
    pipeline = replace(default_pipeline(TrainConfig(), sample_data), make_model=lambda: model)
    rows = 28  # tokens of width 28: the image's rows
    per_layer = 2 * rows * (4 * 28 * 28 + 2 * 28 * 64) + 2 * 2 * rows * rows * 28  # projections, MLP, attention
    assert fresh_plan(pipeline).forward_flops_per_example >= 2 * per_layer


# ---------------------------------------------------------------- the measured bug, end to end

TIMING_KEYS = {"created_utc", "timings", "duration_s", "seconds"}


def without_timings(value):
    """results.json less everything that reads a clock."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS and not k.endswith("_s")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def frozen_checkout(root: Path) -> Path:
    """A copy of the harness and the CNN's file: both preflights run the same code (and so share a
    fingerprint) even when someone edits the checkout while the test runs."""
    for package in ("recipe", "checks", "tests/pipelines"):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests" / "__init__.py").touch()
    return root


def preflight_record(code: Path, workdir: Path) -> dict:
    """`recipe check` on the pytorch/examples CNN, as a user runs it from `workdir`; its results.json."""
    workdir.mkdir()
    command = [PYTHON, "-m", "checks.cli", "check", "--data", "sample", "--no-download", "--quiet",
               "--pipeline", f"{code}/tests/pipelines/pytorch_examples_mnist.py:build", "--report-dir", "reports"]
    env = {**subprocess_env(), "PYTHONPATH": str(code)}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return json.loads((workdir / "reports" / "latest" / "results.json").read_text())


@pytest.mark.slow  # 1.5-3 min: two preflights of the pytorch/examples CNN, one beside a busy loop
def test_the_same_preflight_gives_the_same_results_json_beside_a_cpu_load(tmp_path):
    code = frozen_checkout(tmp_path / "code")
    idle = preflight_record(code, tmp_path / "idle")
    busy_loop = [sys.executable, "-c", "while True: pass"]
    # One busy loop: the preflight runs on one thread, so one loop beside it makes the load; one per core
    # also starved the test worker beside this one (CI runs two) for the whole loaded half.
    hogs = [subprocess.Popen(busy_loop)]
    try:
        loaded = preflight_record(code, tmp_path / "loaded")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded["timings"]["checks_s"] > idle["timings"]["checks_s"]  # the load did slow it down
    reference = next(c for c in idle["checks"] if c["name"] == "input_independent_baseline")
    assert reference["details"]["steps"] < REFERENCE_STEPS  # the CNN is cut by the rule: the case that was clock-bound
    assert without_timings(loaded) == without_timings(idle)
