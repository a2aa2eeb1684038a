"""Stage `baselines`: "get dumb baselines", with the pipeline's own step and optimizer (overfit one batch:
overfit_checks.py; prediction dynamics: prediction_checks.py)."""
from __future__ import annotations

import math

from checks.engine.kinds import applies_to
from checks.baselines.token_baseline import TOKEN_MIN_LOSS_SHARE, counted_token_pass
from checks.baselines.loss_jumps import (LOSS_WINDOW, WITNESS_MAX_END_SHARE, WITNESS_MAX_RISE, last_window_mean,
                                         loss_jumped, peak_loss, peak_step, prior_entropy, spike, standing_rise,
                                         train_drop, warmup_witness)
from checks.measure.reference_run import budgeted_training, reference_run
from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.batchnorm import judged_copy
from checks.measure.predictions import label_counts
from checks.measure.sampling import per_example
from recipe.pipeline import Pipeline

STAGE = "baselines"


@applies_to("image", "features", "tokens")
def input_independent_baseline(pipeline: Pipeline, min_gain: float = 0.1, max_zero_gain: float = 0.15,
                               min_z: float = 3.0, min_loss_share: float = 0.02) -> CheckResult:
    """Train twice for the same short budget: on the real inputs (the shared reference run) and on
    all-zero inputs, for as many steps as the reference run took.

    The real inputs must be clearly better on val: +`min_gain` accuracy, or (a WARN) a gain beyond chance
    where a weak model on a hard task gains less: `min_z` standard errors of accuracy, or a val
    cross-entropy lower by `min_z` standard errors of the paired per-example differences and by at least
    `min_loss_share` of the zero-input loss (with a long tail of classes, accuracy barely leaves the
    majority class while the loss shows the model learning). The zero-input
    model should land near the majority-class accuracy; far above it means labels reach the model some
    other way. A worse val loss than zero inputs FAILs only when the training loss went wrong too (it
    jumped, or ended no better than zero inputs); a model that fits train and not val WARNs.
    Token sequences PASS first by counting, when real context beats the best model that never reads its
    ids by a tenth: no zero-input run can do better than that count (checks/baselines/token_baseline.py).
    """
    reference = reference_run(pipeline)
    counted = counted_token_pass(pipeline, reference) if pipeline.kind == "tokens" else None
    if counted is not None:  # tokens: real context beat the best input-independent model, counted: no zero run
        return counted
    steps = reference.steps
    real_model = reference.model
    zero_model = budgeted_training(pipeline, steps, zero_inputs=True).model
    # BatchNorm models are judged on running statistics measured on train batches (checks/measure/batchnorm.py):
    # a small momentum leaves them lagging the weights, and eval mode then scores a model that learned at chance.
    real_right, real_losses = per_example(pipeline, judged_copy(real_model, pipeline), "val")
    zero_right, zero_losses = per_example(pipeline, judged_copy(zero_model, pipeline, zero_inputs=True), "val",
                                          zero_inputs=True)
    real_acc, zero_acc = real_right.double().mean().item(), zero_right.double().mean().item()
    real_loss, zero_loss = real_losses.mean().item(), zero_losses.mean().item()
    counts = label_counts(pipeline, "val")  # token sequences: how often each id is a (non-pad) target
    majority = (counts.max() / counts.sum()).item()
    gain = real_acc - zero_acc
    inputs = {"tokens": "input tokens", "features": "features"}.get(pipeline.kind, "pixels")
    figure = Figure("bars", "val after the same short training", {
        "categories": ["accuracy", "cross-entropy"],
        "series": {"real inputs": [real_acc, real_loss], "zero inputs": [zero_acc, zero_loss]}})
    details = {"real_accuracy": real_acc, "zero_accuracy": zero_acc, "real_loss": real_loss, "zero_loss": zero_loss,
               "majority_accuracy": majority, "steps": steps, **reference.budget_details}
    if zero_acc > majority + max_zero_gain:
        return CheckResult("input_independent_baseline", STAGE, Verdict.FAIL, zero_acc, majority + max_zero_gain, "<=",
                           f"with all-zero inputs the model still reaches {zero_acc:.4f} val accuracy (majority class: "
                           f"{majority:.4f}): labels reach the model through something other than the {inputs} "
                           "(a target leak in the model, the loader or the loss).", figures=[figure], details=details)
    if gain < min_gain:
        # +min_gain is what an easy task gives in a short run; on a hard one (objects anywhere, clutter, many
        # classes) a weak model gains less. Below it, the evidence of a bug is a gain within chance: z, the
        # gain in standard errors of an accuracy at the zero-input rate over these val examples.
        examples = len(real_right)
        rate = min(max(zero_acc, 1 / examples), 1 - 1 / examples)
        z = gain / math.sqrt(rate * (1 - rate) / examples)
        saved = zero_losses - real_losses  # paired: the same val examples, nats each
        error = max(saved.std().item() / math.sqrt(examples), 1e-12)
        loss_z = saved.mean().item() / error
        loss_share = saved.mean().item() / max(zero_loss, 1e-12)
        most_share = (saved.mean().item() + min_z * error) / max(zero_loss, 1e-12)  # what chance leaves possible
        details.update({"gain_z": z, "val_examples": examples, "loss_gain_z": loss_z, "loss_gain_share": loss_share,
                        "loss_gain_share_upper": most_share})
        if pipeline.kind == "tokens" and loss_z >= min_z and loss_share >= TOKEN_MIN_LOSS_SHARE:
            # Next-token accuracy is a poor yardstick: most characters stay ambiguous whatever the context, so a
            # model that learns well gains +0.08 where a digit classifier gains +0.5. What the context buys is
            # nats: the zero-input model is the unigram, and beating it by a tenth of its loss is learning.
            return CheckResult("input_independent_baseline", STAGE, Verdict.PASS, loss_share, TOKEN_MIN_LOSS_SHARE,
                               ">=", f"after {steps} steps real input tokens reach a val loss of {real_loss:.4f} nats per "
                               f"token against {zero_loss:.4f} for zero inputs (the unigram a model without context "
                               f"learns): {loss_share:.1%} lower, {loss_z:.1f} standard errors of the per-position "
                               f"differences (accuracy {real_acc:.4f} vs {zero_acc:.4f}).", figures=[figure],
                               details=details)
        if z >= min_z or (loss_z >= min_z and loss_share >= min_loss_share):
            evidence = (f"by {z:.1f} standard errors of accuracy" if z >= min_z else
                        f"in val cross-entropy by {loss_share:.1%} ({loss_z:.1f} standard errors of the per-example "
                        "differences)")
            return CheckResult("input_independent_baseline", STAGE, Verdict.WARN, max(z, loss_z), min_z, ">=",
                               f"real inputs beat zero inputs by only +{gain:.4f} val accuracy after {steps} steps "
                               f"({real_acc:.4f} vs {zero_acc:.4f}; an easy task gives +{min_gain}), but {evidence} "
                               f"over {examples} val examples, far more than chance: the model does "
                               f"learn from the {inputs}, slowly or little. A weak model for this task, a hard task, "
                               "imbalanced classes, or a slow start (small lr, long warm-up); not evidence of a bug.",
                               figures=[figure], details=details)
        if most_share >= min_loss_share:
            # Not shown to learn, but not shown not to: the val split is too small or its losses too spread to
            # tell. A bug that stops learning leaves the loss where zero inputs put it, within a narrow bound.
            return CheckResult("input_independent_baseline", STAGE, Verdict.WARN, most_share, min_loss_share, ">=",
                               f"cannot tell: after {steps} steps real inputs beat zero inputs by +{gain:.4f} val "
                               f"accuracy ({real_acc:.4f} vs {zero_acc:.4f}) and {loss_share:.1%} of the loss "
                               f"({real_loss:.4f} vs {zero_loss:.4f}), neither beyond chance over {examples} val "
                               f"examples ({z:.1f} and {loss_z:.1f} standard errors, need {min_z}), yet a real gain of "
                               f"up to {most_share:.1%} of the loss is within chance too. Too few or too varied val "
                               "examples for this short run; a larger val split, or --check-steps, would decide.",
                               figures=[figure], details=details)
        return CheckResult("input_independent_baseline", STAGE, Verdict.FAIL, gain, min_gain, ">=",
                           f"real inputs are no better than zero inputs after {steps} steps: val accuracy {real_acc:.4f} "
                           f"vs {zero_acc:.4f} (need +{min_gain}, or a gain beyond chance: {z:.1f} standard errors "
                           f"over {examples} val examples, need {min_z}), loss {real_loss:.4f} vs {zero_loss:.4f} "
                           f"(a gain of at most {max(most_share, 0):.1%} of the zero-input loss at {min_z} standard errors; a "
                           f"model that learns gains {min_loss_share:.0%} or more). The "
                           f"model does not learn from the {inputs}: the learning rate is far too low or too high, "
                           "gradients do not reach the weights (frozen/detached layer), the loss is wrong (sign, MSE "
                           "on class indices), the labels the step trains on do not belong to its inputs, or the "
                           "inputs are garbage.", figures=[figure], details=details)
    if not real_loss < zero_loss:
        # A worse val loss than zero inputs is a bug's symptom only when the training itself went wrong too:
        # the reference run's loss jumped above twice its start (an lr that overshoots) or ended no better
        # than what zero inputs reach. A model whose training loss fell far below that fits its training
        # batches and is over-confident on unseen examples: it overfits, or the task is hard for it.
        train_loss = last_window_mean(reference.losses)
        details.update({"train_loss_last_window": train_loss, "train_loss_jumped": loss_jumped(reference.losses)})
        if loss_jumped(reference.losses) or not train_loss < zero_loss:
            how = (f"its training loss jumped above twice its first value ({reference.losses[0]:.4f})"
                   if loss_jumped(reference.losses) else
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


@applies_to("image", "features", "tokens")
def training_loss_decreases(pipeline: Pipeline, window: int = LOSS_WINDOW, min_drop: float = 0.2,
                            min_progress: float = 0.02) -> CheckResult:
    """Over the shared short run the mean loss of the last window is below the first window's, and the
    loss never jumps above twice its first value (an overshooting learning rate).

    Graded: a loss that went up, jumped or did not move (< `min_progress`) FAILs; one that falls,
    but by less than `min_drop`, WARNs: a small lr or a long warm-up trains slowly, which is worth
    a look but is not broken code. A jump the run recovered from is put to a witness, the same run
    with the lr ramped up over its first third (checks/baselines/loss_jumps.py): when that run never climbs back,
    or ends at half the loss or less and back down from its climb, the lr overshoots at the start only
    (SGD 0.1 on a BatchNorm ResNet without warm-up) and the check WARNs; otherwise the lr is too high and
    it FAILs.
    """
    run = reference_run(pipeline)
    losses, steps = run.losses, run.steps
    first, last, drop = sum(losses[:window]) / window, last_window_mean(losses, window), train_drop(losses, window)
    peak, at = peak_loss(losses), peak_step(losses)  # held for 3 steps: one hard batch is not a jump
    jumped, held = loss_jumped(losses), "held from"
    # A jump the user's own run came back from may be a start-up overshoot only: the witness run with a warm-up
    # tells. Came back: its end is under what guessing the train label frequencies costs (cross-entropy; the
    # first loss if lower, for other losses), by the least progress the check accepts. A run the jump left
    # guessing is asked only while it may still be coming back (below).
    came_back_below = min(abs(losses[0]), prior_entropy(pipeline)) * (1 - min_progress)
    came_back = math.isfinite(last) and 0 <= last <= came_back_below
    top, top_step = spike(losses)
    if not jumped and not came_back and last >= 0 and top > 2 * abs(losses[0]):
        # One hard batch lifts one step and the run goes on learning; a spike that left the run guessing is the
        # suspect, held or not (a BN CNN at SGD 0.5: 2.5 -> 115 -> 158 for two steps, then ln 10 to the end).
        jumped, peak, at, held = True, top, top_step, "at"
    # A jump the run had not come back from by its end is put to the witness too while the run was still coming
    # back, or was cut short by the model's FLOPs: resnet18 at SGD 0.1 without warm-up (seed 4) went 2.67 -> 9.6
    # and sat near ln 10 to the end of its 60 steps, too few to tell a slow recovery from a dead net. A net the
    # jump killed in a full-length run sits at ln C (a BN CNN at SGD 0.5, 295 steps): it is dead as configured,
    # whatever a warm-up would have done, and FAILs.
    before_last = losses[-2 * window:-window]
    still_falling = (len(losses) >= 2 * window and math.isfinite(last)
                     and last <= sum(before_last) / len(before_last) * (1 - min_progress))
    cut_short = run.plan is not None and run.plan.steps < run.plan.asked
    # ...and only once back under the jump's bar: a loss falling from 2,000 to 939 (the lr x10 each epoch) is no
    # recovery, whatever a warm-up would do.
    coming_back = last <= 2 * abs(losses[0]) and (still_falling or cut_short)
    recovered = jumped and last >= 0 and math.isfinite(peak) and (came_back or coming_back)
    series = {"loss": losses}
    details = {"first_window": first, "last_window": last, "drop": drop, "peak": peak, "peak_step": at,
               "warn_threshold": min_drop, **run.budget_details}
    if recovered:
        warmup, ramped, rise = warmup_witness(pipeline, steps)
        series[f"lr ramped over {warmup} steps"] = ramped
        details.update({"warmup_witness_steps": warmup, "warmup_witness_last_window": last_window_mean(ramped, window),
                        "warmup_witness_rise": rise})
        details["warmup_witness_end_share"] = details["warmup_witness_last_window"] / last if last > 0 else math.inf
        details["warmup_witness_standing_rise"] = standing_rise(ramped)
    figure = Figure("lines", f"training loss, first {steps} steps", {"series": series, "xlabel": "step",
                                                                     "ylabel": "loss"})
    if last < 0:
        why = "the loss went negative: it has the wrong sign"
    elif recovered:
        rise = details["warmup_witness_rise"]
        climbed = ("jumped again" if not math.isfinite(rise) else "never climbed back" if rise <= WITNESS_MAX_RISE else
                   f"still climbed back ({rise:.0%} of its first loss above its best, limit {WITNESS_MAX_RISE:.0%})")
        ramped_end = details["warmup_witness_last_window"]
        why = (f"the loss jumped from {losses[0]:.4f} at the first step to {peak:.4g} ({held} step {at}), more than "
               "twice its start, " + ("and " if came_back else f"ended at {last:.4f}, not under {came_back_below:.4f} "
                                      f"(what guessing the label frequencies costs, less {min_progress:.0%}), and ")
               + f"with the lr ramped up over the first {details['warmup_witness_steps']} steps the loss {climbed} and "
               + (f"ended at {ramped_end:.4f}, not under {came_back_below:.4f} either" if ramped_end > came_back_below
                  else f"ended at {ramped_end:.4f}, not half of {last:.4f}"
                  if details["warmup_witness_end_share"] > WITNESS_MAX_END_SHARE else
                  f"ended at {ramped_end:.4f}, its last sixth still "
                  f"{details['warmup_witness_standing_rise']:.0%} of its first loss above its best (limit "
                  f"{WITNESS_MAX_RISE:.0%})")
               + (": the learning rate is too high, not just at the start" if came_back else
                  ": the learning rate is too high (it overshoots and does not recover)"))
    elif jumped:
        why = (f"the loss jumped from {losses[0]:.4f} at the first step to {peak:.4g} ({held} step {at}), more than "
               "twice its start, and "
               f"ended at {last:.4f}, not under {came_back_below:.4f} (what guessing the label frequencies costs, less "
               f"{min_progress:.0%}): the learning rate is too high (it overshoots and does not recover)")
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
        # Not back by the run's end: a warm-up that keeps the loss from climbing must also take it past guessing.
        witness_back = recovered and (came_back or details["warmup_witness_last_window"] <= came_back_below)
        if witness_back and details["warmup_witness_rise"] <= WITNESS_MAX_RISE:  # the number that decided: the ramped run's
            value, threshold, verdict = details["warmup_witness_rise"], WITNESS_MAX_RISE, Verdict.WARN
        elif recovered and details["warmup_witness_end_share"] <= WITNESS_MAX_END_SHARE \
                and details["warmup_witness_standing_rise"] <= WITNESS_MAX_RISE:  # ...and came back down from its climb
            value, threshold, verdict = details["warmup_witness_end_share"], WITNESS_MAX_END_SHARE, Verdict.WARN
    else:
        value = drop if math.isfinite(drop) else math.nan
        threshold, comparison = min_progress, ">="
        verdict = Verdict.PASS if drop >= min_drop else Verdict.WARN if drop >= min_progress else Verdict.FAIL
    if verdict is Verdict.PASS:
        message = f"{summary}: -{drop:.0%} (need -{min_drop:.0%}), never held above twice the first loss."
    elif verdict is Verdict.WARN and jumped:
        witness_said = (f"never jumped and never climbed back (at most {value:.0%} of its first loss above its best "
                        f"so far, limit {WITNESS_MAX_RISE:.0%}), ending at {details['warmup_witness_last_window']:.4f}"
                        if threshold == WITNESS_MAX_RISE else
                        f"ended at {details['warmup_witness_last_window']:.4f}, {value:.0%} of the loss without it "
                        f"(limit {WITNESS_MAX_END_SHARE:.0%})")
        not_back = "" if came_back else (f", and was not yet back under {came_back_below:.4f} (guessing the label "
                                         f"frequencies) by step {steps}" + (", where the model's FLOPs cut this run"
                                                                            if cut_short else ""))
        message = (f"{summary}, but it jumped from {losses[0]:.4f} to {peak:.4g} ({held} step {at}){not_back}. The same run with "
                   f"the lr ramped up over its first {details['warmup_witness_steps']} steps {witness_said}: the lr "
                   + ("overshoots at the start and trains once past it (common without a warm-up, e.g. SGD at 0.1 on "
                      "BatchNorm nets). Not broken; a warm-up tames the start." if came_back else
                      "overshoots at the start, and a warm-up trains it (common without one, e.g. SGD at 0.1 on "
                      "BatchNorm nets). Whether the run comes back without one, these steps cannot tell: add a "
                      "warm-up, or --check-steps N to watch longer."))
    elif verdict is Verdict.WARN:
        message = (f"{summary}: it falls, but only -{drop:.0%} (a healthy start falls -{min_drop:.0%}). Training is "
                   "slow here: a small learning rate, a long warm-up, or heavy regularisation. Not broken, but "
                   "check the lr before a long run.")
    else:
        message = (f"{summary}; a fall of at least -{min_progress:.0%}, never above twice the first loss, was "
                   f"expected: {why}.")
    return CheckResult("training_loss_decreases", STAGE, verdict, value, threshold, comparison, message,
                       figures=[figure], details=details)
