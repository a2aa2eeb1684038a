"""Feature vectors: tabular classification, one row of D numbers per example, through the same
Pipeline, `fit` and checks as images.

A split of feature vectors is `(N, D)` float32 raw values (Split.images) and `(N,)` int64 labels.
Normalisation is per feature, with stats from train only: `feature_stats` holds the D means and
stds in a NormStats (its (C, 1, 1) form read as (D, 1, 1); `FeatureBatches` flattens them back to
(D,) where it applies them). The value range is (0, 1), the identity scaling, so the stats are in
the features' own units and `x * std + mean` gives back the raw row.

Sources: scikit-learn's bundled tables (no download), split stratified with the fixed SPLIT_SEED.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from recipe.data import SPLIT_SEED, Batch, DataBundle, NormStats, Split, stratified_holdout
from recipe.errors import DataError

IDENTITY_RANGE = (0.0, 1.0)  # (x - 0) / (1 - 0) = x: features keep their own units
TEST_FRACTION, VAL_FRACTION = 0.2, 0.15  # per class: wine's 178 rows -> 114 train / 28 val / 36 test
# What `recipe check/train/run --data wine` trains with unless told otherwise. The image defaults (batch 64,
# lr 0.001, 10 epochs) give wine's 120 train rows 20 steps: run_length rightly calls that too short, and a
# zero-initialised linear model on 13 standardised features moves its logits ~60x slower than on 784 pixels.
TABLE_DEFAULTS = {"batch_size": 16, "lr": 0.01, "epochs": 30}
_LOADERS = {"breast-cancer": "load_breast_cancer", "wine": "load_wine", "iris": "load_iris"}  # --data name: reader
FEATURE_SOURCES = tuple(_LOADERS)  # offered by recipe/all_sources.py, beside the image and text sources


def load_features(source: str, device: str | torch.device = "cpu") -> DataBundle:
    """One of scikit-learn's bundled tables as a stratified train/val/test features bundle."""
    if source not in _LOADERS:
        raise DataError(f"unknown table {source!r}; choose one of {', '.join(FEATURE_SOURCES)}")
    try:
        import sklearn.datasets  # imported late: only these sources need it (and it takes ~1 s)
    except ImportError:
        raise DataError(f"--data {source} reads scikit-learn's bundled tables: "
                        "pip install 'scikit-learn>=1.3'") from None
    table = getattr(sklearn.datasets, _LOADERS[source])()
    rows = torch.as_tensor(table.data, dtype=torch.float32)  # (N, D)
    labels = torch.as_tensor(table.target, dtype=torch.int64)  # (N,)
    train, val, test = split_features(rows, labels)
    names = [str(n) for n in table.target_names]
    reason = f"scikit-learn's {source} table ({rows.shape[0]} rows of {rows.shape[1]} features), split stratified"
    return feature_bundle(train, val, test, names, source=source, reason=reason, device=device)


def split_features(rows: torch.Tensor, labels: torch.Tensor, test_fraction: float = TEST_FRACTION,
                   val_fraction: float = VAL_FRACTION) -> tuple[Split, Split, Split]:
    """Hold out test, then val from the rest, stratified by class with the fixed SPLIT_SEED, so the
    splits never move with the training seed."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)

    def share(fraction: float):  # at least one of each class in the held-out split once it has 3
        return lambda n: max(round(n * fraction), 1 if n >= 3 else 0)
    rest, test = stratified_holdout(labels, share(test_fraction), generator)
    train, val = stratified_holdout(labels[rest], share(val_fraction), generator)
    train, val = rest[train], rest[val]
    return tuple(Split(rows[p], labels[p]) for p in (train, val, test))


def feature_bundle(train: Split, val: Split, test: Split, class_names: Sequence[str], *, source: str,
                   reason: str, device: str | torch.device = "cpu") -> DataBundle:
    """Three (N, D) splits as a features bundle on `device`, refusing what is not a table of numbers."""
    widths = {name: tuple(s.images.shape[1:]) for name, s in zip(("train", "val", "test"), (train, val, test))}
    if any(len(w) != 1 for w in widths.values()) or len(set(widths.values())) > 1:
        raise DataError(f"feature vectors must be (N, D) with one D in every split, got {widths}")
    if not train.images.is_floating_point():
        raise DataError(f"feature vectors must be float, got {train.images.dtype}; cast them with .float()")
    device = torch.device(device)
    moved = [Split(s.images.float().to(device), s.labels.to(device)) for s in (train, val, test)]
    return DataBundle(*moved, tuple(class_names), source, reason, value_range=IDENTITY_RANGE, kind="features")


def feature_stats(split: Split) -> NormStats:
    """Per-feature mean and std of one split, which should be train: never val or test. A constant
    feature takes std 1 (centred, not divided by 0)."""
    rows = split.images.double()
    mean, std = rows.mean(0), rows.std(0) if len(rows) > 1 else torch.ones(rows.shape[1], dtype=rows.dtype)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return NormStats.of(mean.float(), std.float(), split.images.device, IDENTITY_RANGE)


def standardise_features(rows: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """Raw (N, D) rows -> (rows - mean) / std per feature, as a new float32 tensor."""
    stats = stats.to(rows.device)
    return (rows.float() - stats.mean.flatten()).div_(stats.std.flatten()).contiguous()


class FeatureBatches:
    """Standardised (B, D) batches drawn by indexing the split tensors; each split is standardised
    once and cached, so a batch costs one index_select. There is no augmentation for tables."""

    def __init__(self, data: DataBundle, stats: NormStats, batch_size: int):
        if stats.channels != data.train.images.shape[1]:
            raise DataError(f"the normalisation stats hold {stats.channels} values but the rows have "
                            f"{data.train.images.shape[1]} features; give one mean and std per feature")
        self.data, self.stats, self.batch_size = data, stats, batch_size
        self._standardised: dict[str, torch.Tensor] = {}

    def _split_x(self, split: str) -> torch.Tensor:
        if split not in self._standardised:
            self._standardised[split] = standardise_features(self.data.split(split).images, self.stats)
        return self._standardised[split]

    def __call__(self, split: str, *, shuffle: bool = False, augment: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Batch]:
        source = self.data.split(split)
        x = self._split_x(split)
        order = (torch.randperm(len(source), generator=generator) if shuffle else torch.arange(len(source)))
        order = order.to(source.labels.device)
        for start in range(0, len(source), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield Batch(x.index_select(0, idx), source.labels.index_select(0, idx), idx)
