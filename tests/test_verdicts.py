"""Verdict semantics (issue 13): a result's value, comparison and threshold agree with its verdict,
and N/A is a verdict of its own (does not apply: never blocks, never reads as PASS or SKIP)."""
from __future__ import annotations

from pathlib import Path

import pytest

import checks
from checks.skeleton.augmentation_checks import augmentation_consistency
from checks.report.render import SYMBOLS, render_html
from checks.report.record import build_record, environment_info
from checks.engine.result import CheckResult, Verdict, holds, measured, worst
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline
from tests.zoo.catalogue import CODES, ZOO, run_zoo

# Bugs whose results exercise the checks with several criteria (input_normalisation, batch_sampling,
# training_loss_decreases, overfit_one_batch, gradient_flow, loss_at_init), for the quick run.
QUICK = ("inputs_not_normalised", "inputs_normalised_twice", "norm_stats_from_test", "class_missing_from_train",
         "never_shuffled", "same_batch_every_time", "lr_100x_too_high", "negated_loss", "mse_on_class_indices",
         "loss_clamped", "frozen_weights", "view_mixes_batch", "no_zero_grad", "horizontal_flip")


def disagreements(results) -> list[str]:
    """Results whose shown number contradicts their verdict; PASS/WARN/FAIL without a number."""
    wrong = []
    for r in results:
        if r.verdict in (Verdict.ERROR, Verdict.SKIP, Verdict.NA):
            if r.verdict.blocks is False and r.value is not None:
                wrong.append(f"{r.name}: {r.verdict.value} shows a value {r.value}")
            continue
        if not r.comparison or r.value is None or r.threshold is None:
            wrong.append(f"{r.name}: {r.verdict.value} without a value, comparison and threshold")
        elif holds(r.value, r.comparison, r.threshold) == r.verdict.blocks:
            wrong.append(f"{r.name}: {r.verdict.value} but {r.value:.4g} {r.comparison} {r.threshold:.4g} "
                         f"{'holds' if r.verdict.blocks else 'fails'}: {r.message[:120]}")
    return wrong


def assert_rows_agree(rows) -> None:
    wrong = [f"{row.name}: {line}" for row in rows for line in disagreements(row.results.values())]
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_the_quick_zoo_shows_numbers_that_agree_with_every_verdict(sample_data):
    rows = run_zoo(sample_data, seed=0, bugs=tuple(bug for bug in ZOO if bug.name in QUICK), clean=("linear",))
    assert len(rows) == len(QUICK) + 1
    assert_rows_agree(rows)
    verdicts = {r.verdict for row in rows for r in row.results.values()}
    assert {Verdict.PASS, Verdict.FAIL, Verdict.NA} <= verdicts  # the rule was tested on each kind


# The whole zoo's numbers are held to the same rule in tests/test_zoo.py's detection matrix, on the
# one run of the zoo that test makes (running it a second time here cost ~2 min of CI).


@pytest.mark.parametrize("value, verdict", [(0.01, Verdict.PASS), (0.3, Verdict.WARN), (3.0, Verdict.FAIL)])
def test_measured_grades_with_a_soft_limit_and_always_shows_the_blocking_one(value, verdict):
    result = measured("x", "data", value, 1.0, "<=", "ok", "fail", warn_threshold=0.1, warn_message="warn")
    assert result.verdict is verdict and result.threshold == 1.0
    assert result.message == {Verdict.PASS: "ok", Verdict.WARN: "warn", Verdict.FAIL: "fail"}[verdict]
    assert result.details["warn_threshold"] == 0.1
    assert not disagreements([result])


def test_na_is_its_own_non_blocking_verdict_below_warn():
    assert Verdict("N/A") is Verdict.NA and not Verdict.NA.blocks
    assert Verdict.NA.severity < Verdict.WARN.severity and Verdict.NA.severity < Verdict.SKIP.severity
    assert worst([Verdict.PASS, Verdict.NA]) is Verdict.PASS  # a check that does not apply is no PASS lost
    assert worst([Verdict.NA, Verdict.WARN]) is Verdict.WARN
    assert set(CODES) == {v.value for v in Verdict} and set(SYMBOLS) == {v.value for v in Verdict}


def test_augmentation_off_is_na_not_pass(sample_data):
    result = augmentation_consistency(default_pipeline(TrainConfig(), sample_data))
    assert result.verdict is Verdict.NA and result.value is None
    assert "augmentation is off" in result.message


def test_the_page_shows_na_with_a_valid_css_class(sample_data):
    results = [CheckResult("integrity", "data", Verdict.PASS, 0.0, 0.0, "==", "fine"),
               CheckResult("augmentation_consistency", "skeleton", Verdict.NA, None, None, "", "augmentation is off")]
    pipeline = default_pipeline(TrainConfig(), sample_data)
    record = build_record(results, pipeline_name="linear", pipeline_spec="recipe.pipeline:default_pipeline",
                          data=pipeline.data, config=pipeline.config, environment=environment_info("cpu", 0),
                          timings={"data_load_s": 0.1, "checks_s": 0.2, "total_s": 0.5})
    assert record["overall"] == "PASS"
    page = render_html(record, {})
    assert 'class="badge v-NA"' in page and "v-N/A" not in page
    assert "1 N/A" in page and "augmentation is off" in page


@pytest.mark.slow
def test_pytest_checks_reports_na_as_a_skip_with_its_reason(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(str(Path(checks.__file__).parent), "-p", "no:cacheprovider", "--data",
                                           "sample", "--no-download", "--report-dir", str(pytester.path / "reports"),
                                           "-rs", "-k", "augmentation_consistency")
    result.assert_outcomes(skipped=1)
    assert "N/A: augmentation is off" in result.stdout.str()
