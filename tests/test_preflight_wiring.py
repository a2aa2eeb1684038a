"""The pytest wiring of `checks/`, driven through real pytest runs (pytester, in a subprocess)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import checks
from checks.engine.registry import CHECKS_BY_STAGE

CHECKS_DIR = str(Path(checks.__file__).parent)

UNNORMALISED = textwrap.dedent("""
    import dataclasses
    from recipe.data import Batch
    from recipe.pipeline import default_pipeline

    def build(config, data):
        clean = default_pipeline(config, data)

        def batches(split, **options):  # the bug: raw 0..255 pixels reach the model
            for batch in clean.batches(split, **options):
                yield Batch(batch.x * clean.norm.std * 255 + clean.norm.mean * 255, batch.y, batch.idx)

        return dataclasses.replace(clean, batches=batches)
""")

LOSS_RAISES = textwrap.dedent("""
    import dataclasses
    from recipe.pipeline import default_pipeline

    def build(config, data):
        def loss_fn(logits, y):
            raise RuntimeError("loss exploded on purpose")
        return dataclasses.replace(default_pipeline(config, data), loss_fn=loss_fn)
""")

MLP = textwrap.dedent("""
    from recipe.pipeline import mlp_pipeline as build
""")

NOT_A_PIPELINE = textwrap.dedent("""
    def build(config, data):
        return {"model": None}
""")


def preflight(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(CHECKS_DIR, "-p", "no:cacheprovider", "--data", "sample", "--no-download",
                                         "--report-dir", str(pytester.path / "reports"), "-rsf", *args)


def latest_results(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())


@pytest.mark.slow
def test_failing_stage_blocks_later_stages(pytester: pytest.Pytester):
    pytester.makepyfile(unnormalised=UNNORMALISED)
    result = preflight(pytester, "--pipeline", "unnormalised.py:build")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*FAIL input_normalisation: inputs look un-normalized (max 255.0)*"])
    result.stdout.fnmatch_lines(["*blocked by data*"])
    verdicts = {c["name"]: (c["stage"], c["verdict"]) for c in latest_results(pytester)["checks"]}
    assert verdicts["input_normalisation"] == ("data", "FAIL")
    later = [v for stage, v in verdicts.values() if stage != "data"]
    assert later and all(v == "SKIP" for v in later)


@pytest.mark.slow
def test_no_gate_runs_later_stages(pytester: pytest.Pytester):
    pytester.makepyfile(unnormalised=UNNORMALISED)
    result = preflight(pytester, "--pipeline", "unnormalised.py:build", "--no-gate", "-m", "data or skeleton")
    verdicts = [c["verdict"] for c in latest_results(pytester)["checks"] if c["stage"] == "skeleton"]
    assert verdicts and "SKIP" not in verdicts
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def image_checks_of(stage: str) -> int:
    """How many of a stage's checks apply to images (the others are N/A: a skip under pytest)."""
    from checks.engine.kinds import kinds_of
    return sum("image" in kinds_of(check) for check in CHECKS_BY_STAGE[stage])


@pytest.mark.slow
def test_stage_marker_selects_one_stage(pytester: pytest.Pytester):
    result = preflight(pytester, "-m", "data", "--no-report")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == image_checks_of("data") and "failed" not in outcomes
    assert outcomes.get("passed") + outcomes.get("skipped", 0) == len(CHECKS_BY_STAGE["data"])
    assert outcomes.get("deselected", 0) > 0
    assert not (pytester.path / "reports").exists()


@pytest.mark.slow
def test_user_pipeline_module_is_loaded(pytester: pytest.Pytester):
    pytester.makepyfile(my_mlp=MLP)
    result = preflight(pytester, "--pipeline", "my_mlp:build", "-m", "skeleton",
                       "--junitxml", str(pytester.path / "junit.xml"))
    assert result.ret == pytest.ExitCode.OK
    record = latest_results(pytester)
    assert record["pipeline"]["name"] == "mlp"
    assert record["pipeline"]["spec"] == "my_mlp:build"
    assert 'name="test_check[gradient_flow]"' in (pytester.path / "junit.xml").read_text()


@pytest.mark.parametrize("spec, expected", [
    ("no_such_module:build", "no module named 'no_such_module'"),
    ("bad_pipeline:nothing", "has no attribute 'nothing'"),
    ("bad_pipeline:build", "returned dict, expected recipe.pipeline.Pipeline"),
    ("no-colon", "must look like 'package.module:factory'"),
])
@pytest.mark.slow
def test_bad_pipeline_is_a_clear_usage_error(pytester: pytest.Pytester, spec: str, expected: str):
    pytester.makepyfile(bad_pipeline=NOT_A_PIPELINE)
    result = preflight(pytester, "--pipeline", spec)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{expected}*"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.slow
def test_crashing_check_becomes_error_and_report_is_still_written(pytester: pytest.Pytester):
    pytester.makepyfile(loss_raises=LOSS_RAISES)
    result = preflight(pytester, "--pipeline", "loss_raises.py:build", "--no-gate")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    checks_by_name = {c["name"]: c for c in latest_results(pytester)["checks"]}
    assert checks_by_name["loss_at_init"]["verdict"] == "ERROR"
    assert "RuntimeError: loss exploded on purpose" in checks_by_name["loss_at_init"]["message"]
    assert checks_by_name["integrity"]["verdict"] == "PASS"  # the others still ran
    assert (pytester.path / "reports" / "latest" / "index.html").is_file()
