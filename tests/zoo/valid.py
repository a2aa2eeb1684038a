"""The valid twins: configurations a careful user really trains with, that no check may FAIL.

The zoo (catalogue.py) proves every check catches its bug; these prove the checks do not cry wolf
on what is legitimately different from the lab's defaults: label smoothing, weight decay, dropout,
batch norm, SGD with a per-epoch StepLR, AdamW with a per-step OneCycleLR, gradient accumulation,
an EMA copy of the weights, gradient clipping, warm-up then cosine, small and large batches. Each
is built as a user would: `dataclasses.replace` on `mlp_pipeline` / `default_pipeline`, with the
pipeline built from the config it needs (a config is never replaced after the factories exist).
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from recipe.config import TrainConfig
from recipe.data import DataBundle
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline


# ---------------------------------------------------------------- models a user writes

class DropoutMLP(nn.Module):
    """in-256-C with dropout 0.5 after the hidden layer; the last layer starts small (loss at init ~ ln C)."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 256, p: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(p),
                                 nn.Linear(hidden, num_classes))
        with torch.no_grad():
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BatchNormCNN(nn.Module):
    """Conv-BN-ReLU-pool twice, then a small linear head: the textbook small CNN with batch norm."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = in_shape
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Linear(16 * (height // 4) * (width // 4), num_classes)  # pooled twice
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.features(x).flatten(1))


class SmallCNN(nn.Module):
    """Conv-ReLU-pool twice, then a linear head, for any (C, H, W) input: the README's SmallCNN with the
    shape read from the data. PyTorch's default init in the convolutions (Kaiming-uniform, scaled for
    ReLU); the head starts small (std 1e-3, zero bias), so the logits start near 0 and the loss at
    init is ln(classes)."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = in_shape
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * (height // 4) * (width // 4), num_classes)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.features(x).flatten(1))


class WithEMA(nn.Module):
    """A model plus an exponential moving average of its weights, kept as a frozen shadow copy (as
    timm's ModelEmaV2 and many training scripts do). `forward` trains the live weights."""

    def __init__(self, net: nn.Module, decay: float = 0.99):
        super().__init__()
        self.net, self.decay = net, decay
        self.ema = copy.deepcopy(net)
        self.ema.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def update_ema(self) -> None:
        for shadow, live in zip(self.ema.parameters(), self.net.parameters()):
            shadow.lerp_(live, 1 - self.decay)


# ---------------------------------------------------------------- steps a user writes

class AccumulatingStep:
    """Gradient accumulation: backward on loss/k every call, optimizer.step() and zero_grad() every k-th call.

    The effective batch is k batches; the returned loss is the batch's own (undivided) loss.
    """

    def __init__(self, every: int = 4):
        self.every, self.calls = every, 0

    def __call__(self, model, optimizer, loss_fn, x, y) -> torch.Tensor:
        loss = loss_fn(model(x), y)
        (loss / self.every).backward()
        self.calls += 1
        if self.calls % self.every == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def ema_step(model, optimizer, loss_fn, x, y) -> torch.Tensor:
    """The default step, then the EMA shadow is pulled towards the new weights."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    model.update_ema()
    return loss.detach()


def clipped_step(model, optimizer, loss_fn, x, y, max_norm: float = 1.0) -> torch.Tensor:
    """The default step with the gradient norm clipped to `max_norm` before the update."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------- the configurations

def _total_steps(pipeline: Pipeline) -> int:
    return pipeline.config.epochs * pipeline.steps_per_epoch


def label_smoothing(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="label-smoothing",
                   loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))


def weight_decay(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(replace(config, weight_decay=5e-4), data), name="weight-decay")


def dropout(config: TrainConfig, data: DataBundle) -> Pipeline:
    pipeline = mlp_pipeline(config, data)
    size = data.train.images[0].numel()
    return replace(pipeline, name="dropout", make_model=lambda: DropoutMLP(data.num_classes, size).to(pipeline.device))


def batchnorm_cnn(config: TrainConfig, data: DataBundle) -> Pipeline:
    pipeline = mlp_pipeline(config, data)
    shape = tuple(data.train.images.shape[1:])  # (C, H, W)
    return replace(pipeline, name="batchnorm-cnn",
                   make_model=lambda: BatchNormCNN(data.num_classes, shape).to(pipeline.device))


def small_cnn(config: TrainConfig, data: DataBundle) -> Pipeline:
    """The clean CNN: SmallCNN on the data's (C, H, W), with the MLP's loop, optimizer and autograd step."""
    pipeline = mlp_pipeline(config, data)
    shape = tuple(data.train.images.shape[1:])  # (C, H, W)
    return replace(pipeline, name="cnn", make_model=lambda: SmallCNN(data.num_classes, shape).to(pipeline.device))


def sgd_steplr(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="sgd-momentum-steplr",
                   make_optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7),
                   scheduler_interval="epoch")


def adamw_onecycle(config: TrainConfig, data: DataBundle) -> Pipeline:
    pipeline = mlp_pipeline(config, data)
    total = _total_steps(pipeline)
    return replace(pipeline, name="adamw-onecycle",
                   make_optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2),
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3,
                                                                                  total_steps=total),
                   scheduler_interval="step")


def gradient_accumulation(config: TrainConfig, data: DataBundle) -> Pipeline:
    # A fresh counter per pipeline; a step that keeps a counter is how users write it.
    return replace(mlp_pipeline(config, data), name="grad-accumulation-4", train_step=AccumulatingStep(4))


def ema(config: TrainConfig, data: DataBundle) -> Pipeline:
    pipeline = mlp_pipeline(config, data)
    inner = pipeline.make_model
    return replace(pipeline, name="ema", make_model=lambda: WithEMA(inner()).to(pipeline.device), train_step=ema_step)


def gradient_clipping(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="grad-clip-1.0", train_step=clipped_step)


def warmup_cosine(config: TrainConfig, data: DataBundle, warmup: int = 100) -> Pipeline:
    pipeline = mlp_pipeline(config, data)
    total = _total_steps(pipeline)

    def factor(step: int) -> float:  # linear warm-up from 1% to the full lr, then cosine to 0
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))
    return replace(pipeline, name="warmup-cosine",
                   make_optimizer=lambda params: torch.optim.Adam(params, lr=2e-3),
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
                   scheduler_interval="step")


def warmup_cosine_sequential(config: TrainConfig, data: DataBundle, warmup: int = 100) -> Pipeline:
    pipeline = mlp_pipeline(config, data)
    total = _total_steps(pipeline)

    def schedule(opt):
        lr = torch.optim.lr_scheduler
        return lr.SequentialLR(opt, [lr.LinearLR(opt, start_factor=0.01, total_iters=warmup),
                                     lr.CosineAnnealingLR(opt, T_max=total - warmup)], milestones=[warmup])
    return replace(pipeline, name="warmup-cosine-sequential",
                   make_optimizer=lambda params: torch.optim.Adam(params, lr=2e-3),
                   make_scheduler=schedule, scheduler_interval="step")


def warmup_from_zero(config: TrainConfig, data: DataBundle, warmup: int = 50) -> Pipeline:
    """lr = base * min(1, step / warmup): the first step runs at lr 0, as transformers' linear warm-up does."""
    return replace(mlp_pipeline(config, data), name="warmup-from-zero",
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warmup)),
                   scheduler_interval="step")


def batch_16(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(replace(config, batch_size=16), data), name="mlp-batch-16")


def batch_512(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(replace(config, batch_size=512), data), name="mlp-batch-512")


def linear_batch_512(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(default_pipeline(replace(config, batch_size=512), data), name="linear-batch-512")


# name -> factory(config, data); measured on one core: ~2 s a run, the CNN ~11 s
VALID: dict[str, Callable[[TrainConfig, DataBundle], Pipeline]] = {
    "label_smoothing": label_smoothing, "weight_decay": weight_decay, "dropout": dropout,
    "batchnorm_cnn": batchnorm_cnn, "sgd_steplr": sgd_steplr, "adamw_onecycle": adamw_onecycle,
    "gradient_accumulation": gradient_accumulation, "ema": ema, "gradient_clipping": gradient_clipping,
    "warmup_cosine": warmup_cosine, "warmup_cosine_sequential": warmup_cosine_sequential,
    "warmup_from_zero": warmup_from_zero,
    "batch_16": batch_16, "batch_512": batch_512, "linear_batch_512": linear_batch_512,
}
