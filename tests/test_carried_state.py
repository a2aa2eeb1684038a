"""A model that carries its hidden state from one forward call to the next ("stateful" RNN, never reset).

Three checks FAIL it, and each used to blame a cause of its own kind: dropout active in eval
(`eval_determinism`), a reshape over the batch (`batch_independence`), a missing causal mask
(`causality`). Each now names the carried state. Variants: a GRU language model keeping `h` on self, an
LSTM keeping `(h, c)`, and an image MLP adding a running mean of earlier inputs; clean twins: the same
models without the carried state, and dropout left on in eval (still named as randomness).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checks.engine.result import Verdict
from checks.skeleton.sequence_checks import causality
from checks.skeleton.skeleton_checks import batch_independence, eval_determinism
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline
from recipe.sequences import gpt_pipeline


class RecurrentLM(nn.Module):
    def __init__(self, vocab: int, cell: type = nn.GRU, carry: bool = True):
        super().__init__()
        self.embed, self.rnn = nn.Embedding(vocab, 32), cell(32, 64, batch_first=True)
        self.head, self.carry, self.state = nn.Linear(64, vocab), carry, None

    def forward(self, x):
        same_batch = self.state is not None and self._batch(self.state) == len(x)
        out, state = self.rnn(self.embed(x), self.state if self.carry and same_batch else None)
        if self.carry:  # "keep the context across batches": detached, never reset
            self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return self.head(out)

    @staticmethod
    def _batch(state) -> int:
        return (state[0] if isinstance(state, tuple) else state).shape[1]


class RunningMeanMLP(nn.Module):
    """An image MLP that adds a running mean of the inputs it has seen, kept in a buffer forward updates."""

    def __init__(self, size: int, classes: int, carry: bool = True):
        super().__init__()
        self.carry = carry
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, 64), nn.ReLU(), nn.Linear(64, classes))
        self.register_buffer("seen", torch.zeros(size))

    def forward(self, x):
        flat = x.flatten(1)
        if self.carry:
            self.seen = 0.9 * self.seen + 0.1 * flat.detach().mean(0)
        return self.net((flat + self.seen).view_as(x))


class DropoutInEval(nn.Module):
    def __init__(self, size: int, classes: int):
        super().__init__()
        self.hidden, self.head = nn.Linear(size, 64), nn.Linear(64, classes)

    def forward(self, x):
        return self.head(F.dropout(torch.relu(self.hidden(x.flatten(1))), 0.3))  # no training=self.training


@pytest.fixture(scope="module")
def names():
    return load_source("names")


def language_model(names, **kwargs):
    base = gpt_pipeline(TrainConfig(), names)
    return replace(base, make_model=lambda: RecurrentLM(names.num_classes, **kwargs))


def image_model(sample_data, model_class, **kwargs):
    size = sample_data.train.images[0].numel()
    return replace(default_pipeline(TrainConfig(), sample_data),
                   make_model=lambda: model_class(size, sample_data.num_classes, **kwargs))


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_a_language_model_carrying_its_hidden_state_is_named_by_each_check(names, cell):
    pipeline = language_model(names, cell=cell)
    for check in (eval_determinism, batch_independence, causality):
        result = check(pipeline)
        assert result.verdict is Verdict.FAIL, (check.__name__, result.message)
        assert "carries state from one forward call to the next" in result.message, (check.__name__, result.message)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_the_same_language_model_starting_fresh_passes(names, cell):
    pipeline = language_model(names, cell=cell, carry=False)
    for check in (eval_determinism, batch_independence, causality):
        assert check(pipeline).verdict is Verdict.PASS, check.__name__


def test_an_image_model_with_a_running_buffer_is_named_and_its_clean_twin_passes(sample_data):
    carried = eval_determinism(image_model(sample_data, RunningMeanMLP))
    assert carried.verdict is Verdict.FAIL and "carries state" in carried.message, carried.message
    assert eval_determinism(image_model(sample_data, RunningMeanMLP, carry=False)).verdict is Verdict.PASS


def test_dropout_left_on_in_eval_is_still_named_as_randomness(sample_data):
    result = eval_determinism(image_model(sample_data, DropoutInEval))
    assert result.verdict is Verdict.FAIL and "training=self.training" in result.message
    assert "carries state" not in result.message
