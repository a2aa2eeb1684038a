"""What the report says about a finished training run, from `fit`'s result and its evaluation.

`training_summary(pipeline, fit_result, evaluation)` turns the numbers `recipe.evaluate` measured
into plain numbers (stored in results.json under "training") plus the figures. It never runs the
model: `recipe report` redraws the page from those stored numbers and PNGs.

When the run stopped early (NaN loss, Ctrl-C) `fit` did not evaluate on test, and neither does
this: test accuracy, the confusion matrix and the mistakes are left out rather than measured on a
half-trained or diverged model.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from checks.report.sections import ACCURACY_CURVE, ANCHORS, CONFUSION, LOSS_CURVES, MISTAKES, SHIFTS, TEMPLATES
from checks.engine.result import CheckResult, Figure
from recipe.data import unit_pixels

if TYPE_CHECKING:
    from recipe.evaluate import Evaluation
    from recipe.monitors import MonitorLog
    from recipe.pipeline import Pipeline
    from recipe.train import FitResult

Z95 = 1.959964  # two-sided 95% normal quantile
N_MISTAKES = 12

# Published test accuracies to put this run in context, by data source.
LECUN_LINEAR = {"name": "linear classifier, LeCun 1998", "accuracy": 0.880,
                "source": "LeCun et al. 1998, 'Gradient-based learning applied to document recognition': "
                          "1-layer linear classifier, 12.0% test error"}
LOGREG_MNIST = {"name": "logistic regression, Xiao 2017", "accuracy": 0.917,
                "source": "Xiao, Rasul, Vollgraf 2017, Fashion-MNIST benchmark, LogisticRegression on MNIST"}
LOGREG_FASHION = {"name": "logistic regression, Xiao 2017", "accuracy": 0.842,
                  "source": "Xiao, Rasul, Vollgraf 2017, Fashion-MNIST benchmark, LogisticRegression on Fashion-MNIST"}
PUBLISHED = {"mnist": [LECUN_LINEAR, LOGREG_MNIST], "sample": [LECUN_LINEAR, LOGREG_MNIST],
             "fashion-mnist": [LOGREG_FASHION]}


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion correct/n; unlike p +- 1.96 SE it stays in [0, 1]."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if correct == 0 else max(0.0, centre - half)   # exact ends: rounding must not show 99.99999%
    high = 1.0 if correct == n else min(1.0, centre + half)
    return (low, high)


def training_summary(pipeline: "Pipeline", fit_result: "FitResult", evaluation: "Evaluation",
                     monitors: list[CheckResult] | None = None,
                     monitor_log: "MonitorLog | None" = None,
                     distributed: dict | None = None) -> tuple[dict[str, Any], list[Figure]]:
    """The "training" block of results.json and the figures of the report's training section.

    `monitors` are the judged training monitors (checks/training/monitor_checks.py), `monitor_log` what they
    judged; None when the run was not watched (`--no-monitors`). `distributed` is the judged rank record
    (checks/training/distributed_checks.py:distributed_block) when several processes trained, else None:
    judged by the caller, as the monitors are, so the report imports no check."""
    names = list(pipeline.data.class_names)
    history = [dict(row) for row in fit_result.history]
    n_val = len(pipeline.data.val)
    summary: dict[str, Any] = {"epochs": history, "stopped": fit_result.stopped,
                               "val_accuracy": None, "val_ci95": None, "val_n": n_val,
                               "test_accuracy": None, "test_ci95": None, "test_n": len(pipeline.data.test),
                               "per_class": [], "anchors": [], "confident_mistakes": [], "shift_robustness": []}
    if history:
        val_accuracy = float(history[-1]["val_accuracy"])
        summary["val_accuracy"] = val_accuracy
        summary["val_ci95"] = list(wilson_interval(round(val_accuracy * n_val), n_val))
    test_figures: dict[str, Figure] = {}
    if evaluation.probs is not None:
        test_figures = _test_section(summary, pipeline, evaluation.y, evaluation.probs, names)
        summary["shift_robustness"] = evaluation.shifts
        test_figures[SHIFTS] = _shift_figure(evaluation, pipeline.num_classes)
    templates = None if evaluation.templates is None else Figure(
        "images", TEMPLATES, {"images": evaluation.templates.numpy(), "captions": names, "cmap": "signed"}) \
        if evaluation.templates.dim() > 2 else Figure(  # feature vectors: one weight per class and feature
        "matrix", TEMPLATES, {"values": evaluation.templates.numpy(), "rows": names, "xlabel": "feature",
                              "cols": [str(d) for d in range(evaluation.templates.shape[1])], "ylabel": "class"})
    figures = _curves(history, len(names)) + [
        f for f in (test_figures.get(CONFUSION), templates, test_figures.get(MISTAKES), test_figures.get(SHIFTS),
                    test_figures.get(ANCHORS))
        if f is not None]
    if monitors is not None:
        summary["monitors"] = [dict(m.to_json(), figures=[f.title for f in m.figures]) for m in monitors]
        summary["monitoring"] = _monitoring(monitor_log)
        figures += [f for m in monitors for f in m.figures]
    if distributed is not None:  # several processes trained: how, and the rank checks
        summary["distributed"] = distributed
    return summary, figures


def _monitoring(log: "MonitorLog | None") -> dict[str, Any] | None:
    """How the run was watched: what the monitors' numbers rest on."""
    if log is None:
        return None
    return {"every": log.every, "steps": len(log.losses), "sampled_steps": len(log.sampled_steps),
            "layers": list(log.layers), "relu_sites": list(log.relu_sites),
            "train_accuracy_examples": log.train_accuracy_examples, "grads_cleared": log.grads_cleared}


def _curves(history: list[dict], num_classes: int) -> list[Figure]:
    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    loss = Figure("lines", LOSS_CURVES, {
        "series": {"train loss (mean over the epoch)": [row["train_loss"] for row in history],
                   "val loss (after the epoch)": [row["val_loss"] for row in history]},
        "x": epochs, "xlabel": "epoch", "ylabel": "cross-entropy",
        "hline": math.log(num_classes), "hline_label": f"ln({num_classes}) = loss at init / chance"})
    series = {"val accuracy": [row["val_accuracy"] for row in history]}
    if any("train_accuracy" in row for row in history):  # measured by the monitor (a fixed train subset)
        series["train accuracy (train subset, eval mode)"] = [row.get("train_accuracy", math.nan) for row in history]
    accuracy = Figure("lines", ACCURACY_CURVE, {
        "series": series,
        "x": epochs, "xlabel": "epoch", "ylabel": "accuracy"})
    return [loss, accuracy]


def _test_section(summary: dict, pipeline: "Pipeline", y: torch.Tensor, probs: torch.Tensor,
                  names: list[str]) -> dict[str, Figure]:
    """Fill the test numbers into `summary`; return the test figures by title."""
    num_classes = len(names)
    pred = probs.argmax(1)
    n, correct = len(y), int((pred == y).sum())
    test_accuracy = correct / n
    summary["test_accuracy"] = test_accuracy
    summary["test_ci95"] = list(wilson_interval(correct, n))

    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # (true, predicted)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    summary["per_class"] = _per_class(confusion, names)
    summary["anchors"] = _anchors(pipeline, y, test_accuracy)
    mistakes, mistakes_figure = _confident_mistakes(pipeline, y, probs, pred, names)
    summary["confident_mistakes"] = mistakes

    figures = {
        CONFUSION: Figure("matrix", CONFUSION, {"values": confusion.numpy(), "rows": names, "cols": names,
                                                "xlabel": "predicted", "ylabel": "true"}),
        ANCHORS: Figure("bars", ANCHORS, {
            "categories": [a["name"] for a in summary["anchors"]],
            "series": {"test accuracy": [a["accuracy"] for a in summary["anchors"]]},
            "ylabel": "test accuracy", "highlight": "this run"})}
    if mistakes_figure is not None:
        figures[MISTAKES] = mistakes_figure
    return figures


def _per_class(confusion: torch.Tensor, names: list[str]) -> list[dict]:
    rows = []
    for c, name in enumerate(names):
        n = int(confusion[c].sum())
        correct = int(confusion[c, c])
        off = confusion[c].clone()
        off[c] = -1
        confused = int(off.argmax())
        rows.append({"class": name, "n": n, "correct": correct,
                     "accuracy": correct / n if n else None,
                     "ci95": list(wilson_interval(correct, n)) if n else None,
                     "most_confused_with": names[confused] if n and off[confused] > 0 else None,
                     "times": int(off[confused]) if n and off[confused] > 0 else 0})
    return rows


def _anchors(pipeline: "Pipeline", y_test: torch.Tensor, test_accuracy: float) -> list[dict]:
    num_classes = pipeline.num_classes
    # The majority class is picked on train (never on test), then scored on test.
    train_labels = pipeline.data.train.labels.cpu().flatten()  # token sequences: every target, padding left out
    if pipeline.data.pad_id is not None:
        train_labels = train_labels[train_labels != pipeline.data.pad_id]
    train_counts = torch.bincount(train_labels, minlength=num_classes)
    majority = int(train_counts.argmax())
    anchors = [
        {"name": f"chance (1/{num_classes})", "accuracy": 1 / num_classes,
         "source": "guessing uniformly at random"},
        {"name": "majority class", "accuracy": int((y_test == majority).sum()) / len(y_test),
         "source": f"always predict the most frequent train class ({pipeline.data.class_names[majority]})"},
    ]
    anchors += [dict(a) for a in PUBLISHED.get(pipeline.data.source, [])]
    anchors.append({"name": "this run", "accuracy": test_accuracy, "source": f"pipeline {pipeline.name!r} on test"})
    return anchors


def _confident_mistakes(pipeline: "Pipeline", y: torch.Tensor, probs: torch.Tensor, pred: torch.Tensor,
                        names: list[str]) -> tuple[list[dict], Figure | None]:
    confidence = probs.gather(1, pred[:, None])[:, 0]            # (N,) probability of the predicted class
    wrong = torch.nonzero(pred != y).flatten()
    if len(wrong) == 0:
        return [], None
    worst = wrong[confidence[wrong].argsort(descending=True)[:N_MISTAKES]]
    rows = [{"index": int(i), "true": names[int(y[i])], "predicted": names[int(pred[i])],
             "p": float(confidence[i])} for i in worst]
    if pipeline.kind == "tokens":  # one row per token position: no picture, the rows are in the table
        return rows, None
    raw = pipeline.data.test.images[worst.to(pipeline.data.test.images.device)].cpu()  # (K, C, H, W) raw pixels
    if raw.dim() < 3:  # feature vectors: no picture; the rows (index, labels, p) are in the table
        return rows, None
    images = unit_pixels(raw, pipeline.data.value_range)  # [0, 1], whatever range the data declares
    captions = [f"true {r['true']} / pred {r['predicted']} p={r['p']:.2f}" for r in rows]
    return rows, Figure("images", MISTAKES, {"images": images.numpy(), "captions": captions, "cmap": "gray"})


def _shift_figure(evaluation: "Evaluation", num_classes: int) -> Figure | None:
    if not evaluation.shifts:
        return None
    rows = evaluation.shifts
    return Figure("lines", SHIFTS, {
        "series": {"moved right (+) / left (-)": [r["horizontal"] for r in rows],
                   "moved down (+) / up (-)": [r["vertical"] for r in rows]},
        "x": [r["shift_px"] for r in rows], "xlabel": "shift in pixels",
        "ylabel": f"test accuracy ({evaluation.shift_count} images)",
        "hline": 1.0 / num_classes, "hline_label": "chance"})
