"""gradient_clipping and train_mode_kept: several ways to write each fault, and the valid steps beside them.

gradient_clipping: a clip after optimizer.step(), before loss.backward(), or undone by a zero_grad and
backward after it FAILs, however it is called; clipping before the step, also with accumulation, PASSes.
train_mode_kept: a step that leaves dropout/BatchNorm in eval mode FAILs; a step that evaluates and
switches back, a model whose train() keeps BatchNorm frozen, and a step that sets train mode itself pass.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.utils.clip_grad as clip_grad_module
from torch import nn

from checks.measure.reference_run import budgeted_training
from checks.measure.sampling import accuracy_and_loss, behaves_differently_in_eval
from checks.skeleton.step_checks import gradient_clipping, train_mode_kept
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline, mlp_pipeline
from tests.test_verdicts import disagreements
from tests.zoo.family_bugs import (DropoutNormMLP, EvalLoggingStep, QuietLayersStep, ValidatingStep)
from tests.zoo.valid import AccumulatingStep, BatchNormCNN, clipped_step, dropout


# ---------------------------------------------------------------- gradient clipping

def _clip_norm_after_step(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    return loss.detach()


def _clip_before_backward_zeros(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad(set_to_none=False)  # the gradients are zeros, not None
    loss = loss_fn(model(x), y)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _clip_at_top_of_step(model, optimizer, loss_fn, x, y):
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # clips the previous call's gradients...
    optimizer.zero_grad()                                    # ...which are then thrown away
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _deprecated_clip_after_step(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    with pytest.warns(FutureWarning):
        torch.nn.utils.clip_grad_norm(model.parameters(), max_norm=0.5)
    return loss.detach()


def _clip_value_before_step(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    nn.utils.clip_grad_value_(model.parameters(), clip_value=1e-3)
    optimizer.step()
    return loss.detach()


def _clip_with_the_two_step_api(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = nn.utils.get_total_norm([p.grad for p in params])
    nn.utils.clip_grads_with_norm_(params, 0.5, norm)
    optimizer.step()
    return loss.detach()


def _lbfgs_closure_clipping(model, optimizer, loss_fn, x, y):
    """A closure optimizer (LBFGS) evaluates the loss and clips inside optimizer.step(closure)."""
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        return loss
    return optimizer.step(closure).detach()


def _lbfgs(params):
    return torch.optim.LBFGS(params, lr=0.1, max_iter=2)


class _AccumulatingClippedStep(AccumulatingStep):
    """Accumulation over 4 batches, clipping the summed gradient once, right before each optimizer step."""

    def __call__(self, model, optimizer, loss_fn, x, y):
        loss = loss_fn(model(x), y)
        (loss / self.every).backward()
        self.calls += 1
        if self.calls % self.every == 0:
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()


@pytest.mark.parametrize("step, words", [
    (_clip_norm_after_step, "after optimizer.step()"),
    (_deprecated_clip_after_step, "after optimizer.step()"),
    (_clip_before_backward_zeros, "before loss.backward()"),
    (_clip_at_top_of_step, "changed between"),
], ids=["norm after step", "deprecated clip_grad_norm after step", "before backward on zeros", "before zero_grad"])
def test_clipping_that_no_update_uses_fails(sample_data, step, words):
    result = gradient_clipping(replace(mlp_pipeline(TrainConfig(), sample_data), train_step=step))
    assert result.verdict.value == "FAIL" and words in result.message, result.message
    assert not disagreements([result])


@pytest.mark.parametrize("step", [clipped_step, _clip_value_before_step, _clip_with_the_two_step_api,
                                  _AccumulatingClippedStep(4)],
                         ids=["norm before step", "value before step", "get_total_norm + clip_grads_with_norm_",
                              "accumulation, clipped on stepping calls"])
def test_clipping_before_the_update_passes(sample_data, step):
    result = gradient_clipping(replace(mlp_pipeline(TrainConfig(), sample_data), train_step=step))
    assert result.verdict.value == "PASS", result.message
    assert not disagreements([result])


def test_clipping_inside_a_closure_optimizers_step_passes(sample_data):
    pipeline = replace(mlp_pipeline(TrainConfig(), sample_data), train_step=_lbfgs_closure_clipping,
                       make_optimizer=_lbfgs, make_scheduler=None)
    result = gradient_clipping(pipeline)
    assert result.verdict.value == "PASS", result.message


def test_a_step_that_does_not_clip_is_not_applicable(sample_data):
    result = gradient_clipping(default_pipeline(TrainConfig(), sample_data))
    assert result.verdict.value == "N/A" and result.value is None


def test_torch_clipping_is_restored_even_when_the_step_crashes(sample_data):
    originals = (clip_grad_module._clip_grads_with_norm_, nn.utils.clip_grad_value_, nn.utils.clip_grads_with_norm_)

    def crashing(model, optimizer, loss_fn, x, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gradient_clipping(replace(mlp_pipeline(TrainConfig(), sample_data), train_step=crashing))
    assert (clip_grad_module._clip_grads_with_norm_, nn.utils.clip_grad_value_,
            nn.utils.clip_grads_with_norm_) == originals


# ---------------------------------------------------------------- train mode

def _mode_pipeline(data, step, model_class=DropoutNormMLP):
    pipeline = mlp_pipeline(TrainConfig(), data)
    size = data.train.images[0].numel()
    return replace(pipeline, train_step=step,
                   make_model=lambda: model_class(pipeline.num_classes, size).to(pipeline.device))


def _eval_whole_step(model, optimizer, loss_fn, x, y):
    """model.eval() at the top (copied from an evaluation loop), model.train() at the end."""
    model.eval()
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    model.train()
    return loss.detach()


def _train_then_eval_step(model, optimizer, loss_fn, x, y):
    """Sets train mode itself before its forward, and leaves the model in eval mode for a log line."""
    model.train()
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    model.eval()
    return loss.detach()


class _FixedLoggingStep(EvalLoggingStep):
    def __call__(self, model, optimizer, loss_fn, x, y):
        loss = super().__call__(model, optimizer, loss_fn, x, y)
        model.train()
        return loss


class _FrozenBatchNormMLP(DropoutNormMLP):
    """Keeps its BatchNorm on the running statistics on purpose: train() puts it back in eval mode."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.net[2].eval()
        return self


@pytest.mark.parametrize("make_step, words", [
    (lambda data: EvalLoggingStep(), "BatchNorm1d"),
    (lambda data: ValidatingStep(*next(iter(data_batches(data)))), "Dropout"),
    (lambda data: QuietLayersStep(), "Dropout"),
    (lambda data: _eval_whole_step, "switches them out of train mode before its forward"),
], ids=["logging under eval", "val batch inside the step", "only the dropout/BN layers", "eval for the whole step"])
@pytest.mark.slow
def test_a_step_that_trains_in_eval_mode_fails(sample_data, make_step, words):
    result = train_mode_kept(_mode_pipeline(sample_data, make_step(sample_data)))
    assert result.verdict.value == "FAIL", result.message
    assert "eval mode" in result.message and words in result.message, result.message
    assert not disagreements([result])


def data_batches(data):
    pipeline = mlp_pipeline(TrainConfig(), data)
    return ((batch.x, batch.y) for batch in pipeline.batches("val", shuffle=False, augment=False))


def test_batchnorm_cnn_left_in_eval_fails_and_names_the_step(sample_data):
    shape = tuple(sample_data.train.images.shape[1:])
    pipeline = replace(mlp_pipeline(TrainConfig(check_steps=60), sample_data), train_step=EvalLoggingStep(every=15),
                       make_model=lambda: BatchNormCNN(sample_data.num_classes, shape))
    result = train_mode_kept(pipeline)
    assert result.verdict.value == "FAIL" and "BatchNorm2d" in result.message, result.message
    assert "step 15 switched the model (BatchNormCNN)" in result.message, result.message


@pytest.mark.parametrize("step, model_class", [
    (_FixedLoggingStep(), DropoutNormMLP), (_train_then_eval_step, DropoutNormMLP),
    (EvalLoggingStep(every=1000), DropoutNormMLP), (_FixedLoggingStep(), _FrozenBatchNormMLP),
], ids=["eval then train again", "train at the top, eval at the end", "never logs", "BatchNorm frozen by train()"])
@pytest.mark.slow
def test_a_step_that_trains_in_train_mode_passes(sample_data, step, model_class):
    result = train_mode_kept(_mode_pipeline(sample_data, step, model_class))
    assert result.verdict.value == "PASS", result.message


def test_the_valid_dropout_configuration_passes(sample_data):
    assert train_mode_kept(dropout(TrainConfig(), sample_data)).verdict.value == "PASS"


def test_eval_mode_on_a_model_that_computes_the_same_in_both_modes_does_not_apply(sample_data):
    pipeline = replace(default_pipeline(TrainConfig(), sample_data), train_step=EvalLoggingStep())
    result = train_mode_kept(pipeline)
    assert result.verdict.value == "N/A" and "harmless for this model" in result.message, result.message
    assert not disagreements([result])


def test_which_layers_behave_differently_in_eval():
    assert behaves_differently_in_eval(nn.Dropout(0.1)) and behaves_differently_in_eval(nn.BatchNorm2d(3))
    assert not behaves_differently_in_eval(nn.BatchNorm2d(3, track_running_stats=False))
    assert not behaves_differently_in_eval(nn.Linear(2, 2)) and not behaves_differently_in_eval(nn.ReLU())
    assert behaves_differently_in_eval(nn.LSTM(2, 2, num_layers=2, dropout=0.5))
    assert not behaves_differently_in_eval(DropoutNormMLP(10, 4))  # its forward never reads self.training


def test_the_reference_run_keeps_the_mode_the_step_left_and_removes_its_hooks(sample_data):
    pipeline = _mode_pipeline(sample_data, _train_then_eval_step)
    run = budgeted_training(pipeline, 20, watch=True)
    assert not run.model.training  # a snapshot's model.train() would have hidden the step's model.eval()
    assert not any(module._forward_pre_hooks for module in run.model.modules())
    assert run.modes.left_in_other_mode and not run.modes.trained_in_other_mode


def test_accuracy_and_loss_restores_the_mode_it_was_given(sample_data):
    pipeline = default_pipeline(TrainConfig(), sample_data)
    model = pipeline.make_model().eval()
    accuracy_and_loss(pipeline, model, "val", max_examples=64)
    assert not model.training
