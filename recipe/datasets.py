"""Bring your own data: a DataBundle from map-style `torch.utils.data` Datasets yielding (image, label)
pairs, or dicts with one image and one label key ({"image": ..., "label": ...}, as Hugging Face gives).

    train = torchvision.datasets.CIFAR10("data", train=True, transform=transforms.ToTensor())
    test = torchvision.datasets.CIFAR10("data", train=False, transform=transforms.ToTensor())
    data = bundle_from_datasets(train, test)   # val held out of train, stratified

Each dataset is read once, through its own transform, into memory: the checks trace every example
back to its source by index, so they need the pixels, not a stream. The transform must give the
image as a (C, H, W) tensor in [0, 1] (ToTensor, or PIL images, which are converted the same way)
and must be deterministic: normalisation is the harness's (per channel, from train only) and
augmentation belongs in the pipeline's `augment`, where the checks can see it.

Images that are all whole 8-bit levels (k / 255, as ToTensor makes of PNGs, JPEGs and CIFAR-10) are
kept as uint8, 4x smaller and exact; any other float image (a Resize with antialiasing, a float
source) keeps every split as float32 with the declared value range (0, 1), so nothing is quantised.

Items whose input is a 1-D float vector (D,) (a tensor or numpy array) are rows of a table: they
make a features bundle (recipe/features.py), raw values kept, standardised per feature by the
pipeline with train's stats.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import numpy as np
import torch

from recipe.data import SPLIT_SEED, UINT8_RANGE, DataBundle, Split, stratified_holdout
from recipe.errors import DataError

VAL_FRACTION = 0.1  # of train, per class, when no val set is given
UNIT_RANGE = (0.0, 1.0)  # the declared range of float images, as ToTensor gives them
IMAGE_KEYS = ("image", "img", "pixel_values", "x", "input")  # what a dict item may call its image
LABEL_KEYS = ("label", "labels", "target", "y")  # and its class index
LEVEL_TOLERANCE = 1e-6  # float32 k / 255 is within ~3e-8 of k / 255: anything further is not an 8-bit level


def bundle_from_datasets(train, test, val=None, *, class_names: Sequence[str] | None = None,
                         source: str = "datasets", device: str | torch.device = "cpu") -> DataBundle:
    """Read the datasets into a DataBundle; with no `val`, hold one out of train, stratified by class.
    Datasets of 1-D float vectors (D,) give a features bundle (recipe/features.py) instead."""
    if _row_kind(train) == "features":
        return _feature_bundle(train, test, val, class_names, source, device)
    splits = {"train": _read(train, "train"), "test": _read(test, "test")}
    if val is not None:
        splits["val"] = _read(val, "val")
    as_float = any(s.images.is_floating_point() for s in splits.values())
    if as_float:  # one split has images between 8-bit levels: keep every split float, one declared range
        splits = {name: Split(_as_unit_float(s.images), s.labels) for name, s in splits.items()}
    if val is None:
        generator = torch.Generator().manual_seed(SPLIT_SEED)
        full = splits["train"]
        kept, held = stratified_holdout(full.labels, lambda n: max(round(n * VAL_FRACTION), 1 if n >= 3 else 0),
                                        generator)
        splits["train"], splits["val"] = Split(full.images[kept], full.labels[kept]), \
            Split(full.images[held], full.labels[held])
    shapes = {name: tuple(s.images.shape[1:]) for name, s in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the datasets give images of different shapes ({shapes}); make the transforms agree")
    names = tuple(class_names or getattr(train, "classes", None) or
                  [str(c) for c in range(int(max(s.labels.max() for s in splits.values())) + 1)])
    device = torch.device(device)
    moved = {name: Split(s.images.to(device), s.labels.to(device)) for name, s in splits.items()}
    reason = f"read from {type(train).__name__} datasets ({', '.join(f'{k} {len(v)}' for k, v in moved.items())})"
    return DataBundle(moved["train"], moved["val"], moved["test"], names, source, reason,
                      value_range=UNIT_RANGE if as_float else UINT8_RANGE)


def _row_kind(dataset) -> str:
    """'features' when the first item is a 1-D float vector; token sequences (1-D integer ids) are refused
    here, with where to go instead; anything else is read as an image (and judged by `_item`)."""
    item = dataset[0] if _has_items(dataset) else None
    x = _named(item, IMAGE_KEYS, "input", "train", 0) if isinstance(item, Mapping) else \
        item[0] if isinstance(item, (tuple, list)) and len(item) >= 2 else None
    if not isinstance(x, (torch.Tensor, np.ndarray)):  # PIL images and the like
        return "image"
    x = torch.as_tensor(x)
    if x.dim() != 1:
        return "image"
    if not x.is_floating_point():
        raise DataError(f"train item 0 is a 1-D {x.dtype} tensor: token sequences are read by "
                        "recipe.token_datasets.bundle_from_token_ids(train, test, vocab=...). Feature vectors must be float")
    return "features"


def _has_items(dataset) -> bool:
    try:
        return len(dataset) > 0
    except TypeError:
        return False  # `_read` says what is wrong


def _feature_bundle(train, test, val, class_names, source, device) -> DataBundle:
    from recipe.features import feature_bundle  # imported late: recipe.features imports recipe.data, as this does

    splits = {"train": _read_rows(train, "train"), "test": _read_rows(test, "test")}
    if val is not None:
        splits["val"] = _read_rows(val, "val")
    else:
        full = splits["train"]
        kept, held = stratified_holdout(full.labels, lambda n: max(round(n * VAL_FRACTION), 1 if n >= 3 else 0),
                                        torch.Generator().manual_seed(SPLIT_SEED))
        splits["train"], splits["val"] = Split(full.images[kept], full.labels[kept]), \
            Split(full.images[held], full.labels[held])
    names = tuple(class_names or getattr(train, "classes", None) or
                  [str(c) for c in range(int(max(s.labels.max() for s in splits.values())) + 1)])
    reason = f"read from {type(train).__name__} datasets of feature vectors " \
             f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())})"
    return feature_bundle(splits["train"], splits["val"], splits["test"], names, source=source, reason=reason,
                          device=device)


def _read_rows(dataset, split: str) -> Split:
    """A dataset of (vector (D,), label) items -> (N, D) float32 rows and (N,) labels."""
    if not _has_items(dataset):
        raise DataError(f"the {split} dataset is empty or has no len(): pass a map-style Dataset")
    rows, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        x, label = (_named(item, IMAGE_KEYS, "input", split, i), _named(item, LABEL_KEYS, "label", split, i)) \
            if isinstance(item, Mapping) else (item[0], item[1])
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() != 1 or (rows and x.shape != rows[0].shape):
            raise DataError(f"{split} item {i} has shape {tuple(x.shape)}; every item must be a vector of "
                            f"{tuple(rows[0].shape) if rows else '(D,)'} features")
        rows.append(x)
        labels.append(int(label))
    return Split(torch.stack(rows), torch.tensor(labels, dtype=torch.int64))


def _read(dataset, split: str) -> Split:
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"the {split} dataset has no len(): pass a map-style Dataset (dataset[i] -> (image, label))") from None
    if n == 0:
        raise DataError(f"the {split} dataset is empty")
    first = _item(dataset, 0, split)
    if not torch.equal(first[0], _item(dataset, 0, split)[0]):
        raise DataError(f"the {split} dataset gives a different image each time it is read: its transform is random. "
                        "Keep only deterministic transforms (ToTensor, Resize) there and put augmentation in the "
                        "pipeline's `augment`")
    images = torch.empty((n, *first[0].shape), dtype=torch.uint8)  # becomes float32 at the first off-level image
    labels = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        image, label = first if i == 0 else _item(dataset, i, split)
        if image.shape != images.shape[1:]:
            raise DataError(f"{split} item {i} is an image of shape {tuple(image.shape)}, item 0 of "
                            f"{tuple(images.shape[1:])}; add a Resize to the transform")
        if images.dtype == torch.uint8:
            levels = image.mul(255).round_()
            if (levels / 255 - image).abs().max() <= LEVEL_TOLERANCE:
                images[i] = levels.to(torch.uint8)
            else:
                images = _as_unit_float(images)
        if images.is_floating_point():
            images[i] = image
        labels[i] = label
    return Split(images, labels)


def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1 (exactly k / 255); float images as they are."""
    return images if images.is_floating_point() else images.float().div_(255)


def _item(dataset, i: int, split: str) -> tuple[torch.Tensor, int]:
    item = dataset[i]
    if isinstance(item, Mapping):
        image, label = _named(item, IMAGE_KEYS, "image", split, i), _named(item, LABEL_KEYS, "label", split, i)
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        image, label = item[0], item[1]
    else:
        raise DataError(f"{split} item {i} is a {type(item).__name__}; the dataset must give (image, label) pairs "
                        f"or dicts with one image key ({', '.join(IMAGE_KEYS)}) and one label key "
                        f"({', '.join(LABEL_KEYS)})")
    if not isinstance(image, torch.Tensor):
        image = _to_tensor(image, split, i)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise DataError(f"{split} item {i} is an image of shape {tuple(image.shape)}; expected (C, H, W) "
                        "(or a 1-D float vector (D,) of features, in every item)")
    if image.dtype == torch.uint8:
        image = image.float() / 255
    low, high = float(image.min()), float(image.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise DataError(f"{split} item {i} has values {low:.3g}..{high:.3g}, outside [0, 1]: drop Normalize from the "
                        "dataset's transform (the harness normalises per channel with train's stats)")
    return image.float(), int(label)


def _named(item: Mapping, keys: tuple[str, ...], what: str, split: str, i: int):
    """The one entry of a dict item under a known `what` key (Hugging Face datasets give {"image", "label"})."""
    found = [key for key in keys if key in item]
    if len(found) != 1:
        why = "none" if not found else f"several ({', '.join(found)})"
        raise DataError(f"{split} item {i} is a dict with keys {sorted(map(str, item))[:8]}: it has {why} of the "
                        f"{what} keys {', '.join(keys)}; give exactly one, or wrap the dataset to return (image, label)")
    return item[found[0]]


def _to_tensor(image, split: str, i: int) -> torch.Tensor:
    try:
        array = np.asarray(image)
    except Exception:  # anything numpy cannot read as pixels
        raise DataError(f"{split} item {i} is a {type(image).__name__}, not an image tensor or PIL image") from None
    if array.dtype != np.uint8:
        raise DataError(f"{split} item {i} is a {array.dtype} array; give uint8 pixels or a tensor in [0, 1]")
    tensor = torch.from_numpy(array.copy())
    return tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor  # (H, W, C) -> (C, H, W)
