"""`beats_ngram_baselines`: after a short run, the language model's val loss is below the unigram loss
(and should be below the bigram's), with samples decoded at init and after the run.

makemore's ladder: a model that cannot beat counting tokens is not learning from context; one that
cannot beat counting pairs has not learned yet what a lookup table learns in one pass. A run that ends
above the unigram with its train loss still falling is a slow start, not a bug: WARN; a FAIL is a
loss that stopped falling above the unigram. The run is the shared reference run
(checks/measure/reference_run.py: the pipeline's own model, optimizer, scheduler and step, budgeted in
steps, never by the clock), trained once for every baseline check.
"""
from __future__ import annotations

import torch
from torch import nn

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict
from checks.measure.ngrams import ngram_losses
from checks.measure.reference_run import reference_run
from checks.measure.sampling import fresh_model, generator
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline

STAGE = "baselines"
VAL_ROWS = 512       # val rows scored: a few thousand tokens, a loss good to ~0.01 nats
SAMPLES, SAMPLE_TOKENS = 3, 48
STILL_FALLING = 0.02  # nats the train loss fell between the last two fifths of the run: not yet converged


def val_loss(pipeline: Pipeline, model: nn.Module) -> float:
    """Mean loss per scored target over the first VAL_ROWS val rows (pad targets do not count)."""
    pad, total, count = pipeline.data.pad_id, 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in pipeline.batches("val", shuffle=False, augment=False):
            scored = int((batch.y != pad).sum()) if pad is not None else batch.y.numel()
            total += float(pipeline.loss_fn(forward_logits(model, batch.x), batch.y)) * scored
            count += scored
            if count >= VAL_ROWS * batch.y.shape[1]:
                break
    return total / max(count, 1)


def samples(pipeline: Pipeline, model: nn.Module) -> list[str]:
    """SAMPLES texts drawn token by token (the pad never), each started from a val row's first token."""
    data, block = pipeline.data, pipeline.data.val.images.shape[1]
    g = generator(pipeline, 101)
    ids = data.val.images[:SAMPLES, :1].clone()
    model.eval()
    with torch.no_grad():
        for _ in range(SAMPLE_TOKENS - 1):
            logits = forward_logits(model, ids[:, -block:])[:, -1].float()
            if data.pad_id is not None:
                logits[:, data.pad_id] = float("-inf")
            probabilities = torch.softmax(logits, -1).cpu()
            ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=g).to(ids.device)], 1)
    decode = data.decode or (lambda row: " ".join(str(int(i)) for i in row))
    return [decode(row.tolist()) for row in ids]


@applies_to("tokens")
def beats_ngram_baselines(pipeline: Pipeline) -> CheckResult:
    base = ngram_losses(pipeline.data, "val")
    untrained = fresh_model(pipeline)
    at_init, before = samples(pipeline, untrained), val_loss(pipeline, untrained)
    run = reference_run(pipeline)
    modes = [(module, module.training) for module in run.model.modules()]
    after, trained = val_loss(pipeline, run.model), samples(pipeline, run.model)
    for module, training in modes:  # the shared model goes back as the run left it, for the checks after this one
        module.training = training
    details = {"val_loss_at_init": before, "val_loss": after, "steps": run.steps, **base,
               "samples_at_init": at_init, "samples_after": trained, **run.budget_details}
    figure = Figure("text", f"samples at init and after {run.steps} steps",
                    {"lines": [f"init:  {s}" for s in at_init] + [f"after: {s}" for s in trained]})
    said = (f"after {run.steps} steps the val loss is {after:.3f} nats/token (at init {before:.3f}); the unigram scores "
            f"{base['unigram']:.3f}, the add-one bigram {base['bigram']:.3f}")
    window = max(run.steps // 5, 1)
    recent, earlier = run.losses[-window:], run.losses[-2 * window:-window] or run.losses[:1]
    falling = sum(earlier) / len(earlier) - sum(recent) / len(recent)
    details["train_loss_drop_last_window"] = falling
    if not after < base["unigram"] and falling > STILL_FALLING:
        return CheckResult("beats_ngram_baselines", STAGE, Verdict.WARN, after, base["unigram"], ">=",
                           f"{said}: not yet below the unigram, but the train loss still fell {falling:.3f} over the "
                           f"last {window} steps: a slow start (a small init or lr), too short a run to judge. Give it "
                           "more steps (--check-steps) to see it cross.", figures=[figure], details=details)
    if not after < base["unigram"]:
        return CheckResult("beats_ngram_baselines", STAGE, Verdict.FAIL, after, base["unigram"], "<",
                           f"{said}: the model does no better than counting tokens, so it learns nothing from the "
                           "context. Likely causes: the targets misaligned with the inputs (see targets_shifted), a "
                           "learning rate far too low or too high, a loss that does not reach the model (detached "
                           "logits, a step that never calls optimizer.step()), or inputs the model cannot read.",
                           figures=[figure], details=details)
    if not after < base["bigram"]:
        return CheckResult("beats_ngram_baselines", STAGE, Verdict.WARN, after, base["unigram"], "<",
                           f"{said}: below the unigram but not yet the bigram, which a lookup table reaches in one "
                           "pass: the run may be short for this model (try --check-steps), or the lr too low.",
                           figures=[figure], details={**details, "warn_threshold": base["bigram"]})
    return CheckResult("beats_ngram_baselines", STAGE, Verdict.PASS, after, base["unigram"], "<",
                       f"{said}: the model beats both dumb baselines.", figures=[figure], details=details)
