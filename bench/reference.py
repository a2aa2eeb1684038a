"""The two loops the recipe is timed against, both on the recipe's own train split and model.

- `reference_epoch`: the pytorch/examples mnist/main.py way. A torchvision FashionMNIST data set
  (read from the same IDX files, never downloaded), per-sample ToTensor() + Normalize() on PIL
  images, a shuffling DataLoader, and the plain zero_grad / forward / backward / step loop.
- `bare_epoch`: the least a Python loop with an autograd step can do on in-memory tensors (one
  index_select per batch, no schedule, no bookkeeping). It is a floor, not a rival: it shows what
  the recipe's own bookkeeping costs on top of the same autograd step.
"""
from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bench.measure import sync
from recipe.data import FULL_VAL_FRACTION, SPLIT_SEED, stratified_holdout
from recipe.pipeline import Pipeline

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def torchvision_root(idx_dir: Path, root: Path) -> Path:
    """Lay the IDX files out as torchvision expects: `<root>/FashionMNIST/raw/`, uncompressed.

    With download=False torchvision only checks for the *uncompressed* names, so the .gz files are
    extracted here (it would do the same after a download).
    """
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        plain, packed = idx_dir / name, idx_dir / f"{name}.gz"
        if plain.is_file():
            shutil.copyfile(plain, raw / name)
        else:
            with gzip.open(packed, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return root


def reference_loader(pipeline: Pipeline, root: Path, device: torch.device) -> torch.utils.data.DataLoader:
    """DataLoader over the recipe's 55k train examples, transformed per sample as in the examples."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize((pipeline.norm.mean,), (pipeline.norm.std,)),
    ])
    full = datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
    # The recipe holds 5k of the 60k out for val; take exactly its 55k, so both loops see the same data.
    kept, _ = stratified_holdout(full.targets, lambda n: round(n * FULL_VAL_FRACTION),
                                 torch.Generator().manual_seed(SPLIT_SEED))
    if not torch.equal(full.targets[kept], pipeline.data.train.labels.cpu()):
        raise RuntimeError("the torchvision train set does not line up with the recipe's train split")
    subset = torch.utils.data.Subset(full, kept.tolist())
    # pytorch/examples: num_workers=1 and pin_memory only with CUDA; in-process loading on CPU
    extra = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    return torch.utils.data.DataLoader(subset, batch_size=pipeline.config.batch_size, shuffle=True, **extra)


def reference_epoch(pipeline: Pipeline, loader, model, optimizer) -> float:
    """One epoch of the examples-style loop; returns its wall time in seconds."""
    device = pipeline.device
    model.train()
    started = time.perf_counter()
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - started


def bare_epoch(x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, model, optimizer,
               generator: torch.Generator) -> float:
    """One epoch of the barest in-memory loop over normalised (N, 1, 28, 28) `x_all`; returns seconds."""
    model.train()
    started = time.perf_counter()
    order = torch.randperm(len(y_all), generator=generator).to(y_all.device)
    for start in range(0, len(y_all), batch_size):
        idx = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_all.index_select(0, idx)), y_all.index_select(0, idx))
        loss.backward()
        optimizer.step()
    sync(y_all.device)
    return time.perf_counter() - started
