"""Real models as their users train them, plugged in with `--pipeline tests/pipelines/real_models.py:NAME`.

Each factory is `NAME(config, data) -> Pipeline`, built the way a user adapts a published model to
small images: `dataclasses.replace` on `default_pipeline` with the user's model, loss, optimizer and
schedule. The shapes come from the data (1x28x28 grey digits or 3x32x32 colour digits), so the same
factory serves both. The optimizers and schedules are the ones each model's users reach for:

- resnet18: torchvision's, with the CIFAR stem (3x3 conv, stride 1, no max-pool), SGD 0.1 momentum 0.9
  weight decay 5e-4 (nesterov), cosine over the epochs, as in kuangliu/pytorch-cifar;
- residual_cnn: two residual blocks with BatchNorm, Adam 1e-3 (the case that FAILed overfit_one_batch);
- mobilenet_v3_small: torchvision's, its first conv taking the data's channels, Adam 1e-3, cosine per step;
- vit: patch 4, 4 pre-norm layers, AdamW 1e-3 weight decay 0.05, linear warm-up then cosine per step;
- lstm_rows: an LSTM reading the image one row per time step, Adam 1e-3;
- groupnorm_cnn: conv-GroupNorm-ReLU, SGD 0.05 momentum 0.9, StepLR per epoch;
- compiled_cnn: residual_cnn's model under torch.compile (see `compiled_cnn` for the backend);
- channels_last_cnn: residual_cnn's model and its inputs in channels_last memory format.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn, optim
from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small
from torchvision.models import resnet18 as tv_resnet18

from recipe.config import TrainConfig
from recipe.data import DataBundle
from recipe.pipeline import Pipeline, default_pipeline


def _in_shape(data: DataBundle) -> tuple[int, int, int]:
    return tuple(data.train.images.shape[1:])


def _steps_per_epoch(config: TrainConfig, data: DataBundle) -> int:
    return math.ceil(len(data.train) / config.batch_size)


def _user_pipeline(name: str, config: TrainConfig, data: DataBundle, make_model, **replaced) -> Pipeline:
    """default_pipeline with the user's model, cross-entropy and the plain autograd step."""
    base = default_pipeline(config, data)
    fields = dict(name=name, make_model=lambda: make_model().to(base.device), loss_fn=nn.CrossEntropyLoss(),
                  train_step=_train_step, make_scheduler=None, scheduler_interval="step")
    fields.update(replaced)
    return dataclasses.replace(base, **fields)


def _train_step(model, optimizer, loss_fn, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _warmup_cosine(total_steps: int, warmup_steps: int):
    """LambdaLR factor: linear from 1/warmup to 1 over `warmup_steps`, then cosine to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * done))
    return factor


# ---------------------------------------------------------------- the models

def small_image_resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision resnet18 with the usual small-image stem: 3x3 conv, stride 1, no max-pool."""
    model = tv_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1x1 conv-BN shortcut when the width or stride changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """A stem conv, two residual blocks (16 then 32 channels, the second at stride 2), global pooling, a head."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(ResidualBlock(16, 16), ResidualBlock(16, 32, stride=2))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def small_image_mobilenet_v3(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision mobilenet_v3_small, its first conv taking the data's channels."""
    model = tv_mobilenet_v3_small(num_classes=num_classes)
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride,
                                     first.padding, bias=False)
    return model


class SmallViT(nn.Module):
    """Patches of 4x4 embedded by a strided conv, a class token, learned positions, 4 pre-norm encoder layers."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, dim: int = 64, depth: int = 4,
                 heads: int = 4, patch: int = 4):
        super().__init__()
        channels, height, width = in_shape
        patches = (height // patch) * (width // patch)
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)                     # (B, patches, dim)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.position
        return self.head(self.norm(self.encoder(tokens)[:, 0]))              # the class token


class RowLSTM(nn.Module):
    """An LSTM reading one image row per time step (all channels of the row as its features)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, hidden: int = 128):
        super().__init__()
        channels, _, width = in_shape
        self.lstm = nn.LSTM(channels * width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C*W)
        _, (last, _) = self.lstm(rows)
        return self.head(last[-1])


def groupnorm_net(in_channels: int, num_classes: int) -> nn.Module:
    """conv-GroupNorm-ReLU three times (the last two at stride 2), global pooling, a head."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU()]
    return nn.Sequential(*block(in_channels, 32, 1), *block(32, 64, 2), *block(64, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


# ---------------------------------------------------------------- the pipelines, as their users train them

def resnet18(config: TrainConfig, data: DataBundle) -> Pipeline:
    channels = _in_shape(data)[0]
    return _user_pipeline(
        "resnet18", config, data, lambda: small_image_resnet18(channels, data.num_classes),
        make_optimizer=lambda params: optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
        make_scheduler=lambda optimizer: optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs),
        scheduler_interval="epoch")


def residual_cnn(config: TrainConfig, data: DataBundle) -> Pipeline:
    channels = _in_shape(data)[0]
    return _user_pipeline("residual-cnn", config, data, lambda: ResidualCNN(channels, data.num_classes),
                          make_optimizer=lambda params: optim.Adam(params, lr=1e-3))


def mobilenet_v3_small(config: TrainConfig, data: DataBundle) -> Pipeline:
    channels, total = _in_shape(data)[0], config.epochs * _steps_per_epoch(config, data)
    return _user_pipeline(
        "mobilenet-v3-small", config, data, lambda: small_image_mobilenet_v3(channels, data.num_classes),
        make_optimizer=lambda params: optim.Adam(params, lr=1e-3),
        make_scheduler=lambda optimizer: optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total))


def vit(config: TrainConfig, data: DataBundle) -> Pipeline:
    total = config.epochs * _steps_per_epoch(config, data)
    warmup = max(1, total // 20)  # 5% of the run, as the DeiT/timm recipes scale theirs
    return _user_pipeline(
        "small-vit", config, data, lambda: SmallViT(_in_shape(data), data.num_classes),
        make_optimizer=lambda params: optim.AdamW(params, lr=1e-3, weight_decay=0.05),
        make_scheduler=lambda optimizer: optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total, warmup)))


def lstm_rows(config: TrainConfig, data: DataBundle) -> Pipeline:
    return _user_pipeline("lstm-rows", config, data, lambda: RowLSTM(_in_shape(data), data.num_classes),
                          make_optimizer=lambda params: optim.Adam(params, lr=1e-3))


def groupnorm_cnn(config: TrainConfig, data: DataBundle) -> Pipeline:
    channels = _in_shape(data)[0]
    return _user_pipeline(
        "groupnorm-cnn", config, data, lambda: groupnorm_net(channels, data.num_classes),
        make_optimizer=lambda params: optim.SGD(params, lr=0.05, momentum=0.9),
        make_scheduler=lambda optimizer: optim.lr_scheduler.StepLR(optimizer, step_size=max(1, config.epochs // 3),
                                                                    gamma=0.1),
        scheduler_interval="epoch")


def compiled_cnn(config: TrainConfig, data: DataBundle) -> Pipeline:
    """residual_cnn's model under torch.compile. CPU inductor compiles C++ with the system compiler for
    every fresh model and input shape (the checks build many fresh models and feed several batch
    sizes), minutes on 2 cores; `aot_eager` traces through dynamo and AOTAutograd the same way, the
    part where compiled models break, and runs the traced graph eagerly."""
    channels = _in_shape(data)[0]
    return _user_pipeline(
        "compiled-cnn", config, data,
        lambda: torch.compile(ResidualCNN(channels, data.num_classes), backend="aot_eager", dynamic=False),
        make_optimizer=lambda params: optim.Adam(params, lr=1e-3))


def _channels_last_step(model, optimizer, loss_fn, x, y):
    """The usual loop line: `images = images.to(memory_format=torch.channels_last)` before the forward."""
    return _train_step(model, optimizer, loss_fn, x.contiguous(memory_format=torch.channels_last), y)


def channels_last_cnn(config: TrainConfig, data: DataBundle) -> Pipeline:
    channels = _in_shape(data)[0]
    return _user_pipeline(
        "channels-last-cnn", config, data,
        lambda: ResidualCNN(channels, data.num_classes).to(memory_format=torch.channels_last),
        make_optimizer=lambda params: optim.Adam(params, lr=1e-3), train_step=_channels_last_step)


REAL_MODELS = {"resnet18": resnet18, "residual_cnn": residual_cnn, "mobilenet_v3_small": mobilenet_v3_small,
               "vit": vit, "lstm_rows": lstm_rows, "groupnorm_cnn": groupnorm_cnn, "compiled_cnn": compiled_cnn,
               "channels_last_cnn": channels_last_cnn}
