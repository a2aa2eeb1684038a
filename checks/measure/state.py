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

import contextlib
import random

import numpy as np
import torch
from torch import nn

from recipe.outputs import forward_logits

CARRIED_STATE = ("the model carries state from one forward call to the next: two passes over the same inputs from "
                 "the same random seed differ (a recurrent hidden state kept on self and fed to the next call, or a "
                 "buffer forward updates), so each output depends on the batches before it. Start every forward "
                 "from a fresh state (or pass the state in and out explicitly, detached between batches)")


GENERATORS = {  # the global generators a user's code draws from: name -> (read the state, set it, seed it)
    "torch": (torch.get_rng_state, torch.set_rng_state, torch.manual_seed),
    "numpy": (np.random.get_state, np.random.set_state, np.random.seed),
    "random": (random.getstate, random.setstate, random.seed),
}


@contextlib.contextmanager
def generators_kept():
    """Every global generator (CUDA's included: torch.manual_seed seeds them too) as it was, on the way out."""
    saved = {name: get() for name, (get, _, _) in GENERATORS.items()}
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        for name, (_, set_it, _) in GENERATORS.items():
            set_it(saved[name])


def seed_all(seed: int) -> None:
    for _, _, seed_it in GENERATORS.values():
        seed_it(seed)


def generator_states() -> dict:
    return {name: get() for name, (get, _, _) in GENERATORS.items()}


def keeps_state(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two no-grad passes over `x`, each from the same state of torch's, numpy's and Python's
    generators, give different outputs."""
    outputs = []
    with generators_kept(), torch.no_grad():
        for _ in range(2):
            seed_all(0)
            outputs.append(forward_logits(model, x))
    a, b = outputs
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape):
        return False
    return not torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6, equal_nan=True)
