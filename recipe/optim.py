"""The default optimizer and schedule factories, and plain descriptions of whatever a pipeline built.

The defaults are derived from a TrainConfig once, in `build_pipeline`; `fit` and the checks only
ever call the factories. `describe_optimizer` and `describe_scheduler` read the objects
themselves, so a report shows what trains, not what the config's defaults say.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable

import torch
from torch import nn

from recipe.config import TrainConfig

# Hyperparameters worth showing, in this order, when an optimizer's param group has them.
SHOWN_HYPERPARAMETERS = ("lr", "momentum", "dampening", "nesterov", "betas", "eps", "rho", "alpha",
                         "weight_decay", "amsgrad", "lr_decay")
SCHEDULER_SETTINGS = ("step_size", "milestones", "gamma", "T_max", "eta_min", "max_lr", "total_steps",
                      "pct_start", "factor", "patience", "mode", "warmup_steps")


def make_optimizer(config: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or SGD, fused (one kernel for all parameters) where this PyTorch supports it.

    Why fused: for a model this small the per-step cost is Python and per-tensor dispatch, and the
    fused CPU kernel halves the optimizer step (profiled: ~85 -> ~35 us at batch 64).
    """
    params = list(params)
    if config.optimizer == "adam":
        make = partial(torch.optim.Adam, params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        make = partial(torch.optim.SGD, params, lr=config.lr, momentum=config.momentum,
                       weight_decay=config.weight_decay)
    try:
        return make(fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device or dtype: the for-loop version
        return make()


def cosine_factor(step: int, total_steps: int) -> float:
    """The cosine schedule's multiplier at `step` of `total_steps`: 1 at the start, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def make_scheduler(config: TrainConfig, total_steps: int, optimizer: torch.optim.Optimizer):
    """The config's schedule as a per-step LR scheduler, or None for a constant lr."""
    if config.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(cosine_factor, total_steps=max(total_steps, 1)))


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, bool, str)) or value is None else repr(value)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{"class": "Adadelta", "lr": 1.0, "rho": 0.9, ...} read from the optimizer's first param group,
    plus how many groups and parameters it holds."""
    groups = optimizer.param_groups
    first = groups[0] if groups else {}
    described = {"class": type(optimizer).__name__}
    described.update({k: _plain(first[k]) for k in SHOWN_HYPERPARAMETERS if k in first})
    if "initial_lr" in first:  # a scheduler is attached: show the lr it starts from, as built
        described["lr"] = _plain(first["initial_lr"])
    described["param_groups"] = len(groups)
    described["parameters"] = sum(p.numel() for g in groups for p in g["params"])
    if len(groups) > 1:
        described["lr_per_group"] = [_plain(g.get("lr")) for g in groups]
    return described


def describe_scheduler(scheduler: Any, interval: str) -> dict[str, Any] | None:
    """{"class": "StepLR", "interval": "epoch", "step_size": 1, "gamma": 0.7}, or None without one."""
    if scheduler is None:
        return None
    described = {"class": type(scheduler).__name__, "interval": interval}
    described.update({k: _plain(getattr(scheduler, k)) for k in SCHEDULER_SETTINGS if hasattr(scheduler, k)})
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas:
        described["lr_lambda"] = getattr(lambdas[0], "__name__", None) or getattr(
            getattr(lambdas[0], "func", None), "__name__", type(lambdas[0]).__name__)
    return described
