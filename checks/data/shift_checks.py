"""Stage `data`: does every split come from the same distribution? Adversarial validation.

A split that went through other preprocessing than the rest (brightened, inverted, blurred, noised,
gamma-changed, JPEG-compressed, a normalisation baked into its pixels) still carries labels that
agree with its images, so the label checks pass it, and a model trained on train is then graded on
images it never learnt to read. Such a shift shows up as a *classifier that can tell the splits
apart*: a ridge probe on cheap per-image encoding statistics (a thumbnail, per-channel intensity,
contrast, edge energy, histogram, quantisation) is fit to tell train images from val (and from
test) images, and scored on held-out folds as a ROC AUC. Splits drawn from one distribution give
~0.5. The images compared are class-matched (as many of each class on both sides), so a different
class mix (class_balance's finding) or different labels do not count as a shift.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from checks.measure.folds import content_folds
from checks.engine.result import CheckResult, Figure, measured, not_applicable
from recipe.data import unit_pixels
from recipe.pipeline import Pipeline

STAGE = "data"
THUMBNAIL = 8  # an 8x8 thumbnail per channel: where the ink/light is, not the details of one image


def encoding_features(images: torch.Tensor, value_range: tuple[float, float]) -> tuple[torch.Tensor, list[str]]:
    """(N, F) float64 per-image statistics of how the pixels are encoded, and the F feature names.

    Per channel: a thumbnail; mean and std (brightness, contrast); mean |first difference| (edges:
    blur lowers it, noise raises it) and |second difference| (fine detail, noise); a 16-bin
    histogram and the shares of pixels at the range's two ends (gamma, inversion, clipping, JPEG
    ringing on a flat background); the shares of even, multiple-of-4 and multiple-of-8 levels and
    the number of distinct levels (quantisation, bit depth). Across channels: colourfulness.
    """
    n, channels, height, width = images.shape
    x = unit_pixels(images, value_range).clamp_(0, 1)  # (N, C, H, W) in [0, 1]
    size = (min(THUMBNAIL, height), min(THUMBNAIL, width))
    columns: list[torch.Tensor] = [F.adaptive_avg_pool2d(x, size).reshape(n, -1)]
    names = [f"thumbnail cell ({r},{c}) ch{k}" for k in range(channels) for r in range(size[0]) for c in range(size[1])]

    def add(values: torch.Tensor, name: str) -> None:  # values (N, C): one feature per channel
        columns.append(values)
        names.extend(f"{name} ch{k}" for k in range(channels))

    add(x.mean((2, 3)), "mean intensity")
    add(x.std((2, 3)), "contrast (pixel std)")
    add(_mean_abs_diff(x, 1), "edge strength (mean |first difference|)")
    add(_mean_abs_diff(x, 2), "fine detail/noise (mean |second difference|)")
    levels = (x * 255).round_().long()  # (N, C, H, W) in 0..255, whatever the declared range
    offsets = (torch.arange(n * channels, device=x.device) * 256).reshape(n, channels, 1, 1)
    counts = torch.bincount((levels + offsets).flatten(), minlength=n * channels * 256)
    histogram = counts.reshape(n, channels, 256).double() / (height * width)  # (N, C, 256) shares
    for b, share in enumerate(histogram.reshape(n, channels, 16, 16).sum(-1).unbind(-1)):
        add(share, f"share of pixels in intensity bin {b}/16")
    add(histogram[..., 0], "share of pixels at the lowest level")
    add(histogram[..., 255], "share of pixels at the highest level")
    for step in (2, 4, 8):
        add(histogram[..., step::step].sum(-1), f"share of levels that are multiples of {step}")
    add((histogram > 0).sum(-1) / 256.0, "distinct levels used")
    if channels > 1:
        columns.append((x - x.mean(1, keepdim=True)).abs().mean((1, 2, 3))[:, None])
        names.append("colourfulness (mean |channel - grey|)")
    return torch.cat([c.to(torch.float64) for c in columns], dim=1), names


def _mean_abs_diff(x: torch.Tensor, order: int) -> torch.Tensor:
    """(N, C): mean absolute `order`-th difference along rows and columns (0 for a dimension too short)."""
    total = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    for dim in (2, 3):
        if x.shape[dim] > order:
            total += torch.diff(x, n=order, dim=dim).abs().mean((2, 3))
    return total


def class_matched_sample(labels_a: torch.Tensor, labels_b: torch.Tensor, num_classes: int, per_side: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in a and in b holding the same number of images of every class (up to `per_side` each)."""
    labels_a, labels_b = labels_a.cpu(), labels_b.cpu()
    quota = max(per_side // max(num_classes, 1), 1)
    picked_a, picked_b = [], []
    for c in range(num_classes):
        in_a, in_b = torch.nonzero(labels_a == c).flatten(), torch.nonzero(labels_b == c).flatten()
        k = min(len(in_a), len(in_b), quota)
        picked_a.append(in_a[torch.randperm(len(in_a), generator=generator)[:k]])
        picked_b.append(in_b[torch.randperm(len(in_b), generator=generator)[:k]])
    return torch.cat(picked_a), torch.cat(picked_b)


def held_out_auc(features: torch.Tensor, is_other: torch.Tensor, folds: torch.Tensor, ridge: float = 10.0
                 ) -> tuple[float, torch.Tensor]:
    """ROC AUC of a ridge probe telling `is_other` from the rest, each example scored by the probe fit
    on the other folds; and the out-of-fold scores."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = torch.cat([(features - mean) / std, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    target = is_other.to(x.dtype) * 2 - 1
    scores = torch.empty(len(x), dtype=x.dtype)
    eye = ridge * torch.eye(x.shape[1], dtype=x.dtype)
    for fold in torch.unique(folds).tolist():
        held, fit = folds == fold, folds != fold
        weights = torch.linalg.solve(x[fit].T @ x[fit] + eye, x[fit].T @ target[fit])
        scores[held] = x[held] @ weights
    return auc(scores, is_other), scores


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Mann-Whitney ROC AUC: the chance a random positive scores above a random negative (ties count half)."""
    values, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    upper = counts.cumsum(0).to(torch.float64)
    ranks = (upper - (counts - 1) / 2.0)[inverse]  # the average rank of each group of tied scores
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def _intensity_table(pipeline: Pipeline, samples: dict[str, torch.Tensor]) -> list[dict]:
    """Per split, per channel: the mean and std of the sampled pixels in [0, 1]."""
    rows = []
    for name, images in samples.items():
        x = unit_pixels(images, pipeline.data.value_range, torch.float64)
        for c in range(x.shape[1]):
            rows.append({"split": name, "channel": c, "mean": x[:, c].mean().item(), "std": x[:, c].std().item(),
                         "images": len(images)})
    return rows


def _described(rows: list[dict]) -> str:
    by_split: dict[str, list[str]] = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(f"{row['mean']:.3f}/{row['std']:.3f}")
    return "; ".join(f"{name} {', '.join(values)}" for name, values in by_split.items())


def split_shift(pipeline: Pipeline, max_auc: float = 0.7, z: float = 5.0, warn_auc: float = 0.6, warn_z: float = 3.0,
                per_side: int = 2000, min_per_side: int = 50, folds: int = 4) -> CheckResult:
    """A probe must not tell train images from val images, nor from test images: held-out ROC AUC at
    most the larger of `max_auc` and 0.5 + `z` standard errors of a chance AUC with these sample sizes
    (WARN above the larger of `warn_auc` and 0.5 + `warn_z` standard errors: a mild shift).

    Measured on `per_side` class-matched images per side (fast at any data size). Clean splits
    measure 0.45-0.53 (sample, Fashion-MNIST, 3-channel shapes); a brightened, blurred, noised,
    inverted, posterised or JPEG-compressed split 0.9-1.0, a gamma of 0.9 0.62-0.72. Folds are drawn
    by image hash, so identical images share a fold and a repeated image is never scored by a probe
    that saw its copy.
    """
    data = pipeline.data
    generator = torch.Generator().manual_seed(pipeline.config.seed)
    # Train read as one draw of its own random transform (recipe/read_once.py) differs from val and test by
    # design (a resized crop smooths the noise a probe reads): then val is the reference, compared with test.
    augmented = ("train", "random transform") in data.read_once
    base, others = ("val", ("test",)) if augmented else ("train", ("val", "test"))
    reference = data.split(base)
    pairs, samples = {}, {}
    for other in others:
        a, b = class_matched_sample(reference.labels, data.split(other).labels, data.num_classes, per_side, generator)
        if min(len(a), len(b)) < min_per_side:
            continue
        pairs[other] = (reference.images[a.to(reference.images.device)].cpu(),
                        data.split(other).images[b.to(data.split(other).images.device)].cpu())
        samples.setdefault(base, pairs[other][0])
        samples[other] = pairs[other][1]
    if not pairs:
        return not_applicable("split_shift", STAGE, f"too few images to compare the splits' distributions (need "
                                                     f"{min_per_side} of matching classes on each side)" +
                              (" (train, read as one draw of its random transform, is left out)" if augmented else ""))
    measurements = {}
    for other, (train_images, other_images) in pairs.items():
        images = torch.cat([train_images, other_images])
        is_other = torch.cat([torch.zeros(len(train_images), dtype=torch.bool),
                              torch.ones(len(other_images), dtype=torch.bool)])
        features, names = encoding_features(images, data.value_range)
        fold = content_folds(images, folds)
        score, _ = held_out_auc(features, is_other, fold)
        n1, n2 = len(train_images), len(other_images)
        standard_error = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
        measurements[other] = {"auc": score, "threshold": max(max_auc, 0.5 + z * standard_error),
                               "warn_threshold": max(warn_auc, 0.5 + warn_z * standard_error),
                               "compared": n1, "telling_features": _telling_features(features, is_other, names)}
    worst = max(measurements, key=lambda s: measurements[s]["auc"] - measurements[s]["threshold"])
    value, threshold, warn = (measurements[worst][k] for k in ("auc", "threshold", "warn_threshold"))
    table = _intensity_table(pipeline, samples)
    details = {"auc": {s: m["auc"] for s, m in measurements.items()},
               "compared_per_side": {s: m["compared"] for s, m in measurements.items()},
               "threshold": {s: m["threshold"] for s, m in measurements.items()},
               "telling_features": {s: m["telling_features"] for s, m in measurements.items()},
               "intensity": table}
    said = ", ".join(f"{base} vs {s} {m['auc']:.3f} ({m['compared']} class-matched images a side)"
                     for s, m in measurements.items())
    if augmented:
        said += " (train is left out: it was read as one draw of its own random transform, which val and test lack)"
    stats = f"per-split pixel mean/std per channel: {_described(table)}"
    ok = (f"a probe on per-image encoding statistics cannot tell the splits apart: held-out ROC AUC {said} "
          f"(chance 0.5, limit {threshold:.3f}); {stats}.")
    shifted = [s for s, m in measurements.items() if m["auc"] > m["threshold"]]
    # both pairs shifted: train alone differs, or val and test were preprocessed together (an eval transform)
    odd = "train" if len(shifted) == 2 else shifted[0] if shifted else worst
    which = ("train and the held-out splits come from different distributions (train alone, or val and test "
             "together, were preprocessed differently)" if len(shifted) == 2 else
             f"the {odd} split comes from a different distribution")
    clues = "; ".join(f"{f['feature']}: {base} {f['train']:.3g} vs {worst} {f['other']:.3g}"
                      for f in measurements[worst]["telling_features"][:3])
    fail = (f"{which}: a probe tells {base} images from {worst} images "
            f"(held-out ROC AUC {said}; chance 0.5, limit {threshold:.3f}). What differs most: {clues}; {stats}. "
            "Some images were preprocessed or encoded differently (brightness/contrast or gamma changed, "
            "inverted, blurred or resized, noised, JPEG-compressed, a normalisation or colour conversion baked into "
            "the pixels) or collected elsewhere: a model trained on train is graded on images it never learnt to "
            "read. Apply the same decoding and preprocessing to every split.")
    shown = torch.linspace(0, len(pairs[worst][0]) - 1, 8).long()  # spread over the classes (sorted by class)
    figures = [Figure("bars", "pixel mean and std per channel, per split (sampled images, in [0, 1])", {
                   "categories": [f"{k} ch{c}" for k in ("mean", "std") for c in range(samples[base].shape[1])],
                   "series": {name: [r[k] for k in ("mean", "std") for r in table if r["split"] == name]
                              for name in samples}}),
               Figure("images", f"{base} (first row) and {worst} (second row) images of the same classes", {
                   "images": _viewable(torch.cat([side[shown] for side in pairs[worst]]), data.value_range),
                   "ncols": 8,
                   "captions": [base] * 8 + [worst] * 8})]
    mild = (f"a probe tells {base} images from {worst} images a little better than chance (held-out ROC AUC {said}; "
            f"WARN above {warn:.3f}, FAIL above {threshold:.3f}). What differs most: {clues}; {stats}. A mild shift "
            "(a small gamma or contrast change, another scanner or camera) or a quirk of this sample: worth a look "
            "at the images below, not a blocker.")
    return measured("split_shift", STAGE, value, threshold, "<=", ok, fail, warn_threshold=warn, warn_message=mild,
                    figures=figures, details=details)


def _viewable(images: torch.Tensor, value_range: tuple[float, float]):
    """uint8 pixels as they are, float pixels mapped to [0, 1] by their declared range (what figures draw)."""
    return (images if images.dtype == torch.uint8 else unit_pixels(images, value_range).clamp_(0, 1)).numpy()


def _telling_features(features: torch.Tensor, is_other: torch.Tensor, names: list[str], top: int = 5) -> list[dict]:
    """The features whose means differ most between the two sides, in pooled standard deviations."""
    a, b = features[~is_other], features[is_other]
    pooled = ((a.var(0) + b.var(0)) / 2).sqrt().clamp_min(1e-9)
    effect = (b.mean(0) - a.mean(0)) / pooled
    order = effect.abs().argsort(descending=True)[:top]
    return [{"feature": names[i], "train": a[:, i].mean().item(), "other": b[:, i].mean().item(),
             "effect_size": effect[i].item()} for i in order.tolist()]
