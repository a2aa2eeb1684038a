"""undeclared_padding: padding that no pad id declares, trained on as text, FAILs; clean streams, a
declared pad and a loss that ignores the runs itself do not."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch

from checks.data.padding_data_checks import undeclared_padding
from checks.engine.result import Verdict
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.data import Split
from recipe.language import token_cross_entropy
from recipe.sequences import CharVocab, blocks_of, gpt_pipeline, token_bundle


@pytest.fixture(scope="module")
def names():
    return load_source("names")


def _repadded(names, left: bool = False):
    """The names bundle with its pad replaced by the end token '.', and no pad id: FlagAI#522's bug."""
    dot = names.class_names.index(".")

    def split(s: Split) -> Split:
        x, y = s.images.clone(), s.labels.clone()
        x[x == names.pad_id], y[y == names.pad_id] = dot, dot
        if left:  # move each row's padding to its start
            x, y = x.flip(1), y.flip(1)
        return Split(x, y)
    bundle = replace(names, train=split(names.train), val=split(names.val), test=split(names.test), pad_id=None)
    return bundle, dot


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_names_padded_with_their_end_token_fail(names, left):
    bundle, dot = _repadded(names, left)
    result = undeclared_padding(gpt_pipeline(TrainConfig(), bundle))
    assert result.verdict is Verdict.FAIL, result.message
    assert result.details["pad_like_id"] == dot and "pad_id" in result.message and result.value > 0.2


def test_a_loss_that_ignores_the_runs_itself_passes(names):
    bundle, dot = _repadded(names)
    pipeline = gpt_pipeline(TrainConfig(), bundle)
    ignoring = replace(pipeline, loss_fn=partial(token_cross_entropy, pad_id=dot))
    result = undeclared_padding(ignoring)
    assert result.verdict is Verdict.PASS and result.details["loss_counts_them"] is False
    assert f"pad_id={dot}" in result.message


def test_a_declared_pad_is_not_applicable(names):
    assert undeclared_padding(gpt_pipeline(TrainConfig(), names)).verdict is Verdict.NA


@pytest.mark.parametrize("text", [
    "def f(x):\n        return x\n" * 400,                       # indentation: runs of spaces inside blocks
    "".join(chr(97 + (i * 7) % 26) for i in range(20000)),      # no runs at all
    ("the end.   \n\n\n" + "a line of prose " * 5) * 200,         # a few blank-line runs
], ids=["indented-code", "no-runs", "prose-with-blank-lines"])
def test_clean_streams_pass(text):
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    third = len(ids) // 3
    bundle = token_bundle(blocks_of(ids[:third], 32), blocks_of(ids[third:2 * third], 32),
                          blocks_of(ids[2 * third:], 32), vocab.tokens, decode=vocab.decode, source="t", reason="t")
    result = undeclared_padding(gpt_pipeline(TrainConfig(), bundle))
    assert result.verdict is Verdict.PASS, result.message


@pytest.mark.slow  # loads the stdlib text: ~2 s
def test_the_default_token_data_passes():
    result = undeclared_padding(gpt_pipeline(TrainConfig(), load_source("python-source")))
    assert result.verdict is Verdict.PASS, result.message
