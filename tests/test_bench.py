"""The benchmark's plumbing, on tiny IDX files: no timing is asserted anywhere (the benchmark prints)."""
from __future__ import annotations

import json

import pytest
import torch

from bench import epoch, large_batch, preflight, run, scaling
from bench.reference import reference_loader, torchvision_root
from recipe.config import TrainConfig
from recipe.data import load_data, normalize
from recipe.pipeline import default_pipeline
from tests.conftest import write_idx_folder


@pytest.fixture
def tiny_fashion(tmp_path):
    folder = tmp_path / "idx"
    write_idx_folder(folder, gz=True)  # the Debian package ships .gz files too
    return folder, load_data("fashion-mnist", data_dir=folder, download=False)


def test_reference_loader_sees_the_recipe_train_split(tiny_fashion, tmp_path):
    """The examples-style loop must train on exactly the recipe's examples, normalised the same way."""
    folder, data = tiny_fashion
    pipeline = default_pipeline(TrainConfig(batch_size=len(data.train)), data)
    loader = reference_loader(pipeline, torchvision_root(folder, tmp_path / "tv"), torch.device("cpu"))
    x, y = next(iter(torch.utils.data.DataLoader(loader.dataset, batch_size=len(data.train))))
    assert torch.equal(y, data.train.labels)
    torch.testing.assert_close(x, normalize(data.train.images, pipeline.norm))


def test_epoch_part_reports_a_ratio_for_each_loop(tiny_fashion):
    folder, data = tiny_fashion
    result = epoch.run(data, TrainConfig(batch_size=16), rounds=1, idx_dir=folder)
    assert {name: len(times) for name, times in result["times_s"].items()} == {"reference": 2, "recipe": 2, "autograd": 2, "bare": 2}
    recipe_row = next(row for row in result["rows"] if row.item == "recipe fit()")
    assert recipe_row.ratio == pytest.approx(result["warm_median_s"]["reference"] / result["warm_median_s"]["recipe"])
    json.dumps([row.as_dict() for row in result["rows"]])


def test_batch512_part_compares_the_epoch_with_one_full_batch_pass(tiny_fashion):
    _, data = tiny_fashion
    result = large_batch.run(data, rounds=1)
    assert {name: len(times) for name, times in result["times_s"].items()} == {"recipe": 2, "bare": 2}
    assert result["full_batch_pass_s"] > 0
    assert result["epoch_over_full_pass"] == pytest.approx(result["warm_median_s"]["recipe"] / result["full_batch_pass_s"])
    epoch_row = result["rows"][0]
    assert epoch_row.met is None and epoch_row.target == ""  # the 10 ms target is judged on CUDA only
    json.dumps([row.as_dict() for row in result["rows"]])


def test_scaling_copies_repeat_the_train_split_only(tiny_fashion):
    _, data = tiny_fashion
    bigger = scaling.copies(data, 3)
    assert len(bigger.train) == 3 * len(data.train)
    assert torch.equal(bigger.train.images[len(data.train):2 * len(data.train)], data.train.images)
    assert bigger.test is data.test and bigger.val is data.val


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_part_says_skipped_without_cuda(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run.main(["--parts", "gpu", "--out", str(out)]) == 0
    assert "skipped: no CUDA" in capsys.readouterr().out
    assert json.loads(out.read_text())["parts"]["gpu/epoch"]["skipped"] == "no CUDA"


def test_preflight_says_skipped_when_check_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(preflight, "check_available", lambda: False)
    assert preflight.run("cpu", repeats=1)["skipped"] == "recipe check not available"
    assert "skipped: recipe check not available" in capsys.readouterr().out


def test_unknown_part_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        run.main(["--parts", "epoch,warp"])
    assert exc.value.code == 2
