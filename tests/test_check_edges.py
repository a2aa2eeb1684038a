"""The check runner and the checks on inputs users really produce: crashes, NaN data, wrong outputs."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from checks.data import data_checks
from checks.skeleton import skeleton_checks
from checks.data.label_checks import label_agreement, label_noise
from checks.engine.result import Verdict
from checks.engine.runner import iter_results, run_check
from recipe.config import TrainConfig
from recipe.data import Split
from recipe.pipeline import default_pipeline


@pytest.fixture(scope="module")
def clean(sample_data):
    return default_pipeline(TrainConfig(), sample_data)


def test_a_crashing_check_becomes_error_with_its_exception(clean):
    def explodes(pipeline):
        raise ValueError("bad on purpose")

    result = run_check(explodes, clean, "data")
    assert result.verdict is Verdict.ERROR
    assert "ValueError: bad on purpose" in result.message
    assert result.duration_s >= 0


def test_a_failing_stage_skips_the_later_stages_unless_ungated(clean):
    def fails(pipeline):
        return data_checks.CheckResult("fails", "data", Verdict.FAIL, 1.0, 0.0, "==", "planted")

    stages = {"data": [fails, data_checks.integrity], "skeleton": [skeleton_checks.output_sanity]}
    gated = list(iter_results(clean, checks_by_stage=stages))
    assert [r.verdict for r in gated] == [Verdict.FAIL, Verdict.PASS, Verdict.SKIP]
    assert gated[-1].message == "blocked by data"
    assert list(iter_results(clean, checks_by_stage=stages, gate=False))[-1].verdict is Verdict.PASS


def test_nan_pixels_are_a_data_fail_not_a_crash(clean):
    images = clean.data.train.images.float()
    images[0, ..., 3, 3] = float("nan")  # one channel: (N, 1, H, W) or (N, H, W) alike
    images[1, ..., 0, 0] = float("inf")
    broken = replace(clean, data=replace(clean.data, train=Split(images, clean.data.train.labels)))
    result = data_checks.integrity(broken)
    assert result.verdict is Verdict.FAIL
    assert "2 NaN/Inf pixel values" in result.message


def test_labels_out_of_range_are_a_data_fail(clean):
    labels = clean.data.val.labels.clone()
    labels[:3] = 10
    broken = replace(clean, data=replace(clean.data, val=Split(clean.data.val.images, labels)))
    result = data_checks.integrity(broken)
    assert result.verdict is Verdict.FAIL
    assert "3 labels outside [0, 10)" in result.message


class WrongWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


class IntegerOutput(WrongWidth):
    def forward(self, x):
        return super().forward(x).argmax(1, keepdim=True).expand(-1, 10)


@pytest.mark.parametrize("model, words", [(WrongWidth, "shape (64, 5), expected [B, C] = [64, 10]"),
                                          (IntegerOutput, "dtype torch.int64")])
def test_wrong_model_output_is_named(clean, model, words):
    result = skeleton_checks.output_sanity(replace(clean, make_model=model))
    assert result.verdict is Verdict.FAIL
    assert words in result.message


def test_sorted_val_split_fails_class_balance(clean):
    order = torch.argsort(clean.data.train.labels)[-len(clean.data.val):]  # val cut from the sorted tail
    skewed = replace(clean, data=replace(clean.data, val=Split(clean.data.train.images[order],
                                                                clean.data.train.labels[order])))
    assert data_checks.class_balance(clean).verdict is Verdict.PASS
    result = data_checks.class_balance(skewed)
    assert result.verdict is Verdict.FAIL
    assert "not representative" in result.message


def test_label_agreement_does_not_apply_when_the_splits_are_too_small(clean):
    tiny = replace(clean.data, train=Split(clean.data.train.images[:60], clean.data.train.labels[:60]))
    result = label_agreement(replace(clean, data=tiny))
    assert result.verdict is Verdict.NA  # does not apply; SKIP means blocked by an earlier stage
    assert "too few examples" in result.message


def test_label_agreement_scores_only_images_the_probe_has_not_seen(clean):
    """Val copied into train (with its labels) must not flatter the val + test side of the comparison."""
    data = clean.data
    leaked = Split(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
    result = label_agreement(replace(clean, data=replace(data, train=leaked)))
    honest = label_agreement(clean)
    assert result.details["val_test_scored"] < honest.details["val_test_scored"]
    assert result.verdict is Verdict.PASS


def test_label_noise_does_not_apply_when_train_is_too_small_to_fit_its_probe(clean):
    """60 train images for 10 classes: no probe to read noise from (it needs 15 a class)."""
    tiny = replace(clean.data, train=Split(clean.data.train.images[:60], clean.data.train.labels[:60]))
    result = label_noise(replace(clean, data=tiny))
    assert result.verdict is Verdict.NA  # does not apply; SKIP means blocked by an earlier stage
    assert "too few examples" in result.message


@pytest.mark.parametrize("shift", [1, 10, -1])
def test_labels_out_of_range_are_integritys_finding_not_a_crash_in_target_leak(clean, shift):
    import dataclasses

    from checks.data import data_checks
    from recipe.data import Batch

    def batches(split, **options):  # 1-based labels, or far out of range: the loader's bug
        for batch in clean.batches(split, **options):
            yield Batch(batch.x, batch.y + shift, batch.idx)

    broken = dataclasses.replace(clean, batches=batches)
    result = data_checks.target_leak(broken)
    assert result.verdict in (Verdict.PASS, Verdict.NA)
