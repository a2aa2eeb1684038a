"""Checks that judge a BatchNorm model in eval mode use running statistics measured on train batches
(checks/measure/batchnorm.py): a small momentum leaves them lagging the weights, and torchvision's
mobilenet_v3_small (momentum 0.01) scored chance on val after its 300-step reference run while it had
learned (0.906 with measured statistics). Judging it on the lagging ones FAILed input_independent_baseline
and prediction_dynamics: "the model does not learn from the pixels"."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from checks.baselines.baseline_checks import input_independent_baseline
from checks.baselines.prediction_checks import prediction_dynamics
from checks.engine.result import Verdict
from checks.measure.batchnorm import judged_copy
from checks.skeleton.skeleton_checks import determinism
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline


def _lagging_bn_cnn(classes: int, momentum: float) -> nn.Module:
    """A BN net whose running statistics move slowly (10x and 30x slower than MobileNetV3's 0.01), with an
    offset before its BatchNorm that training normalises away and lagging running means do not."""
    first = nn.Linear(28 * 28, 128)
    nn.init.constant_(first.bias, 30.0)
    return nn.Sequential(nn.Flatten(), first, nn.BatchNorm1d(128, momentum=momentum), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(128, classes))


def _pipeline(data, momentum: float):
    base = default_pipeline(TrainConfig(seed=0), data)
    return replace(base, make_model=lambda: _lagging_bn_cnn(data.num_classes, momentum))


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.001, 0.0003])
def test_a_model_whose_running_statistics_lag_is_judged_on_measured_ones(sample_data, momentum):
    pipeline = _pipeline(sample_data, momentum)
    torch.manual_seed(0)
    baseline, dynamics = input_independent_baseline(pipeline), prediction_dynamics(pipeline)
    assert baseline.verdict is Verdict.PASS, baseline.message
    assert dynamics.verdict is Verdict.PASS, dynamics.message


def test_measuring_statistics_draws_no_random_number_and_leaves_the_model_alone(sample_data):
    """Dropout stays off while the statistics are measured, so the run it is taken in keeps its random
    stream (determinism compares that run with a second one); the judged model is a copy."""
    pipeline = _pipeline(sample_data, 0.01)
    torch.manual_seed(0)
    model = pipeline.make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    judged = judged_copy(model, pipeline)
    assert torch.equal(torch.get_rng_state(), state)
    assert judged is not model and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(judged[2].running_mean, model[2].running_mean)
    torch.manual_seed(0)
    assert determinism(pipeline).verdict is Verdict.PASS
