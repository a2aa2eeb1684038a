"""The bug zoo's bugs: each function takes the clean pipeline and returns it with ONE bug planted.

Bugs are planted through the public Pipeline contract (`dataclasses.replace`), the way they would
sit in a user's code. `tests/zoo/catalogue.py` lists them with the checks that must catch each one.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from recipe.augment import per_image
from recipe.data import Batch, DataBundle, Split, TensorBatches, norm_stats, normalize
from recipe.model import LinearClassifier
from recipe.pipeline import Pipeline
from recipe.optim import make_optimizer

MISSING_CLASS = 9        # the class the "class missing from train" bug filters out
NOISY_FRACTION = 0.2     # share of train labels the "noisy labels" bug overwrites at random
LEAK_PIXEL_SCALE = 25    # the leaked label is written as label * 25 into pixel (0, 0): 0..225 fits uint8


# ---------------------------------------------------------------- planting helpers

def _wrap_batches(pipeline: Pipeline, transform: Callable[[Batch, str, int], Batch]) -> Pipeline:
    """Pass every batch of the pipeline's own loader through `transform(batch, split, position)`,
    position being how many examples this pass over the split has yielded before the batch."""
    inner = pipeline.batches

    def batches(split: str, **kwargs) -> Iterator[Batch]:
        position = 0
        for batch in inner(split, **kwargs):
            yield transform(batch, split, position)
            position += len(batch.y)
    return replace(pipeline, batches=batches)


def _loader_with_order(pipeline: Pipeline, order: Callable[[Split, bool, torch.Generator | None], torch.Tensor]
                       ) -> Pipeline:
    """A hand-written loader that visits each split in `order(split, shuffle, generator)`."""
    data, stats, size = pipeline.data, pipeline.norm, pipeline.config.batch_size
    normalised: dict[str, torch.Tensor] = {}

    def batches(split: str, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        source = data.split(split)
        if split not in normalised:
            normalised[split] = normalize(source.images, stats)
        positions = order(source, shuffle, generator).to(source.labels.device)
        for start in range(0, len(positions), size):
            idx = positions[start:start + size]
            yield Batch(normalised[split][idx], source.labels[idx], idx)
    return replace(pipeline, batches=batches)


def _with_data(pipeline: Pipeline, data: DataBundle) -> Pipeline:
    """The same pipeline built on other data: stats and batches recomputed from the new train split."""
    stats = norm_stats(data.train, data.value_range)
    return replace(pipeline, data=data, norm=stats,
                   batches=TensorBatches(data, stats, pipeline.config.batch_size, pipeline.augment))


def _with_augment(pipeline: Pipeline, augment: Callable[[torch.Tensor], torch.Tensor]) -> Pipeline:
    batches = TensorBatches(pipeline.data, pipeline.norm, pipeline.config.batch_size, augment)
    return replace(pipeline, augment=augment, batches=batches)


def _with_lr(pipeline: Pipeline, lr: float) -> Pipeline:
    """The user's config says `lr`: the optimizer and the schedule in `fit` both read it."""
    return _with_config(pipeline, replace(pipeline.config, lr=lr))


def _with_config(pipeline: Pipeline, config) -> Pipeline:
    """The user's config changed and the optimizer factory rebuilt from it (the schedule keeps its shape)."""
    return replace(pipeline, config=config, derived_from=config, make_optimizer=partial(make_optimizer, config))


def _with_model(pipeline: Pipeline, build: Callable[[nn.Module], nn.Module]) -> Pipeline:
    """Replace make_model by `build(clean fresh model)`, on the pipeline's device."""
    inner = pipeline.make_model
    return replace(pipeline, make_model=lambda: build(inner()).to(pipeline.device))


def _map_splits(data: DataBundle, edit: Callable[[Split], Split]) -> DataBundle:
    return replace(data, **{name: edit(data.split(name)) for name in ("train", "val", "test")})


# ---------------------------------------------------------------- data and loader bugs

def labels_shuffled_apart(pipeline: Pipeline) -> Pipeline:
    """The loader shuffles the images but takes labels in the original order."""
    def plant(batch: Batch, split: str, position: int) -> Batch:
        labels = pipeline.data.split(split).labels  # in file order, while batch.x follows the shuffle
        return replace(batch, y=labels[position:position + len(batch.y)])
    return _wrap_batches(pipeline, plant)


def labels_off_by_one(pipeline: Pipeline) -> Pipeline:
    """A hand-written collate pairs image i with label i - 1: the labels are one position off."""
    return _wrap_batches(pipeline, lambda batch, split, position: replace(batch, y=batch.y.roll(1)))


def eval_images_mirrored(pipeline: Pipeline) -> Pipeline:
    """The eval loader's transform list kept a horizontal flip the train loader dropped: val/test come mirrored."""
    def plant(batch: Batch, split: str, position: int) -> Batch:
        return batch if split == "train" else replace(batch, x=batch.x.flip(-1))
    return _wrap_batches(pipeline, plant)


def inputs_not_normalised(pipeline: Pipeline) -> Pipeline:
    """The loader hands the net raw 0..255 pixels: no ToTensor scaling, no Normalize."""
    def plant(batch: Batch, split: str, position: int) -> Batch:
        raw = pipeline.data.split(split).images[batch.idx]
        return replace(batch, x=raw.float())
    return _wrap_batches(pipeline, plant)


def inputs_normalised_twice(pipeline: Pipeline) -> Pipeline:
    """Normalize applied twice (once in the dataset, once again in the loader)."""
    stats = pipeline.norm
    return _wrap_batches(pipeline, lambda batch, split, position: replace(batch, x=(batch.x - stats.mean) / stats.std))


def norm_stats_from_test(pipeline: Pipeline) -> Pipeline:
    """Mean/std computed on the test split instead of train."""
    stats = norm_stats(pipeline.data.test, pipeline.data.value_range)
    batches = TensorBatches(pipeline.data, stats, pipeline.config.batch_size, pipeline.augment)
    return replace(pipeline, norm=stats, batches=batches)


def leaked_test_images(pipeline: Pipeline) -> Pipeline:
    """The test images were concatenated into the training set."""
    data = pipeline.data
    train = Split(torch.cat([data.train.images, data.test.images]), torch.cat([data.train.labels, data.test.labels]))
    return _with_data(pipeline, replace(data, train=train))


def class_missing_from_train(pipeline: Pipeline) -> Pipeline:
    """A filter `labels < 9` meant for something else drops every 9 from the training set."""
    train = pipeline.data.train
    keep = train.labels != MISSING_CLASS
    return _with_data(pipeline, replace(pipeline.data, train=Split(train.images[keep], train.labels[keep])))


def label_in_pixel(pipeline: Pipeline) -> Pipeline:
    """The label is burnt into every image as pixel (0, 0) = label * 25: the target leaks into the input."""
    def leak(split: Split) -> Split:
        images = split.images.clone()
        images[:, :, 0, 0] = (split.labels * LEAK_PIXEL_SCALE).to(torch.uint8)[:, None]  # (N, C, H, W): every channel
        return Split(images, split.labels)
    return _with_data(pipeline, _map_splits(pipeline.data, leak))


def noisy_train_labels(pipeline: Pipeline) -> Pipeline:
    """20% of the training labels were annotated wrongly (replaced by a random class) in the data itself."""
    train = pipeline.data.train
    labels = _random_labels(train.labels, pipeline.num_classes, seed=0)
    return _with_data(pipeline, replace(pipeline.data, train=Split(train.images, labels)))


def _random_labels(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """`labels` with NOISY_FRACTION of them replaced by a uniformly random class."""
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.rand(len(labels), generator=generator) < NOISY_FRACTION
    random_labels = torch.randint(0, num_classes, (len(labels),), generator=generator)
    return torch.where(noisy.to(labels.device), random_labels.to(labels.device), labels)


def noisy_labels_everywhere(pipeline: Pipeline) -> Pipeline:
    """20% of the labels in train, val and test alike were annotated wrongly (a noisy source data set)."""
    data = pipeline.data
    noisy = {name: Split(data.split(name).images, _random_labels(data.split(name).labels, pipeline.num_classes, seed))
             for seed, name in enumerate(("train", "val", "test"))}
    return _with_data(pipeline, replace(data, **noisy))


def systematic_mislabel_everywhere(pipeline: Pipeline) -> Pipeline:
    """In every split, 30% of class 4's images are labelled 9: one annotator's consistent confusion."""
    def relabel(labels: torch.Tensor, seed: int) -> torch.Tensor:
        chosen = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) < 0.3
        return torch.where((labels == 4) & chosen.to(labels.device), torch.full_like(labels, 9), labels)
    data = pipeline.data
    relabelled = {name: Split(data.split(name).images, relabel(data.split(name).labels, seed))
                  for seed, name in enumerate(("train", "val", "test"))}
    return _with_data(pipeline, replace(data, **relabelled))


def train_label_map_differs(pipeline: Pipeline) -> Pipeline:
    """Train numbers the classes by its own folder listing, val/test by the official list: 0 and 1 swap in train."""
    train = pipeline.data.train
    mapping = torch.arange(pipeline.num_classes, device=train.labels.device)
    mapping[[0, 1]] = mapping[[1, 0]]
    return _with_data(pipeline, replace(pipeline.data, train=Split(train.images, mapping[train.labels.long()]
                                                                   .to(train.labels.dtype))))


def val_labels_shifted(pipeline: Pipeline) -> Pipeline:
    """Val labels were written as (class + 1) mod C when val was split off: an off-by-one class id."""
    val = pipeline.data.val
    return _with_data(pipeline, replace(pipeline.data, val=Split(val.images, (val.labels + 1) % pipeline.num_classes)))


def labels_permuted_in_dataset(pipeline: Pipeline) -> Pipeline:
    """The label file was re-ordered apart from the image file (e.g. sorted separately) when the set was built."""
    train = pipeline.data.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).to(train.labels.device)
    return _with_data(pipeline, replace(pipeline.data, train=Split(train.images, train.labels[order])))


def val_from_sorted_tail(pipeline: Pipeline) -> Pipeline:
    """Val was cut as the last rows of a train set sorted by class: it holds one or two classes only."""
    data = pipeline.data
    tail = torch.argsort(data.train.labels, stable=True)[-len(data.val):]
    return _with_data(pipeline, replace(data, val=Split(data.train.images[tail], data.train.labels[tail])))


def unseeded_shuffle(pipeline: Pipeline) -> Pipeline:
    """The loader shuffles with numpy's global RNG, which torch.manual_seed does not seed."""
    import numpy as np

    def order(split: Split, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
        return torch.from_numpy(np.random.permutation(len(split))) if shuffle else torch.arange(len(split))
    return _loader_with_order(pipeline, order)


def sorted_by_class(pipeline: Pipeline) -> Pipeline:
    """The loader never shuffles and walks the data sorted by class: all 0s, then all 1s, ..."""
    return _loader_with_order(pipeline,
                              lambda split, shuffle, generator: torch.argsort(split.labels, stable=True).cpu())


def never_shuffled(pipeline: Pipeline) -> Pipeline:
    """The loader ignores shuffle=True: every epoch sees the examples in file order."""
    return _loader_with_order(pipeline, lambda split, shuffle, generator: torch.arange(len(split)))


def same_batch_every_time(pipeline: Pipeline) -> Pipeline:
    """`batch = next(iter(loader))` hoisted out of the loop: every step trains on the same batch."""
    def order(split: Split, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
        first = torch.randperm(len(split), generator=generator)[:pipeline.config.batch_size]
        return first.repeat(-(-len(split) // len(first)))[:len(split)]
    return _loader_with_order(pipeline, order)


def horizontal_flip(pipeline: Pipeline) -> Pipeline:
    """RandomHorizontalFlip copied from a CIFAR recipe onto digits: a mirrored 2, 3, 7 is no digit."""
    return _with_augment(pipeline, per_image(v2.RandomHorizontalFlip(p=0.5)))


def rotation_180(pipeline: Pipeline) -> Pipeline:
    """RandomRotation(180): upside-down digits, 6 and 9 swap."""
    return _with_augment(pipeline, per_image(v2.RandomRotation(degrees=180)))


# ---------------------------------------------------------------- model bugs

def softmax_before_loss(pipeline: Pipeline) -> Pipeline:
    """The model ends in nn.Softmax, and CrossEntropyLoss applies log-softmax again."""
    return _with_model(pipeline, lambda model: nn.Sequential(model, nn.Softmax(dim=1)))


def init_100x(pipeline: Pipeline) -> Pipeline:
    """PyTorch's default nn.Linear init multiplied by 100 (x100 written where x0.01 was meant)."""
    def scale(model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
                    layer.weight.mul_(100.0)
        return model
    return _with_model(pipeline, scale)


def frozen_weights(pipeline: Pipeline) -> Pipeline:
    """The weight matrix is left at requires_grad=False (frozen, as in a fine-tuning script)."""
    def freeze(model: nn.Module) -> nn.Module:
        next(model.parameters()).requires_grad_(False)
        return model
    return _with_model(pipeline, freeze)


class DetachedLinear(LinearClassifier):
    """forward uses `self.fc.weight.detach()`: the weights are in the graph as constants, never trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.fc.weight.detach(), self.fc.bias)


class BatchMixingLinear(LinearClassifier):
    """Wants features-first (784, B) and gets it with a view where a transpose was needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = x.view(x[0].numel(), -1)  # bug: meant x.flatten(1).t(); this interleaves examples
        return self.fc(columns.t())         # (B, 784), but each row mixes pixels of several images


def with_linear_model(model_class: type[LinearClassifier]) -> Callable[[Pipeline], Pipeline]:
    def plant(pipeline: Pipeline) -> Pipeline:
        return replace(pipeline, make_model=lambda: model_class(pipeline.num_classes, pipeline.data.train.images[0].numel()).to(pipeline.device))
    return plant


# ---------------------------------------------------------------- loss, optimizer and step bugs

def negated_loss(pipeline: Pipeline) -> Pipeline:
    """loss = -cross_entropy: the optimizer maximises the loss (a sign error)."""
    inner = pipeline.loss_fn
    return replace(pipeline, loss_fn=lambda logits, y: -inner(logits, y))


def mse_on_class_indices(pipeline: Pipeline) -> Pipeline:
    """Classification treated as regression: MSE between one output column and the class index."""
    return replace(pipeline, loss_fn=lambda logits, y: F.mse_loss(logits[:, 0], y.float()))


def loss_clamped(pipeline: Pipeline) -> Pipeline:
    """loss.clamp(max=1.0) written where clip_grad_norm_(…, 1.0) was meant: above 1 the gradient is 0."""
    inner = pipeline.loss_fn
    return replace(pipeline, loss_fn=lambda logits, y: inner(logits, y).clamp(max=1.0))


def lr_100x_too_high(pipeline: Pipeline) -> Pipeline:
    """Learning rate 100x too high (0.1 for Adam, whose default is 0.001)."""
    return _with_lr(pipeline, pipeline.config.lr * 100)


def lr_far_too_low(pipeline: Pipeline) -> Pipeline:
    """Learning rate 1e-6: about 1000x too low, training barely moves."""
    return _with_lr(pipeline, 1e-6)


def weight_decay_far_too_high(pipeline: Pipeline) -> Pipeline:
    """weight_decay=1.0 where 1e-4 was meant: the L2 pull swamps the data term."""
    return _with_config(pipeline, replace(pipeline.config, weight_decay=1.0))


def loss_summed(pipeline: Pipeline) -> Pipeline:
    """cross_entropy(reduction="sum"): the loss, and every gradient, scale with the batch size."""
    return replace(pipeline, loss_fn=lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))


class LogSoftmaxLinear(LinearClassifier):
    """forward returns log_softmax(logits), and the loss, cross_entropy, applies log_softmax again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(super().forward(x), dim=1)


def step_before_backward(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                         x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """recipe.train.train_step with optimizer.step() moved above loss.backward(): each step applies the
    previous batch's gradient, and the first step none at all."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.detach()


def step_without_zero_grad(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                           x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """recipe.train.train_step with the optimizer.zero_grad() line forgotten."""
    loss = loss_fn(model(x), y)
    loss.backward()  # adds onto the previous steps' gradients
    optimizer.step()
    return loss.detach()


def step_returns_float(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                       x: torch.Tensor, y: torch.Tensor) -> float:
    """recipe.steps.train_step ending in `return loss.item()`: every check still trains, but the loop that
    sums the losses on the device breaks."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_sets_lr(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A step that writes its own learning rate into every param group (a hard-coded warm-up left in),
    so the optimizer and schedule the pipeline built are not what trains."""
    for group in optimizer.param_groups:
        group["lr"] = 0.05
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_and_test_swapped(pipeline: Pipeline) -> Pipeline:
    """The training set was built from the test files and the test set from the training files
    (`train=False` where `train=True` was meant)."""
    data = pipeline.data
    return _with_data(pipeline, replace(data, train=data.test, test=data.train))


def val_copied_into_test(pipeline: Pipeline) -> Pipeline:
    """Val and test were cut from overlapping ranges: half of test is val again."""
    data = pipeline.data
    half = len(data.test) // 2
    test = Split(torch.cat([data.val.images[:half], data.test.images[half:]]),
                 torch.cat([data.val.labels[:half], data.test.labels[half:]]))
    return _with_data(pipeline, replace(data, test=test))
