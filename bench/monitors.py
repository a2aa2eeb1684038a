"""Part "monitors": epoch time with the training monitors on and off, side by side (target: <= 10% more).

Each round trains a fresh model with `fit(..., max_epochs=E)` twice, once with a `TrainingMonitor`
and once without, alternating which goes first so a burst of load from elsewhere hits both. The
pipelines keep their configured epoch count, so the monitor samples as often as it would in the
full run; `max_epochs` only cuts the run short. Epoch time is the whole of `fit` per epoch: the
steps, the val evaluation and, with monitors, the train-accuracy pass and the sampled statistics.
It is measured twice: wall time, and this process's CPU time, which on a shared machine is not
inflated by the time other processes hold the cores (torch runs one thread here, so CPU time is
the time the work took). The target is judged on CPU time. Round 0 is a warm-up, left out.
"""
from __future__ import annotations

import time

import torch

from bench.measure import Row, median, sync
from recipe.config import TrainConfig
from recipe.data import DataBundle, load_data
from recipe.monitors import TrainingMonitor
from recipe.pipeline import Pipeline, default_pipeline
from recipe.train import fit
from recipe.user_code import make_pipeline

TARGET_OVERHEAD = 0.10
CNN_PIPELINE = "tests/pipelines/pytorch_examples_mnist.py:build"


def timed_fit(pipeline: Pipeline, epochs: int, monitored: bool) -> tuple[float, float, int]:
    """(wall s, CPU s) per epoch of a `fit` cut to `epochs`, and the monitor's sampling interval (0: off)."""
    monitor = TrainingMonitor() if monitored else None
    sync(pipeline.device)
    wall, cpu = time.perf_counter(), time.process_time()
    fit(pipeline, quiet=True, max_epochs=epochs, monitor=monitor)
    sync(pipeline.device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / epochs, cpu / epochs, (monitor.log.every if monitor else 0)


def compare(pipeline: Pipeline, epochs: int, rounds: int) -> dict:
    wall: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    every = 0
    for r in range(rounds + 1):
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
            seconds, cpu_seconds, sampled = timed_fit(pipeline, epochs, side == "on")
            wall[side].append(seconds)
            cpu[side].append(cpu_seconds)
            every = sampled or every
    warm = {kind: {side: median(times[side][1:]) for side in times} for kind, times in (("wall", wall), ("cpu", cpu))}
    return {"wall_s": wall, "cpu_s": cpu, "median_s": warm, "every": every, "epochs": epochs,
            "overhead_cpu": warm["cpu"]["on"] / warm["cpu"]["off"] - 1,
            "overhead_wall": warm["wall"]["on"] / warm["wall"]["off"] - 1}


def cases(device: str) -> list[tuple[str, Pipeline, int]]:
    """(name, pipeline, epochs timed per fit): the default pipeline on the sample and on Fashion-MNIST
    (when its files are here), and the pytorch/examples CNN on the sample."""
    sample = load_data("sample", device=torch.device(device), download=False)
    cnn = make_pipeline(CNN_PIPELINE, TrainConfig(), sample)  # loaded as `--pipeline` loads it
    found = [("default pipeline (linear), sample", default_pipeline(TrainConfig(), sample), 3),
             ("pytorch/examples CNN, sample", cnn, 1)]
    try:
        fashion: DataBundle = load_data("fashion-mnist", device=torch.device(device), download=False)
        found.insert(1, ("default pipeline (linear), fashion-mnist", default_pipeline(TrainConfig(), fashion), 1))
    except Exception as err:  # no local copy: the sample cases still say what the monitors cost
        print(f"monitors: fashion-mnist skipped ({type(err).__name__}: {err})")
    return found


def run(device: str, rounds: int) -> dict:
    results, rows = {}, []
    for name, pipeline, epochs in cases(device):
        measured = compare(pipeline, epochs, rounds)
        results[name] = measured
        cpu, wall = measured["median_s"]["cpu"], measured["median_s"]["wall"]
        rows.append(Row("monitors", f"{name}: off", cpu["off"], "cpu s/ep",
                        note=f"wall {wall['off']:.3f} s; {pipeline.steps_per_epoch} steps/epoch, "
                             f"{len(pipeline.data.val)} val, {device}"))
        rows.append(Row("monitors", f"{name}: on", cpu["on"], "cpu s/ep", ratio=1 + measured["overhead_cpu"],
                        target=f"<= {1 + TARGET_OVERHEAD:.2f}x", met=measured["overhead_cpu"] <= TARGET_OVERHEAD,
                        note=f"CPU {measured['overhead_cpu']:+.1%}, wall {wall['on']:.3f} s "
                             f"({measured['overhead_wall']:+.1%}); sampled every {measured['every']} steps"))
    return {"rows": rows, "cases": results}
