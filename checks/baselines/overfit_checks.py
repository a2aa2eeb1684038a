"""Stage `baselines`: "overfit one batch", with the pipeline's own step, optimizer and warm-up."""
from __future__ import annotations

import copy
import math

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.reference_run import shared_per_pipeline
from checks.measure.predictions import context_floor, context_width, scored
from checks.measure.sampling import (FAMILIES, PlannedSchedule, first_batches, fresh_model, has_running_stats, loss_floor,
                                     output_family)
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

STAGE = "baselines"
SATURATED = 1e-3  # nats a confident mistake may gain from a margin of 30 to 60 and still count as "no more"


def _mistake_growth(pipeline: Pipeline, outputs_at_init: torch.Tensor, y: torch.Tensor) -> float:
    """How much the pipeline's loss grows when a confident mistake becomes twice as confident: outputs
    in the model's own family for scores that put a margin of 30, then 60, on a wrong class. A
    cross-entropy grows by ~30 nats (label smoothing by ~27); one that reads squashed scores (a softmax
    or sigmoid before it) has already saturated and grows by nothing."""
    out = outputs_at_init.detach().float()
    if out.dim() < 2 or tuple(out.shape[:-1]) != tuple(y.shape):
        return math.inf
    squash = FAMILIES[output_family(out)]
    wrong = torch.nn.functional.one_hot((y.clamp(min=0) + 1) % out.shape[-1], out.shape[-1]).to(out)
    with torch.no_grad():
        at = [float(pipeline.loss_fn(squash(margin * wrong), y)) for margin in (30.0, 60.0)]
    return at[1] - at[0] if all(map(math.isfinite, at)) else math.inf


def _still_falling(excess: list[float], window: int, min_fall: float) -> bool:
    """The loss's excess over its floor fell by at least `min_fall` (relative) from the previous `window`
    steps to the last `window` steps, each window read by its lowest value: a model with BatchNorm or Adam
    on one batch spikes now and then, and one spiked step must not decide that the loss stopped falling."""
    if len(excess) < 2 * window:
        return False
    last, before = min(excess[-window:]), min(excess[-2 * window:-window])
    return 0 < last < (1 - min_fall) * before


COPIED = 0.9        # share of predictions that repeat the input where the target differs from it: y = x trained
COPIED_MIN_SEEN = 32  # positions whose target differs from their input needed to read that share at all


def _copied_inputs(predicted: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pad_id: int | None) -> float:
    """For token sequences, the share of predictions equal to the input id at their position, counted only
    where the target is another id (0 for anything else): a right answer that repeats its input (a run of
    one character) is no copying, and a step trained on y = x copies nearly everywhere else."""
    if y.dim() != 2 or x.shape != y.shape or x.is_floating_point():
        return 0.0
    scored_at = torch.ones_like(y, dtype=torch.bool) if pad_id is None else y != pad_id
    differs = (x != y)[scored_at]  # in the order of `predicted` (scored positions, flattened)
    if int(differs.sum()) < COPIED_MIN_SEEN:
        return 0.0
    return (predicted.reshape(-1)[differs] == x[scored_at][differs]).float().mean().item()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              pad_id: int | None = None) -> tuple[float, torch.Tensor]:
    """Accuracy over the batch's scored predictions (token sequences: every non-pad target), and those predictions."""
    logits, scored_y = scored(forward_logits(model, x), y, pad_id)
    predicted = logits.argmax(-1)
    return (predicted == scored_y).float().mean().item(), predicted


@applies_to("image", "features", "tokens")
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
    if pipeline.kind == "features":
        # D + 1 rows in general position can take any labels under an affine map: a linear model on iris's
        # 4 features cannot memorise 16 rows of overlapping classes, and that is capacity, not a bug
        batch_size = min(batch_size, batch.x.shape[1] + 1)
    x, y = batch.x[:batch_size], batch.y[:batch_size]
    model = fresh_model(pipeline)
    with torch.no_grad():  # a copy in eval mode: no running stats or dropout draws spent on the real model
        at_init = forward_logits(copy.deepcopy(model).eval(), x)
    floor, floor_accuracy = loss_floor(pipeline, at_init, y)
    # Outputs that are already probabilities keep a loss that expects logits off its minimum.
    logits_floor = loss_floor(pipeline, at_init, y, family="logits")[0] \
        if at_init.dim() == 2 and output_family(at_init.float()) == "probabilities" else math.nan
    best_accuracy, shared = 1.0, ""
    if y.dim() == 2 and not x.is_floating_point():  # token sequences: some targets share all the model sees
        width = context_width(copy.deepcopy(model).eval(), x, pipeline.num_classes)
        context_loss, best_accuracy = context_floor(x, y, width, pipeline.data.pad_id)
        # The accuracy is measured in float32 (92/111 = 0.82882881) and this bound in float64 (0.82882883):
        # a model at exactly the best share read as short of it. A millionth is far below one position.
        best_accuracy *= 1 - 1e-6
        shared = (f" (targets after the same {width + 1} ids in view differ: the best a model reading them can do "
                  f"is loss {context_loss:.4f}, accuracy {best_accuracy:.1%})") if context_loss > 0 else ""
        floor = max(floor, context_loss)
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
    accuracy, predicted = _accuracy(model, x, y, pipeline.data.pad_id)
    train_mode_accuracy = accuracy
    if accuracy < best_accuracy and has_running_stats(model):  # batch statistics, as the steps saw them
        train_mode_accuracy, _ = _accuracy(copy.deepcopy(model).train(), x, y, pipeline.data.pad_id)
    first = losses[0]
    # The lowest loss of the last few steps, unless the last one left the finite numbers: a spike in the
    # very last step (Adam or BatchNorm on one batch) is not where the loss stands.
    final = min(losses[-settle_window:]) if math.isfinite(losses[-1]) else losses[-1]
    names = pipeline.data.class_names
    figures = [Figure("lines", f"loss on one batch of {len(y)}", {"series": {"loss": losses}, "xlabel": "step",
                                                                 "ylabel": "loss", "hline": threshold})]
    if y.dim() == 1:  # one class per example; a token batch has hundreds of predictions, no matrix reads them
        figures.append(Figure("matrix", "prediction vs label on the batch (eval mode)", {
                   "values": torch.nn.functional.one_hot(predicted.clamp(0, len(names) - 1), len(names)).T.cpu().numpy(),
                   "rows": list(names), "cols": [names[int(c)] for c in y.tolist()], "ylabel": "predicted",
                   "xlabel": "true label of each example", "annotate": False}))  # 0/1: the colour says it
    details = {"steps": len(losses), "examples": len(y), "final_loss": final, "batch_accuracy": accuracy, "first_loss": first,
               "loss_floor": floor, "floor_accuracy": floor_accuracy, "threshold": threshold,
               "train_mode_accuracy": train_mode_accuracy, "extended": len(losses) > max_steps,
               "best_accuracy": best_accuracy}
    extended = f" (given {len(losses) - max_steps} steps more than {max_steps}: the loss was still falling)" \
        if len(losses) > max_steps else ""
    floor_said = f"the loss's floor on this batch is {floor:.4f}{shared}, so the bar is {threshold:.4f}"
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
    growth = _mistake_growth(pipeline, at_init, y) if floor > tolerance else math.inf
    if growth < SATURATED:
        return fail(growth, SATURATED, ">=", f"this loss cannot go below {floor:.4f} on the batch, and a confident "
                    f"mistake costs it no more at a score margin of 60 than at 30 (+{growth:.2g} nats; a cross-entropy "
                    "adds ~30): it reads squashed scores, not logits. A softmax or sigmoid applied before the "
                    "cross-entropy (in the training step or a loss wrapper; cross_entropy applies log_softmax "
                    "itself), so the gradient vanishes on the examples that need it most. Pass the raw logits")
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
              f"(the loss's floor on this batch {floor:.4f} + {tolerance}{shared}), accuracy {accuracy:.1%}")
    if y.dim() == 2:
        # A token batch holds ~1,000 predictions, and a mean loss within `tolerance` of the floor leaves room for a
        # few wrong ones: a wrong argmax costs at least ln 2 nats (the true class has at most half the mass), so
        # the loss's excess hides at most excess / ln 2 of them. Fewer right than that is the loss not measuring
        # what is predicted, or eval mode predicting otherwise (a batch of 16 images must still be all right).
        needed = best_accuracy - max(final - floor, 0.0) / math.log(2)
        details["accuracy_needed"] = needed
    else:
        needed = best_accuracy
    if accuracy < needed and train_mode_accuracy >= needed:
        return CheckResult("overfit_one_batch", STAGE, Verdict.PASS, final, threshold, "<=",
                           f"{passed} in train mode. In eval mode only {accuracy:.0%}: the model's BatchNorm "
                           f"running stats, after {len(losses)} steps, still lag the batch statistics the steps "
                           "trained with. Not a bug of the loss or lr; if eval accuracy stays low in the real run, "
                           "look at the BatchNorm momentum and batch size.", figures=figures, details=details)
    copied = _copied_inputs(predicted, x, y, pipeline.data.pad_id)
    if accuracy < needed and copied >= COPIED:
        return fail(accuracy, needed, ">=", f"the loss reached {final:.4f} but only {accuracy:.1%} of the targets are "
                    f"predicted right, while {copied:.0%} of the predictions are the input token at their own position: "
                    "the step trains the model to repeat its inputs (a loss on y = x: the shift by one missing in "
                    "the train step or the loss, which is why its loss falls)")
    if accuracy < needed:
        return fail(accuracy, needed, ">=", f"the loss reached {final:.4f} but only {accuracy:.1%} of the batch is "
                    "predicted right (in eval mode): the step jumped away from the solution (learning rate too "
                    "high), eval mode behaves differently (dropout or normalisation layers), or the loss does not "
                    "measure classification (wrong target encoding or wrong loss)")
    if floor > tolerance and not shared:
        passed += f". This loss cannot go below {floor:.4f} on this batch (label smoothing, say)"
    return CheckResult("overfit_one_batch", STAGE, Verdict.PASS, final, threshold, "<=", passed + ".",
                       figures=figures, details=details)
