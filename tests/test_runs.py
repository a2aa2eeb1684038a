"""Run folders are all or nothing: hidden until their report is complete, `latest` moved only then, and
a Ctrl-C at any point leaves a complete run (keeping what finished) or nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from checks.engine.gate import find_preflight
from checks.engine.registry import CHECKS
from checks.cli.main import main
from recipe.errors import RecipeError
from recipe.runs import LATEST, finish_before_ctrl_c, resume_folder, run_dirs, run_folder
from tests.conftest import interrupt_and_wait, interruptible_cli, subprocess_env

SAMPLE = ["--data", "sample", "--no-download"]


def _complete(folder: Path, fingerprint: str = "f00d") -> None:
    """What a finished report leaves: results.json (a complete preflight) and index.html."""
    record = {"fingerprint": fingerprint, "overall": "PASS",
              "checks": [{"name": name, "stage": "data", "verdict": "PASS"} for name in CHECKS]}
    (folder / "results.json").write_text(json.dumps(record))
    (folder / "index.html").write_text("<html></html>")


def _visible(report_dir: Path) -> list[str]:
    return sorted(p.name for p in report_dir.iterdir())


def test_a_run_is_hidden_until_its_report_is_complete_then_becomes_latest(tmp_path):
    with run_folder(tmp_path) as first:
        _complete(first.path)
    with run_folder(tmp_path) as run:
        assert run.path.name.startswith(".") and run.path.name.endswith(".partial")
        _complete(run.path)
        assert not run.final.exists()
        assert (tmp_path / LATEST).resolve() == first.final.resolve()  # not moved yet
        assert run_dirs(tmp_path) == [first.final]
    assert run.final.is_dir() and not run.path.name.endswith(".partial")
    assert (tmp_path / LATEST).resolve() == run.final.resolve()
    assert _visible(tmp_path) == sorted([first.final.name, run.final.name, LATEST])


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_run_that_ends_without_a_report_leaves_nothing(tmp_path, error):
    with run_folder(tmp_path) as before:
        _complete(before.path)
    with pytest.raises(error):
        with run_folder(tmp_path) as run:
            (run.path / "checkpoint.pt").write_bytes(b"half a run")
            raise error
    assert _visible(tmp_path) == sorted([before.final.name, LATEST])
    assert (tmp_path / LATEST).resolve() == before.final.resolve()


def test_a_run_interrupted_after_its_report_was_written_is_kept(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with run_folder(tmp_path) as run:
            _complete(run.path)
            raise KeyboardInterrupt
    assert (run.final / "results.json").is_file() and (tmp_path / LATEST).resolve() == run.final.resolve()


def test_the_gate_never_reads_a_run_still_being_written(tmp_path):
    partial = tmp_path / ".20990101T000000.000000Z.partial"
    partial.mkdir()
    _complete(partial, fingerprint="wanted")
    assert find_preflight(tmp_path, "wanted") is None
    with run_folder(tmp_path) as run:
        _complete(run.path, fingerprint="wanted")
    assert find_preflight(tmp_path, "wanted").run_dir == run.final


def test_ctrl_c_while_a_report_is_written_finishes_it_then_stops():
    before, steps = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt):
        with finish_before_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("still writing after the first Ctrl-C")
    assert steps == ["still writing after the first Ctrl-C"]
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
        with finish_before_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("never reached")
    assert steps == ["still writing after the first Ctrl-C"]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_resume_without_a_checkpoint_names_the_runs_that_have_one(tmp_path):
    with pytest.raises(RecipeError, match="no earlier run in .*and no run in .* has one"):
        resume_folder(tmp_path, None, "checkpoint.pt")
    with run_folder(tmp_path) as trained:
        _complete(trained.path)
        (trained.path / "checkpoint.pt").write_bytes(b"weights")
    with run_folder(tmp_path) as checked:  # the newest run, `latest`, is a check without a checkpoint
        _complete(checked.path)
    with pytest.raises(RecipeError) as caught:
        resume_folder(tmp_path, None, "checkpoint.pt")
    message = str(caught.value)
    assert f"no checkpoint.pt in {checked.final}" in message
    assert f"runs with a checkpoint: {trained.final}" in message and "--resume --out" in message
    assert resume_folder(tmp_path, trained.final, "checkpoint.pt") == trained.final


def test_resume_error_from_the_command_is_one_line(tmp_path, capsys):
    with run_folder(tmp_path) as trained:
        _complete(trained.path)
        (trained.path / "checkpoint.pt").write_bytes(b"weights")
    with run_folder(tmp_path) as checked:
        _complete(checked.path)
    assert main(["train", *SAMPLE, "--resume", "--report-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(trained.final) in err


def test_out_that_already_holds_a_run_is_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text("{}")
    started = time.perf_counter()
    assert main(["train", *SAMPLE, "--out", str(taken), "--report-dir", str(tmp_path / "r")]) == 2
    assert "already exists and is not an empty folder; pass --resume" in capsys.readouterr().err
    assert time.perf_counter() - started < 5  # refused before the data load and the checks
    assert (taken / "results.json").read_text() == "{}"


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(interruptible_cli(args), cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, child: subprocess.Popen, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert child.poll() is None, f"child exited before {what}: {child.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.02)


@pytest.mark.slow  # a real preflight in a child process, then training until interrupted
def test_ctrl_c_during_training_of_recipe_run_keeps_the_preflight_and_the_checkpoint(tmp_path):
    reports = tmp_path / "reports"
    child = _start(["run", *SAMPLE, "--quiet", "--epochs", "100000", "--schedule", "constant",
                    "--report-dir", str(reports)], tmp_path)
    try:
        _wait_for(lambda: any(reports.glob(".*.partial/checkpoint.pt")), child, "checkpoint")
        assert run_dirs(reports) == [] and not (reports / LATEST).exists()  # training: nothing visible yet
        out, err = interrupt_and_wait(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    [run] = run_dirs(reports)
    assert not list(reports.glob(".*")) and (reports / LATEST).resolve() == run.resolve()
    record = json.loads((run / "results.json").read_text())
    assert {c["name"] for c in record["checks"]} == set(CHECKS) and record["preflight"]["complete"]
    assert record["training"]["stopped"].startswith("interrupted")
    assert (run / "checkpoint.pt").is_file() and (run / "index.html").is_file()


@pytest.mark.slow  # a real preflight in a child process, interrupted after a few checks
def test_ctrl_c_during_the_checks_keeps_the_finished_ones_as_a_partial_preflight(tmp_path):
    reports = tmp_path / "reports"
    child = _start(["check", *SAMPLE, "--report-dir", str(reports)], tmp_path)
    lines = []
    try:
        while len(lines) < 3:  # progress lines, one per finished check (stderr is a pipe, not a terminal)
            line = child.stderr.readline()
            assert line, f"child ended early: {lines}"
            if line.startswith("["):
                lines.append(line)
        out, err = interrupt_and_wait(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    [run] = run_dirs(reports)
    record = json.loads((run / "results.json").read_text())
    assert 3 <= record["preflight"]["checks_run"] < len(CHECKS) and not record["preflight"]["complete"]
    assert f"recipe: interrupted after {record['preflight']['checks_run']} of {len(CHECKS)} checks" in err
    assert "partial: " in (run / "index.html").read_text()
    assert find_preflight(reports, record["fingerprint"]) is None  # a partial preflight never opens the gate
