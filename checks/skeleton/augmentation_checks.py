"""Stage `skeleton`, augmentation: does the optional augmentation keep every example's class?"""
from __future__ import annotations

import torch
from torch import nn

from checks.engine.result import CheckResult, Figure, measured, not_applicable
from checks.measure.sampling import denormalise, generator, stacked
from recipe.pipeline import Pipeline

STAGE = "skeleton"


def _reference_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """A small CNN: pooling makes it tolerant to the small shifts that label-preserving augmentations make."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveMaxPool2d(7),
                         nn.Flatten(), nn.Linear(16 * 49, num_classes))


def augmentation_consistency(pipeline: Pipeline, min_class_ratio: float = 0.35, steps: int = 200,
                             n_val: int = 1000) -> CheckResult:
    """Augmentation must keep the class: a reference classifier trained on clean images should still
    recognise the augmented ones, overall and for every class.

    Catches: flips or large rotations of digits (6 <-> 9, mirrored 3), crops that cut the object away.
    """
    if pipeline.augment is None and ("train", "random transform") in pipeline.data.read_once:
        return not_applicable("augmentation_consistency", STAGE,
                              "the train dataset's own random transform was read once (one draw per example): "
                              "an augmented image cannot be told from a clean one here. To have it checked, give "
                              "the checks the dataset without it and the transform as the pipeline's `augment`.")
    if pipeline.augment is None:
        return not_applicable("augmentation_consistency", STAGE,
                              "augmentation is off: nothing to check (the recipe's 'simplify' default).")
    x_train, y_train, _ = stacked(pipeline, "train", 8000)
    images = lambda x: x.float().reshape(len(x), -1, *pipeline.data.train.images.shape[-2:])
    torch.manual_seed(pipeline.config.seed)
    reference = _reference_cnn(images(x_train[:1]).shape[1], pipeline.num_classes).to(x_train.device)
    optimizer = torch.optim.Adam(reference.parameters(), lr=2e-3)
    draw = generator(pipeline, 17)
    for _ in range(steps):
        pick = torch.randint(0, len(y_train), (64,), generator=draw).to(y_train.device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(images(x_train[pick])), y_train[pick]).backward()
        optimizer.step()
    clean, y, _ = stacked(pipeline, "val", n_val, shuffle=False)
    torch.manual_seed(pipeline.config.seed + 1)
    augmented, _, _ = stacked(pipeline, "val", n_val, shuffle=False, augment=True)
    changed = (augmented.float() - clean.float()).flatten(1).abs().amax(1) > 1e-3
    with torch.no_grad():
        right_clean = reference(images(clean)).argmax(1) == y
        right_aug = reference(images(augmented)).argmax(1) == y
    names = pipeline.data.class_names
    rows, ratios = [], []
    for c in range(pipeline.num_classes):
        mask = (y == c) & changed
        if mask.sum() < 5:
            continue
        acc_clean = right_clean[mask].float().mean().item()
        acc_aug = right_aug[mask].float().mean().item()
        ratio = acc_aug / max(acc_clean, 1e-6)
        ratios.append((ratio, names[c]))
        rows.append({"class": names[c], "clean_accuracy": acc_clean, "augmented_accuracy": acc_aug, "ratio": ratio})
    pairs = Figure("images", "clean / augmented pairs (val)", {
        "images": torch.stack([denormalise(pipeline, clean[:8].float()), denormalise(pipeline, augmented[:8].float())],
                              1).reshape(16, *pipeline.data.train.images.shape[1:]).clamp(0, 1).cpu().numpy(),
        "captions": [f"{names[int(c)]} {kind}" for c in y[:8].tolist() for kind in ("clean", "aug")], "ncols": 8})
    if not ratios:
        return not_applicable("augmentation_consistency", STAGE,
                              "the augmentation changed (almost) no val image: it is effectively off.",
                              figures=[pairs])
    worst, worst_class = min(ratios)
    overall = right_aug[changed].float().mean().item() / max(right_clean[changed].float().mean().item(), 1e-6)
    ok = (f"augmented images keep their class: a reference CNN trained on clean images keeps {overall:.0%} of its "
          f"accuracy on augmented val images; the worst class, '{worst_class}', keeps {worst:.0%} "
          f"(limit {min_class_ratio:.0%}).")
    fail = (f"the augmentation changes the class: on augmented val images a reference CNN trained on clean images "
            f"keeps only {worst:.0%} of its accuracy on class '{worst_class}' (limit {min_class_ratio:.0%}; overall "
            f"{overall:.0%}). A flip or large rotation turns some classes into others (6 <-> 9, a mirrored 3) - use "
            "label-preserving transforms: small shifts and rotations, no flips for digits. If the transform really "
            "keeps the class for your data (a mirrored shoe is still a shoe), the reference has simply never seen "
            "such images: check the pairs figure and accept the risk knowingly.")
    return measured("augmentation_consistency", STAGE, worst, min_class_ratio, ">=", ok, fail,
                    figures=[pairs], details={"per_class": rows, "overall_ratio": overall})
