"""overfit_one_batch tells a loss that reads squashed scores (a softmax or sigmoid before the cross-entropy,
in the step or a loss wrapper, where output_sanity cannot see it) from label smoothing: both keep the loss
above 0, only the first stops punishing a confident mistake."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from checks.baselines.overfit_checks import overfit_one_batch
from checks.engine.result import Verdict
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline, mlp_pipeline

SQUASHED = {
    "softmax-then-cross-entropy": lambda logits, y: F.cross_entropy(F.softmax(logits, dim=1), y),
    "sigmoid-then-cross-entropy": lambda logits, y: F.cross_entropy(torch.sigmoid(logits), y),
    "softmax-then-cross-entropy-smoothed": lambda logits, y: F.cross_entropy(F.softmax(logits, -1), y,
                                                                           label_smoothing=0.1),
}


@pytest.mark.parametrize("loss", SQUASHED, ids=list(SQUASHED))
@pytest.mark.parametrize("build", [default_pipeline, mlp_pipeline], ids=["linear", "mlp"])
def test_a_loss_of_squashed_scores_fails(sample_data, build, loss):
    pipeline = replace(build(TrainConfig(), sample_data), loss_fn=SQUASHED[loss])
    result = overfit_one_batch(pipeline)
    assert result.verdict is Verdict.FAIL and "squashed scores" in result.message, result.message


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.3])
def test_label_smoothing_still_passes(sample_data, smoothing):
    pipeline = replace(mlp_pipeline(TrainConfig(), sample_data),
                       loss_fn=lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing))
    result = overfit_one_batch(pipeline)
    assert result.verdict is Verdict.PASS, result.message
