"""Does what the model learned still apply when the image moves? Test accuracy under pixel shifts.

A linear classifier matches one fixed template per class pixel by pixel, so moving the digit a few
pixels puts its ink on other template pixels. Measuring it answers the lab's "Does this feature
always apply? Will it work for other images?" with a number instead of a guess.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from checks.report.sections import SHIFTS
from checks.result import Figure

if TYPE_CHECKING:
    from recipe.pipeline import Pipeline


def shift_image(x: torch.Tensor, down: int, right: int, fill: float) -> torch.Tensor:
    """`x` (..., H, W) moved `down` rows and `right` columns (negative: up/left); vacated pixels get `fill`."""
    height, width = x.shape[-2:]
    out = torch.full_like(x, fill)
    out[..., max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        x[..., max(-down, 0):height - max(down, 0), max(-right, 0):width - max(right, 0)]
    return out


@torch.no_grad()
def shift_robustness(model: nn.Module, pipeline: "Pipeline", max_shift: int = 4,
                     max_examples: int = 2000) -> tuple[list[dict], Figure | None]:
    """Accuracy on up to `max_examples` test images moved -max_shift..max_shift pixels each way.

    The shift is applied to the batches exactly as the model receives them, with the vacated pixels
    set to normalised background (raw 0). Returns ([] , None) when the inputs are not images of the
    data's (H, W) in their last two dimensions or flattened.
    """
    image_shape = tuple(pipeline.data.test.images.shape[1:])
    if len(image_shape) != 2:
        return [], None
    background = (0.0 - pipeline.norm.mean) / pipeline.norm.std
    batches, count = [], 0
    for batch in pipeline.batches("test", shuffle=False, augment=False):
        if batch.x[0].numel() % (image_shape[0] * image_shape[1]):
            return [], None
        batches.append(batch)
        count += len(batch.y)
        if count >= max_examples:
            break
    was_training = model.training
    model.eval()
    shifts = list(range(-max_shift, max_shift + 1))
    accuracy = {"horizontal": [], "vertical": []}
    for direction, accuracies in accuracy.items():
        for k in shifts:
            down, right = (0, k) if direction == "horizontal" else (k, 0)
            correct = sum(_correct(model, batch, image_shape, down, right, background) for batch in batches)
            accuracies.append(correct / count)
    model.train(was_training)
    rows = [{"shift_px": k, "horizontal": h, "vertical": v}
            for k, h, v in zip(shifts, accuracy["horizontal"], accuracy["vertical"])]
    figure = Figure("lines", SHIFTS, {
        "series": {"moved right (+) / left (-)": accuracy["horizontal"],
                   "moved down (+) / up (-)": accuracy["vertical"]},
        "x": shifts, "xlabel": "shift in pixels", "ylabel": f"test accuracy ({count} images)",
        "hline": 1.0 / pipeline.num_classes, "hline_label": "chance"})
    return rows, figure


def _correct(model: nn.Module, batch, image_shape: tuple[int, int], down: int, right: int,
             background: float) -> int:
    x = batch.x.reshape(len(batch.x), -1, *image_shape)  # (B, channels, H, W), whatever the model's layout
    moved = shift_image(x, down, right, background).reshape(batch.x.shape)
    return int((model(moved).argmax(1) == batch.y).sum())
