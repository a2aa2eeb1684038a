"""Probe: plant NEW bugs (not in tests/zoo or tests/realbugs) into small MNIST pipelines and run the preflight.

    python -m bench.unseen_probe [--only NAME ...] [--list] [--threads 1]

Written on 2026-12-07 by a helper who first read the zoo and real-bug catalogues, to plant kinds of
fault none of the harness's tests plants (what it measured: docs/zoo.md, "Bugs the tests never saw").

One line per pipeline: name, overall verdict, then every FAIL/ERROR/WARN check with the first 120
characters of its message. The clean setups at the end must show no FAIL.
Each bug is planted through dataclasses.replace on default_pipeline / mlp_pipeline (data 'sample', seed 0,
default TrainConfig), and the preflight runs with gate=False so every stage runs.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from checks.engine.preflight import run_preflight
from checks.engine.result import Verdict, worst
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.data import Batch, DataBundle
from recipe.errors import RecipeError
from recipe.pipeline import Pipeline, default_pipeline, mlp_pipeline
from recipe.steps import train_step


# ---------------------------------------------------------------- user models

class DropoutMLP(nn.Module):
    """784-256-C with dropout 0.3, small head so the loss at init is ~ln(C)."""

    def __init__(self, num_classes: int = 10, in_features: int = 784, p: float = 0.3):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(in_features, 256), nn.Dropout(p), nn.Linear(256, num_classes)
        with torch.no_grad():
            self.fc2.weight.mul_(0.01)
            self.fc2.bias.zero_()

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


class BNCNN(nn.Module):
    """conv-BN-ReLU-pool x2, linear head (small init)."""

    def __init__(self, num_classes: int = 10, channels: int = 1, size: int = 28):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Linear(16 * (size // 4) * (size // 4), num_classes)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


# ---------------------------------------------------------------- helpers

def wrap_batches(p: Pipeline, edit: Callable[[Batch, str], Batch]) -> Pipeline:
    """The pipeline's own loader with every batch passed through edit(batch, split)."""
    inner = p.batches

    def batches(split, **kw):
        for b in inner(split, **kw):
            yield edit(b, split)
    return replace(p, batches=batches)


def with_model(p: Pipeline, make: Callable[[], nn.Module]) -> Pipeline:
    return replace(p, make_model=lambda: make().to(p.device))


def total_steps(p: Pipeline) -> int:
    return p.config.epochs * p.steps_per_epoch


# ---------------------------------------------------------------- the planted bugs (each: clean factory -> buggy)

def odd_index_labels_wrapped(config, data):
    # bug: a "fix" for 1-based labels applied to odd dataset indices only: y-1 (wrapping 0 -> 9) on half of train
    p = default_pipeline(config, data)
    C = p.num_classes

    def edit(b, split):
        if split != "train":
            return b
        odd = (b.idx % 2 == 1).to(b.y.device)
        return replace(b, y=torch.where(odd, (b.y - 1) % C, b.y))
    return wrap_batches(p, edit)


def val_images_transposed(config, data):
    # bug: the val loader reads HWC->CHW with permute(0, 1, 3, 2): H and W swapped, val only (test untouched)
    p = default_pipeline(config, data)
    return wrap_batches(p, lambda b, split: replace(b, x=b.x.permute(0, 1, 3, 2).contiguous()) if split == "val" else b)


def train_only_normalised_twice(config, data):
    # bug: the train Dataset already applies Normalize and the train transform list adds it again; eval is right
    p = default_pipeline(config, data)
    mean, std = p.norm.mean, p.norm.std
    return wrap_batches(p, lambda b, split: replace(b, x=(b.x - mean) / std) if split == "train" else b)


def val_targets_from_train_split(config, data):
    # bug: the val loop indexes `train_labels[idx]` (copy-paste) instead of val's labels
    p = default_pipeline(config, data)
    train_labels = data.train.labels

    def edit(b, split):
        return replace(b, y=train_labels.index_select(0, b.idx)) if split == "val" else b
    return wrap_batches(p, edit)


def class_conditional_flip(config, data):
    # bug: a "balancing" augmentation mirrors only the under-performing classes 2 and 5 in train: a mirrored 2 is no 2
    p = default_pipeline(config, data)

    def edit(b, split):
        if split != "train":
            return b
        chosen = ((b.y == 2) | (b.y == 5)).view(-1, 1, 1, 1)
        return replace(b, x=torch.where(chosen, b.x.flip(-1), b.x))
    return wrap_batches(p, edit)


class HiddenDetachedMLP(nn.Module):
    """forward detaches the hidden activation (left over from a feature-caching experiment)."""

    def __init__(self, num_classes=10, in_features=784):
        super().__init__()
        self.hidden, self.out = nn.Linear(in_features, 128), nn.Linear(128, num_classes)
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.hidden(x.flatten(1)))
        h = h.detach()  # bug: cuts the graph mid-network: self.hidden never gets a gradient
        return self.out(h)


def hidden_activation_detached(config, data):
    # bug: x = x.detach() mid-network; the first layer stays at its init
    p = mlp_pipeline(config, data)
    return with_model(p, lambda: HiddenDetachedMLP(data.num_classes, data.train.images[0].numel()))


def grad_scaled_by_batch_sgd(config, data):
    # bug: step backprops loss * batch_size ("sum semantics") while SGD lr 0.05 was tuned for the mean: lr x64
    p = mlp_pipeline(config, data)

    def step(model, optimizer, loss_fn, x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        (loss * x.shape[0]).backward()  # bug: sum-reduction gradient, mean-reduction lr
        optimizer.step()
        return loss.detach()
    return replace(p, train_step=step, make_optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9))


def optimizer_over_head_only(config, data):
    # bug: meant to give the head its own lr group, but list(params)[-2:] became the ONLY group: hidden layer never trains
    p = mlp_pipeline(config, data)
    return replace(p, make_optimizer=lambda params: torch.optim.Adam(list(params)[-2:], lr=1e-3))


class MCDropoutMLP(DropoutMLP):
    """forward switches its dropout on for Monte-Carlo dropout: eval passes are never deterministic."""

    def forward(self, x):
        self.drop.train()  # bug: MC-dropout switch left in: model.eval() no longer turns dropout off
        return super().forward(x)


def dropout_forced_on_in_forward(config, data):
    # bug: forward calls self.drop.train(), so eval/val/test run with dropout active
    p = mlp_pipeline(config, data)
    return with_model(p, lambda: MCDropoutMLP(data.num_classes, data.train.images[0].numel()))


class AccumulateNoZero:
    """Gradient accumulation over 4 batches; the zero_grad() after the step was forgotten."""

    def __init__(self, every: int = 4):
        self.every, self.calls = every, 0

    def __call__(self, model, optimizer, loss_fn, x, y):
        loss = loss_fn(model(x), y)
        (loss / self.every).backward()
        self.calls += 1
        if self.calls % self.every == 0:
            optimizer.step()  # bug: no optimizer.zero_grad() here, gradients grow forever
        return loss.detach()


def accumulation_never_zeroed(config, data):
    # bug: accumulation steps every 4 batches but never zeroes: each update uses the sum of ALL past gradients
    return replace(mlp_pipeline(config, data), train_step=AccumulateNoZero(4))


def lr_times_ten_each_epoch(config, data):
    # bug: StepLR(gamma=10) typed where gamma=0.1 was meant: the lr grows 10x every epoch (1e-3 -> 1e6)
    p = mlp_pipeline(config, data)
    return replace(p, make_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=10.0),
                   scheduler_interval="epoch")


def ignore_index_zero_from_nlp(config, data):
    # bug: CrossEntropyLoss(ignore_index=0) copied from a text model (pad id 0): digit 0 is never trained on
    return replace(mlp_pipeline(config, data), loss_fn=nn.CrossEntropyLoss(ignore_index=0))


def mixup_on_class_indices(config, data):
    # bug: mixup blends the integer labels as numbers (round(lam*y1 + (1-lam)*y2)): mixing a 2 and an 8 gives "5"
    p = mlp_pipeline(config, data)

    def step(model, optimizer, loss_fn, x, y):
        lam = float(torch.distributions.Beta(0.4, 0.4).sample())
        perm = torch.randperm(len(x), device=x.device)
        x_mix = lam * x + (1 - lam) * x[perm]
        y_mix = (lam * y.float() + (1 - lam) * y[perm].float()).round().long()  # bug: labels are not numbers
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_mix), y_mix)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return replace(p, train_step=step)


def seed_reset_every_step(config, data):
    # bug: torch.manual_seed(0) "for reproducibility" inside the step: every step draws the SAME dropout mask
    p = mlp_pipeline(config, data)

    def step(model, optimizer, loss_fn, x, y):
        torch.manual_seed(0)  # bug: resets the global RNG every batch
        return train_step(model, optimizer, loss_fn, x, y)
    p = with_model(p, lambda: DropoutMLP(data.num_classes, data.train.images[0].numel(), p=0.5))
    return replace(p, train_step=step)


BUGS: dict[str, tuple[Callable, str]] = {  # name -> (factory, the check I expect to FAIL)
    "odd_index_labels_wrapped": (odd_index_labels_wrapped, "label_pairing"),
    "val_images_transposed": (val_images_transposed, "label_pairing"),
    "train_only_normalised_twice": (train_only_normalised_twice, "input_normalisation / label_pairing"),
    "val_targets_from_train_split": (val_targets_from_train_split, "label_pairing"),
    "class_conditional_flip": (class_conditional_flip, "label_pairing"),
    "hidden_activation_detached": (hidden_activation_detached, "gradient_flow"),
    "grad_scaled_by_batch_sgd": (grad_scaled_by_batch_sgd, "training_loss_decreases / fit_dry_run"),
    "optimizer_over_head_only": (optimizer_over_head_only, "gradient_flow"),
    "dropout_forced_on_in_forward": (dropout_forced_on_in_forward, "eval_determinism"),
    "accumulation_never_zeroed": (accumulation_never_zeroed, "gradient_flow"),
    "lr_times_ten_each_epoch": (lr_times_ten_each_epoch, "lr_schedule (maybe none)"),
    "ignore_index_zero_from_nlp": (ignore_index_zero_from_nlp, "overfit_one_batch"),
    "mixup_on_class_indices": (mixup_on_class_indices, "overfit_one_batch (maybe none)"),
    "seed_reset_every_step": (seed_reset_every_step, "none likely"),
}


# ---------------------------------------------------------------- clean setups that must not FAIL

def clean_smoothing_adamw_cosine(config, data):
    p = mlp_pipeline(config, data)
    total = total_steps(p)
    return replace(p, name="clean_smoothing_adamw_cosine", loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
                   make_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05),
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
                   scheduler_interval="step")


def clean_dropout_sgd_wd(config, data):
    p = with_model(mlp_pipeline(config, data), lambda: DropoutMLP(data.num_classes, data.train.images[0].numel(), 0.3))
    return replace(p, name="clean_dropout_sgd_wd",
                   make_optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
                   make_scheduler=None)


def clean_bn_cnn_onecycle(config, data):
    p = mlp_pipeline(config, data)
    total = total_steps(p)
    c, h, _ = data.train.images.shape[1:]
    p = with_model(p, lambda: BNCNN(data.num_classes, c, h))
    return replace(p, name="clean_bn_cnn_onecycle",
                   make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True),
                   make_scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total),
                   scheduler_interval="step")


CLEAN: dict[str, Callable] = {
    "clean_smoothing_adamw_cosine": clean_smoothing_adamw_cosine,
    "clean_dropout_sgd_wd": clean_dropout_sgd_wd,
    "clean_bn_cnn_onecycle": clean_bn_cnn_onecycle,
}


# ---------------------------------------------------------------- running

def run_one(name: str, factory: Callable, config: TrainConfig, data: DataBundle, expect: str) -> str:
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    try:
        pipeline = factory(config, data)
        pipeline = replace(pipeline, name=name)
        pre = run_preflight(pipeline, f"probe:{name}", gate=False, parts={})
    except RecipeError as refusal:
        return f"{name}: REFUSED ({time.perf_counter() - started:.0f}s) {str(refusal)[:200]}"
    overall = worst(r.verdict for r in pre.results).value
    shown = [r for r in pre.results if r.verdict in (Verdict.FAIL, Verdict.ERROR, Verdict.WARN)]
    shown.sort(key=lambda r: -r.verdict.severity)
    parts = [f"{r.verdict.value} {r.name}: {' '.join(r.message.split())[:120]}" for r in shown]
    head = f"{name}: {overall} ({time.perf_counter() - started:.0f}s; expected: {expect})"
    return head + "".join(f"\n    {part}" for part in parts) if parts else head + " - no FAIL/WARN"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these names (bugs or clean setups)")
    parser.add_argument("--list", action="store_true", help="list the names and exit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-only", action="store_true",
                        help="only build each pipeline and take one step on one batch (a quick smoke test)")
    args = parser.parse_args(argv)
    entries = [(n, f, e) for n, (f, e) in BUGS.items()] + [(n, f, "no FAIL") for n, f in CLEAN.items()]
    if args.list:
        for n, f, e in entries:
            print(f"{n}: expected {e}")
        return 0
    if args.only:
        unknown = set(args.only) - {n for n, _, _ in entries}
        if unknown:
            parser.error(f"unknown names: {', '.join(sorted(unknown))}")
        entries = [entry for entry in entries if entry[0] in args.only]
    torch.set_num_threads(args.threads)
    config = TrainConfig(seed=args.seed)
    data = load_source("sample", "/work/main/data", download=False)
    if args.build_only:
        for name, factory, expect in entries:
            p = factory(config, data)
            model = p.make_model()
            opt = p.make_optimizer(model.parameters())
            b = next(iter(p.batches("train", shuffle=True)))
            loss = p.train_step(model, opt, p.loss_fn, b.x, b.y)
            print(f"{name}: built, one step loss {float(loss):.3f}")
        return 0
    bad_clean = 0
    for name, factory, expect in entries:
        line = run_one(name, factory, config, data, expect)
        print(line, flush=True)
        if name in CLEAN and (": FAIL" in line.split("\n")[0] or ": ERROR" in line.split("\n")[0]
                              or "REFUSED" in line.split("\n")[0]):
            bad_clean += 1
    return 1 if bad_clean else 0


if __name__ == "__main__":
    raise SystemExit(main())
