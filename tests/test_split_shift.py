"""split_shift: one split preprocessed or encoded differently from the others FAILs, whatever the
shift and the image shape; splits drawn from one distribution PASS, even when they differ in class
mix or labels (other checks' findings), hold repeated images, or are large."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from checks.engine.result import Verdict
from checks.data.shift_checks import auc, split_shift
from recipe.config import TrainConfig
from recipe.data import Split, load_data
from recipe.pipeline import default_pipeline
from tests.synthetic import write_cifar10
from tests.test_verdicts import disagreements
from tests.zoo.bugs import (noisy_train_labels, val_from_sorted_tail)
from tests.zoo.family_bugs import (downscaled, jpeg_compressed)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 3x32x32 colour data set (shapes on dark backgrounds), 1830 / 170 / 500 images."""
    folder = tmp_path_factory.mktemp("shapes")
    write_cifar10(folder, train_per_class=200, test_per_class=50)
    return load_data("cifar10", folder, download=False)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def brightened(images):
    return _uint8(images.float() + 30)


def inverted(images):
    return 255 - images


def box_blurred(images):
    channels = images.shape[1]
    kernel = torch.ones(channels, 1, 3, 3) / 9
    return _uint8(F.conv2d(F.pad(images.float(), (1, 1, 1, 1), mode="replicate"), kernel, groups=channels))


def noised(images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return _uint8(images.float() + 6 * noise)


def gamma_changed(images):
    return _uint8((images.float() / 255) ** 0.6 * 255)


def posterised(images):
    return images // 32 * 32


def standardised_per_image(images):
    """A per-image standardisation baked into the stored pixels, mapped back around 128."""
    x = images.float()
    mean, std = x.mean((1, 2, 3), keepdim=True), x.std((1, 2, 3), keepdim=True).clamp_min(1)
    return _uint8((x - mean) / std * 50 + 128)


def mostly_jpeg(images):
    """Three quarters of the split re-encoded (a second source merged in), a quarter as the other splits:
    a perfect probe then scores AUC 0.875."""
    out = jpeg_compressed(images)
    out[::4] = images[::4]
    return out


SHIFTS = {"brightened": brightened, "inverted": inverted, "blurred": box_blurred, "noised": noised,
          "gamma 0.6": gamma_changed, "posterised": posterised, "standardised": standardised_per_image,
          "jpeg": jpeg_compressed, "downscaled": downscaled, "3/4 jpeg": mostly_jpeg}


def _shifted(data, split: str, edit):
    source = data.split(split)
    return replace(data, **{split: Split(edit(source.images), source.labels)})


@pytest.mark.parametrize("data_name", ["sample", "shapes"])
@pytest.mark.parametrize("shift", list(SHIFTS))
@pytest.mark.slow
def test_a_split_preprocessed_differently_fails_and_is_named(request, sample_data, data_name, shift):
    data = sample_data if data_name == "sample" else request.getfixturevalue("shapes")
    split = "test" if len(shift) % 2 else "val"  # both held-out splits get shifted across the variants
    result = split_shift(default_pipeline(TrainConfig(), _shifted(data, split, SHIFTS[shift])))
    assert result.verdict is Verdict.FAIL, result.message
    assert f"the {split} split comes from a different distribution" in result.message
    assert result.details["auc"][split] > 0.75
    assert not disagreements([result])


def test_a_shifted_train_split_is_named_as_the_odd_one(sample_data):
    result = split_shift(default_pipeline(TrainConfig(), _shifted(sample_data, "train", noised)))
    assert result.verdict is Verdict.FAIL
    assert "train and the held-out splits come from different distributions" in result.message
    assert min(result.details["auc"].values()) > 0.9


def test_the_message_and_details_show_per_split_intensity_statistics(sample_data):
    result = split_shift(default_pipeline(TrainConfig(), _shifted(sample_data, "test", brightened)))
    table = {row["split"]: row for row in result.details["intensity"]}
    assert set(table) == {"train", "val", "test"}
    assert table["test"]["mean"] > table["train"]["mean"] + 0.08  # +30 of 255
    assert f"test {table['test']['mean']:.3f}/{table['test']['std']:.3f}" in result.message
    assert [f.kind for f in result.figures] == ["bars", "images"]


@pytest.mark.parametrize("seed", range(3))
def test_clean_sample_splits_pass_near_chance(sample_data, seed):
    result = split_shift(default_pipeline(TrainConfig(seed=seed), sample_data))
    assert result.verdict is Verdict.PASS, result.message
    assert all(abs(value - 0.5) < 0.08 for value in result.details["auc"].values()), result.details["auc"]
    assert not disagreements([result])


def test_clean_colour_splits_pass(shapes):
    result = split_shift(default_pipeline(TrainConfig(), shapes))
    assert result.verdict is Verdict.PASS, result.message
    assert len(result.details["intensity"]) == 9  # 3 splits x 3 channels


def test_float_images_with_a_declared_range_are_read_through_it(sample_data):
    as_float = {name: Split(sample_data.split(name).images.float() / 255, sample_data.split(name).labels)
                for name in ("train", "val", "test")}
    clean = replace(sample_data, **as_float, value_range=(0.0, 1.0))
    assert split_shift(default_pipeline(TrainConfig(), clean)).verdict is Verdict.PASS
    shifted = replace(clean, test=Split((clean.test.images * 0.8 + 0.2), clean.test.labels))
    assert split_shift(default_pipeline(TrainConfig(), shifted)).verdict is Verdict.FAIL


@pytest.mark.parametrize("bug", [val_from_sorted_tail, noisy_train_labels], ids=lambda bug: bug.__name__)
def test_a_different_class_mix_or_noisy_labels_are_not_a_shift(linear, bug):
    """class_balance and the label checks own these; the images compared are class-matched."""
    result = split_shift(bug(linear))
    assert result.verdict is Verdict.PASS, result.message


def test_a_large_split_with_repeated_images_is_sampled_and_not_flattered(sample_data):
    """10x tiling repeats every image ten times within its split: identical images share a fold, so
    the probe never scores an image whose copy it was fit on, and only a sample is compared."""
    tiled = {name: Split(sample_data.split(name).images.repeat(10, 1, 1, 1), sample_data.split(name).labels.repeat(10))
             for name in ("train", "val", "test")}
    result = split_shift(default_pipeline(TrainConfig(), replace(sample_data, **tiled)))
    assert result.verdict is Verdict.PASS, result.message
    assert max(result.details["compared_per_side"].values()) <= 2000


def test_auc_counts_ties_as_half():
    positive = torch.tensor([True, True, False, False])
    assert auc(torch.tensor([3.0, 4.0, 1.0, 2.0]), positive) == 1.0
    assert auc(torch.tensor([1.0, 1.0, 1.0, 1.0]), positive) == 0.5
    assert auc(torch.tensor([1.0, 3.0, 2.0, 3.0]), positive) == pytest.approx(1.5 / 4)  # (3 > 2) + (3 = 3) / 2
