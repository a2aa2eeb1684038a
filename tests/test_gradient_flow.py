"""gradient_flow on valid steps it used to FAIL (gradient accumulation, an EMA copy, intentional
freezing) and on the bugs it must still catch, each over several variants (issue 13)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checks.skeleton.gradient_checks import gradient_flow
from checks.engine.result import Verdict
from recipe.config import TrainConfig
from recipe.model import LinearClassifier
from recipe.pipeline import mlp_pipeline
from tests.zoo.bugs import (step_before_backward, step_without_zero_grad)
from tests.zoo.valid import WithEMA, ema_step


@pytest.fixture(scope="module")
def sgd(sample_data):
    return mlp_pipeline(TrainConfig(optimizer="sgd", lr=0.05), sample_data)


def model_of(pipeline, build):
    """`build(clean fresh model)` as the pipeline's model factory."""
    inner = pipeline.make_model
    return replace(pipeline, make_model=lambda: build(inner()).to(pipeline.device))


# ---------------------------------------------------------------- steps users write

class Accumulate:
    """Gradient accumulation over `every` calls. `start` shifts the call counter: the other checks
    share the step, so gradient_flow may meet it at any phase of its cycle."""

    def __init__(self, every: int, start: int = 0, zero_first: bool = False, set_to_none: bool = True,
                 divide: bool = True):
        self.every, self.calls, self.zero_first = every, start, zero_first
        self.set_to_none, self.divide = set_to_none, divide

    def __call__(self, model, optimizer, loss_fn, x, y):
        if self.zero_first and self.calls % self.every == 0:  # reset at the start of each window
            optimizer.zero_grad(set_to_none=self.set_to_none)
        loss = loss_fn(model(x), y)
        (loss / self.every if self.divide else loss).backward()
        self.calls += 1
        if self.calls % self.every == 0:
            optimizer.step()
            if not self.zero_first:
                optimizer.zero_grad(set_to_none=self.set_to_none)
        return loss.detach()


def step_then_zero_grad(model, optimizer, loss_fn, x, y):
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    model.zero_grad()  # reset after the update instead of before the backward
    return loss.detach()


def never_reset_scaled(model, optimizer, loss_fn, x, y):
    """Accumulation written without its reset: loss / 4 every call, zero_grad forgotten."""
    (loss_fn(model(x), y) / 4).backward()
    optimizer.step()
    return loss_fn(model(x), y).detach()


class Clipped:
    """The step LM and RL code writes: backward, clip_grad_norm_ (in place), step; `reset` False forgets
    zero_grad, `every` > 1 accumulates and clips at the update."""

    def __init__(self, max_norm: float = 1.0, reset: bool = True, every: int = 1, by_value: bool = False):
        self.max_norm, self.reset, self.every, self.by_value, self.calls = max_norm, reset, every, by_value, 0

    def __call__(self, model, optimizer, loss_fn, x, y):
        if self.reset and self.calls % self.every == 0:
            optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        (loss / self.every).backward()
        self.calls += 1
        if self.calls % self.every == 0:
            if self.by_value:
                torch.nn.utils.clip_grad_value_(model.parameters(), self.max_norm)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)
            optimizer.step()
        return loss.detach()


@pytest.mark.parametrize("step", [
    lambda: Clipped(1.0), lambda: Clipped(0.1), lambda: Clipped(1.0, every=4), lambda: Clipped(0.01, by_value=True),
    lambda: Accumulate(4), lambda: Accumulate(4, start=1), lambda: Accumulate(4, start=3),
    lambda: Accumulate(2), lambda: Accumulate(4, set_to_none=False),
    lambda: Accumulate(4, zero_first=True), lambda: Accumulate(4, start=2, zero_first=True),
    lambda: Accumulate(3, divide=False), lambda: step_then_zero_grad,
], ids=["clip-1", "clip-0.1", "acc4-clip-1", "clip-value", "acc4", "acc4-phase1", "acc4-phase3", "acc2", "acc4-zeros", "acc4-reset-first", "acc4-reset-first-phase2",
        "acc3-undivided", "zero-grad-after-step"])
def test_valid_gradient_accumulation_and_reset_orders_pass(mlp, sgd, step):
    for pipeline in (mlp, sgd):
        result = gradient_flow(replace(pipeline, train_step=step()))
        assert result.verdict is Verdict.PASS, result.message


@pytest.mark.parametrize("decay", [0.9, 0.99, 0.999])
def test_an_ema_shadow_copy_passes(mlp, decay):
    result = gradient_flow(replace(model_of(mlp, lambda net: WithEMA(net, decay)), train_step=ema_step))
    assert result.verdict is Verdict.PASS, result.message
    assert "not used by forward" in result.message and len(result.details["frozen"]) == 4


@pytest.mark.parametrize("step", [
    lambda: step_without_zero_grad, lambda: never_reset_scaled, lambda: Clipped(1.0, reset=False),
    lambda: Clipped(0.1, reset=False),  # not clip_grad_value_: clamping each element leaves no linear trace
], ids=["plain", "loss-over-4", "clip-norm-1", "clip-norm-0.1"])
def test_a_step_that_never_resets_gradients_fails(linear, mlp, sgd, step):
    for pipeline in (linear, mlp, sgd):
        result = gradient_flow(replace(pipeline, train_step=step()))
        assert result.verdict is Verdict.FAIL and result.details["gradients_never_reset"], result.message
        assert "zero_grad" in result.message


def test_step_before_backward_fails_with_any_optimizer(linear, mlp, sgd):
    for pipeline in (linear, mlp, sgd):
        result = gradient_flow(replace(pipeline, train_step=step_before_backward))
        assert result.verdict is Verdict.FAIL and result.details["lagging_update"], result.message
        assert "before loss.backward" in result.message


def test_a_warmup_from_zero_lr_is_not_a_lagging_update(mlp):
    """The first step has lr 0 (LambdaLR(step / warmup)): nothing moves then, and that is the schedule."""
    pipeline = replace(mlp, make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, s / 10)))
    result = gradient_flow(pipeline)
    assert result.verdict is Verdict.PASS, result.message
    assert result.details["lr_per_call"][0] == 0


# ---------------------------------------------------------------- freezing: intended or broken

def freeze(*names):
    def build(model):
        for name, p in model.named_parameters():
            if name in names or "*" in names:
                p.requires_grad_(False)
        return model
    return build


def frozen_zero_head(model):
    nn.init.zeros_(model.out.weight)
    model.out.weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("build", [freeze("hidden.weight"), freeze("hidden.weight", "hidden.bias"),
                                   freeze("out.bias")], ids=["backbone-weight", "backbone", "head-bias"])
def test_intentional_freezing_warns_but_does_not_fail(mlp, build):
    result = gradient_flow(model_of(mlp, build))
    assert result.verdict is Verdict.WARN, result.message
    assert "frozen" in result.message and result.value == 0.0


@pytest.mark.parametrize("build, pipeline_name", [(freeze("fc.weight"), "linear"), (freeze("*"), "mlp"),
                                                  (frozen_zero_head, "mlp")],
                         ids=["linear-weight", "everything", "zero-head"])
def test_freezing_that_stops_learning_from_the_input_fails(linear, mlp, build, pipeline_name):
    result = gradient_flow(model_of({"linear": linear, "mlp": mlp}[pipeline_name], build))
    assert result.verdict is Verdict.FAIL, result.message
    assert "frozen" in result.message and "cannot learn from its inputs" in result.message


# ---------------------------------------------------------------- the graph cut

class DetachedHidden(nn.Module):
    def __init__(self, n, c, how):
        super().__init__()
        self.hidden, self.out, self.how = nn.Linear(n, 64), nn.Linear(64, c), how

    def forward(self, x):
        x = x.flatten(1)
        if self.how == "detach":
            h = torch.relu(self.hidden(x)).detach()
        elif self.how == "data":
            h = torch.relu(F.linear(x, self.hidden.weight.data, self.hidden.bias.data))
        else:
            with torch.no_grad():
                h = torch.relu(self.hidden(x))
        return self.out(h)


class DataLinear(LinearClassifier):
    def forward(self, x):
        return F.linear(x.flatten(1), self.fc.weight.data, self.fc.bias)


@pytest.mark.parametrize("make", [lambda n, c: DetachedHidden(n, c, "detach"),
                                  lambda n, c: DetachedHidden(n, c, "data"),
                                  lambda n, c: DetachedHidden(n, c, "no_grad"), lambda n, c: DataLinear(c, n)],
                         ids=["detach", "dot-data", "no-grad-backbone", "linear-dot-data"])
def test_a_cut_graph_fails_naming_detach(mlp, make):
    n = mlp.data.train.images[0].numel()
    result = gradient_flow(replace(mlp, make_model=lambda: make(n, mlp.num_classes)))
    assert result.verdict is Verdict.FAIL and result.details["no_gradient"], result.message
    assert "detach" in result.message


def test_an_unused_trainable_layer_only_warns(mlp):
    def with_spare(model):
        model.spare = nn.Linear(4, 4)  # defined, never called
        return model
    result = gradient_flow(model_of(mlp, with_spare))
    assert result.verdict is Verdict.WARN and result.details["unused"] == ["spare.weight", "spare.bias"]
