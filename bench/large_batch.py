"""Part 5, the GPU figures: an epoch at batch 512 with the data on the device, against one full-batch pass.

Issue #7's GPU target is a `fit` epoch at batch 512 in 10 ms or less, with the whole data set on the
GPU. This part measures, on whatever device it is given:
- the recipe's `fit` epoch at batch 512 (seconds and epochs per second);
- the naive in-memory autograd loop at batch 512 (`bench.reference.bare_epoch`);
- one forward + backward over every train example at once, the least a pass over the data can cost;
- the ratio of the epoch to that full-batch pass.
The target is judged on CUDA only; on the CPU the same figures are context.
"""
from __future__ import annotations

import time

import torch

from bench.epoch import recipe_epoch
from bench.measure import Row, median, sync
from bench.reference import bare_epoch
from recipe.config import TrainConfig
from recipe.data import DataBundle, normalize
from recipe.pipeline import Pipeline, default_pipeline

BATCH_SIZE = 512
TARGET_EPOCH_S = 0.010


def full_batch_pass(pipeline: Pipeline, x_all: torch.Tensor, y_all: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward over all of `x_all` in one batch (after 2 warm-ups)."""
    model = pipeline.make_model()
    times = []
    for i in range(repeats + 2):
        sync(pipeline.device)
        started = time.perf_counter()
        model.zero_grad(set_to_none=True)
        pipeline.loss_fn(model(x_all), y_all).backward()
        sync(pipeline.device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return median(times)


def run(data: DataBundle, rounds: int) -> dict:
    pipeline = default_pipeline(TrainConfig(batch_size=BATCH_SIZE, epochs=1), data)
    x_all = normalize(data.train.images, pipeline.norm)
    y_all = data.train.labels
    bare_model = pipeline.make_model()
    bare_optimizer = pipeline.make_optimizer(bare_model.parameters())
    times = {"recipe": [], "bare": []}
    for r in range(rounds + 1):  # round 0 warms up (CUDA context, kernels, the normalised split)
        times["recipe"].append(recipe_epoch(pipeline))
        times["bare"].append(bare_epoch(x_all, y_all, BATCH_SIZE, bare_model, bare_optimizer,
                                        torch.Generator().manual_seed(r)))
    warm = {name: median(values[1:]) for name, values in times.items()}
    full = full_batch_pass(pipeline, x_all, y_all, repeats=max(rounds, 3))
    on_gpu = pipeline.device.type == "cuda"
    steps = -(-len(y_all) // BATCH_SIZE)
    what = f"batch {BATCH_SIZE}, {steps} steps, {len(y_all)} train examples, data on {pipeline.device}"
    rows = [
        Row("batch512", "recipe fit() epoch", warm["recipe"], "s/epoch",
            target=f"<= {TARGET_EPOCH_S * 1000:g} ms on CUDA" if on_gpu else "",
            met=(warm["recipe"] <= TARGET_EPOCH_S) if on_gpu else None,
            note=f"{1 / warm['recipe']:.1f} epochs/s; {warm['recipe'] / steps * 1e6:.0f} us a step; {what}"),
        Row("batch512", "naive in-memory autograd loop", warm["bare"], "s/epoch",
            ratio=warm["bare"] / warm["recipe"], note="ratio: how many times slower than fit()"),
        Row("batch512", "one full-batch forward+backward", full, "s",
            note=f"fit() epoch / full-batch pass = {warm['recipe'] / full:.1f}"),
    ]
    return {"rows": rows, "times_s": times, "warm_median_s": warm, "full_batch_pass_s": full,
            "epochs_per_second": 1 / warm["recipe"], "epoch_over_full_pass": warm["recipe"] / full,
            "device": str(pipeline.device)}
