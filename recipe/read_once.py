"""Loaders the checks cannot read by index, read once through the loader itself.

Three things keep `dataset[i]` from being what the model gets, and each is common in real scripts:
- an IterableDataset (a stream: webdataset shards, a generator, Hugging Face streaming) has no index;
- a custom `collate_fn` does work on the batch (padding, a dict of tensors) that `dataset[i]` lacks;
- a random transform (RandomCrop, flips) gives a new x each time item i is read.

Each is read once, in the loader's own order and through its own collate, its batches cut back into
examples (at most MAX_READ per split): the checks then index that fixed draw, so what they see is
what the model got in that pass. What a draw cannot show is said by the checks that would need it
(`DataBundle.read_once`): a stream decides its own order, so `batch_sampling` judges only how its
batches mix classes; one draw of a random transform cannot be compared with clean images, so
`augmentation_consistency` is N/A with that reason.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from itertools import islice

import numpy as np
import torch
from torch.utils.data import Dataset

from recipe.datasets import IMAGE_KEYS, LABEL_KEYS
from recipe.errors import DataError

MAX_READ = 60_000  # examples read from one split's loader: a stream may never end
WHY = {  # DataBundle.read_once kinds, in words
    "stream": "an IterableDataset, read once in the order it streams",
    "collate": "its own collate_fn, read once through the loader",
    "random transform": "a random transform, read once (one draw of it)",
}


class LoaderError(DataError):
    """A loader the checks cannot read: not a DataLoader, batches that cannot be cut back into examples."""


class ReadOnce(Dataset):
    """Examples as one pass gave them: (x, y) pairs, or one tensor of token ids each."""

    def __init__(self, items: list, kind: str, capped: bool, batch_size: int | None = None):
        self.items, self.kind, self.capped = items, kind, capped
        self.batch_size = batch_size  # the first batch's size: a stream that batches itself has no loader batch_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    @property
    def note(self) -> str:
        cap = f", its first {MAX_READ:,}" if self.capped else ""
        return f"{WHY[self.kind]} ({len(self.items):,} examples{cap})"


def read_through_loader(loader, split: str, kind: str) -> ReadOnce:
    """One pass over `loader` (at most MAX_READ examples), each batch cut into examples. The same code and
    data read the same examples in the same order on every run: a map-style dataset is read in index order
    through a copy of the loader that does not shuffle, and a stream under fixed seeds (torch, random and
    numpy, their states put back after)."""
    if kind == "collate" and not isinstance(loader.dataset, torch.utils.data.IterableDataset):
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                                             collate_fn=loader.collate_fn)
    with seeded():
        return _read(loader, split, kind)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """torch, random and numpy seeded for a read; their states put back after."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def _read(loader, split: str, kind: str) -> ReadOnce:
    items: list = []
    first_size = None
    batches = iter(loader)
    for number in range(1 << 62):
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as error:  # the user's dataset or collate_fn: one line naming where, as for any user code
            raise LoaderError(f"reading the {split} loader raised {type(error).__name__}: {error}") from error
        examples = unbatched(batch, split, number)
        first_size = first_size or len(examples)
        items.extend(examples)
        if len(items) >= MAX_READ:
            return ReadOnce(items[:MAX_READ], kind, capped=True, batch_size=first_size)
    if not items:
        raise LoaderError(f"the {split} loader yielded no examples")
    return ReadOnce(items, kind, capped=False, batch_size=first_size)


def read_each_once(dataset, split: str) -> ReadOnce:
    """A map-style dataset with a random transform, each item read once, in index order."""
    return ReadOnce([dataset[i] for i in islice(range(len(dataset)), MAX_READ)], "random transform",
                    capped=len(dataset) > MAX_READ)


def unbatched(batch, split: str, number: int = 0) -> list:
    """A collated batch back as examples: (x[i], y[i]) pairs, or rows of a lone tensor of token ids."""
    where = f"{split} batch {number}"
    if isinstance(batch, torch.Tensor):
        return list(batch.unbind(0)) if batch.dim() >= 1 else _refuse(where, "a 0-d tensor")
    if isinstance(batch, Mapping):
        inputs, labels = [k for k in IMAGE_KEYS if k in batch], [k for k in LABEL_KEYS if k in batch]
        if len(inputs) != 1 or len(labels) != 1:
            raise LoaderError(f"{where} is a dict with keys {sorted(map(str, batch))[:8]}; give one input key "
                                  f"({', '.join(IMAGE_KEYS)}) and one label key ({', '.join(LABEL_KEYS)})")
        x, y = batch[inputs[0]], batch[labels[0]]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        return _refuse(where, f"a {type(batch).__name__}")
    try:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise LoaderError(f"{where} gives x as a {type(x).__name__} and y as a {type(y).__name__}: a collated batch "
                          "is (x, y) with one tensor each (a list of (x, y) items needs the default collate)") from None
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise LoaderError(f"{where} gives x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}: "
                              "the checks need one label (or one row of targets) per example in the batch")
    if y.is_floating_point():
        raise LoaderError(f"{where} gives float labels of shape {tuple(y.shape)} (soft labels: mixup or "
                              "cutmix in the collate_fn?): the checks need class indices; check the loader "
                              "without the label mixing, which belongs to the training step")
    return list(zip(x.unbind(0), y.unbind(0)))


def _refuse(where: str, what: str) -> list:
    raise LoaderError(f"{where} is {what}: give (x, y) batches, a dict with an input and a label key, "
                          "or a tensor of token ids")
