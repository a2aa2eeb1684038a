"""The Pipeline contract: the single source of truth for what trains, holding the user's *real* code.

`fit` and every check call these same factories and this same step; nothing else decides how the
model trains. A pipeline factory is any callable `build(config: TrainConfig, data: DataBundle) ->
Pipeline`. The CLI and `pytest checks/` load the data once and pass it in; a factory may use it (as
`default_pipeline` does) or load its own. Point the tools at yours with `--pipeline mymodule:build`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Callable, Iterable

import torch
from torch import nn

from recipe.augment import AUGMENTATIONS
from recipe.config import TrainConfig
from recipe.data import BatchFn, DataBundle, NormStats, TensorBatches, norm_stats
from recipe.errors import RecipeError
from recipe.features import FeatureBatches, feature_stats
from recipe.linear_step import linear_softmax_step
from recipe.model import LinearClassifier, MLPClassifier
from recipe.optim import make_optimizer, make_scheduler
from recipe.steps import StepFn, train_step

DEFAULT_PIPELINE = "recipe.pipeline:default_pipeline"
SCHEDULER_INTERVALS = ("step", "epoch")
RUN_TIME_SETTINGS = ("seed",)  # read from `config` when a run starts, never baked into a factory


@dataclass(frozen=True)
class Pipeline:
    """What a classifier's training code is made of, as `fit` runs it and the checks see it.

    - `data`: raw splits and class names, the source every example is traced back to.
    - `norm`: the normalisation stats the batches use (x = (pixels/255 - mean) / std for uint8; pixels
      are first scaled to [0, 1] by `data.value_range`, the declared range of the raw pixels). Given
      as floats, lists, arrays or tensors, it is held as (C, 1, 1) on the data's device. For feature
      vectors it holds one mean and std per feature, (D, 1, 1), applied to raw rows as (x - mean) / std
      (recipe/features.py); token pipelines normalise nothing and hold None.
    - `batches(split, *, shuffle, augment, generator)`: yields Batch(x, y, idx), x exactly as the
      model receives it and idx the examples' positions in `data.<split>`.
    - `augment`: the optional augmentation on float [0, 1] batches, or None.
    - `make_model()`: a fresh, untrained nn.Module on `device` mapping x to (B, C) logits, returned alone,
      first in a tuple, under a dict's "logits" key or as `.logits` (recipe/outputs.py reads all four).
    - `loss_fn(logits, y)`, `make_optimizer(params)`, `train_step(model, opt, loss_fn, x, y) -> loss tensor`.
    - `make_scheduler(optimizer)`: an optional LR scheduler; `scheduler_interval` says whether
      `fit` steps it after every batch ("step") or after every epoch ("epoch").
    - `config`: seed, epochs and the other settings.
    - `derived_from`: the config the factories were built from (set by `build_pipeline`). A
      pipeline whose `config` was replaced afterwards is rejected, so no setting can live in two
      places that disagree: rebuild it from the new config instead.
    """
    name: str
    data: DataBundle
    norm: NormStats | None  # None for token sequences; per feature (D values) for feature vectors
    batches: BatchFn
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    train_step: StepFn
    config: TrainConfig
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None
    scheduler_interval: str = "step"
    derived_from: TrainConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, TrainConfig):
            raise RecipeError(f"Pipeline.config must be a recipe.config.TrainConfig, got {type(self.config).__name__}")
        if not isinstance(self.data, DataBundle):
            raise RecipeError(f"Pipeline.data must be a recipe.data.DataBundle, got {type(self.data).__name__}")
        for name in ("batches", "make_model", "loss_fn", "make_optimizer", "train_step"):
            if not callable(getattr(self, name)):
                raise RecipeError(f"Pipeline.{name} must be callable, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.norm, NormStats) and not (self.norm is None and self.data.kind == "tokens"):
            raise RecipeError(f"Pipeline.norm must be a recipe.data.NormStats (NormStats(mean=..., std=...)), got "
                              f"{type(self.norm).__name__} (only token pipelines, which normalise nothing, take None)")
        images = self.data.train.images
        if self.data.kind == "image" and images.dim() == 4:  # the one form every reader of `norm` expects: (C, 1, 1) on the data's device
            object.__setattr__(self, "norm", self.norm.for_images(images.shape[1], images.device))
        if self.make_scheduler is not None and not callable(self.make_scheduler):
            raise RecipeError("Pipeline.make_scheduler must be None or a callable make_scheduler(optimizer)")
        if self.scheduler_interval not in SCHEDULER_INTERVALS:
            raise RecipeError(f"Pipeline.scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}")
        if self.derived_from is not None:
            changed = [f.name for f in fields(TrainConfig) if f.name not in RUN_TIME_SETTINGS
                       and getattr(self.config, f.name) != getattr(self.derived_from, f.name)]
            if changed:
                what = ", ".join(f"{k}={getattr(self.config, k)!r} (factories built with "
                                 f"{getattr(self.derived_from, k)!r})" for k in changed)
                raise RecipeError(f"pipeline {self.name!r}: its config was replaced after its factories were built "
                                  f"({what}), so the checks and fit would disagree; build it again from the new "
                                  "config (e.g. default_pipeline(new_config, data)) instead of replacing `config`")

    @property
    def device(self) -> torch.device:
        return self.data.train.labels.device

    @property
    def num_classes(self) -> int:
        return self.data.num_classes  # the vocabulary size V for token sequences

    @property
    def kind(self) -> str:
        return self.data.kind

    @property
    def drops_last_below(self) -> int | None:
        """The batch size below which the train loader drops a batch (drop_last=True), or None: it keeps all
        (recipe/loaders.py: LoaderBatches.drop_below)."""
        return getattr(self.batches, "drop_below", None) or None

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one epoch: the last, smaller one included unless the train loader drops it, as a
        DataLoader's len() counts them."""
        examples, kept_from = len(self.data.train), self.drops_last_below
        if kept_from:
            return max(examples // kept_from, 1)  # none at all: fit says the loader drops its only batch
        return math.ceil(examples / self.config.batch_size)


def build_pipeline(name: str, config: TrainConfig, data: DataBundle,
                   model_class: Callable[..., nn.Module], step: StepFn = train_step) -> Pipeline:
    """A pipeline whose every factory is derived from `config`, once, here. Images get per-channel
    stats and TensorBatches; feature vectors (N, D) per-feature stats and FeatureBatches."""
    features = data.kind == "features"
    if data.kind == "tokens":
        raise RecipeError(f"pipeline {name!r} classifies images or feature vectors; for token sequences use "
                          "recipe.sequences.gpt_pipeline or bigram_pipeline")
    if features and config.augment != "none":
        raise RecipeError(f"--augment {config.augment} transforms images; feature vectors take --augment none")
    # train split only: val and test never inform preprocessing
    stats = feature_stats(data.train) if features else norm_stats(data.train, data.value_range)
    augment_factory = AUGMENTATIONS[config.augment]
    augment = augment_factory() if augment_factory else None
    device = data.train.labels.device
    total_steps = config.epochs * math.ceil(len(data.train) / config.batch_size)

    def make_model() -> nn.Module:
        return model_class(num_classes=data.num_classes, in_features=data.train.images[0].numel()).to(device)

    scheduler = None if config.schedule == "constant" else partial(make_scheduler, config, total_steps)
    return Pipeline(
        name=name, data=data, norm=stats,
        batches=FeatureBatches(data, stats, config.batch_size) if features
        else TensorBatches(data, stats, config.batch_size, augment),
        make_model=make_model, loss_fn=nn.functional.cross_entropy,
        make_optimizer=partial(make_optimizer, config), train_step=step,
        config=config, augment=augment, make_scheduler=scheduler, scheduler_interval="step",
        derived_from=config)


def default_pipeline(config: TrainConfig, data: DataBundle) -> Pipeline:
    """The lab's pipeline: a linear softmax classifier trained with cross-entropy.

    Its step computes the gradient in closed form (see recipe/linear_step.py), and falls back to
    the autograd `train_step` for any other model or loss.
    """
    return build_pipeline("linear", config, data, LinearClassifier, step=linear_softmax_step)


def mlp_pipeline(config: TrainConfig, data: DataBundle) -> Pipeline:
    """A second, non-linear pipeline: an MLP with one hidden layer of 128, same data and loop."""
    return build_pipeline("mlp", config, data, MLPClassifier)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise RecipeError(f"unknown --device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)
