"""A split whose token ids were assigned by another vocabulary: `unigram_bigram_baselines` FAILs it.

The bug, as char-level tutorials invite it: `chars = sorted(set(text))` computed for each file, so an id
means one character in train and another in test. Nothing crashes, ids stay in range, and when every
character of test also occurs in train `unseen_tokens` has nothing to say. Variants: test encoded with its
own sorted vocabulary, val and test each with their own, a permuted vocabulary, and another encoding
(code points modulo V). Valid, must not FAIL: the real token sources, and a test split from other text
(English docstrings where train is Python code) encoded with train's vocabulary.
"""
from __future__ import annotations

import inspect
import json
import textwrap

import pytest
import torch

from checks.data.sequence_checks import unigram_bigram_baselines
from checks.engine.result import Verdict
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.sequences import gpt_pipeline
from recipe.token_datasets import bundle_from_token_ids

T = 64


def corpus() -> tuple[str, str]:
    """(Python code, English prose) from the standard library: json and textwrap's source, their docstrings."""
    code = inspect.getsource(json.decoder) + inspect.getsource(json.encoder) + inspect.getsource(textwrap)
    prose = "\n".join(doc for doc in (inspect.getdoc(o) for m in (json, textwrap, inspect) for _, o in
                                      inspect.getmembers(m)) if doc)
    return code, prose


def blocks(ids: torch.Tensor) -> list[torch.Tensor]:
    return [ids[i * T:(i + 1) * T + 1] for i in range((len(ids) - 1) // T)]


def encode(text: str, vocab: list[str]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text])


def pipeline(train: torch.Tensor, test: torch.Tensor, vocab: list[str], val: torch.Tensor | None = None):
    data = bundle_from_token_ids(blocks(train), blocks(test), val=None if val is None else blocks(val),
                                 vocab=vocab, source="stdlib text")
    return gpt_pipeline(TrainConfig(), data)


def own_vocabulary(text: str) -> torch.Tensor:
    return encode(text, sorted(set(text)))


def split_three(text: str) -> tuple[str, str, str]:
    a, b = int(0.8 * len(text)), int(0.9 * len(text))
    return text[:a], text[a:b], text[b:]


def test_own_sorted_vocabulary_for_test():
    """Test is other files (the docstrings), encoded with sorted(set(their text)): ids shift wherever the
    docstrings lack a character of the code's."""
    code, prose = corpus()
    train, val, _ = split_three(code)
    vocab = sorted(set(code + prose))
    result = unigram_bigram_baselines(pipeline(encode(train, vocab), own_vocabulary(prose), vocab,
                                               val=encode(val, vocab)))
    assert result.verdict is Verdict.FAIL, result.message
    assert result.message.startswith("the ids of test do not follow train's") and "vocabulary" in result.message


def test_own_sorted_vocabulary_for_val_and_test():
    code, prose = corpus()
    train, _, _ = split_three(code)
    vocab = sorted(set(code + prose))
    half = len(prose) // 2
    result = unigram_bigram_baselines(pipeline(encode(train, vocab), own_vocabulary(prose[half:]), vocab,
                                               val=own_vocabulary(prose[:half])))
    assert result.verdict is Verdict.FAIL and "val and test" in result.message, result.message


@pytest.mark.parametrize("remap", ["permuted", "code points modulo V"])
def test_another_encoding_of_val(remap):
    code, _ = corpus()
    train, val, test = split_three(code)
    vocab = sorted(set(code))
    if remap == "permuted":
        order = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(1))
        val_ids = order[encode(val, vocab)]
    else:
        val_ids = torch.tensor([ord(c) % len(vocab) for c in val])
    result = unigram_bigram_baselines(pipeline(encode(train, vocab), encode(test, vocab), vocab, val=val_ids))
    assert result.verdict is Verdict.FAIL and result.message.startswith("the ids of val"), result.message


def test_other_text_in_train_vocabulary_is_not_called_another_vocabulary():
    code, prose = corpus()
    vocab = sorted(set(code + prose))
    train, val, _ = split_three(code)
    result = unigram_bigram_baselines(pipeline(encode(train, vocab), encode(prose, vocab), vocab,
                                               val=encode(val, vocab)))
    assert result.verdict is not Verdict.FAIL, result.message
    assert result.details["context_gain"]["test"] > 0.1  # the previous character still helps on English


@pytest.mark.parametrize("source", ["python-source", "names"])
def test_the_real_token_sources_pass(source):
    result = unigram_bigram_baselines(gpt_pipeline(TrainConfig(), load_source(source)))
    assert result.verdict is Verdict.PASS, result.message
    assert min(result.details["context_gain"].values()) > 0.3


def test_a_gpt2_sized_vocabulary_is_counted_sparsely():
    """50,257 ids, as a GPT-2 tokenizer gives: a dense V x V bigram table would take 20 GB."""
    g = torch.Generator().manual_seed(0)
    vocab = [f"t{i}" for i in range(50_257)]
    stream = torch.randint(0, 2_000, (40 * T + 1,), generator=g) * 25  # ids spread over the whole range
    data = bundle_from_token_ids(blocks(stream), blocks(stream), vocab=vocab, source="wide ids")
    result = unigram_bigram_baselines(gpt_pipeline(TrainConfig(), data))
    assert result.verdict in (Verdict.PASS, Verdict.WARN), result.message


def test_a_word_level_vocabulary_on_other_files_is_not_called_another_vocabulary():
    """19k word ids on 0.2M train tokens: add-one smoothing makes the bigram lose to the unigram even on held-out
    train rows, so the rule has no null to judge against and stays silent (measured: -1.2 nats there)."""
    import re
    import sysconfig
    from pathlib import Path

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    split_words = [[w for f in part for w in re.findall(r"\w+|[^\w\s]", f.read_text(errors="ignore"))]
                   for part in (files[:40], files[-60:-30], files[-30:])]
    vocab = sorted(set().union(*split_words))
    index = {w: i for i, w in enumerate(vocab)}
    train, val, test = (torch.tensor([index[w] for w in words]) for words in split_words)
    result = unigram_bigram_baselines(pipeline(train, test, vocab, val=val))
    assert result.verdict is not Verdict.FAIL, result.message
    assert result.details["context_gain"]["train (held-out rows)"] < 0.1
