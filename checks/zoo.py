"""The bug zoo: the default pipeline with ONE realistic bug planted, for every bug the checks should catch.

Each `Bug` plants its mistake through the public Pipeline contract (`dataclasses.replace` on a clean
pipeline), the way it would sit in a user's code: a loader that pairs images with the wrong labels,
a model that ends in softmax, a train step without zero_grad. It declares which checks must FAIL
on it and which words the failing message must use to name the cause. A bug no automatic check can
see stays in the zoo with `must_fail=()` and a `why` saying so.

The catalogue follows Karpathy's "A Recipe for Training Neural Networks" and his "most common
neural net mistakes", the Full Stack Deep Learning troubleshooting guide, and the DeepCrime
mutation operators (Humbatova et al. 2021).

    python -m checks.zoo [--data sample|fashion-mnist] [--seed N] [--markdown]

runs every entry, plus the clean linear and MLP pipelines, through all checks and prints the
detection matrix (bug x check), the detection rate and the bugs nobody caught.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from checks.registry import CHECKS_BY_STAGE
from checks.result import CheckResult, Verdict, run_stages
from recipe.augment import per_image
from recipe.config import TrainConfig
from recipe.data import Batch, DataBundle, Split, TensorBatches, load_data, norm_stats, normalize
from recipe.model import LinearClassifier
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline
from recipe.train import make_optimizer

MISSING_CLASS = 9        # the class the "class missing from train" bug filters out
NOISY_FRACTION = 0.2     # share of train labels the "noisy labels" bug overwrites at random
LEAK_PIXEL_SCALE = 25    # the leaked label is written as label * 25 into pixel (0, 0): 0..225 fits uint8


@dataclass(frozen=True)
class Bug:
    name: str
    description: str                       # the planted cause, in one line
    plant: Callable[[Pipeline], Pipeline]  # clean pipeline -> the same pipeline with the bug
    must_fail: tuple[str, ...]             # checks that must FAIL on it; () when none can see it
    cause_words: tuple[str, ...]           # a failing message must contain one of these (any case)
    why: str                               # why those checks see it, or why no check can


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
    stats = norm_stats(data.train)
    return replace(pipeline, data=data, norm=stats,
                   batches=TensorBatches(data, stats, pipeline.config.batch_size, pipeline.augment))


def _with_augment(pipeline: Pipeline, augment: Callable[[torch.Tensor], torch.Tensor]) -> Pipeline:
    batches = TensorBatches(pipeline.data, pipeline.norm, pipeline.config.batch_size, augment)
    return replace(pipeline, augment=augment, batches=batches)


def _with_lr(pipeline: Pipeline, lr: float) -> Pipeline:
    """The user's config says `lr`: the optimizer and the schedule in `fit` both read it."""
    config = replace(pipeline.config, lr=lr)
    return replace(pipeline, config=config, make_optimizer=partial(make_optimizer, config))


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
        return replace(batch, x=raw.float().unsqueeze(1))
    return _wrap_batches(pipeline, plant)


def inputs_normalised_twice(pipeline: Pipeline) -> Pipeline:
    """Normalize applied twice (once in the dataset, once again in the loader)."""
    stats = pipeline.norm
    return _wrap_batches(pipeline, lambda batch, split, position: replace(batch, x=(batch.x - stats.mean) / stats.std))


def norm_stats_from_test(pipeline: Pipeline) -> Pipeline:
    """Mean/std computed on the test split instead of train."""
    stats = norm_stats(pipeline.data.test)
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
        images[:, 0, 0] = (split.labels * LEAK_PIXEL_SCALE).to(torch.uint8)
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
    return _loader_with_order(pipeline, lambda split, shuffle, generator: torch.argsort(split.labels, stable=True).cpu())


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


def _linear_model(model_class: type[LinearClassifier]) -> Callable[[Pipeline], Pipeline]:
    def plant(pipeline: Pipeline) -> Pipeline:
        return replace(pipeline, make_model=lambda: model_class(pipeline.num_classes).to(pipeline.device))
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
    config = replace(pipeline.config, weight_decay=1.0)
    return replace(pipeline, config=config, make_optimizer=partial(make_optimizer, config))


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


# ---------------------------------------------------------------- the catalogue

ZOO: tuple[Bug, ...] = (
    Bug("labels_shuffled_apart", labels_shuffled_apart.__doc__, labels_shuffled_apart,
        ("label_pairing",), ("shuffled apart",),
        "almost every label that reaches the model differs from its image's source label"),
    Bug("labels_off_by_one", labels_off_by_one.__doc__, labels_off_by_one,
        ("label_pairing",), ("differ from the source label",),
        "the label paired with an image is its batch neighbour's, not its own"),
    Bug("eval_images_mirrored", eval_images_mirrored.__doc__, eval_images_mirrored,
        ("label_pairing",), ("evaluation path",),
        "val and test inputs no longer equal their source images once the declared normalisation is undone, "
        "while train inputs do; training itself is unaffected, so only the val/test numbers would be wrong"),
    Bug("inputs_not_normalised", inputs_not_normalised.__doc__, inputs_not_normalised,
        ("input_normalisation", "what_goes_into_the_net"), ("un-normali",),
        "the batches the net sees have max 255 and std ~80, not ~1"),
    Bug("inputs_normalised_twice", inputs_normalised_twice.__doc__, inputs_normalised_twice,
        ("input_normalisation",), ("normalised twice",),
        "normalising an already normalised batch leaves std ~1/std, far from 1"),
    Bug("norm_stats_from_test", norm_stats_from_test.__doc__, norm_stats_from_test,
        ("normalisation_stats_source",), ("test split",),
        "pipeline.norm equals the test split's statistics, not train's"),
    Bug("test_leaked_into_train", leaked_test_images.__doc__, leaked_test_images,
        ("duplicates_and_leakage",), ("test images leaked",),
        "every test image also appears, byte for byte, in train"),
    Bug("class_missing_from_train", class_missing_from_train.__doc__, class_missing_from_train,
        ("integrity",), (f"class {MISSING_CLASS} is missing",),
        "train has 9 label values while val and test have 10"),
    Bug("label_in_pixel", label_in_pixel.__doc__, label_in_pixel,
        ("target_leak",), ("target leaks",),
        "a single pixel predicts the label perfectly"),
    Bug("noisy_train_labels", noisy_train_labels.__doc__, noisy_train_labels,
        ("label_agreement",), ("annotation noise",),
        "a linear probe fit on part of train misses about 15 points more of the held-out train labels than of "
        "the val + test labels; every other check traces examples back to the noisy labels and trusts them"),
    Bug("noisy_labels_everywhere", noisy_labels_everywhere.__doc__, noisy_labels_everywhere,
        (), (),
        "not caught: the noise is the same in every split, so the probe misses equally often everywhere, and a "
        "linear model still trains and overfits a small batch. Only a trusted, clean reference set could show "
        "it; the report's 'most confidently rejected' train images are where a human would see it."),
    Bug("train_label_map_differs", train_label_map_differs.__doc__, train_label_map_differs,
        ("label_agreement",), ("label map",),
        "a probe taught by train predicts class 1 for val/test's class 0 and back, so it misses ~20 points "
        "more of the val + test labels; within train everything is consistent"),
    Bug("sorted_by_class", sorted_by_class.__doc__, sorted_by_class,
        ("batch_sampling",), ("sorted by class",),
        "batches hold one class each and the order does not change between epochs"),
    Bug("never_shuffled", never_shuffled.__doc__, never_shuffled,
        ("batch_sampling",), ("never shuffled",),
        "two epochs see the examples in the same fixed order"),
    Bug("same_batch_every_time", same_batch_every_time.__doc__, same_batch_every_time,
        ("batch_sampling",), ("same batch",),
        "an epoch covers only batch_size distinct examples, each many times"),
    Bug("horizontal_flip", horizontal_flip.__doc__, horizontal_flip,
        ("augmentation_consistency",), ("flip",),
        "a classifier trained on clean digits loses accuracy on mirrored val digits"),
    Bug("rotation_180", rotation_180.__doc__, rotation_180,
        ("augmentation_consistency",), ("rotation",),
        "a classifier trained on clean digits loses accuracy on rotated val digits"),
    Bug("softmax_before_loss", softmax_before_loss.__doc__, softmax_before_loss,
        ("output_sanity",), ("softmax",),
        "the model's outputs are non-negative and sum to 1 per row: probabilities, not logits"),
    Bug("log_softmax_output", LogSoftmaxLinear.__doc__, _linear_model(LogSoftmaxLinear),
        ("output_sanity",), ("log_softmax",),
        "every output row's logsumexp is 0: the model already returns log-probabilities"),
    Bug("init_100x", init_100x.__doc__, init_100x,
        ("loss_at_init",), ("initialised too large",),
        "huge initial logits make the loss at init far above ln(C)"),
    Bug("frozen_weights", frozen_weights.__doc__, frozen_weights,
        ("gradient_flow",), ("frozen",),
        "the weight matrix has requires_grad=False"),
    Bug("detached_weights", DetachedLinear.__doc__, _linear_model(DetachedLinear),
        ("gradient_flow",), ("detach",),
        "the weight matrix is trainable but receives no gradient"),
    Bug("view_mixes_batch", BatchMixingLinear.__doc__, _linear_model(BatchMixingLinear),
        ("batch_independence",), ("transpose",),
        "one example's output has a non-zero gradient with respect to other examples' inputs"),
    Bug("negated_loss", negated_loss.__doc__, negated_loss,
        ("overfit_one_batch", "loss_at_init"), ("wrong sign",),
        "the loss goes below zero, which cross-entropy cannot"),
    Bug("mse_on_class_indices", mse_on_class_indices.__doc__, mse_on_class_indices,
        ("loss_at_init", "overfit_one_batch"), ("wrong loss", "does not measure classification"),
        "the loss at init is mean(y^2) ~ 28, not ln(C) ~ 2.3, and a small batch reaches a tiny loss "
        "with most of it still misclassified"),
    Bug("loss_clamped", loss_clamped.__doc__, loss_clamped,
        ("gradient_flow", "overfit_one_batch"), ("clipped",),
        "the clamped loss has zero gradient at init, so no parameter ever changes"),
    Bug("lr_100x_too_high", lr_100x_too_high.__doc__, lr_100x_too_high,
        ("input_independent_baseline", "training_loss_decreases"), ("too high",),
        "the loss jumps from ln(C) to ~8 in the first steps, and the over-confident model ends with a worse val "
        "loss than the zero-input model"),
    Bug("lr_far_too_low", lr_far_too_low.__doc__, lr_far_too_low,
        ("overfit_one_batch", "training_loss_decreases", "prediction_dynamics"), ("too low",),
        "a small batch cannot be overfit in the allotted steps: the loss plateaus near ln(C), and the "
        "predictions on fixed val examples never move"),
    Bug("weight_decay_far_too_high", weight_decay_far_too_high.__doc__, weight_decay_far_too_high,
        ("overfit_one_batch",), ("weight decay",),
        "16 examples cannot be memorised: the decay holds the loss on a plateau far above 0"),
    Bug("loss_summed", loss_summed.__doc__, loss_summed,
        ("loss_at_init",), ("reduction",),
        "the untrained loss is B * ln(C), not ln(C)"),
    Bug("step_before_backward", step_before_backward.__doc__, lambda p: replace(p, train_step=step_before_backward),
        ("gradient_flow",), ("before loss.backward",),
        "after one step the parameters have a gradient but have not moved"),
    Bug("val_labels_shifted", val_labels_shifted.__doc__, val_labels_shifted,
        ("label_agreement",), ("renumbered",),
        "a probe taught by train misses most val labels, but not the test labels or held-out train labels"),
    Bug("labels_permuted_in_dataset", labels_permuted_in_dataset.__doc__, labels_permuted_in_dataset,
        ("label_signal",), ("permuted", "shuffled"),
        "every class gets the same mean image; the loader is faithful to a source that is itself wrong, "
        "so only the data stage can see it"),
    Bug("val_from_sorted_tail", val_from_sorted_tail.__doc__, val_from_sorted_tail,
        ("class_balance",), ("sorted",),
        "val's class mix is far from train's (total variation ~0.8)"),
    Bug("unseeded_shuffle", unseeded_shuffle.__doc__, unseeded_shuffle,
        ("determinism",), ("not seeded", "unseeded"),
        "two runs with the same seed draw different batches, so their losses differ from the first step"),
    Bug("no_zero_grad", step_without_zero_grad.__doc__, lambda p: replace(p, train_step=step_without_zero_grad),
        ("gradient_flow",), ("zero_grad",),
        "the second step's gradient on the same batch is the sum of two steps' gradients"),
)


# ---------------------------------------------------------------- the detection matrix

CODES = {"PASS": "P", "WARN": "W", "FAIL": "F", "ERROR": "E", "SKIP": "S"}
LEGEND = "P pass, W warn, F fail, E error (the check crashed), S skip; * the zoo expects this check to FAIL"
CLEAN = "clean"


@dataclass(frozen=True)
class ZooRow:
    name: str
    bug: Bug | None                  # None for a clean pipeline
    results: dict[str, CheckResult]  # check name -> result

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.results.items() if r.verdict is Verdict.FAIL]

    @property
    def missed(self) -> list[str]:
        """Checks the bug declares it must FAIL that did not."""
        expected = self.bug.must_fail if self.bug else ()
        return [name for name in expected if name not in self.results or self.results[name].verdict is not Verdict.FAIL]


def clean_pipelines(config: TrainConfig, data: DataBundle) -> dict[str, Pipeline]:
    return {f"{CLEAN}:linear": default_pipeline(config, data), f"{CLEAN}:mlp": mlp_pipeline(config, data)}


def run_zoo(data: DataBundle, seed: int = 0, bugs: tuple[Bug, ...] = ZOO) -> list[ZooRow]:
    """Every clean pipeline, then every bug planted on the clean linear one, through all checks."""
    config = TrainConfig(seed=seed)
    cleans = clean_pipelines(config, data)
    planted = [(bug.name, bug, bug.plant(cleans[f"{CLEAN}:linear"])) for bug in bugs]
    rows = []
    for name, bug, pipeline in [(name, None, p) for name, p in cleans.items()] + planted:
        torch.manual_seed(seed)
        results = run_stages(pipeline, CHECKS_BY_STAGE, gate=False)
        rows.append(ZooRow(name, bug, {r.name: r for r in results}))
    return rows


def detection_rate(rows: list[ZooRow]) -> tuple[int, int]:
    """(bugs with at least one FAIL, bugs)."""
    bug_rows = [row for row in rows if row.bug is not None]
    return sum(bool(row.failed) for row in bug_rows), len(bug_rows)


def _cell(row: ZooRow, check: str) -> str:
    expected = row.bug is not None and check in row.bug.must_fail
    return CODES[row.results[check].verdict.value] + ("*" if expected else "")


def _summary(row: ZooRow) -> str:
    if row.bug is None:
        return "no FAIL" if not row.failed else "FALSE ALARM"
    if row.missed:
        return "MISSED " + ",".join(row.missed)
    return "caught" if row.failed else "not caught (known)"


def render_text(rows: list[ZooRow]) -> str:
    checks = list(rows[0].results)
    width = max(len(row.name) for row in rows)
    header = f"{'':{width}}  " + " ".join(f"{i + 1:>3}" for i in range(len(checks))) + "  verdict"
    lines = [header]
    for row in rows:
        lines.append(f"{row.name:{width}}  " + " ".join(f"{_cell(row, c):>3}" for c in checks) + f"  {_summary(row)}")
    lines += ["", LEGEND, "checks: " + ", ".join(f"{i + 1} {c}" for i, c in enumerate(checks))]
    return "\n".join(lines + [""] + _findings(rows))


def render_markdown(rows: list[ZooRow]) -> str:
    checks = list(rows[0].results)
    lines = ["| pipeline | " + " | ".join(f"`{c}`" for c in checks) + " | verdict |",
             "|---|" + "---|" * len(checks) + "---|"]
    lines += [f"| `{row.name}` | " + " | ".join(_cell(row, c) for c in checks) + f" | {_summary(row)} |"
              for row in rows]
    return "\n".join(lines + ["", LEGEND, ""] + _findings(rows))


def _findings(rows: list[ZooRow]) -> list[str]:
    caught, total = detection_rate(rows)
    lines = [f"detection rate: {caught}/{total} bugs have at least one FAIL ({caught / total:.0%})"]
    for row in rows:
        if row.bug is None and row.failed:
            lines += [f"- FALSE ALARM on {row.name}: {name}: {row.results[name].message}" for name in row.failed]
        elif row.bug is not None and not row.failed:
            lines.append(f"- not caught: {row.name}: {row.bug.description} Why: {row.bug.why}")
        elif row.bug is not None and row.missed:
            lines += [f"- {row.name}: expected {name} to FAIL, got " + (
                f"{row.results[name].verdict.value}: {row.results[name].message}" if name in row.results
                else "no such check in the registry") for name in row.missed]
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m checks.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sample", choices=("sample", "fashion-mnist", "mnist"))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for the README)")
    args = parser.parse_args(argv)
    data = load_data(args.data, args.data_dir, download=False)  # once, shared by every pipeline
    rows = run_zoo(data, args.seed)
    print((render_markdown if args.markdown else render_text)(rows))
    clean_ok = all(not row.failed for row in rows if row.bug is None)
    return 0 if clean_ok and not any(row.missed for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
