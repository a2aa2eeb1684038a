"""Small image data sets in real file formats, written by the tests: CIFAR-10 python pickles and
folders of PNGs. The images are shapes on a dark background (bright shape, random colours,
position and size), so the class lives in the shape, as it does in real photos, and no single
pixel gives it away.

`write_colour_digits` is the bug zoo's second, 3-channel data set: the real `sample` digits as 3x32x32
colour images, written as CIFAR-10 pickles so the zoo reads them through the real `cifar10` source."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "bar", "cross")


def shape_image(kind: int, rng: np.random.Generator, size: int = 32, warm: bool = True) -> np.ndarray:
    """One (size, size, 3) uint8 image of shape `SHAPES[kind % 5]`; warm or cool colours."""
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(size // 3, size - size // 3, 2))
    r = int(rng.integers(size // 5, size // 3))
    hot = [int(rng.integers(180, 256)), int(rng.integers(60, 200)), int(rng.integers(0, 120))]
    colour = tuple(hot if warm else hot[::-1])
    box = (x - r, y - r, x + r, y + r)
    name = SHAPES[kind % len(SHAPES)]
    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle(box, fill=colour)
    elif name == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    elif name == "bar":
        draw.rectangle((x - r, y - r // 3, x + r, y + r // 3), fill=colour)
    else:
        draw.rectangle((x - r, y - r // 4, x + r, y + r // 4), fill=colour)
        draw.rectangle((x - r // 4, y - r, x + r // 4, y + r), fill=colour)
    return np.asarray(image, dtype=np.uint8)


def class_images(n_per_class: int, classes: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 images and (N,) labels, `n_per_class` of each class, shuffled.
    Class c is shape c % 5 in warm colours for c < 5, cool colours after."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), n_per_class))
    images = np.stack([shape_image(int(c), rng, size, warm=c < 5) for c in labels])
    return images, labels


def write_cifar10(folder: Path, train_per_class: int = 60, test_per_class: int = 15, seed: int = 0) -> Path:
    """`folder/cifar-10-batches-py/` holding data_batch_1..5, test_batch and batches.meta, as CIFAR-10 ships them."""
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    images, labels = class_images(train_per_class, 10, seed)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane per row
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5)):
        _pickle(out / f"data_batch_{i + 1}", {b"batch_label": f"training batch {i + 1} of 5".encode(),
                                              b"labels": labels[part].tolist(), b"data": flat[part],
                                              b"filenames": [f"{j}.png".encode() for j in part]})
    test_images, test_labels = class_images(test_per_class, 10, seed + 1)
    _pickle(out / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
                                 b"data": test_images.transpose(0, 3, 1, 2).reshape(len(test_images), -1),
                                 b"filenames": [f"t{j}.png".encode() for j in range(len(test_labels))]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(out / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 10000,
                                   b"num_vis": 3072})
    return out


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (the BINSTRING opcodes), as CIFAR-10's files were written: loaded
    with encoding="bytes" they come back as bytes, with "latin1" as str, exactly like the real ones."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, value: bytes) -> None:
        n = len(value)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + value)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + value)
        self.memoize(value)

    dispatch[bytes] = save_py2_str


def colour_digits(grey: np.ndarray, seed: int) -> np.ndarray:
    """(N, 28, 28) uint8 grey digits -> (N, 32, 32, 3) uint8 colour digits: padded by 2 on each side
    and drawn with a random background and a random foreground colour per image (seeded).

    The background is dark and the stroke bright in every channel (background 0..99, stroke 150..255
    per channel), as in the grey digits: the shape carries the class, the colours carry nothing, and a
    model linear in the pixels still applies. Random polarity would make the set a different problem
    (a digit and its negative), not a colour version of the same one.
    """
    rng = np.random.default_rng(seed)
    n = len(grey)
    alpha = np.pad(grey, ((0, 0), (2, 2), (2, 2))).astype(np.float64)[..., None] / 255.0  # (N, 32, 32, 1)
    background = rng.integers(0, 100, (n, 1, 1, 3)).astype(np.float64)
    stroke = rng.integers(150, 256, (n, 1, 1, 3)).astype(np.float64)
    return np.rint(background + (stroke - background) * alpha).astype(np.uint8)


def write_colour_digits(folder: Path, data=None, seed: int = 0) -> Path:
    """`folder/cifar-10-batches-py/`: the `sample` digits (or `data`, a 1x28x28 DataBundle) as colour
    CIFAR-10 batches; train + val go to data_batch_1..5, test to test_batch, and batches.meta names
    the classes "0".."9"."""
    if data is None:
        from recipe.data import load_data
        data = load_data("sample", download=False)
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": (np.concatenate([data.train.images.cpu().numpy(), data.val.images.cpu().numpy()]),
                        np.concatenate([data.train.labels.cpu().numpy(), data.val.labels.cpu().numpy()])),
              "test": (data.test.images.cpu().numpy(), data.test.labels.cpu().numpy())}
    for offset, (name, (images, labels)) in enumerate(splits.items()):
        flat = colour_digits(images[:, 0], seed * 2 + offset).transpose(0, 3, 1, 2).reshape(len(images), -1)
        parts = np.array_split(np.arange(len(labels)), 5) if name == "train" else [np.arange(len(labels))]
        for i, part in enumerate(parts):
            file = f"data_batch_{i + 1}" if name == "train" else "test_batch"
            _pickle(out / file, {b"batch_label": f"{file} of colour digits".encode(), b"labels": labels[part].tolist(),
                                 b"data": flat[part], b"filenames": [f"{name}{j}.png".encode() for j in part]})
    _pickle(out / "batches.meta", {b"label_names": [str(c).encode() for c in data.class_names],
                                   b"num_cases_per_batch": len(splits["train"][1]) // 5, b"num_vis": flat.shape[1]})
    return out


def _pickle(path: Path, value: dict) -> None:
    with path.open("wb") as handle:
        _Python2Pickler(handle, protocol=2).dump(value)


def write_image_folder(root: Path, per_class: int = 40, classes: int = 3, seed: int = 0, size: int = 32) -> Path:
    """`root/<shape>/<i>.png`, one folder per class."""
    images, labels = class_images(per_class, classes, seed, size)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / SHAPES[label % len(SHAPES)] if label < len(SHAPES) else root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root
