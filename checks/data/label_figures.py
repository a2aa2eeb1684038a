"""Figures of the label checks: per-class probe errors, the label-vs-probe matrix, the rejected images,
and the class-mean images (plain data: checks/report draws them)."""
from __future__ import annotations

import torch

from checks.engine.result import Figure
from recipe.data import Split, unit_pixels


def per_class_error(wrong: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1)
    return (torch.bincount(labels[wrong], minlength=num_classes) / counts).tolist()


def per_class_figure(names: list[str], wrong: dict[str, torch.Tensor], held: Split, reference: Split) -> Figure:
    num_classes = len(names)
    return Figure("bars", "linear-probe error per class: held-out train labels vs val + test labels", {
        "categories": names,
        "series": {"train (held out)": per_class_error(wrong["train"], held.labels.long(), num_classes),
                   "val + test": per_class_error(wrong["reference"], reference.labels.long(), num_classes)},
        "ylabel": "probe error"})


def confusion_figure(names: list[str], labels: torch.Tensor, predicted: torch.Tensor) -> Figure:
    num_classes = len(names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)  # (given label, probe's class)
    confusion.index_put_((labels.long(), predicted), torch.ones(len(predicted), dtype=torch.float64), accumulate=True)
    counts = confusion.sum(1, keepdim=True).clamp(min=1)
    return Figure("matrix", "held-out train images: given label (rows) vs the probe's class (columns), share of each row",
                  {"values": (confusion / counts).numpy(), "rows": names, "cols": names, "xlabel": "probe's class",
                   "ylabel": "given label"})


def disagreements_figure(names: list[str], scores: torch.Tensor, held: Split, value_range: tuple[float, float],
                         count: int = 16) -> Figure:
    """The held-out train images whose label the probe most confidently rejects."""
    labels = held.labels.long()
    margin = scores.max(1).values - scores.gather(1, labels[:, None]).squeeze(1)
    top = margin.argsort(descending=True)[:count]
    predicted = scores.argmax(1)
    if held.images.dim() == 2:  # feature vectors: no picture to show, so the rows' verdicts as text
        return Figure("text", f"the {len(top)} held-out train rows whose label the probe most confidently rejects", {
            "lines": [f"label {names[labels[i]]:>12} / probe {names[predicted[i]]:>12}   margin {margin[i]:.2f}"
                      for i in top.tolist()]})
    return Figure("images", f"the {len(top)} held-out train images whose label the probe most confidently rejects", {
        "images": unit_pixels(held.images[top], value_range).numpy(),  # [0, 1]
        "captions": [f"label {names[labels[i]]} / probe {names[predicted[i]]}" for i in top.tolist()]})


def class_figures(train: Split, names: tuple[str, ...], class_means: torch.Tensor, present: list[int],
                  value_range: tuple[float, float], per_class: int) -> list[Figure]:
    """Samples per class, the mean image per class, and the raw pixel histogram; for feature vectors, the
    mean of each feature per class (`class_means`, of the rows label_signal standardised)."""
    if train.images.dim() == 2:
        z = class_means
        return [Figure("matrix", "mean of each feature per class (train standard deviations from its mean)", {
            "values": z.float().cpu().numpy(), "rows": [names[c] for c in present],
            "cols": [str(d) for d in range(z.shape[1])], "xlabel": "feature", "ylabel": "class"})]
    grid, captions = [], []
    for c in present:
        members = torch.nonzero(train.labels == c).flatten()[:per_class]
        grid.extend(unit_pixels(train.images[members], value_range).cpu())  # [0, 1]
        captions.extend([names[c]] * len(members))
    low, high = value_range
    shape = tuple(train.images.shape[1:])
    return [
        Figure("images", f"{per_class} training examples per class", {"images": torch.stack(grid).numpy(),
                                                                      "captions": captions, "ncols": per_class}),
        Figure("images", "mean image per class", {"images": ((class_means - low) / (high - low)).reshape(-1, *shape)
                                                  .float().cpu().numpy(), "captions": [names[c] for c in present]}),
        Figure("histogram", "raw pixel values (2,000 train images)", {
            "values": train.images[:2000].flatten().float().cpu().numpy(), "bins": 64, "xlabel": "pixel value"}),
    ]
