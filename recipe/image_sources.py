"""Two more image sources: CIFAR-10's python pickles and a folder of images in class subfolders.

Both return raw uint8 images `(N, C, H, W)` and int64 labels `(N,)` as CPU tensors, per split
("train", "test", optionally "val", or "all" for one folder to split), plus the class names, and
raise `DataError` with one line saying what is wrong and how to fix it.
"""
from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from recipe.errors import DataError
from recipe.sources import RawSplit

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FOLDER = "cifar-10-batches-py"  # what the official tarball and torchvision unpack to
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_FOLDERS = ("train", "val", "test")


# ---------------------------------------------------------------- CIFAR-10

def find_cifar10(data_dir: Path) -> Path | None:
    """The folder holding CIFAR-10's pickles: `data_dir` itself or `data_dir/cifar-10-batches-py`."""
    for folder in (data_dir / CIFAR10_FOLDER, data_dir):
        if all((folder / name).is_file() for names in CIFAR10_FILES.values() for name in names):
            return folder
    return None


def read_cifar10(folder: Path) -> dict[str, RawSplit]:
    """CIFAR-10's python version: each batch a pickled dict with b"data" (N, 3072) uint8, R then G then
    B planes of 32x32, and b"labels". Unpickling runs code: read only files you trust, as torchvision does."""
    splits = {}
    for split, names in CIFAR10_FILES.items():
        images, labels = [], []
        for name in names:
            batch = _unpickle(folder / name)
            data, batch_labels = batch.get(b"data"), batch.get(b"labels", batch.get(b"fine_labels"))
            if data is None or batch_labels is None:
                raise DataError(f"{folder / name} has no b'data'/b'labels' entries: is it a CIFAR-10 python batch?")
            data = np.asarray(data, dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
                raise DataError(f"{folder / name} holds data of shape {data.shape} with {len(batch_labels)} labels; "
                                "expected (N, 3072) and N labels")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch_labels, dtype=np.int64))
        splits[split] = RawSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))
    return splits


def cifar10_class_names(folder: Path) -> tuple[str, ...]:
    """The class names `batches.meta` lists (b"label_names"), as CIFAR-10 ships them; CIFAR10_CLASSES
    when the file is absent or lists something else than one name per class of 10."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASSES
    names = _unpickle(meta).get(b"label_names")
    if not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); "
                        "download it again") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    return batch


# ---------------------------------------------------------------- image folders

def read_image_folder(root: Path) -> tuple[dict[str, RawSplit], tuple[str, ...]]:
    """`root/train/<class>/*` (with optional `val/` and `test/`), or `root/<class>/*` as one split.

    Every image must have the same size; grey images give one channel, anything else three (RGB,
    alpha dropped). Returns ({split or "all": RawSplit}, class names in sorted order).
    """
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder; point it at a folder of class subfolders")
    if _class_folders(root / "train"):
        classes = tuple(_class_folders(root / "train"))
        parts = {s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()}
        if "test" not in parts:
            raise DataError(f"{root} has train/ but no test/: add {root}/test/<class>/..., or put the class "
                            f"folders straight under {root} to have them split for you")
    else:
        classes = tuple(_class_folders(root))
        if not classes:
            raise DataError(f"{root} has no class subfolders: expected {root}/<class>/*.png or "
                            f"{root}/train/<class>/*.png")
        parts = {"all": root}
    files = {split: _image_files(folder, classes, split) for split, folder in parts.items()}
    grey = all(_mode(path) in ("1", "L", "LA", "I", "I;16", "F") for found in files.values() for path, _ in found[:50])
    raw = {split: _read_images(found, grey) for split, found in files.items()}
    sizes = Counter(tuple(r.images.shape[2:]) for r in raw.values())
    if len(sizes) > 1:
        raise DataError(f"the splits of {root} hold images of different sizes ({', '.join(f'{h}x{w}' for h, w in sizes)}); "
                        "resize them to one size first")
    return raw, classes


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, classes: tuple[str, ...], split: str) -> list[tuple[Path, int]]:
    unknown = sorted(set(_class_folders(folder)) - set(classes))
    if unknown:
        raise DataError(f"{folder} has class folders {', '.join(unknown)} that train/ does not have")
    found = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if class_dir.is_dir():
            found += [(p, label) for p in sorted(class_dir.iterdir())
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not found:
        raise DataError(f"{folder} ({split}) holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders")
    return found


def _mode(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode
    except Exception as err:  # PIL raises many types for a bad file
        raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err}); remove or replace it") from None


def _read_images(found: list[tuple[Path, int]], grey: bool) -> RawSplit:
    from PIL import Image

    arrays, labels, first = [], [], None
    for path, label in found:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)
        except Exception as err:  # truncated, not an image, unsupported: the user's file to fix
            raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err}); remove or replace it") from None
        if first is None:
            first = (array.shape, path)
        elif array.shape != first[0]:
            raise DataError(f"mixed image sizes: {path} is {array.shape[1]}x{array.shape[0]} but {first[1]} is "
                            f"{first[0][1]}x{first[0][0]}; resize the images to one size first")
        arrays.append(array)
        labels.append(label)
    stacked = np.stack(arrays)
    images = stacked[:, None] if grey else stacked.transpose(0, 3, 1, 2)  # (N, C, H, W)
    return RawSplit(torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels, dtype=torch.int64))
