"""Watch a full training run, cheaply: what `fit(..., monitor=TrainingMonitor())` records.

The monitor only records; `checks/training/monitor_checks.py` judges the record after `fit` returns. What it
keeps, as plain numbers (a `MonitorLog`, JSON-able):

- every step's loss, kept on the device and copied to the host once per epoch (no sync a step);
- every `every`-th step (a *sampled* step), for each trainable weight tensor (ndim >= 2: the
  Linear and Conv weights, Karpathy's "layers"): the gradient norm as the user's step left it,
  and the update-to-weight ratio |w_after - w_before| / |w_before|, measured from a copy of the
  weights taken just before the step, so it includes the lr, whatever the optimizer did with it;
- on sampled steps, the share of ReLU-family units (ReLU, ReLU6, their functional forms) that are
  zero for the whole batch. They are found with a TorchFunctionMode, so `torch.relu(x)` inside a
  forward counts as well as an `nn.ReLU()` module; no hook is left on the model between samples;
- per epoch: train accuracy, measured in eval mode on the first examples of train (the gap to val
  accuracy is then like for like: no dropout, the weights of the end of the epoch), as many as val
  but at most a 20th of train (at least 256), so the pass costs a few % of the epoch; and the lr
  each param group holds when the epoch ends.

Why sampled steps: a weight copy and a few norms cost half a small model's step or more, so
they run on one step in `every` (an odd number: with gradient accumulation over 2, 4 or 8 calls
the samples still land on every phase of the cycle, both the calls that step and those that do
not). A model without ReLU-family activations is seen on its first sampled step and not watched
again.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

MIN_EVERY = 21             # at most one step in 21 is sampled: a sample costs about half a small model's step
TARGET_SAMPLES = 200       # a long run is sampled ~200 times: enough points for a plot and a robust median
MIN_TRAIN_EXAMPLES = 256   # train accuracy: on min(len(val), len(train) / TRAIN_SHARE) examples, at least this
TRAIN_SHARE = 20           # ...so its eval pass stays a few % of an epoch (forward only, a 20th of the examples)

RELU_FAMILY = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6}
CLAMPS_AT_ZERO = {F.hardtanh}  # nn.ReLU6 calls hardtanh(x, 0, 6): ReLU-family only when min_val is 0
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)


@dataclass
class MonitorLog:
    """What one training run showed, as plain lists (see the module docstring for each statistic)."""
    every: int = 0                                             # sampled one step in `every`
    steps: list[int] = field(default_factory=list)            # global step index of each loss
    losses: list[float] = field(default_factory=list)         # the loss each step returned
    layers: list[str] = field(default_factory=list)           # watched weight tensors, by parameter name
    sampled_steps: list[int] = field(default_factory=list)
    grad_norms: list[list[float | None]] = field(default_factory=list)     # [sample][layer]; None: no .grad
    update_ratios: list[list[float | None]] = field(default_factory=list)  # [sample][layer]; None: |w| was 0
    grads_cleared: int = 0                                     # samples where every watched .grad was None
    relu_sites: list[str] = field(default_factory=list)       # ReLU-family calls seen in the forward
    dead_shares: list[list[float | None]] = field(default_factory=list)    # [sample][site]
    lrs: list[list[float]] = field(default_factory=list)      # [sample][param group]
    epochs: list[dict] = field(default_factory=list)          # fit's rows, with train_accuracy
    lr_end: list[float] = field(default_factory=list)         # per group, when the last epoch ended
    train_accuracy_examples: int = 0

    def to_json(self) -> dict:
        return asdict(self)


class TrainingMonitor:
    """Pass to `fit(..., monitor=...)`; read `.log` afterwards. One monitor watches one run."""

    def __init__(self, every: int | None = None, train_examples: int | None = None):
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.requested_every, self.train_examples = every, train_examples
        self._log = MonitorLog()
        self._weights: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []       # this epoch's, on the device
        self._samples: list[tuple] = []             # this epoch's (step, stats (3, L), dead shares, lrs)
        self._watch_relus = True                    # until a sampled step shows the model has none
        self._site_index: dict[str, int] = {}

    # ------------------------------------------------------------ what fit calls

    def start(self, model: nn.Module, pipeline, history: list[dict]) -> None:
        """Before the first step: which weights to watch, how often; the epochs a resumed run already did."""
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
        self._weights = [p for _, p in named]
        self._log.layers = [name for name, _ in named]
        self._module_names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
        self._watch_relus = not hasattr(model, "_orig_mod")  # torch.compile'd: no function mode under dynamo
        total_steps = pipeline.config.epochs * pipeline.steps_per_epoch
        every = self.requested_every or max(MIN_EVERY, total_steps // TARGET_SAMPLES)
        self._log.every = every if every == 1 or every % 2 else every + 1  # odd: see the module docstring
        self._log.epochs = [dict(row) for row in history]

    def step(self, step: int, optimizer: torch.optim.Optimizer, take: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run one train step (`take()`), recording its loss; sampled steps also get the expensive statistics."""
        if step % self._log.every:
            loss = take()
            self._losses.append(loss.detach() if loss.requires_grad else loss)  # a detach costs ~2 us
            self._log.steps.append(step)
            return loss
        with torch.no_grad():
            before = torch._foreach_mul(self._weights, 1.0) if self._weights else []  # copies, (L tensors)
        relus = _ReluWatch(self._module_names) if self._watch_relus else None
        if relus is not None:
            with relus:
                loss = take()
        else:
            loss = take()
        self._losses.append(loss.detach())
        self._log.steps.append(step)
        self._record_sample(step, optimizer, before, relus)
        return loss

    def end_epoch(self, model: nn.Module, pipeline, optimizer: torch.optim.Optimizer, row: dict) -> dict:
        """After the epoch's val evaluation: train accuracy on a fixed train subset; returns the row's new columns."""
        from recipe.train import evaluate

        train, val = len(pipeline.data.train), len(pipeline.data.val)
        n = min(train, self.train_examples or max(MIN_TRAIN_EXAMPLES, min(val, train // TRAIN_SHARE)))
        batch_size = pipeline.config.batch_size
        measured = evaluate(model, pipeline, "train", max_batches=math.ceil(n / batch_size))
        added = {"train_accuracy": measured["accuracy"]}
        self._log.train_accuracy_examples = min(train, math.ceil(n / batch_size) * batch_size)
        self._log.epochs.append({**row, **added})
        self._log.lr_end = [float(g["lr"]) for g in optimizer.param_groups]
        self._sync()
        return added

    @property
    def log(self) -> MonitorLog:
        """Everything recorded so far, on the host (copies what is still on the device)."""
        self._sync()
        return self._log

    # ------------------------------------------------------------ recording

    def _record_sample(self, step: int, optimizer, before: list[torch.Tensor], relus: "_ReluWatch | None") -> None:
        weights = self._weights
        grads = [p.grad for p in weights]
        present = [g is not None for g in grads]
        if weights and not any(present):
            self._log.grads_cleared += 1  # the step set them to None after stepping: nothing to read
        with torch.no_grad():
            if weights:
                zero = weights[0].new_zeros(())
                grad_norms = torch._foreach_norm([g if g is not None else zero for g in grads])
                moved = torch._foreach_norm(torch._foreach_sub(weights, before))
                sizes = torch._foreach_norm(before)
                stats = torch.stack([torch.stack([n.float() for n in t]) for t in (grad_norms, moved, sizes)])  # (3, L)
            else:
                stats = torch.zeros(3, 0)
        dead = []
        if relus is not None:
            if not relus.shares:
                self._watch_relus = False  # no ReLU-family activation in this model: stop looking
            for site, share in relus.shares:
                if site not in self._site_index:
                    self._site_index[site] = len(self._log.relu_sites)
                    self._log.relu_sites.append(site)
                dead.append((self._site_index[site], share))
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._samples.append((step, stats, present, dead, lrs))

    def _sync(self) -> None:
        """Copy the epoch's device tensors to host lists: one transfer per kind, not one per step."""
        log = self._log
        if self._losses:
            log.losses += torch.stack([loss.reshape(-1)[0] for loss in self._losses]).float().cpu().tolist()
            self._losses = []
        if not self._samples:
            return
        stats = torch.stack([s[1] for s in self._samples]).cpu().tolist()  # (S, 3, L)
        dead_values = [torch.stack([share for _, share in s[3]]).cpu().tolist() if s[3] else [] for s in self._samples]
        for (step, _, present, dead, lrs), (norms, moved, sizes), shares in zip(self._samples, stats, dead_values):
            log.sampled_steps.append(step)
            log.grad_norms.append([n if ok else None for n, ok in zip(norms, present)])
            log.update_ratios.append([m / s if s > 0 else None for m, s in zip(moved, sizes)])
            row: list[float | None] = [None] * len(log.relu_sites)
            for (index, _), share in zip(dead, shares):
                row[index] = share
            log.dead_shares.append(row)
            log.lrs.append(lrs)
        width = len(log.relu_sites)  # a site first seen late: earlier rows get None for it
        log.dead_shares = [row + [None] * (width - len(row)) for row in log.dead_shares]
        self._samples = []


class _ReluWatch(TorchFunctionMode):
    """While active, notes for each ReLU-family call the share of its units zero for the whole batch.

    A unit is one channel of dim 1 (a Linear's feature, a Conv's feature map): dead on this batch
    when it is zero for every example and every position. The site is named after the innermost
    module whose forward made the call (an nn.ReLU by its own name; `torch.relu` inside a forward as
    "<module> relu #k").
    """

    def __init__(self, module_names: dict[int, str]):
        super().__init__()
        self.module_names = module_names
        self.shares: list[tuple[str, torch.Tensor]] = []
        self._calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside this handler: no recursion
        if func in RELU_FAMILY or (func in CLAMPS_AT_ZERO and _min_val(args, kwargs) == 0):
            if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] > 0:
                with torch.no_grad():
                    alive = out.detach().transpose(0, 1).reshape(out.shape[1], -1).ne(0).any(1)  # (units,)
                    self.shares.append((self._site(), 1.0 - alive.float().mean()))
        return out

    def _site(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self") if frame.f_code.co_name == "forward" else None
            if isinstance(owner, nn.Module) and id(owner) in self.module_names:
                name = self.module_names[id(owner)]
                if isinstance(owner, ACTIVATION_MODULES):
                    return f"{name} ({type(owner).__name__})"
                self._calls[name] = self._calls.get(name, 0) + 1
                return f"{name} relu #{self._calls[name]}"
            frame = frame.f_back
        self._calls[""] = self._calls.get("", 0) + 1
        return f"relu #{self._calls['']} (outside the model's forward)"


def _min_val(args: tuple, kwargs: dict) -> float | None:
    if len(args) > 1:
        return args[1]
    return kwargs.get("min_val", -1.0)
