"""One short training run on the real inputs, shared by the baselines that need one.

`input_independent_baseline`, `training_loss_decreases` and `prediction_dynamics` all train a fresh
model with the same seed, batches, optimizer, scheduler and step: they would train the very same
run three times. `reference_run` trains it once per pipeline and keeps it while that pipeline is
being checked (the last pipeline only: a check run never holds more than one).

The run is budgeted in steps, never by the clock (checks/measure/step_budget.py): the tiny default models
train the full REFERENCE_STEPS, a model that costs more FLOPs per example fewer (never fewer than
MIN_CHECK_STEPS), so a CNN still gets a preflight of seconds and the same fingerprint the same results.
"""
from __future__ import annotations

import copy
import functools
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from checks.measure.batchnorm import judged_copy
from checks.measure.predictions import true_class_probability
from checks.measure.sampling import PlannedSchedule, behaves_differently_in_eval, first_batches, fresh_model, generator
from checks.measure.step_budget import StepPlan, plan_steps
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

REFERENCE_STEPS = 300  # what the cheap models get; the FLOP budget can only shorten it (--check-steps sets it)
SNAPSHOTS = 10         # prediction snapshots on fixed val examples across the run
N_WATCHED = 16         # fixed val examples whose predictions are recorded


@dataclass
class TrainingRun:
    model: nn.Module
    losses: list[float]
    plan: StepPlan                   # how many steps, and the model's FLOPs that decided it
    taken: list[int] = field(default_factory=list)        # steps at which predictions were recorded
    true_class_probability: list[torch.Tensor] = field(default_factory=list)  # (N_WATCHED,) per snapshot
    watched_labels: torch.Tensor | None = None
    modes: "ModeWatch | None" = None  # train/eval mode of every module during the steps (watched runs)

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def budget_note(self) -> str:
        return self.plan.note

    @property
    def budget_details(self) -> dict:
        """The plan for a check's details: the note and the rule's inputs (FLOPs per example, steps asked)."""
        return self.plan.details()


class ModeWatch:
    """Which modules each step's training forward ran in another mode than `model.train()` gives them.

    `fit` calls model.train() once per epoch; a step that calls model.eval() (to log an accuracy, to
    evaluate a val batch) and never model.train() again leaves dropout off and BatchNorm on its running
    statistics for the rest of the epoch. A forward pre-hook on each module whose output depends on
    its mode (`behaves_differently_in_eval`: only those, so a plain linear model keeps its hook-free
    fast step) notes its `training` flag whenever it runs with gradients on (a training forward; an
    evaluation under no_grad is not one). A module trained in another mode in a step when every such
    call found it in another mode than `expect()` saw right after model.train(): a model whose
    train() keeps BatchNorm frozen on purpose has it frozen in that baseline already. It also notes
    the modules a step hands back in another mode than it was given them, which names the step that
    switched them.
    """

    def __init__(self, model: nn.Module):
        self.names = {module: name for name, module in model.named_modules()}  # "" is the model itself
        self.watched = [name for module, name in self.names.items() if behaves_differently_in_eval(module)]
        self.expected: dict[nn.Module, bool] = {}
        self.given: dict[nn.Module, bool] = {}
        self.called: dict[nn.Module, set[bool]] = {}
        self.trained_in_other_mode: list[tuple[int, tuple[str, ...]]] = []  # (step, module names)
        self.left_in_other_mode: list[tuple[int, tuple[str, ...]]] = []     # (step, names it switched)
        self.forwards_seen = 0  # steps whose training forward ran a watched module
        modules = dict(model.named_modules())
        self._handles = [modules[name].register_forward_pre_hook(self._note) for name in self.watched]

    def __deepcopy__(self, memo) -> "ModeWatch":
        # A copy of the watched model (the snapshots' judged copy) carries the hooks: it shares this watch
        # rather than copy it, and with it the whole model it names (torch.compile's wrapper breaks there).
        return self

    def _note(self, module: nn.Module, args) -> None:
        if torch.is_grad_enabled():  # a judged copy shares the hooks, but runs without gradients
            self.called.setdefault(module, set()).add(module.training)

    def expect(self) -> None:
        """Call right after model.train()."""
        self.expected = {module: module.training for module in self.names}

    def before_step(self) -> None:
        self.given = {module: module.training for module in self.names}
        self.called.clear()

    def after_step(self, step: int) -> None:
        self.forwards_seen += bool(self.called)
        other = tuple(self.names[m] for m, modes in self.called.items() if self.expected.get(m, True) not in modes)
        if other:
            self.trained_in_other_mode.append((step, other))
        switched = tuple(self.names[m] for m, was in self.given.items() if m.training != was)
        if switched:
            self.left_in_other_mode.append((step, switched))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def budgeted_training(pipeline: Pipeline, steps: int, *, zero_inputs: bool = False,
                      watch: bool = False, warmup: int = 0) -> TrainingRun:
    """Train a fresh model like `short_training`, for `steps` steps or fewer when the model costs more
    FLOPs than a check may spend (`plan_steps`): the same number on any machine, under any load.

    `warmup` > 0 scales every group's lr by (step + 1) / warmup over the first `warmup` steps, on top
    of the user's own schedule (which still sets the lr each step): the witness run that tells a
    start-up overshoot from an lr that is too high all along."""
    plan = plan_steps(pipeline, steps)
    model = fresh_model(pipeline)
    optimizer, scheduler = training_objects(pipeline, model)
    schedule = PlannedSchedule(pipeline, optimizer, scheduler)
    run = TrainingRun(model, [], plan)
    if watch:
        batch = first_batches(pipeline, "val", 1, shuffle=False)[0]
        watched_x, run.watched_labels = batch.x[:N_WATCHED], batch.y[:N_WATCHED]
    limit, epoch = plan.steps, 0

    def snapshot() -> None:
        judged = judged_copy(model, pipeline)  # BatchNorm statistics measured on train batches: see batchnorm.py
        modes = [(module, module.training) for module in model.modules()]
        judged.eval()
        with torch.no_grad():  # (B,): for token sequences the mean over each one's scored positions
            probabilities = true_class_probability(forward_logits(judged, watched_x), run.watched_labels,
                                                   pipeline.data.pad_id)
        for module, training in modes:  # each module as the step left it: model.train() would hide one left in eval
            module.training = training
        run.true_class_probability.append(probabilities.cpu())
        run.taken.append(len(run.losses))

    if watch:
        snapshot()
        run.modes = ModeWatch(model)
    try:
        while len(run.losses) < limit:
            model.train()  # as fit does at the start of every epoch
            if run.modes:
                run.modes.expect()
            for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline, epoch)):
                x = torch.zeros_like(batch.x) if zero_inputs else batch.x
                if run.modes:
                    run.modes.before_step()
                run.losses.append(float(_warmed_step(pipeline, model, optimizer, x, batch.y,
                                                     (len(run.losses) + 1) / warmup if warmup else 1.0)))
                if run.modes:
                    run.modes.after_step(len(run.losses))
                schedule.after_step(len(run.losses))
                if watch and len(run.losses) % max(limit // SNAPSHOTS, 1) == 0:
                    snapshot()
                if len(run.losses) >= limit:
                    break
            epoch += 1
    finally:
        if run.modes:
            run.modes.close()  # the hooks go: later checks read the model as the step left it
    if watch and run.taken[-1] != len(run.losses):
        snapshot()
    return run


def _warmed_step(pipeline: Pipeline, model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor,
                 factor: float) -> torch.Tensor:
    """One step at `factor` (capped at 1) times the lrs the schedule set; the schedule's own lrs are
    put back before it steps again, so a chained scheduler never sees the scaled value."""
    if factor >= 1.0:
        return take_step(pipeline, model, optimizer, x, y)
    scheduled = [group.get("lr") for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled):
        if isinstance(lr, (int, float, torch.Tensor)) and not isinstance(lr, bool):  # an optimizer without an lr
            group["lr"] = lr * factor                                                 # (lr=None) runs unramped
    try:
        return take_step(pipeline, model, optimizer, x, y)
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            if "lr" in group:
                group["lr"] = lr


_LAST: list[tuple[weakref.ref, TrainingRun]] = []


def reference_run(pipeline: Pipeline) -> TrainingRun:
    """The shared run on real inputs for `pipeline`, trained on first use."""
    if _LAST and _LAST[0][0]() is pipeline:
        return _LAST[0][1]
    run = budgeted_training(pipeline, pipeline.config.check_steps or REFERENCE_STEPS, watch=True)
    _LAST[:] = [(weakref.ref(pipeline), run)]
    return run


_SHARED: list[tuple[weakref.ref, dict]] = []


def shared_per_pipeline(check):
    """Keep a check's result for the pipeline being checked (the last pipeline only, as for the
    reference run), so that a later check reads its measurement instead of training again:
    `run_length` compares the configured run with the steps `overfit_one_batch` needed. Every call
    gets its own shallow copy, since the runner writes the duration into the result it receives."""
    @functools.wraps(check)
    def shared(pipeline: Pipeline, *args, **kwargs):
        if not (_SHARED and _SHARED[0][0]() is pipeline):
            _SHARED[:] = [(weakref.ref(pipeline), {})]
        results = _SHARED[0][1]
        key = (check.__name__, args, tuple(sorted(kwargs.items())))
        if key not in results:
            results[key] = check(pipeline, *args, **kwargs)
        return copy.copy(results[key])
    return shared
