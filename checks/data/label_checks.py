"""Stage `data`: are the labels trustworthy? Three checks, each judged against a null on the same data.

- `label_signal`: the labels must tell the images apart better than the same labels shuffled do (the
  class-mean images, and a probe's held-out accuracy, against 20 permutations of the train labels).
- `label_agreement`: held-out train labels and val + test labels come from the same labelling
  process, so the probe (checks/measure/label_probe.py) should miss equally often on both; the gap is judged
  against the gaps that shuffling which split each scored image belongs to gives. Labels corrupted in
  one split only (annotation noise, a label map applied to train but not to test) open a gap.
- `label_noise`: where the probe is most confident it is nearly always right on clean labels, so
  the share of its most confident held-out train images whose label disagrees estimates the labels
  flipped at random, even the same way in every split. Only a probe that is far better than chance
  can say so; a weaker one is said to be too weak (WARN), never taken as evidence.
A systematic confusion present in every split (one annotator always writing 9 for 4) passes all three.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from checks.data.label_figures import class_figures, confusion_figure, disagreements_figure, per_class_figure
from checks.measure.label_probe import flipped, held_out_probe, unseen, z_score
from checks.engine.kinds import applies_to, worded_for_kind
from checks.engine.result import CheckResult, Verdict, measured, not_applicable
from recipe.data import Split
from recipe.pipeline import Pipeline

STAGE = "data"


def _explained_share(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Between-class share of the pixel variance, for each column of `labels` (N, k) at once: (k,)."""
    onehot = F.one_hot(labels.long(), num_classes).to(pixels.dtype)  # (N, k, C)
    counts = onehot.sum(0)  # (k, C)
    sums = (onehot.flatten(1).T @ pixels).reshape(*counts.shape, -1)  # (k, C, D)
    centred = sums - counts[..., None] * pixels.mean(0)  # n_c (mean_c - mean)
    between = (centred ** 2 / counts.clamp(min=1)[..., None]).sum((1, 2))
    total = ((pixels - pixels.mean(0)) ** 2).sum()
    return between / total if total > 0 else torch.zeros_like(between)


@applies_to("image", "features")
@worded_for_kind
def label_signal(pipeline: Pipeline, min_z: float = 3.0, per_class: int = 8, max_examples: int = 5_000,
                 permutations: int = 20, min_scored: int = 50) -> CheckResult:
    """The labels must carry information about the images: the class-mean images must differ more, or a
    probe must predict held-out labels better, than with the train labels permuted.

    Each statistic is turned into a z against `permutations` permutations of the train labels; FAILs
    when neither reaches `min_z`: the labels tell the images apart no better than shuffled labels do, as
    when the label column was re-ordered apart from the images (no loader check can see that: the
    source itself is wrong). Shows samples per class, the mean image per class and the pixel histogram.
    """
    data = pipeline.data
    train = Split(data.train.images[:max_examples], data.train.labels[:max_examples])
    names, num_classes = data.class_names, data.num_classes
    pixels = train.images.reshape(len(train), -1).float()
    table = pipeline.kind == "features"
    if table:  # each column in its own units (an area of 2500 beside a ratio of 0.1): weigh them alike
        pixels = (pixels - pixels.mean(0)) / pixels.std(0).clamp_min(1e-12)
    values, examples, means = ("standardised feature", "rows", "class means") if table else \
        ("pixel", "images", "mean images")
    labels = train.labels.long().clamp(0, num_classes - 1)  # out of range: integrity's finding, not a crash here
    generator = torch.Generator().manual_seed(pipeline.config.seed)
    shuffled = torch.stack([labels[torch.randperm(len(labels), generator=generator)] for _ in range(permutations)], 1)
    shares = _explained_share(pixels, torch.cat([labels[:, None], shuffled], 1), num_classes)
    explained, means_z = shares[0].item(), z_score(shares[0].item(), shares[1:])
    present = [c for c in range(num_classes) if (labels == c).any()]
    class_means = torch.stack([pixels[labels == c].mean(0) for c in present])
    figures = class_figures(train, names, class_means, present, data.value_range, per_class)
    probe, _ = held_out_probe(pipeline)
    probe_z, accuracy, null_accuracy = -math.inf, math.nan, math.nan
    if probe is not None and len(probe.train) >= min_scored:
        accuracy = (probe.scores().argmax(1) == probe.train.labels).double().mean().item()
        null = probe.null_accuracies
        probe_z, null_accuracy = z_score(accuracy, null), null.mean().item()
    value = max(means_z, probe_z)
    details = {"explained_share": explained, "explained_share_null_mean": shares[1:].mean().item(),
               "class_means_z": means_z, "probe_accuracy": accuracy, "probe_null_accuracy": null_accuracy,
               "probe_z": probe_z if math.isfinite(probe_z) else None, "permutations": permutations,
               "examples_used": len(train), "image_shape": list(train.images.shape[1:])}
    probe_said = (f"a probe predicts {accuracy:.1%} of held-out train labels ({null_accuracy:.1%} with them permuted, "
                  f"z = {probe_z:.1f})" if math.isfinite(probe_z) else "too few held-out train images to score a probe")
    said = (f"the class labels explain {explained:.2%} of the {values} variance ({shares[1:].mean().item():.2%} with the "
            f"labels permuted, z = {means_z:.1f} against {permutations} permutations); {probe_said}")
    ok = (f"{said}: the labels carry information about the {examples} (need z >= {min_z:g} on either). Look at the "
          f"{means}: they show what tells the classes apart.")
    fail = (f"{said}: neither reaches z = {min_z:g}, so the labels tell the {examples} apart no better than "
            f"shuffled labels do. The labels were shuffled or permuted when the data set was built, or {examples} "
            "and labels come from different files.")
    return measured("label_signal", STAGE, value, min_z, ">=", ok, fail, figures=figures, details=details)


@applies_to("image", "features")
@worded_for_kind
def label_agreement(pipeline: Pipeline, min_gap: float = 0.04, z: float = 4.0, max_scored: int = 5_000,
                    min_scored: int = 100, permutations: int = 200, confident_share: float = 0.2) -> CheckResult:
    """The probe's error on held-out train labels and on val + test labels must match.

    FAILs when they differ by more than `min_gap` and by more than `z` standard deviations of the gaps
    that `permutations` random reassignments of the scored images to the two sides give (so sampling
    noise, which is larger on small or hard data, does not trip it). Judged on all scored images and on
    the `confident_share` the probe is most sure of: a weak probe's misses on hard images hide a
    corruption that its confident answers still show. N/A when the probe predicts the
    held-out train labels no better than when fit on permuted labels (label_signal's finding).
    """
    data = pipeline.data
    probe, generator = held_out_probe(pipeline)
    reference_images = torch.cat([data.val.images.cpu(), data.test.images.cpu()])
    reference_labels = torch.cat([data.val.labels.cpu(), data.test.labels.cpu()])
    keep = torch.randperm(len(reference_labels), generator=generator)[:max_scored]
    reference = Split(reference_images[keep], reference_labels[keep])
    if probe is None or len(reference) < min_scored:
        return not_applicable("label_agreement", STAGE,
                              f"too few examples to compare label quality ({len(data.train)} train, "
                              f"{len(reference)} val + test; need 15 train examples a class to fit the probe and "
                              f"{min_scored} of each scored)")
    reference = unseen(reference, probe.train.images)  # leaked copies would flatter the probe (train: cross-fit by content)
    scores = {"train": probe.scores(), "reference": probe.score_other(reference.images)}
    wrong = {"train": scores["train"].argmax(1) != probe.train.labels,
             "reference": scores["reference"].argmax(1) != reference.labels}
    accuracy = 1 - wrong["train"].double().mean().item()
    probe_z = z_score(accuracy, probe.null_accuracies)
    if probe_z < 3:
        return not_applicable("label_agreement", STAGE,
                              f"the probe predicts {accuracy:.1%} of held-out train labels, no better than when fit on "
                              f"permuted labels (z = {probe_z:.1f}): it learned nothing to compare the splits with "
                              "(see label_signal)")
    margins = {side: _margin(side_scores) for side, side_scores in scores.items()}
    cut = torch.cat(list(margins.values())).quantile(1 - confident_share).item()  # one confidence cut for both sides
    views = {"all": _gap_against_null(wrong["train"], wrong["reference"], permutations, generator),
             "confident": _gap_against_null(wrong["train"][margins["train"] >= cut],
                                            wrong["reference"][margins["reference"] >= cut], permutations, generator)}
    limits = {view: max(min_gap, z * spread) for view, (_, _, _, spread) in views.items()}
    shown = max(views, key=lambda view: abs(views[view][0]) / limits[view])  # the view nearest its limit
    gap, train_error, reference_error, spread = views[shown]
    threshold, gap_z = limits[shown], abs(gap) / max(spread, 1e-12)
    chance = 1.0 - 1.0 / data.num_classes
    figures = [per_class_figure(list(data.class_names), wrong, probe.train, reference)]
    details = {"train_held_out_error": train_error, "val_test_error": reference_error, "gap": gap, "view": shown,
               "null_gap_std": spread, "gap_z": gap_z, "permutations": permutations, "fit_examples": probe.fit_size,
               "train_scored": len(probe.train), "val_test_scored": len(reference), "probe_z": probe_z,
               "views": {view: {"gap": g, "train_error": t, "val_test_error": r, "null_gap_std": sd, "limit": limits[view]}
                         for view, (g, t, r, sd) in views.items()}}
    where = ("" if shown == "all" else
             f" on the {confident_share:.0%} of scored images the probe is most sure of (where a weak probe's answers mean most)")
    said = (f"a probe fit on {probe.fit_size} train examples misses {train_error:.1%} of held-out train labels and "
            f"{reference_error:.1%} of val + test labels{where} (gap {gap:+.1%}, z = {gap_z:.1f} against {permutations} "
            f"reassignments of the {len(probe.train)} + {len(reference)} scored images to the two sides; allowed "
            f"{threshold:.1%}, the larger of {min_gap:.0%} and {z:g} null standard deviations)")
    ok = f"{said}: train labels agree with their images as well as the held-out labels do."
    if gap > 0:
        fail = (f"{said}: the train labels disagree with their images more often: roughly {min(1.0, gap / chance):.0%} "
                "of them look wrong. Train labels were corrupted (annotation noise, a label map or offset applied "
                "to train only), or train comes from another distribution than val/test. Look at the probe's "
                "most confident disagreements in label_noise's figures.")
    else:
        fail = (f"{said}: the val/test labels disagree with what train teaches, most in the classes with the "
                "tallest val + test bars below. The splits use different label maps (classes swapped or "
                "renumbered in one file), val/test hold classes train lacks, or val/test come from another "
                "distribution than train.")
    return measured("label_agreement", STAGE, abs(gap), threshold, "<=", ok, fail, figures=figures, details=details)


def _margin(scores: torch.Tensor) -> torch.Tensor:
    top_two = scores.topk(2, dim=1).values
    return top_two[:, 0] - top_two[:, 1]


def _gap_against_null(train_wrong: torch.Tensor, reference_wrong: torch.Tensor, permutations: int,
                      generator: torch.Generator) -> tuple[float, float, float, float]:
    """(train error - reference error, train error, reference error, the std of that gap when the pooled
    images are dealt to the two sides at random `permutations` times)."""
    if min(len(train_wrong), len(reference_wrong)) < 2:
        return 0.0, math.nan, math.nan, math.inf
    pooled = torch.cat([train_wrong, reference_wrong]).double()
    sides = torch.stack([torch.randperm(len(pooled), generator=generator) < len(train_wrong)
                         for _ in range(permutations)])  # (permutations, N): True = the train side
    null = (sides * pooled).sum(1) / len(train_wrong) - (~sides * pooled).sum(1) / len(reference_wrong)
    train_error, reference_error = train_wrong.double().mean().item(), reference_wrong.double().mean().item()
    return train_error - reference_error, train_error, reference_error, null.std().item()


def wilson_bounds(share: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a binomial share seen in `n` trials, `z` standard errors wide a side."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@applies_to("image", "features")
@worded_for_kind
def label_noise(pipeline: Pipeline, max_noise: float = 0.08, z: float = 3.0, confident_share: float = 0.2,
                min_confident: int = 30, min_kappa: float = 0.6, inject: float = 0.2) -> CheckResult:
    """The probe's most confident held-out train predictions must (nearly) all agree with their labels.

    Labels flipped at random disagree with a right prediction whatever the image, so the disagreeing
    share of the `confident_share` most confident predictions, times C/(C-1), estimates the flipped
    share. FAILs when that estimate is above `max_noise` by `z` standard errors (Wilson bound) and the
    probe is strong enough for its confidence to mean something: its held-out accuracy at least
    `min_kappa` of the way from its permutation null (chance) to 1. A weaker probe is also wrong where it
    is most confident, on clean labels of hard data: then a high estimate WARNs that it cannot tell.
    `inject` more flips, refit on the same features, show the scale: what noise would look like.
    """
    data = pipeline.data
    num_classes = data.num_classes
    probe, generator = held_out_probe(pipeline)
    if probe is None or num_classes < 2 or len(probe.train) * confident_share < min_confident:
        return not_applicable("label_noise", STAGE,
                              f"too few examples to judge label noise ({len(data.train)} train; "
                              f"need 15 a class to fit the probe and {min_confident} confident predictions to score)")
    labels, scores = probe.train.labels, probe.scores()
    predicted = scores.argmax(1)
    accuracy = (predicted == labels).double().mean().item()
    chance = probe.null_accuracies.mean().item()
    kappa = (accuracy - chance) / max(1 - chance, 1e-9)
    noise, n_confident = _confident_disagreement(scores, labels, confident_share)
    scale = num_classes / (num_classes - 1)  # labels re-drawn uniformly: (C-1)/C of them change
    estimate, (low, high) = noise * scale, (b * scale for b in wilson_bounds(noise, n_confident, z))
    more_flipped = flipped(labels, num_classes, inject, generator)
    injected, _ = _confident_disagreement(probe.scores(more_flipped), more_flipped, confident_share)
    details = {"noise_estimate": estimate, "noise_lower": low, "noise_upper": high, "confident_scored": n_confident,
               "probe_accuracy": accuracy, "probe_null_accuracy": chance, "kappa": kappa,
               f"noise_estimate_with_{inject:.0%}_more_flipped": injected * scale, "train_scored": len(labels)}
    names = list(data.class_names)
    figures = [confusion_figure(names, labels, predicted),
               disagreements_figure(names, scores, probe.train, data.value_range)]
    said = (f"the probe's {n_confident} most confident held-out train predictions disagree with {noise:.1%} of their "
            f"labels: about {estimate:.0%} of labels flipped at random ({low:.0%}..{high:.0%} at {z:g} standard "
            f"errors; limit {max_noise:.0%}). With {inject:.0%} more flipped, the same probe reads "
            f"{injected * scale:.0%}. It predicts {accuracy:.1%} of held-out train labels ({chance:.1%} when fit on "
            f"permuted labels: {kappa:.0%} of the way from chance to perfect)")
    if kappa < min_kappa:
        if low <= max_noise:
            return CheckResult("label_noise", STAGE, Verdict.PASS, low, max_noise, "<=",
                               f"{said}: even this weak probe's confident predictions agree with the labels.",
                               figures=figures, details=details)
        return CheckResult("label_noise", STAGE, Verdict.WARN, kappa, min_kappa, "<",
                           f"{said}. The probe is too weak to tell label noise from a hard task (it would need "
                           f"{min_kappa:.0%} of the way from chance): on hard data it is also wrong where it is most "
                           "confident. Not evidence either way; look at the images it rejects below.",
                           figures=figures, details=details)
    ok = f"{said}: the labels agree with the images wherever the probe is sure, as in cleanly labelled data."
    fail = (f"{said}: labels look flipped at random - images the probe reads without doubt carry other labels. "
            f"Roughly {estimate:.0%} of train labels may be wrong (noisy annotation, labels re-drawn or mixed up when "
            "the set was built). A model trains on them anyway; look at the images the probe rejects below.")
    return measured("label_noise", STAGE, low, max_noise, "<=", ok, fail, figures=figures, details=details)


def _confident_disagreement(scores: torch.Tensor, labels: torch.Tensor, share: float) -> tuple[float, int]:
    """(the share of the `share` most confident predictions, by top-two margin, that disagree with `labels`, how many)."""
    confident = _margin(scores).argsort(descending=True)[:max(1, int(share * len(scores)))]
    return (scores[confident].argmax(1) != labels[confident]).double().mean().item(), len(confident)
