"""Optional, label-preserving augmentations on batched tensors (off by default: "simplify" first).

Each augmentation takes float pixels in [0, 1] shaped (B, 1, 28, 28) and returns the same shape.
Digits are not mirror-symmetric and 6/9 swap under 180 degrees, so only small shifts and rotations
are label-preserving here.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def small_shifts_and_rotations(max_degrees: float = 10.0, max_shift: float = 0.1) -> v2.Transform:
    """Random rotation up to +-max_degrees and translation up to max_shift of the image size."""
    return v2.RandomAffine(degrees=max_degrees, translate=(max_shift, max_shift))


def per_image(transform: v2.Transform):
    """Apply `transform` to each image separately (v2 draws one set of parameters per call)."""
    def apply(pixels: torch.Tensor) -> torch.Tensor:
        return torch.stack([transform(image) for image in pixels])
    return apply


AUGMENTATIONS = {
    "none": None,
    "shift-rotate": lambda: per_image(small_shifts_and_rotations()),
}
