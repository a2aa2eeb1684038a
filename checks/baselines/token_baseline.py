"""`input_independent_baseline` on token sequences, first by counting: the reference run's model against
the best model that never reads its input ids, computed exactly instead of trained.

Karpathy's baseline zeroes the inputs and trains again, for as long, to see the real inputs win. For a
sequence, what a model without its input ids can learn at best is known in closed form: the target's
distribution, overall or at each position, counted on train (checks/measure/ngrams.py); whichever
scores the lower val loss is the bar. A zero-input run converges towards it and cannot beat it (the
tiny GPT's on python-source: 3.053 nats after 168 steps, the count 3.052). So when real context beats
the count by TOKEN_MIN_LOSS_SHARE, beyond chance, it would beat the zero-input run too: the check
PASSes without training that run, which is a third of a language model's preflight. Otherwise the
zero-input run is trained as for images, and the comparison of equal budgets decides: a slow start and
a model blind to its ids both sit above the count, and only a run of the same length tells them apart.
"""
from __future__ import annotations

import math

import torch

from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.batchnorm import judged_copy
from checks.measure.ngrams import position_unigram_log_probs, real, unigram_counts
from checks.measure.sampling import per_example
from recipe.pipeline import Pipeline

STAGE = "baselines"
TOKEN_MIN_LOSS_SHARE = 0.1  # real context must cut the input-independent loss by a tenth


def input_independent_floor(pipeline: Pipeline, max_examples: int = 5000) -> tuple[torch.Tensor, str]:
    """Per scored val position, in per_example's order, the loss of the better of the two counted models
    that never read the input: the add-one unigram of train's targets, or their distribution per position."""
    data = pipeline.data
    V, pad = data.num_classes, data.pad_id
    per_position = position_unigram_log_probs(data)
    counts = unigram_counts(data.train.labels.cpu(), V, pad)
    overall = ((counts + 1) / (counts.sum() + V)).log()
    by_position, by_token, count = [], [], 0
    for batch in pipeline.batches("val", shuffle=False, augment=False):
        y = batch.y.cpu()
        positions = torch.arange(y.shape[1]).expand_as(y).clamp(max=len(per_position) - 1)
        keep = real(y, pad)
        targets = y[keep].clamp(0, V - 1)
        by_position.append(-per_position[positions[keep], targets])
        by_token.append(-overall[targets])
        count += len(y)
        if count >= max_examples:
            break
    by_position, by_token = torch.cat(by_position), torch.cat(by_token)
    if by_position.mean() < by_token.mean():
        return by_position, "the target's distribution at each position, counted on train"
    return by_token, "the targets' unigram, counted on train"


def counted_token_pass(pipeline: Pipeline, reference, min_z: float = 3.0) -> CheckResult | None:
    """PASS when real context beats the counted input-independent floor by TOKEN_MIN_LOSS_SHARE at `min_z`
    standard errors of the paired per-position differences; None to let the zero-input run decide."""
    right, losses = per_example(pipeline, judged_copy(reference.model, pipeline), "val")
    floor, what = input_independent_floor(pipeline)
    saved = floor - losses  # paired: the same val positions, nats each
    error = max(saved.std().item() / math.sqrt(len(saved)), 1e-12)
    real_loss, floor_loss = losses.mean().item(), floor.mean().item()
    share, loss_z = saved.mean().item() / max(floor_loss, 1e-12), saved.mean().item() / error
    if not (loss_z >= min_z and share >= TOKEN_MIN_LOSS_SHARE):
        return None
    figure = Figure("bars", "val cross-entropy, nats per token", {
        "categories": ["cross-entropy"],
        "series": {"real input tokens": [real_loss], "never reading them (counted)": [floor_loss]}})
    details = {"real_accuracy": right.double().mean().item(), "real_loss": real_loss, "zero_loss": floor_loss,
               "zero_loss_is": what, "steps": reference.steps, "val_examples": len(saved), "loss_gain_z": loss_z,
               "loss_gain_share": share, **reference.budget_details}
    return CheckResult("input_independent_baseline", STAGE, Verdict.PASS, share, TOKEN_MIN_LOSS_SHARE, ">=",
                       f"after {reference.steps} steps real input tokens reach a val loss of {real_loss:.4f} nats per "
                       f"token; never reading them, a model can at best reach {floor_loss:.4f} ({what}): "
                       f"{share:.1%} lower, {loss_z:.1f} standard errors of the per-position differences, so a "
                       "zero-input run of the same length, which cannot do better than that count, was not needed.",
                       figures=[figure], details=details)
