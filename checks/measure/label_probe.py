"""The label checks' probe: ridge regression on cheap image features, and its nulls.

The features are the image at most 16x16 per channel (average-pooled: fine detail barely helps a
linear model, and it keeps the solve small) plus the magnitude of the grey image's 2-D Fourier
transform, which does not change when the object moves in the frame. On raw pixels alone a linear
probe misses 60-75% of the labels of clean digits shifted by a few pixels or of shapes drawn anywhere
(tests/hard_clean.py); with the spectrum it misses 10-25%, so its disagreements mean more.

The probe is cross-fit on a sample of train (three folds, each scored by the probe fit on the other
two), so every sampled train example is scored by a probe that never saw it. Its fit is
W = (X^T X + lambda I)^-1 X^T onehot(y): with the features fixed, the fit for any other labels (permuted
for a null, or with flips injected) is one more matmul on the kept inverses.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from checks.measure.near_copies import image_hashes
from checks.measure.folds import content_folds
from recipe.data import UINT8_RANGE, Split, unit_pixels
from recipe.pipeline import Pipeline

POOLED_SIDE = 16  # the longest side the pixels keep; 28x28 digits pool to 14x14, 32x32 photos to 16x16
FOLDS = 3  # each fold scored by a probe fit on the other two: all of the sample is scored, two thirds fit each probe
PERMUTATIONS = 20  # label permutations behind each null: enough for its mean and spread
RIDGE_PER_EXAMPLE = 0.1  # lambda = 0.1 N on standardised features: best or near best on every hard-clean set


def probe_features(images: torch.Tensor, value_range: tuple[float, float] = UINT8_RANGE) -> torch.Tensor:
    """(N, D) float32: pooled pixels in [0, 1] per channel, then |FFT2| of the pooled grey image. Single
    precision is plenty: the ridge term keeps the solve well conditioned (lambda = 0.1 N on standardised
    features). Feature vectors (N, D) are their own features: the probe standardises them."""
    if images.dim() == 2:
        return images.float()
    x = unit_pixels(images, value_range, torch.float32)  # (N, C, H, W)
    height, width = x.shape[-2:]
    if max(height, width) > POOLED_SIDE:
        factor = -(-max(height, width) // POOLED_SIDE)  # ceil: 28 -> 2 (14x14), 40 -> 3 (14x14)
        x = F.avg_pool2d(x, factor, ceil_mode=True)
    grey = x.mean(1)
    spectrum = torch.fft.rfft2(grey - grey.mean((1, 2), keepdim=True)).abs()  # shift-invariant
    return torch.cat([x.flatten(1), spectrum.flatten(1) / grey[0].numel() ** 0.5], dim=1)


@dataclass(frozen=True)
class Probe:
    """Ridge probes cross-fit on a sample of train: each of `FOLDS` folds is scored by the probe fit on the
    others, so every sampled train example is scored by a probe that never saw it (nor an exact copy:
    folds are drawn by image content)."""
    train: Split             # the sampled train examples, all of them scored
    folds: torch.Tensor      # (N,) fold of each
    num_classes: int
    mean: torch.Tensor       # (D,) feature means over the sample
    scale: torch.Tensor      # (D,) feature stds over the sample
    x: torch.Tensor          # (N, D + 1) standardised features plus a constant column
    solves: tuple[torch.Tensor, ...]  # per fold, (X^T X + lambda I)^-1 over the other folds
    value_range: tuple[float, float]
    seed: int

    @property
    def fit_size(self) -> int:
        return int((self.folds != 0).sum())

    def design(self, images: torch.Tensor) -> torch.Tensor:
        z = (probe_features(images, self.value_range) - self.mean) / self.scale
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)

    def fold_weights(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """Per fold, (D + 1, k * classes): the probe fit on the other folds labelled `labels` ((N,), or (N, k)
        for k label sets at once)."""
        targets = F.one_hot(labels.reshape(len(self.x), -1).long(), self.num_classes).to(self.x.dtype).flatten(1)
        total = self.x.T @ targets
        return [solve @ (total - self.x[self.folds == k].T @ targets[self.folds == k])
                for k, solve in enumerate(self.solves)]

    def scores(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, k * classes): each sampled train example scored by the probe of the folds it is not in."""
        weights = self.fold_weights(self.train.labels if labels is None else labels)
        out = torch.empty(len(self.x), weights[0].shape[1], dtype=self.x.dtype)
        for k, w in enumerate(weights):
            out[self.folds == k] = self.x[self.folds == k] @ w
        return out

    def score_other(self, images: torch.Tensor) -> torch.Tensor:
        """(M, classes) for images outside the sample, each by one fold's probe (by content, like train's),
        so both sides are scored by probes of the same strength."""
        weights, x = self.fold_weights(self.train.labels), self.design(images)
        folds = content_folds(images, len(self.solves)) if len(images) else torch.zeros(0, dtype=torch.long)
        out = torch.empty(len(x), self.num_classes, dtype=x.dtype)
        for k, w in enumerate(weights):
            out[folds == k] = x[folds == k] @ w
        return out

    @cached_property
    def null_accuracies(self) -> torch.Tensor:
        """(PERMUTATIONS,) cross-fit accuracy of the probe fit on the train labels permuted: the null every
        label check reads (computed once, with its own seeded generator)."""
        labels, permutations = self.train.labels, PERMUTATIONS
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.stack([torch.randperm(len(labels), generator=generator) for _ in range(permutations)])
        scores = self.scores(labels[order].T)  # (N, permutations * classes)
        predicted = scores.reshape(len(scores), permutations, self.num_classes).argmax(2)
        return (predicted == labels[:, None]).double().mean(0)


def fit_probe(train: Split, num_classes: int, value_range: tuple[float, float], seed: int = 0,
              folds: int = FOLDS) -> Probe:
    raw = probe_features(train.images, value_range)
    mean, scale = raw.mean(0), raw.std(0).clamp_min(1e-6)
    x = torch.cat([(raw - mean) / scale, torch.ones(len(raw), 1, dtype=raw.dtype)], dim=1)
    fold = content_folds(train.images, folds)
    gram = x.T @ x
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    solves = []
    for k in range(folds):  # kept whole: each refit for other labels is then one matmul
        part = x[fold == k]
        solves.append(torch.linalg.inv(gram - part.T @ part + RIDGE_PER_EXAMPLE * (len(x) - len(part)) * eye))
    return Probe(train, fold, num_classes, mean, scale, x, tuple(solves), value_range, seed)


def unseen(split: Split, seen_images: torch.Tensor) -> Split:
    """`split` without the images that also occur (exactly) in `seen_images`."""
    seen = set(image_hashes(seen_images))
    keep = torch.tensor([h not in seen for h in image_hashes(split.images)], dtype=torch.bool)
    return Split(split.images[keep], split.labels[keep])


_LAST_PROBE: list[tuple[weakref.ref, tuple, tuple]] = []


def held_out_probe(pipeline: Pipeline, max_examples: int = 10_000) -> tuple[Probe | None, torch.Generator]:
    """The probe cross-fit on a random sample of train (up to `max_examples`), and a generator seeded by the
    config, past the sampling. Kept for the last data bundle, as `find_copies` is: the label checks all read
    one probe, and each stays a function of the pipeline. None when train is too small to fit one (fewer
    than 15 examples a class) or holds labels out of range (integrity's finding)."""
    data, key = pipeline.data, (pipeline.config.seed, max_examples)
    if not (_LAST_PROBE and _LAST_PROBE[0][0]() is data and _LAST_PROBE[0][1] == key):
        generator = torch.Generator().manual_seed(pipeline.config.seed)
        order = torch.randperm(len(data.train), generator=generator)[:max_examples].to(data.train.labels.device)
        train = Split(data.train.images[order].cpu(), data.train.labels[order].cpu().long())
        usable = len(train) >= 15 * data.num_classes and bool(((train.labels >= 0) &
                                                                (train.labels < data.num_classes)).all())
        probe = fit_probe(train, data.num_classes, data.value_range, pipeline.config.seed) if usable else None
        _LAST_PROBE[:] = [(weakref.ref(data), key, (probe, generator.get_state()))]
    probe, state = _LAST_PROBE[0][2]
    return probe, torch.Generator().set_state(state)


def flipped(labels: torch.Tensor, num_classes: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """`labels` with `fraction` of them moved to another class drawn at random."""
    flip = torch.rand(len(labels), generator=generator) < fraction
    other = (labels + torch.randint(1, num_classes, (len(labels),), generator=generator)) % num_classes
    return torch.where(flip, other, labels)


def z_score(value: float, null: torch.Tensor) -> float:
    """How many null standard deviations `value` lies above the null's mean (the spread floored, so 20
    identical null values do not make any difference infinitely significant)."""
    spread = max(null.std().item(), 1e-3 * max(abs(null.mean().item()), 1e-6), 1e-12)
    return (value - null.mean().item()) / spread
