"""The zoo's bugs for the families the first zoo missed: near copies, a split from another
distribution, a multi-layer model that is linear, a plan too short, a step that trains in eval mode,
clipping that clips nothing, an lr schedule stepped at the wrong interval. Planted like `bugs.py`'s.
"""
from __future__ import annotations

import io
from dataclasses import replace
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from recipe.data import Split
from recipe.model import LinearClassifier
from recipe.pipeline import Pipeline, default_pipeline

from tests.zoo.bugs import _with_data


# ---------------------------------------------------------------- near copies: what byte hashing misses

COPIED_FRACTION = 0.1  # share of a split the near-copy bugs copy


def moved_one_pixel(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) moved one pixel right, the uncovered column black: a translate augmentation saved to disk."""
    return F.pad(images[..., :-1], (1, 0))


def brightened(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 with contrast x0.8 and brightness +30: a re-export with other camera settings."""
    return (images.float() * 0.8 + 30).round().clamp(0, 255).to(torch.uint8)


def _copies(split: Split, edit: Callable[[torch.Tensor], torch.Tensor], labels=None) -> Split:
    part = slice(0, round(len(split) * COPIED_FRACTION))
    return Split(edit(split.images[part]), split.labels[part] if labels is None else labels(split.labels[part]))


def _train_plus(pipeline: Pipeline, extra: Split) -> Pipeline:
    train = pipeline.data.train
    return _with_data(pipeline, replace(pipeline.data, train=Split(torch.cat([train.images, extra.images]),
                                                                   torch.cat([train.labels, extra.labels]))))


def shifted_test_copies_in_train(pipeline: Pipeline) -> Pipeline:
    """Copies of a tenth of the test images, shifted by one pixel (saved augmentations), were added to train."""
    return _train_plus(pipeline, _copies(pipeline.data.test, moved_one_pixel))


def reencoded_test_copies_in_train(pipeline: Pipeline) -> Pipeline:
    """A second export of the data set, JPEG re-encoded, put a tenth of the test images into train again."""
    return _train_plus(pipeline, _copies(pipeline.data.test, partial(jpeg_compressed, quality=90)))


def val_brightened_into_test(pipeline: Pipeline) -> Pipeline:
    """A tenth of test is val again, brightened on re-export: val and test overlap, but not byte for byte."""
    data, copies = pipeline.data, _copies(pipeline.data.val, brightened)
    n = len(copies.labels)
    test = Split(torch.cat([copies.images, data.test.images[n:]]), torch.cat([copies.labels, data.test.labels[n:]]))
    return _with_data(pipeline, replace(data, test=test))


def duplicates_relabelled(pipeline: Pipeline) -> Pipeline:
    """A merge added a second copy of a tenth of the training images, labelled by another label map (class + 1)."""
    num_classes = pipeline.num_classes
    return _train_plus(pipeline, _copies(pipeline.data.train, lambda x: x, lambda y: (y + 1) % num_classes))


class DropoutAlwaysOnLinear(LinearClassifier):
    """forward applies F.dropout(x, 0.2) without training=self.training: still random after model.eval()."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, 0.2))


# ---------------------------------------------------------------- one split from another distribution

def jpeg_compressed(images: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """(N, C, H, W) uint8 images after a JPEG round trip (grey for one channel, RGB for three, else per channel)."""
    def round_trip(array: np.ndarray) -> np.ndarray:  # (H, W) or (H, W, 3) uint8
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))

    pixels = images.cpu().numpy()
    if pixels.shape[1] == 3:
        out = np.stack([round_trip(image.transpose(1, 2, 0)).transpose(2, 0, 1) for image in pixels])
    else:
        out = np.stack([np.stack([round_trip(channel) for channel in image]) for image in pixels])
    return torch.from_numpy(out).to(images.device)


def downscaled(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 images shrunk to half size (antialiased) and stretched back: a thumbnail step."""
    size = images.shape[-2:]
    small = F.interpolate(images.float(), scale_factor=0.5, mode="bilinear", antialias=True)
    return F.interpolate(small, size=size, mode="bilinear").round().clamp(0, 255).to(torch.uint8)


def _edit_images(pipeline: Pipeline, split: str, edit: Callable[[torch.Tensor], torch.Tensor]) -> Pipeline:
    """`edit` applied to one split's images; its labels (and every other split) untouched."""
    data = pipeline.data
    return _with_data(pipeline, replace(data, **{split: Split(edit(data.split(split).images), data.split(split).labels)}))


def jpeg_compressed_test_images(pipeline: Pipeline) -> Pipeline:
    """The test split was exported as JPEG (quality 75) when the set was packaged; train and val kept lossless pixels."""
    return _edit_images(pipeline, "test", jpeg_compressed)


def val_images_downscaled(pipeline: Pipeline) -> Pipeline:
    """Val went through a thumbnail step (shrunk 2x, stretched back) the other splits never saw: blurred val images."""
    return _edit_images(pipeline, "val", downscaled)


# ---------------------------------------------------------------- a multi-layer model that is linear

class ReluNeverCalledMLP(nn.Module):
    """An MLP whose nn.ReLU is created in __init__ but never called in forward: fc2(fc1(x)) is one linear map."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 128):
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        with torch.no_grad():  # as the clean MLP: small logits, loss at init ~ ln(C)
            self.fc2.weight.mul_(0.01)
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x.flatten(1)))  # bug: self.relu is never applied


def activation_named(name: str) -> nn.Module:
    """A config-driven activation lookup with a silent fallback: "ReLU" (not "relu") gives nn.Identity."""
    return {"relu": nn.ReLU(), "gelu": nn.GELU(), "tanh": nn.Tanh()}.get(name, nn.Identity())


class MisspelledActivationMLP(nn.Module):
    """A 3-layer MLP built from a config whose activation is spelled "ReLU": every activation is nn.Identity."""

    def __init__(self, num_classes: int, in_features: int, activation: str = "ReLU"):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 256), activation_named(activation),
                                 nn.Linear(256, 64), activation_named(activation), nn.Linear(64, num_classes))
        with torch.no_grad():
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------- a training plan too short

def one_epoch_of_huge_batches(pipeline: Pipeline) -> Pipeline:
    """--epochs 1 with a batch of an eighth of the training set (the largest a big GPU holds): 8 optimizer
    steps in the whole run."""
    config = replace(pipeline.config, epochs=1, batch_size=max(1, len(pipeline.data.train) // 8))
    return replace(default_pipeline(config, pipeline.data), name=pipeline.name)


# ---------------------------------------------------------------- a step that trains in eval mode

class DropoutNormMLP(nn.Module):
    """in-128-C with BatchNorm and dropout 0.3 after the hidden layer: a model whose training depends on its mode."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Dropout(0.3), nn.Linear(hidden, num_classes))
        with torch.no_grad():  # small logits: loss at init ~ ln(C)
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _plain_step(model, optimizer, loss_fn, x, y) -> torch.Tensor:
    """The default update the steps below wrap with their logging."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


class EvalLoggingStep:
    """The default step plus a train-batch accuracy logged every `every` calls under model.eval(); the line
    putting the model back in train mode is missing, so dropout and BatchNorm train in eval mode."""

    def __init__(self, every: int = 20):
        self.every, self.calls, self.log = every, 0, []

    def __call__(self, model, optimizer, loss_fn, x, y) -> torch.Tensor:
        loss = _plain_step(model, optimizer, loss_fn, x, y)
        self.calls += 1
        if self.calls % self.every == 0:
            model.eval()
            with torch.no_grad():
                self.log.append((model(x).argmax(1) == y).float().mean().item())
        return loss.detach()


class ValidatingStep:
    """A step that evaluates a held-out val batch every `every` calls (model.eval(), no_grad) to print a val
    loss, and never calls model.train() again."""

    def __init__(self, val_x: torch.Tensor, val_y: torch.Tensor, every: int = 25):
        self.val_x, self.val_y, self.every, self.calls, self.val_losses = val_x, val_y, every, 0, []

    def __call__(self, model, optimizer, loss_fn, x, y) -> torch.Tensor:
        self.calls += 1
        if self.calls % self.every == 0:
            model.eval()
            with torch.no_grad():
                self.val_losses.append(float(loss_fn(model(self.val_x), self.val_y)))
        loss = _plain_step(model, optimizer, loss_fn, x, y)
        return loss.detach()


class QuietLayersStep:
    """Every `every` calls, dropout and BatchNorm layers are put in eval mode to log a noise-free train loss,
    and only they: nothing sets them back to train mode."""

    def __init__(self, every: int = 20):
        self.every, self.calls, self.log = every, 0, []

    def __call__(self, model, optimizer, loss_fn, x, y) -> torch.Tensor:
        loss = _plain_step(model, optimizer, loss_fn, x, y)
        self.calls += 1
        if self.calls % self.every == 0:
            for module in model.modules():
                if isinstance(module, (nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d)):
                    module.eval()
            with torch.no_grad():
                self.log.append(float(loss_fn(model(x), y)))
        return loss.detach()


def _with_mode_dependent_model(pipeline: Pipeline, step) -> Pipeline:
    size = pipeline.data.train.images[0].numel()
    return replace(pipeline, make_model=lambda: DropoutNormMLP(pipeline.num_classes, size).to(pipeline.device),
                   train_step=step)


def eval_for_logging_never_reset(pipeline: Pipeline) -> Pipeline:
    """A dropout + BatchNorm MLP whose step logs the batch accuracy under model.eval() every 20 calls and never
    calls model.train() again."""
    return _with_mode_dependent_model(pipeline, EvalLoggingStep())


def val_batch_in_step_no_reset(pipeline: Pipeline) -> Pipeline:
    """A dropout + BatchNorm MLP whose step evaluates a val batch every 25 calls (model.eval()) and never calls
    model.train() again."""
    val = next(iter(pipeline.batches("val", shuffle=False, augment=False)))
    return _with_mode_dependent_model(pipeline, ValidatingStep(val.x, val.y))


def dropout_layers_left_in_eval(pipeline: Pipeline) -> Pipeline:
    """A dropout + BatchNorm MLP whose step sets only the Dropout and BatchNorm layers to eval every 20 calls
    (a noise-free train loss for the log) and never back."""
    return _with_mode_dependent_model(pipeline, QuietLayersStep())


def seed_reset_in_step(pipeline: Pipeline) -> Pipeline:
    """A dropout + BatchNorm MLP whose step calls torch.manual_seed(0) "for reproducibility" before each
    update: every step draws the same dropout mask."""
    def step(model, optimizer, loss_fn, x, y) -> torch.Tensor:
        torch.manual_seed(0)
        return _plain_step(model, optimizer, loss_fn, x, y).detach()
    return _with_mode_dependent_model(pipeline, step)


# ---------------------------------------------------------------- gradient clipping that clips nothing

from torch.nn.utils import clip_grad_norm_  # noqa: E402 - bound when the module loads, as a user's script does


def clip_norm_after_step(model, optimizer, loss_fn, x, y) -> torch.Tensor:
    """clip_grad_norm_(params, 0.1) (imported from torch.nn.utils) placed after optimizer.step(): it clips
    gradients the update already used."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    clip_grad_norm_(model.parameters(), 0.1)
    return loss.detach()


def clip_norm_before_backward(model, optimizer, loss_fn, x, y) -> torch.Tensor:
    """nn.utils.clip_grad_norm_(params, 0.1) between the forward and loss.backward(): the gradients were just
    zeroed (None), so nothing is clipped."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    loss.backward()
    optimizer.step()
    return loss.detach()


def clip_value_after_step(model, optimizer, loss_fn, x, y) -> torch.Tensor:
    """nn.utils.clip_grad_value_(params, 1e-3) after optimizer.step(): the update used the raw gradients."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    nn.utils.clip_grad_value_(model.parameters(), 1e-3)
    return loss.detach()


# ---------------------------------------------------------------- an lr schedule stepped at the wrong interval

def _with_schedule(pipeline: Pipeline, make_scheduler, interval: str) -> Pipeline:
    return replace(pipeline, make_scheduler=make_scheduler, scheduler_interval=interval)


def cosine_tmax_epochs_per_batch(pipeline: Pipeline) -> Pipeline:
    """CosineAnnealingLR(T_max=epochs) stepped after every batch: a full half-cosine every 10 batches, back up
    every 20."""
    epochs = pipeline.config.epochs
    return _with_schedule(pipeline, lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), "step")


def exponential_lr_per_batch(pipeline: Pipeline) -> Pipeline:
    """ExponentialLR(gamma=0.9), meant per epoch, stepped after every batch: the lr is 1e-3 of itself after 66
    batches."""
    return _with_schedule(pipeline, lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9), "step")


def lambda_lr_factor_is_lr(pipeline: Pipeline) -> Pipeline:
    """LambdaLR whose lambda returns the lr (config.lr x cosine) where a factor is expected: lr x lr."""
    lr, total = pipeline.config.lr, pipeline.config.epochs * pipeline.steps_per_epoch
    return _with_schedule(pipeline, lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr * 0.5 * (1 + np.cos(np.pi * min(step, total) / total))), "step")
