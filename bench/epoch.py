"""Part 1: epoch time of the recipe's loop against the pytorch/examples loop, same everything else.

Rounds alternate which loop goes first, so a burst of load from elsewhere on the machine hits both.
"recipe" is the default pipeline, whose linear model steps with the closed-form gradient
(recipe/linear_step.py); "recipe, autograd step" is the same fit() with the plain `train_step` that
any other model gets. Round 0 is a warm-up (the recipe normalises the split once, on its first epoch) and is reported
apart; the ratio is taken between the medians of the other rounds.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from bench.measure import Row, median
from bench.reference import bare_epoch, reference_epoch, reference_loader, torchvision_root
from recipe.data import DataBundle, normalize
from recipe.pipeline import Pipeline, default_pipeline
from recipe.sources import DEBIAN_FASHION_DIR
from recipe.steps import train_step
from recipe.train import fit

TARGET_SPEEDUP = 15.0


def recipe_epoch(pipeline: Pipeline) -> float:
    """One training epoch through the public `fit`; its own timer covers the training loop only."""
    return fit(pipeline, quiet=True).history[0]["seconds"]


def profile_recipe_epoch(pipeline: Pipeline, rows: int = 15) -> str:
    """torch.profiler's table of one (warm) recipe epoch, ops sorted by their own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    recipe_epoch(pipeline)  # warm: the normalised split is cached
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pipeline.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        recipe_epoch(pipeline)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(data: DataBundle, config, rounds: int, idx_dir: Path = DEBIAN_FASHION_DIR,
        profile: bool = False) -> dict:
    pipeline = default_pipeline(dataclasses.replace(config, epochs=1), data)
    autograd_pipeline = dataclasses.replace(pipeline, train_step=train_step)
    device = pipeline.device
    with tempfile.TemporaryDirectory() as tmp:
        loader = reference_loader(pipeline, torchvision_root(idx_dir, Path(tmp)), device)
        ref_model = pipeline.make_model()
        ref_optimizer = pipeline.make_optimizer(ref_model.parameters())
        bare_model = pipeline.make_model()
        bare_optimizer = pipeline.make_optimizer(bare_model.parameters())
        x_all = normalize(data.train.images, pipeline.norm)
        times = {"reference": [], "recipe": [], "autograd": [], "bare": []}
        for r in range(rounds + 1):
            order = ["reference", "recipe", "autograd", "bare"]
            for name in order if r % 2 == 0 else order[::-1]:
                if name == "reference":
                    times[name].append(reference_epoch(pipeline, loader, ref_model, ref_optimizer))
                elif name == "recipe":
                    times[name].append(recipe_epoch(pipeline))
                elif name == "autograd":
                    times[name].append(recipe_epoch(autograd_pipeline))
                else:
                    times[name].append(bare_epoch(x_all, data.train.labels, config.batch_size, bare_model,
                                                  bare_optimizer, torch.Generator().manual_seed(r)))
    warm = {name: median(values[1:]) for name, values in times.items()}
    speedup = warm["reference"] / warm["recipe"]
    per_round = median([ref / rec for ref, rec in zip(times["reference"][1:], times["recipe"][1:])])
    what = f"batch {config.batch_size}, {config.optimizer} lr {config.lr}, {len(data.train)} train examples, {device}"
    rows = [
        Row("epoch", "reference (torchvision + DataLoader)", warm["reference"], "s/epoch", note=what),
        Row("epoch", "recipe fit()", warm["recipe"], "s/epoch", ratio=speedup, target=f">= {TARGET_SPEEDUP:g}x",
            met=speedup >= TARGET_SPEEDUP, note=f"median of per-round ratios {per_round:.1f}x"),
        Row("epoch", "recipe fit(), autograd step (any model)", warm["autograd"], "s/epoch",
            ratio=warm["reference"] / warm["autograd"], note="what a plugged-in model's train_step costs"),
        Row("epoch", "bare in-memory autograd loop", warm["bare"], "s/epoch",
            ratio=warm["reference"] / warm["bare"], note=f"recipe's autograd step costs {warm['autograd'] / warm['bare']:.2f}x this"),
        Row("epoch", "first epoch: reference / recipe", times["reference"][0], "s",
            note=f"recipe {times['recipe'][0]:.3f} s (normalises the split once)"),
    ]
    profile_table = profile_recipe_epoch(pipeline) if profile else None
    return {"rows": rows, "profile": profile_table, "times_s": times, "warm_median_s": warm, "speedup": speedup,
            "speedup_median_per_round": per_round, "config": config.as_dict(), "device": str(device)}
