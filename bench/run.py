"""The side-by-side benchmark: prints a table of ratios and writes the raw figures as JSON.

    python -m bench.run                                   # all parts on CPU
    python -m bench.run --parts epoch,sklearn --rounds 7 --out bench/results/cpu.json
    python -m bench.run --device cuda                     # the same figures on a GPU
    python -m bench.run --parts gpu                       # epoch, sklearn, scaling and batch512 on CUDA
    python -m bench.run --parts startup --repeats 5       # `recipe check` wall time vs `import torch`
    python -m bench.run --parts monitors --rounds 3 --threads 1  # epoch time, training monitors on vs off

Every comparison runs in this one process, on the same data, alternating which side goes first.
Nothing here asserts a time: it prints, and a human or CI reads it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.measure import Row, machine

PARTS = ("epoch", "sklearn", "preflight", "scaling", "batch512", "startup", "cnn", "monitors", "gpu")
GPU_PARTS = ["epoch", "sklearn", "scaling", "batch512"]  # what --parts gpu runs with cuda
DEFAULT_OUT = Path("bench/results/latest.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="device for epoch, sklearn and scaling (default: cpu); 'gpu' always uses cuda")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per loop in the epoch part (default: 5)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of the sklearn, preflight and startup parts (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every loop, and the BLAS threads of scikit-learn "
                        "(default: the libraries' own choice; 1 is steadier on a shared machine)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the epoch part (default: 64)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one recipe epoch (torch.profiler) and print its top ops")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def format_table(rows: list[Row]) -> str:
    def num(value, fmt):
        return "" if value is None else format(value, fmt)

    header = f"{'part':<10} {'item':<44} {'value':>10} {'unit':<8} {'ratio':>8} {'target':<26} {'met':<4} note"
    lines = [header, "-" * len(header)]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(f"{row.part:<10} {row.item[:44]:<44} {num(row.value, '10.3f')} {row.unit:<8} "
                     f"{num(row.ratio, '8.2f')} {row.target:<26} {met:<4} {row.note}")
    return "\n".join(lines)


def run_parts(parts: list[str], device: str, args: argparse.Namespace, label: str = "") -> dict:
    """Run the data-driven parts on one device; returns {part: result dict}."""
    from recipe.config import TrainConfig
    from recipe.data import load_data

    if device == "cuda" and not torch.cuda.is_available():
        print(f"{(label or device).rstrip('/')}: skipped: no CUDA")
        return {part: {"skipped": "no CUDA", "rows": [Row(f"{label}{part}", "skipped: no CUDA", None, "")]}
                for part in parts}
    results = {}
    data = load_data("fashion-mnist", device=device, download=False) \
        if set(parts) & {"epoch", "sklearn", "batch512"} else None
    for part in parts:
        started = time.perf_counter()
        print(f"[{label}{part}] running...", file=sys.stderr, flush=True)
        if part == "epoch":
            from bench import epoch

            results[part] = epoch.run(data, TrainConfig(batch_size=args.batch_size), args.rounds,
                                      profile=args.profile)
        elif part == "sklearn":
            from bench import accuracy

            results[part] = accuracy.run(data, accuracy.FAST_CONFIG, args.repeats, args.threads)
        elif part == "scaling":
            from bench import scaling

            results[part] = scaling.run(device, TrainConfig(batch_size=args.batch_size), args.threads)
        elif part == "batch512":
            from bench import large_batch

            results[part] = large_batch.run(data, args.rounds)
        elif part == "preflight":
            from bench import preflight

            results[part] = preflight.run(device, args.repeats)
        elif part == "startup":
            from bench import startup

            results[part] = startup.run(args.repeats)
        elif part == "monitors":
            from bench import monitors

            results[part] = monitors.run(device, args.rounds)
        elif part == "cnn":
            from bench import preflight_cnn

            results[part] = preflight_cnn.run(args.repeats)
        results[part]["part_wall_s"] = time.perf_counter() - started
        for row in results[part]["rows"]:
            row.part = f"{label}{row.part}"
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "parts": {}}
    main_parts = [p for p in args.parts if p != "gpu"]
    report["parts"].update(run_parts(main_parts, args.device, args))
    if "gpu" in args.parts:
        if args.device == "cuda":
            print("gpu: the other parts already ran with --device cuda")
        else:
            gpu = run_parts(GPU_PARTS, "cuda", args, label="gpu/")
            report["parts"].update({f"gpu/{part}": result for part, result in gpu.items()})
    report["machine"]["load_average_end"] = list(os.getloadavg())
    rows = [row for result in report["parts"].values() for row in result.get("rows", [])]
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
          f"load average {m['load_average_start'][0]:.1f} -> {m['load_average_end'][0]:.1f}")
    print(format_table(rows))
    for name, result in report["parts"].items():
        if result.get("profile"):
            print(f"\n{name}: one recipe epoch under torch.profiler\n{result['profile']}")
    for result in report["parts"].values():
        result["rows"] = [row.as_dict() for row in result.get("rows", [])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
