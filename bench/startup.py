"""Part `startup`: `recipe check` as a user times it, the whole command, against the floor every torch
program pays: cold (a fresh process, as in CI or a first run) and warm (forked from the warm process
that `recipe warm`, or the first check on a terminal, leaves running: recipe/warm.py).

Floors: `python -c "import torch"`, and torch plus one optimizer step, because the first
`Optimizer.step()` (and the first optimizer built) imports `torch._dynamo` (torch/optim/optimizer.py
`_use_grad`, torch/_compile.py `_disable_dynamo`), which costs about as much again as torch itself;
any pipeline that trains pays it. The split of each run comes from its results.json: data load,
checks, and the figures left to draw after the checks (the CLI draws the others in a worker process
while the checks run); the rest is interpreter start, imports and exit.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import Row, median

TARGETS_S = {"sample": 3.0, "fashion-mnist": 5.0}
FLOORS = {"python -c 'import torch'": "import torch",
          "import torch + one optimizer step (the step imports torch._dynamo)":
              "import torch; p = torch.zeros(1, requires_grad=True); o = torch.optim.SGD([p], lr=0.1); "
              "p.sum().backward(); o.step()"}
REPO = Path(__file__).resolve().parents[1]


def _env(warm_dir: str | None = None) -> dict[str, str]:
    env = dict(os.environ, RECIPE_WARM="1" if warm_dir else "0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if warm_dir:
        env["RECIPE_WARM_DIR"] = warm_dir
    return env


def _wall(argv: list[str], cwd: Path, warm_dir: str | None = None) -> tuple[float, int]:
    """(wall seconds, exit code) of one child; its CPU seconds go to CPU_S (less hit by a busy machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=_env(warm_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall, done.returncode


CPU_S: list[float] = []  # CPU seconds of each child, in the order they ran


def check_once(data: str, cwd: Path, warm_dir: str | None = None) -> tuple[float, int, dict]:
    with tempfile.TemporaryDirectory() as reports:
        seconds, code = _wall([sys.executable, "-m", "checks.cli", "check", "--data", data, "--no-download",
                               "--quiet", "--report-dir", reports], cwd, warm_dir)
        found = sorted(Path(reports).glob("2*/results.json"))
        timings = json.loads(found[-1].read_text())["timings"] if found else {}
    return seconds, code, timings


def _cpu() -> str:
    return f"{median(CPU_S):.2f} s" if CPU_S else "?"


def fashion_available() -> bool:
    from recipe.data import _find_fashion

    return _find_fashion(Path("data")) is not None


def run(repeats: int) -> dict:
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryDirectory() as warm_dir:
        for name, code in FLOORS.items():
            del CPU_S[:]
            walls = [_wall([sys.executable, "-c", code], Path(cwd))[0] for _ in range(repeats)]
            raw[name] = walls
            rows.append(Row("startup", name, median(walls), "s", note=f"floor; CPU {_cpu()}"))
        floor = median(raw[next(iter(FLOORS))])
        del CPU_S[:]
        cli = [_wall([sys.executable, "-m", "checks.cli", "--help"], Path(cwd))[0] for _ in range(repeats)]
        rows.append(Row("startup", "recipe --help (imports no torch)", median(cli), "s", note=f"CPU {_cpu()}"))
        datasets = [d for d in TARGETS_S if d != "fashion-mnist" or fashion_available()]
        if len(datasets) < len(TARGETS_S):
            rows.append(Row("startup", "recipe check --data fashion-mnist", None, "s", note="skipped: no files"))
        for data in datasets:
            rows += _cold_rows(data, repeats, floor, Path(cwd), raw)
        seconds, code = _wall([sys.executable, "-m", "checks.cli", "warm"], Path(cwd), warm_dir)
        rows.append(Row("startup", "recipe warm (once: start the warm process)", seconds, "s",
                        note=f"exit {code}; returns when it is ready"))
        try:
            for data in datasets:
                del CPU_S[:]
                runs = [check_once(data, Path(cwd), warm_dir) for _ in range(repeats)]
                raw[f"{data} warm"] = [{"wall_s": s, "exit": c, "timings": t} for s, c, t in runs]
                wall = median([s for s, _, _ in runs])
                kinds = sorted({t.get("process", "?") for _, _, t in runs})
                rows.append(Row("startup", f"recipe check --data {data}, warm", wall, "s", ratio=wall / floor,
                                target=f"<= {TARGETS_S[data]:g} s", met=wall <= TARGETS_S[data],
                                note=f"CPU {_cpu()} (the client's); ran {'/'.join(kinds)}; ratio: x import torch"))
        finally:
            _wall([sys.executable, "-m", "checks.cli", "warm", "--stop"], Path(cwd), warm_dir)
    return {"rows": rows, "raw": raw}


def _cold_rows(data: str, repeats: int, floor: float, cwd: Path, raw: dict) -> list[Row]:
    del CPU_S[:]
    runs = [check_once(data, cwd) for _ in range(repeats)]
    raw[data] = [{"wall_s": s, "exit": c, "timings": t} for s, c, t in runs]
    wall = median([s for s, _, _ in runs])
    seconds, _, timings = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    recorded = {k: timings.get(k) or 0.0 for k in ("data_load_s", "checks_s", "figures_wait_s", "report_s")}
    target = TARGETS_S[data]
    return [Row("startup", f"recipe check --data {data} (whole command), cold", wall, "s", ratio=wall / floor,
                target=f"<= {target:g} s", met=wall <= target,
                note=f"CPU {_cpu()}; exit codes {[c for _, c, _ in runs]}; ratio: x import torch"),
            Row("startup", "  data load (recorded)", recorded["data_load_s"], "s"),
            Row("startup", "  checks (recorded)", recorded["checks_s"], "s",
                note="from 20,000 train images the data stage runs in a forked copy beside the others"),
            Row("startup", "  waiting for the figures worker after the checks (recorded)", recorded["figures_wait_s"],
                "s", note="it draws while the checks run; this process helps with a backlog"),
            Row("startup", "  figures drawn here, and the page (recorded)", recorded["report_s"], "s"),
            Row("startup", "  total_s in results.json", timings.get("total_s"), "s",
                note="process start to written report"),
            Row("startup", "  the rest: interpreter, imports (torch, torch._dynamo), exit",
                seconds - sum(recorded.values()), "s")]
