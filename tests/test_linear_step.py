"""The closed-form linear step: the same training as autograd's, and autograd whenever it cannot be."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from recipe.config import TrainConfig
from recipe.linear_step import closed_form_applies, linear_softmax_step
from recipe.model import LinearClassifier
from recipe.pipeline import default_pipeline, mlp_pipeline
from recipe.optim import make_optimizer
from recipe.steps import train_step


def _batches(n_steps: int, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 28, 28, generator=generator) * 2,
             torch.randint(0, 10, (batch,), generator=generator)) for _ in range(n_steps)]


def _random_linear(seed: int = 0) -> LinearClassifier:
    model = LinearClassifier(10, 28 * 28)
    with torch.no_grad():  # not the zero init: a non-trivial softmax from the first step
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
    return model


def _train(step, model, config, batches):
    optimizer = make_optimizer(config, model.parameters())
    losses, grads = [], []
    for x, y in batches:
        losses.append(step(model, optimizer, F.cross_entropy, x, y).item())
        grads.append([p.grad.clone() for p in model.parameters()])
    return losses, grads, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("config", [
    TrainConfig(optimizer="adam", lr=1e-3),
    TrainConfig(optimizer="adam", lr=1e-2, weight_decay=1e-3),
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4),
], ids=["adam", "adam-weight-decay", "sgd-momentum"])
@pytest.mark.parametrize("batch", [64, 7])
def test_matches_autograd_step_by_step(config, batch):
    model = _random_linear()
    twin = copy.deepcopy(model)
    batches = _batches(6, batch)
    x0, y0 = batches[0]
    assert closed_form_applies(model, F.cross_entropy, x0, y0)
    fast_losses, fast_grads, fast_params = _train(linear_softmax_step, model, config, batches)
    ref_losses, ref_grads, ref_params = _train(train_step, twin, config, batches)
    assert fast_losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-7)
    for fast, ref in zip(fast_grads, ref_grads):
        for g_fast, g_ref in zip(fast, ref):
            torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-6)
    for p_fast, p_ref in zip(fast_params, ref_params):
        torch.testing.assert_close(p_fast, p_ref, rtol=1e-5, atol=1e-6)


def test_a_wrong_gradient_would_be_seen():
    """The comparison above can fail: a closed form without the 1/B mean differs from autograd."""
    model = _random_linear()
    x, y = _batches(1, 16)[0]
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        residual = model(x).softmax(1) - F.one_hot(y, 10).float()
    with pytest.raises(AssertionError):
        torch.testing.assert_close(residual.t().mm(x.flatten(1)), model.fc.weight.grad, rtol=1e-5, atol=1e-6)


class ScaledLinear(LinearClassifier):
    def forward(self, x):
        return super().forward(x) * 2.0


def _frozen() -> nn.Module:
    model = LinearClassifier(10, 28 * 28)
    model.fc.weight.requires_grad_(False)
    return model


def _hooked() -> nn.Module:
    model = LinearClassifier(10, 28 * 28)
    model.register_forward_pre_hook(lambda module, args: None)
    return model


def _gradient_hooked() -> nn.Module:
    model = LinearClassifier(10, 28 * 28)
    model.fc.weight.register_hook(lambda grad: grad.clamp(-1e-3, 1e-3))  # clips: changes the step
    return model


@pytest.mark.parametrize("make_model, loss_fn", [
    (lambda: ScaledLinear(10, 28 * 28), F.cross_entropy),
    (_frozen, F.cross_entropy),
    (_hooked, F.cross_entropy),
    (_gradient_hooked, F.cross_entropy),
    (lambda: LinearClassifier(10, 28 * 28), lambda logits, y: F.cross_entropy(logits, y) * 2),
], ids=["subclass", "frozen", "hooked", "gradient-hook", "other-loss"])
def test_anything_else_goes_through_autograd(make_model, loss_fn):
    model, twin = make_model(), make_model()  # not deepcopy: it drops tensor hooks
    twin.load_state_dict(model.state_dict())
    x, y = _batches(1, 32)[0]
    assert not closed_form_applies(model, loss_fn, x, y)
    config = TrainConfig(optimizer="sgd", lr=0.5)
    fast = linear_softmax_step(model, make_optimizer(config, model.parameters()), loss_fn, x, y)
    ref = train_step(twin, make_optimizer(config, twin.parameters()), loss_fn, x, y)
    assert torch.equal(fast, ref)
    for p_fast, p_ref in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p_fast, p_ref)  # bit-identical: the very same code ran


def test_the_default_pipeline_takes_the_fast_path(sample_data):
    """Guards the speed-up: if the default model or batches drift from the plain case, this says so."""
    pipeline = default_pipeline(TrainConfig(), sample_data)
    batch = next(iter(pipeline.batches("train", shuffle=True, augment=False, generator=torch.Generator())))
    assert pipeline.train_step is linear_softmax_step
    assert closed_form_applies(pipeline.make_model(), pipeline.loss_fn, batch.x, batch.y)
    assert mlp_pipeline(TrainConfig(), sample_data).train_step is train_step
