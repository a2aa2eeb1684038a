"""`fresh_randomness`: a train step that resets a random generator to a fixed state on every call.

Bad twins, written the ways users write them: `torch.manual_seed(0)` at the top of the step, a helper
that seeds every library (`seed_everything(42)`), a seed reset after the update, numpy's and Python's
generators reset by a step whose augmentation draws from them. Clean: a step that seeds per step on
purpose (`manual_seed(step)`), a step that draws its own dropout, a user generator seeded once, and
models with no randomness at all.
"""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from checks.engine.result import Verdict
from checks.skeleton.rng_checks import fresh_randomness
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline, mlp_pipeline
from recipe.steps import train_step


class DropoutMLP(nn.Module):
    def __init__(self, classes: int, size: int, p: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, 64), nn.ReLU(), nn.Dropout(p), nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)


class FunctionalNoise(nn.Module):
    """Randomness without a Dropout module: Gaussian noise on the hidden units while training."""

    def __init__(self, classes: int, size: int):
        super().__init__()
        self.hidden, self.head = nn.Linear(size, 64), nn.Linear(64, classes)

    def forward(self, x):
        h = torch.relu(self.hidden(x.flatten(1)))
        if self.training:
            h = h + 0.1 * torch.randn_like(h)
        return self.head(h)


def with_model(pipeline, model_class):
    size = pipeline.data.train.images[0].numel()
    return replace(pipeline, make_model=lambda: model_class(pipeline.num_classes, size))


def seeded_first(model, optimizer, loss_fn, x, y):
    torch.manual_seed(0)  # "for reproducibility"
    return train_step(model, optimizer, loss_fn, x, y)


def seed_everything_each_step(model, optimizer, loss_fn, x, y):
    random.seed(42)
    np.random.seed(42)
    torch.manual_seed(42)
    return train_step(model, optimizer, loss_fn, x, y)


def seeded_after_update(model, optimizer, loss_fn, x, y):
    loss = train_step(model, optimizer, loss_fn, x, y)
    torch.manual_seed(1234)  # reset for the next batch: the next forward draws the same mask
    return loss


def numpy_jitter_reseeded(model, optimizer, loss_fn, x, y):
    np.random.seed(0)  # the step's own augmentation draws the same jitter every batch
    jitter = torch.from_numpy(np.random.normal(0, 0.05, size=tuple(x.shape)).astype(np.float32))
    return train_step(model, optimizer, loss_fn, x + jitter, y)


def python_flip_reseeded(model, optimizer, loss_fn, x, y):
    random.seed(7)
    return train_step(model, optimizer, loss_fn, x.flip(-1) if random.random() < 0.5 else x, y)


class SeededPerStep:
    """A seed of its own for every step (a reproducible per-step stream): valid."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, optimizer, loss_fn, x, y):
        self.calls += 1
        torch.manual_seed(1000 + self.calls)
        return train_step(model, optimizer, loss_fn, x, y)


class OwnGenerator:
    """Augmentation from a generator of the step's own, seeded once: valid."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, model, optimizer, loss_fn, x, y):
        noise = 0.05 * torch.randn(x.shape, generator=self.generator)
        return train_step(model, optimizer, loss_fn, x + noise, y)


@pytest.mark.parametrize("model_class", [DropoutMLP, FunctionalNoise])
@pytest.mark.parametrize("step", [seeded_first, seed_everything_each_step, seeded_after_update])
def test_a_step_that_resets_torchs_generator_fails_when_the_forward_is_random(sample_data, model_class, step):
    pipeline = replace(with_model(default_pipeline(TrainConfig(), sample_data), model_class), train_step=step)
    result = fresh_randomness(pipeline)
    assert result.verdict is Verdict.FAIL, result.message
    assert "same dropout mask" in result.message and "torch.manual_seed" in result.message


@pytest.mark.parametrize("step, generator", [(numpy_jitter_reseeded, "numpy"), (python_flip_reseeded, "random"),
                                             (seeded_first, "torch")])
def test_a_reset_nothing_in_the_forward_draws_from_warns_and_names_the_generator(sample_data, step, generator):
    pipeline = replace(default_pipeline(TrainConfig(), sample_data), train_step=step)  # a linear model: no randomness
    result = fresh_randomness(pipeline)
    assert result.verdict is Verdict.WARN, result.message
    assert result.details["reset"] == [generator] and "Seed once, before training" in result.message


@pytest.mark.parametrize("build, model_class, step", [
    (default_pipeline, None, None),
    (mlp_pipeline, None, None),
    (default_pipeline, DropoutMLP, None),
    (default_pipeline, FunctionalNoise, None),
    (default_pipeline, DropoutMLP, SeededPerStep()),
    (default_pipeline, DropoutMLP, OwnGenerator()),
])
def test_valid_steps_pass(sample_data, build, model_class, step):
    pipeline = build(TrainConfig(), sample_data)
    if model_class:
        pipeline = with_model(pipeline, model_class)
    if step:
        pipeline = replace(pipeline, train_step=step)
    result = fresh_randomness(pipeline)
    assert result.verdict is Verdict.PASS, result.message


def test_the_check_leaves_every_generator_as_it_found_it(sample_data):
    pipeline = replace(with_model(default_pipeline(TrainConfig(), sample_data), DropoutMLP), train_step=seed_everything_each_step)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    fresh_randomness(pipeline)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
