"""The sequence bug zoo: token data (a word stream, padded names) and the tiny GPT with ONE bug planted.

Each bug takes a clean GPT pipeline and returns it with one mistake, through the public Pipeline
contract (`dataclasses.replace`, or the data rebuilt and the pipeline built on it), as it would sit
in a user's code. `SEQUENCE_BUGS` lists them with the check that must FAIL and the words its message
must use; tests/test_sequence_checks.py proves it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
from torch.nn import functional as F

from recipe.config import TrainConfig
from recipe.data import DataBundle, Split
from recipe.language import TinyGPT
from recipe.pipeline import Pipeline
from recipe.sequences import CharVocab, TokenBatches, blocks_of, gpt_pipeline, token_bundle

PAD, STOP = "#", "."


def _words(seed: int, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def stream_text(n_chars: int, seed: int = 0) -> str:
    """Sentences of Zipf-distributed made-up words: no block of tens of characters repeats by chance."""
    rng = random.Random(seed + 1)
    words = _words(seed)
    weights = [1 / (r + 1) for r in range(len(words))]
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choices(words, weights, k=rng.randint(3, 9))).capitalize() + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_chars]


def stream_bundle(n_chars: int = 24_000, block: int = 32, seed: int = 0) -> DataBundle:
    """A character stream cut into blocks, 80/10/10 by position."""
    text = stream_text(n_chars, seed)
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    a, b = int(len(ids) * 0.8), int(len(ids) * 0.9)
    return token_bundle(blocks_of(ids[:a], block), blocks_of(ids[a:b], block), blocks_of(ids[b:], block),
                        vocab.tokens, decode=vocab.decode, source="words", reason="test stream")


def names_bundle(n: int = 1500, seed: int = 0, left: bool = False) -> DataBundle:
    """Made-up names, one per row: x = '.' + name, y = name + '.', padded with '#' (pad id 0) to the
    longest; `left` pads before the name instead of after it."""
    rng = random.Random(seed)
    names = _words(seed + 7, n)  # random syllables: a few short names repeat, as in real name lists
    vocab = CharVocab("".join(names) + STOP, pad=PAD)
    T = max(len(w) for w in names) + 1

    def split(chunk: list[str]) -> Split:
        xs, ys = [], []
        for w in chunk:
            x, y = STOP + w, w + STOP
            fill = PAD * (T - len(x))
            xs.append(vocab.encode(fill + x if left else x + fill))
            ys.append(vocab.encode(fill + y if left else y + fill))
        return Split(torch.stack(xs), torch.stack(ys))
    a, b = int(n * 0.8), int(n * 0.9)
    return token_bundle(split(names[:a]), split(names[a:b]), split(names[b:]), vocab.tokens,
                        decode=vocab.decode, source="names", reason="test names", pad_id=vocab.pad_id)


def config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 32, "lr": 3e-3, "check_steps": 100, **changes})


# ---------------------------------------------------------------- planting helpers

def _on_data(pipeline: Pipeline, transform: Callable[[Split, str], Split], **bundle_changes) -> Pipeline:
    d = pipeline.data
    data = replace(d, train=transform(d.train, "train"), val=transform(d.val, "val"), test=transform(d.test, "test"),
                   **bundle_changes)
    return replace(pipeline, data=data, batches=TokenBatches(data, pipeline.config.batch_size))


def _gpt(pipeline: Pipeline, cls=TinyGPT, mask: Callable[[int], torch.Tensor] | None = None, **kwargs) -> Pipeline:
    data = pipeline.data
    block = data.train.images.shape[1]

    def make_model():
        model = cls(data.num_classes, block_size=block, pad_id=kwargs.get("pad_id", data.pad_id))
        if mask is not None:
            for b in model.blocks:
                b.attn.causal = mask(block)
        return model
    return replace(pipeline, make_model=make_model)


# ---------------------------------------------------------------- the bugs

def no_causal_mask(p):
    return _gpt(p, mask=lambda T: torch.ones(T, T, dtype=torch.bool))


def mask_sees_next_one_layer(p):
    """One block only, so the shifted mask lets exactly the next token through."""
    return _gpt(p, cls=partial(TinyGPT, layers=1),
                mask=lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=1))


def mask_transposed(p):
    return _gpt(p, mask=lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool)))


def mask_sees_next(p):
    return _gpt(p, mask=lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=1))


def _shifted_targets(k: int):
    def plant(p):
        def transform(s: Split, _):
            T = s.images.shape[1]
            y = torch.roll(s.images, -k, dims=1)  # y[t] = x[t + k]; the wrapped tail is wrong too
            if k < 0:
                y[:, :-k] = s.images[:, :1]
            elif k > 0:
                y[:, T - k:] = s.labels[:, T - k:]
            return Split(s.images, y)
        return _on_data(p, transform)
    return plant


targets_not_shifted, targets_shifted_by_two, targets_one_behind = (_shifted_targets(k) for k in (0, 2, -1))


def pad_in_loss(p):
    return replace(p, loss_fn=lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()))


def pad_ignore_index_wrong(p):
    return replace(p, loss_fn=partial(_ce_ignoring, ignore=p.data.pad_id + 1))


def _ce_ignoring(logits, y, ignore):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=ignore)


def pads_attended(p):
    """The GPT built without its pad id (so no key-padding mask) on left-padded names."""
    return _gpt(p, pad_id=None)


class NoPositionGPT(TinyGPT):
    """forward without `+ self.position(...)`: the position table is built and never called."""

    def forward(self, x):
        keep = None if self.pad_id is None else x != self.pad_id
        h = self.drop(self.token(x))
        for block in self.blocks:
            h = block(h, keep)
        return self.head(self.norm(h))


class PositionDiscardedGPT(TinyGPT):
    """The position embedding is computed, then overwritten: `h = pos; h = tok` (called, never added)."""

    def forward(self, x):
        keep = None if self.pad_id is None else x != self.pad_id
        h = self.position(torch.arange(x.shape[1], device=x.device)).expand(x.shape[0], -1, -1)
        h = self.drop(self.token(x))
        for block in self.blocks:
            h = block(h, keep)
        return self.head(self.norm(h))


def no_positional_embedding(p):
    return _gpt(p, cls=NoPositionGPT)


def positional_embedding_discarded(p):
    return _gpt(p, cls=PositionDiscardedGPT)


def vocab_one_short(p):
    """class_names lost its last token: the largest id equals V."""
    d = p.data
    return gpt_pipeline(p.config, replace(d, class_names=d.class_names[:-1]))


def ids_counted_from_one(p):
    def grow(s, _):
        return Split(s.images + 1, s.labels + 1)
    return gpt_pipeline(p.config, _on_data(p, grow).data)


def train_without(p, token: int):
    """`token` replaced by id 0 in train only: val and test hold a token train never shows (train read
    from another source, or encoded with another vocabulary)."""
    def hide(s, name):
        if name != "train":
            return s
        return Split(torch.where(s.images == token, 0, s.images), torch.where(s.labels == token, 0, s.labels))
    return _on_data(p, hide)


def frequent_token_missing_from_train(p):
    counts = torch.bincount(p.data.val.images.flatten(), minlength=p.num_classes)
    return train_without(p, int(counts[1:].argmax()) + 1)  # not id 0, which takes its place


def val_is_train(p):
    return _on_data(p, lambda s, name: p.data.train if name == "val" else s)


def test_copied_from_val(p):
    return _on_data(p, lambda s, name: p.data.val if name == "test" else s)


def half_val_from_train(p):
    def transform(s, name):
        if name != "val":
            return s
        h = len(s) // 2
        return Split(torch.cat([p.data.train.images[:h], s.images[h:]]), torch.cat([p.data.train.labels[:h], s.labels[h:]]))
    return _on_data(p, transform)


@dataclass(frozen=True)
class SequenceBug:
    name: str
    plant: Callable[[Pipeline], Pipeline]
    check: str
    cause_words: tuple[str, ...]
    data: str = "stream"  # "stream", "names" (right padded) or "left-names"


SEQUENCE_BUGS = (
    SequenceBug("no_causal_mask", no_causal_mask, "causality", ("no causal mask",)),
    SequenceBug("mask_transposed", mask_transposed, "causality", ("transposed",)),
    SequenceBug("mask_sees_next", mask_sees_next, "causality", ("shifted by one",)),
    SequenceBug("mask_sees_next_one_layer", mask_sees_next_one_layer, "causality", ("next token leaks",)),
    SequenceBug("no_causal_mask_names", no_causal_mask, "causality", ("no causal mask",), "names"),
    SequenceBug("targets_not_shifted", targets_not_shifted, "targets_shifted", ("y = x",)),
    SequenceBug("targets_shifted_by_two", targets_shifted_by_two, "targets_shifted", ("shifted by 2",)),
    SequenceBug("targets_one_behind", targets_one_behind, "targets_shifted", ("previous input",)),
    SequenceBug("targets_not_shifted_names", targets_not_shifted, "targets_shifted", ("y = x",), "names"),
    SequenceBug("pad_in_loss", pad_in_loss, "padding_masked", ("pad tokens are in the loss",), "names"),
    SequenceBug("pad_ignore_index_wrong", pad_ignore_index_wrong, "padding_masked", ("ignore_index",), "names"),
    SequenceBug("pads_attended", pads_attended, "padding_masked", ("key-padding mask",), "left-names"),
    SequenceBug("no_positional_embedding", no_positional_embedding, "position_used", ("never added",)),
    SequenceBug("positional_embedding_discarded", positional_embedding_discarded, "position_used", ("never added",)),
    SequenceBug("no_positional_embedding_names", no_positional_embedding, "position_used", ("never added",), "names"),
    SequenceBug("vocab_one_short", vocab_one_short, "token_range", ("one token short",)),
    SequenceBug("ids_counted_from_one", ids_counted_from_one, "token_range", ("counted from 1",)),
    SequenceBug("vocab_one_short_names", vocab_one_short, "token_range", ("one token short",), "names"),
    SequenceBug("val_is_train", val_is_train, "split_overlap", ("copied",)),
    SequenceBug("test_copied_from_val", test_copied_from_val, "split_overlap", ("copied",)),
    SequenceBug("half_val_from_train", half_val_from_train, "split_overlap", ("share blocks",)),
    SequenceBug("val_is_train_names", val_is_train, "split_overlap", ("copied",), "names"),
    SequenceBug("frequent_token_missing_from_train", frequent_token_missing_from_train, "unseen_tokens",
                ("never occur in train",)),
)
