"""Stage `skeleton`: "set up the end-to-end skeleton + get dumb baselines" (the model and step half;
the loader half is in loader_checks.py)."""
from __future__ import annotations

import math

import torch
from torch import nn

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict, measured
from checks.measure.predictions import label_counts, scored_positions
from checks.measure.reference_run import reference_run
from checks.measure.sampling import first_batches, fresh_model, short_training
from checks.measure.state import CARRIED_STATE, keeps_state
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline

STAGE = "skeleton"


@applies_to("image", "features", "tokens")
def determinism(pipeline: Pipeline, steps: int = 20) -> CheckResult:
    """Two runs with the same seed must give identical losses for the first `steps` steps (the first is
    the start of the shared reference run, which the baselines use too). A model whose FLOPs cut the
    reference run compares a twelfth of it, at least 5 steps: an unseeded init, shuffle, augmentation or
    dropout, and a non-deterministic kernel, change the very first loss, so more steps only cost time."""
    reference = reference_run(pipeline)
    steps = min(steps, max(5, reference.steps // 12))
    first = reference.losses[:steps]
    _, second = short_training(pipeline, steps)
    differing = [i for i, (a, b) in enumerate(zip(first, second)) if not (a == b or (math.isnan(a) and math.isnan(b)))]
    ok = f"two runs with seed {pipeline.config.seed} gave identical losses for all {steps} steps."
    fail = (f"two runs with the same seed diverge at step {differing[0] + 1 if differing else '?'} "
            f"({len(differing)} of {steps} losses differ). Something is not seeded: an unseeded RNG in the "
            "loader or augmentation, a model built outside the seeded factory, non-deterministic kernels, or a random "
            "layer left active in eval mode (dropout, noise), whose draws during evaluation shift the next steps "
            "(eval_determinism tells).")
    figure = Figure("lines", "loss per step, two runs with the same seed", {"series": {"run 1": first, "run 2": second},
                                                                            "xlabel": "step", "ylabel": "loss"})
    return measured("determinism", STAGE, float(len(differing)), 0.0, "==", ok, fail, figures=[figure])


@applies_to("image", "features", "tokens")
def output_sanity(pipeline: Pipeline) -> CheckResult:
    """Output shape [B, C] ([B, T, V] for token sequences: next-token logits at every position), finite
    values, and logits that are not already probabilities."""
    batch = first_batches(pipeline, "train", 1)[0]
    model = fresh_model(pipeline)
    model.eval()
    with torch.no_grad():
        out = forward_logits(model, batch.x)
    problems = []
    expected = (*batch.y.shape, pipeline.num_classes)  # (B, C), or (B, T, V) for (B, T) next-token targets
    wanted = "[B, T, V]" if batch.y.dim() == 2 else "[B, C]"
    if not isinstance(out, torch.Tensor):
        problems.append(f"the model returns {type(out).__name__}, expected a tensor of logits {expected}")
    else:
        if tuple(out.shape) != expected:
            problems.append(f"the model output has shape {tuple(out.shape)}, expected {wanted} = {list(expected)}")
        if not out.is_floating_point():
            problems.append(f"the model output has dtype {out.dtype}, expected floating point logits")
        elif not torch.isfinite(out).all():
            problems.append("the model output has NaN/Inf at init: check the init and any log/exp/division")
        elif out.dim() == len(expected) and out.shape[-1] > 1:
            rows_sum = out.sum(-1)
            probabilities = (out.min() >= 0) & (out.max() <= 1) & torch.allclose(rows_sum, torch.ones_like(rows_sum), atol=1e-3)
            log_probabilities = (out.max() <= 0) & torch.allclose(out.exp().sum(-1), torch.ones_like(rows_sum), atol=1e-3)
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


@applies_to("image", "features", "tokens")
def loss_at_init(pipeline: Pipeline, tolerance: float = 0.05, max_examples: int = 5000) -> CheckResult:
    """Karpathy's "verify loss @ init": the untrained model's loss on val should be ln(C), graded. For
    token sequences C is the vocabulary size V, and the loss is over the positions whose target is not
    padding (each batch weighted by how many it holds); the class prior is the unigram of the targets.

    Why these limits: random logits of std s per class score about ln(C) + s^2/2 while s is small,
    whatever C, so the excess over ln(C) measures the init's logit scale in nats. `tolerance` (0.05)
    allows s ~ 0.3, logits "near zero" as the recipe asks: PASS. Above it is a WARN with the fix
    (init the last layer small): careless but trainable inits land there, measured on `sample`
    at 1.1-2.1x chance (Xavier or Kaiming on every layer, N(0, 0.05) or N(0, 0.1) weights). An
    excess above 2 ln(C), a loss over three times chance (random logits of std ~3 for 10 classes,
    confidently wrong on nearly every example), is a FAIL: the bugs that cause it land far beyond
    (x B for a summed loss, ~C^2/3 for MSE on class indices, thousands for a x100 init). Below
    chance down to the class-prior entropy is a good init (bias at the log prior); further below
    WARNs (pretrained weights, or a leak). A negative loss, or uniform logits not scoring exactly
    ln(C) (any cross-entropy does), mean the loss is not a cross-entropy: FAIL.
    """
    model = fresh_model(pipeline)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in pipeline.batches("val", shuffle=False, augment=False):
            weight = int(scored_positions(batch.y, pipeline.data.pad_id))  # B, or the scored tokens of (B, T)
            total += pipeline.loss_fn(forward_logits(model, batch.x), batch.y).item() * weight
            count += weight
            if count >= max_examples:
                break
    loss = total / count
    classes = pipeline.num_classes
    ideal = math.log(classes)
    with torch.no_grad():
        logits = forward_logits(model, first_batches(pipeline, "val", 1, shuffle=False)[0].x)
    uniform = logits.dim() >= 2 and bool((logits.max(-1).values - logits.min(-1).values).abs().max() < 1e-6)
    prior = label_counts(pipeline, "train").double()
    prior = prior[prior > 0] / prior.sum()
    entropy = -(prior * prior.log()).sum().item()
    excess = loss - ideal if math.isfinite(loss) else math.inf
    details = {"loss": loss, "ideal": ideal, "prior_entropy": entropy, "excess": excess, "warn_threshold": tolerance}
    said = (f"loss at init {loss:.4f} vs ln({classes}) = {ideal:.4f} (excess {excess:+.4f}; the best "
            f"input-independent loss is the class-prior entropy {entropy:.4f})")

    def result(verdict: Verdict, value: float, threshold: float, comparison: str, message: str) -> CheckResult:
        return CheckResult("loss_at_init", STAGE, verdict, value, threshold, comparison, message, details=details)

    if not math.isfinite(loss) or loss < 0:
        return result(Verdict.FAIL, loss, 0.0, ">=", f"{said}: a negative or NaN loss: the loss has the wrong sign, "
                      "or is not a cross-entropy (nll_loss on raw logits: log_softmax missing).")
    if uniform and abs(excess) > tolerance:
        return result(Verdict.FAIL, abs(excess), tolerance, "<=", f"{said}: the model gives every class the same "
                      "score, which any cross-entropy scores as exactly ln(C), so the loss function is not a "
                      "cross-entropy over the C logits: MSE on class indices, nll_loss on raw logits (log_softmax "
                      "missing), a wrong reduction (sum instead of mean), a scaled or a clamped loss.")
    gross = 2 * ideal  # the FAIL limit on the excess: a loss over three times chance (see the docstring)
    if excess > gross:
        return result(Verdict.FAIL, excess, gross, "<=", f"{said}: more than three times the loss of a uniform "
                      f"guess (limit: excess <= 2 ln({classes}) = {gross:.3f}). The model starts confidently wrong: "
                      "weights initialised too large (a wrong init scale), logits scaled up, or a summed loss "
                      "(reduction).")
    if excess > tolerance:
        return result(Verdict.WARN, excess, gross, "<=", f"{said}: above ln(C) by more than {tolerance}, so the "
                      "initial logits are not near zero (a Kaiming, Xavier or wide normal init of the last layer does "
                      "this), and training first spends steps shrinking them (the 'hockey stick' loss curve). Fix: "
                      "initialise the last layer small (weight x 0.01 or std 1e-3, bias 0), or its bias at the log "
                      "class prior.")
    if loss < min(entropy, ideal) - tolerance:
        return result(Verdict.WARN, excess, tolerance, "<=", f"{said}: below chance before any training. Expected "
                      "with pretrained weights; otherwise the model already knows something (a leak) or the loss "
                      "is not a cross-entropy over C classes.")
    return result(Verdict.PASS, excess, tolerance, "<=", f"{said}: within {tolerance} of ln(C), or between the "
                  "class-prior entropy and ln(C).")


@applies_to("image", "features", "tokens")
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
    example = min(example, len(batch.x) - 1)
    if not batch.x.is_floating_point():  # token ids have no gradient: change the ids and watch the output
        return _changed_inputs_independence(pipeline, model, batch.x, example)
    zero_inputs: list[str] = []  # modules, in call order, whose input is all zero for the example

    def record(name: str):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0 and len(args[0]) > example \
                    and not bool(args[0][example].detach().abs().max() > 0):
                zero_inputs.append(name)
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in model.named_modules() if name]
    x = batch.x.float().clone().requires_grad_(True)
    try:
        out = forward_logits(model, x)
    finally:
        for handle in handles:
            handle.remove()
    if out.requires_grad:
        out[example].sum().backward()
    if x.grad is None:  # the graph is cut before any weight that sees x (a no_grad feature extractor): change inputs
        return _changed_inputs_independence(pipeline, model, x.detach(), example, cut=True)
    grads = x.grad.reshape(len(x), -1).abs().sum(1)
    others = torch.cat([grads[:example], grads[example + 1:]])
    own = grads[example].item()
    leaked = int((others > 1e-12 * max(own, 1e-30)).sum().item())
    details = {"own_gradient_norm": own, "examples_reached": leaked}
    if own == 0:
        constant = [n for n, p in model.named_parameters() if p.dim() > 1 and p.numel() > 1 and p.min() == p.max()]
        causes = []
        if zero_inputs:
            causes.append(f"the input of '{zero_inputs[0]}' is all zero for this example: every unit before it is "
                          "dead (ReLUs that never fire), so no gradient flows back")
        if constant:
            causes.append(f"{', '.join(constant)} are initialised to one constant value: every unit computes the "
                          "same thing, and with ReLU they all die together (use a random init)")
        causes.append("or the input is detached or unused (the graph is cut, or the input replaced)")
        return CheckResult("batch_independence", STAGE, Verdict.FAIL, own, 0.0, ">",
                           f"example {example}'s output has no gradient with respect to its own input: "
                           + "; ".join(causes) + ".", details=details)
    if leaked:
        return CheckResult("batch_independence", STAGE, Verdict.FAIL, float(leaked), 0.0, "==",
                           f"example {example}'s output depends on {leaked} other examples of the batch: information "
                           "is mixed across the batch, typically a view/reshape where a permute/transpose was needed.",
                           details=details)
    return CheckResult("batch_independence", STAGE, Verdict.PASS, 0.0, 0.0, "==",
                       f"example {example}'s output depends on its own input only (gradient on the other "
                       f"{len(others)} examples is 0).", details=details)


@torch.no_grad()
def _changed_inputs_independence(pipeline: Pipeline, model: nn.Module, x: torch.Tensor, example: int,
                                 cut: bool = False) -> CheckResult:
    """batch_independence without gradients: for token ids (they have none), or inputs the graph is cut from
    (`cut`). Change the other examples' inputs, then the example's own, and see which change moves the
    example's output beyond float noise. Ids become other random ids; float inputs get noise of their spread."""
    generator = torch.Generator().manual_seed(pipeline.config.seed)
    spread = x.float().std().item() or 1.0

    def moved(rows: list[int]) -> float:
        changed = x.clone()
        for row in rows:  # every id or value changed, so the change cannot be a no-op
            if x.is_floating_point():
                changed[row] = x[row] + spread * torch.randn(x[row].shape, generator=generator).to(x)
            else:
                shift = torch.randint(1, pipeline.num_classes, x[row].shape, generator=generator).to(x.device)
                changed[row] = (x[row] + shift) % pipeline.num_classes
        return (forward_logits(model, changed)[example].float() - base).abs().max().item()

    base = forward_logits(model, x)[example].float()
    noise = 1e-6 + 1e-5 * base.abs().max().item()
    others = [i for i in range(len(x)) if i != example]
    # all others at once first (clean models stop here); then one by one, the first 8 only: enough to name them
    leaked = [i for i in others[:8] if moved([i]) > noise] or [-1] if moved(others) > noise else []
    own = moved([example])
    details = {"own_change": own, "examples_reached": len(leaked), "noise": noise, "input_gets_no_gradient": cut}
    what = ("value" if cut else "id") + f" of example {example}"
    note = (" (its input gets no gradient: the graph is cut before the first weights that see it, as a no_grad "
            "feature extractor does; judged by changing inputs instead)") if cut else ""
    if own <= noise:
        return CheckResult("batch_independence", STAGE, Verdict.FAIL, own, noise, ">",
                           f"changing every {what} leaves its output unchanged (by {own:.2g}): the "
                           "model ignores its input (the input is detached, replaced or unused).", details=details)
    if leaked:
        return CheckResult("batch_independence", STAGE, Verdict.FAIL, float(len(leaked)), 0.0, "==",
                           f"example {example}'s output changes when the inputs of the other examples change{note} ("
                           f"{len([i for i in leaked if i >= 0])} of the first {min(8, len(others))} one by one): "
                           + (f"{CARRIED_STATE}." if keeps_state(model, x) else
                              "information is mixed across the batch (attention or a reshape over the batch "
                              "dimension, a view where a transpose was needed)."), details=details)
    return CheckResult("batch_independence", STAGE, Verdict.PASS, 0.0, 0.0, "==",
                       f"example {example}'s output moves when its own inputs change ({own:.2g}) and not when the "
                       f"inputs of the other {len(others)} examples change{note}.", details=details)


@applies_to("image", "features", "tokens")
def eval_determinism(pipeline: Pipeline, rtol: float = 1e-5, atol: float = 1e-6) -> CheckResult:
    """Two eval-mode passes over the same batch must give the same outputs.

    Catches a stochastic layer that stays active after `model.eval()`: `F.dropout(x, p)` without
    `training=self.training`, noise added in `forward` whatever the mode. Evaluation, early stopping
    and the test figure would then be random.
    """
    batch = first_batches(pipeline, "val", 1, shuffle=False)[0]
    model = fresh_model(pipeline)
    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():  # a zero-initialised layer would hide any randomness before it
            if parameter.dim() > 1 and parameter.abs().max() == 0:
                parameter.normal_(0, 0.01)
        first, second = forward_logits(model, batch.x), forward_logits(model, batch.x)
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape):
        return CheckResult("eval_determinism", STAGE, Verdict.NA, None, None, "",
                           "the model does not return one tensor, so its eval outputs cannot be compared "
                           "(output_sanity says why).")
    gap = (first.float() - second.float()).abs().max().item() if first.numel() else 0.0
    tolerance = atol + rtol * (first.float().abs().max().item() if first.numel() else 0.0)  # float noise only
    same = gap <= tolerance
    ok = f"two eval-mode passes over {len(batch.y)} val examples give the same outputs (max difference {gap:.1e})."
    cause = (CARRIED_STATE if not same and keeps_state(model, batch.x) else
             "something random stays active in eval mode, typically F.dropout(x, p) without training=self.training, "
             "or noise added in forward whatever the mode")
    fail = (f"two eval-mode passes over the same {len(batch.y)} val examples give different outputs (max difference "
            f"{gap:.3g}): {cause}; val and test numbers would be random.")
    return CheckResult("eval_determinism", STAGE, Verdict.PASS if same else Verdict.FAIL, gap, tolerance, "<=",
                       ok if same else fail, details={"max_difference": gap})
