"""The command-line conventions a user relies on without reading the docs: help, --version, each
command listing only its own options, one-line errors with a did-you-mean, live progress when the
output is piped, check anchors, JUnit properties, `pytest --pyargs checks`, and a data line that
says what data is really used."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from importlib import metadata
from importlib.metadata import entry_points

import pytest

from checks.engine.registry import CHECKS, CHECKS_BY_STAGE
from checks.cli.loading import load_pipeline
from checks.cli.main import main
from checks.cli.parser import SUMMARIES, build_parser
from tests.conftest import PYTHON, subprocess_env

SAMPLE = ["--data", "sample", "--no-download"]


def options_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text))


def test_no_arguments_prints_the_help_with_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: recipe")
    for name, summary in SUMMARIES.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(summary.split()[0])}", out, re.M), name


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_every_command_has_a_one_line_description(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    summary = SUMMARIES[name]
    assert summary and "\n" not in summary
    assert " ".join(out.split("\n\n")[1].split()) == summary[0].upper() + summary[1:] + "."


def test_version_comes_from_the_installed_distribution(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"recipe {metadata.version('recipe-harness')}\n"


def test_each_command_lists_only_the_options_it_uses(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no option name broken over two lines
    helps = {}
    for name in SUMMARIES:
        main([name, "--help"])
        helps[name] = options_in(capsys.readouterr().out)
    assert helps["report"] == {"--help", "--report-dir", "--quiet", "--debug"}
    assert "RUN_DIR" in build_parser().commands["report"].format_usage()
    assert not helps["check"] & {"--resume", "--out", "--force"}
    assert {"--resume", "--out", "--force"} <= helps["train"] and "--force" in helps["run"]
    assert {"--pipeline", "--data", "--epochs", "--lr", "--no-gate"} <= helps["check"]
    assert helps["diff"] == {"--help", "--report-dir", "--quiet", "--debug", "--noise"}


MISTAKES = {
    "mistyped command": (["chek"], "unknown command 'chek'; did you mean 'check'?"),
    "mistyped flag": (["check", "--epochz", "3"], "unrecognized arguments: --epochz 3; did you mean --epochs?"),
    "flag of another command": (["check", "--resume"], "--resume is an option of `recipe train`, not of `recipe check`"),
    "report given a training flag": (["report", "--lr", "0.1"], "--lr is an option of `recipe check / train / run`"),
    "mistyped choice": (["train", "--optimizer", "adm"], "argument --optimizer: invalid choice: 'adm'; did you mean 'adam'?"),
    "mistyped data source": (["run", "--data", "fashion"], "did you mean 'fashion-mnist'?"),
    "no close match": (["check", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs' (choose from sgd, adam)"),
    "retired flag": (["check", "--check-budget", "8"], "--check-budget (seconds) is gone: the checks train a number "
                     "of steps chosen from the model's forward FLOPs"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_usage_error_is_one_line_with_one_prefix_and_a_suggestion(case, capsys):
    argv, expected = MISTAKES[case]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("recipe: error: ") and err.count("recipe:") == 1, err
    assert expected in err
    assert "see `recipe" in err and "--help`" in err


def test_debug_shows_the_traceback_of_a_usage_error():
    done = subprocess.run([PYTHON, "-m", "checks.cli", "chek", "--debug"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "RecipeError: unknown command 'chek'" in done.stderr


# ---------------------------------------------------------------- what a piped run prints

@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """`recipe run` as CI runs it: stdout and stderr are pipes, not a terminal."""
    workdir = tmp_path_factory.mktemp("piped")
    done = subprocess.run([PYTHON, "-m", "checks.cli", "run", *SAMPLE, "--epochs", "2"], cwd=workdir,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    return done, workdir


@pytest.mark.slow  # a whole `recipe run` in a child process
def test_a_piped_run_prints_one_line_per_check_and_per_epoch(piped_run):
    done, _ = piped_run
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # no progress bar redrawing in a log file
    lines = done.stderr.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    expected = [(stage, c.__name__) for stage, checks in CHECKS_BY_STAGE.items() for c in checks]
    assert len(progress) == len(expected)
    for i, (line, (stage, name)) in enumerate(zip(progress, expected), 1):
        assert re.fullmatch(rf"\[\s*{i}/{len(CHECKS)}\] {stage}/{name} +(PASS|WARN|N/A) +\d+\.\d\d s", line), line
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all(re.search(r"train loss \d\.\d{4}, val loss \d\.\d{4}, val accuracy 0\.\d{4}", e) for e in epochs)
    assert lines.index(progress[-1]) < lines.index(epochs[0])
    said = [i for i, line in enumerate(lines) if line.startswith("preflight ")]  # the verdict, before training
    assert len(said) == 1 and lines.index(progress[-1]) < said[0] < lines.index(epochs[0])
    assert re.fullmatch(rf"preflight (PASS|WARN) \({len(CHECKS)} checks: .*\): training 2 epochs", lines[said[0]])


@pytest.mark.slow
def test_the_report_anchors_each_check_by_name_and_shows_test_accuracy_in_the_banner(piped_run):
    done, workdir = piped_run
    run_dir = (workdir / "reports" / "latest").resolve()
    html = (run_dir / "index.html").read_text()
    record = json.loads((run_dir / "results.json").read_text())
    for name in CHECKS:
        assert f'id="{name}"' in html and f'href="#{name}"' in html
    banner = html.split('<header class="banner', 1)[1].split("</header>", 1)[0]
    test_accuracy = record["training"]["test_accuracy"]
    assert f"test accuracy <strong>{100 * test_accuracy:.1f}%</strong>" in banner
    assert f"{test_accuracy:.4f}" in done.stdout


# ---------------------------------------------------------------- pytest conventions

MLP = "from recipe.pipeline import mlp_pipeline as build\n"


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    names = {e.value for e in entry_points(group="pytest11")}
    assert "checks.pytest_plugin" in names, "re-run `pip install -e .` after changing the entry points"


@pytest.mark.slow
def test_pytest_pyargs_checks_takes_the_preflight_options_from_any_folder(pytester: pytest.Pytester):
    """Run away from this repository, so pytest cannot find checks/conftest.py by path; each check's
    verdict, value, threshold and message land in the JUnit XML as properties."""
    pytester.makepyfile(my_mlp=MLP)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("--pyargs", "checks", "-p", "no:cacheprovider", "--pipeline", "my_mlp:build",
                                           *SAMPLE, "-m", "data", "--no-report", "--junitxml", str(junit))
    assert "unrecognized arguments" not in result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    outcomes = result.parseoutcomes()  # the token-only data checks are N/A on images: skips
    assert outcomes.get("passed") + outcomes.get("skipped", 0) == len(CHECKS_BY_STAGE["data"]) and outcomes.get("skipped")
    cases = {case.get("name"): case for case in ET.parse(junit).iter("testcase")}
    integrity = cases["test_check[integrity]"]
    properties = {p.get("name"): p.get("value") for p in integrity.iter("property")}
    assert properties["verdict"] == "PASS" and properties["comparison"] in ("<=", ">=", "==", "<", ">", "")
    assert properties["message"] and "threshold" in properties and "value" in properties
    assert all(case.find("properties") is not None for name, case in cases.items() if name.startswith("test_check["))


# ---------------------------------------------------------------- the data line

def _load(argv: list[str]):
    args = build_parser().parse_args(argv)
    return load_pipeline(args)


def test_auto_says_why_a_data_dir_of_pngs_is_not_used(tmp_path, capsys, fast_sample):
    pngs = tmp_path / "my-digits"
    for label in range(3):
        (pngs / str(label)).mkdir(parents=True)
        for i in range(4):
            (pngs / str(label) / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    pipeline = _load(["check", "--data", "auto", "--data-dir", str(pngs), "--no-download",
                      "--report-dir", str(tmp_path / "r")])
    lines = capsys.readouterr().err.splitlines()
    assert pipeline.data.source == "sample" and len(lines) == 2
    assert lines[0] == (f"data dir: {pngs} holds 12 files (12 .png) but none of the MNIST IDX files --data auto "
                        "reads (train-images-idx3-ubyte, train-labels-idx1-ubyte, ... optionally .gz), so it is not "
                        "used; for a folder of images (one subfolder per class) pass --data folder")
    assert lines[1].startswith("data: sample (3500 train / 500 val / 1000 test) - no MNIST files in")


def test_auto_names_the_missing_half_of_an_idx_set(tmp_path, capsys, fast_sample, idx_folder):
    folder, _ = idx_folder("half")
    (folder / "t10k-images-idx3-ubyte").unlink()
    _load(["check", "--data-dir", str(folder), "--no-download", "--report-dir", str(tmp_path / "r")])
    first = capsys.readouterr().err.splitlines()[0]
    assert "but not t10k-images-idx3-ubyte (in one folder), so it is not used" in first


def test_an_empty_or_missing_data_dir_adds_no_line(tmp_path, capsys, fast_sample):
    _load(["check", "--data-dir", str(tmp_path / "none"), "--no-download", "--report-dir", str(tmp_path / "r")])
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["data"]


SUBSAMPLE = textwrap.dedent("""
    import dataclasses
    from recipe.data import Split
    from recipe.pipeline import default_pipeline

    def build(config, data):
        train = Split(data.train.images[:1000], data.train.labels[:1000])
        mine = dataclasses.replace(data, train=train, reason="the first 1,000 train images (my factory)")
        return default_pipeline(config, mine)
""")


def test_a_pipeline_with_its_own_data_prints_its_own_description(tmp_path, capsys, fast_sample, monkeypatch):
    (tmp_path / "subsample.py").write_text(SUBSAMPLE)
    monkeypatch.chdir(tmp_path)
    pipeline = _load(["check", *SAMPLE, "--pipeline", "subsample.py:build", "--report-dir", str(tmp_path / "r")])
    assert len(pipeline.data.train) == 1000 and dataclasses.is_dataclass(pipeline.data)
    assert capsys.readouterr().err.strip() == ("data: sample (1000 train / 500 val / 1000 test) - the first 1,000 "
                                               "train images (my factory)")


NO_TORCH = textwrap.dedent("""
    import sys
    from checks.report.record import build_record
    from checks.report.render import write_report
    from checks.cli.main import main

    record = build_record([], pipeline_name="p", pipeline_spec="p:build", data=None, config=None,
                          environment={}, timings={})
    write_report(sys.argv[1], record, {})
    codes = [main(["report", sys.argv[1], "--quiet"]), main(["diff", sys.argv[1], sys.argv[1], "--quiet"]),
             main(["--help"]), main(["chek"])]
    print(codes, "torch" in sys.modules)
""")


def test_report_diff_help_and_typos_answer_without_importing_torch(tmp_path):
    """torch takes seconds to import; commands that never run a model must not pay for it."""
    done = subprocess.run([PYTHON, "-c", NO_TORCH, str(tmp_path / "run")], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "[0, 0, 0, 2] False", done.stdout + done.stderr
