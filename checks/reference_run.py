"""One short training run on the real inputs, shared by the baselines that need one.

`input_independent_baseline`, `training_loss_decreases` and `prediction_dynamics` all train a fresh
model with the same seed, batches, optimizer, scheduler and step: they would train the very same
run three times. `reference_run` trains it once per pipeline and keeps it while that pipeline is
being checked (the last pipeline only: a check run never holds more than one).

The run is budgeted: after a few steps it measures the cost of a step and trains at most
`config.check_budget` seconds (never fewer than MIN_STEPS steps), so a CNN that costs real time per
step still gets a preflight of seconds, while the tiny default models get their full length.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from checks.sampling import PlannedSchedule, first_batches, fresh_model, generator
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

REFERENCE_STEPS = 300  # what the cheap models get; a budget can only shorten it
MIN_STEPS = 60         # the loss windows (20 steps each) still need room to compare
TIMED_STEPS = 5        # steps measured before the budget sizes the run
SNAPSHOTS = 10         # prediction snapshots on fixed val examples across the run
N_WATCHED = 16         # fixed val examples whose predictions are recorded


@dataclass
class TrainingRun:
    model: nn.Module
    losses: list[float]
    seconds_per_step: float
    budget_s: float
    planned_steps: int               # before the budget: what the check asked for
    taken: list[int] = field(default_factory=list)        # steps at which predictions were recorded
    true_class_probability: list[torch.Tensor] = field(default_factory=list)  # (N_WATCHED,) per snapshot
    watched_labels: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def budget_note(self) -> str:
        if self.steps >= self.planned_steps:
            return f"{self.steps} steps"
        return (f"{self.steps} of {self.planned_steps} steps: a step costs {self.seconds_per_step * 1e3:.0f} ms and "
                f"the budget is {self.budget_s:g} s (--check-budget)")


def budgeted_training(pipeline: Pipeline, steps: int, *, zero_inputs: bool = False,
                      watch: bool = False) -> TrainingRun:
    """Train a fresh model like `short_training`, for `steps` steps or the time budget, whichever is less."""
    model = fresh_model(pipeline)
    optimizer, scheduler = training_objects(pipeline, model)
    schedule = PlannedSchedule(pipeline, optimizer, scheduler)
    budget = pipeline.config.check_budget
    run = TrainingRun(model, [], 0.0, budget, steps)
    if watch:
        batch = first_batches(pipeline, "val", 1, shuffle=False)[0]
        watched_x, run.watched_labels = batch.x[:N_WATCHED], batch.y[:N_WATCHED]
    limit, epoch, started = steps, 0, time.perf_counter()

    def snapshot() -> None:
        model.eval()
        with torch.no_grad():
            probabilities = torch.softmax(model(watched_x).float(), 1)
        model.train()
        run.true_class_probability.append(probabilities[torch.arange(len(run.watched_labels)), run.watched_labels].cpu())
        run.taken.append(len(run.losses))

    if watch:
        snapshot()
    while len(run.losses) < limit:
        for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline, epoch)):
            x = torch.zeros_like(batch.x) if zero_inputs else batch.x
            run.losses.append(float(take_step(pipeline, model, optimizer, x, batch.y)))
            schedule.after_step(len(run.losses))
            if len(run.losses) == TIMED_STEPS:
                run.seconds_per_step = (time.perf_counter() - started) / TIMED_STEPS
                limit = min(steps, max(MIN_STEPS, int(budget / max(run.seconds_per_step, 1e-9))))
            if watch and len(run.losses) % max(limit // SNAPSHOTS, 1) == 0:
                snapshot()
            if len(run.losses) >= limit:
                break
        epoch += 1
    if watch and run.taken[-1] != len(run.losses):
        snapshot()
    if not run.seconds_per_step:
        run.seconds_per_step = (time.perf_counter() - started) / max(len(run.losses), 1)
    return run


_LAST: list[tuple[weakref.ref, TrainingRun]] = []


def reference_run(pipeline: Pipeline) -> TrainingRun:
    """The shared run on real inputs for `pipeline`, trained on first use."""
    if _LAST and _LAST[0][0]() is pipeline:
        return _LAST[0][1]
    run = budgeted_training(pipeline, REFERENCE_STEPS, watch=True)
    _LAST[:] = [(weakref.ref(pipeline), run)]
    return run
