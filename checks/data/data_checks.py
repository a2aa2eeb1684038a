"""Stage `data`: "become one with the data". One pure function per check: pipeline in, result out."""
from __future__ import annotations

import math

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Figure, Verdict, measured, not_applicable
from checks.measure.sampling import stacked
from recipe.data import pixel_mean_std, unit_pixels
from recipe.pipeline import Pipeline

STAGE = "data"
SPLITS = ("train", "val", "test")


@applies_to("image", "features")
def integrity(pipeline: Pipeline) -> CheckResult:
    """Shapes, dtypes, NaN/Inf, raw pixels within the declared value range, labels in [0, C), non-empty
    splits, same label set everywhere.

    Catches: truncated or mis-parsed files, NaN/Inf pixels, pixels outside the range the data declares
    (float images already normalised, or in 0..255 declared as 0..1), labels out of range, a class
    missing from one split (e.g. filtered away by mistake).
    """
    problems, rows = [], []
    num_classes = pipeline.num_classes
    label_sets = {}
    range_low, range_high = pipeline.data.value_range
    in_range = pipeline.kind == "image"  # feature vectors declare no range: any finite value is a value
    if not range_low < range_high:
        problems.append(f"the declared value range {range_low:g}..{range_high:g} is empty")
    for name in SPLITS:
        split = pipeline.data.split(name)
        images, labels = split.images, split.labels
        row = {"split": name, "examples": len(labels), "shape": list(images.shape), "dtype": str(images.dtype)}
        if len(labels) == 0 or images.numel() == 0:
            problems.append(f"the {name} split is empty")
            rows.append(row)
            continue
        if len(images) != len(labels):
            problems.append(f"{name}: {len(images)} images but {len(labels)} labels")
        low, high, bad = _range_and_nonfinite(images)
        row.update({"min": low, "max": high, "nan_or_inf": bad})
        if bad:
            problems.append(f"{name}: {bad} NaN/Inf pixel values")
        if in_range and low is not None and (low < range_low or high > range_high):
            problems.append(f"{name}: raw pixels span {low:g}..{high:g}, outside the declared range "
                            f"{range_low:g}..{range_high:g} (DataBundle.value_range)")
        if labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            problems.append(f"{name}: labels have dtype {labels.dtype}, expected an integer type")
        out_of_range = ((labels < 0) | (labels >= num_classes)).sum().item()
        if out_of_range:
            problems.append(f"{name}: {out_of_range} labels outside [0, {num_classes})")
        label_sets[name] = set(torch.unique(labels).tolist())
        row["classes_present"] = len(label_sets[name])
        rows.append(row)
    expected = set(range(num_classes))
    for name, present in label_sets.items():
        missing = sorted(expected - present)
        if missing:
            names = [pipeline.data.class_names[c] for c in missing if 0 <= c < num_classes]
            problems.append(f"class {', '.join(map(str, names))} is missing from the {name} split")
    where = f", in the declared range {range_low:g}..{range_high:g}" if in_range else ""
    message = (f"all splits are non-empty, finite{where}, with labels in [0, C) and every class in every split"
               if not problems else
               "data integrity problems: " + "; ".join(problems) +
               ". Likely causes: a truncated or mis-parsed file, a filter that dropped a class, labels "
               "shifted or encoded differently (1-based?), NaNs from a bad conversion, images already "
               "normalised or scaled differently from the range they declare.")
    return CheckResult("integrity", STAGE, Verdict.FAIL if problems else Verdict.PASS, float(len(problems)),
                       0.0, "==", message, details={"splits": rows})


def _range_and_nonfinite(images: torch.Tensor, chunk: int = 8192) -> tuple[float | None, float | None, int]:
    """(min, max) of the finite values and the count of NaN/Inf, chunk by chunk (no full float copy)."""
    low, high, bad = None, None, 0
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        if part.is_floating_point():
            finite = torch.isfinite(part)
            bad += int((~finite).sum())
            part = part[finite]
        if part.numel():
            lo, hi = float(part.min()), float(part.max())
            low, high = (lo, hi) if low is None else (min(low, lo), max(high, hi))
    return low, high, bad


@applies_to("image", "features")
def class_balance(pipeline: Pipeline, max_ratio: float = 10.0, max_shift: float = 0.2) -> CheckResult:
    """Per-class counts per split, the majority class and what always predicting it scores.

    FAILs when val or test has a clearly different class mix from train (total variation distance
    above `max_shift`): a split cut from sorted data, or filtered differently, is not representative.
    WARNs when train itself is imbalanced beyond `max_ratio`.
    """
    names = pipeline.data.class_names
    counts = {s: torch.bincount(pipeline.data.split(s).labels.clamp(0, len(names) - 1),
                                minlength=len(names)).tolist() for s in SPLITS}
    shares = {s: torch.tensor(c, dtype=torch.float64) / max(sum(c), 1) for s, c in counts.items()}
    shift = {s: 0.5 * (shares[s] - shares["train"]).abs().sum().item() for s in ("val", "test")}
    worst_split = max(shift, key=shift.get)
    train = counts["train"]
    majority = max(range(len(names)), key=lambda c: train[c])
    baseline = counts["test"][majority] / max(sum(counts["test"]), 1)
    ratio = max(train) / max(min(train), 1)
    extra = {"figures": [Figure("bars", "examples per class", {"categories": list(names), "series": counts,
                                                               "ylabel": "examples"})],
             "details": {"per_class": [{"class": names[c], **{s: counts[s][c] for s in SPLITS}} for c in range(len(names))],
                         "majority_class": names[majority], "majority_baseline_test_accuracy": baseline,
                         "class_mix_distance_from_train": shift, "largest_to_smallest": ratio}}
    if shift[worst_split] > max_shift:
        return measured("class_balance", STAGE, shift[worst_split], max_shift, "<=", "", (
            f"the {worst_split} split has a different class mix from train: total variation distance "
            f"{shift[worst_split]:.2f} (limit {max_shift}). It is not representative: was it cut from data sorted by "
            "class, or filtered differently? Split stratified and at random."), **extra)
    ok = (f"val and test have the class mix of train (distance {shift[worst_split]:.3f}); train is balanced "
          f"(largest/smallest class = {ratio:.2f}). Majority class '{names[majority]}': always predicting it scores "
          f"{baseline:.4f} on test, the floor every model must beat.")
    warn = (f"train is imbalanced: the largest class has {ratio:.1f}x the examples of the smallest (limit "
            f"{max_ratio:g}). Always predicting '{names[majority]}' scores {baseline:.4f} on test. Accuracy "
            "will flatter the model: look at per-class accuracy, or re-weight / re-sample.")
    # The shown number is the blocking criterion (the class-mix distance, which holds here); the
    # imbalance ratio only warns, and is named in the message and details.
    imbalanced = ratio > max_ratio
    return CheckResult("class_balance", STAGE, Verdict.WARN if imbalanced else Verdict.PASS, shift[worst_split],
                       max_shift, "<=", warn if imbalanced else ok, **extra)


@applies_to("image", "features", "tokens")
def split_sizes(pipeline: Pipeline) -> CheckResult:
    """Train must be the biggest split: a model learns from train, val and test only grade it.

    Catches: train and test swapped (a loader that takes `train=False` for training), or the
    splits cut the wrong way round.
    """
    sizes = {s: len(pipeline.data.split(s)) for s in SPLITS}
    biggest_held_out = max(sizes["val"], sizes["test"])
    ratio = sizes["train"] / max(biggest_held_out, 1)
    which = "val" if sizes["val"] >= sizes["test"] else "test"
    ok = f"train holds {sizes['train']} examples, {ratio:.1f}x the biggest held-out split ({which}, {biggest_held_out})."
    fail = (f"train holds {sizes['train']} examples but {which} holds {biggest_held_out}: train should be the biggest "
            "split. Likely cause: train and test (or val) swapped, e.g. a dataset built with train=False for "
            "training, or the split fractions inverted.")
    return measured("split_sizes", STAGE, ratio, 1.0, ">=", ok, fail, details={"sizes": sizes})


def _listed(values: list[float]) -> str:
    return ", ".join(f"{v:.5f}" for v in values)


def _effective_norm(pipeline: Pipeline, n_examples: int = 256) -> tuple[list[float], list[float], float]:
    """Fit x_seen = (pixels - mean) / std per channel on real batches: returns (means, stds, max fit error).

    Reads the stats the batches *actually* use, whatever `pipeline.norm` declares.
    """
    x, _, idx = stacked(pipeline, "train", n_examples, shuffle=False)
    images = pipeline.data.train.images[idx]
    if x.numel() != images.numel():
        return [math.nan], [math.nan], math.inf
    # (N, C, H*W) for images; (N, D, 1) for feature vectors, each feature a "channel" of its own
    pixels = unit_pixels(images, pipeline.data.value_range, torch.float64).reshape(len(idx), images.shape[1], -1)
    seen = x.double().reshape(pixels.shape)
    means, stds, error = [], [], 0.0
    for c in range(pixels.shape[1]):
        p, s = pixels[:, c].flatten(), seen[:, c].flatten()
        spread = ((p - p.mean()) ** 2).sum()
        if spread == 0:
            return [math.nan], [math.nan], math.inf
        slope = ((p - p.mean()) * (s - s.mean())).sum() / spread
        intercept = s.mean() - slope * p.mean()
        error = max(error, (s - (slope * p + intercept)).abs().max().item())
        stds.append((1.0 / slope).item())
        means.append((-intercept / slope).item())
    return means, stds, error


def _split_stats(pipeline: Pipeline, name: str) -> tuple[list[float], list[float]]:
    """One split's own mean and std: per channel of the pixels, or per feature of the rows."""
    images = pipeline.data.split(name).images
    if pipeline.kind == "features":
        rows = images.double()
        return rows.mean(0).tolist(), rows.std(0).tolist()
    return pixel_mean_std(images, pipeline.data.value_range)


@applies_to("image", "features")
def normalisation_stats_source(pipeline: Pipeline, exact: float = 1e-4) -> CheckResult:
    """The normalisation stats must come from the train split, never from val or test.

    Reads the mean/std the batches actually apply and compares them with each split's own stats.
    Stats computed on a split match it to float precision, which rounded published constants don't.
    """
    mean, std, fit_error = _effective_norm(pipeline)
    if not all(math.isfinite(v) for v in mean + std) or fit_error > 0.05:
        return not_applicable("normalisation_stats_source", STAGE,
                           "the batches are not an affine map of the raw pixels (augmentation or a learned "
                           "preprocessing?), so the stats they use cannot be read off; nothing to compare.")
    distances = {}
    for name in SPLITS:
        ms, ss = _split_stats(pipeline, name)
        distances[name] = max(abs(a - m) / s + abs(b - s) / s for a, b, m, s in zip(mean, std, ms, ss) if s > 0)
    closest = min(distances, key=distances.get)
    details = {"applied_mean": mean, "applied_std": std, "distance_to_split_stats": distances}
    if closest != "train" and distances[closest] < exact and distances[closest] < distances["train"]:
        # shown as the rule a PASS keeps (held-out stats at least `exact` away), which this one breaks
        return CheckResult("normalisation_stats_source", STAGE, Verdict.FAIL, distances[closest], exact, ">=",
                           f"the batches are normalised with mean {_listed(mean)}, std {_listed(std)}: exactly the {closest} "
                           f"split's stats (distance {distances[closest]:.1e}), not train's (distance "
                           f"{distances['train']:.1e}). Normalisation stats computed on the {closest} set leak it "
                           "into preprocessing: compute mean/std on the train split only.", details=details)
    held_out = min(distances["val"], distances["test"])
    ok = (f"the batches use mean {_listed(mean)}, std {_listed(std)}; nearest to the {closest} split's stats "
          f"(relative distance {distances[closest]:.1e}), and no exact copy of val or test stats (nearest held-out "
          f"split at {held_out:.1e} >= {exact:g}).")
    return CheckResult("normalisation_stats_source", STAGE, Verdict.PASS, held_out, exact, ">=", ok, details=details)


@applies_to("image", "features")
def input_normalisation(pipeline: Pipeline, std_range: tuple[float, float] = (0.5, 2.0),
                        max_abs_mean: float = 1.0, n_examples: int = 1024) -> CheckResult:
    """Mean and std of the normalised train batches, exactly what the net is fed.

    Catches: inputs never normalised (raw 0..255, or the declared value range), normalised twice, or
    with the wrong stats.
    """
    x, _, _ = stacked(pipeline, "train", n_examples)
    x = x.float()
    mean, std, top = x.mean().item(), x.std().item(), x.abs().max().item()
    low, high = std_range
    details = {"mean": mean, "std": std, "max_abs": top}
    figure = Figure("histogram", "values the net sees (normalised train batch)",
                    {"values": x.flatten()[:200_000].cpu().numpy(), "xlabel": "input value"})
    # Each criterion shows its own number, so the shown comparison is the one that decided.
    if top > 50:
        value, threshold, comparison = top, 50.0, "<="
        low_raw, high_raw = pipeline.data.value_range
        why = (f"inputs look un-normalized (max {top:.1f}): did you forget ToTensor/Normalize? The net sees raw "
               f"{low_raw:g}..{high_raw:g} pixels, so the logits and gradients are ~{top:.0f}x too large.")
    elif std > high:
        value, threshold, comparison = std, high, "<="
        why = (f"inputs have std {std:.3f} (expected about 1, allowed {low}..{high}) and mean {mean:.3f}: normalised "
               "twice, or divided by the wrong std. Apply Normalize(mean, std) once, with train-split stats.")
    elif std < low:
        value, threshold, comparison = std, low, ">="
        why = (f"inputs have std {std:.3f} (expected about 1, allowed {low}..{high}) and range up to {top:.2f}: "
               "scaled but not standardised (ToTensor without Normalize?) or normalised with the wrong stats.")
    elif abs(mean) > max_abs_mean:
        value, threshold, comparison = abs(mean), max_abs_mean, "<="
        why = (f"inputs have mean {mean:.3f} (expected about 0, allowed |mean| <= {max_abs_mean}): the mean was "
               "not subtracted, or subtracted with the wrong stats.")
    else:
        return CheckResult("input_normalisation", STAGE, Verdict.PASS, std, high, "<=",
                           f"the net sees mean {mean:.3f}, std {std:.3f}, max |x| {top:.2f}: standardised "
                           f"(std within {low}..{high}, |mean| <= {max_abs_mean}).", figures=[figure], details=details)
    return CheckResult("input_normalisation", STAGE, Verdict.FAIL, value, threshold, comparison, why,
                       figures=[figure], details=details)


@applies_to("image", "features")
def target_leak(pipeline: Pipeline, max_single_feature_r2: float = 0.9, n_examples: int = 2048,
                max_table_feature_r2: float = 0.99) -> CheckResult:
    """No single input feature may predict the label almost perfectly ("the target leaks into the input").

    For each feature of the batches the net sees, the correlation ratio eta^2 = between-class
    variance / total variance says how much of it the label explains. On real images no single
    pixel comes close to 1; a pixel that encodes the label does. A table's columns are chosen for
    what they say, and one can honestly explain most of the label (iris's petal length: 94%), so for
    feature vectors the limit is `max_table_feature_r2`: only a near-copy of the label is flagged.
    """
    if pipeline.kind == "features":
        max_single_feature_r2 = max(max_single_feature_r2, max_table_feature_r2)
    x, y, _ = stacked(pipeline, "train", n_examples)
    in_range = (y >= 0) & (y < pipeline.num_classes)  # labels out of range are integrity's finding, not a crash here
    x, y = x[in_range], y[in_range]
    if len(y) < 2:
        return CheckResult("target_leak", STAGE, Verdict.NA, None, None, "",
                           f"fewer than 2 train labels lie in [0, {pipeline.num_classes}); see integrity.")
    features = x.reshape(len(x), -1).double()
    total = features.var(dim=0, unbiased=False)
    class_means = torch.zeros(pipeline.num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    class_means.index_add_(0, y, features)
    counts = torch.bincount(y, minlength=pipeline.num_classes).to(features)
    class_means /= counts.clamp(min=1)[:, None]
    between = ((class_means - features.mean(0)) ** 2 * counts[:, None]).sum(0) / len(y)  # absent classes weigh 0
    eta2 = torch.where(total > 1e-12, between / total, torch.zeros_like(total))
    best = int(eta2.argmax())
    value = eta2[best].item()
    where = f"feature {best}"
    if x.dim() == 4 and x[0].shape == pipeline.data.train.images[0].shape:  # images as (C, H, W): name the pixel
        channels, height, width = x.shape[1:]
        channel, row, col = best // (height * width), best // width % height, best % width
        where = f"pixel (row {row}, col {col}" + (f", channel {channel})" if channels > 1 else ")")
    ok = (f"no single input feature explains the label: the most informative, {where}, explains "
          f"{value:.1%} of its variance by class (limit {max_single_feature_r2:.0%}).")
    fail = (f"the target leaks into the input: {where} alone explains {value:.1%} of its variance by the label "
            f"(limit {max_single_feature_r2:.0%}). A label (or something derived from it) is written into the "
            "inputs, e.g. an index/ID column, a column computed from the target, or a marker pixel; the model "
            "will learn the shortcut.")
    return measured("target_leak", STAGE, value, max_single_feature_r2, "<=", ok, fail,
                    details={"feature": best, "eta_squared": value})

