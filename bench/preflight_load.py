"""Load: the whole preflight (every check, gate off) on full Fashion-MNIST and on a copy 10x larger.

Each scale runs in its own process so its peak RSS is its own. Every split is tiled `scale`
times (70k -> 700k images); tiling repeats images within a split, never across splits.

    python -m bench.preflight_load            # 1x and 10x, prints a table
    python -m bench.preflight_load --scale 10 # one scale, prints one JSON line
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def tiled(data, scale: int):
    from dataclasses import replace

    from recipe.data import Split

    grow = lambda s: Split(s.images.repeat(scale, *[1] * (s.images.dim() - 1)), s.labels.repeat(scale))
    return replace(data, train=grow(data.train), val=grow(data.val), test=grow(data.test))


def measure(scale: int) -> dict:
    from checks import run_all
    from recipe.config import TrainConfig
    from recipe.data import load_data
    from recipe.pipeline import default_pipeline

    started = time.perf_counter()
    data = tiled(load_data("fashion-mnist", download=False), scale)
    loaded = time.perf_counter()
    results = run_all(default_pipeline(TrainConfig(), data), gate=False)
    done = time.perf_counter()
    return {"scale": scale, "images": len(data.train) + len(data.val) + len(data.test),
            "load_s": round(loaded - started, 2), "checks_s": round(done - loaded, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "verdicts": {r.name: r.verdict.value for r in results},
            "slowest": sorted(((round(r.duration_s, 2), r.name) for r in results), reverse=True)[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=None, help="one scale in this process")
    args = parser.parse_args()
    if args.scale is not None:
        print(json.dumps(measure(args.scale)))
        return
    print(f"{'scale':>5} {'images':>8} {'load s':>7} {'checks s':>9} {'peak RSS MB':>12}  fails  slowest checks")
    for scale in (1, 10):
        out = subprocess.run([sys.executable, "-m", "bench.preflight_load", "--scale", str(scale)],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        fails = [n for n, v in row["verdicts"].items() if v in ("FAIL", "ERROR")]
        print(f"{row['scale']:>5} {row['images']:>8} {row['load_s']:>7} {row['checks_s']:>9} {row['peak_rss_mb']:>12}"
              f"  {fails or 'none'}  {row['slowest']}")


if __name__ == "__main__":
    main()
