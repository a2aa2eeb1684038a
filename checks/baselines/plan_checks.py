"""Stage `baselines`: is the configured run long enough for what the baselines needed?

The baselines measure how many steps this model, loss, optimizer and lr need: `overfit_one_batch`
how many it takes to memorise 16 examples, the shared reference run how fast the loss falls on the
real data. The configured run gets `epochs x batches per epoch` steps, and nothing else compares
the two: one epoch of batches of 512 on a few thousand images is 7 steps, where memorising a single
small batch took 30. Both measurements are read, not retrained: `overfit_one_batch` keeps its result
for the pipeline being checked (`shared_per_pipeline`), and the reference run is shared already.
"""
from __future__ import annotations

import math

from checks.engine.kinds import applies_to
from checks.baselines.overfit_checks import overfit_one_batch
from checks.measure.reference_run import reference_run
from checks.engine.result import CheckResult, Verdict, measured, not_applicable
from checks.measure.sampling import first_batches
from recipe.pipeline import Pipeline

STAGE = "baselines"


def half_way_step(losses: list[float], window: int = 10, min_fall: float = 0.05) -> int | None:
    """The step at which the loss (a trailing mean over `window` steps) first falls half of the way
    from its first window to its last; None when it falls by less than `min_fall` of its start."""
    if len(losses) < 2 * window or not all(math.isfinite(v) for v in losses):
        return None
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    if first - last < min_fall * abs(first):
        return None
    middle = (first + last) / 2
    for end in range(window, len(losses) + 1):
        if sum(losses[end - window:end]) / window <= middle:
            return end
    return None


@applies_to("image", "features", "tokens")
def run_length(pipeline: Pipeline) -> CheckResult:
    """The configured run (epochs x batches per epoch, at the batch size the pipeline's loader really
    yields) must have at least as many steps as the baselines needed for their first progress:
    - for images, the steps `overfit_one_batch` took to memorise 16 examples (a run shorter than that
      cannot even memorise one small batch, let alone learn the data), and
    - the step at which the shared reference run's loss had fallen half of the way it falls (a run
      that ends there stops while the loss is falling fastest, before it made half the progress the
      preflight's own run makes with the same data, model, batch size and optimizer).
    Clean runs and the valid configurations on the sample plan 70-2190 steps against a need of
    20-109; one epoch of batches of an eighth of the split plans 9 against 20-30.

    N/A when neither was measured: no batch could be memorised (overfit_one_batch FAILs and says why)
    and the reference loss did not fall.
    """
    train = pipeline.data.train
    batch = len(first_batches(pipeline, "train", 1)[0].y)
    per_epoch = math.ceil(len(train) / max(batch, 1))
    epochs = pipeline.config.epochs
    planned = epochs * per_epoch
    memorised = overfit_one_batch(pipeline)
    to_memorise = int(memorised.details["steps"]) if memorised.verdict is Verdict.PASS else None
    run = reference_run(pipeline)
    half_way = half_way_step(run.losses)
    # Memorising a batch is a floor for images only. A table's achievable loss is far above 0 and a linear
    # model on a few features needs big weights to memorise even D + 1 rows (iris, lr 0.01: 478 steps; its
    # reference loss is half way down by step 31). A batch of 16 token blocks holds ~1,000 targets, which a
    # language model memorises long after it learned what the text shares: the tiny GPT on python-source
    # memorised in 263 steps while its loss was half way down by step 27, and one epoch (113 steps), a
    # usual length for a language model, FAILed as "cannot fit the data".
    needs = [n for n in ((to_memorise,) if pipeline.kind == "image" else ()) + (half_way,) if n is not None]
    if not needs:
        why = ("overfit_one_batch could not memorise a batch and the reference run's loss did not fall" if
               pipeline.kind == "image" else "the reference run's loss did not fall")
        return not_applicable("run_length", STAGE, f"no measured need to hold the configured {planned} steps against: "
                              f"{why} (fix that first)")
    need = max(needs)
    what = pipeline.data.examples.split(" (")[0]  # images, feature vectors, token sequences
    plan = (f"{epochs} epoch{'s' * (epochs != 1)} x {per_epoch} batches of {batch} ({len(train)} train {what}) = "
            f"{planned} steps")
    rows = memorised.details.get("examples", 16)  # D + 1 for feature vectors of D < 15
    memory = (f"overfit_one_batch memorised {rows} examples in {to_memorise} steps" if to_memorise is not None else
              f"overfit_one_batch could not memorise {rows} examples")
    fell = (f"the reference run's loss fell half of the way it fell in {run.steps} steps ({run.losses[0]:.3f} -> "
            f"{run.losses[-1]:.3f}) by step {half_way}" if half_way is not None else
            f"the reference run's loss did not fall clearly over its {run.steps} steps")
    measured_need = f"{memory} with this model, loss and optimizer; {fell}" if pipeline.kind == "image" else \
        f"{fell} with this model, loss and optimizer"
    details = {"planned_steps": planned, "epochs": epochs, "batches_per_epoch": per_epoch, "batch_size": batch,
               "steps_to_memorise_a_batch": to_memorise, "reference_half_way_step": half_way,
               "reference_steps": run.steps, "config_batch_size": pipeline.config.batch_size}
    ok = f"the configured run has {plan}, at least the {need} the baselines needed ({measured_need})."
    fail = (f"the configured run is too short: {plan}, fewer than the {need} steps the baselines needed for their "
            f"first progress ({measured_need}). It cannot fit the data: too few epochs, or batches too large for "
            f"this split. Train for at least {math.ceil(need / per_epoch)} epochs (several times that to train well) "
            "or use smaller batches (more steps per epoch).")
    return measured("run_length", STAGE, planned, need, ">=", ok, fail, details=details)
