"""A FAIL must be evidence: on clean data that is hard the ways real photos are (tests/hard_clean.py),
no data check FAILs; on each data set's bad twins, the check that owns the fault still FAILs, or, where
the probe is too weak to see it, says so instead of passing in silence."""
from __future__ import annotations

import functools
import re

import pytest
import torch

from checks.engine.registry import CHECKS_BY_STAGE
from checks.engine.result import Verdict
from checks.engine.runner import run_check
from recipe.config import TrainConfig
from recipe.data import load_data
from recipe.pipeline import default_pipeline
from tests.seeds import EVIDENCE_SEEDS
from tests.hard_clean import BAD_TWINS, HARD_CLEAN
from tests.zoo.bugs import noisy_labels_everywhere
from tests.zoo.catalogue import CLEAN, clean_pipelines

SEEDS = EVIDENCE_SEEDS  # 0..4 with RECIPE_ALL_SEEDS=1 (tests/seeds.py)
KINDS = ("linear", "mlp", "cnn")
# the check that owns each twin's fault, and the words its message must name it with
CAUGHT_BY = {"labels-permuted": ("label_signal", "shuffled"), "labels-flipped-20%": ("label_agreement", "corrupted"),
             "label-map-crossed": ("label_agreement", "label map"), "test-leaked": ("duplicates_and_leakage", "leaked")}
# where the probe is too weak to see a fifth of train labels flipped (it misses ~65% of clean faint
# digits): label_noise must say it cannot tell rather than pass it in silence
TOO_HARD_TO_SEE_FLIPS = {"faint-digits"}


@functools.lru_cache(maxsize=None)
def hard_data(name: str, seed: int = 0):
    return HARD_CLEAN[name](seed)


def data_stage(pipeline) -> dict:
    torch.manual_seed(pipeline.config.seed)
    return {r.name: r for r in (run_check(check, pipeline, "data") for check in CHECKS_BY_STAGE["data"])}


def _failures(results: dict) -> str:
    return "\n".join(f"{r.name}: {r.message}" for r in results.values() if r.verdict.blocks)


def assert_clean(name: str, seed: int, kind: str) -> None:
    data = hard_data(name, seed)
    results = data_stage(clean_pipelines(TrainConfig(seed=seed), data)[f"{CLEAN}:{kind}"])
    assert not _failures(results), f"clean {name} (seed {seed}, {kind}) FAILed:\n{_failures(results)}"


def assert_twin_caught(name: str, twin: str) -> None:
    data = BAD_TWINS[twin](hard_data(name))
    results = data_stage(clean_pipelines(TrainConfig(), data)[f"{CLEAN}:linear"])
    check, words = CAUGHT_BY[twin]
    if twin == "labels-flipped-20%" and name in TOO_HARD_TO_SEE_FLIPS:
        noise = results["label_noise"]
        assert noise.verdict is Verdict.WARN and "too weak" in noise.message, noise.message
        return
    result = results[check]
    assert result.verdict is Verdict.FAIL, f"{twin} on {name}: {check} {result.verdict.value}: {result.message}"
    assert words in result.message.lower(), result.message


@pytest.mark.parametrize("name", list(HARD_CLEAN))
@pytest.mark.slow
def test_clean_hard_data_fails_no_data_check(name):
    assert_clean(name, 0, "linear")


@pytest.mark.parametrize("twin", list(BAD_TWINS))
@pytest.mark.slow
def test_bad_twins_of_the_shifted_digits_still_fail(twin):
    assert_twin_caught("shifted-digits", twin)


@pytest.mark.slow  # 7 data sets x 5 seeds x 3 pipelines, ~1 s each
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(HARD_CLEAN))
def test_clean_hard_data_fails_no_data_check_at_any_seed_with_any_model(name, seed, kind):
    assert_clean(name, seed, kind)


@pytest.mark.slow
@pytest.mark.parametrize("twin", list(BAD_TWINS))
@pytest.mark.parametrize("name", [name for name in HARD_CLEAN if name != "shifted-digits"])
def test_bad_twins_of_every_hard_data_set_still_fail(name, twin):
    assert_twin_caught(name, twin)


@pytest.mark.slow
def test_the_hard_data_is_hard_for_a_linear_probe_on_raw_pixels():
    """The matrix means something only if a linear model on the pixels misses many clean labels there."""
    data = hard_data("random-shapes")
    x = data.train.images.flatten(1).double() / 255
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    targets = torch.nn.functional.one_hot(data.train.labels, data.num_classes).double()
    weights = torch.linalg.solve(x.T @ x + torch.eye(x.shape[1], dtype=x.dtype), x.T @ targets)
    test = torch.cat([data.test.images.flatten(1).double() / 255, torch.ones(len(data.test), 1, dtype=x.dtype)], 1)
    assert ((test @ weights).argmax(1) != data.test.labels).double().mean() > 0.4


@pytest.mark.slow
def test_label_noise_says_it_cannot_tell_on_hard_data_with_labels_noisy_everywhere():
    """20% of every split's labels re-drawn on faint digits: the probe is too weak to tell that from the
    hard task, so label_noise WARNs and says so; on the sample digits, where it is strong, it FAILs."""
    weak = noisy_labels_everywhere(default_pipeline(TrainConfig(), hard_data("faint-digits")))
    result = data_stage(weak)["label_noise"]
    assert result.verdict is Verdict.WARN and "too weak" in result.message
    strong = noisy_labels_everywhere(default_pipeline(TrainConfig(), load_data("sample", download=False)))
    assert data_stage(strong)["label_noise"].verdict is Verdict.FAIL


@pytest.mark.parametrize("check", ["label_signal", "label_agreement", "label_noise"])
@pytest.mark.slow
def test_every_label_check_says_how_strong_its_evidence_is(check):
    result = data_stage(clean_pipelines(TrainConfig(), hard_data("random-shapes"))[f"{CLEAN}:linear"])[check]
    assert re.search(r"z = -?\d|standard errors", result.message), result.message


@pytest.mark.slow  # 7 data sets x 2 pipelines, the whole preflight, ~3 s each
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("name", list(HARD_CLEAN))
def test_clean_hard_data_fails_no_check_in_the_whole_preflight(name, kind):
    """Not only the data stage: the skeleton and the baselines (short training runs on a hard task) must not
    blame the code either. The gate is off so every stage runs."""
    from checks.engine.runner import iter_results

    pipeline = clean_pipelines(TrainConfig(seed=0), hard_data(name))[f"{CLEAN}:{kind}"]
    torch.manual_seed(0)
    blocking = [f"{r.name} {r.verdict.value}: {r.message}" for r in iter_results(pipeline, gate=False)
                if r.verdict.blocks]
    assert blocking == [], f"clean {name} ({kind}):\n" + "\n".join(blocking)
