"""Part 4: epoch time and peak memory at 1x, 4x and 10x the train data (synthetic copies).

Each scale runs in its own process, so its peak memory is its own (VmHWM; on CUDA,
torch.cuda.max_memory_allocated). Linear growth shows as a per-copy cost ratio near 1.0.

    python -m bench.scaling --scale 4 --device cpu     # one scale, prints one JSON line
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from bench.measure import Row, current_rss_mb, peak_rss_mb, sync

SCALES = (1, 4, 10)


def copies(data, scale: int):
    """The bundle with its train split repeated `scale` times (val and test unchanged)."""
    from dataclasses import replace

    from recipe.data import Split

    train = Split(data.train.images.repeat(scale, *[1] * (data.train.images.dim() - 1)), data.train.labels.repeat(scale))
    return replace(data, train=train)


def measure(scale: int, device: str, config_json: str) -> dict:
    from recipe.config import TrainConfig
    from recipe.data import load_data
    from recipe.pipeline import default_pipeline
    from recipe.train import fit

    rss_start = current_rss_mb()
    data = copies(load_data("fashion-mnist", device=device, download=False), scale)
    config = TrainConfig.from_dict({**json.loads(config_json), "epochs": 2})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = fit(default_pipeline(config, data), quiet=True)
    sync(torch.device(device))
    out = {"scale": scale, "train_examples": len(data.train),
           "epoch_s": [row["seconds"] for row in result.history],
           "peak_rss_mb": peak_rss_mb(), "rss_at_start_mb": rss_start}
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run(device: str, config, threads: int | None, scales=SCALES) -> dict:
    results = []
    for scale in scales:
        cmd = [sys.executable, "-m", "bench.scaling", "--scale", str(scale), "--device", device,
               "--config", json.dumps(config.as_dict())]
        if threads:
            cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = results[0]
    memory_key = "peak_cuda_mb" if device == "cuda" else "peak_rss_mb"
    base_time = base["epoch_s"][-1] / base["scale"]
    # bytes one copy of the train split holds: uint8 pixels + the float32 normalised cache + int64 labels
    copy_mb = base["train_examples"] / base["scale"] * (28 * 28 * (1 + 4) + 8) / 2**20
    rows = []
    for res in results:
        k = res["scale"]
        per_copy_time = res["epoch_s"][-1] / k
        rows.append(Row("scaling", f"{k}x ({res['train_examples']} ex) epoch", res["epoch_s"][-1], "s",
                        ratio=per_copy_time / base_time, target="~1.0 (linear)",
                        note=f"ratio = (time / {k}) / 1x time; first epoch {res['epoch_s'][0]:.2f} s"))
        if k == base["scale"]:
            above = "" if device == "cuda" else \
                f"{res[memory_key] - res['rss_at_start_mb']:.0f} MB above the process before loading; "
            rows.append(Row("scaling", f"{k}x peak memory", res[memory_key], "MB",
                            note=f"{above}one copy of the data holds {copy_mb:.0f} MB"))
            continue
        extra = (res[memory_key] - base[memory_key]) / (k - base["scale"])
        rows.append(Row("scaling", f"{k}x peak memory", res[memory_key], "MB", ratio=extra / copy_mb,
                        target="~1.0 (linear)",
                        note=f"+{extra:.0f} MB per extra copy; ratio = that / {copy_mb:.0f} MB held per copy"))
    return {"rows": rows, "scales": results, "config": config.as_dict(), "device": device,
            "bytes_per_copy_mb": copy_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.scale, args.device, args.config)))


if __name__ == "__main__":
    main()
