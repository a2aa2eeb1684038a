"""The models: the linear (softmax) classifier the lab asks for, and a small MLP as a second pipeline."""
from __future__ import annotations

import torch
from torch import nn

IMAGE_PIXELS = 28 * 28


class LinearClassifier(nn.Module):
    """784 -> C logits. One weight template per class: logit_c = <w_c, x> + b_c.

    Initialised to zero weights and zero bias, so every class gets the same logit and the loss at
    init is exactly ln(C) whatever the input (Karpathy: "verify loss @ init"). Zero init is safe for
    a linear softmax model: the loss is convex and the gradient X^T (softmax - onehot) / N already
    differs per class, so there is no symmetry to break.
    """

    def __init__(self, num_classes: int = 10, in_features: int = IMAGE_PIXELS):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))  # (B, 1, 28, 28) -> (B, 784) -> (B, C)


class MLPClassifier(nn.Module):
    """784 -> hidden -> C with ReLU. The last layer starts 100x smaller than PyTorch's default so
    the logits start near zero and the loss at init is close to ln(C)."""

    def __init__(self, num_classes: int = 10, hidden: int = 128, in_features: int = IMAGE_PIXELS):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, num_classes)
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))
