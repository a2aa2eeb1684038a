"""Splits, normalisation and batches of the in-memory data."""
from __future__ import annotations

import hashlib

import pytest
import torch

from recipe.config import TrainConfig
from recipe.data import TensorBatches, load_data, norm_stats
from recipe.pipeline import default_pipeline


def _hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images}


def test_sample_split_sizes(sample_data):
    assert (len(sample_data.train), len(sample_data.val), len(sample_data.test)) == (3500, 500, 1000)
    assert sample_data.source == "sample" and sample_data.num_classes == 10


@pytest.mark.parametrize("split, per_class", [("train", 350), ("val", 50), ("test", 100)])
def test_sample_splits_are_stratified(sample_data, split, per_class):
    counts = torch.bincount(sample_data.split(split).labels, minlength=10)
    assert counts.tolist() == [per_class] * 10


def test_splits_do_not_overlap(sample_data, sample_raw):
    train, val, test = (_hashes(sample_data.split(s).images) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    # and together they are exactly the source (the sample has a few duplicate images, so compare sets)
    assert train | val | test == _hashes(sample_raw.images)


def test_split_does_not_move_with_the_training_seed(sample_data, fast_sample):
    torch.manual_seed(12345)  # the global RNG a training seed would set
    again = load_data("sample", download=False)
    for split in ("train", "val", "test"):
        assert torch.equal(again.split(split).images, sample_data.split(split).images)
        assert torch.equal(again.split(split).labels, sample_data.split(split).labels)


def test_norm_stats_come_from_train_only(sample_data):
    pipeline = default_pipeline(TrainConfig(), sample_data)
    pixels = sample_data.train.images.double() / 255
    assert pipeline.norm.mean == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert pipeline.norm.std == pytest.approx(pixels.std().item(), rel=1e-5)
    everything = torch.cat([sample_data.split(s).images for s in ("train", "val", "test")]).double() / 255
    assert pipeline.norm.mean != pytest.approx(everything.mean().item(), rel=1e-6)


def test_normalised_train_has_zero_mean_unit_std(sample_data):
    batches = TensorBatches(sample_data, norm_stats(sample_data.train), batch_size=4096)
    (batch,) = list(batches("train"))
    assert batch.x.shape == (3500, 1, 28, 28) and batch.x.dtype == torch.float32
    assert abs(batch.x.mean().item()) < 1e-4 and batch.x.std().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_batch_indices_map_back_to_the_source(sample_data, split):
    stats = norm_stats(sample_data.train)
    batches = TensorBatches(sample_data, stats, batch_size=256)
    source = sample_data.split(split)
    for batch in batches(split, shuffle=True, generator=torch.Generator().manual_seed(1)):
        pixels = batch.x * stats.std + stats.mean  # undo the per-channel normalisation
        assert torch.allclose(pixels, source.images[batch.idx].float() / 255, atol=1e-5)
        assert torch.equal(batch.y, source.labels[batch.idx])


def test_each_epoch_covers_every_example_once(sample_data):
    batches = TensorBatches(sample_data, norm_stats(sample_data.train), batch_size=64)
    seen = torch.cat([b.idx for b in batches("train", shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert len(seen) == len(sample_data.train)
    assert torch.equal(torch.sort(seen).values, torch.arange(len(sample_data.train)))
    sizes = [len(b.y) for b in batches("train", shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert sizes == [64] * (3500 // 64) + [3500 % 64]  # the last batch is partial, not dropped


def test_shuffle_follows_the_generator(sample_data):
    batches = TensorBatches(sample_data, norm_stats(sample_data.train), batch_size=3500)

    def order(seed: int) -> torch.Tensor:
        return next(batches("train", shuffle=True, generator=torch.Generator().manual_seed(seed))).idx

    assert torch.equal(order(0), order(0))          # same generator seed, same order
    assert not torch.equal(order(0), order(1))      # different seed, different order
    assert torch.equal(next(batches("val")).idx, torch.arange(500))  # no shuffle: source order
