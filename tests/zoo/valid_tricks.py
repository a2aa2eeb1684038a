"""More valid twins: fine-tuning setups and training tricks careful users train with, that no check may
FAIL (tests/test_valid_configs.py runs them beside tests/zoo/valid.py's).

A frozen backbone (only the head in the optimizer), BatchNorm kept frozen by an overridden `train()`
(detectron-style fine-tuning), a class-weighted cross-entropy, bf16 autocast in the step, mixup in the
step, cosine annealing with warm restarts per step, SGD with Nesterov momentum 0.99, ReduceLROnPlateau.
Found by trying them as a new user (2026-12-07): the frozen BatchNorm FAILed `determinism`, because
its second run never called `model.train()` as fit and the reference run do.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from recipe.config import TrainConfig
from recipe.data import DataBundle
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline
from tests.zoo.valid import BatchNormCNN, SmallCNN


def _shape(data: DataBundle) -> tuple[int, int, int]:
    return tuple(data.train.images.shape[1:])


def frozen_features(config: TrainConfig, data: DataBundle) -> Pipeline:
    """Fine-tuning: the convolutions frozen, the optimizer holding only what trains."""
    pipeline = default_pipeline(config, data)

    def make() -> nn.Module:
        model = SmallCNN(data.num_classes, _shape(data))
        model.features.requires_grad_(False)
        return model.to(pipeline.device)

    return replace(pipeline, name="frozen-features", make_model=make,
                   make_optimizer=lambda params: torch.optim.Adam([p for p in params if p.requires_grad], 1e-3))


class FrozenBatchNormCNN(BatchNormCNN):
    """BatchNorm kept on its running statistics while the rest trains: `train()` puts it back in eval."""

    def train(self, mode: bool = True) -> "FrozenBatchNormCNN":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


def frozen_batchnorm(config: TrainConfig, data: DataBundle) -> Pipeline:
    pipeline = default_pipeline(config, data)
    return replace(pipeline, name="frozen-batchnorm",
                   make_model=lambda: FrozenBatchNormCNN(data.num_classes, _shape(data)).to(pipeline.device))


def class_weighted(config: TrainConfig, data: DataBundle) -> Pipeline:
    counts = torch.bincount(data.train.labels, minlength=data.num_classes).float().clamp(min=1)
    weight = (counts.sum() / counts) / (counts.sum() / counts).mean()
    return replace(mlp_pipeline(config, data), name="class-weighted-ce", loss_fn=nn.CrossEntropyLoss(weight=weight))


def autocast_step(model, optimizer, loss_fn, x, y) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def autocast_bf16(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="autocast-bf16", train_step=autocast_step)


def mixup_step(model, optimizer, loss_fn, x, y, alpha: float = 0.2) -> torch.Tensor:
    """mixup (Zhang et al. 2018) in the step: each batch blended with a shuffled copy, the loss blended alike."""
    share = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(x), device=x.device)
    optimizer.zero_grad(set_to_none=True)
    out = model(share * x + (1 - share) * x[partner])
    loss = share * loss_fn(out, y) + (1 - share) * loss_fn(out, y[partner])
    loss.backward()
    optimizer.step()
    return loss.detach()


def mixup(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="mixup-in-step", train_step=mixup_step)


def warm_restarts(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="cosine-warm-restarts", scheduler_interval="step",
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=100))


def nesterov(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="sgd-nesterov-0.99",
                   make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.99, nesterov=True))


def plateau(config: TrainConfig, data: DataBundle) -> Pipeline:
    return replace(mlp_pipeline(config, data), name="reduce-on-plateau", scheduler_interval="epoch",
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1))


TRICKS: dict[str, Callable[[TrainConfig, DataBundle], Pipeline]] = {
    "frozen_features": frozen_features, "frozen_batchnorm": frozen_batchnorm, "class_weighted": class_weighted,
    "autocast_bf16": autocast_bf16, "mixup": mixup, "warm_restarts": warm_restarts, "nesterov": nesterov,
    "plateau": plateau,
}
IN_CI = ("frozen_batchnorm", "mixup")  # the fixed false FAIL, and the trick that fights memorising a batch
