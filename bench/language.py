"""Part "lm": the language-model figures of issue #23, side by side in one process.

    python -m bench.language [--rounds 3] [--threads 1] [--parts check,loop,monitors]

1. `recipe check --data python-source` as a user runs it: the whole command in a fresh process
   (imports, data, every check, figures, report), median of `--repeats`. Target: <= 30 s on 2 cores.
2. `fit` against a plain nanoGPT-style loop on the same tiny GPT, data, optimizer and batches:
   tokens per second of training (the loop: zero_grad, forward, cross-entropy, backward, step; no
   eval, so both are timed on the training steps alone: `fit` is cut with `max_batches` per epoch
   and its val pass is timed apart and taken out). Target: ratio >= 1.0.
3. `fit` with the training monitors on against off (as bench/monitors.py does for images), over two whole
   epochs (`--monitor-epochs`): the monitors sample one step in 21 and measure train accuracy once an
   epoch, so a 60-step cut holds 3 samples and no accuracy pass, too few to weigh them. Target: <= 10%.

Rounds alternate which side goes first; CPU time of this process is the judged figure (torch runs
`--threads` threads), wall time is shown beside it. Nothing asserts a time: it prints.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench.measure import machine
from recipe.all_sources import load_source
from recipe.config import TrainConfig
from recipe.monitors import TrainingMonitor
from recipe.sequences import gpt_pipeline
from recipe.train import fit, seed_epoch

STEPS = 60  # training steps timed per side and round
MONITOR_EPOCHS = 2  # the monitors sample one step in 21 and measure train accuracy once an epoch: two whole
                    # epochs (224 steps on python-source) hold 11 samples and 2 accuracy passes a side


def plain_loop(pipeline, steps: int) -> tuple[float, float, int]:
    """nanoGPT's loop on the pipeline's own model, optimizer and batches: (wall s, CPU s, tokens). Its
    batches are drawn inside the loop, as nanoGPT's get_batch is (`fit` draws them inside its clock too);
    the model and optimizer are built before the clock starts (`fit` builds them inside: a few ms)."""
    model = pipeline.make_model()
    model.train()
    optimizer = pipeline.make_optimizer(model.parameters())
    batches, tokens = itertools.islice(pipeline.batches("train", shuffle=True, generator=seed_epoch(0, 0)), steps), 0
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        tokens += batch.y.numel()
        logits = model(batch.x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), batch.y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


def fit_steps(pipeline, steps: int, monitored: bool = False, epochs: int = 1) -> tuple[float, float, int]:
    """`fit` for `epochs` epochs cut to `steps` batches each, its val/test passes timed apart and taken
    out (the monitors' own train-accuracy pass stays in: it is part of what they cost)."""
    from recipe import train

    spent = {"wall": 0.0, "cpu": 0.0}
    evaluate = train.evaluate

    def timed_evaluate(*args, **kwargs):
        if (args[2] if len(args) > 2 else kwargs.get("split")) == "train":
            return evaluate(*args, **kwargs)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return evaluate(*args, **kwargs)
        finally:
            spent["wall"] += time.perf_counter() - wall
            spent["cpu"] += time.process_time() - cpu
    train.evaluate = timed_evaluate
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        fit(pipeline, quiet=True, max_epochs=epochs, max_batches=steps, write=False,
            monitor=TrainingMonitor() if monitored else None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        train.evaluate = evaluate
    tokens = epochs * min(steps, pipeline.steps_per_epoch) * pipeline.config.batch_size * pipeline.data.train.images.shape[1]
    return wall - spent["wall"], cpu - spent["cpu"], tokens


def side_by_side(first, second, rounds: int) -> dict:
    times = {"a": [], "b": []}
    for r in range(rounds + 1):  # round 0 warms up and is left out
        order = (("a", first), ("b", second)) if r % 2 == 0 else (("b", second), ("a", first))
        for side, run in order:
            wall, cpu, tokens = run()
            if r:
                times[side].append((wall, cpu, tokens))
    return {side: {"wall_s": statistics.median(t[0] for t in runs), "cpu_s": statistics.median(t[1] for t in runs),
                   "tokens": runs[0][2]} for side, runs in times.items()}


def recipe_check_seconds(repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "checks.cli", "check", "--data", "python-source", "--quiet",
                                   "--report-dir", folder], capture_output=True, text=True)
            seconds.append(time.perf_counter() - started)
            if done.returncode not in (0, 1):
                raise SystemExit(f"recipe check failed: {done.stderr[-800:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.language", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the whole `recipe check` command")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parts", default="check,loop,monitors", help="which figures: check, loop, monitors")
    parser.add_argument("--monitor-epochs", type=int, default=MONITOR_EPOCHS)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    if "check" in parts:
        check = recipe_check_seconds(args.repeats)
        print(f"recipe check --data python-source, whole command: median {statistics.median(check):.1f} s "
              f"(runs {', '.join(f'{s:.1f}' for s in check)}); target <= 30 s")
    data = load_source("python-source", download=False)
    pipeline = gpt_pipeline(TrainConfig(lr=3e-3), data)
    if "loop" in parts:
        compare_with_plain_loop(pipeline, data, args.rounds)
    if "monitors" in parts:
        epochs, steps = args.monitor_epochs, 10 ** 9  # whole epochs
        watched = side_by_side(lambda: fit_steps(pipeline, steps, monitored=False, epochs=epochs),
                               lambda: fit_steps(pipeline, steps, monitored=True, epochs=epochs), args.rounds)
        overhead = watched["b"]["cpu_s"] / watched["a"]["cpu_s"] - 1
        print(f"training monitors on vs off, {epochs} whole epochs: {watched['a']['cpu_s']:.2f} -> {watched['b']['cpu_s']:.2f} "
              f"CPU s, {overhead:+.1%} (wall {watched['a']['wall_s']:.2f} -> {watched['b']['wall_s']:.2f} s); "
              "target <= 10%")


def compare_with_plain_loop(pipeline, data, rounds: int) -> None:
    loop = side_by_side(lambda: fit_steps(pipeline, STEPS), lambda: plain_loop(pipeline, STEPS), rounds)
    fit_rate = loop["a"]["tokens"] / loop["a"]["cpu_s"]
    plain_rate = loop["b"]["tokens"] / loop["b"]["cpu_s"]
    print(f"fit vs a plain nanoGPT loop, {STEPS} steps of batch {pipeline.config.batch_size} x block "
          f"{data.train.images.shape[1]}: {fit_rate:,.0f} vs {plain_rate:,.0f} tokens per CPU second, ratio "
          f"{fit_rate / plain_rate:.2f} (wall {loop['a']['wall_s']:.2f} vs {loop['b']['wall_s']:.2f} s); target >= 1.0")


if __name__ == "__main__":
    main()
