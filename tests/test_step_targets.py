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
from recipe.steps import train_step
from tests.test_carried_state import RecurrentLM
from tests.zoo.sequence_bugs import config, names_bundle, stream_bundle


def step_on_inputs(model, optimizer, loss_fn, x, y):
    """The bug: the loss is taken against the inputs (a shift forgotten where the step builds targets)."""
    return train_step(model, optimizer, loss_fn, x, x)


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


def test_a_right_answer_that_repeats_its_input_is_not_read_as_copying():
    """Runs of one character: the target often is the input itself, and predicting it is right, not copying.
    Only the positions whose target is another id count."""
    from checks.baselines.overfit_checks import _copied_inputs

    x = torch.tensor([[1, 1, 1, 1, 2, 3, 4, 5]] * 8)
    y = torch.tensor([[1, 1, 1, 2, 3, 4, 5, 6]] * 8)  # next tokens: 3 of 8 repeat their input
    wrong_elsewhere = torch.where(x == y, y, torch.zeros_like(y))  # right on the repeats, wrong on the rest
    assert _copied_inputs(wrong_elsewhere.flatten(), x, y, None) == 0.0
    assert _copied_inputs(x.flatten(), x, y, None) == 1.0  # the step trained on y = x
    padded_y = y.clone()
    padded_y[:, -1] = 0  # pad id 0: the last position is not scored
    kept = padded_y != 0
    assert _copied_inputs(x[kept], x, padded_y, pad_id=0) == 1.0


class TimeMajorLM(nn.Module):
    """A user's GRU/LSTM language model built without batch_first=True, fed (B, T) ids: it runs over the batch."""

    def __init__(self, vocab: int, cell: type = nn.GRU, batch_first: bool = False, transpose: bool = False):
        super().__init__()
        self.embed, self.rnn = nn.Embedding(vocab, 32), cell(32, 64, batch_first=batch_first)
        self.head, self.transpose = nn.Linear(64, vocab), transpose

    def forward(self, x):
        h = self.embed(x)
        if self.transpose:  # time-major on purpose: the input turned to (T, B) first, and back after
            return self.head(self.rnn(h.transpose(0, 1))[0].transpose(0, 1))
        return self.head(self.rnn(h)[0])


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("data", ["stream", "names"])
def test_a_recurrent_lm_without_batch_first_fails_position_used_naming_it(cell, data):
    from checks.skeleton.sequence_checks import position_used

    bundle = stream_bundle() if data == "stream" else names_bundle()
    pipeline = gpt_pipeline(config(), bundle)
    for batch_first, transpose, verdict in ((False, False, Verdict.FAIL), (True, False, Verdict.PASS),
                                            (False, True, Verdict.PASS)):
        built = replace(pipeline, make_model=lambda: TimeMajorLM(pipeline.num_classes, cell, batch_first, transpose))
        torch.manual_seed(0)
        result = position_used(built)
        assert result.verdict is verdict, (batch_first, transpose, result.message)
        assert ("batch_first=True" in result.message) is (verdict is Verdict.FAIL)
