"""The training monitors: pure functions that judge what `fit` recorded (recipe/monitors.py's MonitorLog).

They are not in the preflight registry: they run after training, on the run's own record, never on
the model. `judge_training(log)` runs them all through the one runner's `run_check` (a crashing
monitor becomes ERROR); the CLI hands the results to the report. Stage "training".

Most statistics are *robust*: medians over windows of samples, so one odd batch does not decide a
verdict. Thresholds follow Karpathy's rules of thumb where there is one (update/weight ~1e-3).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from checks.training.layer_monitors import (MAX_SERIES, STAGE, dead_units, exploding_gradients, largest_update_ratio,
                                   smallest_update_ratio, update_ratio_spread, vanishing_gradients)
from checks.engine.result import CheckResult, Figure, Verdict, measured, not_applicable
from checks.engine.runner import run_check
from recipe.monitors import MonitorLog

MAX_POINTS = 2000  # points per drawn step series


def judge_training(log: MonitorLog) -> list[CheckResult]:
    """Every monitor on one run's log, in order."""
    return [run_check(monitor, log, STAGE) for monitor in MONITORS]


# ---------------------------------------------------------------- the loss

def non_finite_values(log: MonitorLog) -> CheckResult:
    """NaN or Inf in a step loss or a sampled gradient norm (fit itself stops at the epoch's end)."""
    if not log.losses:
        return not_applicable("non_finite_values", STAGE, "no training step was recorded")
    bad_steps = [s for s, loss in zip(log.steps, log.losses) if not math.isfinite(loss)]
    bad_grads = [(s, log.layers[j]) for s, row in zip(log.sampled_steps, log.grad_norms)
                 for j, g in enumerate(row) if g is not None and not math.isfinite(g)]
    count = len(bad_steps) + len(bad_grads)
    seen = (f"{len(log.losses)} step losses and {sum(g is not None for r in log.grad_norms for g in r)} sampled "
            "gradient norms")
    first = []
    if bad_steps:
        first.append(f"the loss was {log.losses[log.steps.index(bad_steps[0])]} first at step {bad_steps[0]}")
    if bad_grads:
        first.append(f"the gradient of {bad_grads[0][1]} was not finite first at step {bad_grads[0][0]}")
    return measured(
        "non_finite_values", STAGE, count, 0, "<=", f"all {seen} are finite.",
        f"{count} non-finite values among {seen}: {'; '.join(first)}. Likely causes: a learning rate so high the "
        "loss overflows (look at the loss just before), log(0) or a division by zero in a hand-written loss "
        "(use F.cross_entropy on logits), NaN in the inputs, or float16 overflow without a grad scaler.",
        details={"non_finite_losses": len(bad_steps), "non_finite_grad_norms": len(bad_grads)})


def loss_spikes(log: MonitorLog, window: int = 25, floor: float = 0.1, warn_z: float = 8.0,
                fail_z: float = 25.0, after: int = 3) -> CheckResult:
    """The largest robust z-score of the loss, held for `after` steps, against the `window` steps before.

    z = (loss - median) / scale, scale = max(1.4826 * MAD, `floor` * median): the MAD is the
    spread of a normal batch-to-batch wobble, and the floor keeps a run whose loss is nearly
    constant (or nearly 0) from turning a tiny wobble into a huge z. So z > 10 needs the loss to at
    least double.

    What FAILs is a *held* spike: the least loss of a step and the `after - 1` steps that follow it
    (the future a run has not reached counts as normal). An lr that jumps, or a reset optimizer
    state, makes the model itself worse, so the next batches' losses stay up. One hard or
    mislabelled batch lifts one step and the next is back at the median: on a model that nearly
    fits its train set (a small table, loss ~0.03) one borderline row per batch reads z ~ 30. That
    is the data, not the code, and only WARNs.
    """
    losses = [(s, v) for s, v in zip(log.steps, log.losses) if math.isfinite(v)]
    if len(losses) <= window:
        return not_applicable("loss_spikes", STAGE, f"{len(losses)} finite step losses; the score needs more "
                                                    f"than its window of {window}")
    values = [v for _, v in losses]
    series = torch.tensor(values, dtype=torch.float64)
    before = series.unfold(0, window, 1)[:-1]                        # (N - window, window): the steps before each
    middle = before.median(1).values
    mad = (before - middle[:, None]).abs().median(1).values
    scale = torch.maximum(1.4826 * mad, floor * middle.abs()).clamp_min(1e-12)
    z = (series[window:] - middle) / scale                           # (N - window,): each step alone
    ahead = torch.cat([series[window:], middle[-1].repeat(after - 1)]).unfold(0, after, 1)  # each step and the next
    ahead = torch.where(torch.arange(after)[None, :] + torch.arange(len(z))[:, None] < len(z), ahead, middle[:, None])
    held = (ahead.min(1).values - middle) / scale                     # (N - window,): the least of `after` steps
    at, one = int(held.argmax()), int(z.argmax())
    held_z, single_z = float(held[at]), float(z[one])
    step, loss = losses[at + window]
    where = (f"the largest held jump: from step {step} the loss stayed at or above {float(ahead[at].min()):.4g} for "
             f"{after} steps, against a "
             f"median of {float(middle[at]):.4g} over the {window} steps before (robust z {held_z:.1f})")
    lone_step, lone_loss = losses[one + window]
    lone = (f"step {lone_step}: loss {lone_loss:.4g} against a median of {float(middle[one]):.4g} (robust z "
            f"{single_z:.1f}), back to normal within {after} steps")
    stride = max(1, math.ceil(len(values) / MAX_POINTS))
    figure = Figure("lines", "loss_spikes: loss at every step", {
        "series": {"step loss" if stride == 1 else f"step loss (the largest of every {stride})":
                   [max(values[i:i + stride]) for i in range(0, len(values), stride)]},  # max keeps spikes visible
        "x": [s for s, _ in losses[::stride]], "xlabel": "step", "ylabel": "loss", "logy": min(values) > 0})
    details = {"step": step, "loss": loss, "window_median": float(middle[at]), "window": window, "after": after,
               "single_step_z": single_z, "single_step": lone_step, "warn_threshold": warn_z}
    if held_z > fail_z:
        verdict = Verdict.FAIL
        message = (f"the loss spiked and stayed up: {where}. Likely causes: a learning rate too high for this point "
                   "of the run (a schedule that jumps up, a warm-up that ends too high), or an optimizer state reset "
                   "mid-run.")
    elif held_z > warn_z:
        verdict = Verdict.WARN
        message = (f"a loss spike worth a look: {where}. A brief spike that recovers can be harmless (Adam sometimes "
                   "does this); a schedule jump or a too-high lr are the usual causes.")
    elif single_z > warn_z:
        verdict = Verdict.WARN
        message = (f"one batch's loss spiked alone at {lone}: a batch of hard or mislabelled examples rather than "
                   f"the lr (the model itself did not get worse). No held spike: {where}.")
    else:
        verdict, message = Verdict.PASS, f"no spike: {where}."
    return CheckResult("loss_spikes", STAGE, verdict, held_z, fail_z, "<=", message, figures=[figure],
                       details=details)


# ---------------------------------------------------------------- epochs

def train_val_gap(log: MonitorLog, warn_gap: float = 0.1, min_growth: float = 0.05) -> CheckResult:
    """Train accuracy (eval mode, a fixed train subset) minus val accuracy after the last epoch.

    Warning only, never a failure: the shown limit is the largest possible gap, 1. It warns when
    the gap is at least `warn_gap` and grew by `min_growth` since the first epoch."""
    rows = [r for r in log.epochs if "train_accuracy" in r and "val_accuracy" in r]
    if len(rows) < 2:
        return not_applicable("train_val_gap", STAGE, f"{len(rows)} epoch(s) with train and val accuracy; "
                                                      "a growing gap needs at least 2")
    gaps = [r["train_accuracy"] - r["val_accuracy"] for r in rows]
    gap, growth = gaps[-1], gaps[-1] - gaps[0]
    said = (f"train accuracy {rows[-1]['train_accuracy']:.3f} vs val {rows[-1]['val_accuracy']:.3f} after epoch "
            f"{rows[-1]['epoch']}: a gap of {gap:.3f} ({growth:+.3f} since epoch {rows[0]['epoch']})")
    figure = Figure("lines", "train_val_gap: accuracy per epoch, train subset vs val", {
        "series": {f"train ({log.train_accuracy_examples} examples, eval mode)": [r["train_accuracy"] for r in rows],
                   "val": [r["val_accuracy"] for r in rows]},
        "x": [r["epoch"] for r in rows], "xlabel": "epoch", "ylabel": "accuracy"})
    overfit = gap >= warn_gap and growth >= min_growth
    return _warn_only("train_val_gap", gap, 1.0, overfit, f"no growing gap: {said}.",
                      f"the model is overfitting: {said}. It memorises train faster than it generalises: add "
                      "data or augmentation, regularise (weight decay, dropout), use a smaller model, or stop "
                      "earlier (see val_loss_rising for the best epoch).", [figure],
                      {"first_gap": gaps[0], "largest_gap": max(gaps), "warn_threshold": warn_gap})


def val_loss_rising(log: MonitorLog, patience: int = 3, min_rise: float = 0.02) -> CheckResult:
    """Epochs since the best val loss. Warning only (the shown limit is the epochs run): it warns
    when the val loss has not improved for `patience` epochs and ends `min_rise` above its best."""
    rows = [r for r in log.epochs if math.isfinite(r.get("val_loss", math.nan))]
    if len(rows) <= patience:
        return not_applicable("val_loss_rising", STAGE, f"{len(rows)} epoch(s): rising for {patience} epochs "
                                                        f"needs more than {patience}")
    best = min(rows, key=lambda r: r["val_loss"])
    since = rows[-1]["epoch"] - best["epoch"]
    rise = rows[-1]["val_loss"] / best["val_loss"] - 1 if best["val_loss"] > 0 else 0.0
    said = (f"the best val loss was {best['val_loss']:.4f} after epoch {best['epoch']}; {since} epoch(s) later "
            f"it is {rows[-1]['val_loss']:.4f} ({rise:+.1%})")
    figure = Figure("lines", "val_loss_rising: val loss per epoch", {
        "series": {"val loss": [r["val_loss"] for r in rows]}, "x": [r["epoch"] for r in rows],
        "xlabel": "epoch", "ylabel": "loss", "hline": best["val_loss"], "hline_label": f"best (epoch {best['epoch']})"})
    rising = since >= patience and rise >= min_rise
    return _warn_only("val_loss_rising", since, len(rows), rising, f"val loss did not turn up: {said}.",
                      f"val loss has been rising: {said}. Overfitting: keep the weights of epoch {best['epoch']} "
                      "(early stopping), or regularise and train again.", [figure],
                      {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "rise": rise,
                       "warn_threshold": patience})


def lr_at_end(log: MonitorLog, warn_share: float = 0.5) -> CheckResult:
    """The lr each param group holds when the run ends, over its peak in the run. Warning only (the
    shown limit, 1, is the most it can be)."""
    if not log.lr_end:
        return not_applicable("lr_at_end", STAGE, "no epoch finished, so there is no final learning rate")
    peaks = [max([row[g] for row in log.lrs if g < len(row)] + [end]) for g, end in enumerate(log.lr_end)]
    shares = [end / peak if peak > 0 else 0.0 for end, peak in zip(log.lr_end, peaks)]
    group = max(range(len(shares)), key=shares.__getitem__)
    value = shares[group]
    said = (f"param group {group} ends at lr {log.lr_end[group]:.3g}, {value:.0%} of its peak {peaks[group]:.3g}")
    series = {f"group {g}": [row[g] for row in log.lrs] for g in range(min(len(log.lr_end), MAX_SERIES))}
    figure = Figure("lines", "lr_at_end: learning rate at the sampled steps",
                    {"series": series, "x": log.sampled_steps, "xlabel": "step", "ylabel": "lr"})
    return _warn_only("lr_at_end", value, 1.0, value > warn_share, f"the lr decayed: {said}.",
                      f"the learning rate is still high at the end: {said}. A decay (cosine, step, or "
                      "reduce-on-plateau) usually buys the last points of accuracy by ending the run with "
                      "small, precise steps.", [figure], {"peak_lr": peaks, "end_lr": log.lr_end,
                                                          "warn_threshold": warn_share})


MONITORS: list[Callable[[MonitorLog], CheckResult]] = [
    non_finite_values, loss_spikes, exploding_gradients, vanishing_gradients, largest_update_ratio,
    smallest_update_ratio, update_ratio_spread, dead_units, train_val_gap, val_loss_rising, lr_at_end]


# ---------------------------------------------------------------- pieces

def _warn_only(name: str, value: float, bound: float, warn: bool, ok: str, warning: str, figures: list,
               details: dict) -> CheckResult:
    """A warning-only result: its shown limit is the bound the value cannot pass, so it never FAILs."""
    result = measured(name, STAGE, value, bound, "<=", ok, ok, figures=figures, details=details)
    if warn:
        result.verdict, result.message = Verdict.WARN, warning
    return result
