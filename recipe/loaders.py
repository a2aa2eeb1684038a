"""The plain loop's data: a DataBundle and a batch function read from the user's own DataLoaders.

    view = read_loaders(train_loader, val_loader)        # test_loader optional
    view.data, view.norm, view.batches, view.batch_size  # what a Pipeline needs

The checks trace every example back to its index, so each loader must be a `DataLoader` over a
map-style Dataset with the default collate: its items are read once, in order, into memory. The
batch function then gives the model exactly what the loader gives it: the dataset's transformed
tensors (a Normalize in the transform included), in batches of the loader's size, shuffled in train
only if the train loader shuffles.

How a transformed image is held: the DataBundle keeps raw pixels in [0, 1] plus the NormStats that
turn them into what the model sees. A dataset whose transform ends in Normalize gives values outside
[0, 1]; per channel, they are read back into [0, 1] as (x - low) / (high - low), low and high the
least and greatest value over all three splits, and the NormStats undo exactly that map. For
ToTensor+Normalize over 8-bit images that recovers the pixels themselves. Feature vectors are kept as
given, with identity stats (what the net sees is what the dataset yields). Token ids are read by
`bundle_from_token_ids`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, default_collate

from recipe.data import SPLIT_SEED, Batch, DataBundle, NormStats, TensorBatches, stratified_holdout
from recipe.datasets import IMAGE_KEYS, LABEL_KEYS, bundle_from_datasets
from recipe.features import IDENTITY_RANGE, FeatureBatches
from recipe.read_once import LoaderError, ReadOnce, read_each_once, read_through_loader, seeded  # noqa: F401 (LoaderError: users catch it here)
from recipe.sequences import TokenBatches
from recipe.token_datasets import bundle_from_token_ids

SPLITS = ("train", "val", "test")
RANDOM_READS = 8  # reads of item 0 that tell a random transform: a coin-flip augmentation hides 1 time in 128


@dataclass(frozen=True)
class LoaderView:
    """What the checks need of the user's loaders, in the Pipeline's terms."""
    data: DataBundle
    norm: NormStats | None  # None for token ids
    batches: Callable[..., Iterator[Batch]]
    batch_size: int
    train_shuffled: bool  # whether the train loader shuffles (its sampler is a RandomSampler)


def read_loaders(train_loader, val_loader, test_loader=None, *, class_names: Sequence[str] | None = None,
                 vocab: Sequence[str] | int | None = None, decode: Callable | None = None, pad_id: int | None = None,
                 device: str | torch.device = "cpu") -> LoaderView:
    """Read the loaders' datasets into a LoaderView. With no `test_loader`, half of val (stratified by
    class; the tail for token ids) is held out as test, so no split is a copy of another. Read under fixed
    seeds (recipe/read_once.py `seeded`): a random transform gives the same draw on every run."""
    with seeded():
        return _read_loaders(train_loader, val_loader, test_loader, class_names, vocab, decode, pad_id, device)


def _read_loaders(train_loader, val_loader, test_loader, class_names, vocab, decode, pad_id, device) -> LoaderView:
    loaders = {"train": train_loader, "val": val_loader, "test": test_loader}
    datasets = {name: _dataset(loader, name) for name, loader in loaders.items() if loader is not None}
    batch_size = train_loader.batch_size or getattr(datasets["train"], "batch_size", None)
    if batch_size is None:
        raise LoaderError("the train loader has no batch_size (a custom batch_sampler?): give it batch_size=N, "
                          "so the checks batch the way training does")
    sampler = train_loader.sampler  # under DDP a DistributedSampler, which shuffles when asked to
    shuffled = isinstance(sampler, RandomSampler) or (isinstance(sampler, DistributedSampler) and sampler.shuffle)
    class_names = class_names or getattr(datasets["train"], "classes", None)
    datasets = {name: _one_draw(ds, name) for name, ds in datasets.items()}
    first = _pair(datasets["train"][0], "train", 0)
    if _is_ids(first[0]) or (first[1] is None and _is_ids(datasets["train"][0])):
        data = _token_bundle(datasets, vocab, decode, pad_id, device)
        inner = TokenBatches(data, batch_size)
        norm = None
    else:
        cached = {name: [_pair(ds[i], name, i) for i in range(len(ds))] for name, ds in datasets.items()}
        if "test" not in cached:
            cached["val"], cached["test"] = _halves(cached["val"])
        features = torch.as_tensor(first[0]).dim() == 1
        data, norm = _feature_bundle(cached, class_names, device) if features else \
            _image_bundle(cached, class_names, device)
        inner = FeatureBatches(data, norm, batch_size) if features else TensorBatches(data, norm, batch_size)
    read = {name: ds for name, ds in datasets.items() if isinstance(ds, ReadOnce)}
    if read:
        data = replace(data, read_once=tuple((name, ds.kind) for name, ds in read.items()),
                       reason=data.reason + "; " + "; ".join(f"{name}: {ds.note}" for name, ds in read.items()))
    batches = LoaderBatches(inner, shuffled, batch_size if train_loader.drop_last else None)
    return LoaderView(data, norm, batches, batch_size, shuffled)


def _one_draw(dataset, split: str):
    """A dataset whose item 0 differs between two reads has a random transform: each item is then read
    once, and the checks see that one draw (the model sees a new one every epoch)."""
    if isinstance(dataset, ReadOnce):
        return dataset
    first = _pair(dataset[0], split, 0)[0]
    for _ in range(RANDOM_READS - 1):  # a flip with p = 0.5 gives item 0 unchanged 1 time in 2 reads
        again = _pair(dataset[0], split, 0)[0]
        if isinstance(first, torch.Tensor) and isinstance(again, torch.Tensor) and not torch.equal(first, again):
            return read_each_once(dataset, split)
    return dataset


class LoaderBatches:
    """The harness's batches of the user's data, shuffled in train only where the train loader shuffles:
    a train loader built with shuffle=False is trained in file order, and the checks see that order. A train
    loader with drop_last=True never yields its incomplete last batch, and neither do these."""

    def __init__(self, inner: Callable[..., Iterator[Batch]], train_shuffled: bool, drop_below: int | None = None):
        self.inner, self.train_shuffled, self.drop_below = inner, train_shuffled, drop_below

    def __call__(self, split: str, *, shuffle: bool = False, augment: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Batch]:
        shuffle = shuffle and (split != "train" or self.train_shuffled)
        batches = self.inner(split, shuffle=shuffle, augment=augment, generator=generator)
        if split == "train" and self.drop_below:
            return (batch for batch in batches if len(batch.y) >= self.drop_below)
        return batches


def _dataset(loader, split: str):
    """The loader's dataset, or what one pass through the loader gave where its items have no index
    (a stream) or are not what the model gets (a collate_fn): recipe/read_once.py."""
    if not isinstance(loader, DataLoader):
        raise LoaderError(f"the {split} loader is a {type(loader).__name__}: pass a torch.utils.data.DataLoader, "
                          "so the checks batch the data the way training does")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        return read_through_loader(loader, split, "stream")
    if loader.collate_fn is not default_collate:
        return read_through_loader(loader, split, "collate")
    try:
        n = len(dataset)
    except TypeError:
        raise LoaderError(f"the {split} loader's dataset has no len(): give a map-style Dataset") from None
    if n == 0:
        raise LoaderError(f"the {split} loader's dataset is empty")
    return dataset


def _pair(item, split: str, i: int):
    """(x, label) of one item; (item, None) when the item is one sequence of ids."""
    if isinstance(item, Mapping):
        found = [k for k in IMAGE_KEYS if k in item], [k for k in LABEL_KEYS if k in item]
        if len(found[0]) != 1 or len(found[1]) != 1:
            raise LoaderError(f"{split} item {i} is a dict with keys {sorted(map(str, item))[:8]}; give one input key "
                              f"({', '.join(IMAGE_KEYS)}) and one label key ({', '.join(LABEL_KEYS)})")
        return item[found[0][0]], item[found[1][0]]
    if isinstance(item, (tuple, list)) and len(item) >= 2 and not _is_ids(item):
        return item[0], item[1]
    return item, None


def _is_ids(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() >= 1 and not value.is_floating_point() and value.dtype != torch.bool \
            and value.dtype != torch.uint8  # uint8 is pixels
    return isinstance(value, (list, tuple)) and len(value) > 2 and all(isinstance(v, int) for v in value)


def _halves(items: list) -> tuple[list, list]:
    labels = torch.tensor([int(label) for _, label in items])
    kept, held = stratified_holdout(labels, lambda n: n // 2, torch.Generator().manual_seed(SPLIT_SEED))
    if len(held) == 0:
        raise LoaderError(f"the val loader holds {len(items)} examples: too few to lend half to a test split; "
                          "pass test_loader")
    return [items[i] for i in kept.tolist()], [items[i] for i in held.tolist()]


class Loaded(Dataset):
    """A list of (x, label) as a map-style Dataset; x mapped by `scale` on the way out."""

    def __init__(self, items: list, scale: Callable[[torch.Tensor], torch.Tensor] = lambda x: x, classes=None):
        self.items, self.scale = items, scale
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x, label = self.items[i]
        return self.scale(x), int(label)


def _image_bundle(cached: dict, class_names, device) -> tuple[DataBundle, NormStats]:
    for name, items in cached.items():
        if not isinstance(items[0][0], torch.Tensor):
            raise LoaderError(f"the {name} dataset gives a {type(items[0][0]).__name__}, not a tensor: add ToTensor "
                              "to its transform, as the model receives tensors")
    first = cached["train"][0][0]
    if first.dim() == 2:
        cached = {name: [(x.unsqueeze(0), y) for x, y in items] for name, items in cached.items()}
    channels = cached["train"][0][0].shape[0]
    low = torch.full((channels, 1, 1), float("inf"))
    high = torch.full((channels, 1, 1), float("-inf"))
    for items in cached.values():
        for x, _ in items:
            flat = x.float().reshape(channels, -1)
            low = torch.minimum(low, flat.min(1).values.view(-1, 1, 1))
            high = torch.maximum(high, flat.max(1).values.view(-1, 1, 1))
    if bool((low >= 0).all() and (high <= 1).all()):  # already pixels in [0, 1] (ToTensor alone): keep them
        low, high = torch.zeros_like(low), torch.ones_like(high)
    span = torch.where(high > low, high - low, torch.ones_like(high))  # a constant channel: any span undoes it

    def to_unit(x: torch.Tensor) -> torch.Tensor:  # (C, H, W) as the model sees it -> [0, 1]
        return ((x.float() - low) / span).clamp_(0, 1)

    classes = list(class_names) if class_names else None
    data = bundle_from_datasets(Loaded(cached["train"], to_unit, classes), Loaded(cached["test"], to_unit),
                                Loaded(cached["val"], to_unit), source="loaders", device=device)
    data = _with_reason(data, low, high)
    # x_seen = unit * span + low = (unit - (-low / span)) / (1 / span): stats that undo the read-back exactly
    norm = NormStats((-low / span).to(device), (1 / span).to(device), data.value_range)
    return data, norm


def _with_reason(data: DataBundle, low: torch.Tensor, high: torch.Tensor) -> DataBundle:
    if bool((low == 0).all() and (high == 1).all()):
        return replace(data, reason=data.reason + "; pixels as the loaders give them")
    spans = ", ".join(f"{a:.4g}..{b:.4g}" for a, b in zip(low.flatten().tolist(), high.flatten().tolist()))
    return replace(data, reason=data.reason + f"; the loaders give normalised values (per channel {spans}), "
                                              "read back into [0, 1] pixels")


def _feature_bundle(cached: dict, class_names, device) -> tuple[DataBundle, NormStats]:
    classes = list(class_names) if class_names else None
    data = bundle_from_datasets(Loaded(cached["train"], classes=classes), Loaded(cached["test"]),
                                Loaded(cached["val"]), source="loaders", device=device)
    width = data.train.images.shape[1]
    # identity stats: the net sees the rows exactly as the dataset yields them, standardised or not
    return data, NormStats.of(torch.zeros(width), torch.ones(width), data.train.images.device, IDENTITY_RANGE)


def _token_bundle(datasets: dict, vocab, decode, pad_id, device) -> DataBundle:
    if vocab is None:
        raise LoaderError("the loaders give token ids: pass vocab= (the vocabulary size V, or its token strings)")
    if "test" not in datasets:  # the tail of val: neighbouring blocks of one stream share context
        val = datasets["val"]
        cut = len(val) - len(val) // 2
        if cut == len(val):
            raise LoaderError("the val loader holds one sequence: too few to lend half to a test split; "
                              "pass test_loader")
        datasets = {**datasets, "val": torch.utils.data.Subset(val, range(cut)),
                    "test": torch.utils.data.Subset(val, range(cut, len(val)))}
    return bundle_from_token_ids(_Listed(datasets["train"]), _Listed(datasets["test"]), _Listed(datasets["val"]),
                                 vocab=vocab, decode=decode, pad_id=pad_id, source="loaders", device=device)


class _Listed:
    """A dataset's items as bundle_from_token_ids reads them: a sequence, or an (x, y) pair as a tuple."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        x, y = _pair(item, "token", i)
        return item if y is None else (x, y)
