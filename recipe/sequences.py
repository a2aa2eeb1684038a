"""Token sequences: bundles of (input ids, next-token targets) and the batches and pipeline that train
a language model on them through the same `fit` and checks as images.

An example is one block: `x` is T input ids, `y` the T ids that follow each (y[t] = x[t+1] for text
cut from a stream). A split is (N, T) inputs and (N, T) targets; `DataBundle.class_names` is the
vocabulary, so `num_classes` is V, and `decode` turns ids back into text for the report.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from recipe.config import TrainConfig
from recipe.data import Batch, DataBundle, Split
from recipe.errors import DataError
from recipe.language import BigramLM, TinyGPT, token_cross_entropy
from recipe.optim import make_optimizer, make_scheduler
from recipe.pipeline import Pipeline
from recipe.steps import train_step

DEFAULT_BLOCK = 64


class CharVocab:
    """A character-level vocabulary: every character seen, in sorted order, plus an optional pad."""

    def __init__(self, text: str, pad: str | None = None):
        chars = sorted(set(text) - ({pad} if pad else set()))
        self.tokens = ([pad] if pad else []) + chars
        self.ids = {c: i for i, c in enumerate(self.tokens)}
        self.pad_id = 0 if pad else None

    def encode(self, text: str) -> torch.Tensor:
        try:
            return torch.tensor([self.ids[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the vocabulary (built from train)") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[int(i)] for i in ids)


def blocks_of(stream: torch.Tensor, block_size: int) -> Split:
    """A 1-D id stream cut into non-overlapping blocks of block_size + 1: inputs and the targets one
    position later. The tail that does not fill a block is dropped."""
    n = (len(stream) - 1) // block_size
    if n < 1:
        raise DataError(f"a stream of {len(stream)} tokens is shorter than one block of {block_size} + 1")
    cut = stream[:n * block_size + 1]
    x = cut[:-1].view(n, block_size)
    y = cut[1:].view(n, block_size)
    return Split(x.clone(), y.clone())


def token_bundle(train: Split, val: Split, test: Split, vocab: Sequence[str], *, decode: Callable,
                 source: str, reason: str, pad_id: int | None = None,
                 device: str | torch.device = "cpu") -> DataBundle:
    device = torch.device(device)
    moved = [Split(s.images.to(device), s.labels.to(device)) for s in (train, val, test)]
    return DataBundle(*moved, tuple(vocab), source, reason, kind="tokens", decode=decode, pad_id=pad_id)


class TokenBatches:
    """Batches of (B, T) ids and targets drawn by indexing the split tensors; nothing to normalise."""

    def __init__(self, data: DataBundle, batch_size: int):
        self.data, self.batch_size = data, batch_size

    def __call__(self, split: str, *, shuffle: bool = False, augment: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Batch]:
        source = self.data.split(split)
        n = len(source)
        order = (torch.randperm(n, generator=generator) if shuffle else torch.arange(n)).to(source.labels.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield Batch(source.images.index_select(0, idx), source.labels.index_select(0, idx), idx)


LANGUAGE_MODELS: dict[str, Callable[..., nn.Module]] = {"gpt": TinyGPT, "bigram": BigramLM}


def language_pipeline(config: TrainConfig, data: DataBundle, model: str = "gpt") -> Pipeline:
    """The default language-model pipeline: the tiny GPT (or the bigram table), next-token
    cross-entropy with padding ignored, the config's optimizer and schedule, the default step."""
    if data.kind != "tokens":
        raise DataError(f"the {model} language model needs token sequences; this data holds {data.examples}")
    block = data.train.images.shape[1]
    device = data.train.labels.device
    total_steps = config.epochs * math.ceil(len(data.train) / config.batch_size)

    def make_model() -> nn.Module:
        return LANGUAGE_MODELS[model](data.num_classes, block_size=block, pad_id=data.pad_id).to(device)

    scheduler = None if config.schedule == "constant" else partial(make_scheduler, config, total_steps)
    return Pipeline(name=model, data=data, norm=None, batches=TokenBatches(data, config.batch_size),
                    make_model=make_model, loss_fn=partial(token_cross_entropy, pad_id=data.pad_id),
                    make_optimizer=partial(make_optimizer, config), train_step=train_step, config=config,
                    make_scheduler=scheduler, scheduler_interval="step", derived_from=config)


def gpt_pipeline(config: TrainConfig, data: DataBundle) -> Pipeline:
    return language_pipeline(config, data, "gpt")


def bigram_pipeline(config: TrainConfig, data: DataBundle) -> Pipeline:
    return language_pipeline(config, data, "bigram")
