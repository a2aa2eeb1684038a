"""lr_schedule: the planned lr of the configured run must not collapse early, restart when it is meant
to anneal once, multiply the lr by itself, or skip its first value; valid schedules must not FAIL.

Each case is a schedule a user writes, judged on the planned curve alone (no training: milliseconds)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
from torch.optim import lr_scheduler as schedulers

from checks.measure.sampling import planned_lr_curve
from checks.skeleton.schedule_checks import collapse_step, lr_schedule, rebound
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline, mlp_pipeline
from tests.test_verdicts import disagreements

EPOCHS = 10


def _pipeline(data, make_scheduler, interval, **config):
    pipeline = mlp_pipeline(TrainConfig(epochs=EPOCHS, **config), data)
    return replace(pipeline, make_scheduler=make_scheduler, scheduler_interval=interval)


def _pre_stepped_warmup(optimizer):
    scheduler = schedulers.LambdaLR(optimizer, lambda epoch: 0.01 + 0.99 * min(epoch / 5, 1))
    scheduler.step()  # an "epoch started" handler that steps before any optimizer.step()
    return scheduler


def _cosine_lambda_in_epochs(optimizer):
    return schedulers.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / EPOCHS)))


# (name, make_scheduler, interval, words the FAIL message must use)
BROKEN = [
    ("cosine T_max=epochs per batch", lambda o: schedulers.CosineAnnealingLR(o, T_max=EPOCHS), "step",
     ("stepped per batch", "T_max=10")),
    ("cosine with eta_min, T_max=epochs per batch",
     lambda o: schedulers.CosineAnnealingLR(o, T_max=EPOCHS, eta_min=1e-4), "step", ("climbs back up",)),
    ("cosine written as a LambdaLR in epochs, per batch", _cosine_lambda_in_epochs, "step", ("climbs back up",)),
    ("StepLR(7) per batch", lambda o: schedulers.StepLR(o, step_size=7, gamma=0.1), "step",
     ("stepped per batch", "step_size=7")),
    ("ExponentialLR(0.9) per batch", lambda o: schedulers.ExponentialLR(o, gamma=0.9), "step", ("for good",)),
    ("MultiStepLR in epochs per batch", lambda o: schedulers.MultiStepLR(o, milestones=[2, 4, 6, 8], gamma=0.1), "step",
     ("stepped per batch",)),
    ("ExponentialLR(0.1) per epoch", lambda o: schedulers.ExponentialLR(o, gamma=0.1), "epoch", ("too short",)),
    ("LambdaLR returning lr x decay", lambda o: schedulers.LambdaLR(o, lambda s: 1e-3 * (1 + 1e-3 * s) ** -0.75),
     "step", ("returns an lr",)),
    ("warm-up stepped before training", _pre_stepped_warmup, "epoch", ("before optimizer.step()",)),
]


@pytest.mark.parametrize("name, make_scheduler, interval, words", BROKEN, ids=[case[0] for case in BROKEN])
def test_a_broken_schedule_fails_and_names_its_cause(sample_data, name, make_scheduler, interval, words):
    result = lr_schedule(_pipeline(sample_data, make_scheduler, interval))
    assert result.verdict.value == "FAIL", result.message
    assert all(word in result.message for word in words), result.message
    assert not disagreements([result])


def _total(data) -> int:
    return mlp_pipeline(TrainConfig(epochs=EPOCHS), data).steps_per_epoch * EPOCHS


VALID = [
    ("no scheduler", lambda data: None, "step"),
    ("cosine T_max=epochs per epoch", lambda data: lambda o: schedulers.CosineAnnealingLR(o, T_max=EPOCHS), "epoch"),
    ("cosine T_max=steps per batch", lambda data: lambda o: schedulers.CosineAnnealingLR(o, T_max=_total(data)),
     "step"),
    ("StepLR(1, 0.7) per epoch", lambda data: lambda o: schedulers.StepLR(o, step_size=1, gamma=0.7), "epoch"),
    ("OneCycleLR per batch", lambda data: lambda o: schedulers.OneCycleLR(o, max_lr=3e-3, total_steps=_total(data)),
     "step"),
    ("warm restarts every epoch", lambda data: lambda o: schedulers.CosineAnnealingWarmRestarts(o, T_0=55), "step"),
    ("CyclicLR", lambda data: lambda o: schedulers.CyclicLR(o, 1e-4, 1e-3, step_size_up=20), "step"),
    ("MultiStepLR per epoch", lambda data: lambda o: schedulers.MultiStepLR(o, milestones=[5, 8]), "epoch"),
    ("linear warm-up from 0", lambda data: lambda o: schedulers.LambdaLR(o, lambda s: min(1.0, s / 50)), "step"),
    ("ReduceLROnPlateau per epoch", lambda data: lambda o: schedulers.ReduceLROnPlateau(o), "epoch"),
]


@pytest.mark.parametrize("name, make, interval", VALID, ids=[case[0] for case in VALID])
def test_a_valid_schedule_does_not_fail(sample_data, name, make, interval):
    result = lr_schedule(_pipeline(sample_data, make(sample_data), interval))
    assert not result.verdict.blocks, result.message
    assert not disagreements([result])


def test_the_default_pipelines_schedule_passes(sample_data):
    result = lr_schedule(default_pipeline(TrainConfig(), sample_data))
    assert result.verdict.value == "PASS", result.message


@pytest.mark.parametrize("make, interval, words", [
    (lambda total: lambda o: schedulers.OneCycleLR(o, max_lr=3e-3, total_steps=total), "epoch", "counts batches"),
    (lambda total: lambda o: schedulers.ReduceLROnPlateau(o), "step", "never steps"),
])
def test_a_schedule_that_hardly_moves_warns(sample_data, make, interval, words):
    result = lr_schedule(_pipeline(sample_data, make(_total(sample_data)), interval))
    assert result.verdict.value == "WARN" and words in result.message, result.message
    assert not disagreements([result])


def test_the_planned_curve_is_the_one_fit_would_follow(sample_data):
    pipeline = _pipeline(sample_data, lambda o: schedulers.StepLR(o, step_size=1, gamma=0.5), "epoch")
    plan = planned_lr_curve(pipeline)
    per_epoch = pipeline.steps_per_epoch
    assert plan.total == EPOCHS * per_epoch == len(plan.lrs)
    assert plan.lrs[0] == plan.lrs[per_epoch - 1] == pytest.approx(1e-3)  # the lr changes only after an epoch
    assert plan.lrs[per_epoch] == pytest.approx(5e-4)
    assert plan.stepped_before_training == 0


def test_collapse_and_rebound_read_the_curve():
    assert collapse_step([0.0, 0.5, 1.0, 1e-4, 1e-5], 1e-3) == 3  # a warm-up from 0 is no collapse
    assert collapse_step([1.0, 1e-4, 1.0, 1e-4], 1e-3) == 3       # a dip that recovers is not one either
    assert collapse_step([1.0, 0.5, 0.25], 1e-3) is None
    assert rebound([1.0, 0.5, 0.5, 0.5], 0.5) is None              # a step down that stays down
    assert rebound([1.0, 0.1, 0.6, 1.0], 0.5) == (2, 0.1, 1.0)
