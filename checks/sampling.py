"""Small read-only helpers the checks share: drawing batches, capturing the model's input, quick fits.

Nothing here keeps state between calls; every random draw is seeded from the pipeline's seed.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

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


def capture_model_input(pipeline: Pipeline) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Run one real training step and return (x exactly as `model(x)` received it, y, model).

    A forward pre-hook records the first call's input, so whatever the user's batches, augmentation
    and train_step do to the data is included.
    """
    model = fresh_model(pipeline)
    optimizer, _ = training_objects(pipeline, model)
    batch = first_batches(pipeline, "train", 1, augment=pipeline.augment is not None)[0]
    seen: list[torch.Tensor] = []

    def hook(module, args):
        if not seen:
            seen.append(args[0].detach().clone())

    handle = model.register_forward_pre_hook(hook)
    try:
        take_step(pipeline, model, optimizer, batch.x, batch.y)
    finally:
        handle.remove()
    return seen[0], batch.y, model


def denormalise(pipeline: Pipeline, x: torch.Tensor) -> torch.Tensor:
    """Undo the pipeline's declared per-channel normalisation: back to pixels in [0, 1], shape (B, C, H, W)."""
    shape = pipeline.data.train.images.shape[1:]
    pixels = x.reshape(len(x), *shape) * pipeline.norm.std.to(x.device) + pipeline.norm.mean.to(x.device)
    return pixels


def short_training(pipeline: Pipeline, steps: int, *, zero_inputs: bool = False, record=None,
                   offset: int = 0) -> tuple[nn.Module, list[float]]:
    """Train a fresh model with the pipeline's own step, optimizer and scheduler for `steps` steps.

    `zero_inputs` replaces every x by zeros (the input-independent baseline). `record(step, model)`
    is called before the first step and after each step (prediction dynamics). Returns the model and the loss per step.
    """
    model = fresh_model(pipeline, offset)
    optimizer, scheduler = training_objects(pipeline, model)
    losses: list[float] = []
    if record is not None:
        record(0, model)
    epoch = 0
    while len(losses) < steps:
        for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline, epoch)):
            x = torch.zeros_like(batch.x) if zero_inputs else batch.x
            loss = take_step(pipeline, model, optimizer, x, batch.y)
            losses.append(float(loss))
            advance_schedule(pipeline, scheduler, len(losses))
            if record is not None:
                record(len(losses), model)
            if len(losses) >= steps:
                break
        epoch += 1
    return model, losses


def planned_steps(pipeline: Pipeline) -> int:
    """How many steps the configured run takes: epochs x batches per epoch."""
    return pipeline.config.epochs * pipeline.steps_per_epoch


def advance_schedule(pipeline: Pipeline, scheduler, steps_done: int) -> None:
    """After step `steps_done` (1-based), step the scheduler as `fit` would at that point of the run.

    Past the planned run the lr is held: a scheduler such as OneCycleLR refuses to step beyond its
    total, and a check training longer than the run must not fail for that.
    """
    if scheduler is None or steps_done > planned_steps(pipeline):
        return
    step_scheduler(scheduler, "step", pipeline)
    if steps_done % pipeline.steps_per_epoch == 0:
        step_scheduler(scheduler, "epoch", pipeline)  # no val loss here: ReduceLROnPlateau is left as is


def advance_warmup(pipeline: Pipeline, scheduler, optimizer, steps_done: int) -> bool:
    """Like `advance_schedule`, but only while the lr does not fall: a warm-up is followed to the
    run's working lr, and the decay after it is left out. Returns whether to keep following.

    Why: memorising one batch asks whether model, loss and optimizer can fit at the lr the run
    trains with; a schedule that decays over the run's thousands of steps says nothing about that,
    and one that starts tiny (a warm-up) must still be given its climb.
    """
    before = [group["lr"] for group in optimizer.param_groups]
    advance_schedule(pipeline, scheduler, steps_done)
    if any(group["lr"] < lr for group, lr in zip(optimizer.param_groups, before)):
        for group, lr in zip(optimizer.param_groups, before):
            group["lr"] = lr
        return False
    return True


@torch.no_grad()
def accuracy_and_loss(pipeline: Pipeline, model: nn.Module, split: str, max_examples: int = 5000,
                      zero_inputs: bool = False) -> tuple[float, float]:
    """Accuracy and cross-entropy (of the logits, whatever the pipeline's loss) on part of a split."""
    model.eval()
    correct, total_loss, count = 0, 0.0, 0
    for batch in pipeline.batches(split, shuffle=False, augment=False):
        x = torch.zeros_like(batch.x) if zero_inputs else batch.x
        logits = model(x)
        correct += (logits.argmax(1) == batch.y).sum().item()
        total_loss += nn.functional.cross_entropy(logits.float(), batch.y, reduction="sum").item()
        count += len(batch.y)
        if count >= max_examples:
            break
    model.train()
    return correct / count, total_loss / count
