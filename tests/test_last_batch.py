"""A last train batch that only a full epoch reaches, and crashes in the pipeline's own code.

wine's 142 train rows in batches of 7 leave a last batch of 1 row. A BatchNorm MLP trains on every full
batch and raises on that one ("Expected more than 1 value per channel"), so training would crash at the end
of its first epoch, while fit_dry_run's few batches never reached it. fit_dry_run now steps on the last batch
too and FAILs naming it; other checks that meet the crash say it is the pipeline's code, not the check.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from torch import nn

from checks.engine.result import Verdict
from checks.engine.runner import run_check
from checks.skeleton.loop_checks import fit_dry_run
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.features import TABLE_DEFAULTS
from recipe.pipeline import default_pipeline


class NormMLP(nn.Module):  # a forward of the user's own: the line a crash is traced to
    def __init__(self, features: int, classes: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(features, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.layers(x)


def wine(batch_size: int, batchnorm: bool = True):
    data = load_source("wine")
    pipeline = default_pipeline(TrainConfig(**{**TABLE_DEFAULTS, "batch_size": batch_size}), data)
    if batchnorm:
        features = data.train.images.shape[1]
        pipeline = replace(pipeline, make_model=lambda: NormMLP(features, data.num_classes))
    return pipeline


def test_the_wine_split_leaves_one_row_for_a_batch_of_seven():
    assert len(load_source("wine").train) % 7 == 1  # the premise of the tests below


def test_a_batchnorm_model_that_crashes_on_the_last_batch_of_one_fails_the_dry_run():
    result = fit_dry_run(wine(7))
    assert result.verdict is Verdict.FAIL, result.message
    assert "last train batch, 1 example" in result.message and "drop_last=True" in result.message
    assert "BatchNorm cannot train on 1 example" in result.message


@pytest.mark.parametrize("batch_size, batchnorm", [(8, True), (7, False), (16, True)])
def test_a_last_batch_the_model_trains_on_passes(batch_size, batchnorm):
    result = fit_dry_run(wine(batch_size, batchnorm))
    assert result.verdict is Verdict.PASS, result.message


def test_a_check_that_meets_the_crash_names_the_pipelines_line_not_a_crashed_check():
    from checks.skeleton.skeleton_checks import determinism

    result = run_check(determinism, wine(7), "skeleton")
    assert result.verdict is Verdict.ERROR
    assert result.message.startswith("raised in the pipeline's own code, at test_last_batch.py:")
    assert "the check crashed" not in result.message and "fit_dry_run" in result.message


def test_a_crash_inside_the_harness_alone_still_says_the_check_crashed(sample_data):
    import functools

    from checks.measure import step_budget

    def broken(pipeline):  # a check written here: this file is the user's code to the runner
        return {}["missing"]

    harness_crash = functools.partial(step_budget.flops, object())  # a TypeError raised in checks/ alone
    harness_crash.__name__ = "harness_crash"
    pipeline = default_pipeline(TrainConfig(), sample_data)
    assert run_check(broken, pipeline, "skeleton").message.startswith("raised in the pipeline's own code, at")
    assert run_check(harness_crash, pipeline, "skeleton").message.startswith("the check crashed: TypeError")


def loop_pipeline(drop_last: bool):
    """The same BatchNorm MLP and wine rows through the user's own DataLoaders, batch 7."""
    from torch.utils.data import DataLoader, TensorDataset

    from checks.integrations.loop import pipeline_from_loop

    import torch

    data = load_source("wine")
    features = data.train.images.shape[1]
    train = DataLoader(TensorDataset(data.train.images, data.train.labels), batch_size=7, shuffle=True,
                       drop_last=drop_last)
    val = DataLoader(TensorDataset(data.val.images, data.val.labels), batch_size=7)
    return pipeline_from_loop(lambda: NormMLP(features, data.num_classes),
                              lambda params: torch.optim.Adam(params, lr=1e-3), nn.functional.cross_entropy,
                              train, val)


def test_a_loader_that_drops_its_last_batch_is_trained_without_it_and_passes():
    kept, dropped = loop_pipeline(drop_last=False), loop_pipeline(drop_last=True)
    assert fit_dry_run(kept).verdict is Verdict.FAIL  # the user's loader yields the batch of 1: training crashes
    result = fit_dry_run(dropped)
    assert result.verdict is Verdict.PASS, result.message
    sizes = [len(batch.y) for batch in dropped.batches("train", shuffle=True)]
    assert set(sizes) == {7} and len(sizes) == len(load_source("wine").train) // 7  # what the loader yields


def test_an_epoch_counts_the_batches_the_train_loader_yields():
    """A OneCycleLR or a warm-up sized from steps_per_epoch must see the epoch's real length: one step
    fewer when the loader drops its last, smaller batch, as the loader's own len() says."""
    kept, dropped = loop_pipeline(drop_last=False), loop_pipeline(drop_last=True)
    rows = len(load_source("wine").train)
    assert rows % 7  # a last, smaller batch exists to drop
    assert kept.steps_per_epoch == len(list(kept.batches("train", shuffle=True))) == -(-rows // 7)
    assert dropped.steps_per_epoch == len(list(dropped.batches("train", shuffle=True))) == rows // 7


def test_a_loader_that_drops_its_only_batch_says_so():
    from torch.utils.data import DataLoader, TensorDataset

    import torch

    from checks.integrations.loop import pipeline_from_loop
    from recipe.errors import RecipeError
    from recipe.train import fit

    data = load_source("wine")
    train = DataLoader(TensorDataset(data.train.images, data.train.labels), batch_size=len(data.train) + 1,
                       drop_last=True)
    val = DataLoader(TensorDataset(data.val.images, data.val.labels), batch_size=7)
    pipeline = pipeline_from_loop(lambda: NormMLP(data.train.images.shape[1], data.num_classes),
                                  lambda params: torch.optim.Adam(params, lr=1e-3), nn.functional.cross_entropy,
                                  train, val)
    with pytest.raises(RecipeError, match=r"drop_last=True and fewer examples \(\d+\) than one batch"):
        fit(pipeline, quiet=True)
