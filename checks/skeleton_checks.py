"""Stage `skeleton`: "set up the end-to-end skeleton + get dumb baselines" (the plumbing half)."""
from __future__ import annotations

import math

import torch
from torch import nn

from checks.result import CheckResult, Figure, Verdict, measured
from checks.sampling import (capture_model_input, denormalise, first_batches, fresh_model, generator,
                             short_training)
from recipe.pipeline import Pipeline

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


def what_goes_into_the_net(pipeline: Pipeline) -> CheckResult:
    """Capture the exact tensor `model(x)` receives during a real training step and show it.

    FAIL on NaN/Inf, a constant batch (every example identical, or no variation at all), or values
    that were never normalised.
    """
    x, y, _ = capture_model_input(pipeline)
    xf = x.float()
    finite = torch.isfinite(xf)
    stats = {"shape": list(x.shape), "dtype": str(x.dtype), "device": str(x.device),
             "min": xf[finite].min().item() if finite.any() else math.nan,
             "max": xf[finite].max().item() if finite.any() else math.nan,
             "mean": xf[finite].mean().item() if finite.any() else math.nan,
             "std": xf[finite].std().item() if finite.sum() > 1 else math.nan,
             "nan_or_inf": int((~finite).sum())}
    spread = xf.reshape(len(xf), -1).std(dim=0).mean().item() if len(xf) > 1 else math.nan
    names = pipeline.data.class_names
    captions = [names[int(c)] if 0 <= int(c) < len(names) else str(int(c)) for c in y[:32].tolist()]
    figures = []
    if x[0].numel() == pipeline.data.train.images[0].numel():
        figures = [
            Figure("images", "what the net sees: the model's input (as given)",
                   {"images": xf[:32].reshape(-1, *pipeline.data.train.images.shape[1:]).cpu().numpy(),
                    "captions": captions, "cmap": "signed"}),
            Figure("images", "the same batch de-normalised to pixels",
                   {"images": denormalise(pipeline, xf[:32]).clamp(0, 1).cpu().numpy(), "captions": captions}),
        ]
    problems = []
    if stats["nan_or_inf"]:
        problems.append(f"{stats['nan_or_inf']} NaN/Inf values reach the model: check the data conversion and "
                        "any division in preprocessing")
    if not (spread > 1e-6):
        problems.append("the batch is constant across examples (every input identical): the loader or a "
                        "transform is overwriting the images")
    if stats["max"] > 50:
        problems.append(f"inputs look un-normalized (max {stats['max']:.1f}): did you forget ToTensor/Normalize?")
    table = [{"statistic": k, "value": v} for k, v in stats.items()]
    message = (f"the model receives {tuple(x.shape)} {x.dtype} on {x.device}, range {stats['min']:.3f}..{stats['max']:.3f}, "
               f"mean {stats['mean']:.3f}, std {stats['std']:.3f}. Look at the figure: do the images look like "
               "their labels?" if not problems else "; ".join(problems) + ".")
    return CheckResult("what_goes_into_the_net", STAGE, Verdict.FAIL if problems else Verdict.PASS,
                       float(len(problems)), 0.0, "==", message, figures=figures, details={"input_stats": table})


def _pairing_mismatches(pipeline: Pipeline, split: str, batches) -> dict[str, int]:
    """Count labels and pixels in `batches` of `split` that differ from the source at their indices."""
    source = pipeline.data.split(split)
    counts = {"examples": 0, "label_mismatches": 0, "pixel_mismatches": 0, "shifted": 0}
    for batch in batches:
        labels = source.labels[batch.idx]
        counts["label_mismatches"] += (batch.y != labels).sum().item()
        neighbours = (source.labels[(batch.idx + 1) % len(source)], source.labels[(batch.idx - 1) % len(source)],
                      labels.roll(1), labels.roll(-1))  # the next example in the source, or in the batch
        counts["shifted"] += max((batch.y == n).sum().item() for n in neighbours)
        pixels = source.images[batch.idx].float() / 255.0
        if batch.x.numel() != pixels.numel():
            counts["pixel_mismatches"] += len(batch.y)
        else:
            seen = denormalise(pipeline, batch.x.float())
            counts["pixel_mismatches"] += ((seen - pixels.reshape(seen.shape)).abs().flatten(1).amax(1)
                                           > PIXEL_TOLERANCE).sum().item()
        counts["examples"] += len(batch.y)
    return counts


PIXEL_TOLERANCE = 0.5 / 255  # half a grey level, after undoing the declared normalisation


def label_pairing(pipeline: Pipeline, n_batches: int = 20, n_eval_batches: int = 5) -> CheckResult:
    """Every (x, y) that reaches the model equals the source item at that example's index, in train
    (shuffled, as training draws it) and in val and test (in order, as evaluation draws them).

    Catches labels shuffled apart from the images, off-by-one indexing, and pixels changed on the way
    (an extra transform, normalised twice, something written into the image), including a transform
    the evaluation path applies but training does not.
    """
    per_split = {"train": _pairing_mismatches(pipeline, "train", first_batches(pipeline, "train", n_batches))}
    for split in ("val", "test"):
        per_split[split] = _pairing_mismatches(pipeline, split,
                                               first_batches(pipeline, split, n_eval_batches, shuffle=False))
    bad = {split: max(c["label_mismatches"], c["pixel_mismatches"]) for split, c in per_split.items()}
    total = sum(c["examples"] for c in per_split.values())
    details = {"per_split": [{"split": split, **{k: v for k, v in c.items() if k != "shifted"}}
                             for split, c in per_split.items()]}
    where = [split for split in per_split if bad[split]]
    if not where:
        counted = ", ".join(f"{c['examples']} {split}" for split, c in per_split.items())
        message = f"all {total} (x, y) pairs match the source data at their indices ({counted})."
        return CheckResult("label_pairing", STAGE, Verdict.PASS, 0.0, 0.0, "==", message, details=details)
    problems = [_pairing_problem(pipeline, split, per_split[split]) for split in where]
    if "train" not in where:
        problems.append("train batches are fine, so the evaluation path (val/test loader or transform) differs "
                        "from the training path")
    message = "; ".join(problems) + "."
    return CheckResult("label_pairing", STAGE, Verdict.FAIL, float(sum(bad.values())), 0.0, "==", message,
                       details=details)


def _pairing_problem(pipeline: Pipeline, split: str, counts: dict[str, int]) -> str:
    total = counts["examples"]
    if counts["label_mismatches"]:
        cause = ("labels are off by one: y matches the label of the neighbouring example"
                 if counts["shifted"] > 0.95 * total else "labels are shuffled apart from the images")
        return (f"{split}: {counts['label_mismatches']} of {total} labels differ from the source label at the "
                f"example's index: {cause}. Index images and labels with the same permutation, in the same place")
    return (f"{split}: {counts['pixel_mismatches']} of {total} inputs differ from the source image at their index "
            f"after undoing the declared normalisation (mean {pipeline.norm.mean:.4f}, std {pipeline.norm.std:.4f}): "
            "an extra transform, a second normalisation, or something written into the pixels")


def batch_sampling(pipeline: Pipeline, min_mixing: float = 0.5) -> CheckResult:
    """One training epoch visits every example exactly once, in shuffled, class-mixed batches.

    Catches: a loader that returns the same batch every time, one that is never shuffled, or one
    sorted by class (each batch a single class: the gradient swings from class to class).
    """
    labels = pipeline.data.train.labels
    n, classes = len(labels), pipeline.num_classes
    seen, distinct, sizes = [], [], []
    for batch in pipeline.batches("train", shuffle=True, augment=False, generator=generator(pipeline)):
        seen.append(batch.idx.cpu())
        distinct.append(len(torch.unique(batch.y)))
        sizes.append(len(batch.y))
    order = torch.cat(seen)
    coverage = len(torch.unique(order)) / n
    positions = torch.arange(len(order), dtype=torch.float64)
    rank_corr = torch.corrcoef(torch.stack([positions, order.double()]))[0, 1].item() if len(order) > 1 else 0.0
    size = max(set(sizes), key=sizes.count)
    counts = torch.bincount(labels, minlength=classes).double() / n
    expected = (1 - (1 - counts) ** size).sum().item()  # distinct classes in a random batch of that size
    mixing = sum(distinct) / len(distinct) / expected
    problems = []
    if coverage < 0.99 or len(order) > 1.01 * n:
        problems.append(f"one epoch yields {len(order)} examples covering {coverage:.1%} of the {n} train examples: "
                        "the loader returns the same batch every time or repeats/skips examples")
    if abs(rank_corr) > 0.9:
        problems.append(f"batches come in index order (correlation of position and index {rank_corr:.2f}): "
                        "the loader is never shuffled")
    if mixing < min_mixing:
        problems.append(f"batches hold {sum(distinct) / len(distinct):.1f} distinct classes on average where a "
                        f"shuffled batch of {size} holds {expected:.1f}: the data is sorted by class and not shuffled")
    details = {"coverage": coverage, "index_order_correlation": rank_corr, "class_mixing": mixing}
    message = (f"one epoch covers {coverage:.1%} of train once, in shuffled order (position/index correlation "
               f"{rank_corr:.2f}), with {mixing:.0%} of the class mixing of random batches." if not problems
               else "; ".join(problems) + ".")
    value = min(coverage, mixing)
    return CheckResult("batch_sampling", STAGE, Verdict.FAIL if problems else Verdict.PASS, value, min_mixing, ">=",
                       message, details=details)


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
    optimizer = pipeline.make_optimizer(model.parameters())
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad]
    before = {n: p.detach().clone() for n, p in named.items()}
    pipeline.train_step(model, optimizer, pipeline.loss_fn, batch.x, batch.y)
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
    pipeline.train_step(model, optimizer, pipeline.loss_fn, batch.x, batch.y)
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
