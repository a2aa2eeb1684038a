"""Stage `skeleton`, the loader half: what reaches the net, and whether each (x, y) is the right pair.

Each check reads batches exactly as the pipeline's own loader and train step produce them.
"""
from __future__ import annotations

import math

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict, holds, not_applicable
from checks.measure.sampling import capture_model_input, denormalise, first_batches, generator
from recipe.data import unit_pixels
from recipe.pipeline import Pipeline

STAGE = "skeleton"


def what_goes_into_the_net(pipeline: Pipeline) -> CheckResult:
    """Capture the exact tensor `model(x)` receives during a real training step and show it.

    FAIL on NaN/Inf, a constant batch (every example identical, or no variation at all), or values
    that were never normalised.
    """
    x, y, _ = capture_model_input(pipeline)
    if x is None:
        return not_applicable("what_goes_into_the_net", STAGE,
                              "no module of the model was called with a tensor during a train step, so its input "
                              "cannot be captured: the step runs the model through something forward hooks do not "
                              "see (torch.func, a compiled or scripted graph). gradient_flow still checks that the "
                              "step trains the model.")
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
        counts["label_mismatches"] += _rows(batch.y != labels)
        neighbours = (source.labels[(batch.idx + 1) % len(source)], source.labels[(batch.idx - 1) % len(source)],
                      labels.roll(1, 0), labels.roll(-1, 0))  # the next example in the source, or in the batch
        counts["shifted"] += max(len(batch.y) - _rows(batch.y != n) for n in neighbours)
        if pipeline.kind == "tokens":  # ids are not normalised: they must equal the source's, id for id
            same_shape = batch.x.shape == source.images[batch.idx].shape
            counts["pixel_mismatches"] += _rows(batch.x != source.images[batch.idx]) if same_shape else len(batch.y)
            counts["examples"] += len(batch.y)
            continue
        pixels = unit_pixels(source.images[batch.idx], pipeline.data.value_range)  # [0, 1], as denormalise gives
        if batch.x.numel() != pixels.numel():
            counts["pixel_mismatches"] += len(batch.y)
        else:
            seen = denormalise(pipeline, batch.x.float())
            pixels = pixels.reshape(seen.shape)
            # features are raw values in their own units (an area of 2500): float32 round trips err in proportion
            tolerance = FEATURE_TOLERANCE * (1 + pixels.abs()) if pipeline.kind == "features" else PIXEL_TOLERANCE
            counts["pixel_mismatches"] += ((seen - pixels).abs() > tolerance).flatten(1).any(1).sum().item()
        counts["examples"] += len(batch.y)
    return counts


def _rows(differs: torch.Tensor) -> int:
    """How many examples (rows) hold a difference: a label, or any target of a (B, T) sequence."""
    return int(differs.reshape(len(differs), -1).any(1).sum()) if differs.dim() else int(differs)


PIXEL_TOLERANCE = 0.5 / 255  # half an 8-bit grey level in [0, 1] pixels, after undoing the declared normalisation
FEATURE_TOLERANCE = 1e-5  # relative: ~100 float32 roundings of (x - mean) / std and back; any real change is far more


@applies_to("image", "features", "tokens")
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
    if pipeline.kind == "tokens":
        return (f"{split}: {counts['pixel_mismatches']} of {total} input sequences differ from the source ids at their "
                "index: the loader changes, drops or shifts tokens, or indexes inputs and targets differently")
    return (f"{split}: {counts['pixel_mismatches']} of {total} inputs differ from the source image at their index "
            f"after undoing the declared normalisation ({pipeline.norm.describe()}): "
            "an extra transform, a second normalisation, or something written into the pixels")


@applies_to("image", "features", "tokens")
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
    if labels.dim() == 1:
        counts = torch.bincount(labels, minlength=classes).double() / n
        expected = (1 - (1 - counts) ** size).sum().item()  # distinct classes in a random batch of that size
        mixing = sum(distinct) / len(distinct) / expected
    else:  # token sequences have no class per example to sort by: mixing is not measured
        expected, mixing = math.nan, math.nan
    repeats = len(order) / n
    # (value, threshold, comparison, problem) per criterion; the first one missed is the one shown.
    criteria = [
        (coverage, 0.99, ">=", f"one epoch yields {len(order)} examples covering {coverage:.1%} of the {n} train "
         "examples: the loader returns the same batch every time or repeats/skips examples"),
        (repeats, 1.01, "<=", f"one epoch yields {len(order)} examples for {n} train examples ({repeats:.2f}x): "
         "the loader repeats examples within an epoch"),
        (abs(rank_corr), 0.9, "<=", f"batches come in index order (correlation of position and index "
         f"{rank_corr:.2f}): the loader is never shuffled"),
        (mixing, min_mixing, ">=", f"batches hold {sum(distinct) / len(distinct):.1f} distinct classes on average "
         f"where a shuffled batch of {size} holds {expected:.1f}: the data is sorted by class and not shuffled"),
    ]
    details = {"coverage": coverage, "index_order_correlation": rank_corr, "class_mixing": mixing,
               "examples_per_epoch_ratio": repeats}
    mixed = f", with {mixing:.0%} of the class mixing of random batches" if math.isfinite(mixing) else ""
    message = (f"one epoch covers {coverage:.1%} of train once, in shuffled order (position/index correlation "
               f"{rank_corr:.2f}){mixed}.")
    if ("train", "stream") in pipeline.data.read_once:
        # A stream decides its own order, and was read once: its positions are no index to be shuffled, and
        # an epoch of it is whatever it yields. Only how its batches mix the classes can be judged.
        if not math.isfinite(mixing):
            return not_applicable("batch_sampling", STAGE, "the train loader streams (an IterableDataset): its "
                                  "order is its own and token sequences have no class whose mixing could be judged.")
        criteria = criteria[3:]
        message = f"the train stream, read once in its own order, mixes classes{mixed}."
    missed = [c for c in criteria if math.isfinite(c[0]) and not holds(c[0], c[2], c[1])]
    problems = list(dict.fromkeys(c[3] for c in missed))  # same batch every time misses coverage and repeats
    message = "; ".join(problems) + "." if problems else message
    value, threshold, comparison, _ = missed[0] if missed else [c for c in criteria if math.isfinite(c[0])][-1]
    return CheckResult("batch_sampling", STAGE, Verdict.FAIL if problems else Verdict.PASS, value, threshold,
                       comparison, message, details=details)
