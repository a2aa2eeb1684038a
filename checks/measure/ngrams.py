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


class NgramTables:
    """Train's add-one unigram and bigram p(y[t] | x[t]), fitted on (x, y) pairs. The bigram's counts are
    kept sparse (the pairs that occur): V x V dense would be 20 GB for a GPT-2 tokenizer's 50,257 ids."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, vocab: int, pad_id: int | None):
        self.V, self.pad = vocab, pad_id
        tx, ty = self._kept(x, y)
        counts = torch.bincount(ty, minlength=vocab).double()
        p = counts / counts.sum().clamp(min=1)
        self.entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
        self.log_unigram = ((counts + 1) / (counts.sum() + vocab)).log()
        self.pair_keys, self.pair_counts = torch.unique(tx * vocab + ty, return_counts=True)
        self.row_totals = torch.bincount(tx, minlength=vocab).double()

    def _kept(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = real(y, self.pad) & (x >= 0) & (x < self.V) & (y >= 0) & (y < self.V)
        return x[keep].long(), y[keep].long()

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
        """(unigram, bigram) loss in nats per scored target of (x, y), and the targets scored."""
        ex, ey = self._kept(x, y)
        n = max(len(ey), 1)
        keys = ex * self.V + ey
        at = torch.searchsorted(self.pair_keys, keys).clamp(max=max(len(self.pair_keys) - 1, 0))
        seen = self.pair_counts[at].double() * (self.pair_keys[at] == keys) if len(self.pair_keys) else \
            torch.zeros(len(keys), dtype=torch.float64)
        log_bigram = ((seen + 1) / (self.row_totals[ex] + self.V)).log()
        return float(-self.log_unigram[ey].sum() / n), float(-log_bigram.sum() / n), int(len(ey))


def ngram_losses(data: DataBundle, split: str = "val", tables: NgramTables | None = None) -> dict[str, float]:
    """The dumb baselines, in nats per target token on `split` (pad targets skipped), all fitted on train:
    uniform ln V; the unigram of train's targets; the bigram p(y[t] | x[t]) of train's pairs. Both are
    add-one (Laplace) smoothed so an unseen token costs a finite loss; `unigram_train_entropy` is the
    plain entropy of train's target distribution (what a unigram scores on train itself). `tables`: train's,
    when the caller has them fitted already."""
    tables = tables or NgramTables(*rows(data.train), data.num_classes, data.pad_id)
    unigram, bigram, scored = tables.losses(*rows(data.split(split)))
    return {"uniform": math.log(data.num_classes), "unigram": unigram, "bigram": bigram,
            "unigram_train_entropy": tables.entropy, "tokens_scored": scored, "split": split}


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
