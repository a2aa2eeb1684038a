"""Small read-only helpers the checks share: drawing batches, capturing the model's input, quick fits.

Nothing here keeps state between calls; every random draw is seeded from the pipeline's seed.
"""
from __future__ import annotations

import inspect
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from checks.measure.predictions import scored
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import step_scheduler, take_step, training_objects


def generator(pipeline: Pipeline, offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(pipeline.config.seed * 7919 + offset)


def first_batches(pipeline: Pipeline, split: str, n_batches: int, *, shuffle: bool = True,
                  augment: bool = False, offset: int = 0):
    """The first `n_batches` batches of an epoch, as the pipeline draws them."""
    batches = pipeline.batches(split, shuffle=shuffle, augment=augment, generator=generator(pipeline, offset))
    return list(itertools.islice(batches, n_batches))


def stacked(pipeline: Pipeline, split: str, n_examples: int, *, shuffle: bool = True, augment: bool = False,
            offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, idx) for about `n_examples` examples, concatenated from consecutive batches."""
    xs, ys, idxs, count = [], [], [], 0
    batches = pipeline.batches(split, shuffle=shuffle, augment=augment, generator=generator(pipeline, offset))
    for batch in batches:
        xs.append(batch.x), ys.append(batch.y), idxs.append(batch.idx)
        count += len(batch.y)
        if count >= n_examples:
            break
    return torch.cat(xs), torch.cat(ys), torch.cat(idxs)


def fresh_model(pipeline: Pipeline, offset: int = 0) -> nn.Module:
    torch.manual_seed(pipeline.config.seed + offset)
    return pipeline.make_model()


def capture_model_input(pipeline: Pipeline) -> tuple[torch.Tensor | None, torch.Tensor, nn.Module]:
    """Run one real training step and return (x as the model received it, y, model).

    Forward pre-hooks on *every* module record the first tensor a module is called with, so the
    capture works whether the step calls `model(x)` (the root's hook fires first) or calls its
    submodules itself (`model.head(model.features(x))`), and whatever the batches, augmentation and
    step did to the data is included. x is None when no module of the model was called with a
    tensor during the step (it runs the model through something hooks cannot see).
    """
    model = fresh_model(pipeline)
    optimizer, _ = training_objects(pipeline, model)
    batch = first_batches(pipeline, "train", 1, augment=pipeline.augment is not None)[0]
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        if not seen:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors:
                seen.append(tensors[0].detach().clone())

    handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module in model.modules()]
    try:
        take_step(pipeline, model, optimizer, batch.x, batch.y)
    finally:
        for handle in handles:
            handle.remove()
    return (seen[0] if seen else None), batch.y, model


def denormalise(pipeline: Pipeline, x: torch.Tensor) -> torch.Tensor:
    """Undo the pipeline's declared per-channel normalisation: back to pixels in [0, 1], shape (B, C, H, W);
    for feature vectors, per feature: back to the raw rows (B, D)."""
    shape = pipeline.data.train.images.shape[1:]
    view = (-1, *[1] * (len(shape) - 1))  # (C, 1, 1) over (C, H, W); (D,) over a feature row
    std, mean = (getattr(pipeline.norm, k).to(x.device).reshape(view) for k in ("std", "mean"))
    return x.reshape(len(x), *shape) * std + mean


def short_training(pipeline: Pipeline, steps: int, *, zero_inputs: bool = False, record=None,
                   offset: int = 0) -> tuple[nn.Module, list[float]]:
    """Train a fresh model with the pipeline's own step, optimizer and scheduler for `steps` steps.

    `zero_inputs` replaces every x by zeros (the input-independent baseline). `record(step, model)`
    is called before the first step and after each step (prediction dynamics). Returns the model and the loss per step.
    """
    model = fresh_model(pipeline, offset)
    optimizer, scheduler = training_objects(pipeline, model)
    schedule = PlannedSchedule(pipeline, optimizer, scheduler)
    losses: list[float] = []
    if record is not None:
        record(0, model)
    epoch = 0
    while len(losses) < steps:
        model.train()  # as fit does at the start of every epoch: a train() that keeps BatchNorm frozen takes effect
        for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline, epoch)):
            x = torch.zeros_like(batch.x) if zero_inputs else batch.x
            loss = take_step(pipeline, model, optimizer, x, batch.y)
            losses.append(float(loss))
            schedule.after_step(len(losses))
            if record is not None:
                record(len(losses), model)
            if len(losses) >= steps:
                break
        epoch += 1
    return model, losses


def planned_steps(pipeline: Pipeline) -> int:
    """How many steps the configured run takes: epochs x batches per epoch."""
    return pipeline.config.epochs * pipeline.steps_per_epoch


class PlannedSchedule:
    """Steps a check's scheduler as `fit` would at each point of the configured run.

    Past the planned run (epochs x batches) the lr is held at the highest value the schedule
    reached: a check may train longer than a short run, and at the schedule's end value (often 0)
    it would learn nothing; OneCycleLR even refuses to step beyond its total.

    `warmup_only` follows the schedule only while the lr does not fall, then holds it: memorising
    one batch asks whether model, loss and optimizer can fit at the lr the run trains with; a decay
    over the run's thousands of steps says nothing about that, and a warm-up must still be given
    its climb.
    """

    def __init__(self, pipeline: Pipeline, optimizer, scheduler, warmup_only: bool = False):
        self.pipeline, self.optimizer, self.scheduler, self.warmup_only = pipeline, optimizer, scheduler, warmup_only
        self.planned = planned_steps(pipeline)
        self.peak = self._lrs()
        self.following = scheduler is not None

    def _lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _hold(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.following = False

    def after_step(self, steps_done: int) -> None:
        """Call after step `steps_done` (1-based)."""
        if not self.following:
            return
        before = self._lrs()
        step_scheduler(self.scheduler, "step", self.pipeline)
        if steps_done % self.pipeline.steps_per_epoch == 0:
            step_scheduler(self.scheduler, "epoch", self.pipeline)  # no val loss here: ReduceLROnPlateau stays
        now = self._lrs()
        if self.warmup_only and any(a < b for a, b in zip(now, before)):
            self._hold(before)
            return
        self.peak = [max(a, b) for a, b in zip(self.peak, now)]
        if steps_done >= self.planned:
            self._hold(self.peak)


MAX_PLANNED_STEPS = 20_000  # the planned lr curve is replayed step by step; longer runs are cut there


@dataclass(frozen=True)
class PlannedLr:
    """The lr of the first param group at every step of the configured run, as the pipeline's own
    optimizer and scheduler give it, replayed without training (fit_dry_run plots it, lr_schedule judges it)."""
    steps: list[int]
    lrs: list[float]               # empty when it can't be replayed without training (ReduceLROnPlateau)
    total: int                     # planned steps (epochs x batches); the replay stops at MAX_PLANNED_STEPS
    scheduler: Any                 # the freshly built scheduler, None for a constant lr
    base_lr: float                 # the optimizer's own lr, before any scheduler factor
    stepped_before_training: int   # scheduler.step() calls its factory made before any optimizer step


def planned_lr_curve(pipeline: Pipeline) -> PlannedLr:
    """Replay the configured run's schedule step by step, stepping the scheduler where `fit` does."""
    model = fresh_model(pipeline)
    optimizer, scheduler = training_objects(pipeline, model)
    total = planned_steps(pipeline)
    first = optimizer.param_groups[0]
    base_lr = float(first.get("initial_lr", first["lr"]))
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    # a fresh LRScheduler has last_epoch 0: anything more was stepped by its factory, before training
    stepped = 0 if plateau or scheduler is None else max(int(getattr(scheduler, "last_epoch", 0) or 0), 0)
    if scheduler is None:
        return PlannedLr([0, total], [float(first["lr"])] * 2, total, None, base_lr, 0)
    if plateau:  # it reacts to val losses: no curve without training
        return PlannedLr([], [], total, scheduler, base_lr, 0)
    steps, lrs = [], []
    with warnings.catch_warnings():  # stepping a scheduler without optimizer.step() warns; that is the point
        warnings.simplefilter("ignore")
        for step in range(min(total, MAX_PLANNED_STEPS)):
            steps.append(step)
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            step_scheduler(scheduler, "step", pipeline)
            if (step + 1) % pipeline.steps_per_epoch == 0:
                step_scheduler(scheduler, "epoch", pipeline)
    return PlannedLr(steps, lrs, total, scheduler, base_lr, stepped)


@torch.no_grad()
def per_example(pipeline: Pipeline, model: nn.Module, split: str, max_examples: int = 5000,
                zero_inputs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each example of part of a split is classified right, and its cross-entropy (of the
    logits, whatever the pipeline's loss), in the split's order: two runs can be compared example by example.
    For token sequences each scored position (target not padding) is one example."""
    was_training = model.training
    model.eval()
    correct, losses, count = [], [], 0
    for batch in pipeline.batches(split, shuffle=False, augment=False):
        x = torch.zeros_like(batch.x) if zero_inputs else batch.x
        logits, y = scored(forward_logits(model, x), batch.y, pipeline.data.pad_id)  # tokens: one row per position
        correct.append((logits.argmax(1) == y).cpu())
        losses.append(nn.functional.cross_entropy(logits.float(), y, reduction="none").double().cpu())
        count += len(batch.y)
        if count >= max_examples:
            break
    model.train(was_training)  # as fit's evaluate does: the mode it was given, not train mode
    return torch.cat(correct), torch.cat(losses)


def accuracy_and_loss(pipeline: Pipeline, model: nn.Module, split: str, max_examples: int = 5000,
                      zero_inputs: bool = False) -> tuple[float, float]:
    """Accuracy and cross-entropy (of the logits, whatever the pipeline's loss) on part of a split."""
    correct, losses = per_example(pipeline, model, split, max_examples, zero_inputs)
    return correct.double().mean().item(), losses.mean().item()


FAMILIES = {"logits": lambda z: z, "log-probabilities": lambda z: torch.log_softmax(z, -1),
            "probabilities": lambda z: torch.softmax(z, -1)}


def output_family(out: torch.Tensor) -> str:
    """How a model's (B, C) (or (B, T, V)) outputs are constrained: log-probabilities (every row's logsumexp
    is 0), probabilities (rows of non-negative values summing to 1), or free logits."""
    ones = torch.ones(out.shape[:-1], device=out.device)
    if (out <= 0).all() and torch.allclose(out.exp().sum(-1), ones, atol=1e-3):
        return "log-probabilities"
    if (out >= 0).all() and torch.allclose(out.sum(-1), ones, atol=1e-3):
        return "probabilities"
    return "logits"


def loss_floor(pipeline: Pipeline, outputs_at_init: torch.Tensor, y: torch.Tensor, steps: int = 300,
               lr: float = 0.1, family: str | None = None) -> tuple[float, float]:
    """(floor, accuracy): the lowest value the pipeline's own loss reaches on labels `y` when the
    model's outputs are free variables (Adam on a (B, C) tensor; a short second-moment memory keeps
    its steps from shrinking with the gradient, and the lr decays to 0 to settle on a finite optimum:
    cross-entropy measures ~2e-6, label smoothing 0.1 its exact 0.50029), and the share of `y` those
    best outputs classify right.

    Why: a loss's achievable minimum is a property of the loss, not the model. Cross-entropy's is 0;
    with label smoothing 0.1 over 10 classes it is about 0.50; a loss with no floor (a sign error,
    nll_loss on raw logits) runs off below 0; and a loss whose minimum does not classify the batch
    (MSE on class indices, a clamped loss with no gradient) is not a classification loss at all.
    The free outputs stay in the model's output family (`output_family`, or `family`), so nll_loss
    after a log_softmax model has its true floor 0.
    """
    out = outputs_at_init.detach().float()
    if out.dim() < 2 or tuple(out.shape[:-1]) != tuple(y.shape):
        return 0.0, 1.0  # not (B, C) or (B, T, V) outputs: output_sanity says so; judge against the cross-entropy floor
    squash = FAMILIES[family or output_family(out)]
    z = torch.zeros_like(out, requires_grad=True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.9))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    best, best_z = math.inf, z.detach().clone()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = pipeline.loss_fn(squash(z), y)
        value = loss.item()
        if not math.isfinite(value):
            break
        if value < best:
            best, best_z = value, z.detach().clone()
        loss.backward()
        optimizer.step()
        schedule.step()
    best_out, scored_y = scored(squash(best_z), y, pipeline.data.pad_id)  # padding carries no loss: not scored
    accuracy = (best_out.argmax(-1) == scored_y).float().mean().item()
    return best, accuracy


NORM_WITH_RUNNING_STATS = nn.modules.batchnorm._NormBase  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d


def has_running_stats(model: nn.Module) -> bool:
    """Whether eval mode uses statistics gathered during training (batch norm's running mean/var)."""
    return any(isinstance(m, NORM_WITH_RUNNING_STATS) and m.track_running_stats for m in model.modules())


def behaves_differently_in_eval(module: nn.Module) -> bool:
    """Whether the module's output depends on its train/eval mode: dropout, norm layers with running
    statistics, RNNs and attention with dropout, and the user's own modules whose forward reads
    `training` (F.dropout(x, training=self.training))."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    if isinstance(module, NORM_WITH_RUNNING_STATS):
        return bool(module.track_running_stats)
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        return float(getattr(module, "dropout", 0) or 0) > 0
    if type(module).__module__.startswith("torch."):
        return False
    try:
        return "training" in inspect.getsource(type(module).forward)
    except (OSError, TypeError):  # no source to read: assume it may
        return True
