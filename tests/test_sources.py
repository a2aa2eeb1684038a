"""Reading IDX and CSV sources, and the one-line DataError every kind of bad input must give."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe import sources
from recipe.data import load_data
from recipe.errors import DataError
from tests.conftest import fake_split, idx_bytes, write_bytes

DEBIAN_PRESENT = sources.find_idx_dir(sources.DEBIAN_FASHION_DIR) == sources.DEBIAN_FASHION_DIR


# ---------------------------------------------------------------- valid files

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_read_idx_split_returns_what_was_written(idx_folder, gz):
    folder, written = idx_folder(gz=gz)
    for split, (images, labels) in written.items():
        raw = sources.read_idx_split(folder, split)
        assert raw.images.dtype == torch.uint8 and raw.labels.dtype == torch.int64
        assert torch.equal(raw.images, torch.from_numpy(images).unsqueeze(1))
        assert torch.equal(raw.labels, torch.from_numpy(labels.astype(np.int64)))


@pytest.mark.parametrize("layout", ["", "MNIST/raw"], ids=["flat", "torchvision"])
def test_load_mnist_from_folder_layouts(idx_folder, tmp_path, layout):
    folder, written = idx_folder(layout, gz=True, train_per_class=24, test_per_class=3)
    data = load_data("mnist", tmp_path, download=False)
    assert data.source == "mnist" and str(folder) in data.reason
    # 24 per class: round(24 / 12) = 2 per class go to val
    assert (len(data.train), len(data.val), len(data.test)) == (220, 20, 30)
    train_images, train_labels = written["train"]
    together = torch.cat([data.train.images, data.val.images])
    assert sorted(map(bytes, together.numpy())) == sorted(map(bytes, train_images))
    assert torch.equal(data.test.images, torch.from_numpy(written["test"][0]).unsqueeze(1))


def test_load_fashion_from_torchvision_layout(idx_folder, tmp_path):
    folder, _ = idx_folder("FashionMNIST/raw")
    data = load_data("fashion-mnist", tmp_path, download=False)
    assert data.source == "fashion-mnist" and str(folder) in data.reason
    assert data.class_names == sources.FASHION_CLASSES
    assert len(data.test) == 30


def test_auto_without_files_or_downloads_falls_back_to_sample(tmp_path, fast_sample):
    data = load_data("auto", tmp_path, download=False)
    assert data.source == "sample"
    assert "downloads are off" in data.reason


@pytest.mark.skipif(not DEBIAN_PRESENT, reason=f"Debian Fashion-MNIST not installed in {sources.DEBIAN_FASHION_DIR} "
                                              "(apt-get install dataset-fashion-mnist)")
@pytest.mark.parametrize("split, n", [("train", 60_000), ("test", 10_000)])
def test_real_debian_fashion_mnist(split, n):
    raw = sources.read_idx_split(sources.DEBIAN_FASHION_DIR, split)
    assert raw.images.shape == (n, 1, 28, 28)
    assert torch.equal(torch.bincount(raw.labels), torch.full((10,), n // 10))  # Fashion-MNIST is balanced
    assert raw.images.float().std() > 50  # real pictures, not a blank or constant file


@pytest.mark.skipif(not DEBIAN_PRESENT, reason="Debian Fashion-MNIST not installed")
def test_fashion_falls_back_to_debian_folder(tmp_path):
    data = load_data("fashion-mnist", tmp_path / "empty", download=False)
    assert str(sources.DEBIAN_FASHION_DIR) in data.reason
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)


def test_real_sample_csv(sample_raw):
    assert sample_raw.images.shape == (5000, 1, 28, 28) and sample_raw.images.dtype == torch.uint8
    assert set(sample_raw.labels.tolist()) == set(range(10))
    assert sample_raw.images.max() == 255 and sample_raw.images.min() == 0


# ---------------------------------------------------------------- missing / unreadable

def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match=r"no mnist IDX files in .*nowhere.*--data sample"):
        load_data("mnist", tmp_path / "nowhere", download=False)
    with pytest.raises(DataError, match="has no train-images-idx3-ubyte"):
        sources.read_idx_split(tmp_path / "nowhere", "train")


def test_empty_dir(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no mnist IDX files in"):
        load_data("mnist", tmp_path / "data", download=False)


def test_data_dir_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_data("mnist", tmp_path / "data", download=False)


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'cifar'; choose one of"):
        load_data("cifar", tmp_path, download=False)


def test_directory_where_a_file_is_expected(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").mkdir()
    with pytest.raises(DataError, match=r"cannot read .*train-images-idx3-ubyte"):
        sources.read_idx(tmp_path / "train-images-idx3-ubyte", 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; "
                                             "test_permission_denied simulates it instead")
def test_unreadable_file(tmp_path):
    path = write_bytes(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))
    path.chmod(0)
    with pytest.raises(DataError, match="permission denied; fix its permissions"):
        sources.read_idx(path, 1)


def test_permission_denied(tmp_path, monkeypatch):
    path = write_bytes(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))

    def denied(self):  # root ignores chmod 000, so simulate what a normal user would hit
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="permission denied; fix its permissions"):
        sources.read_idx(path, 1)


# ---------------------------------------------------------------- corrupt IDX

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_idx(tmp_path, gz):
    images, _ = fake_split(1, seed=0)
    path = write_bytes(tmp_path / "images", idx_bytes(images)[:-100], gz)
    with pytest.raises(DataError, match=r"holds 7740 bytes of data but its header says \(10, 28, 28\) \(7840 bytes\)"):
        sources.read_idx(path, 3)


def test_file_shorter_than_header(tmp_path):
    path = write_bytes(tmp_path / "labels", b"\x00\x00\x08")
    with pytest.raises(DataError, match=r"truncated \(3 bytes, shorter than its header\)"):
        sources.read_idx(path, 1)


def test_wrong_magic_label_file_given_as_images(tmp_path):
    path = write_bytes(tmp_path / "images", idx_bytes(np.zeros(10, np.uint8)))
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        sources.read_idx(path, 3)


def test_wrong_magic_not_unsigned_bytes(tmp_path):
    path = write_bytes(tmp_path / "labels", idx_bytes(np.zeros(4, np.uint8), magic=0x00000D01))  # 0x0D = float
    with pytest.raises(DataError, match="magic number 0x00000d01"):
        sources.read_idx(path, 1)


@pytest.mark.parametrize("content", [b"this is not gzip at all", None], ids=["garbage", "cut-short"])
def test_corrupt_gzip(tmp_path, content):
    if content is None:
        content = gzip.compress(idx_bytes(fake_split(1, seed=0)[0]))[:200]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is not a valid gzip file .*download it again"):
        sources.read_idx(path, 3)


def test_image_label_count_mismatch(idx_folder):
    folder, _ = idx_folder()
    write_bytes(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(DataError, match="has 30 images but .* has 29 labels"):
        sources.read_idx_split(folder, "test")


def test_wrong_image_size(idx_folder):
    folder, _ = idx_folder()
    images, _ = fake_split(3, seed=0, size=32)
    write_bytes(folder / "t10k-images-idx3-ubyte", idx_bytes(images))
    with pytest.raises(DataError, match=r"images of size \(32, 32\), expected 28x28"):
        sources.read_idx_split(folder, "test")


def test_corrupt_file_surfaces_through_load_data(idx_folder, tmp_path):
    folder, _ = idx_folder("MNIST/raw")
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(DataError, match="holds 1 bytes of data but its header says"):
        load_data("mnist", tmp_path, download=False)


# ---------------------------------------------------------------- corrupt sample CSV

def _csv_gz(path: Path, rows: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return path


GOOD_ROW = ",".join(["0"] * 784 + ["7"])


def test_sample_csv_roundtrip(tmp_path):
    row = ",".join([str(i % 256) for i in range(784)] + ["3"])
    raw = sources.read_sample_csv(_csv_gz(tmp_path / "ok.csv.gz", [GOOD_ROW, row]))
    assert raw.labels.tolist() == [7, 3]
    assert raw.images[1].flatten().tolist() == [i % 256 for i in range(784)]


@pytest.mark.parametrize("bad_row, message", [
    (",".join(["0"] * 784 + ["x"]), "is not a valid sample CSV"),       # non-numeric value
    (",".join(["0"] * 700), "row 2 is malformed"),                       # short row
    (",".join(["0"] * 790), "row 2 is malformed"),                       # long row
    (",".join(["300"] * 784 + ["1"]), r"pixel values outside 0\.\.255"),
], ids=["non-numeric", "short-row", "long-row", "pixel-out-of-range"])
def test_sample_csv_malformed_row(tmp_path, bad_row, message):
    path = _csv_gz(tmp_path / "bad.csv.gz", [GOOD_ROW, bad_row, GOOD_ROW])
    with pytest.raises(DataError, match=message):
        sources.read_sample_csv(path)


def test_sample_csv_wrong_width(tmp_path):
    path = _csv_gz(tmp_path / "narrow.csv.gz", ["1,2,3", "4,5,6"])
    with pytest.raises(DataError, match="rows of 3 values, expected 785"):
        sources.read_sample_csv(path)


def test_sample_csv_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="is not a valid sample CSV"):
        sources.read_sample_csv(path)
