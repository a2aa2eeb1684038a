"""How many steps a training-based check trains: decided from what the model is, never from the clock.

The reference run (checks/measure/reference_run.py) and the zero-input run beside it ask for up to
REFERENCE_STEPS steps. A model that costs more per example gets fewer, in proportion to its compute:

    steps = clamp(FLOPS_PER_CHECK / (3 x forward FLOPs of one training batch), MIN_CHECK_STEPS, asked)

Why not seconds: the same fingerprint must give the same results on any machine and under any load.
Timing the first steps (what the reference run did before) gave the pytorch/examples CNN 97 steps
at load 1.5 and 110 at load 1.1 on the same machine, and moved its baselines' values (0.842 vs 0.848).
The forward FLOPs, counted once by `torch.utils.flop_counter.FlopCounterMode` on the first training
batch of a fresh model, depend only on the model and the batch shape: the same on every machine.
x 3: a backward pass costs about twice its forward (gradients for the inputs and for the weights).

Why 0.5 TFLOP a check: the length the old 8 s clock budget gave the pytorch/examples CNN on a 2-core
machine (97-110 steps; 4.6 GFLOP a step at batch 64 -> 108 steps), so its preflight keeps its time.
The tiny default models are 1000x cheaper (a linear step is 3 MFLOP, the MLP's 39 MFLOP) and keep the
full 300. A resnet18 (213 GFLOP a step at 3x32x32, batch 64) gets the floor, MIN_CHECK_STEPS: the
loss windows (20 steps each) still need room to compare.

`--check-steps N` (TrainConfig.check_steps) sets the length outright instead; 0, the default, is
the rule above. Both are part of the config, so the fingerprint covers the run's length.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from checks.measure.sampling import first_batches, fresh_model
from recipe.config import MIN_CHECK_STEPS
from recipe.pipeline import Pipeline

FLOPS_PER_CHECK = 0.5e12  # training FLOPs one budgeted check may spend (see the module docstring)
BACKWARD_FACTOR = 3       # forward + backward, as a multiple of the forward


@dataclass(frozen=True)
class StepPlan:
    """How long a budgeted check trains, and the numbers that decided it (kept in results.json)."""
    steps: int
    asked: int                                # what the check asked for
    chosen_by: str                            # "flops", "--check-steps" or "flops unknown"
    forward_flops_per_example: float | None   # None when not counted (--check-steps) or not countable
    batch_size: int | None                    # examples in the batch the FLOPs were counted on
    why_uncounted: str = ""

    @property
    def flops_per_step(self) -> float | None:
        if self.forward_flops_per_example is None or self.batch_size is None:
            return None
        return BACKWARD_FACTOR * self.forward_flops_per_example * self.batch_size

    @property
    def note(self) -> str:
        """One line: the steps and why, in the user's terms."""
        if self.chosen_by == "--check-steps":
            return f"{self.steps} steps (--check-steps {self.steps})"
        if self.chosen_by == "flops unknown":
            return f"{self.steps} steps: the model's forward FLOPs could not be counted ({self.why_uncounted})"
        cost = (f"a training step costs {flops(self.flops_per_step)} ({BACKWARD_FACTOR} x "
                f"{flops(self.forward_flops_per_example)} forward an example x {self.batch_size} examples)")
        if self.steps >= self.asked:
            return f"{self.steps} steps: {cost}, within the {flops(FLOPS_PER_CHECK)} a check may spend"
        floor = f", at least {MIN_CHECK_STEPS}" if self.steps == MIN_CHECK_STEPS else ""
        return (f"{self.steps} of {self.asked} steps: {cost}; a check spends at most {flops(FLOPS_PER_CHECK)}"
                f"{floor} (--check-steps N sets the length)")

    def details(self) -> dict:
        """The plan as a check's details: the note, and the rule's inputs as numbers."""
        return {"budget": self.note, "steps_asked": self.asked, "steps_chosen_by": self.chosen_by,
                "forward_flops_per_example": self.forward_flops_per_example,
                "training_flops_per_step": self.flops_per_step, "flops_per_check": FLOPS_PER_CHECK}


def flops(value: float | None) -> str:
    if value is None:
        return "?"
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def plan_steps(pipeline: Pipeline, asked: int) -> StepPlan:
    """The steps a budgeted check that asks for `asked` trains: a pure function of model and config."""
    if pipeline.config.check_steps:
        return StepPlan(asked, asked, "--check-steps", None, None)
    counted = forward_flops(pipeline)
    if isinstance(counted, str):
        return StepPlan(asked, asked, "flops unknown", None, None, why_uncounted=counted)
    per_example, batch_size = counted
    step_flops = BACKWARD_FACTOR * per_example * batch_size
    affordable = int(FLOPS_PER_CHECK // step_flops) if step_flops > 0 else asked
    steps = min(asked, max(MIN_CHECK_STEPS, affordable))
    return StepPlan(steps, asked, "flops", per_example, batch_size)


_COUNTED: list[tuple[weakref.ref, tuple[float, int] | str]] = []


def forward_flops(pipeline: Pipeline) -> tuple[float, int] | str:
    """(forward FLOPs per example, batch size) on the first training batch, or why they could not be
    counted. Counted once per pipeline (the last one, as for the reference run)."""
    if _COUNTED and _COUNTED[0][0]() is pipeline:
        return _COUNTED[0][1]
    counted = _count(pipeline)
    _COUNTED[:] = [(weakref.ref(pipeline), counted)]
    return counted


def _count(pipeline: Pipeline) -> tuple[float, int] | str:
    # On a model of its own, with the random state restored after: counting leaves no trace (no
    # BatchNorm statistics, no RNG draws) in the runs that train next. In train mode, as it trains:
    # in eval mode without gradients nn.TransformerEncoderLayer takes a fused fast path that the
    # counter does not see (a ViT counted 394 kFLOP an example instead of its real cost).
    with torch.random.fork_rng():
        model = fresh_model(pipeline)
        model = getattr(model, "_orig_mod", model).train()  # a torch.compile'd model: count its eager module
        x = first_batches(pipeline, "train", 1, shuffle=False)[0].x
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
        except Exception as error:  # a model the counter cannot trace still trains: the check asks, in full
            return f"{type(error).__name__}: {error}"[:200]
    examples = len(x) if hasattr(x, "__len__") else 1
    return counter.get_total_flops() / max(examples, 1), examples
