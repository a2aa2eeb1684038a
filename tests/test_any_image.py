"""Any image classifier: CIFAR-10 pickles, folders of images, the user's own Datasets, per-channel
stats, and colour all the way to the report. The data are small files of the real formats,
written here (tests/synthetic.py)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from checks import run_all
from checks.cli.main import main
from recipe.config import TrainConfig
from recipe.data import load_data
from recipe.datasets import bundle_from_datasets
from recipe.errors import DataError
from recipe.pipeline import default_pipeline, mlp_pipeline
from tests.conftest import needs_system_package
from tests.seeds import EVIDENCE_SEEDS
from tests.synthetic import write_cifar10, write_image_folder

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"  # its "Your own images" walkthroughs


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder)
    return folder


@pytest.fixture(scope="module")
def cifar(cifar_dir):
    return load_data("cifar10", cifar_dir, download=False)


def _blocking(results) -> dict[str, str]:
    return {r.name: r.message for r in results if r.verdict.blocks}


def test_cifar10_pickles_are_read_as_3x32x32_with_their_labels(cifar_dir, cifar):
    import pickle

    with (cifar_dir / "cifar-10-batches-py" / "test_batch").open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    assert cifar.test.images.shape == (150, 3, 32, 32) and cifar.test.images.dtype == torch.uint8
    assert torch.equal(cifar.test.images.reshape(150, -1), torch.from_numpy(np.asarray(batch[b"data"])))
    assert cifar.test.labels.tolist() == batch[b"labels"]
    assert cifar.class_names[0] == "airplane" and len(cifar.train) + len(cifar.val) == 600


def test_normalisation_is_per_channel_from_train_only(cifar):
    pipeline = default_pipeline(TrainConfig(), cifar)
    pixels = cifar.train.images.double() / 255
    for c in range(3):
        assert pipeline.norm.mean[c].item() == pytest.approx(pixels[:, c].mean().item(), rel=1e-5)
        assert pipeline.norm.std[c].item() == pytest.approx(pixels[:, c].std().item(), rel=1e-5)
    assert len(set(pipeline.norm.mean.flatten().tolist())) == 3  # three channels, three different means
    batch = next(pipeline.batches("train"))
    assert batch.x.shape[1:] == (3, 32, 32)


def test_cifar10_offline_without_files_fails_fast_in_one_line(tmp_path, capsys):
    assert main(["check", "--data", "cifar10", "--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CIFAR-10 python batches" in err[0]


@pytest.mark.slow  # 3 pipelines x 5 seeds, every check
@pytest.mark.parametrize("seed", EVIDENCE_SEEDS)
def test_clean_pipelines_pass_on_rgb_data(cifar, seed):
    for build in (default_pipeline, mlp_pipeline):
        pipeline = build(TrainConfig(seed=seed), cifar)
        assert _blocking(run_all(pipeline, gate=False)) == {}, (pipeline.name, seed)


# ---------------------------------------------------------------- folders of images

def test_a_folder_of_class_subfolders_is_split_stratified(tmp_path):
    data = load_data("folder", write_image_folder(tmp_path / "shapes", per_class=40), download=False)
    assert data.class_names == ("circle", "square", "triangle")
    assert (len(data.train), len(data.val), len(data.test)) == (93, 9, 18)
    for split in ("train", "val", "test"):
        assert torch.bincount(data.split(split).labels).tolist() == [len(data.split(split)) // 3] * 3
    assert data.train.images.shape[1:] == (3, 32, 32)


def test_a_train_test_folder_layout_keeps_its_splits(tmp_path):
    write_image_folder(tmp_path / "d" / "train", per_class=20)
    write_image_folder(tmp_path / "d" / "test", per_class=5, seed=1)
    data = load_data("folder", tmp_path / "d", download=False)
    assert len(data.test) == 15 and len(data.train) + len(data.val) == 60


def test_grey_images_give_one_channel(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "g" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((20, 24), 40 * i + (label == "b") * 20, np.uint8)).save(tmp_path / "g" / label / f"{i}.png")
    data = load_data("folder", tmp_path / "g", download=False)
    assert data.train.images.shape[1:] == (1, 20, 24)


BAD_FOLDERS = {
    "no-class-subfolders": (lambda root: Image.new("RGB", (8, 8)).save(root / "lonely.png"), "has no class subfolders"),
    "unreadable-image": (lambda root: (write_image_folder(root, per_class=4),
                                       (root / "circle" / "broken.png").write_bytes(b"not a png")),
                         r"broken\.png is not a readable image"),
    "mixed-sizes": (lambda root: (write_image_folder(root, per_class=4),
                                  Image.new("RGB", (48, 40)).save(root / "square" / "big.png")),
                    "mixed image sizes"),
}


@pytest.mark.parametrize("kind", BAD_FOLDERS)
@pytest.mark.slow
def test_bad_folders_are_one_line_and_exit_2(tmp_path, capsys, kind):
    make, pattern = BAD_FOLDERS[kind]
    root = tmp_path / "images"
    root.mkdir()
    make(root)
    assert main(["check", "--data", "folder", "--data-dir", str(root), "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recipe: error: ") and re.search(pattern, err[0]), err


@pytest.mark.slow
def test_the_readme_folder_walkthrough_passes_and_shows_colour(tmp_path, monkeypatch, capsys):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    section = USAGE.read_text().split("## Your own images", 1)[1]
    maker = re.search(r"```python\n(# make_shapes.py.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(maker, "make_shapes.py", "exec"), {"__name__": "__main__"})
    # the walkthrough's own command (10 epochs): 2 epochs of 8 batches is too short a run for run_length
    assert main(["run", "--data", "folder", "--data-dir", "shapes", "--quiet"]) == 0, \
        capsys.readouterr().err
    run_dir = (tmp_path / "reports" / "latest").resolve()
    record = json.loads((run_dir / "results.json").read_text())
    assert record["overall"] == "PASS" and record["data"]["source"] == "folder"
    if not Path(chromium).exists():
        needs_system_package("needs Debian's chromium for the colour check (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((run_dir / "index.html").as_uri())
            # every figure decodes; the "what the net sees" figure has pixels whose R, G and B differ
            colourful = page.evaluate("""() => {
                const imgs = Array.from(document.querySelectorAll('#what_goes_into_the_net img'));
                let colour = 0;
                for (const img of imgs) {
                    const canvas = document.createElement('canvas');
                    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                    const ctx = canvas.getContext('2d');
                    ctx.drawImage(img, 0, 0);
                    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
                    for (let i = 0; i < px.length; i += 4)
                        if (Math.abs(px[i] - px[i + 1]) > 40 || Math.abs(px[i + 1] - px[i + 2]) > 40) colour++;
                }
                return [imgs.length, colour];
            }""")
            widths = page.evaluate("Array.from(document.images).map(img => img.complete ? img.naturalWidth : 0)")
        finally:
            browser.close()
    assert colourful[0] >= 1 and colourful[1] > 1000
    assert min(widths) > 0


# ---------------------------------------------------------------- the user's own Datasets

def _readme_cifar_example() -> str:
    section = USAGE.read_text().split("## Your own images", 1)[1]
    return re.search(r"```python\n(# cifar_cnn.py.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_cifar_example_is_short_and_runs_as_pasted(tmp_path, monkeypatch, capsys):
    import torchvision

    code = _readme_cifar_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    write_cifar10(tmp_path / "data", train_per_class=30, test_per_class=10)
    # the files are small stand-ins of the real format, so their md5 is not CIFAR-10's
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    (tmp_path / "cifar_cnn.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    status = main(["check", "--pipeline", "cifar_cnn.py:build", "--data", "sample", "--quiet"])
    record = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    assert record["data"]["sizes"] == {"train": 270, "val": 30, "test": 100}
    assert record["pipeline"]["name"] == "cifar-cnn"
    blocking = {c["name"]: c["message"] for c in record["checks"] if c["verdict"] in ("FAIL", "ERROR")}
    assert status == 0 and blocking == {}, blocking


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items, transform=None):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.items[i]
        return (self.transform(image) if self.transform else image), label


def _items(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return [(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), i % 3) for i in range(n)]


def test_bundle_from_datasets_holds_val_out_and_keeps_pixels_exact():
    import torchvision

    items = _items()
    data = bundle_from_datasets(ListDataset(items, torchvision.transforms.ToTensor()), ListDataset(_items(9, 1)))
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 9)
    assert data.class_names == ("0", "1", "2") and data.train.images.shape[1:] == (3, 8, 8)
    everything = {bytes(np.asarray(image).transpose(2, 0, 1).tobytes()) for image, _ in items}
    assert {bytes(img.numpy().tobytes()) for img in torch.cat([data.train.images, data.val.images])} == everything


BAD_DATASETS = {
    "random-transform": (lambda: __import__("torchvision").transforms.Compose([
        __import__("torchvision").transforms.RandomHorizontalFlip(1.0 - 1e-9) if False else
        __import__("torchvision").transforms.ColorJitter(brightness=0.9),
        __import__("torchvision").transforms.ToTensor()]), "transform is random"),
    "normalize-in-transform": (lambda: __import__("torchvision").transforms.Compose([
        __import__("torchvision").transforms.ToTensor(),
        __import__("torchvision").transforms.Normalize((0.5,) * 3, (0.1,) * 3)]), "drop Normalize"),
}


@pytest.mark.parametrize("kind", BAD_DATASETS)
def test_bundle_from_datasets_says_what_to_change(kind):
    make, words = BAD_DATASETS[kind]
    with pytest.raises(DataError, match=words):
        bundle_from_datasets(ListDataset(_items(), make()), ListDataset(_items(9, 1), make()))


def test_feature_vectors_make_a_features_bundle_not_images():
    vectors = [(torch.rand(16), i % 2) for i in range(10)]
    data = bundle_from_datasets(vectors, vectors)
    assert data.kind == "features" and data.train.images.shape[1:] == (16,)  # tests/test_features.py: the rest
