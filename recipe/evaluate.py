"""Evaluation after training, as plain data for the report: test predictions, robustness to shifts,
and the weight templates of a model that is linear in the pixels.

This is where the trained model is run; the report only draws what this returns. Shifting answers
the lab's "Does this feature always apply? Will it work for other images?": a linear classifier
matches one fixed template per class pixel by pixel, so moving the image a few pixels puts its ink
on other template pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline


@dataclass
class Evaluation:
    y: torch.Tensor | None = None            # (N,) test labels, in split order
    probs: torch.Tensor | None = None        # (N, C) softmax of the test logits, in split order
    shifts: list[dict] = field(default_factory=list)  # [{"shift_px", "horizontal", "vertical"}]
    shift_count: int = 0                     # test images the shift accuracies are measured on
    templates: torch.Tensor | None = None    # (C, *image shape) when the model is one linear layer on pixels


def evaluate_trained(pipeline: Pipeline, fit_result) -> Evaluation:
    """Everything the report shows of a trained model; test is only run when `fit` reached it."""
    evaluation = Evaluation(templates=weight_templates(fit_result.model, pipeline))
    if fit_result.test is None:
        return evaluation
    evaluation.y, evaluation.probs = test_predictions(fit_result.model, pipeline)
    evaluation.shifts, evaluation.shift_count = shift_robustness(fit_result.model, pipeline)
    return evaluation


@torch.no_grad()
def test_predictions(model: nn.Module, pipeline: Pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, probs) for the whole test split in its stored order, on the CPU. For token sequences one row
    per scored position (target not padding), sequence by sequence: (N_tokens,) and (N_tokens, V)."""
    was_training = model.training
    model.eval()
    ys, probs, order = [], [], []
    for batch in pipeline.batches("test", shuffle=False, augment=False):
        probs.append(torch.softmax(forward_logits(model, batch.x).float(), dim=-1).cpu())  # (B, C) or (B, T, V)
        ys.append(batch.y.cpu())
        order.append(batch.idx.cpu())
    model.train(was_training)
    position = torch.cat(order).argsort()  # put rows back in split order, whatever the batch order
    y, p = torch.cat(ys)[position], torch.cat(probs)[position]
    if p.dim() == 3:  # next-token predictions: every scored position is one prediction
        pad_id = pipeline.data.pad_id
        keep = y != pad_id if pad_id is not None else torch.ones_like(y, dtype=torch.bool)
        y, p = y[keep], p[keep]
    return y, p


def shift_image(x: torch.Tensor, down: int, right: int, fill: float) -> torch.Tensor:
    """`x` (..., H, W) moved `down` rows and `right` columns (negative: up/left); vacated pixels get `fill`."""
    height, width = x.shape[-2:]
    out = torch.full_like(x, fill)
    out[..., max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        x[..., max(-down, 0):height - max(down, 0), max(-right, 0):width - max(right, 0)]
    return out


@torch.no_grad()
def shift_robustness(model: nn.Module, pipeline: Pipeline, max_shift: int = 4,
                     max_examples: int = 2000) -> tuple[list[dict], int]:
    """Accuracy on up to `max_examples` test images moved -max_shift..max_shift pixels each way.

    The shift is applied to the batches exactly as the model receives them, with the vacated pixels
    set to normalised background (the bottom of the declared value range: raw 0 for uint8). Returns
    ([], 0) when the inputs are not images of the data's (H, W) in their last two dimensions or flattened.
    """
    image_shape = tuple(pipeline.data.test.images.shape[-2:])
    if pipeline.data.test.images.dim() < 3:
        return [], 0
    background = (0.0 - pipeline.norm.mean) / pipeline.norm.std  # (C, 1, 1): pixel 0 of [0, 1] in every channel
    batches, count = [], 0
    for batch in pipeline.batches("test", shuffle=False, augment=False):
        if batch.x[0].numel() % (image_shape[0] * image_shape[1]):
            return [], 0
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
    return rows, count


def _correct(model: nn.Module, batch, image_shape: tuple[int, int], down: int, right: int,
             background: float) -> int:
    x = batch.x.reshape(len(batch.x), -1, *image_shape)  # (B, channels, H, W), whatever the model's layout
    moved = shift_image(x, down, right, 0.0)
    if background.shape[0] == x.shape[1]:  # vacated pixels become each channel's normalised background
        vacated = shift_image(torch.zeros_like(x[:1]), down, right, 1.0)
        moved = moved + vacated * background.to(x.device)
    moved = moved.reshape(batch.x.shape)
    return int((forward_logits(model, moved).argmax(1) == batch.y).sum())


def weight_templates(model: nn.Module, pipeline: Pipeline) -> torch.Tensor | None:
    """The weights of a model that is one Linear layer on the pixels, one image per class.

    Only when that layer maps the whole image straight to the classes (the linear classifier): an
    MLP's first layer holds hidden units, not class templates.
    """
    image_shape = tuple(pipeline.data.train.images.shape[1:])
    pixels = 1
    for size in image_shape:
        pixels *= size
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linear) != 1 or linear[0].in_features != pixels or linear[0].out_features != pipeline.num_classes:
        return None
    return linear[0].weight.detach().float().cpu().reshape(-1, *image_shape)
