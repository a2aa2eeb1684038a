"""A train step that trains a language model on its inputs (y = x) is named as that (new-user probe).

The data's targets are shifted right, so `targets_shifted` PASSes; the bug is in the step, which
computes the loss against the input ids. `overfit_one_batch` caught it, but blamed the lr, eval mode
or the loss: its loss fell to the floor while the real targets were missed. It now sees that the
predictions repeat the input token at each position and says so. Variants: the tiny GPT on a word
stream and on padded names, a GRU LM; clean twins: the same models with the pipeline's own step.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from checks.baselines.overfit_checks import overfit_one_batch
from checks.engine.result import Verdict
from recipe.sequences import gpt_pipeline
from tests.test_carried_state import RecurrentLM
from tests.zoo.sequence_bugs import config, names_bundle, stream_bundle


def step_on_inputs(model, optimizer, loss_fn, x, y):
    """The bug: the loss is taken against the inputs (a shift forgotten where the step builds targets)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), x)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _gru(pipeline):
    return replace(pipeline, make_model=lambda: RecurrentLM(pipeline.num_classes, nn.GRU, carry=False))


CASES = {
    "gpt-stream": lambda: gpt_pipeline(config(), stream_bundle()),
    "gpt-names": lambda: gpt_pipeline(config(), names_bundle()),
    "gru-stream": lambda: _gru(gpt_pipeline(config(), stream_bundle())),
}


@pytest.mark.parametrize("case", CASES)
def test_a_step_training_on_its_inputs_is_named(case):
    pipeline = replace(CASES[case](), train_step=step_on_inputs)
    torch.manual_seed(0)
    result = overfit_one_batch.__wrapped__(pipeline)
    assert result.verdict is Verdict.FAIL, result.message
    assert "repeat its inputs" in result.message and "y = x" in result.message, result.message


@pytest.mark.parametrize("case", CASES)
def test_the_same_models_with_their_own_step_pass(case):
    torch.manual_seed(0)
    result = overfit_one_batch.__wrapped__(CASES[case]())
    assert result.verdict is Verdict.PASS, result.message
