"""The models: the linear (softmax) classifier the lab asks for, and a small MLP as a second pipeline.

Both read any image shape: they flatten (B, C, H, W) to (B, C*H*W), so `in_features` is the
number of values in one image (784 for MNIST's 1x28x28, 3072 for CIFAR-10's 3x32x32).
"""
from __future__ import annotations

import torch
from torch import nn


class LinearClassifier(nn.Module):
    """C*H*W -> classes logits. One weight template per class: logit_c = <w_c, x> + b_c.

    Initialised to zero weights and zero bias, so every class gets the same logit and the loss at
    init is exactly ln(classes) whatever the input (Karpathy: "verify loss @ init"). Zero init is
    safe for a linear softmax model: the loss is convex and the gradient X^T (softmax - onehot) / N
    already differs per class, so there is no symmetry to break.
    """

    def __init__(self, num_classes: int, in_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))  # (B, C, H, W) -> (B, C*H*W) -> (B, classes)


class MLPClassifier(nn.Module):
    """C*H*W -> hidden -> classes with ReLU. The last layer starts 100x smaller than PyTorch's
    default so the logits start near zero and the loss at init is close to ln(classes)."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 128):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, num_classes)
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))
