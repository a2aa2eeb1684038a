"""Split hygiene beyond byte-exact copies: `duplicates_and_leakage` and `conflicting_labels` on
several variants of each kind of fault (near copies of held-out images in train, val and test
overlapping, images repeated within a split, the same image with two labels), on grey, colour,
float and larger images, and no false alarm on clean data with natural look-alikes.

The zoo (tests/zoo/) holds one twin per kind; the variants that are not zoo entries live here.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from checks.measure.near_copies import Hasher, Index, Queries, interiors, nearest_copies, small
from checks.engine.result import Verdict, holds
from checks.data.split_checks import conflicting_labels, duplicates_and_leakage
from recipe.config import TrainConfig
from recipe.data import DataBundle, Split, load_data
from recipe.pipeline import default_pipeline
from tests.synthetic import class_images, write_cifar10, write_colour_digits
from tests.zoo.family_bugs import (jpeg_compressed as jpeg)
from tests.zoo.valid import VALID


# ---------------------------------------------------------------- the ways a copy changes

def shifted(images: torch.Tensor, dy: int = 1, dx: int = 0) -> torch.Tensor:
    """Moved by (dy, dx) pixels, the uncovered border black: a translate augmentation saved to disk."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def noised(images: torch.Tensor, std: float = 3.0) -> torch.Tensor:
    noise = std * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def brightened(images: torch.Tensor) -> torch.Tensor:
    return (images.float() * 0.8 + 30).round().clamp(0, 255).to(torch.uint8)


def quantised(images: torch.Tensor) -> torch.Tensor:
    return images // 8 * 8


CHANGES = {"shift 1 px": shifted, "shift 1 px diagonally": lambda x: shifted(x, 1, 1),
           "shift 2 px": lambda x: shifted(x, 0, -2), "JPEG q75": jpeg, "noise std 3": noised,
           "brightness and contrast": brightened, "quantised to 32 levels": quantised}


# ---------------------------------------------------------------- planting

@pytest.fixture(scope="module")
def sample() -> DataBundle:
    return load_data("sample", download=False)


def _pipeline(data: DataBundle):
    return default_pipeline(TrainConfig(), data)


def _append(split: Split, images: torch.Tensor, labels: torch.Tensor) -> Split:
    return Split(torch.cat([split.images, images]), torch.cat([split.labels, labels]))


def _into(data: DataBundle, name: str, images: torch.Tensor, labels: torch.Tensor) -> DataBundle:
    return replace(data, **{name: _append(data.split(name), images, labels)})


def _share(split: Split, fraction: float) -> slice:
    return slice(0, max(1, round(len(split) * fraction)))


def _agrees(result) -> bool:
    """The shown comparison holds exactly when the verdict does not block (tests/test_verdicts.py)."""
    return holds(result.value, result.comparison, result.threshold) != result.verdict.blocks


# ---------------------------------------------------------------- clean data: no false alarm

@pytest.mark.slow
def test_clean_sample_passes_both(sample):
    pipeline = _pipeline(sample)
    for check in (duplicates_and_leakage, conflicting_labels):
        result = check(pipeline)
        assert result.verdict is Verdict.PASS, result.message
        assert _agrees(result)


def test_the_valid_configurations_pass_both(sample):
    """They train differently on the same data: nothing here may change (tests/zoo/valid.py)."""
    for name, build in VALID.items():
        pipeline = build(TrainConfig(), sample)
        verdicts = [check(pipeline).verdict for check in (duplicates_and_leakage, conflicting_labels)]
        assert verdicts == [Verdict.PASS, Verdict.PASS], name


@pytest.mark.slow
def test_clean_colour_digits_pass_both(tmp_path):
    write_colour_digits(tmp_path)
    pipeline = _pipeline(load_data("cifar10", tmp_path, download=False))
    for check in (duplicates_and_leakage, conflicting_labels):
        result = check(pipeline)
        assert result.verdict is Verdict.PASS, result.message


def test_synthetic_shapes_differing_only_in_colour_are_not_copies(tmp_path):
    """Classes c and c + 5 are the same shapes in warm and cool colours: copies keep their colours, so no
    label conflict. The set does hold a few true near-twins (same shape, size and place, similar colours,
    a pixel apart): at most a WARN, never a FAIL."""
    write_cifar10(tmp_path)
    pipeline = _pipeline(load_data("cifar10", tmp_path, download=False))
    assert conflicting_labels(pipeline).verdict is Verdict.PASS
    result = duplicates_and_leakage(pipeline)
    assert result.verdict in (Verdict.PASS, Verdict.WARN) and _agrees(result), result.message


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Fashion-MNIST not installed")
@pytest.mark.slow
def test_clean_fashion_mnist_passes_despite_its_look_alikes():
    """Fashion-MNIST holds natural near-twins (plain T-shirts, bags, the same item in two colours):
    about 0.25% of its test images have one in train at the threshold, under the 0.5% limit."""
    pipeline = _pipeline(load_data("fashion-mnist", "/usr/share/datasets/fashion-mnist", download=False))
    leak, labels = duplicates_and_leakage(pipeline), conflicting_labels(pipeline)
    assert leak.verdict in (Verdict.PASS, Verdict.WARN) and 0 < leak.value < leak.threshold, leak.message
    assert labels.verdict is Verdict.PASS, labels.message


# ---------------------------------------------------------------- held-out copies in train

@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.slow
def test_near_copies_of_one_percent_of_test_in_train_fail(sample, change):
    part = _share(sample.test, 0.01)
    planted = _into(sample, "train", CHANGES[change](sample.test.images[part]), sample.test.labels[part])
    result = duplicates_and_leakage(_pipeline(planted))
    assert result.verdict is Verdict.FAIL, result.message
    assert "test images leaked into train" in result.message and _agrees(result)
    assert result.figures and len(result.figures[0].data["captions"]) >= 2  # the matched pairs are shown


def test_near_copies_of_val_in_train_fail(sample):
    part = _share(sample.val, 0.05)
    planted = _into(sample, "train", jpeg(sample.val.images[part]), sample.val.labels[part])
    result = duplicates_and_leakage(_pipeline(planted))
    assert result.verdict is Verdict.FAIL and "val images leaked into train" in result.message, result.message


@pytest.mark.parametrize("change", ["exact", "shift 1 px", "brightness and contrast"])
def test_val_and_test_overlapping_fails(sample, change):
    part = _share(sample.val, 0.1)
    copies = sample.val.images[part] if change == "exact" else CHANGES[change](sample.val.images[part])
    test = Split(torch.cat([copies, sample.test.images[len(copies):]]),
                 torch.cat([sample.val.labels[part], sample.test.labels[len(copies):]]))
    result = duplicates_and_leakage(_pipeline(replace(sample, test=test)))
    assert result.verdict is Verdict.FAIL and "val and test overlap" in result.message, result.message


def test_exact_leak_below_the_near_copy_limit_still_fails(sample):
    """Byte-identical copies keep the stricter exact limit (0.1%), whatever the near-copy rate."""
    planted = _into(sample, "train", sample.test.images[:3], sample.test.labels[:3])
    result = duplicates_and_leakage(_pipeline(planted))
    assert result.verdict is Verdict.FAIL and result.threshold == 0.001 and _agrees(result), result.message


# ---------------------------------------------------------------- repeated within a split

@pytest.mark.parametrize("how", ["exact, 3 times", "shifted"])
def test_images_repeated_within_train_warn(sample, how):
    part = _share(sample.train, 0.1)
    images, labels = sample.train.images[part], sample.train.labels[part]
    if how == "shifted":
        planted = _into(sample, "train", shifted(images, 0, 1), labels)
    else:
        planted = _into(sample, "train", images.repeat(3, 1, 1, 1), labels.repeat(3))
    result = duplicates_and_leakage(_pipeline(planted))
    assert result.verdict is Verdict.WARN and "elsewhere in train" in result.message, result.message
    assert _agrees(result)


def test_repeated_test_images_warn(sample):
    part = _share(sample.test, 0.05)
    planted = _into(sample, "test", sample.test.images[part], sample.test.labels[part])
    result = duplicates_and_leakage(_pipeline(planted))
    assert result.verdict is Verdict.WARN and "elsewhere in test" in result.message, result.message


# ---------------------------------------------------------------- one image, two labels

def _relabelled(labels: torch.Tensor) -> torch.Tensor:
    return (labels + 1) % 10


@pytest.mark.parametrize("change", ["exact", "shift 1 px", "JPEG q75"])
def test_train_copies_with_another_label_fail(sample, change):
    part = _share(sample.train, 0.03)
    images = sample.train.images[part]
    copies = images if change == "exact" else CHANGES[change](images)
    planted = _into(sample, "train", copies, _relabelled(sample.train.labels[part]))
    result = conflicting_labels(_pipeline(planted))
    assert result.verdict is Verdict.FAIL and "conflicting labels" in result.message, result.message
    assert _agrees(result) and result.figures


def test_test_copies_in_train_with_another_label_fail_both(sample):
    part = _share(sample.test, 0.05)
    planted = _into(sample, "train", sample.test.images[part], _relabelled(sample.test.labels[part]))
    pipeline = _pipeline(planted)
    assert duplicates_and_leakage(pipeline).verdict is Verdict.FAIL
    result = conflicting_labels(pipeline)
    assert result.verdict is Verdict.FAIL and "test" in result.message, result.message


def test_a_few_identical_images_with_two_labels_warn(sample):
    planted = _into(sample, "train", sample.train.images[:2], _relabelled(sample.train.labels[:2]))
    result = conflicting_labels(_pipeline(planted))
    assert result.verdict is Verdict.WARN and "byte-identical" in result.message and _agrees(result), result.message


def test_copies_with_the_same_label_are_not_conflicts(sample):
    part = _share(sample.train, 0.1)
    planted = _into(sample, "train", shifted(sample.train.images[part]), sample.train.labels[part])
    assert conflicting_labels(_pipeline(planted)).verdict is Verdict.PASS


# ---------------------------------------------------------------- any shape, any dtype

@pytest.mark.slow
def test_colour_test_images_shifted_into_train_fail(tmp_path):
    write_colour_digits(tmp_path)
    data = load_data("cifar10", tmp_path, download=False)
    part = _share(data.test, 0.02)
    planted = _into(data, "train", shifted(data.test.images[part], 1, -1), data.test.labels[part])
    result = duplicates_and_leakage(_pipeline(planted))
    assert result.verdict is Verdict.FAIL and "test images leaked" in result.message, result.message
    assert result.figures[0].data["images"].shape[1] == 3  # shown in colour


def test_float_images_with_a_declared_range_are_searched_too(sample):
    as_float = lambda s: Split(s.images.float() / 255, s.labels)
    data = replace(sample, train=as_float(sample.train), val=as_float(sample.val), test=as_float(sample.test),
                   value_range=(0.0, 1.0))
    part = _share(data.test, 0.02)
    planted = _into(data, "train", brightened(sample.test.images[part]).float() / 255, data.test.labels[part])
    assert duplicates_and_leakage(_pipeline(planted)).verdict is Verdict.FAIL


def test_large_colour_images_are_pooled_and_still_matched():
    """3x64x64 shapes: judged at 32x32, where a 2-px shift is a 1-px one."""
    splits = {}
    for name, (per_class, seed) in {"train": (40, 0), "val": (6, 1), "test": (12, 2)}.items():
        images, labels = class_images(per_class, 10, seed, size=64)
        splits[name] = Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long())
    data = DataBundle(splits["train"], splits["val"], splits["test"], tuple(map(str, range(10))), "shapes64", "test")
    assert duplicates_and_leakage(_pipeline(data)).verdict is Verdict.PASS
    planted = _into(data, "train", shifted(data.test.images[:6], 2, 2), data.test.labels[:6])
    assert duplicates_and_leakage(_pipeline(planted)).verdict is Verdict.FAIL


def test_the_search_scores_a_shifted_copy_1_and_a_different_image_lower(sample):
    """The index on its own: each shifted copy is found with similarity ~1, and never matched to the
    wrong image; unrelated images of the same class stay below the copy threshold."""
    images = sample.test.images[:200]
    copies = small(shifted(images, -2, 1))
    hasher, thumbs = Hasher.fit(small(images))
    index = Index.build(hasher, thumbs)
    best, match = nearest_copies(index, Queries.build(hasher, copies), torch.zeros(len(images), dtype=torch.long), 1)
    assert torch.equal(match[:, 0], torch.arange(len(images)))
    assert best.min() > 0.9999
    others = Index.build(hasher, interiors(small(sample.train.images[:500]), hasher.margin)[:, 0])
    unrelated, _ = nearest_copies(others, Queries.build(hasher, copies), torch.zeros(500, dtype=torch.long), 1)
    assert unrelated.max() < 0.99
