"""The training monitors: `recipe/monitors.py` records a run, `checks/training/monitor_checks.py` judges it.

Every monitor trips (WARN or FAIL) on bad twins in a short run on the sample, several variants per
kind of fault, and clean runs trip none. The twins are built the way a user writes them: a
scheduler, a param group, an init, a train step.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

from checks.training import monitor_checks
from checks.training.monitor_checks import MONITORS, judge_training
from checks.engine.result import CheckResult, Verdict
from recipe import sources
from checks.cli.main import main
from recipe.config import TrainConfig
from recipe.data import Split
from recipe.model import MLPClassifier
from recipe.monitors import TrainingMonitor
from recipe.pipeline import default_pipeline, mlp_pipeline
from recipe.train import METRICS_NAME, fit
from tests.test_verdicts import disagreements
from tests.zoo.valid import VALID

CONSTANT = TrainConfig(epochs=3, schedule="constant")  # 3 x 55 steps on the sample
TRIPPED = (Verdict.WARN, Verdict.FAIL)


def watch(pipeline, every: int = 5) -> dict[str, CheckResult]:
    """Train `pipeline` with a monitor; every monitor's result by name (their numbers must agree)."""
    monitor = TrainingMonitor(every=every)
    fit(pipeline, quiet=True, monitor=monitor)
    results = judge_training(monitor.log)
    assert not [r.message for r in results if r.verdict is Verdict.ERROR]  # a monitor must not crash
    assert not disagreements(results), disagreements(results)
    assert [r.name for r in results] == [m.__name__ for m in MONITORS] and all(r.stage == "training" for r in results)
    return {r.name: r for r in results}


def tripped(results: dict[str, CheckResult]) -> set[str]:
    return {name for name, r in results.items() if r.verdict in TRIPPED}


# ---------------------------------------------------------------- twins a user writes

def lr_jump(at: int, factor: float = 100.0):
    """A step-function schedule: the lr jumps `factor`x at step `at` (a milestone typo: gamma=100, not 0.01)."""
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor if step >= at else 1.0)


def slow_hidden(make, **settings):
    """Param groups: the MLP's hidden layer at 1/1000 of the lr the rest trains with."""
    def build(params):
        params = list(params)  # hidden.weight, hidden.bias, out.weight, out.bias
        return make([{"params": params[:2], "lr": settings["lr"] / 1000}, {"params": params[2:]}], **settings)
    return build


def dying_mlp(functional: bool):
    """An MLP whose hidden biases start at -20: every ReLU outputs 0 from the first batch on."""
    def build():
        model = MLPClassifier(10, 784) if functional else nn.Sequential(
            nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        with torch.no_grad():
            (model.hidden if functional else model[1]).bias.fill_(-20.0)
        return model
    return build


class DyingCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.head = nn.Linear(8 * 26 * 26, 10)
        with torch.no_grad():
            self.conv.bias.fill_(-50.0)

    def forward(self, x):
        return self.head(nn.functional.relu6(self.conv(x)).flatten(1))


def no_zero_grad(model, optimizer, loss_fn, x, y):
    """The default step without optimizer.zero_grad(): each backward adds to the last gradient."""
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def zero_grad_at_the_end(model, optimizer, loss_fn, x, y):
    """A fine step that clears the gradients after stepping, so nothing is left to read after it."""
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def naive_cross_entropy(logits, y):
    """log(softmax) in two steps: a probability that underflows to 0 gives log(0) = -inf."""
    return -logits.softmax(1).gather(1, y[:, None]).log().mean()


def few_examples(data, n: int = 200):
    keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n]
    return replace(data, train=Split(data.train.images[keep], data.train.labels[keep]))


def sgd(lr: float, **more):
    return lambda params: torch.optim.SGD(params, lr=lr, **more)


# ---------------------------------------------------------------- clean runs

@pytest.mark.parametrize("build", [default_pipeline, mlp_pipeline], ids=["linear", "mlp"])
def test_clean_runs_trip_no_monitor(sample_data, build):
    results = watch(build(TrainConfig(epochs=3), sample_data), every=None)
    assert tripped(results) == set(), {n: results[n].message for n in tripped(results)}
    assert {n for n, r in results.items() if r.verdict is Verdict.PASS} >= {
        "non_finite_values", "loss_spikes", "exploding_gradients", "vanishing_gradients", "largest_update_ratio",
        "smallest_update_ratio", "train_val_gap", "lr_at_end"}


@pytest.mark.parametrize("name", [n for n in VALID if n != "batchnorm_cnn"])
@pytest.mark.slow
def test_valid_configurations_fail_no_monitor(sample_data, name):
    results = watch(VALID[name](TrainConfig(epochs=2), sample_data), every=None)
    assert not [r for r in results.values() if r.verdict.blocks], {n: r.message for n, r in results.items()}
    assert tripped(results) <= JUSTIFIED_WARNINGS.get(name, set())


# The warnings a valid setup earns in 2 epochs: an lr still high at the end (constant after its
# warm-up; StepLR(gamma=0.7) per epoch ends the second epoch at 0.7 of its peak).
JUSTIFIED_WARNINGS = {"warmup_from_zero": {"lr_at_end"}, "sgd_steplr": {"lr_at_end"}}


# ---------------------------------------------------------------- each monitor on its twins

@pytest.mark.parametrize("make", [
    lambda d: replace(default_pipeline(CONSTANT, d), make_scheduler=lr_jump(80), scheduler_interval="step"),
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_scheduler=lr_jump(80), scheduler_interval="step"),
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(0.05, momentum=0.9), make_scheduler=lr_jump(100),
                      scheduler_interval="step"),
], ids=["linear-adam", "mlp-adam", "mlp-sgd"])
def test_an_lr_jump_mid_run_is_a_loss_spike(sample_data, make):
    spike = watch(make(sample_data))["loss_spikes"]
    assert spike.verdict is Verdict.FAIL
    assert spike.details["step"] >= 80 and "step" in spike.message and spike.figures


@pytest.mark.parametrize("make, verdict", [
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=slow_hidden(torch.optim.Adam, lr=1e-3)), Verdict.WARN),
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=slow_hidden(torch.optim.SGD, lr=0.05, momentum=0.9)),
     Verdict.WARN),
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=lambda p: torch.optim.Adam(list(p)[2:], lr=1e-3)),
     Verdict.FAIL),
], ids=["adam-lr-over-1000", "sgd-lr-over-1000", "missing-from-optimizer"])
def test_a_layer_that_hardly_learns_is_named(sample_data, make, verdict):
    results = watch(make(sample_data))
    assert results["update_ratio_spread"].verdict is verdict
    assert results["update_ratio_spread"].details["slowest"] == "hidden.weight"
    assert "hidden.weight" in results["update_ratio_spread"].message
    if verdict is Verdict.FAIL:  # a layer that never moves also fails the absolute rule
        assert results["smallest_update_ratio"].verdict is Verdict.FAIL


@pytest.mark.parametrize("make, site", [
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_model=dying_mlp(functional=True)), "MLPClassifier relu #1"),
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_model=dying_mlp(functional=False)), "2 (ReLU)"),
    (lambda d: replace(mlp_pipeline(replace(CONSTANT, epochs=1), d), make_model=DyingCNN), "DyingCNN relu #1"),
], ids=["torch.relu", "nn.ReLU", "relu6-conv"])
@pytest.mark.slow
def test_relus_initialised_to_die_are_dead_units(sample_data, make, site):
    results = watch(make(sample_data))
    assert results["dead_units"].verdict is Verdict.FAIL
    assert results["dead_units"].details["site"] == site and results["dead_units"].value > 0.9


@pytest.mark.parametrize("make", [
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_scheduler=lr_jump(80), scheduler_interval="step"),
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(5.0)),
], ids=["adam-lr-jump", "sgd-lr-5"])
def test_an_lr_that_kills_the_relus_mid_run_is_caught(sample_data, make):
    results = watch(make(sample_data))
    assert results["dead_units"].verdict is Verdict.FAIL
    assert {"loss_spikes"} <= tripped(results)


@pytest.mark.parametrize("make", [
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(5.0)),
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(0.05, momentum=0.9), make_scheduler=lr_jump(100),
                      scheduler_interval="step"),
], ids=["sgd-lr-5", "sgd-lr-jump"])
def test_gradients_that_vanish_while_the_loss_stays_high(sample_data, make):
    assert watch(make(sample_data))["vanishing_gradients"].verdict in TRIPPED


@pytest.mark.parametrize("make, verdict", [
    (lambda d: replace(mlp_pipeline(CONSTANT, d), train_step=no_zero_grad), Verdict.WARN),
    (lambda d: replace(mlp_pipeline(CONSTANT, d), train_step=no_zero_grad, make_optimizer=sgd(0.01)), Verdict.WARN),
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(0.1, weight_decay=30.0)), Verdict.FAIL),
], ids=["no-zero-grad-adam", "no-zero-grad-sgd", "weight-decay-blowup"])
def test_exploding_gradients(sample_data, make, verdict):
    assert watch(make(sample_data))["exploding_gradients"].verdict is verdict


@pytest.mark.parametrize("make, verdict", [
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(0.1, weight_decay=30.0)), Verdict.FAIL),
    (lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3,
                                                                                            weight_decay=1000.0)),
     Verdict.WARN),
], ids=["sgd-weight-decay-blowup", "adamw-weight-decay-1000"])
def test_updates_as_large_as_the_weights(sample_data, make, verdict):
    assert watch(make(sample_data))["largest_update_ratio"].verdict is verdict


@pytest.mark.parametrize("make", [
    lambda d: replace(mlp_pipeline(CONSTANT, d), make_optimizer=sgd(0.1, weight_decay=30.0)),
    lambda d: replace(default_pipeline(CONSTANT, d), loss_fn=naive_cross_entropy, make_optimizer=sgd(10.0)),
    lambda d: replace(mlp_pipeline(CONSTANT, d), loss_fn=naive_cross_entropy, make_optimizer=sgd(10.0)),
], ids=["weight-decay-blowup", "log-of-softmax-linear", "log-of-softmax-mlp"])
def test_non_finite_losses_and_gradients(sample_data, make):
    result = watch(make(sample_data))["non_finite_values"]
    assert result.verdict is Verdict.FAIL and result.value > 0 and "first at step" in result.message


@pytest.mark.parametrize("hidden, epochs", [(512, 30), (1024, 40)])
@pytest.mark.slow
def test_a_long_run_on_few_examples_overfits(sample_data, hidden, epochs):
    pipeline = mlp_pipeline(TrainConfig(epochs=epochs, schedule="constant"), few_examples(sample_data))
    results = watch(replace(pipeline, make_model=lambda: MLPClassifier(10, 784, hidden=hidden)), every=None)
    assert results["train_val_gap"].verdict is Verdict.WARN and results["train_val_gap"].value >= 0.1
    rising = results["val_loss_rising"]
    assert rising.verdict is Verdict.WARN and f"epoch {rising.details['best_epoch']}" in rising.message
    assert rising.details["best_epoch"] < epochs - 3


@pytest.mark.parametrize("make", [
    lambda d: default_pipeline(CONSTANT, d),
    lambda d: mlp_pipeline(CONSTANT, d),
    lambda d: replace(mlp_pipeline(CONSTANT, d), scheduler_interval="epoch",
                      make_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)),
], ids=["linear-constant", "mlp-constant", "steplr-that-never-steps"])
@pytest.mark.slow
def test_an_lr_still_high_at_the_end(sample_data, make):
    result = watch(make(sample_data))["lr_at_end"]
    assert result.verdict is Verdict.WARN and result.value == pytest.approx(1.0)


# ---------------------------------------------------------------- what does not apply

def test_a_step_that_clears_the_gradients_is_said_not_measured(sample_data):
    results = watch(replace(mlp_pipeline(CONSTANT, sample_data), train_step=zero_grad_at_the_end))
    for name in ("exploding_gradients", "vanishing_gradients"):
        assert results[name].verdict is Verdict.NA and "sets the gradients to None" in results[name].message
    assert results["largest_update_ratio"].verdict is Verdict.PASS  # the weights still moved


def test_a_model_without_relus_has_no_dead_units_to_watch(sample_data):
    monitor = TrainingMonitor(every=5)
    fit(default_pipeline(CONSTANT, sample_data), quiet=True, monitor=monitor)
    assert monitor.log.relu_sites == [] and monitor.log.layers == ["fc.weight"]
    assert monitor_checks.dead_units(monitor.log).verdict is Verdict.NA


def test_the_log_is_plain_json_and_counts_every_step(sample_data):
    pipeline = mlp_pipeline(replace(CONSTANT, epochs=2), sample_data)
    monitor = TrainingMonitor(every=6)  # even: rounded up to 7, so accumulation cycles of 2^n meet every phase
    result = fit(pipeline, quiet=True, monitor=monitor)
    log = monitor.log
    assert log.every == 7 and len(log.losses) == len(log.steps) == 2 * pipeline.steps_per_epoch
    assert log.sampled_steps == list(range(0, 2 * pipeline.steps_per_epoch, 7))
    assert [row["train_accuracy"] for row in result.history] == [row["train_accuracy"] for row in log.epochs]
    json.dumps(log.to_json(), allow_nan=False)


# ---------------------------------------------------------------- the CLI and the report

# the MLP: its ReLUs give the dead-unit monitor something to watch
CLI = ["--data", "sample", "--no-download", "--epochs", "2", "--pipeline", "recipe.pipeline:mlp_pipeline"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, sample_raw):
    report_dir = tmp_path_factory.mktemp("reports")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
        code = main(["run", *CLI, "--report-dir", str(report_dir)])
    return code, err.getvalue(), report_dir / "latest"


@pytest.mark.slow
def test_run_writes_the_monitors_into_results_and_the_report(cli_run):
    code, err, run = cli_run
    assert code == 0, err
    training = json.loads((run / "results.json").read_text())["training"]
    names = [m["name"] for m in training["monitors"]]
    assert names == [m.__name__ for m in MONITORS]
    assert training["monitoring"]["steps"] == 2 * 55 and training["monitoring"]["layers"] == ["hidden.weight",
                                                                                              "out.weight"]
    assert training["monitoring"]["relu_sites"] == ["MLPClassifier relu #1"]
    assert all(m["stage"] == "training" and m["verdict"] in ("PASS", "N/A") for m in training["monitors"])
    figures = {f["title"] for f in json.loads((run / "figures.json").read_text())["training"]}
    assert {t for m in training["monitors"] for t in m["figures"]} <= figures
    page = (run / "index.html").read_text()
    assert 'id="monitors"' in page and all(f'id="monitor-{name}"' in page for name in names)
    assert "train_accuracy" in pd.read_csv(run / METRICS_NAME).columns


@pytest.mark.slow
def test_train_reuses_the_preflight_and_is_watched_too(cli_run, sample_raw, monkeypatch):
    report_dir = cli_run[2].parent
    monkeypatch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
    failing = CheckResult("loss_spikes", "training", Verdict.FAIL, 40.0, 25.0, "<=", "the loss spiked at step 9")
    monkeypatch.setattr(monitor_checks, "judge_training", lambda log: [failing])
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["train", *CLI, "--quiet", "--report-dir", str(report_dir)])
    assert code == 1 and "training/loss_spikes FAIL: the loss spiked at step 9" in err.getvalue()
    record = json.loads((report_dir / "latest" / "results.json").read_text())
    assert record["training"]["monitors"][0]["verdict"] == "FAIL"
    assert "A training monitor failed (loss_spikes)" in (report_dir / "latest" / "index.html").read_text()


@pytest.mark.slow
def test_no_monitors_leaves_them_out(cli_run, sample_raw, monkeypatch):
    report_dir = cli_run[2].parent
    monkeypatch.setattr(sources, "read_sample_csv", lambda path: sample_raw)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        code = main(["train", *CLI, "--quiet", "--no-monitors", "--report-dir", str(report_dir)])
    assert code == 0
    training = json.loads((report_dir / "latest" / "results.json").read_text())["training"]
    assert "monitors" not in training and "train_accuracy" not in training["epochs"][0]


def test_the_usage_page_lists_every_monitor_in_order():
    from pathlib import Path

    usage = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    section = usage.split("## Watching the training run", 1)[1].split("\n## ", 1)[0]
    assert [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")] == \
        [m.__name__ for m in MONITORS]


def test_the_bench_part_times_both_sides_of_each_round(sample_data):
    from bench import monitors as bench_monitors

    measured = bench_monitors.compare(default_pipeline(TrainConfig(epochs=2), sample_data), epochs=1, rounds=2)
    assert {side: len(times) for side, times in measured["cpu_s"].items()} == {"off": 3, "on": 3}
    cpu = measured["median_s"]["cpu"]
    assert measured["overhead_cpu"] == pytest.approx(cpu["on"] / cpu["off"] - 1)
    assert measured["every"] == 21  # what the monitor would sample in the configured run: 2 x 55 steps


def test_diff_compares_the_monitors_like_checks(tmp_path):
    from checks.report.diff import compare

    def record(verdict: str, monitors: bool = True) -> dict:
        row = {"name": "loss_spikes", "stage": "training", "verdict": verdict, "value": 3.0 if verdict == "PASS" else 40.0,
               "threshold": 25.0, "comparison": "<="}
        return {"checks": [{"name": "loss_at_init", "stage": "skeleton", "verdict": "PASS", "value": 2.3,
                            "threshold": 2.4, "comparison": "<="}],
                "training": {"monitors": [row]} if monitors else None}

    diff = compare(record("PASS"), record("FAIL"), tmp_path, tmp_path)
    assert [(r["stage"], r["name"], r["a"], r["b"]) for r in diff.worse] == [("training", "loss_spikes", "PASS", "FAIL")]
    assert compare(record("PASS", monitors=False), record("FAIL"), tmp_path, tmp_path).only_b == []  # a check run


# ---------------------------------------------------------------- loss_spikes: held spikes, not hard batches

def _log(losses):
    from recipe.monitors import MonitorLog
    return MonitorLog(every=1, steps=list(range(len(losses))), losses=losses)


def _nearly_fitted(n=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (0.03 + 0.01 * torch.rand(n, generator=generator)).tolist()  # a small table the model nearly fits


@pytest.mark.parametrize("lifted", [[150], [150, 151], list(range(40, 300, 38))],
                         ids=["one-batch", "two-batches", "the-same-hard-rows-every-epoch"])
def test_a_hard_batch_that_lifts_one_step_only_warns(lifted):
    from checks.training.monitor_checks import loss_spikes
    losses = _nearly_fitted()
    for step in lifted:
        losses[step] = 0.8  # borderline rows in this batch: z ~ 200 for that step alone
    result = loss_spikes(_log(losses))
    assert result.verdict is Verdict.WARN and "hard or mislabelled" in result.message
    assert result.details["single_step_z"] > result.threshold > result.value


@pytest.mark.parametrize("decay", [0.95, 0.8, 1.0], ids=["slow-recovery", "fast-recovery", "never-recovers"])
def test_a_spike_the_next_steps_keep_fails(decay):
    from checks.training.monitor_checks import loss_spikes
    losses = _nearly_fitted()
    for i, step in enumerate(range(150, 300)):
        losses[step] = 0.03 + 0.8 * decay ** i  # the model itself got worse (an lr jump): later batches stay up
    result = loss_spikes(_log(losses))
    assert result.verdict is Verdict.FAIL and result.details["step"] == 150 and "stayed up" in result.message
