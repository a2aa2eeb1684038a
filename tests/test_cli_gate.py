"""`recipe check | train | run | report` as a user chains them: the gate, --force, and re-rendering."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from checks.cli.main import main

UNNORMALISED = textwrap.dedent("""
    import dataclasses
    from recipe.data import Batch
    from recipe.pipeline import default_pipeline

    def build(config, data):
        clean = default_pipeline(config, data)

        def batches(split, **options):  # raw 0..255 pixels reach the model
            for batch in clean.batches(split, **options):
                yield Batch(batch.x * clean.norm.std * 255 + clean.norm.mean * 255, batch.y, batch.idx)

        return dataclasses.replace(clean, batches=batches)
""")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "unnormalised.py").write_text(UNNORMALISED)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def recipe(*args: str) -> int:
    return main([*args, "--data", "sample", "--no-download", "--quiet", "--epochs", "1"])


def latest(workdir: Path) -> dict:
    return json.loads((workdir / "reports" / "latest" / "results.json").read_text())


@pytest.mark.slow
def test_failed_preflight_blocks_training_until_forced(workdir: Path, capsys):
    bad = ["--pipeline", "unnormalised.py:build"]
    assert recipe("check", *bad) == 1
    checked = latest(workdir)
    assert checked["overall"] == "FAIL" and checked["training"] is None

    assert recipe("train", *bad) == 1
    assert "the preflight FAILED, so training will not start" in capsys.readouterr().err
    assert not (workdir / "reports" / "latest" / "checkpoint.pt").exists()

    assert recipe("train", *bad, "--force") == 1  # trained, but the checks did fail
    forced = latest(workdir)
    assert forced["forced"] is True and forced["training"]["test_accuracy"] > 0.5
    assert forced["fingerprint"] == checked["fingerprint"]
    assert "FORCED" in (workdir / "reports" / "latest" / "index.html").read_text()


@pytest.mark.slow
def test_train_reuses_a_passing_preflight_with_the_same_fingerprint(workdir: Path, capsys):
    assert recipe("check") == 0
    checked = latest(workdir)
    capsys.readouterr()
    assert main(["train", "--data", "sample", "--no-download", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "preflight: using" in err and "running it first" not in err
    trained = latest(workdir)
    assert trained["fingerprint"] == checked["fingerprint"]
    assert [c["name"] for c in trained["checks"]] == [c["name"] for c in checked["checks"]]

    assert main(["train", "--data", "sample", "--no-download", "--epochs", "1", "--lr", "0.01"]) == 0
    assert "the config changed since the preflight" in capsys.readouterr().err  # another config, another preflight


@pytest.mark.slow
def test_report_rerenders_without_rerunning(workdir: Path, capsys):
    assert recipe("run") == 0
    run_dir = (workdir / "reports" / "latest").resolve()
    (run_dir / "index.html").unlink()
    before = (run_dir / "results.json").read_text()
    assert main(["report"]) == 0
    assert (run_dir / "index.html").is_file()
    assert (run_dir / "results.json").read_text() == before


def test_report_before_any_run_says_what_makes_one(tmp_path, capsys):
    """Not the flags of `train --resume` (--out), which `recipe report` does not take."""
    assert main(["report", "--report-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no earlier run in" in err and "recipe check" in err and "--out" not in err
