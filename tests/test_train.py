"""The training loop: determinism, loss at init, learning, checkpoints, NaN handling, the gradient."""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys

import pytest
import torch
from torch import nn

from recipe.config import TrainConfig
from recipe.errors import RecipeError
from recipe.model import LinearClassifier
from recipe.pipeline import default_pipeline
from recipe.train import CHECKPOINT_NAME, METRICS_NAME, evaluate, fit

EPOCHS = 2
SEED = 7


def _pipeline(data, **overrides):
    return default_pipeline(TrainConfig(**{"epochs": EPOCHS, "seed": SEED, **overrides}), data)


def _steps_per_epoch(pipeline) -> int:
    return math.ceil(len(pipeline.data.train) / pipeline.config.batch_size)


def _losses(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _checkpoint(folder):
    return torch.load(folder / CHECKPOINT_NAME, weights_only=True)


@pytest.fixture(scope="module")
def full_run(sample_data, tmp_path_factory):
    """One uninterrupted 2-epoch run on the sample, with checkpoints; shared by several tests."""
    out = tmp_path_factory.mktemp("full")
    return fit(_pipeline(sample_data), out, quiet=True), out


def test_same_seed_same_run(sample_data, full_run):
    first, _ = full_run
    second = fit(_pipeline(sample_data), quiet=True)
    assert _losses(first.history) == _losses(second.history)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_loss_at_init_is_ln_classes(sample_data):
    pipeline = _pipeline(sample_data)
    loss = evaluate(pipeline.make_model(), pipeline, "val")["loss"]
    assert abs(loss - math.log(10)) < 0.01


def test_short_run_learns(full_run):
    result, out = full_run
    assert result.stopped is None
    assert len(result.history) == EPOCHS
    assert result.history[-1]["val_accuracy"] > 0.8       # chance is 0.1; 2 epochs reach ~0.88
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] < math.log(10)
    assert result.test is not None and result.test["accuracy"] > 0.8


def test_metrics_and_checkpoint_written(full_run):
    import pandas as pd

    result, out = full_run
    metrics = pd.read_csv(out / METRICS_NAME)
    assert list(metrics["epoch"]) == list(range(1, EPOCHS + 1))
    assert {"train_loss", "val_loss", "val_accuracy", "seconds"} <= set(metrics.columns)
    state = _checkpoint(out)
    assert state["epochs_done"] == EPOCHS
    assert torch.equal(state["model"]["fc.weight"], result.model.fc.weight)


class _InterruptAfter:
    """A train_step that raises KeyboardInterrupt on its (n+1)-th call: Ctrl-C in the middle of a run."""

    def __init__(self, step, n: int):
        self.step, self.n, self.calls = step, n, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return self.step(*args)


def test_resume_after_interrupt_is_bit_identical(sample_data, full_run, tmp_path):
    reference, _ = full_run
    pipeline = _pipeline(sample_data)
    interrupted = dataclasses.replace(
        pipeline, train_step=_InterruptAfter(pipeline.train_step, _steps_per_epoch(pipeline) + 5))
    stopped = fit(interrupted, tmp_path, quiet=True)
    assert stopped.stopped.startswith("interrupted during epoch 2")
    assert _checkpoint(tmp_path)["epochs_done"] == 1

    resumed = fit(_pipeline(sample_data), tmp_path, resume=True, quiet=True)
    assert resumed.stopped is None
    assert _losses(resumed.history) == _losses(reference.history)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.test == reference.test


def test_interrupt_while_saving_names_the_checkpoint_really_kept(sample_data, tmp_path, monkeypatch):
    from recipe import train

    real_save, calls = train.save_checkpoint, []

    def save_then_interrupt(*args):  # Ctrl-C lands while epoch 2's checkpoint is being written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(*args)

    monkeypatch.setattr(train, "save_checkpoint", save_then_interrupt)
    result = fit(_pipeline(sample_data, epochs=3), tmp_path, quiet=True)
    assert result.stopped.endswith("the checkpoint after epoch 1 is kept")
    assert _checkpoint(tmp_path)["epochs_done"] == 1


def test_interrupt_without_out_dir_claims_no_checkpoint(sample_data):
    pipeline = _pipeline(sample_data)
    result = fit(dataclasses.replace(pipeline, train_step=_InterruptAfter(pipeline.train_step, 3)), quiet=True)
    assert result.stopped == "interrupted during epoch 1; no checkpoint was saved"
    assert result.test is None and result.checkpoint is None


class _PressesCtrlCWhenCollected:
    """Ctrl-C landing while the garbage collector finalises something: Python raises the KeyboardInterrupt
    inside __del__, prints "Exception ignored" and carries on."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs here, inside the finaliser
            pass


@pytest.mark.parametrize("step", [0, 7])
def test_a_ctrl_c_lost_in_a_finaliser_still_stops_training(sample_data, monkeypatch, step):
    lost = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: lost.append(unraisable.exc_type))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an xdist worker may ignore SIGINT
    try:
        result = fit(_pipeline(sample_data, epochs=3), quiet=True,
                     on_step=lambda at, optimizer, loss: _PressesCtrlCWhenCollected() if at == step else None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # fit put back what it found
    finally:
        signal.signal(signal.SIGINT, previous)
    assert lost == [KeyboardInterrupt]  # the KeyboardInterrupt itself was lost ("Exception ignored in")...
    assert result.stopped == "interrupted during epoch 1; no checkpoint was saved"  # ...and training stopped
    assert result.test is None


def test_resume_with_another_config_is_refused(sample_data, full_run):
    _, out = full_run
    with pytest.raises(RecipeError, match=r"saved by another config \(lr=0\.001 \(now 0\.01\)\)"):
        fit(_pipeline(sample_data, lr=0.01), out, resume=True, quiet=True)


def test_resume_without_checkpoint(sample_data, tmp_path):
    with pytest.raises(RecipeError, match="no checkpoint at .*run without --resume first"):
        fit(_pipeline(sample_data), tmp_path, resume=True, quiet=True)


@pytest.mark.parametrize("content", [b"", b"definitely not a torch checkpoint"], ids=["empty", "garbage"])
def test_resume_from_corrupt_checkpoint(sample_data, tmp_path, content):
    (tmp_path / CHECKPOINT_NAME).write_bytes(content)
    with pytest.raises(RecipeError, match="is corrupt or not a recipe checkpoint"):
        fit(_pipeline(sample_data), tmp_path, resume=True, quiet=True)


def test_resume_checkpoint_of_another_shape(sample_data, full_run, tmp_path):
    _, out = full_run
    state = _checkpoint(out)
    state["model"]["fc.weight"] = torch.zeros(10, 100)
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(RecipeError, match="does not fit this model"):
        fit(_pipeline(sample_data), tmp_path, resume=True, quiet=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(sample_data, full_run, tmp_path):
    reference, _ = full_run
    pipeline = _pipeline(sample_data)
    val_batches = math.ceil(len(sample_data.val) / pipeline.config.batch_size)
    calls = 0

    def loss_turns_nan(logits, y):  # fine for epoch 1 and its val pass, NaN from epoch 2's 3rd step on
        nonlocal calls
        calls += 1
        loss = nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls > _steps_per_epoch(pipeline) + val_batches + 2 else loss

    result = fit(dataclasses.replace(pipeline, loss_fn=loss_turns_nan), tmp_path, quiet=True)
    assert result.stopped is not None and "training loss became nan in epoch 2" in result.stopped
    assert result.test is None and len(result.history) == 1
    state = _checkpoint(tmp_path)
    assert state["epochs_done"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    # it is epoch 1 of the clean run (up to rounding: this loss_fn trains through autograd, the clean
    # run through the closed-form linear step)
    assert _losses(state["history"])[0] == pytest.approx(_losses(reference.history[:1])[0], rel=1e-5)


def test_linear_gradient_matches_closed_form(sample_data):
    """micrograd-style oracle: autograd's dL/dW equals (softmax - onehot)^T X / N."""
    pipeline = _pipeline(sample_data)
    batch = next(pipeline.batches("train", shuffle=True, generator=torch.Generator().manual_seed(0)))
    model = LinearClassifier(10, 28 * 28).double()
    with torch.no_grad():  # random weights, so softmax is far from uniform
        model.fc.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        model.fc.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    x, y = batch.x.double(), batch.y
    nn.functional.cross_entropy(model(x), y).backward()

    X = x.flatten(1)                                           # (N, 784)
    probs = torch.softmax(X @ model.fc.weight.T + model.fc.bias, dim=1).detach()  # (N, C)
    onehot = nn.functional.one_hot(y, 10).double()             # (N, C)
    expected_w = (probs - onehot).T @ X / len(y)               # (C, 784)
    expected_b = (probs - onehot).mean(0)                      # (C,)
    assert torch.allclose(model.fc.weight.grad, expected_w, rtol=1e-9, atol=1e-12)
    assert torch.allclose(model.fc.bias.grad, expected_b, rtol=1e-9, atol=1e-12)
    assert expected_w.abs().max() > 1e-3  # the comparison is not between two near-zero tensors
