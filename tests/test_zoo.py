"""The bug zoo: every planted bug FAILs the checks it names, with a message naming the cause, and the
clean pipelines FAIL nothing, on the grey `sample` digits and on the 3x32x32 colour digits."""
from __future__ import annotations

import pytest
import torch

from checks import run_all
from checks.engine.result import Verdict
from checks.engine.runner import run_check
from checks.engine.registry import CHECKS
from tests.conftest import needs_system_package
from tests.seeds import EVIDENCE_SEEDS
from tests.test_verdicts import assert_rows_agree
from tests.zoo.catalogue import (CLEAN, COLOUR_DIGITS, DATA_SETS, ZOO, clean_pipelines, detection_rate, run_zoo,
                                  zoo_data)
from recipe.config import TrainConfig
from recipe.data import load_data
from recipe.errors import DataError
from recipe.pipeline import default_pipeline

SEEDS = EVIDENCE_SEEDS  # 0..4 with RECIPE_ALL_SEEDS=1 (tests/seeds.py)
KINDS = ("linear", "mlp", "cnn")
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def sample():
    return load_data("sample", download=False)


@pytest.fixture(scope="module")
def clean(sample):
    return default_pipeline(TrainConfig(), sample)


@pytest.fixture(scope="module")
def colour_digits():
    return zoo_data(COLOUR_DIGITS)


@pytest.fixture(scope="module")
def clean_colour(colour_digits):
    return default_pipeline(TrainConfig(), colour_digits)


@pytest.fixture(scope="module")
def fashion():
    try:
        return load_data("fashion-mnist", download=False)
    except DataError as err:
        needs_system_package(f"full Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {err}")


def _failures(results) -> str:
    return "\n".join(f"{r.name}: {r.verdict.value}: {r.message}" for r in results if r.verdict.blocks)


def test_the_zoo_is_big_enough_and_declares_at_least_90_percent_caught():
    assert len(ZOO) >= 20
    assert len({bug.name for bug in ZOO}) == len(ZOO)
    assert sum(bool(bug.must_fail) for bug in ZOO) / len(ZOO) >= 0.9
    for bug in ZOO:
        assert bug.description and bug.why, bug.name
        assert set(bug.on_data) <= set(DATA_SETS), f"{bug.name}: expectations for unknown data sets"
        for data_set in DATA_SETS:
            expected = bug.on(data_set)
            assert expected.why, (bug.name, data_set)
            assert bool(expected.must_fail) == bool(expected.cause_words), \
                f"{bug.name} on {data_set}: cause words go with expected FAILs"


def assert_fails_its_checks_and_names_the_cause(bug, clean) -> None:
    bug = bug.on(clean.data.source)
    pipeline = bug.plant(clean)
    results = [run_check(check, pipeline, stage) for stage, check in (CHECKS[name] for name in bug.must_fail)]
    not_failed = [f"{r.name}: {r.verdict.value}: {r.message}" for r in results if r.verdict is not Verdict.FAIL]
    assert not not_failed, f"{bug.name} ({bug.description}) was expected to FAIL:\n" + "\n".join(not_failed)
    messages = [r.message.lower() for r in results]
    assert any(word.lower() in message for word in bug.cause_words for message in messages), (
        f"{bug.name}: no failing message names the cause (one of {bug.cause_words}):\n" + "\n".join(messages))


@pytest.mark.parametrize("bug", [bug for bug in ZOO if bug.on("sample").must_fail], ids=lambda bug: bug.name)
def test_planted_bug_fails_its_checks_and_names_the_cause(bug, clean):
    assert_fails_its_checks_and_names_the_cause(bug, clean)


@slow  # ~1 s a bug: the colour digits have 4x the pixels
@pytest.mark.parametrize("bug", [bug for bug in ZOO if bug.on(COLOUR_DIGITS).must_fail], ids=lambda bug: bug.name)
def test_planted_bug_fails_its_checks_and_names_the_cause_on_colour_digits(bug, clean_colour):
    assert_fails_its_checks_and_names_the_cause(bug, clean_colour)


@pytest.mark.slow
def test_colour_digits_are_the_sample_digits_in_colour_read_as_cifar10(sample, colour_digits):
    """3x32x32 uint8 read through the cifar10 source, class names from its batches.meta, the sample's test
    digits in the same order; every image has one background colour and a brighter stroke in each channel."""
    assert colour_digits.train.images.shape[1:] == (3, 32, 32) and colour_digits.train.images.dtype == torch.uint8
    assert colour_digits.class_names == sample.class_names and "CIFAR-10" in colour_digits.reason
    assert len(colour_digits.train) + len(colour_digits.val) == len(sample.train) + len(sample.val)
    assert torch.equal(colour_digits.test.labels, sample.test.labels)
    grey = torch.nn.functional.pad(sample.test.images[:50, 0], (2, 2, 2, 2))  # (50, 32, 32)
    colour = colour_digits.test.images[:50].long()
    background = colour[:, :, 0, 0]  # (50, 3): the padded corner
    stroke = colour.permute(0, 2, 3, 1)[grey == 255]  # pixels where the digit is fully inked
    assert torch.equal(colour.permute(0, 2, 3, 1)[grey == 0], background.repeat_interleave((grey == 0).sum((1, 2)), 0))
    inked_image = torch.nonzero(grey == 255)[:, 0]
    assert (stroke > background[inked_image]).all()
    assert len({tuple(c) for c in background.tolist()}) > 40  # random per image


@pytest.mark.parametrize("bug", [bug for bug in ZOO if not bug.must_fail], ids=lambda bug: bug.name)
def test_uncaught_bug_is_really_planted(bug, clean):
    """A bug the harness cannot see must still change what the pipeline trains on."""
    planted = bug.plant(clean)
    same_labels = torch.equal(planted.data.train.labels, clean.data.train.labels)
    same_images = torch.equal(planted.data.train.images, clean.data.train.images)
    assert not (same_labels and same_images), f"{bug.name} plants nothing"


def assert_clean_pipeline_fails_nothing(data, kind: str, seed: int) -> None:
    pipeline = clean_pipelines(TrainConfig(seed=seed), data)[f"{CLEAN}:{kind}"]
    torch.manual_seed(seed)
    results = run_all(pipeline, gate=False)
    assert not any(r.verdict.blocks for r in results), _failures(results)


@pytest.mark.parametrize("kind, seed", [pytest.param(kind, seed, marks=[slow] if kind == "cnn" and seed > 0 else [])
                                        for kind in KINDS for seed in SEEDS])
@pytest.mark.slow
def test_clean_pipeline_fails_no_check_on_sample(sample, kind, seed):
    assert_clean_pipeline_fails_nothing(sample, kind, seed)


@pytest.mark.parametrize("kind, seed", [pytest.param(kind, seed, marks=[slow] if kind == "cnn" or seed > 0 else [])
                                        for kind in KINDS for seed in SEEDS])
@pytest.mark.slow
def test_clean_pipeline_fails_no_check_on_colour_digits(colour_digits, kind, seed):
    assert_clean_pipeline_fails_nothing(colour_digits, kind, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_clean_pipeline_fails_no_check_on_fashion_mnist(fashion, kind, seed):
    assert_clean_pipeline_fails_nothing(fashion, kind, seed)


@pytest.mark.slow
def test_detection_matrix_catches_every_declared_bug(sample):
    rows = run_zoo(sample, seed=0)
    caught, total = detection_rate(rows)
    assert caught / total >= 0.9
    assert [row.name for row in rows if row.missed] == []
    assert_rows_agree(rows)  # and every number shown agrees with its verdict (tests/test_verdicts.py's rule)


def _row(name, bug, verdicts):
    from checks.engine.result import CheckResult
    from tests.zoo.catalogue import ZooRow
    return ZooRow(name, bug, {check: CheckResult(check, "skeleton", Verdict(v), None, None, "", f"{check} says {v}")
                              for check, v in verdicts.items()})


def test_matrix_reports_rate_misses_false_alarms_and_uncaught_bugs():
    from tests.zoo.catalogue import Bug, render_markdown, render_text

    caught = Bug("caught_bug", "planted A.", lambda p: p, ("a",), ("says",), "a sees it")
    missed = Bug("missed_bug", "planted B.", lambda p: p, ("b",), ("says",), "b should see it")
    unseen = Bug("unseen_bug", "planted C.", lambda p: p, (), (), "nothing can see C")
    rows = [_row("clean:linear", None, {"a": "PASS", "b": "FAIL"}),
            _row("caught_bug", caught, {"a": "FAIL", "b": "PASS"}),
            _row("missed_bug", missed, {"a": "PASS", "b": "WARN"}),
            _row("unseen_bug", unseen, {"a": "PASS", "b": "PASS"})]
    assert detection_rate(rows) == (1, 3)
    text = render_text(rows)
    assert "detection rate: 1/3" in text
    assert "FALSE ALARM on clean:linear: b: b says FAIL" in text
    assert "missed_bug: expected b to FAIL, got WARN" not in text  # no FAIL at all: listed as not caught
    assert "not caught: missed_bug: planted B. Why: b should see it" in text
    assert "not caught: unseen_bug: planted C. Why: nothing can see C" in text
    caught_line = next(line for line in text.splitlines() if line.startswith("caught_bug"))
    assert caught_line.split()[1:] == ["F*", "P", "caught"]
    markdown = render_markdown(rows)
    assert markdown.splitlines()[0] == "| pipeline | `a` | `b` | verdict |"
    assert "| `missed_bug` | P | W* | MISSED b |" in markdown
