"""BatchNorm running statistics measured on the data ("precise BN"), for checks that judge a model in eval mode.

A BatchNorm layer evaluates with running statistics, an average of the batches it trained on. Two
cases make them misjudge the weights early in training:
- at init they are mean 0 and variance 1, so they normalise nothing: a deep net such as
  mobilenet_v3_small shrinks its activations to ~1e-8 in eval mode, where a smooth activation
  (Hardswish, GELU) is affine;
- with a small momentum (torchvision's MobileNetV3 uses 0.01) they lag the weights: after a 300-step
  reference run the model scored chance on val in eval mode (0.100) and 0.906 once its statistics were
  measured on 4 train batches, while its training loss had fallen from 2.30 to 0.08.
The checks that ask what the weights learned judge a copy whose statistics are measured on train batches
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, call it precise BN). The weights are the ones
that trained; the user's own model is never touched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from checks.measure.sampling import first_batches
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline

CALIBRATION_BATCHES = 4  # train batches the running statistics are measured on


def running_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def with_data_statistics(model: nn.Module, pipeline: Pipeline, zero_inputs: bool = False) -> nn.Module:
    """`model` (changed in place) with its BatchNorm running statistics measured on the first train batches
    (all-zero inputs for a model trained on them); each module left in the mode it was in."""
    norms = running_norms(model)
    if not norms:
        return model
    modes = [(module, module.training) for module in model.modules()]
    momenta = [m.momentum for m in norms]
    model.eval()  # dropout and the like off: only BatchNorm measures, and no random number is drawn
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
        m.train()
    with torch.random.fork_rng(devices=[]):  # a forward that draws anyway leaves the training run's stream alone
        for batch in first_batches(pipeline, "train", CALIBRATION_BATCHES):
            forward_logits(model, torch.zeros_like(batch.x) if zero_inputs else batch.x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for module, training in modes:
        module.training = training
    return model


def judged_copy(model: nn.Module, pipeline: Pipeline, zero_inputs: bool = False) -> nn.Module:
    """The model to judge in eval mode: itself without BatchNorm, else a copy with measured statistics."""
    if not running_norms(model):
        return model
    return with_data_statistics(copy.deepcopy(model), pipeline, zero_inputs)
