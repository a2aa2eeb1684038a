"""The default train step, and the contract every train step keeps.

A step is `step(model, optimizer, loss_fn, x, y) -> loss`: it does one update on one batch and
returns the batch loss as a tensor (detached or not, on any device). `fit` and the checks call
the same step through `recipe.train.take_step`, which holds it to that contract.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from recipe.outputs import forward_logits

StepFn = Callable[[nn.Module, torch.optim.Optimizer, Callable, torch.Tensor, torch.Tensor], torch.Tensor]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
               x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One SGD step on one batch; returns the batch loss (detached, still on the device)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward_logits(model, x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()
