"""Stage `baselines`: Karpathy's "visualize prediction dynamics", on the shared reference run."""
from __future__ import annotations

import math

import torch

from checks.baselines.loss_jumps import train_drop
from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.predictions import row_names
from checks.measure.reference_run import reference_run
from recipe.pipeline import Pipeline

STAGE = "baselines"


@applies_to("image", "features", "tokens")
def prediction_dynamics(pipeline: Pipeline, min_gain: float = 0.1, min_progress: float = 0.01,
                        min_train_drop: float = 0.02, max_loss_share: float = 0.5) -> CheckResult:
    """Predictions on a fixed val batch across the shared short run (Karpathy's "visualize prediction dynamics").

    The figure shows jitter (learning rate too high) or frozen rows (too low) at a glance. FAILs
    when the mean probability of the true class gains less than `min_progress` while the training loss
    fell less than `min_train_drop` (the bar `training_loss_decreases` FAILs below); a training loss that
    fell makes it a WARN, as does a gain below `min_gain`, unless val lost more than `max_loss_share` of
    its start (learning away from the val labels: FAIL).
    """
    run = reference_run(pipeline)
    values = torch.stack(run.true_class_probability).T  # (examples, snapshots): probability of the true class
    y = run.watched_labels
    figure = Figure("matrix", "probability of the true class on fixed val examples, across training", {
        "values": values.numpy(), "rows": [f"#{i} {name}" for i, name in enumerate(row_names(pipeline, y))],
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
    drop = train_drop(run.losses)
    # The training loss fell, so the weights do train: a few val examples that have not improved yet are a slow
    # start or a model that does not generalise yet (residual CNN on the colour digits, 147 steps: train loss -18%,
    # these 16 examples 0.20 -> 0.15), not the frozen or lr-starved run a FAIL names. The bar is then that val
    # keeps half its start: losing more while train falls is learning away from the truth (a label map crossed
    # between splits, a loss with the wrong sign: 0.10 -> 0.00).
    trains, lags = drop >= min_train_drop, gain < min_progress
    bar = -start * max_loss_share if trains and lags else min_progress
    if gain >= min_gain:
        verdict, message = Verdict.PASS, (f"{went}. Read the figure: rows should warm up steadily; flickering means "
                                          "the learning rate is too high.")
    elif gain >= min_progress:
        verdict, message = Verdict.WARN, (f"{went} (a healthy start gains +{min_gain}): predictions improve, slowly. "
                                          "A small learning rate or a long warm-up; check the lr before a long run.")
    elif trains and gain >= bar:
        details["train_loss_drop"] = drop
        verdict, message = Verdict.WARN, (f"{went}, though the training loss fell {drop:.0%} over the same run: "
                                          "the model trains, and these val examples have not followed yet. A slow "
                                          "start, or it fits train before val; watch the val loss in the real run.")
    elif trains:
        details["train_loss_drop"] = drop
        verdict, message = Verdict.FAIL, (f"predictions got worse on val while the training loss fell {drop:.0%}: "
                                          f"{went}, more than {max_loss_share:.0%} of where it started lost. The "
                                          "model learns something that leads away from the val labels: labels mapped "
                                          "differently in train and val, a loss with the wrong sign, or val inputs "
                                          "prepared differently.")
    else:
        verdict, message = Verdict.FAIL, (f"predictions did not improve: {went} (need +{min_progress}), and the "
                                          f"training loss fell less than {min_train_drop:.0%}. Rows that "
                                          "never change mean the learning rate is too low or the weights don't "
                                          "train; flickering rows mean it is too high.")
    return CheckResult("prediction_dynamics", STAGE, verdict, gain, bar, ">=", message, figures=[figure],
                       details=details)
