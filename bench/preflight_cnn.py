"""Part `cnn`: the whole preflight on the pytorch/examples MNIST CNN on `sample`, as a user runs it.

    recipe check --data sample --pipeline tests/pipelines/pytorch_examples_mnist.py:build

timed as a child process (imports, data, checks, figures and report included), with each check's
share read from the run's results.json, and the length of its reference run: steps chosen from the
model's forward FLOPs (checks/measure/step_budget.py), the same on every machine, so that only the seconds
move between machines. Target: 30 s on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import Row, median

TARGET_S = 30.0
PIPELINE = "tests/pipelines/pytorch_examples_mnist.py:build"


def run_once() -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "checks.cli", "check", "--data", "sample", "--no-download", "--quiet",
                   "--pipeline", PIPELINE, "--report-dir", tmp]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode not in (0, 1):
            raise RuntimeError(f"recipe check failed: {done.stderr.strip()[-500:]}")
        record = json.loads((Path(tmp) / "latest" / "results.json").read_text())
    return wall, record["checks"]


def run(repeats: int) -> dict:
    walls, checks = [], []
    for _ in range(repeats):
        wall, checks = run_once()
        walls.append(wall)
    wall = median(walls)
    slowest = sorted(checks, key=lambda c: -c.get("duration_s", 0))[:4]
    note = ", ".join(f"{c['name']} {c['duration_s']:.1f} s" for c in slowest)
    verdicts = sorted({c["verdict"] for c in checks})
    reference = next((c["details"] for c in checks if c["name"] == "input_independent_baseline"), {})
    length = (f"reference run {reference['steps']} steps ({reference.get('budget', '').split(': ', 1)[-1]}); "
              if "steps" in reference else "")
    rows = [Row("cnn", "recipe check, pytorch/examples CNN on sample", wall, "s", target=f"<= {TARGET_S:g} s",
                met=wall <= TARGET_S, note=f"{length}verdicts {'/'.join(verdicts)}; slowest: {note}")]
    return {"walls_s": walls, "checks": checks, "reference_run": reference, "rows": rows}
