"""Jumps in a training loss, and the witness that tells a start-up overshoot from an lr too high.

SGD at 0.1 without warm-up on a BatchNorm ResNet jumps in its first steps and then trains (the recipe
many ResNet users copy); an lr 100x too high jumps the same way. Their loss curves cannot be told
apart, so `training_loss_decreases` asks a witness: the same run with the lr ramped up over its first
third (`budgeted_training(warmup=...)`), on top of the user's own schedule.
"""
from __future__ import annotations

import math

from checks.measure.predictions import label_counts
from checks.measure.reference_run import budgeted_training
from recipe.pipeline import Pipeline


LOSS_WINDOW = 20  # steps averaged at each end of a training run's loss curve


def last_window_mean(losses: list[float], window: int = LOSS_WINDOW) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail)


def train_drop(losses: list[float], window: int = LOSS_WINDOW) -> float:
    """How much the mean loss of the last window fell below the first's, as a share (-inf when not finite)."""
    first, last = sum(losses[:window]) / len(losses[:window]), last_window_mean(losses, window)
    return (first - last) / abs(first) if first != 0 and math.isfinite(first) and math.isfinite(last) else -math.inf


HELD = 3  # steps a jump must last: one hard batch lifts one step's loss (a batch of 16 with one confident mistake)


def held_losses(losses: list[float]) -> list[float]:
    """Each step's loss as held: the least of it and the HELD - 1 steps after it (NaN/inf count as inf).
    An lr that overshoots lifts the loss for many steps; one hard batch among easy ones lifts one."""
    finite = [v if math.isfinite(v) else math.inf for v in losses]
    if not all(map(math.isfinite, finite)):  # a NaN or inf is no hard batch: it ends the run's meaning, held or not
        return [v if not math.isfinite(v) else min(finite[i:i + HELD]) for i, v in enumerate(finite)]
    return [min(finite[i:i + HELD]) for i in range(max(len(finite) - HELD + 1, 1))]  # the last steps: not yet held


def peak_loss(losses: list[float]) -> float:
    """The highest held loss (see held_losses)."""
    return max(held_losses(losses))


def peak_step(losses: list[float]) -> int:
    """The 1-based step where the held loss peaks."""
    held = held_losses(losses)
    return held.index(max(held)) + 1


def loss_jumped(losses: list[float]) -> bool:
    """The loss went to NaN/inf or held above twice its first value for HELD steps: an lr that overshoots
    (the step, not the data)."""
    peak = peak_loss(losses)
    return not math.isfinite(peak) or peak > 2 * abs(losses[0])


def spike(losses: list[float]) -> tuple[float, int]:
    """The highest single-step loss and its 1-based step, held or not."""
    finite = [v if math.isfinite(v) else math.inf for v in losses]
    top = max(finite)
    return top, finite.index(top) + 1


def prior_entropy(pipeline: Pipeline) -> float:
    """Nats a model pays that always predicts the train label frequencies (for tokens, the unigram)."""
    counts = label_counts(pipeline, "train").double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


WITNESS_MAX_RISE = 0.1        # a ramped run whose loss climbs a tenth of its first loss above its best overshoots
WITNESS_MAX_END_SHARE = 0.5   # ...unless it ends at half the user's loss or less, back down from its climb: the
                              # warm-up fixes what the jump cost


def sixths(losses: list[float]) -> list[float]:
    """The mean loss of each sixth of a run: windows long enough that one noisy stretch is not a climb."""
    n = len(losses)
    return [sum(losses[i * n // 6:(i + 1) * n // 6]) / max(1, (i + 1) * n // 6 - i * n // 6) for i in range(6)]


def standing_rise(losses: list[float]) -> float:
    """How far the last sixth of a run sits above its lowest earlier sixth, as a share of the first loss: a
    climb still standing at the end (inf when not finite). resnet18's ramped run at SGD 0.1 jumped as the
    ramp reached 0.1 and then fell to its lowest at the end (0); a BN MLP at SGD 2.0 climbed from 0.52 to 1.22
    as the ramp reached 2.0 and ended at 1.06, twice its best (0.68): there the lr is too high all along,
    whatever share of the user's loss it ends at (44% at seed 1 on an AVX-512 CPU; over 50%, a FAIL, on
    the CPU before)."""
    parts = sixths(losses)
    if len(losses) < 12 or not all(map(math.isfinite, parts)) or losses[0] == 0:
        return math.inf
    return max(0.0, parts[-1] - min(parts[:-1])) / abs(losses[0])


def warmup_witness(pipeline: Pipeline, steps: int) -> tuple[int, list[float], float]:
    """After a jump: the same run with the lr ramped up over its first third, and how far its loss ever
    rose (the largest climb of a sixth of the run above the lowest sixth before it, as a share of the
    first loss, so that noise near a loss of 0 is not a climb; inf for a jump or NaN). At most
    WITNESS_MAX_RISE means the lr only overshoots at the start, as SGD at 0.1 does on a BatchNorm ResNet
    without warm-up; an lr too high all along lifts the loss again as the ramp reaches it."""
    warmup = max(1, steps // 3)
    losses = budgeted_training(pipeline, steps, warmup=warmup).losses
    parts = sixths(losses)
    if len(losses) < 12 or loss_jumped(losses) or not all(map(math.isfinite, parts)) or losses[0] == 0:
        return warmup, losses, math.inf
    return warmup, losses, max(0.0, *(parts[i] - min(parts[:i]) for i in range(1, 6))) / abs(losses[0])  # 0: never rose
