"""Feature vectors (N, D) as a first-class kind: scikit-learn's tables load, split and standardise from
train only; the checks that apply to tables pass on them, the image-only ones say N/A and why, and each
bad twin (a bug planted in a clean table pipeline) fails the check built to catch it."""
from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache

import pytest
import torch

from checks.cli.main import main
from checks.data import data_checks, label_checks, split_checks
from checks.engine.kinds import kinds_of
from checks.engine.registry import CHECKS
from checks.engine.result import Verdict
from checks.engine.runner import iter_results, run_check
from recipe.config import TrainConfig
from recipe.all_sources import load_source
from recipe.data import Batch, DataBundle, NormStats, Split
from recipe.datasets import bundle_from_datasets
from recipe.errors import DataError, RecipeError
from recipe.features import FEATURE_SOURCES, TABLE_DEFAULTS, FeatureBatches, feature_bundle, feature_stats
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline

TABLE_CONFIG = TrainConfig(**TABLE_DEFAULTS)  # what `recipe run --data wine` trains with
IMAGE_ONLY = sorted(name for name, (_, check) in CHECKS.items()
                    if "image" in kinds_of(check) and "features" not in kinds_of(check))


@lru_cache(maxsize=None)
def table(source: str) -> DataBundle:
    return load_source(source)


def with_train(data: DataBundle, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               **splits: Split) -> DataBundle:
    """`data` with its train split (or any split) replaced: a twin with one thing changed."""
    train = Split(data.train.images if images is None else images, data.train.labels if labels is None else labels)
    return replace(data, train=splits.get("train", train), val=splits.get("val", data.val),
                   test=splits.get("test", data.test))


def verdict(check, pipeline: Pipeline) -> Verdict:
    return run_check(check, pipeline, "data").verdict


# ---------------------------------------------------------------- data

@pytest.mark.parametrize("source", FEATURE_SOURCES)
def test_a_table_loads_as_stratified_float_rows(source):
    data = table(source)
    assert data.kind == "features" and data.examples == "feature vectors (D,)"
    width = data.train.images.shape[1]
    shares = []
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.float32 and split.images.shape[1:] == (width,)
        shares.append(torch.bincount(split.labels, minlength=data.num_classes) / len(split))
    assert len(data.train) > len(data.test) > 0 and len(data.val) > 0
    assert max((s - shares[0]).abs().max().item() for s in shares) < 0.05  # every split has train's class mix
    again = load_source(source)
    assert torch.equal(again.test.images, data.test.images)  # the split does not move between loads


def test_the_pipeline_standardises_each_feature_with_train_stats_only():
    data = table("breast-cancer")
    pipeline = default_pipeline(TABLE_CONFIG, data)
    train = data.train.images.double()
    assert torch.allclose(pipeline.norm.mean.flatten().double(), train.mean(0), rtol=1e-5)
    assert not torch.allclose(pipeline.norm.mean.flatten().double(),
                              torch.cat([train, data.test.images.double()]).mean(0), rtol=1e-5)
    x = torch.cat([b.x for b in pipeline.batches("train")])
    assert x.shape == data.train.images.shape
    assert x.mean(0).abs().max() < 1e-4 and (x.std(0) - 1).abs().max() < 1e-3


def test_tables_refuse_image_augmentation_and_image_shaped_rows():
    with pytest.raises(RecipeError, match="feature vectors take --augment none"):
        default_pipeline(TrainConfig(augment="shift-rotate"), table("wine"))
    with pytest.raises(DataError, match=r"\(N, D\)"):
        feature_bundle(Split(torch.zeros(4, 1, 2, 2), torch.arange(4)), table("wine").val, table("wine").test,
                       ("a",), source="x", reason="y")


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_a_dataset_of_float_vectors_becomes_a_features_bundle_and_token_ids_get_a_clear_line():
    data = table("wine")
    bundle = bundle_from_datasets(Rows(data.train.images, data.train.labels), Rows(data.test.images, data.test.labels))
    assert bundle.kind == "features" and bundle.train.images.shape[1] == 13
    assert len(bundle.train) + len(bundle.val) == len(data.train)
    assert torch.equal(bundle.test.images, data.test.images)
    ids = torch.randint(0, 50, (30, 8))
    with pytest.raises(DataError, match="bundle_from_token_ids"):
        bundle_from_datasets(Rows(ids, torch.zeros(30)), Rows(ids, torch.zeros(30)))


# ---------------------------------------------------------------- checks

def test_every_image_only_check_says_not_applicable_and_why():
    pipeline = default_pipeline(TABLE_CONFIG, table("wine"))
    assert {"split_shift", "what_goes_into_the_net", "augmentation_consistency"} <= set(IMAGE_ONLY)
    for name in IMAGE_ONLY:
        stage, check = CHECKS[name]
        result = run_check(check, pipeline, stage)
        assert result.verdict is Verdict.NA, name
        assert "images" in result.message and "feature vectors (D,)" in result.message, name


@pytest.mark.slow  # 3 tables x 2 pipelines x 2 seeds, the whole preflight, ~1-3 s each
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("build", [default_pipeline, mlp_pipeline], ids=["linear", "mlp"])
@pytest.mark.parametrize("source", FEATURE_SOURCES)
def test_clean_tables_fail_no_check_in_the_whole_preflight(source, build, seed):
    pipeline = build(replace(TABLE_CONFIG, seed=seed), table(source))
    torch.manual_seed(0)
    results = list(iter_results(pipeline, gate=False))
    blocking = [f"{r.name} {r.verdict.value}: {r.message}" for r in results if r.verdict.blocks or
                r.verdict is Verdict.ERROR]
    assert blocking == [], "\n".join(blocking)
    ran = {r.name for r in results if r.verdict in (Verdict.PASS, Verdict.WARN)}
    assert {"integrity", "label_signal", "overfit_one_batch", "run_length", "label_pairing"} <= ran


def test_labels_permuted_apart_from_the_rows_fail_label_signal():
    data = table("breast-cancer")
    clean = default_pipeline(TABLE_CONFIG, data)
    shuffled = data.train.labels[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))]
    twin = default_pipeline(TABLE_CONFIG, with_train(data, labels=shuffled))
    assert verdict(label_checks.label_signal, clean) is Verdict.PASS
    assert verdict(label_checks.label_signal, twin) is Verdict.FAIL


def test_test_rows_copied_into_train_fail_duplicates_and_leakage():
    data = table("wine")
    leaked = Split(torch.cat([data.train.images, data.test.images[:10]]),
                   torch.cat([data.train.labels, data.test.labels[:10]]))
    assert verdict(split_checks.duplicates_and_leakage, default_pipeline(TABLE_CONFIG, data)) is Verdict.PASS
    twin = default_pipeline(TABLE_CONFIG, with_train(data, train=leaked))
    result = run_check(split_checks.duplicates_and_leakage, twin, "data")
    assert result.verdict is Verdict.FAIL and "test rows leaked into train" in result.message
    assert [f.kind for f in result.figures] == ["text"]  # rows listed, not drawn as images


@pytest.mark.parametrize("name", ["wine", "iris"])
def test_the_data_checks_speak_of_rows_on_a_table(name):
    """They were written for images; on a table there is no image, picture or pixel shift to speak of."""
    pipeline = default_pipeline(TABLE_CONFIG, table(name))
    for check in (split_checks.duplicates_and_leakage, split_checks.conflicting_labels, label_checks.label_signal,
                  label_checks.label_agreement, label_checks.label_noise):
        message = run_check(check, pipeline, "data").message
        assert not any(word in message.lower() for word in ("image", "picture", " px")), (check.__name__, message)


def test_a_column_that_is_the_label_fails_target_leak():
    data = table("wine")

    def plus_label_column(split: Split) -> Split:
        return Split(torch.cat([split.images, split.labels[:, None].float()], 1), split.labels)
    twin = replace(data, train=plus_label_column(data.train), val=plus_label_column(data.val),
                   test=plus_label_column(data.test))
    assert verdict(data_checks.target_leak, default_pipeline(TABLE_CONFIG, data)) is Verdict.PASS
    result = run_check(data_checks.target_leak, default_pipeline(TABLE_CONFIG, twin), "data")
    assert result.verdict is Verdict.FAIL and "feature 13" in result.message


def test_iris_petal_length_is_a_strong_feature_not_a_leak():
    """94% of petal length's variance is explained by the species: real, and below the table limit."""
    result = run_check(data_checks.target_leak, default_pipeline(TABLE_CONFIG, table("iris")), "data")
    assert result.verdict is Verdict.PASS and 0.9 < result.value < 0.99


def _with_stats(pipeline: Pipeline, stats) -> Pipeline:
    return replace(pipeline, norm=stats, batches=FeatureBatches(pipeline.data, stats, TABLE_CONFIG.batch_size))


def test_stats_from_the_test_split_fail_normalisation_stats_source():
    clean = default_pipeline(TABLE_CONFIG, table("breast-cancer"))
    twin = _with_stats(clean, feature_stats(clean.data.test))
    assert verdict(data_checks.normalisation_stats_source, clean) is Verdict.PASS
    result = run_check(data_checks.normalisation_stats_source, twin, "data")
    assert result.verdict is Verdict.FAIL and "test" in result.message


def test_raw_unstandardised_features_fail_input_normalisation():
    clean = default_pipeline(TABLE_CONFIG, table("breast-cancer"))
    width = clean.data.train.images.shape[1]
    identity = NormStats.of(torch.zeros(width), torch.ones(width), value_range=(0.0, 1.0))
    assert verdict(data_checks.input_normalisation, clean) is Verdict.PASS
    assert verdict(data_checks.input_normalisation, _with_stats(clean, identity)) is Verdict.FAIL  # area ~ 2500


def test_a_loader_that_feeds_constant_rows_fails():
    clean = default_pipeline(TABLE_CONFIG, table("wine"))

    def constant(split, **kw):
        for batch in clean.batches(split, **kw):
            yield Batch(torch.zeros_like(batch.x), batch.y, batch.idx)
    twin = replace(clean, batches=constant)
    for name in ("input_normalisation", "label_pairing"):
        stage, check = CHECKS[name]
        assert run_check(check, clean, stage).verdict is Verdict.PASS, name
        assert run_check(check, twin, stage).verdict is Verdict.FAIL, name


# ---------------------------------------------------------------- the command line

@pytest.mark.slow  # the preflight, 30 epochs of wine and the report: ~25 s
def test_recipe_run_data_wine_passes_and_writes_a_report(tmp_path, capsys):
    assert main(["run", "--data", "wine", "--report-dir", str(tmp_path), "--quiet"]) == 0
    run = tmp_path / "latest"
    results = json.loads((run / "results.json").read_text())
    html = (run / "index.html").read_text()
    assert "could not draw" not in html
    assert results["overall"] in ("PASS", "WARN") and results["preflight"]["complete"]
    assert results["config"]["lr"] == TABLE_DEFAULTS["lr"]  # the table defaults, the options left unset
    assert main(["check", "--data", "wine", "--lr", "0.001", "--epochs", "10", "--batch-size", "64",
                 "--report-dir", str(tmp_path / "given"), "--quiet"]) == 1  # given options win: 20 steps is too short
