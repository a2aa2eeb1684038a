"""`recipe diff RUN_A RUN_B`: flipped verdicts (exit 1 when one got worse), values moved beyond noise,
accuracy and time, and what differs between the runs."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from checks.report.diff import compare, format_diff, moved
from checks.cli.main import main

LABELS_OFF_BY_ONE = textwrap.dedent("""
    import dataclasses
    from recipe.data import Batch
    from recipe.pipeline import default_pipeline

    def build(config, data):
        clean = default_pipeline(config, data)

        def batches(split, **options):  # the bug: a hand-written collate pairs image i with label i - 1
            for batch in clean.batches(split, **options):
                yield Batch(batch.x, batch.y.roll(1), batch.idx)

        return dataclasses.replace(clean, batches=batches)
""")


@pytest.mark.parametrize("a, b, threshold, expected", [
    (1.0, 1.05, None, False),    # 5%: noise
    (1.0, 1.2, None, True),      # 20%
    (0.0, 0.0002, 0.05, False),  # 100% of a value near zero, but 0.4% of the threshold: noise
    (0.0, 0.002, 0.05, True),    # 4% of the threshold
    (2.30, 2.31, 0.05, False),   # loss at init: well inside 10%
    (None, 0.5, None, True),     # a value appeared
    (0.5, "NaN", None, True),    # it became NaN
    (None, None, None, False),
])
def test_a_value_moves_only_beyond_run_to_run_noise(a, b, threshold, expected):
    assert moved(a, b, threshold) is expected


def _record(verdicts: dict[str, str], test_accuracy=None, ci=None, **more) -> dict:
    return {"overall": "PASS", "created_utc": "t", "pipeline": {"name": "linear", "spec": "s"},
            "data": {"source": "sample", "sizes": {"train": 1}}, "config": {"lr": 0.001},
            "checks": [{"name": n, "stage": "data", "verdict": v, "value": 1.0, "threshold": 2.0}
                       for n, v in verdicts.items()],
            "training": None if test_accuracy is None else {"test_accuracy": test_accuracy, "test_ci95": ci},
            "timings": {"total_s": 4.0}, **more}


def test_compare_sorts_flips_into_worse_and_better_and_na_is_neither(tmp_path):
    a = _record({"x": "PASS", "y": "FAIL", "z": "N/A", "w": "PASS", "old": "PASS"}, 0.90, [0.88, 0.92])
    b = _record({"x": "FAIL", "y": "PASS", "z": "PASS", "w": "WARN", "new": "PASS"}, 0.80, [0.77, 0.83],
                config={"lr": 0.01})
    diff = compare(a, b, tmp_path / "a", tmp_path / "b")
    assert [r["name"] for r in diff.worse] == ["x", "w"] and [r["name"] for r in diff.better] == ["y"]
    assert diff.got_worse and diff.only_a == ["old"] and diff.only_b == ["new"]
    [test] = [r for r in diff.accuracy if r["what"] == "test accuracy"]
    assert not test["overlap"]
    text = format_diff(diff, a, b)
    assert "config: lr 0.001 -> 0.01" in text and "-10.0 points  (95% intervals apart)" in text
    assert not compare(b, b, tmp_path, tmp_path).got_worse


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, sample_raw):
    """A clean `recipe check` and one with labels off by one in the batches, in one report dir."""
    from recipe import sources

    workdir = tmp_path_factory.mktemp("diff")
    (workdir / "off_by_one.py").write_text(LABELS_OFF_BY_ONE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
        patch.chdir(workdir)
        common = ["check", "--data", "sample", "--no-download", "--quiet", "--no-gate"]
        assert main(common) == 0
        clean = (workdir / "reports" / "latest").resolve()
        assert main([*common, "--pipeline", "off_by_one.py:build"]) == 1
        buggy = (workdir / "reports" / "latest").resolve()
    return workdir, clean, buggy


@pytest.mark.slow
def test_diff_names_the_check_that_flipped_and_exits_1(two_runs, capsys, monkeypatch):
    workdir, clean, buggy = two_runs
    monkeypatch.chdir(workdir)
    assert main(["diff", str(clean), str(buggy)]) == 1
    out = capsys.readouterr().out
    worse = out.split("verdicts that got worse:", 1)[1].split("verdicts that got better:", 1)[0]
    assert "skeleton/label_pairing" in worse and "PASS -> FAIL" in worse
    assert "pipeline recipe.pipeline:default_pipeline -> off_by_one.py:build" in out
    assert out.rstrip().endswith("got worse")
    assert main(["diff", str(buggy), str(clean)]) == 0  # the fix: only better
    back = capsys.readouterr().out
    assert "label_pairing" in back.split("verdicts that got better:", 1)[1]
    assert back.rstrip().endswith("result: no verdict got worse")


def test_diff_takes_run_names_and_defaults_b_to_latest(two_runs, capsys, monkeypatch):
    workdir, clean, buggy = two_runs
    monkeypatch.chdir(workdir)
    assert main(["diff", clean.name, "--quiet"]) == 1  # B = latest = the buggy run
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("result: ") and out.rstrip().endswith("verdict(s) got worse")


def test_diff_of_a_run_with_itself_is_clean(two_runs, capsys):
    _, clean, _ = two_runs
    assert main(["diff", str(clean), str(clean)]) == 0
    out = capsys.readouterr().out
    assert "verdicts that got worse: 0" in out and "moved beyond noise" in out and ": 0\n" in out


@pytest.mark.parametrize("args, message", [
    (["no-such-run"], "no run folder 'no-such-run'"),
    (["{clean}", "{clean}", "--noise", "2"], "--noise must be between 0 and 1"),
])
def test_diff_usage_errors_exit_2(two_runs, capsys, args, message):
    _, clean, _ = two_runs
    argv = ["diff", *[a.format(clean=clean) for a in args], "--report-dir", str(clean.parent)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recipe: error: ") and message in err and err.count("\n") == 1


def test_diff_refuses_a_folder_without_results(tmp_path, two_runs, capsys):
    _, clean, _ = two_runs
    (tmp_path / "empty").mkdir()
    assert main(["diff", str(clean), str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err
    json.loads((clean / "results.json").read_text())  # untouched


@pytest.mark.slow
def test_the_report_compares_with_the_previous_run_of_the_same_pipeline(tmp_path, sample_raw, monkeypatch):
    """The user edits their pipeline file and checks again: the new page says what got worse since."""
    from recipe import sources

    monkeypatch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.py"
    mine.write_text("from recipe.pipeline import default_pipeline as build\n")
    common = ["check", "--data", "sample", "--no-download", "--quiet", "--no-gate", "--pipeline", "mine.py:build"]
    assert main(common) == 0
    first = (tmp_path / "reports" / "latest").resolve()
    assert "compared_with" not in json.loads((first / "results.json").read_text())  # nothing to compare with
    mine.write_text(LABELS_OFF_BY_ONE)
    assert main(common) == 1
    second = (tmp_path / "reports" / "latest").resolve()
    block = json.loads((second / "results.json").read_text())["compared_with"]
    assert Path(block["run_dir"]).resolve() == first and "code" in " ".join(block["differs"])
    assert "label_pairing" in [r["name"] for r in block["worse"]]
    html = (second / "index.html").read_text()
    compared = html.split('<section id="compared">', 1)[1].split("</section>", 1)[0]
    assert "got worse since then" in compared and '<a href="#label_pairing">' in compared
    assert f'href="../{first.name}/index.html"' in compared
