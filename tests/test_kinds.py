"""The data kind in the contract: checks declare the kinds they apply to, the others say N/A and why."""
from __future__ import annotations

import pytest
import torch

from checks.engine.kinds import applies_to, kinds_of, why_not
from checks.engine.registry import CHECKS
from checks.engine.result import Verdict
from checks.engine.runner import run_check
from recipe.config import TrainConfig
from recipe.contract import PipelineContractError, check_contract
from recipe.data import Batch, DataBundle, Split
from recipe.errors import DataError
from recipe.sequences import CharVocab, blocks_of, gpt_pipeline, token_bundle

TEXT = "the quick brown fox jumps over the lazy dog. " * 60


def tiny_tokens() -> DataBundle:
    vocab = CharVocab(TEXT)
    ids = vocab.encode(TEXT)
    third = len(ids) // 3
    return token_bundle(blocks_of(ids[:third], 16), blocks_of(ids[third:2 * third], 16),
                        blocks_of(ids[2 * third:], 16), vocab.tokens, decode=vocab.decode, source="fox",
                        reason="test text")


def test_a_check_of_another_kind_is_not_applicable_and_never_called():
    called = []

    def image_check(pipeline):
        called.append(pipeline)

    pipeline = gpt_pipeline(TrainConfig(epochs=1), tiny_tokens())
    result = run_check(image_check, pipeline, "data")
    assert result.verdict is Verdict.NA and not called
    assert "images only" in result.message and "token sequences" in result.message


def test_applies_to_marks_kinds_and_refuses_unknown_ones():
    @applies_to("image", "tokens")
    def check(pipeline):
        return None
    assert kinds_of(check) == ("image", "tokens")
    assert why_not(check, "tokens") is None and "feature vectors" in why_not(check, "features")
    with pytest.raises(ValueError):
        applies_to("audio")


def test_every_registered_check_declares_known_kinds():
    for name, (_, check) in CHECKS.items():
        assert set(kinds_of(check)) <= {"image", "features", "tokens"}, name


def test_blocks_are_the_inputs_shifted_by_one():
    split = blocks_of(torch.arange(50), 16)
    assert split.images.shape == (3, 16)
    assert torch.equal(split.labels[:, :-1], split.images[:, 1:])
    assert torch.equal(split.labels[:, -1], split.images[:, -1] + 1)


def test_token_contract_refuses_class_labels_for_token_inputs():
    pipeline = gpt_pipeline(TrainConfig(epochs=1), tiny_tokens())

    def one_label_per_sequence(split, **kw):
        for b in pipeline.batches(split, **kw):
            yield Batch(b.x, b.y[:, 0], b.idx)
    broken = type(pipeline)(**{**pipeline.__dict__, "batches": one_label_per_sequence})
    with pytest.raises(PipelineContractError, match=r"\(B, T\) integer target ids"):
        check_contract(broken)


def test_decode_belongs_to_token_bundles_only():
    split = Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(DataError, match="kind='tokens'"):
        DataBundle(split, split, split, ("a", "b"), "x", "y", decode=str)
    with pytest.raises(DataError, match="kind must be one of"):
        DataBundle(split, split, split, ("a", "b"), "x", "y", kind="audio")
