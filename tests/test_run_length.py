"""run_length: a configured run with fewer steps than the baselines needed FAILs (too few epochs,
batches too large, a loader whose batches are larger than the config says), the valid
configurations do not, and the check reads the baselines' measurements instead of training again."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import pytest

from checks.baselines.overfit_checks import overfit_one_batch
from checks.baselines.plan_checks import half_way_step, run_length
from checks.measure.reference_run import reference_run
from checks.engine.result import Verdict
from checks.engine.runner import run_all
from recipe.config import TrainConfig
from recipe.data import Batch, TensorBatches
from recipe.pipeline import default_pipeline, mlp_pipeline
from tests.test_verdicts import disagreements
from tests.zoo.bugs import (lr_far_too_low)
from tests.zoo.family_bugs import (one_epoch_of_huge_batches)
from tests.zoo.valid import VALID

@pytest.fixture(scope="module")
def colour_linear():
    """The clean linear pipeline on the 3x32x32 colour digits."""
    from tests.zoo.catalogue import zoo_data

    return default_pipeline(TrainConfig(), zoo_data("colour-digits"))


SHORT = {"one epoch, batch 512": TrainConfig(epochs=1, batch_size=512),
         "three epochs, batch 512": TrainConfig(epochs=3, batch_size=512),
         "one epoch, batch 256": TrainConfig(epochs=1, batch_size=256),
         "two epochs, batch 1024": TrainConfig(epochs=2, batch_size=1024)}


@pytest.mark.parametrize("build", [default_pipeline, mlp_pipeline], ids=["linear", "mlp"])
@pytest.mark.parametrize("name", list(SHORT))
@pytest.mark.slow
def test_a_run_too_short_for_what_the_baselines_needed_fails(sample_data, build, name):
    pipeline = build(SHORT[name], sample_data)
    result = run_length(pipeline)
    assert result.verdict is Verdict.FAIL, result.message
    assert result.value == SHORT[name].epochs * pipeline.steps_per_epoch
    assert "too short" in result.message and "epochs" in result.message
    assert not disagreements([result])


@pytest.mark.slow
def test_the_zoo_twin_fails_on_grey_and_colour_images(linear, colour_linear):
    for pipeline in (linear, colour_linear):
        result = run_length(one_epoch_of_huge_batches(pipeline))
        assert result.verdict is Verdict.FAIL, result.message
        assert result.value <= 9


@pytest.mark.slow
def test_the_steps_count_the_batches_the_loader_really_yields(sample_data):
    """A hand-written loader with its own batch size (1024) where the config says 64."""
    pipeline = default_pipeline(TrainConfig(epochs=2), sample_data)
    own = TensorBatches(sample_data, pipeline.norm, 1024, None)

    def batches(split: str, **kwargs) -> Iterator[Batch]:
        return own(split, **kwargs)
    result = run_length(replace(pipeline, batches=batches))
    assert result.details["batch_size"] == 1024 and result.details["config_batch_size"] == 64
    assert result.value == 2 * 4 and result.verdict is Verdict.FAIL, result.message


@pytest.mark.parametrize("name", ["batch_512", "linear_batch_512", "gradient_accumulation", "warmup_cosine",
                                  "adamw_onecycle", "label_smoothing"])
@pytest.mark.slow
def test_valid_configurations_do_not_fail(sample_data, name):
    result = run_length(VALID[name](TrainConfig(), sample_data))
    assert result.verdict is Verdict.PASS, result.message
    assert not disagreements([result])


def test_the_clean_pipelines_plan_several_times_what_they_need(linear, mlp):
    for pipeline in (linear, mlp):
        result = run_length(pipeline)
        assert result.verdict is Verdict.PASS and result.value >= 5 * result.threshold, result.message


def test_a_pipeline_that_cannot_memorise_a_batch_has_no_measured_need(linear):
    result = run_length(lr_far_too_low(linear))
    assert result.verdict is Verdict.NA, result.message


def test_it_reads_the_baselines_measurements_instead_of_training_again(sample_data):
    calls = []
    pipeline = default_pipeline(TrainConfig(), sample_data)

    def counting_step(model, optimizer, loss_fn, x, y):
        calls.append(len(y))
        return pipeline.train_step(model, optimizer, loss_fn, x, y)
    counted = replace(pipeline, train_step=counting_step)
    results = {r.name: r for r in run_all(counted, only={"overfit_one_batch", "training_loss_decreases"})}
    before = len(calls)
    again = run_length(counted)
    assert len(calls) == before > 0  # no step was taken for run_length
    assert again.details["steps_to_memorise_a_batch"] == results["overfit_one_batch"].details["steps"]
    assert overfit_one_batch(counted) is not overfit_one_batch(counted)  # each caller gets its own copy
    assert again.details["reference_steps"] == reference_run(counted).steps


def test_half_way_step():
    assert half_way_step([2.0] * 10 + [1.0] * 30, window=10) == 15  # the trailing mean crosses 1.5 at step 15
    assert half_way_step([1.0] * 40, window=10) is None  # no fall, no need measured
    assert half_way_step([1.0, float("nan")] * 20, window=10) is None


@pytest.mark.slow
def test_one_epoch_of_a_language_model_is_judged_by_its_loss_not_by_memorising_a_batch():
    """names, the tiny GPT: one epoch of 65 batches passes (its loss is half way down by step ~40; memorising 16
    names took ~150 steps, which a language model needs no more than a table does); 5 batches of 1024 still FAIL."""
    from recipe.all_sources import load_source
    from recipe.sequences import gpt_pipeline

    data = load_source("names")
    one_epoch = run_length(gpt_pipeline(TrainConfig(epochs=1), data))
    assert one_epoch.verdict is Verdict.PASS, one_epoch.message
    assert one_epoch.details["steps_to_memorise_a_batch"] > one_epoch.value  # the old floor would have failed it
    assert "overfit_one_batch" not in one_epoch.message
    huge_batches = run_length(gpt_pipeline(TrainConfig(epochs=1, batch_size=1024), data))
    assert huge_batches.verdict is Verdict.FAIL and "too short" in huge_batches.message
