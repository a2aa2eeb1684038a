"""Optional, label-preserving augmentations on batched tensors (off by default: "simplify" first).

An augmentation takes float pixels in [0, 1] shaped (B, C, H, W) (the raw pixels scaled by the data's
declared value range) and returns the same shape.
Digits are not mirror-symmetric and 6/9 swap under 180 degrees, so only small shifts and
rotations are label-preserving here. A user can plug in any callable of that shape, e.g. a
torchvision.transforms.v2 transform wrapped with `per_image`.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_shift_rotate(max_degrees: float = 10.0, max_shift: float = 0.1):
    """Per-image random rotation up to +-max_degrees and shift up to max_shift of the image size.

    Vectorised with one affine_grid/grid_sample call per batch: torchvision's v2.RandomAffine draws
    one set of parameters per call, so applying it image by image costs ~0.2 ms each (11 s a
    Fashion-MNIST epoch); this costs about as much as one conv layer. Uses the global RNG, which
    the training loop seeds per epoch.
    """
    def apply(pixels: torch.Tensor) -> torch.Tensor:
        n = len(pixels)
        angle = (torch.rand(n) * 2 - 1) * math.radians(max_degrees)
        shift = (torch.rand(n, 2) * 2 - 1) * max_shift * 2  # affine_grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(pixels), list(pixels.shape), align_corners=False)
        return F.grid_sample(pixels, grid, padding_mode="zeros", align_corners=False)
    return apply


def per_image(transform):
    """Apply a torchvision transform to each image separately (v2 draws one set of parameters per call)."""
    def apply(pixels: torch.Tensor) -> torch.Tensor:
        return torch.stack([transform(image) for image in pixels])
    return apply


AUGMENTATIONS = {
    "none": None,
    "shift-rotate": random_shift_rotate,
}
