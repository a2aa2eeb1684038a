"""One truth: what the preflight checks is exactly what trains, and only a complete, matching,
passing preflight opens the training gate.

Each test uses the tool the way a user does: a pipeline file plugged in with --pipeline, the
`recipe` commands, `pytest checks/`, and edits to the user's files between runs.
"""
from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

import checks
from checks.engine.registry import CHECKS
from checks.cli.main import main
from recipe.config import TrainConfig
from recipe.errors import RecipeError
from recipe.pipeline import default_pipeline
from recipe.train import fit
from tests.conftest import lr_watching_step

REPO = Path(__file__).resolve().parents[1]
EXAMPLES_NET = REPO / "tests" / "pipelines" / "pytorch_examples_mnist.py"
CHECKS_DIR = str(Path(checks.__file__).parent)

MINE = textwrap.dedent("""
    from helpers import prepare
    from recipe.pipeline import default_pipeline

    def build(config, data):
        return default_pipeline(config, prepare(data))
""")
HELPERS = textwrap.dedent("""
    import dataclasses, os

    def prepare(data):
        flip = os.environ.get("FLIP_ONE_LABEL")
        if flip:  # the user's data preparation changed one label
            labels = data.train.labels.clone()
            labels[int(flip)] = (labels[int(flip)] + 1) % 10
            data = dataclasses.replace(data, train=dataclasses.replace(data.train, labels=labels))
        return data
""")
SHIFTED_LABELS = textwrap.dedent("""
    import dataclasses
    from recipe.data import Batch
    from recipe.pipeline import default_pipeline

    def build(config, data):
        clean = default_pipeline(config, data)

        def batches(split, **options):  # the bug: each image gets its neighbour's label
            for batch in clean.batches(split, **options):
                yield Batch(batch.x, batch.y.roll(1), batch.idx)

        return dataclasses.replace(clean, batches=batches)
""")
STEP_RETURNS_FLOAT = textwrap.dedent("""
    import dataclasses
    from recipe.pipeline import default_pipeline

    def step(model, optimizer, loss_fn, x, y):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    def build(config, data):
        return dataclasses.replace(default_pipeline(config, data), train_step=step)
""")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FLIP_ONE_LABEL", raising=False)
    (tmp_path / "mine.py").write_text(MINE)
    (tmp_path / "helpers.py").write_text(HELPERS)
    return tmp_path


def recipe(*args: str) -> int:
    return main([*args, "--data", "sample", "--no-download", "--epochs", "1"])


def latest(workdir: Path) -> dict:
    return json.loads((workdir / "reports" / "latest" / "results.json").read_text())


# ---------------------------------------------------------------- fit trains what the user built

@pytest.mark.slow  # the pytorch/examples CNN: ~1000 steps of checks, then 3 epochs (about 2 min on 2 cores)
def test_pytorch_examples_net_trains_with_its_own_adadelta_and_steplr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--data", "sample", "--no-download", "--quiet", "--epochs", "3",
                 "--pipeline", f"{EXAMPLES_NET}:build"])
    record = latest(tmp_path)
    assert code == 0, capsys.readouterr().err
    assert record["overall"] == "PASS"
    assert record["training"]["test_accuracy"] >= 0.95
    dry = next(c for c in record["checks"] if c["name"] == "fit_dry_run")
    assert dry["details"]["optimizer"]["class"] == "Adadelta" and dry["details"]["optimizer"]["lr"] == 1.0
    assert dry["details"]["scheduler"] == {"class": "StepLR", "interval": "epoch", "step_size": 1, "gamma": 0.7}
    assert [round(row["lr"], 6) for row in record["training"]["epochs"]] == [1.0, 0.7, 0.49]
    page = (tmp_path / "reports" / "latest" / "index.html").read_text()
    assert "Adadelta" in page and "StepLR" in page


def test_a_users_sgd_trains_at_its_own_lr(sample_data):
    seen = []
    step = lr_watching_step(seen)  # the user's step, watching the lr it trains with

    config = TrainConfig(epochs=2, lr=0.001)  # the config's lr must not leak into the user's optimizer
    pipeline = dataclasses.replace(default_pipeline(config, sample_data), train_step=step, make_scheduler=None,
                                   make_optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    result = fit(pipeline, quiet=True)
    assert len(seen) == 2 * pipeline.steps_per_epoch
    assert set(seen) == {0.05}
    assert result.history[-1]["val_accuracy"] > 0.8


def test_a_users_scheduler_is_stepped_per_epoch_or_per_step_as_declared(sample_data):
    def build(interval):
        return dataclasses.replace(
            default_pipeline(TrainConfig(epochs=3, schedule="constant"), sample_data),
            make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            make_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
            scheduler_interval=interval)

    per_epoch = fit(build("epoch"), quiet=True, max_batches=4)
    assert [row["lr"] for row in per_epoch.history] == [0.1, 0.05, 0.025]
    per_step = fit(build("step"), quiet=True, max_batches=4)
    assert [row["lr"] for row in per_step.history] == [0.1, 0.1 * 0.5 ** 4, 0.1 * 0.5 ** 8]


def test_replacing_the_config_after_the_factories_were_built_is_rejected(sample_data):
    pipeline = default_pipeline(TrainConfig(), sample_data)
    for change in ({"lr": 1e-7}, {"batch_size": 7}, {"augment": "shift-rotate"}, {"epochs": 3}):
        with pytest.raises(RecipeError, match="build it again from the new config"):
            dataclasses.replace(pipeline, config=dataclasses.replace(pipeline.config, **change))
    reseeded = dataclasses.replace(pipeline, config=dataclasses.replace(pipeline.config, seed=4))
    assert reseeded.config.seed == 4  # the seed is read when a run starts, never baked into a factory


@pytest.mark.slow
def test_a_step_returning_a_float_is_refused_before_any_check_and_training_never_starts(workdir, capsys):
    """fit cannot train with it (its first step refuses a Python number), so neither do the checks: one line."""
    (workdir / "floaty.py").write_text(STEP_RETURNS_FLOAT)
    assert recipe("train", "--pipeline", "floaty.py:build") == 2
    err = capsys.readouterr().err
    refusal = [line for line in err.splitlines() if line.startswith("recipe: error:")]
    assert len(refusal) == 1 and "returned a float" in refusal[0] and "loss.item()" in refusal[0], err
    assert "PASS" not in err and "FAIL" not in err  # no check ran
    assert not list(workdir.glob("reports/*/checkpoint.pt"))


# ---------------------------------------------------------------- the gate

@pytest.mark.slow
def test_editing_the_pipeline_or_a_module_it_imports_makes_train_check_again(workdir, capsys):
    assert recipe("check", "--pipeline", "mine.py:build") == 0
    capsys.readouterr()
    assert recipe("train", "--pipeline", "mine.py:build") == 0
    assert "preflight: using" in capsys.readouterr().err

    (workdir / "mine.py").write_text(MINE + "\n# tuned\n")
    assert recipe("train", "--pipeline", "mine.py:build") == 0
    assert "the code changed since the preflight" in capsys.readouterr().err

    (workdir / "helpers.py").write_text(HELPERS + "\n# tuned too\n")
    assert recipe("train", "--pipeline", "mine.py:build") == 0
    assert "the code changed since the preflight" in capsys.readouterr().err


@pytest.mark.slow
def test_changing_one_label_makes_train_check_again(workdir, capsys, monkeypatch):
    assert recipe("check", "--pipeline", "mine.py:build") == 0
    monkeypatch.setenv("FLIP_ONE_LABEL", "17")
    capsys.readouterr()
    assert recipe("train", "--pipeline", "mine.py:build") == 0
    assert "the data changed since the preflight" in capsys.readouterr().err


@pytest.mark.slow
def test_a_k_subset_cannot_open_the_gate(workdir, pytester, capsys):
    result = pytester.runpytest_inprocess(CHECKS_DIR, "-p", "no:cacheprovider", "--data", "sample", "--no-download",
                                          "--report-dir", str(workdir / "reports"), "-k", "loss", "--epochs", "1",
                                          "--threads", "1")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*partial preflight: 2 of * checks*"])
    partial = latest(workdir)
    assert partial["preflight"]["complete"] is False and len(partial["checks"]) == 2
    assert "partial: 2 of" in (workdir / "reports" / "latest" / "index.html").read_text()
    capsys.readouterr()
    assert recipe("train", "--report-dir", str(workdir / "reports")) == 0  # pytester moved the cwd
    err = capsys.readouterr().err
    assert "preflight: using" not in err and "running it first" in err
    assert len(latest(workdir)["checks"]) == len(CHECKS)


@pytest.mark.slow
def test_a_stale_fail_refuses_then_fixed_code_is_rechecked_and_trains(workdir, capsys):
    (workdir / "mine.py").write_text(SHIFTED_LABELS)
    assert recipe("check", "--pipeline", "mine.py:build") == 1
    capsys.readouterr()
    assert recipe("train", "--pipeline", "mine.py:build") == 1
    err = capsys.readouterr().err
    assert "training will not start" in err and "label_pairing (FAIL)" in err
    assert "recipe check --pipeline mine.py:build" in err  # the command that re-runs them

    (workdir / "mine.py").write_text(MINE)
    assert recipe("train", "--pipeline", "mine.py:build") == 0
    err = capsys.readouterr().err
    assert "the code changed since the preflight" in err
    assert latest(workdir)["training"]["test_accuracy"] > 0.8


@pytest.mark.slow
def test_a_train_report_links_the_preflight_it_relied_on_and_keeps_its_figures(workdir):
    assert recipe("check") == 0
    checked = latest(workdir)
    checked_dir = (workdir / "reports" / "latest").resolve()
    assert recipe("train") == 0
    trained = latest(workdir)
    assert Path(trained["preflight"]["relied_on"]["run_dir"]).resolve() == checked_dir
    assert [c["name"] for c in trained["preflight"]["relied_on"]["checks"]] == [c["name"] for c in checked["checks"]]
    page = (workdir / "reports" / "latest" / "index.html").read_text()
    assert f"../{checked_dir.name}/index.html" in page
    figures = json.loads((workdir / "reports" / "latest" / "figures.json").read_text())
    assert figures.get("label_signal") and figures.get("fit_dry_run")


# ---------------------------------------------------------------- one runner, one gate

@pytest.mark.slow
def test_pytest_and_the_zoo_both_run_checks_through_the_one_runner(workdir, pytester, monkeypatch, sample_data):
    import checks.engine.runner as runner
    from tests.zoo.catalogue import ZOO, run_zoo

    calls = []
    original = runner.run_check
    monkeypatch.setattr(runner, "run_check", lambda check, *a, **k: calls.append(check.__name__) or original(check, *a, **k))
    pytester.runpytest_inprocess(CHECKS_DIR, "-p", "no:cacheprovider", "--data", "sample", "--no-download",
                                 "--no-report", "-k", "integrity or loss_at_init", "--threads", "1")
    assert calls == ["integrity", "loss_at_init"]
    calls.clear()
    run_zoo(sample_data, bugs=ZOO[:1], clean=("linear",))
    assert sorted(calls) == sorted(list(CHECKS) * 2)  # the clean linear pipeline, then the one bug


def test_there_is_one_stage_gate_and_one_training_gate():
    sources = {p: p.read_text() for p in [*(REPO / "checks").rglob("*.py"), *(REPO / "recipe").rglob("*.py")]}
    stage_gates = [p.name for p, text in sources.items() if re.search(r"blocked_by\s*=\s*stage", text)]
    training_gates = [p.name for p, text in sources.items() if "def find_preflight" in text]
    assert stage_gates == ["runner.py"] and training_gates == ["gate.py"]


# ---------------------------------------------------------------- the user's code errors

BROKEN = {
    "syntax": ("def build(config, data)\n    return None\n", r"broken\.py:1: SyntaxError"),
    "raises-on-import": ("import json\nCONFIG = json.loads('{')\n", r"broken\.py:2: JSONDecodeError"),
    "factory-raises": ("def build(config, data):\n    x = 1\n    raise ValueError('no data for me')\n",
                       r"the factory raised at broken\.py:3: ValueError: no data for me"),
    "wrong-type": ("def build(config, data):\n    return 42\n", r"returned int, expected recipe\.pipeline\.Pipeline"),
}


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.slow
def test_user_code_errors_are_one_line_and_exit_2_from_recipe(workdir, capsys, kind):
    source, pattern = BROKEN[kind]
    (workdir / "broken.py").write_text(source)
    assert recipe("check", "--pipeline", "broken.py:build") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recipe: error: ") and re.search(pattern, err[0]), err
    assert not (workdir / "reports").exists() or not any((workdir / "reports").iterdir())


@pytest.mark.parametrize("kind", ["syntax", "factory-raises"])
@pytest.mark.slow
def test_user_code_errors_are_a_usage_error_under_pytest(pytester, kind):
    source, pattern = BROKEN[kind]
    pytester.makepyfile(broken=source)
    result = pytester.runpytest_subprocess(CHECKS_DIR, "-p", "no:cacheprovider", "--data", "sample",
                                           "--no-download", "--pipeline", "broken.py:build")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert re.search(pattern, result.stderr.str())


@pytest.mark.slow
def test_debug_shows_the_users_traceback(workdir, capsys):
    (workdir / "broken.py").write_text(BROKEN["factory-raises"][0])
    with pytest.raises(RecipeError) as caught:
        recipe("check", "--pipeline", "broken.py:build", "--debug")
    assert isinstance(caught.value.__cause__, ValueError)
