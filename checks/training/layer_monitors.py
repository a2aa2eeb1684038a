"""The per-layer training monitors: gradient norms, update/weight ratios and dead units.

Each judges what `recipe/monitors.py` sampled every `every` steps, layer by layer, with medians
over windows of samples so that one odd batch does not decide a verdict. `checks/training/monitor_checks.py`
runs them with the loss and epoch monitors.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

from checks.engine.result import CheckResult, Figure, measured, not_applicable
from recipe.monitors import MonitorLog

STAGE = "training"     # the stage of every training monitor
WINDOW = 5             # samples per rolling median of the per-layer statistics
MAX_SERIES = 8         # layers drawn per figure: the most extreme ones
KARPATHY_RATIO = 1e-3  # "the update/weight ratio should be about 1e-3"


# ---------------------------------------------------------------- gradients

def exploding_gradients(log: MonitorLog, early: int = 3, warn_growth: float = 30.0,
                        fail_growth: float = 1e3) -> CheckResult:
    """Per layer, the largest rolling median of the gradient norm against its own early value (the
    median of its first `early` samples), divided by how much the loss fell meanwhile (see `_growth`)."""
    growth = _per_layer(log, log.grad_norms, early, _growth(log), max)
    if isinstance(growth, str):
        return not_applicable("exploding_gradients", STAGE, growth)
    layer, (value, step) = max(growth.items(), key=lambda kv: kv[1][0])
    where = f"{layer}'s gradient norm grew {value:.3g}x from its early value, for the loss it had (by step {step})"
    return measured(
        "exploding_gradients", STAGE, value, fail_growth, "<=", f"no layer's gradient exploded: {where}, the most.",
        f"the gradients exploded: {where}. Likely causes: gradients that are never zeroed (zero_grad() missing, "
        "so each step adds to the last), a learning rate or weight decay so high the weights grow every step, or "
        "a deep stack without normalisation; zero the gradients each step, lower the lr, clip the gradient norm.",
        warn_threshold=warn_growth,
        warn_message=f"a gradient norm grew far more than the loss explains: {where}. Are the gradients zeroed "
                     "every step? Is the lr too high?",
        figures=[_layer_figure(log, log.grad_norms, "exploding_gradients: gradient norm per layer", "gradient norm")],
        details={"layer": layer, "growth_by_layer": {k: v[0] for k, v in growth.items()}})


def vanishing_gradients(log: MonitorLog, early: int = 3, warn_shrink: float = 1e-2,
                        fail_shrink: float = 1e-3) -> CheckResult:
    """Per layer, the smallest rolling median of the gradient norm against its early value, divided
    by how much the loss fell meanwhile: only a gradient that vanishes while the loss does not is
    flagged (see `_growth`)."""
    shrink = _per_layer(log, log.grad_norms, early, _growth(log), min)
    if isinstance(shrink, str):
        return not_applicable("vanishing_gradients", STAGE, shrink)
    layer, (value, step) = min(shrink.items(), key=lambda kv: kv[1][0])
    where = (f"{layer}'s gradient norm fell to {value:.3g} of its early value, for the loss it had "
             f"(by step {step})")
    return measured(
        "vanishing_gradients", STAGE, value, fail_shrink, ">=", f"no layer's gradient vanished: {where}, the least.",
        f"the gradient vanished in a layer while the loss did not fall: {where}. Likely causes: its ReLUs died "
        "(see dead_units), saturated sigmoid/tanh units, or a layer cut off from the loss (a detach()).",
        warn_threshold=warn_shrink,
        warn_message=f"a gradient shrank much faster than the loss: {where}. Watch for dying units or saturation.",
        details={"layer": layer, "shrink_by_layer": {k: v[0] for k, v in shrink.items()}})


# ---------------------------------------------------------------- updates

def largest_update_ratio(log: MonitorLog, warn_ratio: float = 0.1, fail_ratio: float = 1.0) -> CheckResult:
    """Per layer, the largest rolling median of |update| / |weight| (step 0 left out: a layer
    initialised at or near zero moves by about all of itself on its first update).

    Why FAIL at 1 and not Karpathy's 0.1: on `sample` the pytorch/examples CNN (Adadelta, lr 1) moves
    its fc1 by 0.08-0.18 of its norm per step in its first epoch and trains well; a ratio that stays
    at 1 means the weights are replaced every step (weight decay or an lr that blows them up)."""
    ratios = _moving_samples(log)
    tops = {}
    for j, layer in enumerate(log.layers):
        series = [(s, row[j]) for s, row in ratios if row[j] is not None]
        windows = _rolling(series)
        if windows:
            tops[layer] = max(windows)
    if not tops:
        return not_applicable("largest_update_ratio", STAGE, _why_no_ratio(log))
    layer, (value, step) = max(tops.items(), key=lambda kv: kv[1][0])
    where = f"{layer} moved by {value:.3g} of its norm per step (rolling median, near step {step})"
    return measured(
        "largest_update_ratio", STAGE, value, fail_ratio, "<=",
        f"{where}, the largest; Karpathy's rule of thumb is about {KARPATHY_RATIO:g}.",
        f"the updates are as large as the weights: {where}. The run is diverging: lower the learning rate "
        "(or check a schedule that raises it, or a per-layer lr group set far too high).",
        warn_threshold=warn_ratio,
        warn_message=f"large updates: {where}, 100x Karpathy's ~{KARPATHY_RATIO:g}. The lr may be too high for "
                     "this layer; fine for a short while at the start of a run.",
        figures=[_layer_figure(log, [row for _, row in ratios], "largest_update_ratio: update / weight ratio per layer",
                               "|update| / |weight|", steps=[s for s, _ in ratios], hline=KARPATHY_RATIO)],
        details={"layer": layer, "by_layer": {k: v[0] for k, v in tops.items()}})


def smallest_update_ratio(log: MonitorLog, warn_ratio: float = 1e-5, fail_ratio: float = 1e-6) -> CheckResult:
    """Per layer, the median |update| / |weight| over the run (samples where no layer moved at all,
    the calls of an accumulating step that do not step, are left out)."""
    medians = _median_ratios(log)
    if not medians:
        return not_applicable("smallest_update_ratio", STAGE, _why_no_ratio(log))
    layer, value = min(medians.items(), key=lambda kv: kv[1])
    where = f"{layer} moved by a median {value:.3g} of its norm per step"
    names = list(medians)
    figure = Figure("bars", "smallest_update_ratio: median update / weight ratio per layer (log10)", {
        "categories": names, "series": {"log10 median ratio": [math.log10(max(medians[n], 1e-30)) for n in names]},
        "ylabel": "log10(|update| / |weight|)", "hline": math.log10(KARPATHY_RATIO)})
    return measured(
        "smallest_update_ratio", STAGE, value, fail_ratio, ">=",
        f"every layer learns: {where}, the least (Karpathy's rule of thumb: about {KARPATHY_RATIO:g}).",
        f"a layer is not learning: {where}. Likely causes: its param group's lr is far too small (or 0), it is "
        "missing from the optimizer, its gradient is zero (dead units, a detach()), or weight decay undoes each step.",
        warn_threshold=warn_ratio,
        warn_message=f"a layer barely learns: {where}, 100x below Karpathy's ~{KARPATHY_RATIO:g}. Check its "
                     "lr (a param group set too small?) and its gradient.",
        figures=[figure], details={"layer": layer, "median_by_layer": medians})


def update_ratio_spread(log: MonitorLog, warn_spread: float = 1 / 30, fail_spread: float = 1e-3) -> CheckResult:
    """The slowest layer's median |update| / |weight| over the fastest layer's: one layer learning
    far slower than the rest (a param group's lr set too small), whatever the absolute scale."""
    medians = _median_ratios(log)
    if len(medians) < 2:
        return not_applicable("update_ratio_spread", STAGE, "fewer than two layers with a measured update: "
                                                            "nothing to compare" if medians else _why_no_ratio(log))
    slow, fast = min(medians, key=medians.get), max(medians, key=medians.get)
    value = medians[slow] / medians[fast]
    where = (f"{slow} moves by a median {medians[slow]:.3g} of its norm per step, {fast} by {medians[fast]:.3g}: "
             f"a ratio of {value:.3g}")
    return measured(
        "update_ratio_spread", STAGE, value, fail_spread, ">=", f"the layers learn at comparable speeds: {where}.",
        f"one layer hardly learns next to the others: {where}. Likely causes: its param group's lr is far too "
        "small (a typo by a factor of 1000?), or it is missing from the optimizer.", warn_threshold=warn_spread,
        warn_message=f"one layer learns much slower than the others: {where}. Intended (a fine-tuned backbone with "
                     "a smaller lr)? If not, check that layer's param group lr.",
        details={"slowest": slow, "fastest": fast})


# ---------------------------------------------------------------- activations

def dead_units(log: MonitorLog, warn_share: float = 0.5, fail_share: float = 0.9) -> CheckResult:
    """Per ReLU-family call, the median share of units zero for a whole batch over the last half of
    the samples (the state the run ended in)."""
    if not log.relu_sites:
        return not_applicable("dead_units", STAGE, "the model has no ReLU-family activation (ReLU, ReLU6) to watch")
    half = log.dead_shares[len(log.dead_shares) // 2:]
    shares = {}
    for j, site in enumerate(log.relu_sites):
        values = [row[j] for row in half if row[j] is not None]
        if values:
            shares[site] = statistics.median(values)
    site, value = max(shares.items(), key=lambda kv: kv[1])
    where = f"at {site}, {value:.0%} of the units output 0 for a whole batch (median over the run's second half)"
    figure = _layer_figure(log, log.dead_shares, "dead_units: share of units zero for the whole batch",
                           "dead share", names=log.relu_sites)
    return measured(
        "dead_units", STAGE, value, fail_share, "<=", f"the units are alive: {where}, the most.",
        f"most units are dead: {where}; they pass no gradient, so they never come back. Likely causes: a large "
        "negative bias or a bad init, a learning-rate spike that pushed the pre-activations negative, or "
        "inputs that are not normalised. Try a lower lr, LeakyReLU/GELU, or normalisation before the ReLU.",
        warn_threshold=warn_share,
        warn_message=f"many units are dead: {where}. Watch the lr and the init; LeakyReLU or normalisation help.",
        figures=[figure], details={"site": site, "by_site": shares})


# ---------------------------------------------------------------- pieces

def _rolling(series: list[tuple[int, float]], window: int = WINDOW) -> list[tuple[float, int]]:
    """(median, last step) of each run of `window` consecutive samples."""
    return [(statistics.median(v for _, v in series[i - window:i]), series[i - 1][0])
            for i in range(window, len(series) + 1)]


def _per_layer(log: MonitorLog, table: list[list], early: int, compare: Callable, pick: Callable) -> dict | str:
    """{layer: (compare(window median, early value, early step, window step), step)} picked by `pick`
    (max/min), or why it cannot be measured."""
    if log.grads_cleared and log.grads_cleared == len(log.sampled_steps):
        return ("the train step sets the gradients to None after optimizer.step(), so they cannot be read "
                "after it; call zero_grad() at the start of the step to let the monitor see them")
    found = {}
    for j, layer in enumerate(log.layers):
        series = [(s, row[j]) for s, row in zip(log.sampled_steps, table)
                  if row[j] is not None and math.isfinite(row[j])]
        if len(series) < early + WINDOW:
            continue
        first = statistics.median(v for _, v in series[:early])
        if first <= 0:
            continue  # zero from the start: not a change over the run (smallest_update_ratio judges it)
        scored = [(compare(m, first, series[early - 1][0], s), s) for m, s in _rolling(series[early:])]
        found[layer] = pick(scored, key=lambda t: t[0])
    if not found and _went_non_finite(log):
        return "the loss became NaN/Inf, and the gradients with it: see non_finite_values"
    if not found:
        return (f"{len(log.sampled_steps)} sampled steps: too few with a gradient to compare a layer with its "
                f"early value (needs {early + WINDOW}); train longer or sample more often (every={log.every})")
    return found


def _growth(log: MonitorLog) -> Callable[[float, float, int, int], float]:
    """(gradient norm / early gradient norm) / (loss / early loss), the loss ratio capped at 1.

    A cross-entropy gradient shrinks as the loss falls (it is (softmax - onehot) times the
    inputs), so a healthy run stays near 1: the loss explains the gradient. A loss that rises
    (divergence) is not divided out, so a diverging run's gradients still count as growing.
    """
    def loss_near(step: int) -> float:  # the median loss over the span of WINDOW samples up to `step`
        span = WINDOW * log.every
        near = [v for s, v in zip(log.steps, log.losses) if step - span < s <= step and math.isfinite(v)]
        return statistics.median(near) if near else math.nan

    def growth(late: float, first: float, first_step: int, step: int) -> float:
        before, now = loss_near(first_step), loss_near(step)
        fell = now / before if before > 0 and math.isfinite(now) else 1.0  # NaN compares False: 1.0 too
        return (late / first) / max(min(1.0, fell), 1e-12)
    return growth


def _moving_samples(log: MonitorLog) -> list[tuple[int, list]]:
    """Samples where some layer moved (an accumulating step's calls that do not step move nothing),
    leaving out step 0: the first update from the init moves a layer started near zero by about all of it."""
    return [(s, row) for s, row in zip(log.sampled_steps, log.update_ratios) if s > 0 and any(r for r in row)]


def _went_non_finite(log: MonitorLog) -> bool:
    return not all(math.isfinite(v) for v in log.losses)


def _median_ratios(log: MonitorLog) -> dict[str, float]:
    """{layer: median |update| / |weight| over the samples where some layer moved}."""
    ratios = _moving_samples(log)
    medians = {}
    for j, layer in enumerate(log.layers):
        series = [row[j] for _, row in ratios if row[j] is not None]
        if series:
            medians[layer] = statistics.median(series)
    return medians


def _why_no_ratio(log: MonitorLog) -> str:
    if not log.layers:
        return "the model has no trainable weight matrix or kernel (ndim >= 2) to watch"
    if _went_non_finite(log):
        return "the loss became NaN/Inf, and the weights with it: see non_finite_values"
    return (f"no sampled step after the first moved a weight ({len(log.sampled_steps)} sampled, every "
            f"{log.every} steps): train longer or sample more often")


def _layer_figure(log: MonitorLog, table: list[list], title: str, ylabel: str, steps: list[int] | None = None,
                  hline: float | None = None, names: list[str] | None = None) -> Figure:
    """One line per layer (at most MAX_SERIES: those reaching the highest and lowest values)."""
    names = names if names is not None else log.layers
    steps = steps if steps is not None else log.sampled_steps
    columns = {n: [row[j] if j < len(row) and row[j] is not None else math.nan for row in table]
               for j, n in enumerate(names)}
    if len(columns) > MAX_SERIES:
        peak = {n: max((v for v in vs if math.isfinite(v)), default=-math.inf) for n, vs in columns.items()}
        order = sorted(columns, key=peak.get)
        kept = order[:MAX_SERIES // 2] + order[-(MAX_SERIES - MAX_SERIES // 2):]
        columns = {n: columns[n] for n in names if n in kept}
        title += f" ({MAX_SERIES} of {len(names)}: the lowest and highest)"
    positive = all(v > 0 for vs in columns.values() for v in vs if math.isfinite(v))
    data = {"series": columns, "x": steps, "xlabel": "step", "ylabel": ylabel, "logy": positive}
    if hline is not None:
        data.update(hline=hline, hline_label=f"{hline:g} (Karpathy)")
    return Figure("lines", title, data)
