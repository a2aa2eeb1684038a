"""Whether a model carries state from one forward call to the next.

A recurrent language model that stores its hidden state on `self` and feeds it to the next call ("to
keep context across batches", done without detaching or resetting) makes each output depend on the
batches before it. Three checks then FAIL, each for a cause of its own kind: eval passes differ
(`eval_determinism`, which otherwise blames dropout), outputs move with other examples
(`batch_independence`) and with later tokens (`causality`). Two passes over the same inputs from the
same random state tell it apart from randomness: only carried state (or a non-deterministic kernel)
still makes them differ.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from recipe.outputs import forward_logits

CARRIED_STATE = ("the model carries state from one forward call to the next: two passes over the same inputs from "
                 "the same random seed differ (a recurrent hidden state kept on self and fed to the next call, or a "
                 "buffer forward updates), so each output depends on the batches before it. Start every forward "
                 "from a fresh state (or pass the state in and out explicitly, detached between batches)")


def keeps_state(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two no-grad passes over `x`, each from the same state of torch's, numpy's and Python's
    generators, give different outputs."""
    outputs, saved = [], (np.random.get_state(), random.getstate())
    try:
        with torch.no_grad():
            for _ in range(2):
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    np.random.seed(0)
                    random.seed(0)
                    outputs.append(forward_logits(model, x))
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
    a, b = outputs
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape):
        return False
    return not torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6, equal_nan=True)
