"""effective_linearity: a multi-layer model whose activations are missing computes one affine map,
whichever way the activation went missing, in an MLP or a CNN, on grey or colour images; models
that are non-linear by design pass by a wide margin, and a linear model by design is N/A."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checks.skeleton.capacity_checks import effective_linearity
from checks.engine.result import Verdict
from recipe.config import TrainConfig
from recipe.pipeline import default_pipeline, mlp_pipeline
from tests.synthetic import write_cifar10
from tests.test_verdicts import disagreements
from tests.zoo.family_bugs import (MisspelledActivationMLP, ReluNeverCalledMLP)
from tests.zoo.valid import DropoutMLP, WithEMA, batchnorm_cnn, small_cnn

HIDDEN = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 3x32x32 colour data set."""
    from recipe.data import load_data

    folder = tmp_path_factory.mktemp("shapes")
    write_cifar10(folder)
    return load_data("cifar10", folder, download=False)


# ---------------------------------------------------------------- activation missing, several ways

class TwoLinears(nn.Module):
    """nn.Sequential(Flatten, Linear, Linear): the ReLU was never written."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes))

    def forward(self, x):
        return self.net(x)


class ReluResultDiscarded(nn.Module):
    """`F.relu(h)` on a line of its own: the result is thrown away (not in place)."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        F.relu(h)
        return self.fc2(h)


class ReluOnTheWrongTensor(nn.Module):
    """The activation is applied to the input variable instead of the hidden one."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        h = self.fc1(x)
        x = torch.relu(x)  # bug: meant h = torch.relu(h)
        return self.fc2(h)


class ReluOnTheInputOnly(nn.Module):
    """relu moved before the first layer: the model is non-linear in x, but fc1 -> fc2 is one map."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(torch.relu(x.flatten(1))))


class ReluOnTheLogits(nn.Module):
    """relu moved after the last layer."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes)

    def forward(self, x):
        return torch.relu(self.fc2(self.fc1(x.flatten(1))))


class OneOfTwoActivationsMissing(nn.Module):
    """Linear-ReLU-Linear-Linear: the deeper activation was dropped in a refactor."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 32),
                                 nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


class DropoutWhereTheReluWas(nn.Module):
    """Linear-Dropout-Linear: dropout is no activation, and in eval mode it is the identity."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN), nn.Dropout(0.5),
                                 nn.Linear(HIDDEN, num_classes))

    def forward(self, x):
        return self.net(x)


class LogSoftmaxOverTwoLinears(nn.Module):
    """An affine body behind a LogSoftmax head (with nll_loss): the head must not hide it."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes),
                                 nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.net(x)


class ConvBatchNormConvNoActivation(nn.Module):
    """Conv-BN-Conv-BN-pool-Linear with no activation: BatchNorm in eval mode is affine per channel."""

    def __init__(self, num_classes: int, in_features: int, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.AvgPool2d(2))
        self.head = nn.LazyLinear(num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class CNNWithALinearHead(nn.Module):
    """Conv-ReLU-pool, then fc1 -> fc2 with the head's ReLU missing."""

    def __init__(self, num_classes: int, in_features: int, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1, self.fc2 = nn.LazyLinear(HIDDEN), nn.Linear(HIDDEN, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(self.features(x).flatten(1)))


class Float32Only(nn.Module):
    """Two linear maps, the second a plain float32 tensor attribute (not a buffer): runs in float32 only."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.projection = torch.randn(HIDDEN, num_classes, generator=torch.Generator().manual_seed(0)) / 8

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1))) @ self.projection


MISSING = [TwoLinears, ReluNeverCalledMLP, MisspelledActivationMLP, ReluResultDiscarded, ReluOnTheWrongTensor,
           ReluOnTheInputOnly, ReluOnTheLogits, OneOfTwoActivationsMissing, DropoutWhereTheReluWas,
           LogSoftmaxOverTwoLinears, Float32Only]
CNNS_MISSING = [ConvBatchNormConvNoActivation, CNNWithALinearHead]


def _with_model(pipeline, build):
    size = pipeline.data.train.images[0].numel()
    return replace(pipeline, make_model=lambda: build(pipeline.num_classes, size))


@pytest.mark.parametrize("model_class", MISSING, ids=lambda c: c.__name__)
def test_an_mlp_with_its_activation_missing_fails(mlp, model_class):
    result = effective_linearity(_with_model(mlp, model_class))
    assert result.verdict is Verdict.FAIL, result.message
    assert "activation" in result.message.lower()
    assert not disagreements([result])


@pytest.mark.parametrize("data_name", ["sample", "shapes"])
@pytest.mark.parametrize("model_class", CNNS_MISSING, ids=lambda c: c.__name__)
def test_a_cnn_with_its_activation_missing_fails_on_grey_and_colour(request, sample_data, data_name, model_class):
    data = sample_data if data_name == "sample" else request.getfixturevalue("shapes")
    channels = data.train.images.shape[1]
    pipeline = mlp_pipeline(TrainConfig(), data)
    pipeline = replace(pipeline, make_model=lambda: model_class(data.num_classes, 0, channels))
    result = effective_linearity(pipeline)
    assert result.verdict is Verdict.FAIL, result.message
    assert not disagreements([result])


def test_the_float32_fallback_says_so(mlp):
    result = effective_linearity(_with_model(mlp, Float32Only))
    assert result.details["precision"] == "float32" and result.verdict is Verdict.FAIL


# ---------------------------------------------------------------- non-linear by design

class TanhMLPSmallInit(nn.Module):
    """tanh behind a first layer initialised 100x small: nearly linear at init, but not affine."""

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, num_classes)
        with torch.no_grad():
            self.fc1.weight.mul_(0.01)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


class ResidualCNN(nn.Module):
    """A ResNet-style block (skip connections, BatchNorm, a strided 1x1 conv)."""

    def __init__(self, num_classes: int, in_features: int, channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.down, self.head = nn.Conv2d(16, 32, 1, stride=2), nn.Linear(32, num_classes)

    def forward(self, x):
        h = self.stem(x)
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))
        return self.head(F.relu(self.down(h)).mean((2, 3)))


class TinyViT(nn.Module):
    """Patch embedding, one attention block (nn.MultiheadAttention) and a GELU MLP."""

    def __init__(self, num_classes: int, in_features: int, channels: int = 1):
        super().__init__()
        self.patch = nn.Conv2d(channels, 32, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        a = self.norm1(tokens)
        tokens = tokens + self.attention(a, a, a)[0]
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens.mean(1))


class LinearBottleneck(nn.Module):
    """MobileNetV2's inverted residual: its 1x1 projection has no activation by design."""

    def __init__(self, num_classes: int, in_features: int, channels: int = 1):
        super().__init__()

        def block(width_in, width_out):
            wide = 4 * width_in
            return nn.Sequential(nn.Conv2d(width_in, wide, 1), nn.BatchNorm2d(wide), nn.ReLU6(),
                                 nn.Conv2d(wide, wide, 3, padding=1, groups=wide), nn.BatchNorm2d(wide), nn.ReLU6(),
                                 nn.Conv2d(wide, width_out, 1), nn.BatchNorm2d(width_out))
        self.stem = nn.Sequential(nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU6())
        self.block1, self.block2 = block(8, 16), block(16, 16)
        self.last, self.head = nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU6()), nn.Linear(64, num_classes)

    def forward(self, x):
        h = self.block1(self.stem(x))
        h = h + self.block2(h)
        return self.head(self.last(h).mean((2, 3)))


def test_the_clean_mlp_is_clearly_non_affine(mlp):
    result = effective_linearity(mlp)
    assert result.verdict is Verdict.PASS, result.message
    assert result.value > 1e5 * result.threshold  # measured ~0.9 against 1e-7: no near miss
    assert not disagreements([result])


@pytest.mark.parametrize("model_class", [DropoutMLP, TanhMLPSmallInit], ids=lambda c: c.__name__)
def test_non_linear_mlps_pass(mlp, model_class):
    result = effective_linearity(_with_model(mlp, model_class))
    assert result.verdict is Verdict.PASS, result.message
    assert result.value > 100 * result.threshold


def _own_model(model_class):
    def build(config, data):
        channels = data.train.images.shape[1]
        return replace(mlp_pipeline(config, data), make_model=lambda: model_class(data.num_classes, 0, channels))
    build.__name__ = model_class.__name__
    return build


@pytest.mark.parametrize("data_name", ["sample", "shapes"])
@pytest.mark.parametrize("build", [batchnorm_cnn, small_cnn, _own_model(ResidualCNN), _own_model(TinyViT)],
                         ids=lambda build: build.__name__)
@pytest.mark.slow
def test_non_linear_cnns_and_attention_pass_on_grey_and_colour(request, sample_data, data_name, build):
    data = sample_data if data_name == "sample" else request.getfixturevalue("shapes")
    result = effective_linearity(build(TrainConfig(), data))
    assert result.verdict is Verdict.PASS, result.message
    assert result.value > 100 * result.threshold
    assert not disagreements([result])


def test_a_linear_bottleneck_by_design_warns_and_does_not_fail(sample_data):
    pipeline = replace(mlp_pipeline(TrainConfig(), sample_data), make_model=lambda: LinearBottleneck(10, 0))
    result = effective_linearity(pipeline)
    assert result.verdict is Verdict.WARN, result.message
    assert "block1.6 -> block2.0" in result.message and "bottleneck" in result.message
    assert not disagreements([result])


# ---------------------------------------------------------------- does not apply

def test_the_linear_classifier_is_linear_by_design(linear):
    result = effective_linearity(linear)
    assert result.verdict is Verdict.NA and "linear model by design" in result.message


def test_an_unused_ema_copy_is_not_counted_as_a_layer(sample_data):
    pipeline = default_pipeline(TrainConfig(), sample_data)
    inner = pipeline.make_model
    result = effective_linearity(replace(pipeline, make_model=lambda: WithEMA(inner())))
    assert result.verdict is Verdict.NA and "1 weight layer" in result.message


def test_outputs_that_do_not_vary_at_init_are_not_judged(mlp):
    def zero_init():
        model = TwoLinears(10, 784)
        for p in model.parameters():
            nn.init.zeros_(p)
        return model
    result = effective_linearity(replace(mlp, make_model=zero_init))
    assert result.verdict is Verdict.NA and "do not vary" in result.message


def test_activations_the_real_inputs_never_reach_are_named_apart_from_missing_ones(mlp):
    """Inputs divided by 255 twice: the ReLUs exist, but every unit stays on one side for all real inputs."""
    inner = mlp.batches

    def batches(split, **kwargs):
        for batch in inner(split, **kwargs):
            yield replace(batch, x=batch.x / 255 / 255)
    result = effective_linearity(replace(mlp, batches=batches))
    assert result.verdict is Verdict.FAIL, result.message
    assert "no unit changes side" in result.message and "activation is missing" not in result.message
    missing = effective_linearity(_with_model(mlp, TwoLinears))
    assert "activation is missing" in missing.message and "no unit changes side" not in missing.message


class DeepBatchNormGELU(nn.Module):
    """Eight Linear-BatchNorm-GELU blocks with a small init: at init in eval mode BatchNorm's running
    statistics (mean 0, variance 1) normalise nothing, so the activations shrink ~25x a block to where GELU
    is affine, as mobilenet_v3_small's Hardswish did (its features.12 -> classifier chain read 3.7e-9)."""

    def __init__(self, classes: int, size: int, activation=nn.GELU):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(size, 64)]
        for _ in range(8):
            linear = nn.Linear(64, 64)
            nn.init.normal_(linear.weight, std=0.005)
            layers += [nn.BatchNorm1d(64), activation(), linear]
        self.net = nn.Sequential(*layers, nn.BatchNorm1d(64), activation(), nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)


def test_batchnorm_statistics_are_measured_before_the_test(mlp):
    """The test runs in eval mode on running statistics measured on train batches: the deep BN + GELU net
    passes; the same net with its activations removed still FAILs."""
    clean = effective_linearity(_with_model(mlp, DeepBatchNormGELU))
    assert clean.verdict is Verdict.PASS, clean.message
    removed = effective_linearity(_with_model(mlp, lambda c, s: DeepBatchNormGELU(c, s, activation=nn.Identity)))
    assert removed.verdict is Verdict.FAIL and "activation" in removed.message.lower(), removed.message
