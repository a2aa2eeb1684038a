"""What a model's forward returns, read as logits: the one place `fit`, the default step and every
check take them from, so what the checks judge is what trains.

Models return a tensor, but many return more: `(logits, aux)` tuples, `{"logits": ...}` dicts, or
objects with a `.logits` field (Hugging Face's ModelOutput, the user's own dataclass). Those three
are unambiguous and are read as their logits; anything else is refused with one line saying what
to return instead, rather than guessed at.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from recipe.errors import RecipeError

LOGITS_KEY = "logits"  # the name Hugging Face and most codebases give the (B, C) scores


class ModelOutputError(RecipeError):
    """The model's forward returned something that is not, and does not hold, one logits tensor."""


def logits_of(output) -> torch.Tensor:
    """The (B, C) logits in a model's output: the tensor itself, a tuple's or list's first element,
    a mapping's "logits" entry, or an object's `.logits` attribute."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # checked before attributes: a ModelOutput is a mapping with attributes
        if isinstance(output.get(LOGITS_KEY), torch.Tensor):
            return output[LOGITS_KEY]
        raise ModelOutputError(f"the model returned a {type(output).__name__} with keys {list(output)[:8]} and no "
                               f"{LOGITS_KEY!r} tensor; return the logits tensor, or put it under {LOGITS_KEY!r}")
    if isinstance(output, (tuple, list)):
        if output and isinstance(output[0], torch.Tensor):
            return output[0]
        first = type(output[0]).__name__ if output else "nothing"
        raise ModelOutputError(f"the model returned a {type(output).__name__} whose first element is {first}; the "
                               "logits tensor must come first (return (logits, ...)) or be returned alone")
    if isinstance(getattr(output, LOGITS_KEY, None), torch.Tensor):
        return getattr(output, LOGITS_KEY)
    raise ModelOutputError(f"the model returned a {type(output).__name__}, not logits; return a (B, C) tensor, a "
                           f"tuple with the logits first, a dict with a {LOGITS_KEY!r} key, or an object with "
                           f"a .{LOGITS_KEY} tensor")


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` read as logits: how the harness and `fit` call a model when they need its scores."""
    return logits_of(model(x))
