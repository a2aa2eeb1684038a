"""Say what a `--data-dir` holds when `--data auto` could not use it, and why.

A folder of PNGs, a half-copied MNIST (train files but no test files) or IDX files under other names
make `auto` fall back to the sample quietly enough to be missed: the user believes their data
trained. One line names what was found and what `auto` looks for instead.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from recipe.sources import IDX_NAMES

MAX_FILES = 20_000  # a survey, not an index: stop counting after this many files
MAX_DEPTH = 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def why_not_used(data_dir: Path) -> str | None:
    """One line on what `data_dir` holds that `--data auto` did not read, or None when it holds nothing."""
    if not data_dir.is_dir():
        return None
    files = _files(data_dir)
    if not files:
        return None
    wanted = [name for pair in IDX_NAMES.values() for name in pair]
    names = {p.name.removesuffix(".gz") for p in files}
    present = [name for name in wanted if name in names]
    if present:
        missing = [name for name in wanted if name not in names]
        return (f"{data_dir} has {', '.join(present)} but not {', '.join(missing)} (in one folder), so it is not "
                "used: --data auto needs all four MNIST IDX files")
    kinds = Counter(_kind(p) for p in files)
    counted = ", ".join(f"{n:,} {kind}" for kind, n in kinds.most_common(4))
    more = f" and {len(kinds) - 4} other kinds" if len(kinds) > 4 else ""
    capped = "+" if len(files) >= MAX_FILES else ""
    return (f"{data_dir} holds {len(files):,}{capped} files ({counted}{more}) but none of the MNIST IDX files "
            f"--data auto reads ({', '.join(wanted[:2])}, ... optionally .gz), so it is not used{_hint(files, kinds)}")


def _hint(files: list[Path], kinds: Counter) -> str:
    """Which other source reads what was found, if one does."""
    if any(p.name.startswith("data_batch_") or p.name == "test_batch" for p in files):
        return "; for the CIFAR-10 python pickles pass --data cifar10"
    if sum(n for kind, n in kinds.items() if kind.endswith(IMAGE_SUFFIXES)) > len(files) / 2:
        return "; for a folder of images (one subfolder per class) pass --data folder"
    return ""


def _files(root: Path) -> list[Path]:
    found: list[Path] = []
    stack = [(root, 0)]
    while stack and len(found) < MAX_FILES:
        folder, depth = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and depth < MAX_DEPTH:
                stack.append((entry, depth + 1))
            elif entry.is_file():
                found.append(entry)
                if len(found) >= MAX_FILES:
                    break
    return found


def _kind(path: Path) -> str:
    suffixes = "".join(path.suffixes[-2:]).lower() if path.suffix else ""
    return suffixes if suffixes else "without extension"
