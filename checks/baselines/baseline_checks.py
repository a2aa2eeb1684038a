"""Stage `baselines`: "get dumb baselines" and "overfit one batch", with the pipeline's own step and optimizer."""
from __future__ import annotations

import copy
import math

import torch

from checks.measure.reference_run import budgeted_training, reference_run, shared_per_pipeline
from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.sampling import (PlannedSchedule, accuracy_and_loss, first_batches, fresh_model, has_running_stats,
                             loss_floor, output_family)
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

STAGE = "baselines"
LOSS_WINDOW = 20  # steps averaged at each end of a training run's loss curve
VAL_EXAMPLES = 5000  # what accuracy_and_loss reads of val by default


def _last_window_mean(losses: list[float], window: int = LOSS_WINDOW) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail)


def _peak(losses: list[float]) -> float:
    return max(losses, key=lambda v: v if math.isfinite(v) else math.inf)


def _loss_jumped(losses: list[float]) -> bool:
    """The loss went to NaN/inf or above twice its first value: an lr that overshoots (the step, not the data)."""
    peak = _peak(losses)
    return not math.isfinite(peak) or peak > 2 * abs(losses[0])


def input_independent_baseline(pipeline: Pipeline, min_gain: float = 0.1, max_zero_gain: float = 0.15,
                               min_z: float = 3.0) -> CheckResult:
    """Train twice for the same short budget: on the real inputs (the shared reference run) and on
    all-zero inputs, for as many steps as the reference run took.

    The real inputs must be clearly better on val: +`min_gain` accuracy, or (a WARN) a gain of at least
    `min_z` standard errors, beyond chance, where a weak model on a hard task gains less. The zero-input
    model should land near the majority-class accuracy; far above it means labels reach the model some
    other way. A worse val loss than zero inputs FAILs only when the training loss went wrong too (it
    jumped, or ended no better than zero inputs); a model that fits train and not val WARNs.
    """
    reference = reference_run(pipeline)
    steps = reference.steps
    real_model = reference.model
    zero_model = budgeted_training(pipeline, steps, zero_inputs=True).model
    real_acc, real_loss = accuracy_and_loss(pipeline, real_model, "val")
    zero_acc, zero_loss = accuracy_and_loss(pipeline, zero_model, "val", zero_inputs=True)
    counts = torch.bincount(pipeline.data.val.labels, minlength=pipeline.num_classes)
    majority = (counts.max() / counts.sum()).item()
    gain = real_acc - zero_acc
    figure = Figure("bars", "val after the same short training", {
        "categories": ["accuracy", "cross-entropy"],
        "series": {"real inputs": [real_acc, real_loss], "zero inputs": [zero_acc, zero_loss]}})
    details = {"real_accuracy": real_acc, "zero_accuracy": zero_acc, "real_loss": real_loss, "zero_loss": zero_loss,
               "majority_accuracy": majority, "steps": steps, **reference.budget_details}
    if zero_acc > majority + max_zero_gain:
        return CheckResult("input_independent_baseline", STAGE, Verdict.FAIL, zero_acc, majority + max_zero_gain, "<=",
                           f"with all-zero inputs the model still reaches {zero_acc:.4f} val accuracy (majority class: "
                           f"{majority:.4f}): labels reach the model through something other than the pixels "
                           "(a target leak in the model, the loader or the loss).", figures=[figure], details=details)
    if gain < min_gain:
        # +min_gain is what an easy task gives in a short run; on a hard one (objects anywhere, clutter, many
        # classes) a weak model gains less. Below it, the evidence of a bug is a gain within chance: z, the
        # gain in standard errors of an accuracy at the zero-input rate over these val examples.
        examples = min(len(pipeline.data.val), VAL_EXAMPLES)
        rate = min(max(zero_acc, 1 / examples), 1 - 1 / examples)
        z = gain / math.sqrt(rate * (1 - rate) / examples)
        details.update({"gain_z": z, "val_examples": examples})
        if z >= min_z:
            return CheckResult("input_independent_baseline", STAGE, Verdict.WARN, z, min_z, ">=",
                               f"real inputs beat zero inputs by only +{gain:.4f} val accuracy after {steps} steps "
                               f"({real_acc:.4f} vs {zero_acc:.4f}; an easy task gives +{min_gain}), but by {z:.1f} "
                               f"standard errors over {examples} val examples, far more than chance: the model does "
                               "learn from the pixels, slowly or little. A weak model for this task, a hard task, or "
                               "a slow start (small lr, long warm-up); not evidence of a bug.",
                               figures=[figure], details=details)
        return CheckResult("input_independent_baseline", STAGE, Verdict.FAIL, gain, min_gain, ">=",
                           f"real inputs are no better than zero inputs after {steps} steps: val accuracy {real_acc:.4f} "
                           f"vs {zero_acc:.4f} (need +{min_gain}, or a gain beyond chance: {z:.1f} standard errors "
                           f"over {examples} val examples, need {min_z}), loss {real_loss:.4f} vs {zero_loss:.4f}. The "
                           "model does not learn from the pixels: the learning rate is far too low or too high, "
                           "gradients do not reach the weights (frozen/detached layer), the loss is wrong (sign, MSE "
                           "on class indices), the labels the step trains on do not belong to its inputs, or the "
                           "inputs are garbage.", figures=[figure], details=details)
    if not real_loss < zero_loss:
        # A worse val loss than zero inputs is a bug's symptom only when the training itself went wrong too:
        # the reference run's loss jumped above twice its start (an lr that overshoots) or ended no better
        # than what zero inputs reach. A model whose training loss fell far below that fits its training
        # batches and is over-confident on unseen examples: it overfits, or the task is hard for it.
        train_loss = _last_window_mean(reference.losses)
        details.update({"train_loss_last_window": train_loss, "train_loss_jumped": _loss_jumped(reference.losses)})
        if _loss_jumped(reference.losses) or not train_loss < zero_loss:
            how = (f"its training loss jumped above twice its first value ({reference.losses[0]:.4f})"
                   if _loss_jumped(reference.losses) else
                   f"its training loss ended at {train_loss:.4f}, no better than zero inputs")
            return CheckResult("input_independent_baseline", STAGE, Verdict.FAIL, real_loss, zero_loss, "<",
                               f"real inputs reach higher val accuracy ({real_acc:.4f} vs {zero_acc:.4f}) but a WORSE "
                               f"val cross-entropy than zero inputs ({real_loss:.4f} vs {zero_loss:.4f}) after {steps} "
                               f"steps, and {how}: the model is wildly over-confident when wrong. Typical causes: the "
                               "learning rate is too high, the inputs are not normalised (huge logits), or gradients "
                               "accumulate (no zero_grad).", figures=[figure], details=details)
        return CheckResult("input_independent_baseline", STAGE, Verdict.WARN, train_loss, zero_loss, "<",
                           f"real inputs reach higher val accuracy ({real_acc:.4f} vs {zero_acc:.4f}) but a worse val "
                           f"cross-entropy than zero inputs ({real_loss:.4f} vs {zero_loss:.4f}) after {steps} steps, "
                           f"while the training loss fell to {train_loss:.4f} without jumping: the model fits its "
                           "training batches and is over-confident on examples it has not seen. That is overfitting "
                           "or a task hard for this model, not evidence of a bug; watch the val loss in the real run "
                           "(regularisation, augmentation, more data or a stronger model help).",
                           figures=[figure], details=details)
    return CheckResult("input_independent_baseline", STAGE, Verdict.PASS, gain, min_gain, ">=",
                       f"after {steps} steps real inputs reach {real_acc:.4f} val accuracy (loss {real_loss:.4f}); zero "
                       f"inputs reach {zero_acc:.4f} (loss {zero_loss:.4f}), near the majority class {majority:.4f}.",
                       figures=[figure], details=details)


def _still_falling(excess: list[float], window: int, min_fall: float) -> bool:
    """The loss's excess over its floor fell by at least `min_fall` (relative) from the previous `window`
    steps to the last `window` steps, each window read by its lowest value: a model with BatchNorm or Adam
    on one batch spikes now and then, and one spiked step must not decide that the loss stopped falling."""
    if len(excess) < 2 * window:
        return False
    last, before = min(excess[-window:]), min(excess[-2 * window:-window])
    return 0 < last < (1 - min_fall) * before


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    predicted = forward_logits(model, x).argmax(1)
    return (predicted == y).float().mean().item(), predicted


@shared_per_pipeline  # run_length reads its step count: one training serves both
def overfit_one_batch(pipeline: Pipeline, batch_size: int = 16, max_steps: int = 300, tolerance: float = 0.05,
                      extend_window: int = 50, extend_min_fall: float = 0.1,
                      max_extended_steps: int = 900, settle_window: int = 10) -> CheckResult:
    """One fixed small batch, augmentation off, the pipeline's own step, optimizer and warm-up (its lr
    schedule is followed while the lr rises, then held; see `PlannedSchedule`): the loss must come
    within `tolerance` of the loss's own achievable floor on that batch (`loss_floor`: 0 for
    cross-entropy, about 0.50 with label smoothing 0.1) and the batch be predicted 100% right, in
    eval mode, within `max_steps`.

    A slow but healthy optimizer (plain SGD, a small lr) gets more steps, up to `max_extended_steps`,
    for as long as the loss's excess over the floor keeps falling by `extend_min_fall` from one
    `extend_window` of steps to the next (each window read by its lowest loss): a plateau is the
    symptom, not slowness. Real models (BatchNorm, residual blocks, Adam) do not fall smoothly on one
    batch: a step now and then spikes. So the windows are read by their lowest loss and the run is
    judged by the lowest loss of its last `settle_window` steps, never by one spiked step. The loss is
    the one the step returns, in train mode (BatchNorm on the batch's own statistics, which for one
    fixed batch are the same every step); the accuracy is read in eval mode, and in train mode when
    only BatchNorm's running statistics lag (then the message says so). A failure tells a loss that is
    not a cross-entropy (<= 0 before training, no floor, or a minimum that does not classify) from
    divergence (lr too high) and from a plateau (lr too low, gradients not flowing, regularisation).
    """
    batch = first_batches(pipeline, "train", 1)[0]
    x, y = batch.x[:batch_size], batch.y[:batch_size]
    model = fresh_model(pipeline)
    with torch.no_grad():  # a copy in eval mode: no running stats or dropout draws spent on the real model
        at_init = forward_logits(copy.deepcopy(model).eval(), x)
    floor, floor_accuracy = loss_floor(pipeline, at_init, y)
    # Outputs that are already probabilities keep a loss that expects logits off its minimum.
    logits_floor = loss_floor(pipeline, at_init, y, family="logits")[0] \
        if at_init.dim() == 2 and output_family(at_init.float()) == "probabilities" else math.nan
    threshold = max(floor, 0.0) + tolerance
    broken_loss = floor < -1e-6 or floor_accuracy < 1.0  # no early stop: show where such a loss goes
    optimizer, scheduler = training_objects(pipeline, model)
    schedule = PlannedSchedule(pipeline, optimizer, scheduler, warmup_only=True)
    losses: list[float] = []
    limit = max_steps
    while len(losses) < limit:
        losses.append(float(take_step(pipeline, model, optimizer, x, y)))
        schedule.after_step(len(losses))
        if not math.isfinite(losses[-1]) or (losses[-1] <= threshold and not broken_loss) or losses[0] <= 0:
            break
        if len(losses) == limit and limit < max_extended_steps and \
                _still_falling([v - floor for v in losses], extend_window, extend_min_fall):
            limit += extend_window
    model.eval()
    accuracy, predicted = _accuracy(model, x, y)
    train_mode_accuracy = accuracy
    if accuracy < 1.0 and has_running_stats(model):  # batch statistics, as the steps saw them
        train_mode_accuracy, _ = _accuracy(copy.deepcopy(model).train(), x, y)
    first = losses[0]
    # The lowest loss of the last few steps, unless the last one left the finite numbers: a spike in the
    # very last step (Adam or BatchNorm on one batch) is not where the loss stands.
    final = min(losses[-settle_window:]) if math.isfinite(losses[-1]) else losses[-1]
    names = pipeline.data.class_names
    figures = [Figure("lines", f"loss on one batch of {len(y)}", {"series": {"loss": losses}, "xlabel": "step",
                                                                 "ylabel": "loss", "hline": threshold}),
               Figure("matrix", "prediction vs label on the batch (eval mode)", {
                   "values": torch.nn.functional.one_hot(predicted.clamp(0, len(names) - 1), len(names)).T.cpu().numpy(),
                   "rows": list(names), "cols": [names[int(c)] for c in y.tolist()], "ylabel": "predicted",
                   "xlabel": "true label of each example", "annotate": False})]  # 0/1: the colour says it
    details = {"steps": len(losses), "final_loss": final, "batch_accuracy": accuracy, "first_loss": first,
               "loss_floor": floor, "floor_accuracy": floor_accuracy, "threshold": threshold,
               "train_mode_accuracy": train_mode_accuracy, "extended": len(losses) > max_steps}
    extended = f" (given {len(losses) - max_steps} steps more than {max_steps}: the loss was still falling)" \
        if len(losses) > max_steps else ""
    floor_said = f"the loss's floor on this batch is {floor:.4f}, so the bar is {threshold:.4f}"
    lowest = min([floor] + [v for v in losses if math.isfinite(v)])

    def fail(value: float, bar: float, comparison: str, cause: str) -> CheckResult:
        return CheckResult("overfit_one_batch", STAGE, Verdict.FAIL, value, bar, comparison,
                           f"could not overfit one batch of {len(y)} in {len(losses)} steps{extended}: {cause}.",
                           figures=figures, details=details)

    if first <= 0:
        return fail(first, 0.0, ">", f"the loss was {first:.4g} at the very first step, before any learning. An "
                    "untrained classifier's cross-entropy is about ln(C) and a cross-entropy is never <= 0: the loss "
                    "is not a proper cross-entropy (nll_loss on raw logits or on probabilities: log_softmax missing) "
                    "or has the wrong sign (the optimizer is maximising it)")
    if lowest < -1e-6:
        return fail(lowest, 0.0, ">=", f"the loss goes negative ({lowest:.3g}; free outputs drive it to {floor:.3g}): "
                    "a cross-entropy cannot be negative, so the loss has the wrong sign or no floor (log_softmax "
                    "missing before nll_loss)")
    if floor_accuracy < 1.0:
        return fail(floor_accuracy, 1.0, ">=", f"even free outputs that minimise this loss (down to {floor:.4g}) "
                    f"classify only {floor_accuracy:.0%} of the batch: the loss does not measure classification. A "
                    "wrong loss (MSE on class indices, a wrong target encoding) or a clamped or clipped loss with no "
                    "gradient (clip the gradients, not the loss)")
    if -1e-6 <= logits_floor and floor > logits_floor + tolerance:
        return fail(floor, logits_floor + tolerance, "<=", f"the model's outputs are probabilities (rows sum to 1), "
                    f"and through them this loss cannot go below {floor:.4f}, where on free logits it reaches "
                    f"{logits_floor:.4f}: a softmax sits before a loss that expects logits (cross_entropy applies "
                    "log_softmax itself). Remove the softmax from the model")
    if not math.isfinite(final) or final > threshold:
        if not math.isfinite(final) or final > 2 * first:
            cause = (f"the loss diverged ({first:.3f} -> {final:.3g}): learning rate too high, or the loss has the "
                     "wrong sign")
        else:
            cause = (f"the loss plateaued at {final:.4f} after {len(losses)} steps (from {first:.4f}; {floor_said}): "
                     "learning rate too low, gradients not flowing (frozen/detached layer, clipped loss), strong "
                     "regularisation (weight decay, heavy dropout), a softmax before the cross-entropy, or labels "
                     "that don't match the inputs")
        return fail(final if math.isfinite(final) else math.inf, threshold, "<=", cause)
    passed = (f"memorised a batch of {len(y)} in {len(losses)} steps{extended}: loss {final:.4f} <= {threshold:.4f} "
              f"(the loss's floor on this batch {floor:.4f} + {tolerance}), accuracy 100%")
    if accuracy < 1.0 and train_mode_accuracy == 1.0:
        return CheckResult("overfit_one_batch", STAGE, Verdict.PASS, final, threshold, "<=",
                           f"{passed} in train mode. In eval mode only {accuracy:.0%}: the model's BatchNorm "
                           f"running stats, after {len(losses)} steps, still lag the batch statistics the steps "
                           "trained with. Not a bug of the loss or lr; if eval accuracy stays low in the real run, "
                           "look at the BatchNorm momentum and batch size.", figures=figures, details=details)
    if accuracy < 1.0:
        return fail(accuracy, 1.0, ">=", f"the loss reached {final:.4f} but only {accuracy:.0%} of the batch is "
                    "predicted right (in eval mode): the step jumped away from the solution (learning rate too "
                    "high), eval mode behaves differently (dropout or normalisation layers), or the loss does not "
                    "measure classification (wrong target encoding or wrong loss)")
    if floor > tolerance:
        passed += f". This loss cannot go below {floor:.4f} on this batch (label smoothing, say)"
    return CheckResult("overfit_one_batch", STAGE, Verdict.PASS, final, threshold, "<=", passed + ".",
                       figures=figures, details=details)


def training_loss_decreases(pipeline: Pipeline, window: int = LOSS_WINDOW, min_drop: float = 0.2,
                            min_progress: float = 0.02) -> CheckResult:
    """Over the shared short run the mean loss of the last window is below the first window's, and the
    loss never jumps above twice its first value (an overshooting learning rate).

    Graded: a loss that went up, jumped or did not move (< `min_progress`) FAILs; one that falls,
    but by less than `min_drop`, WARNs: a small lr or a long warm-up trains slowly, which is worth
    a look but is not broken code.
    """
    run = reference_run(pipeline)
    losses, steps = run.losses, run.steps
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    drop = (first - last) / abs(first) if first != 0 and math.isfinite(first) and math.isfinite(last) else -math.inf
    peak = _peak(losses)
    jumped = _loss_jumped(losses)
    figure = Figure("lines", f"training loss, first {steps} steps", {"series": {"loss": losses}, "xlabel": "step",
                                                                     "ylabel": "loss"})
    details = {"first_window": first, "last_window": last, "drop": drop, "peak": peak, "warn_threshold": min_drop,
               **run.budget_details}
    if last < 0:
        why = "the loss went negative: it has the wrong sign"
    elif jumped:
        why = (f"the loss jumped from {losses[0]:.4f} at the first step to {peak:.4g}, more than twice its start: "
               "the learning rate is too high (it overshoots, then recovers only partly)")
    elif not math.isfinite(last) or last > first:
        why = "the loss went up or to NaN: the learning rate is too high, or the loss has the wrong sign"
    else:
        why = ("it barely moved: the learning rate is too low, gradients don't reach the weights, or the loss is "
               "clipped/saturated")
    summary = f"the mean loss went from {first:.4f} (first {window} steps) to {last:.4f} (last {window}) over {steps} steps"
    # The shown number is the criterion that decided: the sign, the jump, or the drop.
    if last < 0:
        value, threshold, comparison, verdict = last, 0.0, ">=", Verdict.FAIL
    elif jumped:
        ratio = peak / abs(losses[0]) if math.isfinite(peak) and losses[0] != 0 else math.inf
        value, threshold, comparison, verdict = ratio, 2.0, "<=", Verdict.FAIL
    else:
        value = drop if math.isfinite(drop) else math.nan
        threshold, comparison = min_progress, ">="
        verdict = Verdict.PASS if drop >= min_drop else Verdict.WARN if drop >= min_progress else Verdict.FAIL
    if verdict is Verdict.PASS:
        message = f"{summary}: -{drop:.0%} (need -{min_drop:.0%}), never above twice the first loss."
    elif verdict is Verdict.WARN:
        message = (f"{summary}: it falls, but only -{drop:.0%} (a healthy start falls -{min_drop:.0%}). Training is "
                   "slow here: a small learning rate, a long warm-up, or heavy regularisation. Not broken, but "
                   "check the lr before a long run.")
    else:
        message = (f"{summary}; a fall of at least -{min_progress:.0%}, never above twice the first loss, was "
                   f"expected: {why}.")
    return CheckResult("training_loss_decreases", STAGE, verdict, value, threshold, comparison, message,
                       figures=[figure], details=details)


def prediction_dynamics(pipeline: Pipeline, min_gain: float = 0.1, min_progress: float = 0.01) -> CheckResult:
    """Predictions on a fixed val batch across the shared short run (Karpathy's "visualize prediction dynamics").

    The figure shows jitter (learning rate too high) or frozen rows (too low) at a glance. FAILs
    when the mean probability of the true class gains less than `min_progress`; WARNs below `min_gain`.
    """
    run = reference_run(pipeline)
    values = torch.stack(run.true_class_probability).T  # (examples, snapshots): probability of the true class
    y = run.watched_labels
    names = pipeline.data.class_names
    figure = Figure("matrix", "probability of the true class on fixed val examples, across training", {
        "values": values.numpy(), "rows": [f"#{i} {names[int(c)]}" for i, c in enumerate(y.tolist())],
        "cols": [str(step) for step in run.taken], "xlabel": "step", "ylabel": "example",
        "annotate": False})  # the colour bar reads it; 176 numbers were a third of the figures' drawing
    # The end is the mean over the last third of the snapshots, not the last one: in eval mode a model
    # with BatchNorm and momentum can swing by 0.2 within a few steps, and one snapshot decided the verdict.
    late = max(2, values.shape[1] // 3) if values.shape[1] > 2 else 1
    start, final = values[:, 0].mean().item(), values[:, -late:].mean().item()
    gain = final - start if math.isfinite(final) else -math.inf
    went = (f"on {len(y)} fixed val examples the mean probability of the true class went {start:.3f} -> {final:.3f} "
            f"(mean of the last {late} snapshots) in {run.steps} steps")
    details = {"start": start, "final": final, "warn_threshold": min_gain, **run.budget_details}
    if gain >= min_gain:
        verdict, message = Verdict.PASS, (f"{went}. Read the figure: rows should warm up steadily; flickering means "
                                          "the learning rate is too high.")
    elif gain >= min_progress:
        verdict, message = Verdict.WARN, (f"{went} (a healthy start gains +{min_gain}): predictions improve, slowly. "
                                          "A small learning rate or a long warm-up; check the lr before a long run.")
    else:
        verdict, message = Verdict.FAIL, (f"predictions did not improve: {went} (need +{min_progress}). Rows that "
                                          "never change mean the learning rate is too low or the weights don't "
                                          "train; flickering rows mean it is too high.")
    return CheckResult("prediction_dynamics", STAGE, verdict, gain, min_progress, ">=", message, figures=[figure],
                       details=details)
