"""Whether each call of the train step draws fresh random numbers, or puts a generator back where it was.

- `fresh_randomness` (stage `skeleton`): `torch.manual_seed(0)` inside the step, "for reproducibility"
  (or `np.random.seed(0)`, `random.seed(0)`), makes every step draw the same numbers: the same dropout
  mask on every batch, so the units it drops are never trained while eval uses them all; the same
  random augmentation done inside the step; the same order from a DataLoader that shuffles with the
  global generator. Nothing crashes and the run trains, only worse, and `determinism` cannot see it:
  such a run is perfectly reproducible.

  Told apart from a step that seeds on purpose with a seed of its own per step (`manual_seed(step)`):
  the step is called twice, each time from a different generator state. A generator whose state
  after the call is the same both times was reset to a fixed state inside the step; one the step only
  drew from, or left alone, ends in different states. CUDA generators are not compared: the usual
  culprit, `torch.manual_seed`, resets the CPU generator too.
"""
from __future__ import annotations

import numpy as np
import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict
from checks.measure.sampling import first_batches, fresh_model
from checks.measure.state import GENERATORS, generator_states, generators_kept, seed_all
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

STAGE = "skeleton"
START_SEEDS = (1_234_567, 7_654_321)  # two starting states no step is likely to seed itself
RESET_CALLS = {"torch": "torch.manual_seed", "numpy": "np.random.seed", "random": "random.seed"}


def _same(a, b) -> bool:
    """Generator states compared by value: tensors, arrays and tuples of them."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _reset_generators(pipeline: Pipeline) -> tuple[list[str], bool]:
    """(the generators the step resets to a fixed state, whether the training forward draws random numbers)."""
    with generators_kept():
        model = fresh_model(pipeline)
        optimizer, _ = training_objects(pipeline, model)
        batches = first_batches(pipeline, "train", 2)  # two batches: a step may seed from its batch on purpose
        model.train()
        with torch.no_grad():  # dropout, stochastic depth, noise: two forwards of one batch differ
            x = batches[0].x
            random_forward = not torch.equal(forward_logits(model, x), forward_logits(model, x))
        after = []
        for seed, batch in zip(START_SEEDS, batches * 2):
            seed_all(seed)
            take_step(pipeline, model, optimizer, batch.x, batch.y)
            after.append(generator_states())
    return [name for name in GENERATORS if _same(after[0][name], after[1][name])], random_forward


@applies_to("image", "features", "tokens")
def fresh_randomness(pipeline: Pipeline) -> CheckResult:
    """The train step must not reset a random generator to a fixed state on every call.

    Calls the step twice on a fresh model, from two different states of torch's, numpy's and Python's
    global generators. FAILs when it leaves torch's generator in the same state both times while the
    model's training forward is random (dropout): every step then drops the same units. WARNs for a
    reset that nothing random in the model draws from (yet): augmentation or shuffling done with that
    generator repeats every step. Measured: the number of reset generators the forward draws from, 0."""
    reset, random_forward = _reset_generators(pipeline)
    calls = ", ".join(f"{RESET_CALLS[name]}(...)" for name in reset)
    details = {"reset": reset, "random_forward": random_forward, "start_seeds": list(START_SEEDS)}
    repeating = int("torch" in reset and random_forward)
    if repeating:
        return CheckResult("fresh_randomness", STAGE, Verdict.FAIL, repeating, 0, "==",
                           f"the train step puts torch's random generator back to the same state on every call "
                           f"({calls} inside the step?), and the model's training forward is random: every step "
                           "draws the same dropout mask, so the units it drops are never trained while eval uses "
                           "them all. Seed once, before training, never inside the step.", details=details)
    if reset:
        return CheckResult("fresh_randomness", STAGE, Verdict.WARN, repeating, 0, "==",
                           f"the train step resets {', '.join(reset)}'s global generator to the same state on every "
                           f"call ({calls} inside the step?). Nothing random in the model's forward draws from it "
                           "now, but whatever does after the reset repeats every step: random augmentation in the "
                           "step, a DataLoader shuffling with the global generator. Seed once, before training.",
                           details=details)
    return CheckResult("fresh_randomness", STAGE, Verdict.PASS, repeating, 0, "==",
                       "the train step leaves torch's, numpy's and Python's generators where its own draws take "
                       "them: no reseeding inside the step.", details=details)
