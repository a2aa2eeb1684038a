"""False alarms and wrong verdicts (issue 13): valid setups the checks used to FAIL, and broken losses
they used to PASS. Each fault kind is tested over several variants, not one tuned example."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checks.baselines.overfit_checks import overfit_one_batch
from checks.skeleton.loader_checks import what_goes_into_the_net
from checks.engine.result import Verdict
from checks.skeleton.skeleton_checks import batch_independence, loss_at_init
from recipe.config import TrainConfig
from recipe.pipeline import mlp_pipeline


def features(pipeline) -> int:
    return pipeline.data.train.images[0].numel()


def with_model(pipeline, make):
    """`make(in_features, classes)` as the pipeline's model factory."""
    return replace(pipeline, make_model=lambda: make(features(pipeline), pipeline.num_classes).to(pipeline.device))


def small_head(model: nn.Sequential) -> nn.Sequential:
    with torch.no_grad():
        model[-1].weight.mul_(0.01)
        model[-1].bias.zero_()
    return model


# ---------------------------------------------------------------- 1. overfit against the loss's own floor

def smoothed_floor(eps: float, classes: int) -> float:
    """The exact minimum of cross-entropy with label smoothing eps: the entropy of the smoothed target."""
    target = torch.full((classes,), eps / classes, dtype=torch.float64)
    target[0] += 1 - eps
    return -(target * target.log()).sum().item()


@pytest.mark.parametrize("kind, eps", [("mlp", 0.05), ("mlp", 0.1), ("mlp", 0.2), ("linear", 0.1)])
def test_label_smoothing_is_judged_against_its_own_floor(linear, mlp, kind, eps):
    pipeline = replace({"mlp": mlp, "linear": linear}[kind], loss_fn=nn.CrossEntropyLoss(label_smoothing=eps))
    result = overfit_one_batch(pipeline)
    assert result.verdict is Verdict.PASS, result.message
    assert result.details["loss_floor"] == pytest.approx(smoothed_floor(eps, 10), abs=1e-3)  # the oracle
    assert result.value <= result.threshold == pytest.approx(result.details["loss_floor"] + 0.05)


def test_plain_cross_entropy_keeps_a_floor_of_zero(mlp):
    result = overfit_one_batch(mlp)
    assert result.verdict is Verdict.PASS and result.details["loss_floor"] < 1e-4


# ---------------------------------------------------------------- 2. batch norm: memorised in train mode

def bn_mlp(momentum: float):
    return lambda n, c: small_head(nn.Sequential(nn.Flatten(), nn.Linear(n, 128), nn.ReLU(), nn.Linear(128, 128),
                                                 nn.ReLU(), nn.BatchNorm1d(128, momentum=momentum), nn.Linear(128, c)))


def bn_cnn(momentum: float):
    return lambda n, c: small_head(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                                 nn.BatchNorm2d(16, momentum=momentum), nn.MaxPool2d(4),
                                                 nn.Flatten(), nn.Linear(16 * 49, c)))


def test_batchnorm_running_stats_lagging_after_few_steps_is_not_blamed_on_lr_or_loss(sample_data):
    """Fast learners stop after a handful of steps, before the running stats catch up with the batch."""
    results = []
    for make, lr in [(bn_mlp(0.1), 3e-2), (bn_mlp(0.01), 3e-2), (bn_cnn(0.1), 1e-2), (bn_cnn(0.01), 3e-2)]:
        pipeline = with_model(mlp_pipeline(TrainConfig(lr=lr), sample_data), make)
        results.append(overfit_one_batch(pipeline))
    assert all(r.verdict is not Verdict.FAIL for r in results), [r.message for r in results]
    lagging = [r for r in results if r.details["batch_accuracy"] < 1.0]
    assert lagging, "no variant reproduced the eval-mode miss: the test no longer tests the fault"
    for r in lagging:
        assert r.details["train_mode_accuracy"] == 1.0 and "BatchNorm running stats" in r.message


# ---------------------------------------------------------------- 3. a loss <= 0 before any training

def log_softmax_mlp(n, c):
    return nn.Sequential(*small_head(nn.Sequential(nn.Flatten(), nn.Linear(n, 128), nn.ReLU(), nn.Linear(128, c))),
                         nn.LogSoftmax(dim=1))


@pytest.mark.parametrize("kind, loss_fn", [
    ("linear", F.nll_loss),                                                  # zero logits: exactly 0
    ("mlp", F.nll_loss),                                                     # small logits: ~0, then negative
    ("mlp", lambda logits, y: F.nll_loss(F.softmax(logits, 1), y)),          # probabilities: in [-1, 0]
    ("linear", lambda logits, y: 0.0 * F.cross_entropy(logits, y)),          # a mask that zeroes everything
], ids=["nll-raw-linear", "nll-raw-mlp", "nll-on-probabilities", "zeroed-loss"])
def test_a_loss_at_or_below_zero_is_not_memorisation(linear, mlp, kind, loss_fn):
    result = overfit_one_batch(replace({"mlp": mlp, "linear": linear}[kind], loss_fn=loss_fn))
    assert result.verdict is Verdict.FAIL, result.message
    assert "log_softmax missing" in result.message or "wrong sign" in result.message
    assert "memorised" not in result.message


def test_nll_loss_after_a_log_softmax_model_passes(mlp):
    """The pytorch/examples pairing: its floor is 0, not the -inf of nll_loss on free logits."""
    result = overfit_one_batch(replace(with_model(mlp, log_softmax_mlp), loss_fn=F.nll_loss))
    assert result.verdict is Verdict.PASS, result.message
    assert result.details["loss_floor"] < 1e-3


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_softmax_before_cross_entropy_is_told_from_a_high_floor(linear, mlp, kind):
    pipeline = {"mlp": mlp, "linear": linear}[kind]
    inner = pipeline.make_model
    result = overfit_one_batch(replace(pipeline, make_model=lambda: nn.Sequential(inner(), nn.Softmax(dim=1))))
    assert result.verdict is Verdict.FAIL and "softmax sits before" in result.message, result.message


def test_probabilities_with_a_loss_that_takes_probabilities_pass(mlp):
    """A model ending in softmax is fine when the loss takes the log itself."""
    inner = mlp.make_model
    pipeline = replace(mlp, make_model=lambda: nn.Sequential(inner(), nn.Softmax(dim=1)),
                       loss_fn=lambda p, y: F.nll_loss(p.clamp_min(1e-12).log(), y))
    result = overfit_one_batch(pipeline)
    assert result.verdict is Verdict.PASS, result.message


# ---------------------------------------------------------------- 5. loss at init, graded

def reinit(make, init):
    def build(n, c):
        model = make(n, c)
        for layer in model.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                init(layer.weight)
        return model
    return build


def plain_mlp(n, c):
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 128), nn.ReLU(), nn.Linear(128, c))


def plain_cnn(n, c):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 49, c))


@pytest.mark.parametrize("make", [
    reinit(plain_mlp, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
    reinit(plain_mlp, nn.init.xavier_normal_),
    reinit(plain_mlp, lambda w: nn.init.normal_(w, std=0.05)),
    reinit(plain_cnn, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
], ids=["mlp-kaiming", "mlp-xavier", "mlp-normal-0.05", "cnn-kaiming"])
def test_a_modestly_confident_init_warns_with_the_fix(mlp, make):
    result = loss_at_init(with_model(mlp, make))
    assert result.verdict is Verdict.WARN, result.message
    assert "last layer small" in result.message
    assert 0.05 < result.details["excess"] <= result.threshold == pytest.approx(2 * math.log(10))


@pytest.mark.parametrize("change", [
    lambda p: with_model(p, reinit(plain_mlp, lambda w: nn.init.normal_(w, std=1.0))),
    lambda p: replace(p, loss_fn=lambda logits, y: 10 * F.cross_entropy(logits, y)),
    lambda p: replace(p, loss_fn=lambda logits, y: F.cross_entropy(logits, y, reduction="sum")),
    lambda p: replace(p, loss_fn=lambda logits, y: F.mse_loss(logits[:, 0], y.float())),
], ids=["mlp-normal-1.0", "loss-x10", "loss-summed", "mse-on-indices"])
def test_a_gross_loss_at_init_fails(mlp, change):
    result = loss_at_init(change(mlp))
    assert result.verdict is Verdict.FAIL, result.message
    assert result.details["excess"] > 2 * math.log(10)


# ---------------------------------------------------------------- 6. a step that calls the model's parts

class Parts(nn.Module):
    """A model whose step calls its parts itself (features, then head): there is no forward."""

    def __init__(self, n: int, c: int, conv: bool):
        super().__init__()
        self.features = (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten()) if conv
                         else nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU()))
        self.head = nn.Linear(4 * n if conv else 64, c)


def parts_step(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model.head(model.features(x)), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def flattening_step(model, optimizer, loss_fn, x, y):
    """The step flattens the images and feeds the MLP's layers one by one."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model.out(torch.relu(model.hidden(x.flatten(1)))), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("build", [
    lambda p: replace(with_model(p, lambda n, c: Parts(n, c, conv=False)), train_step=parts_step),
    lambda p: replace(with_model(p, lambda n, c: Parts(n, c, conv=True)), train_step=parts_step),
    lambda p: replace(p, train_step=flattening_step),
], ids=["mlp-parts", "cnn-parts", "mlp-layers-flattened"])
def test_the_input_is_captured_at_the_first_module_the_step_calls(mlp, build):
    pipeline = build(mlp)
    result = what_goes_into_the_net(pipeline)
    assert result.verdict is Verdict.PASS, result.message
    shape = result.details["input_stats"][0]["value"]
    assert shape[0] == pipeline.config.batch_size and math.prod(shape[1:]) == features(pipeline)


def test_a_step_that_calls_no_module_says_why_its_input_cannot_be_captured(mlp):
    def functional_step(model, optimizer, loss_fn, x, y):  # the layers' weights used directly, no module called
        optimizer.zero_grad(set_to_none=True)
        hidden = torch.relu(F.linear(x.flatten(1), model.hidden.weight, model.hidden.bias))
        loss = loss_fn(F.linear(hidden, model.out.weight, model.out.bias), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    result = what_goes_into_the_net(replace(mlp, train_step=functional_step))
    assert result.verdict is Verdict.NA and not result.verdict.blocks
    assert "cannot be captured" in result.message


# ---------------------------------------------------------------- 7. dead ReLUs are named

def negative_bias_mlp(n, c):
    model = small_head(plain_mlp(n, c))
    nn.init.constant_(model[1].bias, -10.0)  # "sparse ReLUs" overdone: none fires
    return model


def constant_second_layer(n, c, value=-0.1):
    model = small_head(nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                     nn.Linear(64, c)))
    nn.init.constant_(model[3].weight, value)  # ReLU outputs are >= 0, so every unit gets a negative input
    nn.init.zeros_(model[3].bias)
    return model


def constant_everywhere(n, c):
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, c))
    for layer, value in zip((model[1], model[3], model[5]), (0.01, -0.01, 0.01)):
        nn.init.constant_(layer.weight, value)
        nn.init.zeros_(layer.bias)
    return model


def negative_bias_cnn(n, c):
    model = small_head(plain_cnn(n, c))
    nn.init.constant_(model[0].bias, -10.0)
    return model


@pytest.mark.parametrize("make", [negative_bias_mlp, constant_second_layer, constant_everywhere, negative_bias_cnn],
                         ids=["negative-bias-mlp", "constant-layer", "constant-everywhere", "negative-bias-cnn"])
def test_a_zero_own_gradient_from_dead_relus_names_them(mlp, make):
    result = batch_independence(with_model(mlp, make))
    assert result.verdict is Verdict.FAIL and result.value == 0.0, result.message
    assert "dead" in result.message
    if make in (constant_second_layer, constant_everywhere):
        assert "constant value" in result.message


class FrozenExtractor(nn.Module):
    """A feature extractor run under no_grad, a head trained on top: the input gets no gradient at all."""

    def __init__(self, n, c, mix_batch=False, ignore_input=False):
        super().__init__()
        self.backbone, self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU()), nn.Linear(64, c)
        self.mix_batch, self.ignore_input = mix_batch, ignore_input

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(torch.zeros_like(x) if self.ignore_input else x)
        if self.mix_batch:  # a bug: every example sees the batch mean
            features = features + features.mean(0, keepdim=True)
        return self.head(features)


class DetachedMiddle(nn.Module):
    """An MLP whose hidden activation is detached: its first layer never trains (gradient_flow's fault)."""

    def __init__(self, n, c):
        super().__init__()
        self.first, self.second = nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU()), nn.Linear(64, c)

    def forward(self, x):
        return self.second(self.first(x).detach())


@pytest.mark.parametrize("make", [lambda n, c: FrozenExtractor(n, c), DetachedMiddle], ids=["no-grad-extractor",
                                                                                          "detached-middle"])
def test_an_input_without_gradient_is_judged_by_changing_inputs(mlp, make):
    """It used to crash (x.grad is None): an ERROR on code that runs."""
    result = batch_independence(with_model(mlp, make))
    assert result.verdict is Verdict.PASS, result.message
    assert result.details["input_gets_no_gradient"] and "graph is cut" in result.message


@pytest.mark.parametrize("fault, words", [("mix_batch", "other examples"), ("ignore_input", "ignores its input")])
def test_behind_a_cut_graph_mixing_or_ignoring_the_input_still_fails(mlp, fault, words):
    result = batch_independence(with_model(mlp, lambda n, c: FrozenExtractor(n, c, **{fault: True})))
    assert result.verdict is Verdict.FAIL and words in result.message, result.message


class DropoutInEvalToo(nn.Module):
    """Dropout forced on in forward (an MC-dropout leftover): evaluation draws random numbers too."""

    def __init__(self, n, c):
        super().__init__()
        self.net, self.drop = nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU()), nn.Dropout(0.2)
        self.head = nn.Linear(64, c)

    def forward(self, x):
        self.drop.train()
        return self.head(self.drop(self.net(x)))


def test_a_random_layer_left_on_in_eval_is_named_when_two_seeded_runs_differ(mlp):
    """The reference run evaluates between steps and the short rerun does not: a layer that draws in eval mode
    shifts the draws that follow, and the runs differ. The message used to name only unseeded RNGs."""
    from checks.skeleton.skeleton_checks import determinism

    result = determinism(with_model(mlp, DropoutInEvalToo))
    assert result.verdict is Verdict.FAIL and "active in eval mode" in result.message, result.message
    assert determinism(mlp).verdict is Verdict.PASS
