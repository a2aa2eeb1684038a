"""What the train step does around the update: the mode it trains in, and whether its clipping clips.

- `gradient_clipping` (stage `skeleton`): a clip_grad_norm_ after optimizer.step() clips gradients
  the update already used; one before loss.backward() (or right after zero_grad()) clips nothing.
  Neither crashes, and without exploding gradients the run even trains; only the gradients that
  reach optimizer.step() tell. Runs the real step a few times and follows every clip call to the
  optimizer step after it.
- `train_mode_kept` (stage `baselines`): a step that calls model.eval() to log an accuracy or
  evaluate a val batch, and never model.train() again, trains the rest of the epoch without dropout
  and with frozen BatchNorm statistics (`fit` calls model.train() once per epoch). Read from the
  shared reference run, which notes the mode of every dropout/BatchNorm layer at every training
  forward (`ModeWatch`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.utils as nn_utils
import torch.nn.utils.clip_grad as clip_grad_module
from torch import nn

from checks.engine.kinds import applies_to
from checks.measure.reference_run import reference_run
from checks.engine.result import CheckResult, Verdict, not_applicable
from checks.measure.sampling import first_batches, fresh_model
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

CLIP_CALLS = 8  # step calls watched: two optimizer steps even with accumulation over 4 batches
SHOWN = 6       # module names a message lists


# ---------------------------------------------------------------- gradient clipping

def _grad_norm(params: list[torch.Tensor]) -> float:
    """The L2 norm of the parameters' gradients as one vector (0 when none has one)."""
    grads = [p.grad for p in params if isinstance(p, torch.Tensor) and p.grad is not None]
    return math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads)) if grads else 0.0


@dataclass
class Clip:
    call: int                 # which call of the step
    function: str             # clip_grad_norm_ or clip_grad_value_
    limit: float              # max_norm or clip_value
    params: list
    seen: float               # gradient norm it found
    left: float               # gradient norm it left
    before_step: bool = False  # an optimizer.step() of the same call came after it...
    used: bool = False         # ...and stepped with the gradients it left


@dataclass
class ClipWatch:
    """Wraps torch's clipping functions and the optimizer's step while the step runs (`watching`)."""
    call: int = 0
    calls: int = 0   # step calls made (the watch stops early when a step plainly does not clip)
    clips: list[Clip] = field(default_factory=list)
    in_step: bool = False  # inside optimizer.step(): a closure (LBFGS) clipping there feeds this very update
    steps: list[tuple[int, float]] = field(default_factory=list)  # (call, gradient norm at optimizer.step())

    def clipping(self, function: str, original):
        def clip(*args, **kwargs):
            args = list(args) or [kwargs.pop("parameters")]
            params = [args[0]] if isinstance(args[0], torch.Tensor) else list(args[0])
            args[0] = params  # a generator is read once, here: the original gets the list
            limit = args[1] if len(args) > 1 else kwargs.get("max_norm", kwargs.get("clip_value", math.nan))
            seen = _grad_norm(params)
            result = original(*args, **kwargs)
            inside = self.in_step and seen != 0
            self.clips.append(Clip(self.call, function, float(limit), params, seen, _grad_norm(params), inside, inside))
            return result
        return clip

    def before_optimizer_step(self, optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.steps.append((self.call, _grad_norm(params)))
        for clip in self.clips:
            if clip.call == self.call and not clip.before_step:
                clip.before_step = True
                now = _grad_norm(clip.params)
                clip.used = clip.seen != 0 and math.isclose(now, clip.left, rel_tol=1e-6, abs_tol=1e-12)
        self.in_step = True

    def after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self.in_step = False


# torch's clip_grad_norm_ (and the deprecated clip_grad_norm) scale through the module-global
# _clip_grads_with_norm_, so wrapping it also sees `from torch.nn.utils import clip_grad_norm_`.
CLIP_FUNCTIONS = ((clip_grad_module, "_clip_grads_with_norm_", "clip_grad_norm_"),
                  (nn_utils, "clip_grads_with_norm_", "clip_grad_norm_"),
                  (clip_grad_module, "clip_grad_value_", "clip_grad_value_"),
                  (nn_utils, "clip_grad_value_", "clip_grad_value_"))


def _watched_calls(pipeline: Pipeline, calls: int) -> ClipWatch:
    model = fresh_model(pipeline)
    optimizer, _ = training_objects(pipeline, model)
    batches = first_batches(pipeline, "train", calls)
    watch = ClipWatch()
    originals = [(module, name, getattr(module, name), function) for module, name, function in CLIP_FUNCTIONS
                 if hasattr(module, name)]
    wrappers = {}  # one per original: the public alias and the module global are the same function
    for _, _, original, function in originals:
        wrappers.setdefault(id(original), watch.clipping(function, original))
    handles = [optimizer.register_step_pre_hook(watch.before_optimizer_step),
               optimizer.register_step_post_hook(watch.after_optimizer_step)]
    try:
        for module, name, original, _ in originals:
            setattr(module, name, wrappers[id(original)])
        for call, batch in enumerate(batches):
            watch.call = call
            take_step(pipeline, model, optimizer, batch.x, batch.y)
            watch.calls = call + 1
            if len(watch.steps) >= 2 and not watch.clips:
                break  # two optimizer steps and no clip: the step does not clip (a costly model's calls are dear)
    finally:
        for handle in handles:
            handle.remove()
        for module, name, original, _ in originals:
            setattr(module, name, original)
    return watch


@applies_to("image", "features", "tokens")
def gradient_clipping(pipeline: Pipeline, calls: int = CLIP_CALLS) -> CheckResult:
    """The gradients each optimizer.step() uses must be the ones the step clipped.

    Runs the pipeline's step `calls` times on real train batches, with torch's clip_grad_norm_ and
    clip_grad_value_ watched. A step's clipping counts when, within the same call, a clip found a
    gradient, and the next optimizer.step() used exactly the gradients it left. FAILs when no
    optimizer step used clipped gradients: every clip ran after optimizer.step(), or found no
    gradient (before loss.backward(), after zero_grad()), or the gradients were replaced between the
    clip and the step. N/A when the step does not clip (or clips only through its own code).
    """
    watch = _watched_calls(pipeline, calls)
    if not watch.clips:
        return not_applicable("gradient_clipping", "skeleton", f"the step called neither clip_grad_norm_ nor "
                              f"clip_grad_value_ (torch.nn.utils) in {watch.calls} calls with "
                              f"{len(watch.steps)} optimizer steps: it does not clip.")
    stepping_calls = sorted({call for call, _ in watch.steps})
    if not stepping_calls:
        return not_applicable("gradient_clipping", "skeleton", f"the step clips, but called no optimizer.step() "
                              f"in {calls} calls, so which gradients an update uses cannot be seen.")
    used = [call for call in stepping_calls if any(c.used for c in watch.clips if c.call == call)]
    share = len(used) / len(stepping_calls)
    first = next((c for c in watch.clips if c.used), watch.clips[0])
    function = f"{first.function}(..., {first.limit:g})"
    at_step = max(norm for _, norm in watch.steps)
    details = {"clip_calls": len(watch.clips), "optimizer_steps": len(watch.steps), "calls": calls,
               "steps_with_clipped_gradients": len(used),
               "clips": [{"call": c.call, "function": c.function, "limit": c.limit, "norm_seen": c.seen,
                          "norm_left": c.left, "before_optimizer_step": c.before_step, "used": c.used}
                         for c in watch.clips],
               "gradient_norm_at_optimizer_steps": [norm for _, norm in watch.steps]}
    if used:
        return CheckResult("gradient_clipping", "skeleton", Verdict.PASS, share, 0.0, ">",
                           f"{len(used)} of the {len(stepping_calls)} optimizer steps in {calls} calls used the "
                           f"gradients {function} left (norm {first.seen:.3g} before clipping, {first.left:.3g} "
                           f"after, in call {first.call + 1}).", details=details)
    before = [c for c in watch.clips if c.before_step]
    if not any(c.seen for c in watch.clips):
        cause = (f"{function} never found a gradient (every .grad was None or zero): it runs before loss.backward() "
                 "or right after optimizer.zero_grad(), so it clips nothing and the updates use the raw gradients")
    elif not before:
        cause = (f"{function} runs after optimizer.step() in every call: the update had already used the "
                 "unclipped gradients, and the next zero_grad() discards the clipped ones")
    elif any(c.seen for c in before):
        cause = (f"the gradients changed between {function} and optimizer.step() (zero_grad() or another "
                 "backward after clipping): the updates use gradients nobody clipped")
    else:
        cause = (f"{function} runs only where there is no gradient yet, or after optimizer.step(): no update "
                 "uses clipped gradients")
    return CheckResult("gradient_clipping", "skeleton", Verdict.FAIL, share, 0.0, ">",
                       f"none of the {len(stepping_calls)} optimizer steps in {calls} calls used clipped gradients: "
                       f"{cause} (gradient norm at optimizer.step() up to {at_step:.3g}). Clip between "
                       "loss.backward() and optimizer.step().", details=details)


# ---------------------------------------------------------------- train mode

def _named(modules: dict[str, nn.Module], names) -> str:
    shown = [f"{name or 'the model'} ({type(modules[name]).__name__})" for name in list(names)[:SHOWN]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


@applies_to("image", "features", "tokens")
def train_mode_kept(pipeline: Pipeline) -> CheckResult:
    """Every training forward of the shared reference run must run dropout, BatchNorm and the other
    layers that compute differently in eval mode in the mode model.train() gives them (as fit sets it
    once per epoch). FAILs when a step trained with such layers in eval mode: a step that calls
    model.eval() and never model.train() again, or sets only those layers to eval. N/A for a model
    with no such layer (its mode changes nothing).
    """
    run = reference_run(pipeline)
    watch = run.modes
    modules = dict(run.model.named_modules())
    switched_any = watch.left_in_other_mode if watch is not None else []
    note = (f" (step {switched_any[0][0]} hands it back in another mode, e.g. after model.eval(): harmless for this "
            "model, not for one with dropout or BatchNorm)" if switched_any else "")
    if watch is None or not watch.watched:
        return not_applicable("train_mode_kept", "baselines", "no layer of this model computes differently in train "
                              f"and eval mode (no dropout, no BatchNorm), so the mode it trains in changes "
                              f"nothing{note}.")
    if not watch.forwards_seen:
        return not_applicable("train_mode_kept", "baselines", f"the step never ran {_named(modules, watch.watched)} "
                              "with gradients on, so the mode they train in cannot be read.")
    affected: dict[str, None] = {}
    for _, names in watch.trained_in_other_mode:
        affected.update(dict.fromkeys(names))
    steps_changed = [step for step, _ in watch.trained_in_other_mode]
    share = len(steps_changed) / run.steps
    details = {"steps": run.steps, "steps_in_other_mode": len(steps_changed), "watched_modules": watch.watched[:50],
               "modules_in_other_mode": list(affected)[:50],
               "switched_by_step": [{"step": s, "modules": list(n)[:SHOWN]} for s, n in switched_any[:10]]}
    if not affected:
        handed_back = (f" (step {switched_any[0][0]} hands the model back in another mode, but the step puts it back "
                       "in train mode itself before training)" if switched_any else "")
        return CheckResult("train_mode_kept", "baselines", Verdict.PASS, share, 0.0, "<=",
                           f"all {run.steps} steps of the reference run trained {_named(modules, watch.watched)} in "
                           f"the mode model.train() gives them{handed_back}.", details=details)
    switched = next(((s, n) for s, n in switched_any if any(name in affected or name == "" for name in n)), None)
    if switched is None:
        who = "the step switches them out of train mode before its forward"
    elif "" in switched[1]:
        who = f"step {switched[0]} switched the model ({type(run.model).__name__}) to eval mode and no later step back"
    else:
        who = (f"step {switched[0]} switched {_named(modules, [n for n in switched[1] if n in affected])} to eval "
               "mode and no later step back")
    return CheckResult("train_mode_kept", "baselines", Verdict.FAIL, share, 0.0, "<=",
                       f"{len(steps_changed)} of {run.steps} steps (from step {steps_changed[0]}) trained with "
                       f"{_named(modules, list(affected))} in eval mode: {who}. fit calls model.train() once per "
                       "epoch, so the rest of each epoch trains without dropout and with BatchNorm frozen on its "
                       "running statistics. A step that calls model.eval() (to log an accuracy or evaluate a val "
                       "batch) must call model.train() again afterwards. To keep BatchNorm frozen on purpose, "
                       "override the model's train() so that model.train() leaves it in eval mode.",
                       details=details)
