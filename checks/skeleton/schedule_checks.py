"""Stage `skeleton`, the lr schedule: does the lr the configured run will train with have the shape a
schedule is meant to have?

A scheduler's horizon is counted in whatever `fit` steps it by: `CosineAnnealingLR(T_max=epochs)` or
`StepLR(step_size=7)` stepped after every batch anneals in a handful of batches, then (the cosine)
climbs back up every T_max steps, or (StepLR) divides the lr by 10 every 7 batches until nothing is
left. A LambdaLR whose lambda returns the lr instead of a factor multiplies the lr by itself. A
scheduler its factory already stepped skips the first value of its warm-up (PyTorch warns "Detected
call of lr_scheduler.step() before optimizer.step()"). None of these crash, and a run still trains,
so the training checks see nothing: the planned curve of the whole run (`planned_lr_curve`, the one
fit_dry_run plots) shows all of them.
"""
from __future__ import annotations

import re

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict, measured, not_applicable
from checks.measure.sampling import PlannedLr, planned_lr_curve
from recipe.pipeline import Pipeline

STAGE = "skeleton"
CYCLIC = re.compile(r"cycl|restart", re.I)  # CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts rise by design
HORIZONS = ("T_max", "step_size", "total_steps", "total_iters", "milestones")  # what a schedule counts its length in


def _schedulers(scheduler) -> list:
    """The scheduler and the ones it chains (SequentialLR, ChainedScheduler)."""
    return [scheduler, *getattr(scheduler, "_schedulers", [])]


def _function_name(f) -> str:
    return getattr(f, "__name__", None) or getattr(getattr(f, "func", None), "__name__", None) or type(f).__name__


def _described(scheduler, interval: str) -> str:
    """'CosineAnnealingLR(T_max=10) stepped per batch', from the objects themselves."""
    parts = []
    for s in _schedulers(scheduler):
        settings = [f"{k}={max(v) if k == 'milestones' else v}" for k in HORIZONS
                    if (v := getattr(s, k, None)) is not None and v != []]
        settings += [f"lr_lambda={_function_name(f)}" for f in (getattr(s, "lr_lambdas", None) or [])[:1]]
        parts.append(f"{type(s).__name__}({', '.join(settings)})")
    each = "batch" if interval == "step" else "epoch"
    return f"{parts[0]}{' of ' + ', '.join(parts[1:]) if len(parts) > 1 else ''} stepped per {each}"


def _horizon(scheduler) -> tuple[str, float] | None:
    """The first length setting found among the scheduler and its children: ('T_max', 10)."""
    for s in _schedulers(scheduler):
        for key in HORIZONS:
            value = getattr(s, key, None)
            if value is not None and value != []:
                return key, float(max(value) if key == "milestones" else value)
    return None


def _likely_cause(pipeline: Pipeline, plan: PlannedLr) -> str:
    epochs, per_epoch = pipeline.config.epochs, pipeline.steps_per_epoch
    horizon = _horizon(plan.scheduler)
    setting = f"its {horizon[0]}={horizon[1]:g}" if horizon else "its length settings"
    if pipeline.scheduler_interval == "step":
        return (f"stepped per batch while {setting} counts epochs? The run has {epochs} epochs of {per_epoch} "
                "batches: step it per epoch (scheduler_interval='epoch') or give its length in batches")
    return (f"{setting} is too short for the run's {epochs} epochs, or its decay (gamma) too strong; check that it "
            "counts epochs")


def collapse_step(lrs: list[float], ratio: float) -> int | None:
    """The first step from which the lr stays below `ratio` times the highest lr before it for the rest of
    the run (a cyclic schedule's dip before its restart does not count, nor does a warm-up from 0)."""
    later = [0.0] * (len(lrs) + 1)  # later[i]: the highest lr from step i on
    for step in range(len(lrs) - 1, -1, -1):
        later[step] = max(lrs[step], later[step + 1])
    peak = 0.0
    for step, lr in enumerate(lrs):
        peak = max(peak, lr)
        if later[step] < ratio * peak:
            return step
    return None


def rebound(lrs: list[float], fall: float) -> tuple[int, float, float] | None:
    """(step, trough / peak, rebound / peak) when the lr, once it fell to `fall` times its peak or less,
    climbs back to at least `fall` times that peak and twice its trough; None when it never does."""
    peak, trough = 0.0, None
    for step, lr in enumerate(lrs):
        if trough is None:
            peak = max(peak, lr)
            if peak > 0 and lr <= fall * peak:
                trough = lr
        else:
            trough = min(trough, lr)
            if lr >= fall * peak and lr > 2 * trough:
                highest = max(lrs[step:])
                return step, trough / peak, highest / peak
    return None


@applies_to("image", "features", "tokens")
def lr_schedule(pipeline: Pipeline, collapse_ratio: float = 1e-3, collapse_before: float = 0.5,
                fall: float = 0.5, horizon_factor: float = 5.0) -> CheckResult:
    """Judge the planned lr of the whole configured run. FAILs when:
    - the scheduler's factory already stepped it (the first value of the schedule is skipped);
    - a LambdaLR's factor peaks at exactly the optimizer's lr: the lambda returns an lr, not a factor;
    - the lr falls below `collapse_ratio` x its peak, for good, before `collapse_before` of the run
      (the rest trains with no lr);
    - a schedule meant to anneal once (anything but CyclicLR, OneCycleLR, warm restarts) climbs back up
      after falling to `fall` x its peak.
    WARNs when a T_max/total_steps is `horizon_factor` x longer than the scheduler steps the run makes
    (stepped per epoch while counted in batches: the lr hardly moves), or when ReduceLROnPlateau is
    stepped per batch (fit has a val loss only after an epoch, so it never steps).
    """
    plan = planned_lr_curve(pipeline)
    scheduler, interval, total = plan.scheduler, pipeline.scheduler_interval, plan.total
    if scheduler is None:
        return CheckResult("lr_schedule", STAGE, Verdict.PASS, 1.0, collapse_before, ">=",
                           f"no scheduler: the lr stays {plan.base_lr:g} for all {total} steps.")
    named = _described(scheduler, interval)
    details = {"scheduler": named, "planned_steps": total, "base_lr": plan.base_lr}
    if plan.stepped_before_training:
        n = plan.stepped_before_training
        return CheckResult("lr_schedule", STAGE, Verdict.FAIL, float(n), 0.0, "<=",
                           f"{named}: its factory already called scheduler.step() {n} time{'s' * (n > 1)} before "
                           "training, so the schedule starts at its value for step/epoch "
                           f"{n} and skips its first (a warm-up's lowest lr): the scheduler is stepped before "
                           "optimizer.step(), at the start of an epoch instead of its end. Do not step it in the "
                           "factory; fit steps it after each batch or epoch.", details=details)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if interval == "step":
            return measured("lr_schedule", STAGE, 0.0, 0.0, ">=", "", "", warn_threshold=1.0, details=details,
                            warn_message="ReduceLROnPlateau is stepped per batch, but fit has a val loss only after "
                            "an epoch, so it never steps and the lr stays constant: set scheduler_interval='epoch'.")
        return not_applicable("lr_schedule", STAGE, "ReduceLROnPlateau lowers the lr when the val loss stops "
                              "improving: its curve can't be planned before training.", details=details)
    lrs = plan.lrs
    peak = max(lrs)
    details.update({"peak_lr": peak, "final_lr": lrs[-1]})
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and plan.base_lr > 0 and abs(plan.base_lr - 1) > 1e-6:
        gap = abs(peak / plan.base_lr / plan.base_lr - 1)  # the peak factor against the lr itself
        if gap <= 1e-6:
            return CheckResult("lr_schedule", STAGE, Verdict.FAIL, gap, 1e-6, ">",
                               f"{named}: its factor peaks at {peak / plan.base_lr:g}, exactly the optimizer's lr "
                               f"{plan.base_lr:g}, so the lr peaks at lr x lr = {peak:.3g}: the lambda returns an lr "
                               "where LambdaLR expects a factor on the optimizer's lr. Return only the factor "
                               "(e.g. (1 + gamma * step) ** -decay).", details=details)
    collapsed = collapse_step(lrs, collapse_ratio)
    reached = collapsed / total if collapsed is not None else 1.0
    details["collapse_step"] = collapsed
    cyclic = any(CYCLIC.search(type(s).__name__) for s in _schedulers(scheduler))
    climbed = None if cyclic else rebound(lrs, fall)
    if collapsed is not None and reached < collapse_before:
        where = f"step {collapsed} of {total} (epoch {collapsed // pipeline.steps_per_epoch + 1})"
        return CheckResult("lr_schedule", STAGE, Verdict.FAIL, reached, collapse_before, ">=",
                           f"{named}: the lr falls below {collapse_ratio:g} x its peak {peak:.3g} for good by {where}, "
                           f"{reached:.0%} into the run: the rest trains with almost no lr. Likely cause: "
                           f"{_likely_cause(pipeline, plan)}.", details=details)
    if climbed is not None:
        step, low, high = climbed
        details.update({"rebound_step": step, "trough_over_peak": low, "rebound_over_peak": high})
        return CheckResult("lr_schedule", STAGE, Verdict.FAIL, high, fall, "<",
                           f"{named}: the lr falls to {low:.2g} x its peak {peak:.3g}, then climbs back up to "
                           f"{high:.2g} x it by step {step} of {total}: an annealing schedule restarts instead of "
                           f"decaying once. Likely cause: {_likely_cause(pipeline, plan)}.", details=details)
    calls = pipeline.config.epochs if interval == "epoch" else total
    horizon = _horizon(scheduler)
    long = horizon if horizon and horizon[0] in ("T_max", "total_steps") else None
    ratio = long[1] / max(calls, 1) if long else 0.0
    details["horizon_over_scheduler_steps"] = ratio
    if ratio >= horizon_factor:  # the shown (collapse) comparison holds: a WARN never blocks
        return CheckResult("lr_schedule", STAGE, Verdict.WARN, reached, collapse_before, ">=",
                           f"{named}: its {long[0]}={long[1]:g} is {ratio:.0f}x the {calls} scheduler steps the run "
                           f"makes, so the lr only covers the start of its shape ({lrs[0]:.3g} -> {lrs[-1]:.3g}, "
                           f"peak {peak:.3g}): " + (f"stepped per epoch while its {long[0]} counts batches? Step "
                           f"it per batch (scheduler_interval='step') or give {long[0]} in epochs." if interval ==
                           "epoch" else f"set {long[0]} to the run's {total} steps."), details=details)
    shown = "" if len(lrs) >= total else f" (its first {len(lrs):,} of {total:,} steps, replayed)"
    return CheckResult("lr_schedule", STAGE, Verdict.PASS, reached, collapse_before, ">=",
                       f"{named}: the lr starts at {lrs[0]:.3g}, peaks at {peak:.3g} and ends at {lrs[-1]:.3g}"
                       f"{shown}; it does not fall below {collapse_ratio:g} x its peak before {collapse_before:.0%} "
                       f"of the run{'' if cyclic else ', nor climb back after falling'}.", details=details)
