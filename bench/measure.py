"""Small measuring tools shared by the benchmark parts: medians, memory peaks, machine facts."""
from __future__ import annotations

import os
import platform
import resource
import statistics
from dataclasses import asdict, dataclass

import torch


@dataclass
class Row:
    """One line of the printed table (and of the JSON): a measured value, optionally a ratio and its target."""
    part: str
    item: str
    value: float | None
    unit: str
    ratio: float | None = None      # how many times faster (or bigger) than the named baseline
    target: str = ""                # e.g. ">= 15x"; empty when the row is context only
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a child started by a big
    parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_start": list(os.getloadavg())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
