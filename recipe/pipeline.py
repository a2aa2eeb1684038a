"""The Pipeline contract: everything the checks need, holding the user's *real* code.

A pipeline factory is any callable `build(config: TrainConfig, data: DataBundle) -> Pipeline`.
The CLI and `pytest checks/` load the data once and pass it in; a factory may use it (as
`default_pipeline` does) or load its own. Point the tools at yours with
`--pipeline mypkg.mymodule:build`.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from recipe.augment import AUGMENTATIONS
from recipe.config import TrainConfig
from recipe.data import BatchFn, DataBundle, NormStats, TensorBatches, norm_stats
from recipe.errors import RecipeError
from recipe.linear_step import linear_softmax_step
from recipe.model import LinearClassifier, MLPClassifier
from recipe.train import make_optimizer, train_step

StepFn = Callable[[nn.Module, torch.optim.Optimizer, Callable, torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_PIPELINE = "recipe.pipeline:default_pipeline"


@dataclass(frozen=True)
class Pipeline:
    """What a classifier's training code is made of, as the checks see it.

    - `data`: raw uint8 splits and class names, the source every example is traced back to.
    - `norm`: the normalisation stats the batches use (x = (pixels/255 - mean) / std).
    - `batches(split, *, shuffle, augment, generator)`: yields Batch(x, y, idx), x exactly as the
      model receives it and idx the examples' positions in `data.<split>`.
    - `augment`: the optional augmentation on float [0, 1] (B, 1, 28, 28) batches, or None.
    - `make_model()`: a fresh, untrained nn.Module on `device` mapping x to (B, C) logits.
    - `loss_fn(logits, y)`, `make_optimizer(params)`, `train_step(model, opt, loss_fn, x, y)`.
    - `config`: seed, batch size, epochs and the other settings.
    """
    name: str
    data: DataBundle
    norm: NormStats
    batches: BatchFn
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    train_step: StepFn
    config: TrainConfig
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.data.train.labels.device

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


def build_pipeline(name: str, config: TrainConfig, data: DataBundle,
                   model_class: Callable[..., nn.Module], step: StepFn = train_step) -> Pipeline:
    stats = norm_stats(data.train)  # train split only: val and test never inform preprocessing
    augment_factory = AUGMENTATIONS[config.augment]
    augment = augment_factory() if augment_factory else None
    device = data.train.labels.device

    def make_model() -> nn.Module:
        return model_class(num_classes=data.num_classes).to(device)

    return Pipeline(
        name=name, data=data, norm=stats,
        batches=TensorBatches(data, stats, config.batch_size, augment),
        make_model=make_model, loss_fn=nn.functional.cross_entropy,
        make_optimizer=partial(make_optimizer, config), train_step=step,
        config=config, augment=augment)


def default_pipeline(config: TrainConfig, data: DataBundle) -> Pipeline:
    """The lab's pipeline: a linear softmax classifier trained with cross-entropy.

    Its step computes the gradient in closed form (see recipe/linear_step.py), and falls back to
    the autograd `train_step` for any other model or loss.
    """
    return build_pipeline("linear", config, data, LinearClassifier, step=linear_softmax_step)


def mlp_pipeline(config: TrainConfig, data: DataBundle) -> Pipeline:
    """A second, non-linear pipeline: 784-128-10 MLP, same data and loop."""
    return build_pipeline("mlp", config, data, MLPClassifier)


def load_factory(spec: str) -> Callable[[TrainConfig, DataBundle], Pipeline]:
    """Import `module:attribute` (or `path/to/file.py:attribute`). This runs the user's code, by design."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise RecipeError(f"--pipeline {spec!r} must look like 'package.module:factory' or 'file.py:factory'")
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like `python -m`, find the user's modules in cwd
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise RecipeError(f"--pipeline {spec!r}: cannot import {module_name!r} ({err})") from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise RecipeError(f"--pipeline {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise RecipeError(f"--pipeline {spec!r}: {attribute!r} is not callable; it must be build(config, data)")
    return factory


def _import_file(path: Path):
    import importlib.util

    if not path.is_file():
        raise ImportError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_pipeline(spec: str, config: TrainConfig, data: DataBundle) -> Pipeline:
    """Build the pipeline named by `spec`, checking that the factory kept the contract."""
    factory = load_factory(spec)
    pipeline = factory(config, data)
    if not isinstance(pipeline, Pipeline):
        raise RecipeError(f"--pipeline {spec!r} returned {type(pipeline).__name__}, expected recipe.pipeline.Pipeline")
    return pipeline


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise RecipeError(f"unknown --device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)
