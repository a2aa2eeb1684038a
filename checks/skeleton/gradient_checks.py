"""Stage `skeleton`, gradients: does the pipeline's own step train every parameter it should, and
does it reset the gradients between updates?

The step is called several times on one batch, and before each call a copy of the model gives the
*fresh* gradient of the pipeline's loss at the current weights (the same dropout draws, the same
batch statistics). Comparing what the step leaves in `p.grad` with those fresh gradients tells a
step that never calls `zero_grad` (p.grad is the running sum of every fresh gradient) from valid
gradient accumulation (a running sum that is reset every k calls), and a step that updates before
`backward` (each update lags one call) from one that updates every k calls.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict
from checks.measure.sampling import PlannedSchedule, first_batches, fresh_model
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

STAGE = "skeleton"
Grads = dict[str, "torch.Tensor | None"]


def _fresh_gradients(pipeline: Pipeline, model: nn.Module, x, y, seed: int) -> Grads:
    """The gradient one clean backward of the pipeline's loss gives at the model's current weights."""
    probe = copy.deepcopy(model)  # BatchNorm buffers and p.grad of the real model stay untouched
    for p in probe.parameters():
        p.grad = None
    torch.manual_seed(seed)  # the step that follows is re-seeded the same: the same dropout draws
    loss = pipeline.loss_fn(forward_logits(probe, x), y)
    if loss.requires_grad:  # else nothing in the graph trains: every gradient stays None
        loss.backward()
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in probe.named_parameters()}


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The distance between two lists of tensors, each list read as one vector."""
    return _norm([u.double() - v.double() for u, v in zip(a, b)])


def _close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float) -> bool:
    """Whether two lists of tensors agree to `rtol` relative to b's norm (as one vector)."""
    scale = _norm(b)
    return scale > 0 and _distance(a, b) <= rtol * scale


def _carries_previous(now: list[torch.Tensor], before: list[torch.Tensor], fresh: list[torch.Tensor],
                      rtol: float) -> bool:
    """Whether p.grad after a call is a * (p.grad before it) + b * (the call's fresh gradient) with a > 0, and
    not b * fresh alone: the old gradient was carried into the new one (no zero_grad), whatever the step
    did to the sum in place afterwards (clip_grad_norm_ rescales it, which hides the plain running sum).
    The two gradients' directions differ a little from call to call, and the part of the old one that
    the fresh one does not share is the trace. Not seen: clip_grad_value_, whose clamp of each element
    leaves no linear trace."""
    L, P, F = (torch.cat([t.double().flatten() for t in ts]) for ts in (now, before, fresh))
    size = float(L.norm())
    if size == 0 or float(P.norm()) == 0 or float(F.norm()) == 0:
        return False
    gram = torch.stack([torch.stack([P @ P, P @ F]), torch.stack([P @ F, F @ F])])
    if float(torch.linalg.det(gram)) <= 1e-12 * float(P @ P) * float(F @ F):
        return False  # the old and fresh gradients are parallel: nothing tells them apart
    a, b = torch.linalg.solve(gram, torch.stack([P @ L, F @ L])).tolist()
    both = float((L - a * P - b * F).norm()) / size
    fresh_only = float((L - float(F @ L) / float(F @ F) * F).norm()) / size
    # float32 sums leave both fits ~1e-7 off; a carried gradient leaves the fresh-only fit 1e-3 off or more
    return a > 0 and both <= rtol and fresh_only >= max(100 * both, 1e-5)


@torch.no_grad()
def _used_by_forward(model: nn.Module, x: torch.Tensor, names: list[str]) -> set[str]:
    """The parameters among `names` whose value the output depends on: noise added to each in turn
    (on an eval-mode copy) changes the output."""
    if not names:
        return set()
    probe = copy.deepcopy(model).eval()
    base = forward_logits(probe, x)
    params = dict(probe.named_parameters())
    used = set()
    for name in names:
        p = params[name]
        saved = p.detach().clone()
        p.add_(torch.randn_like(p) * (0.1 + p.abs().mean()))
        if not torch.allclose(forward_logits(probe, x), base, rtol=1e-5, atol=1e-7):
            used.add(name)
        p.copy_(saved)
    return used


def _learns_from_input(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the trainable parameters can change how the output depends on the input: the
    input-gradient of a fixed random projection of the output moves when they are perturbed.

    Why: freezing is legitimate (a pretrained backbone, a fixed random projection) as long as what
    still trains can shape the input-to-output map; a frozen layer that leaves only biases able to
    move (the output no longer depends on the input in any trainable way) breaks learning.
    """
    if not x.is_floating_point():
        return True
    probe = copy.deepcopy(model).eval()
    trainable = [p for p in probe.parameters() if p.requires_grad]
    direction = torch.randn_like(forward_logits(probe, x).float())

    def input_gradient() -> torch.Tensor:
        xi = x.detach().clone().requires_grad_(True)
        (forward_logits(probe, xi).float() * direction).sum().backward(inputs=[xi])
        return xi.grad

    before = input_gradient()
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn_like(p) * (0.1 + p.abs().mean()))
    return not torch.allclose(input_gradient(), before, rtol=1e-4, atol=1e-9)


@applies_to("image", "features", "tokens")
def gradient_flow(pipeline: Pipeline, calls: int = 8, rtol: float = 1e-3) -> CheckResult:
    """`calls` steps of the pipeline's own step on one batch, its schedule followed as in `fit`.

    FAILs when a trainable parameter the output uses gets no gradient (graph cut) or a zero gradient
    at every call (a clamped loss), has NaN/Inf gradients, never changes though it has a gradient,
    when updates lag one call behind their gradient (step before backward), when p.grad is the
    running sum of every fresh gradient over all calls (no zero_grad), or when frozen parameters
    leave nothing that can learn from the input. WARNs on other frozen or unused parameters.
    """
    batch = first_batches(pipeline, "train", 1)[0]
    x, y = batch.x, batch.y
    model = fresh_model(pipeline)
    optimizer, scheduler = training_objects(pipeline, model)
    schedule = PlannedSchedule(pipeline, optimizer, scheduler)
    named = dict(model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    frozen = [n for n, p in named.items() if not p.requires_grad]
    if not trainable:  # the step's backward would have nothing to differentiate
        return CheckResult("gradient_flow", STAGE, Verdict.FAIL, float(len(frozen)), 0.0, "==",
                           f"every parameter is frozen (requires_grad=False: {', '.join(frozen) or 'none at all'}): "
                           "nothing trains, so the model cannot learn from its inputs.",
                           details={"parameters": len(named), "frozen": frozen})
    start = {n: named[n].detach().clone() for n in trainable}
    ever_grad, ever_nonzero, ever_changed, not_finite = set(), set(), set(), set()
    running: Grads = {}
    scale = None          # p.grad / fresh gradient at the first call that left one (1/k for loss / k)
    never_reset, lagged, previous = True, False, None
    carried_every_call, left_before = True, None  # the trace of no zero_grad that survives in-place clipping
    lrs, done = [], 0
    for k in range(1, calls + 1):
        before = {n: named[n].detach().clone() for n in trainable}
        seed = pipeline.config.seed * 1009 + k
        fresh = _fresh_gradients(pipeline, model, x, y, seed)
        have = [n for n in trainable if fresh.get(n) is not None]
        nonzero = [n for n in have if fresh[n].abs().max() > 0]
        if previous is not None and scale is not None:
            # The last call updated the weights and left in p.grad the gradient at the weights it ended
            # with (this call's fresh gradient), not at those it started from: backward ran after step.
            names, left, started = previous
            now = [scale * fresh[n] if fresh.get(n) is not None else torch.zeros_like(g) for n, g in zip(names, left)]
            lagged = lagged or (_distance(left, now) <= rtol * _norm(now)
                                and _distance(left, now) < 0.01 * _distance(left, started))
        lrs.append(max(group["lr"] for group in optimizer.param_groups))
        torch.manual_seed(seed)
        loss = float(take_step(pipeline, model, optimizer, x, y))
        schedule.after_step(k)
        done = k
        ever_grad.update(have)
        ever_nonzero.update(nonzero)
        changed = {n for n in trainable if not torch.equal(named[n].detach(), before[n])}
        ever_changed |= changed
        left = {n: named[n].grad for n in have}
        if k == 1:
            not_finite = {n for n in have if not torch.isfinite(fresh[n]).all()
                          or (left[n] is not None and not torch.isfinite(left[n]).all())}
        for n in have:
            running[n] = fresh[n] if n not in running else running[n] + fresh[n]
        complete = bool(nonzero) and all(left[n] is not None for n in nonzero)
        if complete and scale is None:
            dot = sum(float((left[n].double() * fresh[n].double()).sum()) for n in nonzero)
            scale = dot / max(sum(float(fresh[n].double().pow(2).sum()) for n in nonzero), 1e-300)
        summed = complete and scale is not None and _close([left[n] for n in nonzero],
                                                           [scale * running[n] for n in nonzero], rtol)
        never_reset = never_reset and summed
        if k >= 2:
            carried_every_call = carried_every_call and complete and left_before is not None and _carries_previous(
                [left[n] for n in nonzero], [left_before.get(n, torch.zeros_like(left[n])) for n in nonzero],
                [fresh[n] for n in nonzero], rtol)
        left_before = {n: left[n].detach().clone() for n in nonzero} if complete else None
        previous = None
        if complete and scale is not None and changed & set(nonzero):
            previous = (nonzero, [left[n].detach().clone() for n in nonzero], [scale * fresh[n] for n in nonzero])
        if not math.isfinite(loss):
            break
    never_reset = (never_reset or carried_every_call) and done >= 2
    used = _used_by_forward(model, x, frozen + [n for n in trainable if n not in ever_grad])
    no_grad = [n for n in trainable if n not in ever_grad and n in used]
    unused = [n for n in trainable if n not in ever_grad and n not in used]
    zero_grad = [n for n in trainable if n in ever_grad and n not in ever_nonzero]
    unchanged = [n for n in ever_nonzero if n not in ever_changed and torch.equal(named[n].detach(), start[n])]
    frozen_used = [n for n in frozen if n in used]
    breaks = bool(frozen_used) and (not trainable or not _learns_from_input(model, x))
    problems, warnings = [], []
    if frozen_used and breaks:
        problems.append(f"frozen parameters (requires_grad=False) that forward uses: {', '.join(frozen_used)}; with "
                        "them frozen, nothing that still trains can change how the output depends on the input, so "
                        "the model cannot learn from its inputs (a layer left frozen, e.g. from a fine-tuning script)")
    elif frozen_used:
        warnings.append(f"frozen parameters (requires_grad=False) that forward uses: {', '.join(frozen_used)}; "
                        "fine if intended (a pretrained or fixed part, as in transfer learning)")
    if no_grad:
        problems.append(f"no gradient reaches {', '.join(no_grad)}, which forward uses: the graph is cut (detach, "
                        ".data, torch.no_grad, or a non-differentiable op)")
    if zero_grad:
        problems.append(f"the gradient of {', '.join(zero_grad)} is exactly zero at every one of {done} steps: the "
                        "loss is flat there - clamped or clipped (clip the gradients, not the loss), saturated, or "
                        "the output ignores these weights")
    if not_finite:
        problems.append(f"NaN/Inf gradients in {', '.join(sorted(not_finite))} at the first step")
    if unchanged and not (no_grad or zero_grad):
        lr_said = "its learning rate is 0, " if max(lrs) == 0 else ""
        problems.append(f"{', '.join(unchanged)} never changed in {done} steps although they get gradients: the "
                        f"optimizer does not hold these parameters, {lr_said}or the step never calls "
                        f"optimizer.step() (or accumulates gradients over more than {calls} batches)")
    if lagged:
        problems.append("after a step p.grad holds the gradient at the weights the step ended with, not those it "
                        "started from: optimizer.step() runs before loss.backward(), so each update applies the "
                        "previous step's gradient (and the first step none)")
    if never_reset:
        problems.append(f"gradients accumulate across all {done} steps: p.grad keeps every earlier step's "
                        "gradient (a running sum, rescaled in place if the step clips), never reset. zero_grad is never called (if you accumulate gradients on purpose, "
                        f"reset them after each update; accumulation over more than {calls} batches is not told "
                        "apart)")
    if unused:
        warnings.append(f"{', '.join(unused)} are trainable but forward never uses them (a leftover layer?)")
    notes = ""
    frozen_unused = [n for n in frozen if n not in used]
    if frozen_unused:
        notes = (f" {len(frozen_unused)} frozen parameter tensors are not used by forward (an EMA or other shadow "
                 "copy): not judged.")
    details = {"parameters": len(named), "calls": done, "frozen": frozen, "frozen_used": frozen_used,
               "no_gradient": no_grad, "zero_gradient": zero_grad, "unchanged": unchanged, "unused": unused,
               "lagging_update": lagged, "gradients_never_reset": never_reset, "lr_per_call": lrs}
    bad = len(set(no_grad + zero_grad + unchanged + sorted(not_finite) + (frozen_used if breaks else []))) \
        + int(lagged) + int(never_reset)
    if problems:
        message = "; ".join(problems + warnings) + "."
        verdict = Verdict.FAIL
    elif warnings:
        message = "; ".join(warnings) + ". Everything that trains gets gradients and changes." + notes
        verdict = Verdict.WARN
    else:
        message = (f"all {len(trainable)} trainable parameter tensors get finite, non-zero gradients and change over "
                   f"{done} steps, and gradients are reset between updates.{notes}")
        verdict = Verdict.PASS
    return CheckResult("gradient_flow", STAGE, verdict, float(bad), 0.0, "==", message, details=details)
