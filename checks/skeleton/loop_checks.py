"""Stage `skeleton`, the training loop itself: run the real `fit` for a few steps, as training will.

Lightning's `fast_dev_run` in spirit: every phase of `recipe.train.fit` (train steps, the scheduler,
val and test evaluation) on a few batches, through the pipeline's own optimizer, scheduler and step.
What would make the full run crash or silently train something else shows here, before training.
"""
from __future__ import annotations

import math
import warnings

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.sampling import fresh_model, generator, planned_lr_curve
from recipe.optim import describe_optimizer, describe_scheduler
from recipe.pipeline import Pipeline
from recipe.train import StepContractError, fit, step_scheduler, take_step, training_objects
from recipe.user_code import describe, where

STAGE = "skeleton"


def _lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]


def _replayed_lrs(pipeline: Pipeline, epochs: int, batches: int, val_losses: list[float]) -> list[list[float]]:
    """The lr of every dry-run step as the optimizer and scheduler alone give it, with no training."""
    model = fresh_model(pipeline)
    optimizer, scheduler = training_objects(pipeline, model)
    lrs = []
    with warnings.catch_warnings():  # stepping a scheduler without optimizer.step() warns; that is the point
        warnings.simplefilter("ignore")
        for epoch in range(epochs):
            for _ in range(batches):
                lrs.append(_lrs(optimizer))
                step_scheduler(scheduler, "step", pipeline)
            step_scheduler(scheduler, "epoch", pipeline, val_losses[epoch] if epoch < len(val_losses) else None)
    return lrs


@applies_to("image", "features", "tokens")
def fit_dry_run(pipeline: Pipeline, epochs: int = 2, batches: int = 3) -> CheckResult:
    """Run `fit` itself for `epochs` epochs of `batches` batches (val and test cut to `batches` too).

    FAILs when fit crashes (the step returns a float, a scheduler raises, a shape breaks in
    evaluation), when a loss is not finite, or when the lr a step trains with is not the one the
    pipeline's optimizer and scheduler give (something in the step rewrites it); also when a step on
    the epoch's last train batch crashes, if that batch is smaller than the others (`_last_batch_crash`).
    Shows the optimizer and the schedule as the pipeline built them, read from the objects.
    """
    epochs = min(epochs, pipeline.config.epochs)
    seen: list[tuple[list[float], float]] = []

    def on_step(step: int, optimizer, loss: torch.Tensor) -> None:
        seen.append((_lrs(optimizer), float(loss)))

    try:
        result = fit(pipeline, quiet=True, max_epochs=epochs, max_batches=batches, on_step=on_step)
    except StepContractError as err:
        return _failed(f"{err}. Training would crash at its first step", len(seen))
    except Exception as err:  # the user's loop code broke: that is this check's finding, not a crashed check
        return _failed(f"fit crashed after {len(seen)} steps at {where(err)}: {describe(err)}. Training would crash "
                       "the same way: fix the pipeline's step, scheduler, loss or batches", len(seen))
    crash = _last_batch_crash(pipeline)
    if crash:
        return _failed(crash, len(seen))
    optimizer_info = describe_optimizer(result.optimizer)
    scheduler_info = describe_scheduler(result.scheduler, pipeline.scheduler_interval)
    per_epoch = min(batches, pipeline.steps_per_epoch)
    expected = _replayed_lrs(pipeline, epochs, per_epoch, [row["val_loss"] for row in result.history])
    trained_lrs = [lrs for lrs, _ in seen]
    mismatch = next((i for i, (a, b) in enumerate(zip(trained_lrs, expected))
                     if any(not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15) for x, y in zip(a, b))), None)
    losses = [loss for _, loss in seen]
    problems = []
    if result.stopped:
        problems.append(f"the dry run stopped: {result.stopped}")
    elif not all(math.isfinite(v) for v in losses):
        problems.append("a loss was NaN/Inf in the first steps: check the loss function and the lr")
    if mismatch is not None:
        problems.append(f"step {mismatch + 1} trained with lr {trained_lrs[mismatch][0]:.6g}, but the pipeline's "
                        f"optimizer and scheduler give {expected[mismatch][0]:.6g}: the train step (or something it "
                        "calls) rewrites the learning rate, so the checks and the full run would train differently")
    schedule = (f"{scheduler_info['class']} stepped per {scheduler_info['interval']}" if scheduler_info
                else "no scheduler (constant lr)")
    hyper = ", ".join(f"{k} {v}" for k, v in optimizer_info.items() if k not in ("class", "param_groups", "parameters"))
    summary = (f"fit ran {len(seen)} steps over {epochs} epochs, evaluated val and test, with "
               f"{optimizer_info['class']} ({hyper}) and {schedule}, as the pipeline built them")
    details = {"optimizer": optimizer_info, "scheduler": scheduler_info, "train_step": _qualname(pipeline.train_step),
               "loss_fn": _qualname(pipeline.loss_fn), "model": type(result.model).__name__,
               "epochs": pipeline.config.epochs, "steps_per_epoch": pipeline.steps_per_epoch,
               "dry_run_losses": losses, "dry_run_lrs": [lrs[0] for lrs in trained_lrs]}
    figures = []
    curve = planned_lr_curve(pipeline)
    if curve.lrs:
        steps, lrs, total = curve.steps, curve.lrs, curve.total
        shown = "" if steps[-1] >= total - 1 else f" (the first {len(steps):,} of {total:,} steps)"
        figures.append(Figure("lines", f"the learning rate fit will use, per step, as the pipeline's scheduler "
                              f"gives it{shown}", {"series": {"lr": lrs}, "x": steps, "xlabel": "step",
                                                   "ylabel": "learning rate"}))
    verdict = Verdict.FAIL if problems else Verdict.PASS
    message = (summary + "." if not problems else "; ".join(problems) + ".")
    return CheckResult("fit_dry_run", STAGE, verdict, float(len(problems)), 0.0, "==", message,
                       figures=figures, details=details)


def _last_batch_crash(pipeline: Pipeline) -> str:
    """Why a step on the epoch's last train batch crashes, when that batch is smaller than the first ("" when
    it is not, or does not crash). The dry run's few batches never reach it; a full epoch does: a BatchNorm
    model raises on a last batch of 1 example only when the first epoch ends."""
    if ("train", "stream") in pipeline.data.read_once:  # a stream read up to a cap: its last batch is the cap's
        return ""
    first = last = None
    for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline)):
        first = batch if first is None else first
        last = batch
    if first is None or len(last.y) >= len(first.y):
        return ""
    model = fresh_model(pipeline)
    optimizer, _ = training_objects(pipeline, model)
    model.train()
    try:
        take_step(pipeline, model, optimizer, last.x, last.y)
    except Exception as err:  # the user's model or step: this check's finding
        tip = (" (BatchNorm cannot train on 1 example: it needs 2 values per channel)"
               if len(last.y) == 1 else "")
        return (f"a step on the epoch's last train batch, {len(last.y)} example{'s' * (len(last.y) != 1)} where the "
                f"others have {len(first.y)}, crashed at {where(err)}: {describe(err)}{tip}. Training would crash "
                "at the end of its first epoch: drop the incomplete batch (DataLoader(drop_last=True)) or choose "
                "a batch size that leaves a larger remainder")
    return ""


def _failed(message: str, steps: int) -> CheckResult:
    return CheckResult("fit_dry_run", STAGE, Verdict.FAIL, 1.0, 0.0, "==", message + ".",
                       details={"steps_before_failure": steps})


def _qualname(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__", None)
    module = getattr(fn, "__module__", None) or getattr(getattr(fn, "func", None), "__module__", "")
    return f"{module}.{name}" if name else type(fn).__name__
