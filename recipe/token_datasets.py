"""Bring your own token sequences: a tokens DataBundle from map-style Datasets (or tensors) of ids.

    train = MyTokenDataset("train")            # dataset[i] -> 1-D LongTensor of ids, or (x, y) ids
    data = bundle_from_token_ids(train, test, vocab=tokenizer_vocab, decode=tokenizer.decode)
    pipeline = gpt_pipeline(config, data)       # recipe.sequences

An item is either one sequence of ids (inputs and next-token targets are then ids[:-1] and ids[1:])
or an (x, y) pair of ids of one length. A split may also be a tensor: (N, T + 1) rows of ids, or a
1-D stream cut into non-overlapping blocks of `block_size` + 1. Sequences of different lengths need
a `pad_id`: they are padded to the longest, and padding carries no loss. Each split is read once
into memory, so every check can trace an example back to its index.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from recipe.data import DataBundle, Split
from recipe.errors import DataError
from recipe.sequences import DEFAULT_BLOCK, blocks_of, token_bundle

VAL_FRACTION = 0.1  # of train, held out from its END when no val set is given


def bundle_from_token_ids(train, test, val=None, *, vocab: Sequence[str] | int,
                          decode: Callable[[Sequence[int]], str] | None = None, pad_id: int | None = None,
                          block_size: int = DEFAULT_BLOCK, source: str = "token ids",
                          device: str | torch.device = "cpu") -> DataBundle:
    """Read the splits into a tokens DataBundle. `vocab` is the list of token strings (or just V);
    `decode` turns ids into text for the report (default: the vocab's strings joined, or the ids)."""
    tokens = tuple(str(i) for i in range(vocab)) if isinstance(vocab, int) else tuple(vocab)
    if not tokens:
        raise DataError("vocab is empty: give the token strings, or the vocabulary size V")
    splits = {"train": _read(train, "train", pad_id, block_size), "test": _read(test, "test", pad_id, block_size)}
    if val is not None:
        splits["val"] = _read(val, "val", pad_id, block_size)
    else:  # the tail, not a random sample: blocks cut from one stream overlap in context with their neighbours
        full = splits["train"]
        n_val = max(1, round(VAL_FRACTION * len(full)))
        if len(full) - n_val < 1:
            raise DataError(f"train holds {len(full)} sequences: too few to hold out a val split; pass `val`")
        splits["train"] = Split(full.images[:-n_val], full.labels[:-n_val])
        splits["val"] = Split(full.images[-n_val:], full.labels[-n_val:])
    lengths = {name: s.images.shape[1] for name, s in splits.items()}
    for name, split in splits.items():
        ids = torch.cat([split.images.flatten(), split.labels.flatten()])
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(tokens)):
            raise DataError(f"{name} holds ids {int(ids.min())}..{int(ids.max())}, outside the vocabulary "
                            f"[0, {len(tokens)})")
    if decode is None:
        decode = _joined(tokens) if not isinstance(vocab, int) else (lambda ids: " ".join(str(int(i)) for i in ids))
    reason = (f"read token ids ({', '.join(f'{k} {len(v)}' for k, v in splits.items())} sequences of "
              f"{'/'.join(map(str, sorted(set(lengths.values()))))} tokens, V = {len(tokens)})")
    return token_bundle(splits["train"], splits["val"], splits["test"], tokens, decode=decode, source=source,
                        reason=reason, pad_id=pad_id, device=device)


def _joined(tokens: tuple[str, ...]) -> Callable[[Sequence[int]], str]:
    return lambda ids: "".join(tokens[int(i)] for i in ids)


def _read(dataset, split: str, pad_id: int | None, block_size: int) -> Split:
    if isinstance(dataset, torch.Tensor):
        return _from_tensor(dataset, split, block_size)
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"the {split} dataset has no len(): pass a map-style Dataset (dataset[i] -> ids) "
                        "or a tensor of ids") from None
    if n == 0:
        raise DataError(f"the {split} dataset is empty")
    pairs = [_item(dataset[i], split, i) for i in range(n)]
    longest = max(len(x) for x, _ in pairs)
    if any(len(x) != longest for x, _ in pairs) and pad_id is None:
        raise DataError(f"the {split} sequences have different lengths ({min(len(x) for x, _ in pairs)}.."
                        f"{longest}); give pad_id so they can be padded (padding carries no loss)")
    x = torch.full((n, longest), pad_id if pad_id is not None else 0, dtype=torch.long)
    y = x.clone()
    for i, (xi, yi) in enumerate(pairs):
        x[i, :len(xi)], y[i, :len(yi)] = xi, yi
    return Split(x, y)


def _item(item, split: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One example as (x, y) 1-D int64 ids of one length."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(_is_ids(t) for t in item):
        x, y = (torch.as_tensor(t).long() for t in item)
        if x.shape != y.shape or x.dim() != 1:
            raise DataError(f"{split} item {i} is an (x, y) pair of shapes {tuple(x.shape)} and {tuple(y.shape)}; "
                            "both must be 1-D ids of the same length")
        return x, y
    if _is_ids(item):
        ids = torch.as_tensor(item).long()
        if ids.dim() != 1 or len(ids) < 2:
            raise DataError(f"{split} item {i} has shape {tuple(ids.shape)}; a sequence is 1-D, at least 2 ids")
        return ids[:-1], ids[1:]
    raise DataError(f"{split} item {i} is a {type(item).__name__}; give a 1-D LongTensor of ids, or an (x, y) "
                    "pair of them")


def _is_ids(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)


def _from_tensor(ids: torch.Tensor, split: str, block_size: int) -> Split:
    if ids.is_floating_point():
        raise DataError(f"the {split} tensor is {ids.dtype}; token ids are integers")
    ids = ids.long()
    if ids.dim() == 1:
        return blocks_of(ids, block_size)
    if ids.dim() == 2 and ids.shape[1] >= 2:
        return Split(ids[:, :-1].clone(), ids[:, 1:].clone())
    raise DataError(f"the {split} tensor has shape {tuple(ids.shape)}; give a 1-D stream or (N, T + 1) rows of ids")
