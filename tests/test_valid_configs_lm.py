"""The valid-configuration matrix for language models: what careful users train sequence models with
FAILs no check (issue #23). The whole preflight, gate off, on the padded `names` data (makemore's
task), at the seeds of tests/seeds.py (0..1 in CI, 0..4 with RECIPE_ALL_SEEDS=1):

- the tiny GPT as nanoGPT trains it: AdamW (weight decay 0.1 on matrices only, betas 0.9/0.95),
  a linear warm-up then cosine decay stepped per batch, gradient clipping at 1.0, dropout 0.1, the
  head tied to the token embedding (TinyGPT ties it);
- an LSTM and a GRU language model (embedding, one recurrent layer, a linear head) with Adam.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from checks import run_all
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.language import TinyGPT
from recipe.outputs import forward_logits
from recipe.sequences import gpt_pipeline
from tests.seeds import EVIDENCE_SEEDS
from tests.test_valid_configs import assert_nothing_blocks


class RecurrentLM(nn.Module):
    def __init__(self, vocab: int, cell: type[nn.Module]):
        super().__init__()
        self.embed = nn.Embedding(vocab, 48)
        self.rnn = cell(48, 64, batch_first=True)
        self.head = nn.Linear(64, vocab)

    def forward(self, x):
        return self.head(self.rnn(self.embed(x))[0])


def _adamw(params):
    params = list(params)
    decay = [p for p in params if p.dim() >= 2]  # nanoGPT: no weight decay on biases and LayerNorm gains
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=3e-3, betas=(0.9, 0.95))


def _warmup_cosine(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _clipped_step(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward_logits(model, x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


def nanogpt_style(config, data):
    base = gpt_pipeline(config, data)
    total = config.epochs * base.steps_per_epoch
    block, V, pad = data.train.images.shape[1], data.num_classes, data.pad_id
    return replace(base, name="gpt-adamw-warmup-cosine-clip-dropout",
                   make_model=lambda: TinyGPT(V, block_size=block, pad_id=pad, dropout=0.1).to(base.device),
                   make_optimizer=_adamw, make_scheduler=_warmup_cosine(total, warmup=max(total // 20, 10)),
                   scheduler_interval="step", train_step=_clipped_step)


def recurrent(cell):
    def build(config, data):
        base = gpt_pipeline(config, data)
        V = data.num_classes
        return replace(base, name=cell.__name__.lower(), make_model=lambda: RecurrentLM(V, cell).to(base.device))
    return build


VALID_LM = {"gpt-nanogpt-style": nanogpt_style, "lstm": recurrent(nn.LSTM), "gru": recurrent(nn.GRU)}


@pytest.fixture(scope="module")
def names():
    return load_source("names")


@pytest.mark.slow  # the whole preflight of a small language model: 10-25 s each
@pytest.mark.parametrize("seed", EVIDENCE_SEEDS)
@pytest.mark.parametrize("name", VALID_LM)
def test_a_valid_language_model_fails_no_check(names, name, seed):
    pipeline = VALID_LM[name](TrainConfig(seed=seed), names)
    torch.manual_seed(seed)
    results = run_all(pipeline, gate=False)
    assert_nothing_blocks(results, f"{name} (seed {seed})")
    ran = {r.name for r in results if r.verdict.value != "N/A"}
    assert {"causality", "loss_at_init", "overfit_one_batch", "beats_ngram_baselines"} <= ran
