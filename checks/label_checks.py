"""Stage `data`: are the labels trustworthy? Two checks built on one linear probe.

The probe is ridge regression on raw pixels, solved in closed form (well under a second), fit on
part of train and scored on examples it has not seen.
- `label_agreement`: held-out train labels and val + test labels come from the same labelling
  process, so the probe should miss equally often on both. Labels corrupted in one split only
  (annotation noise, a label map applied to train but not to test, classes swapped in one file)
  open a gap.
- `label_noise`: in clean data most pairs of classes are never confused (a clear 0 is never
  labelled 1), so most cells of the label-vs-probe confusion matrix are empty. Labels flipped at
  random, even the same way in every split, put a floor under every cell.
A systematic confusion present in every split (one annotator always writing 9 for 4) passes both.
"""
from __future__ import annotations

import math
import weakref

import torch

from checks.near_copies import image_hashes
from checks.result import CheckResult, Figure, measured, not_applicable
from recipe.data import UINT8_RANGE, Split, unit_pixels
from recipe.pipeline import Pipeline

STAGE = "data"


def _features(images: torch.Tensor, value_range: tuple[float, float] = UINT8_RANGE) -> torch.Tensor:
    """Raw pixels scaled to [0, 1] by their declared range, flattened, plus a constant column for the
    bias; float64 for the solve."""
    pixels = unit_pixels(images, value_range, torch.float64).reshape(len(images), -1)
    return torch.cat([pixels, torch.ones(len(pixels), 1, dtype=torch.float64)], dim=1)


def fit_ridge_probe(split: Split, num_classes: int, value_range: tuple[float, float] = UINT8_RANGE,
                    ridge: float = 1.0) -> torch.Tensor:
    """Least-squares one-vs-all: W = (X^T X + ridge I)^-1 X^T onehot(y), a (C*H*W + 1, classes) matrix."""
    x = _features(split.images, value_range)
    targets = torch.nn.functional.one_hot(split.labels.long(), num_classes).to(torch.float64)
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ targets)


def _subset(split: Split, idx: torch.Tensor) -> Split:
    idx = idx.to(split.labels.device)
    return Split(split.images[idx].cpu(), split.labels[idx].cpu())


def _unseen(split: Split, fit: Split) -> Split:
    """`split` without the images that also occur (exactly) in the probe's fit set."""
    seen = set(image_hashes(fit.images))
    keep = torch.tensor([h not in seen for h in image_hashes(split.images)], dtype=torch.bool)
    return Split(split.images[keep], split.labels[keep])


def _per_class_error(wrong: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1)
    return (torch.bincount(labels[wrong], minlength=num_classes) / counts).tolist()


def _train_fit_and_held_out(pipeline: Pipeline, generator: torch.Generator, max_fit: int,
                            max_scored: int) -> tuple[Split, Split]:
    """A random part of train to fit the probe on, and a disjoint part (up to a third) to score."""
    train = pipeline.data.train
    order = torch.randperm(len(train), generator=generator)
    n_held = min(max_scored, len(train) // 3)
    return _subset(train, order[n_held:n_held + max_fit]), _subset(train, order[:n_held])


_LAST_PROBE: list[tuple[weakref.ref, tuple, tuple]] = []


def _held_out_probe(pipeline: Pipeline, max_fit: int, max_scored: int
                    ) -> tuple[Split, Split, torch.Tensor | None, torch.Generator]:
    """(fit, held-out train not seen by the probe, the probe's weights), with the generator left as
    `_train_fit_and_held_out` leaves it. Kept for the last data bundle, as `find_copies` is: both checks
    here read the same probe (0.3 s on full Fashion-MNIST), and each stays a function of the pipeline."""
    data, key = pipeline.data, (pipeline.config.seed, max_fit, max_scored)
    if not (_LAST_PROBE and _LAST_PROBE[0][0]() is data and _LAST_PROBE[0][1] == key):
        generator = torch.Generator().manual_seed(pipeline.config.seed)
        fit, held = _train_fit_and_held_out(pipeline, generator, max_fit, max_scored)
        weights = fit_ridge_probe(fit, data.num_classes, data.value_range) if len(fit) else None
        _LAST_PROBE[:] = [(weakref.ref(data), key, (fit, _unseen(held, fit), weights, generator.get_state()))]
    fit, held, weights, state = _LAST_PROBE[0][2]
    return fit, held, weights, torch.Generator().set_state(state)


def label_agreement(pipeline: Pipeline, min_gap: float = 0.04, z: float = 4.0, max_fit: int = 10_000,
                    max_scored: int = 5_000, min_scored: int = 100) -> CheckResult:
    """The probe's error on held-out train labels and on val + test labels must match.

    FAILs when they differ by more than `min_gap` and by more than `z` standard errors of the
    difference (so a small data set's sampling noise does not trip it).
    """
    data = pipeline.data
    fit, held, weights, generator = _held_out_probe(pipeline, max_fit, max_scored)
    reference_images = torch.cat([data.val.images.cpu(), data.test.images.cpu()])
    reference_labels = torch.cat([data.val.labels.cpu(), data.test.labels.cpu()])
    keep = torch.randperm(len(reference_labels), generator=generator)[:max_scored]
    reference = Split(reference_images[keep], reference_labels[keep])
    reference = _unseen(reference, fit)  # leaked copies would flatter the probe (held-out train: done)
    if min(len(held), len(reference)) < min_scored or len(fit) < 10 * data.num_classes:
        return not_applicable("label_agreement", STAGE,
                              f"too few examples to compare label quality ({len(fit)} to fit the probe, {len(held)} "
                              f"held-out train, {len(reference)} val + test; need {min_scored} of each scored)")
    scores = {name: _features(split.images, data.value_range) @ weights
              for name, split in (("train", held), ("reference", reference))}
    wrong = {name: scores[name].argmax(1) != split.labels
             for name, split in (("train", held), ("reference", reference))}
    train_error, reference_error = (wrong[n].double().mean().item() for n in ("train", "reference"))
    gap = train_error - reference_error
    standard_error = math.sqrt(train_error * (1 - train_error) / len(held)
                               + reference_error * (1 - reference_error) / len(reference))
    threshold = max(min_gap, z * standard_error)
    chance = 1.0 - 1.0 / data.num_classes
    figures = [_per_class_figure(data.class_names, wrong, held, reference)]  # the rejected images: label_noise
    details = {"train_held_out_error": train_error, "val_test_error": reference_error, "gap": gap,
               "standard_error": standard_error, "fit_examples": len(fit), "train_scored": len(held),
               "val_test_scored": len(reference)}
    said = (f"a linear probe fit on {len(fit)} train examples misses {train_error:.1%} of {len(held)} held-out train "
            f"labels and {reference_error:.1%} of {len(reference)} val + test labels (gap {gap:+.1%}; allowed "
            f"{threshold:.1%}, the larger of {min_gap:.0%} and {z:g} standard errors)")
    ok = f"{said}: train labels agree with their images as well as the held-out labels do."
    if gap > 0:
        fail = (f"{said}: the train labels disagree with their images more often: roughly {min(1.0, gap / chance):.0%} "
                "of them look wrong. Train labels were corrupted (annotation noise, a label map or offset applied "
                "to train only), or train comes from another distribution than val/test. Look at the probe's "
                "most confident disagreements in label_noise's figures.")
    else:
        fail = (f"{said}: the val/test labels disagree with what train teaches, most in the classes with the "
                "tallest val + test bars below. The splits use different label maps (classes swapped or "
                "renumbered in one file), val/test hold classes train lacks, or val/test come from another "
                "distribution than train.")
    return measured("label_agreement", STAGE, abs(gap), threshold, "<=", ok, fail, figures=figures, details=details)


def label_noise(pipeline: Pipeline, max_floor: float = 0.01, quantile: float = 0.25, min_classes: int = 4,
                min_per_class: int = 20, max_fit: int = 10_000, max_scored: int = 5_000) -> CheckResult:
    """The quieter cells of the label-vs-probe confusion matrix must be (nearly) empty.

    On held-out train examples, each row of the matrix is one given label and holds the share of
    its images the probe puts in each other class. The `quantile` (default: lower quartile) of
    those off-diagonal shares is the noise floor (each cell counted less one, so a single stray image
    is not evidence); clean MNIST and Fashion-MNIST measure 0.000, and 20% of labels replaced at
    random measures about 0.02. FAILs above `max_floor`.
    """
    data = pipeline.data
    num_classes = data.num_classes
    fit, held, weights, _ = _held_out_probe(pipeline, max_fit, max_scored)  # label_agreement's probe
    counts = torch.bincount(held.labels.long(), minlength=num_classes)
    rows = torch.nonzero(counts >= min_per_class).flatten()
    if num_classes < min_classes or len(rows) < min_classes or len(fit) < 10 * num_classes:
        return not_applicable("label_noise", STAGE,
                              f"needs {min_classes}+ classes with {min_per_class}+ held-out train examples each "
                              f"(have {len(rows)} of {num_classes} classes): with fewer, every pair of classes may "
                              "be genuinely confusable")
    scores = _features(held.images, data.value_range) @ weights
    predicted = scores.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)  # (given label, probe's class)
    confusion.index_put_((held.labels.long(), predicted), torch.ones(len(predicted), dtype=torch.float64),
                         accumulate=True)
    shares = (confusion[rows] - 1).clamp(min=0) / counts[rows, None]  # a pair met once is not evidence
    off_diagonal = shares[rows[:, None] != torch.arange(num_classes)[None, :]]  # drop each row's own class
    floor = torch.quantile(off_diagonal, quantile).item()
    probe_accuracy = (predicted == held.labels).double().mean().item()
    noisy_share = min(1.0, floor * num_classes / max(probe_accuracy, 1e-9))
    names = list(data.class_names)
    figures = [Figure("matrix", "held-out train images: given label (rows) vs the probe's class (columns), "
                                "share of each row", {
                          "values": (confusion / counts.clamp(min=1)[:, None]).numpy(),
                          "rows": names, "cols": names, "xlabel": "probe's class", "ylabel": "given label"}),
               _disagreements_figure(names, scores, held, data.value_range)]
    details = {"noise_floor": floor, "quantile": quantile, "quiet_cells": int((off_diagonal == 0).sum()),
               "off_diagonal_cells": len(off_diagonal), "probe_accuracy": probe_accuracy,
               "train_scored": len(held)}
    said = (f"on {len(held)} held-out train images, the {quantile:.0%} quantile of how often a given label holds "
            f"images the probe puts in another class is {floor:.2%} (limit {max_floor:.0%}); "
            f"{details['quiet_cells']} of {len(off_diagonal)} label/class pairs meet at most once")
    ok = f"{said}: most pairs of classes are never confused, as in cleanly labelled data."
    fail = (f"{said}: labels look flipped at random - even classes that look nothing alike share labels. Roughly "
            f"{noisy_share:.0%} of train labels may be wrong (noisy annotation, labels re-drawn or mixed up when "
            "the set was built). A model trains on them anyway; look at the images the probe rejects below.")
    return measured("label_noise", STAGE, floor, max_floor, "<=", ok, fail, figures=figures, details=details)


def _per_class_figure(names: list[str], wrong: dict[str, torch.Tensor], held: Split, reference: Split) -> Figure:
    num_classes = len(names)
    return Figure("bars", "linear-probe error per class: held-out train labels vs val + test labels", {
        "categories": names,
        "series": {"train (held out)": _per_class_error(wrong["train"], held.labels.long(), num_classes),
                   "val + test": _per_class_error(wrong["reference"], reference.labels.long(), num_classes)},
        "ylabel": "probe error"})


def _disagreements_figure(names: list[str], scores: torch.Tensor, held: Split, value_range: tuple[float, float],
                          count: int = 16) -> Figure:
    """The held-out train images whose label the probe most confidently rejects."""
    labels = held.labels.long()
    margin = scores.max(1).values - scores.gather(1, labels[:, None]).squeeze(1)
    top = margin.argsort(descending=True)[:count]
    predicted = scores.argmax(1)
    return Figure("images", f"the {len(top)} held-out train images whose label the probe most confidently rejects", {
        "images": unit_pixels(held.images[top], value_range).numpy(),  # [0, 1]
        "captions": [f"label {names[labels[i]]} / probe {names[predicted[i]]}" for i in top.tolist()]})
