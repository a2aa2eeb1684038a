"""Predictions of any kind of example, one row per scored prediction, so each check reads them once.

A classifier makes one prediction per example: (B, C) logits for (B,) labels. A language model makes
one per position: (B, T, V) logits for (B, T) next-token targets, and a position whose target is the
pad id carries no loss (recipe.language.token_cross_entropy) and is not scored here either.
"""
from __future__ import annotations

import math

import torch

from recipe.pipeline import Pipeline


def scored(logits: torch.Tensor, y: torch.Tensor, pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits and (N,) labels: a (B, C) batch as it is; (B, T, V) next-token logits and (B, T)
    targets flattened to their positions, without those whose target is padding."""
    if logits.dim() == 3 and y.dim() == 2:
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        if pad_id is not None:
            keep = y != pad_id
            logits, y = logits[keep], y[keep]
    return logits, y


def scored_positions(y: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """How many predictions a batch of labels holds: B for (B,) labels, the non-pad targets of (B, T)."""
    return y.ne(pad_id).sum() if pad_id is not None else torch.tensor(y.numel())


def label_counts(pipeline: Pipeline, split: str) -> torch.Tensor:
    """(C,) how often each class is the label in `split`; for token sequences how often each id is a
    next-token target (padding left out)."""
    labels = pipeline.data.split(split).labels.flatten()
    pad_id = pipeline.data.pad_id
    if pad_id is not None:
        labels = labels[labels != pad_id]
    return torch.bincount(labels, minlength=pipeline.num_classes)


def true_class_probability(logits: torch.Tensor, y: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """(B,) the probability the model gives each example's label; for a token sequence the mean over its
    scored positions of the probability of the true next token."""
    probabilities = torch.softmax(logits.float(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (B,) or (B, T)
    if probabilities.dim() == 1:
        return probabilities
    keep = torch.ones_like(y, dtype=torch.bool) if pad_id is None else y != pad_id
    return (probabilities * keep).sum(1) / keep.sum(1).clamp(min=1)


def row_names(pipeline: Pipeline, y: torch.Tensor, width: int = 16) -> list[str]:
    """A short caption per example: its class name, or for a token sequence the text of its first targets."""
    if y.dim() == 2 and pipeline.data.decode is not None:
        pad_id = pipeline.data.pad_id
        return [repr(pipeline.data.decode([t for t in row[:width].tolist() if t != pad_id])) for row in y]
    names = pipeline.data.class_names
    return [names[int(c)] if 0 <= int(c) < len(names) else str(int(c)) for c in y.tolist()]


@torch.no_grad()
def context_width(model: torch.nn.Module, x: torch.Tensor, num_ids: int) -> int:
    """How many earlier positions the prediction at the last position reads: each earlier id is changed
    in turn (on the model as given, which should be in eval mode) and the last position's logits watched.
    A bigram table reads 0, a causal transformer all T - 1."""
    from recipe.outputs import forward_logits

    last = x.shape[1] - 1
    base = forward_logits(model, x)[:, last].float()
    noise = 1e-6 + 1e-5 * base.abs().max().item()
    width = 0
    for j in range(last):
        changed = x.clone()
        changed[:, j] = (x[:, j] + 1) % num_ids
        if (forward_logits(model, changed)[:, last].float() - base).abs().max().item() > noise:
            width = max(width, last - j)
    return width


def context_floor(x: torch.Tensor, y: torch.Tensor, width: int, pad_id: int | None = None) -> tuple[float, float]:
    """(loss, accuracy) the best model reading `width` earlier ids can reach on this batch of sequences:
    positions with the same ids in view but different targets cannot all be predicted right.

    Why: a batch of text is not a set of distinct inputs. Blocks that start with the same character (an
    indent), or names that all start after the same '.', share a prefix and continue differently, so
    even a model that memorises the batch keeps the conditional entropy of those targets: the floor is
    the mean entropy of the targets grouped by what the model sees, and the best accuracy the share of
    targets that are their group's most common one. Grouping ignores the position itself, which can
    only make the floor higher (lenient), never a FAIL the model could not avoid.
    """
    groups: dict[tuple, dict[int, int]] = {}
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        for t, target in enumerate(row_y):
            if target == pad_id:
                continue
            seen = groups.setdefault(tuple(row_x[max(0, t - width):t + 1]), {})
            seen[target] = seen.get(target, 0) + 1
    total = sum(sum(counts.values()) for counts in groups.values())
    if not total:
        return 0.0, 1.0
    entropy, right = 0.0, 0
    for counts in groups.values():
        n = sum(counts.values())
        entropy -= sum(c * math.log(c / n) for c in counts.values())
        right += max(counts.values())
    return entropy / total, right / total
