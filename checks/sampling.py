"""Small read-only helpers the checks share: drawing batches, capturing the model's input, quick fits.

Nothing here keeps state between calls; every random draw is seeded from the pipeline's seed.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from recipe.pipeline import Pipeline


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
    optimizer = pipeline.make_optimizer(model.parameters())
    batch = first_batches(pipeline, "train", 1, augment=pipeline.augment is not None)[0]
    seen: list[torch.Tensor] = []

    def hook(module, args):
        if not seen:
            seen.append(args[0].detach().clone())

    handle = model.register_forward_pre_hook(hook)
    try:
        pipeline.train_step(model, optimizer, pipeline.loss_fn, batch.x, batch.y)
    finally:
        handle.remove()
    return seen[0], batch.y, model


def denormalise(pipeline: Pipeline, x: torch.Tensor) -> torch.Tensor:
    """Undo the pipeline's declared normalisation: back to pixels in [0, 1], shape (B, H, W)."""
    pixels = x * pipeline.norm.std + pipeline.norm.mean
    return pixels.reshape(len(x), *pipeline.data.train.images.shape[1:])


def short_training(pipeline: Pipeline, steps: int, *, zero_inputs: bool = False, record=None,
                   offset: int = 0) -> tuple[nn.Module, list[float]]:
    """Train a fresh model with the pipeline's own step and optimizer for `steps` steps.

    `zero_inputs` replaces every x by zeros (the input-independent baseline). `record(step, model)`
    is called before the first step and after each step (prediction dynamics). Returns the model and the loss per step.
    """
    model = fresh_model(pipeline, offset)
    optimizer = pipeline.make_optimizer(model.parameters())
    losses: list[float] = []
    if record is not None:
        record(0, model)
    epoch = 0
    while len(losses) < steps:
        for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline, epoch)):
            x = torch.zeros_like(batch.x) if zero_inputs else batch.x
            loss = pipeline.train_step(model, optimizer, pipeline.loss_fn, x, batch.y)
            losses.append(float(loss))
            if record is not None:
                record(len(losses), model)
            if len(losses) >= steps:
                break
        epoch += 1
    return model, losses


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
