"""Stage `skeleton`: "set up the end-to-end skeleton + get dumb baselines" (the model and step half;
the loader half is in loader_checks.py)."""
from __future__ import annotations

import math

import torch
from torch import nn

from checks.result import CheckResult, Figure, Verdict, measured
from checks.sampling import first_batches, fresh_model, short_training
from recipe.pipeline import Pipeline
from recipe.train import take_step, training_objects

STAGE = "skeleton"


def determinism(pipeline: Pipeline, steps: int = 20) -> CheckResult:
    """Two runs with the same seed must give identical losses for the first `steps` steps."""
    _, first = short_training(pipeline, steps)
    _, second = short_training(pipeline, steps)
    differing = [i for i, (a, b) in enumerate(zip(first, second)) if not (a == b or (math.isnan(a) and math.isnan(b)))]
    ok = f"two runs with seed {pipeline.config.seed} gave identical losses for all {steps} steps."
    fail = (f"two runs with the same seed diverge at step {differing[0] + 1 if differing else '?'} "
            f"({len(differing)} of {steps} losses differ). Something is not seeded: an unseeded RNG in the "
            "loader or augmentation, a model built outside the seeded factory, or non-deterministic kernels.")
    figure = Figure("lines", "loss per step, two runs with the same seed", {"series": {"run 1": first, "run 2": second},
                                                                            "xlabel": "step", "ylabel": "loss"})
    return measured("determinism", STAGE, float(len(differing)), 0.0, "==", ok, fail, figures=[figure])


def output_sanity(pipeline: Pipeline) -> CheckResult:
    """Output shape [B, C], finite values, and logits that are not already probabilities."""
    batch = first_batches(pipeline, "train", 1)[0]
    model = fresh_model(pipeline)
    model.eval()
    with torch.no_grad():
        out = model(batch.x)
    problems = []
    expected = (len(batch.y), pipeline.num_classes)
    if not isinstance(out, torch.Tensor):
        problems.append(f"the model returns {type(out).__name__}, expected a tensor of logits {expected}")
    else:
        if tuple(out.shape) != expected:
            problems.append(f"the model output has shape {tuple(out.shape)}, expected [B, C] = {list(expected)}")
        if not out.is_floating_point():
            problems.append(f"the model output has dtype {out.dtype}, expected floating point logits")
        elif not torch.isfinite(out).all():
            problems.append("the model output has NaN/Inf at init: check the init and any log/exp/division")
        elif out.dim() == 2 and out.shape[1] > 1:
            rows_sum = out.sum(1)
            probabilities = (out.min() >= 0) & (out.max() <= 1) & torch.allclose(rows_sum, torch.ones_like(rows_sum), atol=1e-3)
            log_probabilities = (out.max() <= 0) & torch.allclose(out.exp().sum(1), torch.ones_like(rows_sum), atol=1e-3)
            if probabilities:
                problems.append("the outputs are already probabilities (in [0, 1], rows sum to 1): a softmax sits "
                                "before a cross-entropy that expects logits. Remove the softmax from the model")
            elif log_probabilities and pipeline.loss_fn is nn.functional.cross_entropy:
                problems.append("the outputs are log-probabilities (log_softmax) but the loss is cross_entropy, "
                                "which applies log_softmax again: use nll_loss, or return logits")
    message = (f"the model maps a batch of {len(batch.y)} to finite logits of shape {list(expected)}."
               if not problems else "; ".join(problems) + ".")
    return CheckResult("output_sanity", STAGE, Verdict.FAIL if problems else Verdict.PASS, float(len(problems)),
                       0.0, "==", message)


def loss_at_init(pipeline: Pipeline, tolerance: float = 0.05, max_examples: int = 5000) -> CheckResult:
    """Karpathy's "verify loss @ init": the untrained model's loss on val should be ln(C)."""
    model = fresh_model(pipeline)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in pipeline.batches("val", shuffle=False, augment=False):
            total += pipeline.loss_fn(model(batch.x), batch.y).item() * len(batch.y)
            count += len(batch.y)
            if count >= max_examples:
                break
    loss = total / count
    ideal = math.log(pipeline.num_classes)
    with torch.no_grad():
        logits = model(first_batches(pipeline, "val", 1, shuffle=False)[0].x)
    uniform = logits.dim() == 2 and bool((logits.max(1).values - logits.min(1).values).abs().max() < 1e-6)
    prior = torch.bincount(pipeline.data.train.labels, minlength=pipeline.num_classes).double()
    prior = prior[prior > 0] / prior.sum()
    entropy = -(prior * prior.log()).sum().item()
    gap = abs(loss - ideal) if math.isfinite(loss) else math.inf
    ok = (f"loss at init {loss:.4f} vs ln({pipeline.num_classes}) = {ideal:.4f} (|diff| {gap:.4f} <= {tolerance}); "
          f"the best input-independent loss is the class-prior entropy {entropy:.4f}.")
    if loss < 0:
        cause = "a negative loss: the loss has the wrong sign"
    elif uniform:
        cause = ("the model gives every class the same score, which a cross-entropy scores as exactly ln(C): so the "
                 "loss function itself is not a cross-entropy over the C logits (MSE on class indices? a wrong "
                 "reduction or scaling?)")
    elif loss > ideal:
        cause = ("the init is too confident: weights initialised too large (or a wrong init scale), "
                 "or the logits are scaled up")
    else:
        cause = ("the loss is lower than chance before training: the model already knows something (leak?), the "
                 "loss is not a cross-entropy over C classes (e.g. MSE), or a softmax sits before the loss")
    fail = (f"loss at init is {loss:.4f}, but an untrained {pipeline.num_classes}-class model should score "
            f"ln({pipeline.num_classes}) = {ideal:.4f} (tolerance {tolerance}; the class-prior entropy is {entropy:.4f}): "
            f"{cause}.")
    return measured("loss_at_init", STAGE, gap, tolerance, "<=", ok, fail,
                    details={"loss": loss, "ideal": ideal, "prior_entropy": entropy})


def batch_independence(pipeline: Pipeline, example: int = 3) -> CheckResult:
    """Backprop from one example's output: only that example's input may get a gradient.

    Karpathy's "use backprop to chart dependencies". Catches a `view`/`reshape` where a
    `permute`/`transpose` was needed, which mixes information across the batch. Normalisation
    layers are put in eval mode first (batch norm legitimately mixes examples in train mode).
    """
    batch = first_batches(pipeline, "train", 1)[0]
    model = fresh_model(pipeline)
    model.eval()
    for parameter in model.parameters():  # zero-initialised weights would hide every dependency
        if parameter.dim() > 1 and parameter.abs().max() == 0:
            with torch.no_grad():
                parameter.normal_(0, 0.01)
    x = batch.x.float().clone().requires_grad_(True)
    out = model(x)
    example = min(example, len(x) - 1)
    out[example].sum().backward()
    grads = x.grad.reshape(len(x), -1).abs().sum(1)
    others = torch.cat([grads[:example], grads[example + 1:]])
    leaked = (others > 1e-12 * max(grads[example].item(), 1e-30)).sum().item() if grads[example] > 0 else len(others)
    own = grads[example].item()
    if own == 0:
        message = (f"example {example}'s output has no gradient with respect to its own input: the input is "
                   "detached or unused (is the graph cut, or the input replaced?).")
    elif leaked:
        message = (f"example {example}'s output depends on {leaked} other examples of the batch: information is mixed "
                   "across the batch, typically a view/reshape where a permute/transpose was needed.")
    else:
        message = f"example {example}'s output depends on its own input only (gradient on the other {len(others)} examples is 0)."
    bad = leaked + (1 if own == 0 else 0)
    return CheckResult("batch_independence", STAGE, Verdict.FAIL if bad else Verdict.PASS, float(leaked), 0.0, "==",
                       message, details={"own_gradient_norm": own})


def gradient_flow(pipeline: Pipeline) -> CheckResult:
    """Every trainable parameter gets a finite, non-zero gradient and changes after one step;
    and `zero_grad` is called: on the same batch, a second step's gradient is not the sum of two."""
    batch = first_batches(pipeline, "train", 1)[0]
    model = fresh_model(pipeline)
    optimizer, _ = training_objects(pipeline, model)
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad]
    before = {n: p.detach().clone() for n, p in named.items()}
    take_step(pipeline, model, optimizer, batch.x, batch.y)
    first_grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in named.items()}
    no_grad = [n for n, g in first_grads.items() if n not in frozen and g is None]
    zero_grad = [n for n, g in first_grads.items() if n not in frozen and g is not None and g.abs().max() == 0]
    not_finite = [n for n, g in first_grads.items() if g is not None and not torch.isfinite(g).all()]
    unchanged = [n for n, p in named.items() if n not in frozen and torch.equal(p.detach(), before[n])]
    # Second step on the same batch from a fresh copy of the *updated* weights: its true gradient is
    # what a fresh backward gives; a missing zero_grad makes p.grad that plus the first gradient.
    probe = fresh_model(pipeline)
    probe.load_state_dict(model.state_dict())
    pipeline.loss_fn(probe(batch.x), batch.y).backward()
    expected = {n: p.grad for n, p in probe.named_parameters()}
    take_step(pipeline, model, optimizer, batch.x, batch.y)
    accumulated = []
    for n, p in named.items():
        g1, g_true = first_grads.get(n), expected.get(n)
        if p.grad is None or g1 is None or g_true is None or g1.abs().max() == 0:
            continue
        if torch.allclose(p.grad, g_true + g1, rtol=1e-3, atol=1e-7) and not torch.allclose(p.grad, g_true, rtol=1e-3, atol=1e-7):
            accumulated.append(n)
    problems = []
    if frozen:
        problems.append(f"frozen parameters (requires_grad=False): {', '.join(frozen)}; a layer that never trains")
    if no_grad:
        problems.append(f"no gradient reaches {', '.join(no_grad)}: the graph is cut (detach, .data, no_grad, "
                        "or a non-differentiable op) or the loss does not depend on it")
    if zero_grad:
        problems.append(f"the gradient of {', '.join(zero_grad)} is exactly zero: the loss is flat there - clamped or "
                        "clipped (clip the gradients, not the loss), saturated, or the output ignores these weights")
    if not_finite:
        problems.append(f"NaN/Inf gradients in {', '.join(not_finite)}")
    if unchanged and not no_grad and not zero_grad:
        problems.append(f"{', '.join(unchanged)} did not change after a step: the optimizer does not hold these "
                        "parameters, its learning rate is 0, or optimizer.step() runs before loss.backward() (the "
                        "step sees no gradient yet)")
    if accumulated:
        problems.append(f"gradients accumulate across steps in {', '.join(accumulated)}: zero_grad is never called, "
                        "so each step uses the sum of all past gradients")
    total = len(named)
    message = (f"all {total} parameter tensors get finite, non-zero gradients, change after a step, and gradients "
               "are reset between steps." if not problems else "; ".join(problems) + ".")
    bad = len(set(frozen + no_grad + zero_grad + not_finite + unchanged + accumulated))
    return CheckResult("gradient_flow", STAGE, Verdict.FAIL if problems else Verdict.PASS, float(bad), 0.0, "==",
                       message, details={"parameters": total, "frozen": frozen, "no_gradient": no_grad,
                                         "zero_gradient": zero_grad,
                                         "unchanged": unchanged, "accumulating": accumulated})
