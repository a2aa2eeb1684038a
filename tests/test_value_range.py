"""Float images with a declared value range: a DataBundle may hold float pixels in any declared
(low, high), and normalisation, the checks and the figures read them through that range, so a float
twin of uint8 data behaves exactly like it, and pixels outside their declared range are a FAIL."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from checks import run_all
from checks.data.data_checks import integrity
from checks.data.label_checks import label_signal
from checks.skeleton.loader_checks import what_goes_into_the_net
from checks.engine.result import Figure, Verdict
from recipe.config import TrainConfig
from recipe.data import Split, norm_stats, normalize, pixel_mean_std
from recipe.datasets import bundle_from_datasets
from recipe.pipeline import default_pipeline, mlp_pipeline

RANGES = [(0.0, 1.0), (-1.0, 1.0)]  # ToTensor's, and the [-1, 1] many GAN / CLIP pipelines use


def float_twin(data, low: float, high: float):
    """The same images as float pixels spanning (low, high), declared so."""
    def scaled(split: Split) -> Split:
        return Split(split.images.float().div(255).mul(high - low).add(low), split.labels)
    return replace(data, train=scaled(data.train), val=scaled(data.val), test=scaled(data.test),
                   value_range=(low, high))


def _figure(result, title_start: str) -> np.ndarray:
    figure = next(f for f in result.figures if f.title.startswith(title_start))
    return np.asarray(figure.data["images"], dtype=np.float64)


@pytest.mark.parametrize("value_range", RANGES, ids=str)
def test_a_float_twin_is_normalised_exactly_like_its_uint8_original(sample_data, value_range):
    twin = float_twin(sample_data, *value_range)
    ours, theirs = norm_stats(sample_data.train), norm_stats(twin.train, twin.value_range)
    torch.testing.assert_close(theirs.mean, ours.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs.std, ours.std, rtol=0, atol=1e-6)
    torch.testing.assert_close(normalize(twin.val.images, theirs), normalize(sample_data.val.images, ours),
                               rtol=0, atol=1e-4)
    assert pixel_mean_std(sample_data.test.images)[0] == pytest.approx(
        pixel_mean_std(twin.test.images, twin.value_range)[0], abs=1e-6)


@pytest.mark.parametrize("value_range", RANGES, ids=str)
@pytest.mark.parametrize("build", [default_pipeline, mlp_pipeline], ids=["linear", "mlp"])
@pytest.mark.slow
def test_a_float_twin_gets_the_verdicts_of_its_uint8_original(sample_data, value_range, build):
    twin = float_twin(sample_data, *value_range)
    verdicts = {}
    for name, data in (("uint8", sample_data), ("float", twin)):
        torch.manual_seed(0)
        verdicts[name] = {r.name: r.verdict for r in run_all(build(TrainConfig(seed=0), data), gate=False)}
    assert verdicts["float"] == verdicts["uint8"]
    assert not any(v.blocks for v in verdicts["float"].values())


@pytest.mark.parametrize("images, value_range", [
    (lambda u8: u8.float(), (0.0, 1.0)),                              # 0..255 floats declared as 0..1
    (lambda u8: (u8.float() / 255 - 0.13) / 0.31, (0.0, 1.0)),       # already normalised
    (lambda u8: u8.float() / 255, (0.0, 0.5)),                        # a range narrower than the data
], ids=["0-255-declared-0-1", "already-normalised", "range-too-narrow"])
def test_pixels_outside_their_declared_range_fail_integrity(sample_data, images, value_range):
    train = Split(images(sample_data.train.images), sample_data.train.labels)
    data = replace(float_twin(sample_data, 0.0, 1.0), train=train, value_range=value_range)
    result = integrity(default_pipeline(TrainConfig(), data))
    assert result.verdict is Verdict.FAIL
    assert "outside the declared range" in result.message and f"{value_range[0]:g}..{value_range[1]:g}" in result.message


def test_an_empty_declared_range_fails_integrity(sample_data):
    pipeline = default_pipeline(TrainConfig(), sample_data)
    assert integrity(pipeline).verdict is Verdict.PASS
    result = integrity(replace(pipeline, data=replace(sample_data, value_range=(255.0, 0.0))))
    assert result.verdict is Verdict.FAIL and "declared value range 255..0 is empty" in result.message


@pytest.mark.parametrize("value_range", RANGES, ids=str)
def test_figures_show_pixels_in_0_1_whatever_the_declared_range(sample_data, value_range):
    """The de-normalised input and the training examples are drawn from [0, 1] pixels, equal to the
    uint8 original's k / 255."""
    twin = float_twin(sample_data, *value_range)
    figures = {}
    for name, data in (("uint8", sample_data), ("float", twin)):
        pipeline = default_pipeline(TrainConfig(seed=0), data)
        figures[name] = {"input": _figure(what_goes_into_the_net(pipeline), "the same batch de-normalised"),
                         "examples": _figure(label_signal(pipeline), "8 training examples")}
    for kind in ("input", "examples"):
        uint8, twin_pixels = figures["uint8"][kind], figures["float"][kind]
        assert uint8.min() >= 0 and uint8.max() <= 1 and uint8.max() > 0.9
        np.testing.assert_allclose(twin_pixels, uint8, atol=1e-4)
        np.testing.assert_allclose(uint8 * 255, np.round(uint8 * 255), atol=1e-3)  # whole 8-bit levels / 255


def test_an_rgb_figure_draws_uint8_and_float_pixels_in_the_same_colour():
    from io import BytesIO

    from PIL import Image

    from checks.report.figures import render_png

    teal = np.zeros((1, 3, 16, 16), dtype=np.uint8)
    teal[0, 1], teal[0, 2] = 128, 191
    colours = []
    for images in (teal.astype(np.float32) / 255, teal):
        png = Image.open(BytesIO(render_png(Figure("images", "", {"images": images})))).convert("RGB")
        array = np.asarray(png)
        colours.append(array[array.shape[0] // 2, array.shape[1] // 2])
    assert colours[0].tolist() == colours[1].tolist()
    assert colours[0].tolist() == [0, 128, 191]


class _ListDataset:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _datasets(images: torch.Tensor) -> tuple[_ListDataset, _ListDataset]:
    labels = [i % 4 for i in range(len(images))]
    half = len(images) // 2
    return _ListDataset(images[:half], labels[:half]), _ListDataset(images[half:], labels[half:])


def test_bundle_from_datasets_keeps_off_level_floats_as_float_in_0_1():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(80, 3, 8, 8, generator=generator)  # a resize's output: not whole 8-bit levels
    data = bundle_from_datasets(*_datasets(images))
    assert data.value_range == (0.0, 1.0) and data.train.images.dtype == torch.float32
    stored = torch.cat([data.train.images, data.val.images, data.test.images])
    assert sorted(stored.flatten().tolist()) == sorted(images.flatten().tolist())  # nothing quantised


def test_bundle_from_datasets_stores_whole_8_bit_levels_as_uint8():
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (80, 3, 8, 8), generator=generator, dtype=torch.uint8)
    data = bundle_from_datasets(*_datasets(levels.float() / 255))  # what ToTensor gives for PNGs
    assert data.value_range == (0.0, 255.0) and data.train.images.dtype == torch.uint8
    stored = torch.cat([data.train.images, data.val.images, data.test.images])
    assert sorted(stored.flatten().tolist()) == sorted(levels.flatten().tolist())
