"""`recipe train` end to end: output, artefacts, one-line errors, --debug, and Ctrl-C + --resume."""
from __future__ import annotations

import io
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import torch

from recipe import sources
from checks.cli.main import main
from recipe.train import CHECKPOINT_NAME, METRICS_NAME
from tests.conftest import PYTHON, interrupt_and_wait, interruptible_cli, subprocess_env

SAMPLE = ["--data", "sample", "--no-download"]
CONFIG = ["--schedule", "constant", "--seed", "3"]  # every train run here shares one preflight fingerprint


def _run_folder(stdout: str) -> Path:
    """The run folder named on the result line: '... test accuracy 0.xxxx; report: <run>/index.html'."""
    return Path(stdout.strip().splitlines()[-1].rsplit("report: ", 1)[1]).parent


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory, sample_raw):
    """`recipe train` in a fresh report dir: runs the preflight, then 2 epochs. The preflight it
    leaves behind is reused by every later train run in this module (same fingerprint)."""
    report_dir = tmp_path_factory.mktemp("reports")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
        code = main(["train", *SAMPLE, *CONFIG, "--epochs", "2", "--report-dir", str(report_dir)])
    return code, out.getvalue(), err.getvalue(), report_dir


def test_train_in_process(gated_run):
    code, out, err, report_dir = gated_run
    assert code == 0, err
    assert "data: sample (3500 train / 500 val / 1000 test)" in err
    assert "no complete preflight for this code, data, config and device yet: running it first" in err
    result = out.strip().splitlines()[-1]
    assert result.startswith("val accuracy 0.") and ", test accuracy 0." in result
    val_accuracy = float(result.split()[2].rstrip(","))
    assert val_accuracy > 0.8
    folder = _run_folder(out)
    assert folder.parent == report_dir and (folder / "index.html").is_file()
    metrics = pd.read_csv(folder / METRICS_NAME)
    assert list(metrics["epoch"]) == [1, 2]
    assert metrics["val_accuracy"].iloc[-1] == pytest.approx(val_accuracy, abs=5e-5)
    assert torch.load(folder / CHECKPOINT_NAME, weights_only=True)["epochs_done"] == 2
    assert (report_dir / "latest").resolve() == folder.resolve()


@pytest.mark.slow
def test_train_as_a_command_reuses_the_preflight(gated_run, tmp_path):
    report_dir = gated_run[3]
    proc = subprocess.run([PYTHON, "-m", "checks.cli", "train", *SAMPLE, *CONFIG, "--epochs", "2",
                           "--report-dir", str(report_dir)], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "preflight: using " in proc.stderr and "running it first" not in proc.stderr
    assert "Traceback" not in proc.stderr
    folder = _run_folder(proc.stdout)
    assert folder.parent == report_dir and folder != _run_folder(gated_run[1])
    assert len(pd.read_csv(folder / METRICS_NAME)) == 2
    assert "test accuracy 0." in proc.stdout


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("x")
    return path


def _pipeline_returning_int(tmp_path: Path) -> str:
    path = tmp_path / "wrong_type.py"
    path.write_text("def build(config, data):\n    return 42\n")
    return f"{path}:build"


BAD_FLAGS = {
    "negative-epochs": (lambda tmp: ["--epochs", "-1"], "--epochs must be at least 1, got -1"),
    "zero-batch-size": (lambda tmp: ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    "zero-lr": (lambda tmp: ["--lr", "0"], "--lr must be positive"),
    "unknown-optimizer": (lambda tmp: ["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    "unknown-augment": (lambda tmp: ["--augment", "flip"], "argument --augment: invalid choice: 'flip'"),
    "non-integer-epochs": (lambda tmp: ["--epochs", "two"], "invalid int value: 'two'"),
    "unknown-flag": (lambda tmp: ["--epochz", "3"], "unrecognized arguments"),
    "unknown-device": (lambda tmp: ["--device", "tpu"], "unknown --device 'tpu'"),
    "report-dir-under-a-file": (lambda tmp: ["--report-dir", str(_a_file(tmp) / "reports")],
                                "cannot create a run folder in"),
    "pipeline-not-importable": (lambda tmp: ["--pipeline", "no_such_module_xyz:build"],
                                "no module named 'no_such_module_xyz'"),
    "pipeline-no-attribute": (lambda tmp: ["--pipeline", "recipe.pipeline:no_such_factory"],
                              "has no attribute 'no_such_factory'"),
    "pipeline-missing-colon": (lambda tmp: ["--pipeline", "recipe.pipeline"], "must look like"),
    "pipeline-missing-file": (lambda tmp: ["--pipeline", str(tmp / "nope.py") + ":build"], "no file"),
    "pipeline-wrong-type": (lambda tmp: ["--pipeline", _pipeline_returning_int(tmp)],
                            "returned int, expected recipe.pipeline.Pipeline"),
    "resume-without-runs": (lambda tmp: ["--resume"], "no earlier run in"),
    "mnist-missing": (lambda tmp: ["--data", "mnist", "--data-dir", str(tmp / "none")], "no mnist IDX files in"),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flags_give_one_line_and_exit_2(name, tmp_path, capsys, fast_sample):
    flags, message = BAD_FLAGS[name]
    argv = ["train", *SAMPLE, "--quiet", "--epochs", "1", "--report-dir", str(tmp_path / "r"), *flags(tmp_path)]
    if "--data" in flags(tmp_path):  # the case picks its own source
        argv = ["train", "--no-download", "--quiet", "--report-dir", str(tmp_path / "r"), *flags(tmp_path)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("recipe: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # no empty run folder left


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible, so --device cuda is valid here")
def test_device_cuda_without_gpu(tmp_path, capsys):
    code = main(["train", *SAMPLE, "--device", "cuda", "--report-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("recipe: error: --device cuda: no CUDA GPU")


@pytest.mark.slow
def test_errors_from_the_command_have_no_traceback_and_debug_shows_one(tmp_path):
    base = [PYTHON, "-m", "checks.cli", "train", *SAMPLE, "--batch-size", "0"]
    plain = subprocess.run(base, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr == "recipe: error: --batch-size must be at least 1, got 0\n"
    debug = subprocess.run(base + ["--debug"], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                           text=True, timeout=120)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "RecipeError: --batch-size must be at least 1, got 0" in debug.stderr


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / CHECKPOINT_NAME, weights_only=True)["model"]


@pytest.mark.slow  # ~10-30 s: a child process, then a resume and a reference run
def test_ctrl_c_keeps_checkpoint_and_resume_is_bit_identical(gated_run, tmp_path, fast_sample):
    """SIGINT a real `recipe train` process, then --resume it: same weights as a run never interrupted.

    The child is given far more epochs than it will ever run, so it is always still training when
    the signal lands. With a constant lr the schedule does not depend on the planned length, so the
    resume may finish at `epochs_done + 2` and be compared with a plain run of that many epochs.
    """
    common = [*SAMPLE, *CONFIG, "--quiet", "--report-dir", str(gated_run[3])]  # reuses its preflight
    interrupted = tmp_path / "interrupted"
    env = subprocess_env()  # same thread count as this process, so the same float reductions

    child = subprocess.Popen(interruptible_cli(["train", *common, "--epochs", "100000", "--out", str(interrupted)]),
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writing = tmp_path / f".{interrupted.name}.partial"  # the run stays hidden until its report is complete
    try:
        deadline = time.monotonic() + 180
        while not (writing / CHECKPOINT_NAME).exists():
            assert child.poll() is None, f"child exited early: {child.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.01)
        out, err = interrupt_and_wait(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "recipe: training stopped: interrupted during epoch" in err and "Traceback" not in err
    assert not writing.exists() and (interrupted / "results.json").is_file()  # published whole, with its report
    done = torch.load(interrupted / CHECKPOINT_NAME, weights_only=True)["epochs_done"]
    assert 1 <= done < 100000
    # the checkpoint is written before metrics.csv, so Ctrl-C between the two leaves metrics one behind
    metrics = interrupted / METRICS_NAME
    assert (len(pd.read_csv(metrics)) if metrics.exists() else 0) in (done - 1, done)

    total = str(done + 2)
    assert main(["train", *common, "--epochs", total, "--out", str(interrupted), "--resume"]) == 0
    assert main(["train", *common, "--epochs", total, "--out", str(tmp_path / "straight")]) == 0
    resumed, straight = _weights(interrupted), _weights(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    assert len(pd.read_csv(interrupted / METRICS_NAME)) == done + 2
