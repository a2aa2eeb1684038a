"""Counting on token splits, shared by the sequence checks: real (non-pad) positions, agreement of
targets with inputs at an offset, and the unigram / bigram losses a language model must beat.

All of it is counting on the raw (N, T) id tensors of a token DataBundle; no model runs here.
"""
from __future__ import annotations

import math

import torch

from recipe.data import DataBundle, Split

MAX_ROWS = 20_000  # rows per split counted: enough for stable shares, bounded cost on big corpora


def rows(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of at most MAX_ROWS rows, on the CPU."""
    return split.images[:MAX_ROWS].cpu(), split.labels[:MAX_ROWS].cpu()


def real(ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """True where `ids` hold a real token (not the pad id)."""
    return torch.ones_like(ids, dtype=torch.bool) if pad_id is None else ids != pad_id


def offset_agreement(x: torch.Tensor, y: torch.Tensor, k: int, pad_id: int | None) -> tuple[float, int]:
    """Share of positions t with y[:, t] == x[:, t + k], over the positions where both are real tokens."""
    T = x.shape[1]
    if abs(k) >= T:
        return math.nan, 0
    xs = x[:, k:] if k >= 0 else x[:, :T + k]
    ys = y[:, :T - k] if k >= 0 else y[:, -k:]
    both = real(xs, pad_id) & real(ys, pad_id)
    n = int(both.sum())
    return (float((xs == ys)[both].double().mean()) if n else math.nan), n


def chance_agreement(x: torch.Tensor, y: torch.Tensor, vocab: int, pad_id: int | None) -> float:
    """The agreement two independent draws from the input and target unigram distributions reach."""
    px = unigram_counts(x, vocab, pad_id)
    py = unigram_counts(y, vocab, pad_id)
    return float((px / px.sum().clamp(min=1) * py / py.sum().clamp(min=1)).sum())


def unigram_counts(ids: torch.Tensor, vocab: int, pad_id: int | None) -> torch.Tensor:
    kept = ids[real(ids, pad_id) & (ids >= 0) & (ids < vocab)]
    return torch.bincount(kept.reshape(-1), minlength=vocab).double()


def ngram_losses(data: DataBundle, split: str = "val") -> dict[str, float]:
    """The dumb baselines, in nats per target token on `split` (pad targets skipped), all fitted on train:
    uniform ln V; the unigram of train's targets; the bigram p(y[t] | x[t]) of train's pairs. Both are
    add-one (Laplace) smoothed so an unseen token costs a finite loss; `unigram_train_entropy` is the
    plain entropy of train's target distribution (what a unigram scores on train itself)."""
    V, pad = data.num_classes, data.pad_id
    x, y = rows(data.train)
    keep = real(y, pad) & (x >= 0) & (x < V) & (y >= 0) & (y < V)
    tx, ty = x[keep], y[keep]
    counts = torch.bincount(ty, minlength=V).double()
    p_train = counts / counts.sum()
    entropy = float(-(p_train[p_train > 0] * p_train[p_train > 0].log()).sum())
    log_unigram = ((counts + 1) / (counts.sum() + V)).log()
    pairs = torch.bincount(tx * V + ty, minlength=V * V).double().view(V, V)
    log_bigram = ((pairs + 1) / (pairs.sum(1, keepdim=True) + V)).log()
    ex, ey = rows(data.split(split))
    keep = real(ey, pad) & (ex >= 0) & (ex < V) & (ey >= 0) & (ey < V)
    ex, ey = ex[keep], ey[keep]
    n = max(len(ey), 1)
    return {"uniform": math.log(V), "unigram": float(-log_unigram[ey].sum() / n),
            "bigram": float(-log_bigram[ex, ey].sum() / n), "unigram_train_entropy": entropy,
            "tokens_scored": int(len(ey)), "split": split}


def position_unigram_log_probs(data: DataBundle) -> torch.Tensor:
    """(T, V) log p(target | position) fitted on train's targets: the best a model that never reads its
    input ids can predict (it may still know the position). Each position's counts get V pseudo-counts
    spread as the add-one unigram, so a rare position leans on the unigram and nothing costs infinity."""
    V, pad = data.num_classes, data.pad_id
    _, y = rows(data.train)
    T = y.shape[1]
    keep = real(y, pad) & (y >= 0) & (y < V)
    positions = torch.arange(T).expand_as(y)
    counts = torch.bincount((positions * V + y.clamp(0, V - 1))[keep], minlength=T * V).double().view(T, V)
    unigram = (counts.sum(0) + 1) / (counts.sum() + V)
    return ((counts + V * unigram) / (counts.sum(1, keepdim=True) + V)).log()
